/* lua_nn.c - lualps.Module userdata (layers and sequential) and the
 * cross-entropy function; registered as lualps.core._nn. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/nn_binding.h"

typedef struct { lps_layer *l; } module_ud;

lps_layer *lps_lua_checkmodule(lua_State *L, int idx)
{
    module_ud *u = luaL_checkudata(L, idx, LPS_MODULE_MT);
    if (!u->l) luaL_argerror(L, idx, "module has been closed");
    return u->l;
}

/* Push a module owning l (one reference); children: table at idx or 0. */
static lps_layer *push_module(lua_State *L, lps_layer *l, int children)
{
    if (!l) lps_lua_raise(L);
    module_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->l = l;
    luaL_setmetatable(L, LPS_MODULE_MT);
    if (children) {
        lua_pushvalue(L, children);
        lua_setiuservalue(L, -2, 1);
    }
    return l;
}

static int64_t checksize(lua_State *L, int idx, const char *what)
{
    lua_Integer v = luaL_checkinteger(L, idx);
    if (v < 1 || v > (1 << 30)) return luaL_error(L, "%s must be 1..2^30, got %d", what, (int)v);
    return v;
}

static int l_linear(lua_State *L)
{
    int64_t in = checksize(L, 1, "linear: in_features"), out = checksize(L, 2, "linear: out_features");
    push_module(L, lps_linear_new(in, out, lps_lua_optrng(L, 3)), 0);
    return 1;
}

static int l_conv2d(lua_State *L)
{
    int64_t cin = checksize(L, 1, "conv2d: in_channels"), cout = checksize(L, 2, "conv2d: out_channels");
    int64_t k = checksize(L, 3, "conv2d: kernel_size");
    lua_Integer stride = luaL_optinteger(L, 4, 1), pad = luaL_optinteger(L, 5, 0);
    push_module(L, lps_conv2d_new(cin, cout, k, stride, pad, lps_lua_optrng(L, 6)), 0);
    return 1;
}

static int l_maxpool2d(lua_State *L)
{
    lua_Integer k = luaL_checkinteger(L, 1), s = luaL_optinteger(L, 2, 0);
    if (s < 0) return luaL_error(L, "maxpool2d: stride must be >= 1, got %d", (int)s);
    push_module(L, lps_maxpool2d_new(k, s), 0);
    return 1;
}

static int l_relu(lua_State *L) { return push_module(L, lps_relu_new(), 0), 1; }
static int l_tanh(lua_State *L) { return push_module(L, lps_tanh_new(), 0), 1; }
static int l_flatten(lua_State *L) { return push_module(L, lps_flatten_new(), 0), 1; }

/* sequential{m1, m2, ...}: the modules are shared, not copied. */
static int l_sequential(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)luaL_len(L, 1);
    if (n < 1) return luaL_error(L, "sequential: needs at least one module");
    if (n > 4096) return luaL_error(L, "sequential: at most 4096 modules, got %d", n);
    lps_layer **kids = lua_newuserdatauv(L, sizeof *kids * (size_t)n, 0); /* GC-owned scratch */
    lua_createtable(L, n, 0);
    int tbl = lua_gettop(L);
    for (int i = 0; i < n; i++) {
        lua_geti(L, 1, i + 1);
        module_ud *u = luaL_testudata(L, -1, LPS_MODULE_MT);
        if (!u || !u->l)
            return luaL_error(L, "sequential: entry %d is a %s, expected a module", i + 1,
                              u ? "closed module" : luaL_typename(L, -1));
        kids[i] = u->l;
        lua_rawseti(L, tbl, i + 1);
    }
    push_module(L, lps_sequential_new(kids, n), tbl);
    return 1;
}

/* ------------------------------------------------------------- methods */

static void out_shape(lua_State *L, lps_layer *l, const lps_tensor *x, int *nd, int64_t *shape)
{
    LPS_LCHECK(L, lps_layer_out_shape(l, x->ndim, x->shape, nd, shape));
}

static int m_forward(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lps_tensor *x = lps_lua_checktensor(L, 2);
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    out_shape(L, l, x, &nd, shape);
    lps_tensor *y = lps_lua_newtensor(L, nd, shape);
    LPS_LCHECK(L, lps_layer_forward(l, x, y));
    return 1;
}

/* backward recomputes the forward pass for x first, so it is right even when
 * forward last ran on another input. */
static int m_backward(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lps_tensor *x = lps_lua_checktensor(L, 2), *gy = lps_lua_checktensor(L, 3);
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    out_shape(L, l, x, &nd, shape);
    lps_tensor *y = lps_lua_newtensor(L, nd, shape);
    LPS_LCHECK(L, lps_layer_forward(l, x, y));
    lps_tensor *gx = lps_lua_newtensor(L, x->ndim, x->shape);
    LPS_LCHECK(L, lps_layer_backward(l, x, y, gy, gx));
    return 1;
}

/* input_gradients(x, gy) -> y, gx: one forward of x (N samples), then one
 * backward per block of N rows of gy (k*N x out): gx (k*N x x's sizes) holds
 * each block's gradient with respect to x. The vector-Jacobian products of
 * several output directions at the cost of one forward, as k backward calls
 * would pay k forwards. */
static int m_input_gradients(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lps_tensor *x = lps_lua_checktensor(L, 2), *gy = lps_lua_checktensor(L, 3);
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    out_shape(L, l, x, &nd, shape);
    int64_t n = x->shape[0];
    int fits = gy->ndim == nd && n >= 1 && gy->shape[0] >= n && gy->shape[0] % n == 0;
    for (int i = 1; fits && i < nd; i++) fits = gy->shape[i] == shape[i];
    if (!fits)
        return luaL_error(L, "input_gradients: gy must stack blocks of %d rows shaped like the output "
                          "(%d x ...), got %d rows", (int)n, (int)shape[0], (int)gy->shape[0]);
    lps_tensor *y = lps_lua_newtensor(L, nd, shape);
    LPS_LCHECK(L, lps_layer_forward(l, x, y));
    int64_t k = gy->shape[0] / n, gsh[LPS_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) gsh[i] = x->shape[i];
    gsh[0] = k * n;
    lps_tensor *gx = lps_lua_newtensor(L, x->ndim, gsh);
    for (int64_t c = 0; c < k; c++) {
        lps_tensor *gyc = lps_tensor_rows(gy, c * n, n), *gxc = lps_tensor_rows(gx, c * n, n);
        lps_status st = gyc && gxc ? lps_layer_backward(l, x, y, gyc, gxc) : LPS_ENOMEM;
        lps_tensor_free(gyc);
        lps_tensor_free(gxc);
        LPS_LCHECK(L, st);
    }
    return 2;
}

static void push_view(lua_State *L, const lps_tensor *t)
{
    lps_lua_pushtensor(L, lps_tensor_reshape(t, t->ndim, t->shape));
}

/* parameters() -> params, grads: views sharing memory with the module. */
static int m_parameters(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    int n = lps_layer_params(l, NULL, NULL, 0);
    lps_tensor **p = lua_newuserdatauv(L, sizeof *p * (size_t)(2 * n + 1), 0);
    lps_layer_params(l, p, p + n, n);
    lua_createtable(L, n, 0);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        push_view(L, p[i]);
        lua_rawseti(L, -3, i + 1);
        push_view(L, p[n + i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 2;
}

static int m_zero_grad(lua_State *L)
{
    lps_layer_zero_grad(lps_lua_checkmodule(L, 1));
    lua_settop(L, 1);
    return 1;
}

static int m_train(lua_State *L)
{
    lps_layer_set_training(lps_lua_checkmodule(L, 1), lua_isnoneornil(L, 2) || lua_toboolean(L, 2));
    lua_settop(L, 1);
    return 1;
}

/* freeze([flag=true]): backward computes input gradients only */
static int m_freeze(lua_State *L)
{
    lps_layer_set_frozen(lps_lua_checkmodule(L, 1), lua_isnoneornil(L, 2) || lua_toboolean(L, 2));
    lua_settop(L, 1);
    return 1;
}

static int m_evaluate(lua_State *L)
{
    lps_layer_set_training(lps_lua_checkmodule(L, 1), 0);
    lua_settop(L, 1);
    return 1;
}

static int m_is_training(lua_State *L)
{
    lua_pushboolean(L, lps_lua_checkmodule(L, 1)->training);
    return 1;
}

static int m_type(lua_State *L)
{
    lua_pushstring(L, lps_lua_checkmodule(L, 1)->ops->name);
    return 1;
}

static int m_num_parameters(lua_State *L)
{
    lua_pushinteger(L, lps_layer_numel(lps_lua_checkmodule(L, 1)));
    return 1;
}

/* children() -> the list of child modules (a copy of the list; the modules
 * themselves are shared). Empty for leaf layers. */
static int m_children(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lua_createtable(L, l->nchildren, 0);
    if (l->nchildren == 0) return 1;
    lua_getiuservalue(L, 1, 1);
    for (int i = 1; i <= l->nchildren; i++) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -3, i);
    }
    lua_pop(L, 1);
    return 1;
}

static void setint(lua_State *L, const char *k, int64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

static void push_spec(lua_State *L, const lps_layer *l)
{
    lua_newtable(L);
    lua_pushstring(L, l->ops->name);
    lua_setfield(L, -2, "type");
    switch (l->ops->type) {
    case LPS_LAYER_LINEAR:
        setint(L, "in_features", l->cfg[0]);
        setint(L, "out_features", l->cfg[1]);
        break;
    case LPS_LAYER_CONV2D:
        setint(L, "in_channels", l->cfg[0]);
        setint(L, "out_channels", l->cfg[1]);
        setint(L, "kernel_size", l->cfg[2]);
        setint(L, "stride", l->cfg[3]);
        setint(L, "padding", l->cfg[4]);
        break;
    case LPS_LAYER_MAXPOOL2D:
        setint(L, "kernel_size", l->cfg[0]);
        setint(L, "stride", l->cfg[1]);
        break;
    case LPS_LAYER_SEQUENTIAL:
        lua_createtable(L, l->nchildren, 0);
        for (int i = 0; i < l->nchildren; i++) {
            push_spec(L, l->children[i]);
            lua_rawseti(L, -2, i + 1);
        }
        lua_setfield(L, -2, "layers");
        break;
    default: break;
    }
}

/* spec() -> a plain table describing the architecture (JSON-able). */
static int m_spec(lua_State *L)
{
    push_spec(L, lps_lua_checkmodule(L, 1));
    return 1;
}

static void add_repr(luaL_Buffer *b, lua_State *L, const lps_layer *l, int indent)
{
    char s[256];
    const int64_t *c = l->cfg;
    switch (l->ops->type) {
    case LPS_LAYER_LINEAR:
        snprintf(s, sizeof s, "Linear(in_features=%lld, out_features=%lld)", (long long)c[0],
                 (long long)c[1]);
        break;
    case LPS_LAYER_CONV2D:
        snprintf(s, sizeof s, "Conv2d(%lld, %lld, kernel_size=%lld, stride=%lld, padding=%lld)",
                 (long long)c[0], (long long)c[1], (long long)c[2], (long long)c[3], (long long)c[4]);
        break;
    case LPS_LAYER_MAXPOOL2D:
        snprintf(s, sizeof s, "MaxPool2d(kernel_size=%lld, stride=%lld)", (long long)c[0],
                 (long long)c[1]);
        break;
    case LPS_LAYER_RELU: snprintf(s, sizeof s, "ReLU()"); break;
    case LPS_LAYER_TANH: snprintf(s, sizeof s, "Tanh()"); break;
    case LPS_LAYER_FLATTEN: snprintf(s, sizeof s, "Flatten()"); break;
    case LPS_LAYER_SEQUENTIAL:
        luaL_addstring(b, "Sequential(\n");
        for (int i = 0; i < l->nchildren; i++) {
            for (int k = 0; k < indent + 2; k++) luaL_addchar(b, ' ');
            lua_pushfstring(L, "(%d): ", i);
            luaL_addvalue(b);
            add_repr(b, L, l->children[i], indent + 2);
            luaL_addchar(b, '\n');
        }
        for (int k = 0; k < indent; k++) luaL_addchar(b, ' ');
        luaL_addchar(b, ')');
        return;
    }
    luaL_addstring(b, s);
}

static int m_tostring(lua_State *L)
{
    module_ud *u = luaL_checkudata(L, 1, LPS_MODULE_MT);
    if (!u->l) {
        lua_pushliteral(L, "lualps.Module (closed)");
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    add_repr(&b, L, u->l, 0);
    luaL_pushresult(&b);
    return 1;
}

static int m_len(lua_State *L)
{
    lua_pushinteger(L, lps_lua_checkmodule(L, 1)->nchildren);
    return 1;
}

/* m[i]: the i-th child of a sequential; names look up methods. */
static int m_index(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lps_layer *l = lps_lua_checkmodule(L, 1);
        lua_Integer i = luaL_checkinteger(L, 2);
        if (i < 1 || i > l->nchildren)
            return luaL_error(L, "module index %d out of range 1..%d", (int)i, l->nchildren);
        lua_getiuservalue(L, 1, 1);
        lua_rawgeti(L, -1, i);
        return 1;
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int m_gc(lua_State *L)
{
    module_ud *u = luaL_checkudata(L, 1, LPS_MODULE_MT);
    lps_layer_free(u->l);
    u->l = NULL;
    return 0;
}

/* ------------------------------------------------------------- labels */

int32_t *lps_lua_checklabels(lua_State *L, int idx, int64_t n, int64_t classes, const char *op)
{
    idx = lua_absindex(L, idx);
    lps_tensor *t = lps_lua_totensor(L, idx);
    int64_t have;
    if (t)
        have = t->numel;
    else if (lua_istable(L, idx))
        have = (int64_t)luaL_len(L, idx);
    else {
        luaL_error(L, "%s: labels should be a tensor or a table of class numbers, got a %s", op,
                   luaL_typename(L, idx));
        return NULL;
    }
    if (have != n)
        luaL_error(L, "%s: %d labels for %d samples", op, (int)have, (int)n);
    int32_t *y = lua_newuserdatauv(L, sizeof *y * (size_t)(n ? n : 1), 0);
    for (int64_t i = 0; i < n; i++) {
        double v;
        if (t)
            v = t->data[i];
        else {
            lua_geti(L, idx, i + 1);
            v = lua_tonumber(L, -1);
            if (!lua_isnumber(L, -1)) v = -1;
            lua_pop(L, 1);
        }
        if (!(v >= 1 && v <= (double)classes) || v != (double)(int64_t)v) {
            char num[32];
            snprintf(num, sizeof num, "%g", v);
            luaL_error(L, "%s: label %s of sample %d is not a class number 1..%d", op, num,
                       (int)i + 1, (int)classes);
        }
        y[i] = (int32_t)v - 1;
    }
    return y;
}

int64_t lps_lua_model_classes(lua_State *L, lps_layer *m, const lps_tensor *x, const char *op)
{
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    LPS_LCHECK(L, lps_layer_out_shape(m, x->ndim, x->shape, &nd, shape));
    if (nd != 2)
        luaL_error(L, "%s: the model's output should be (batch x classes), got %d dimensions", op,
                   nd);
    return shape[1];
}

/* cross_entropy(logits, labels[, want_grad]) -> mean loss[, dloss/dlogits] */
static int l_cross_entropy(lua_State *L)
{
    lps_tensor *z = lps_lua_checktensor(L, 1);
    if (z->ndim != 2 || z->shape[1] < 1) {
        char b[64];
        return luaL_error(L, "cross_entropy: logits %s should be (batch x classes)",
                          lps_shape_str(z, b, sizeof b));
    }
    int32_t *y = lps_lua_checklabels(L, 2, z->shape[0], z->shape[1], "cross_entropy");
    int want = lua_toboolean(L, 3);
    lps_tensor *g = want ? lps_lua_newtensor(L, 2, z->shape) : NULL;
    double loss;
    LPS_LCHECK(L, lps_cross_entropy(z, y, &loss, g, NULL));
    lua_pushnumber(L, loss);
    if (want) lua_rotate(L, -2, 1); /* loss, grad */
    return want ? 2 : 1;
}

static const luaL_Reg methods[] = {
    {"forward", m_forward}, {"backward", m_backward}, {"parameters", m_parameters},
    {"zero_grad", m_zero_grad}, {"train", m_train}, {"evaluate", m_evaluate},
    {"freeze", m_freeze}, {"input_gradients", m_input_gradients},
    {"is_training", m_is_training}, {"type", m_type}, {"num_parameters", m_num_parameters},
    {"children", m_children}, {"spec", m_spec}, {"close", m_gc}, {NULL, NULL}};

static const luaL_Reg metamethods[] = {
    {"__index", m_index}, {"__len", m_len}, {"__tostring", m_tostring},
    {"__gc", m_gc}, {"__close", m_gc}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"linear", l_linear}, {"conv2d", l_conv2d}, {"maxpool2d", l_maxpool2d}, {"relu", l_relu},
    {"tanh", l_tanh}, {"flatten", l_flatten}, {"sequential", l_sequential},
    {"cross_entropy", l_cross_entropy}, {NULL, NULL}};

void lps_lua_open_nn(lua_State *L)
{
    luaL_newmetatable(L, LPS_MODULE_MT);
    luaL_setfuncs(L, metamethods, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    /* The method table, so lualps/nn.lua can add methods written in Lua. */
    luaL_getmetatable(L, LPS_MODULE_MT);
    lua_getfield(L, -1, "methods");
    lua_setfield(L, -3, "Module");
    lua_pop(L, 1);
    lps_lua_open_train(L);
    lps_lua_open_data(L);
    lua_setfield(L, -2, "_nn");
}
