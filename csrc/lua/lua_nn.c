/* lua_nn.c - lualps.Module userdata (any layer of the registry, and
 * containers) and the cross-entropy function; in lualps.core._nn. Layers
 * are built from their arch entries: nothing here names a layer type. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/binding.h"

typedef struct { lps_layer *l; } module_ud;

lps_layer *lps_lua_checkmodule(lua_State *L, int idx)
{
    module_ud *u = luaL_checkudata(L, idx, LPS_MODULE_MT);
    if (!u->l) luaL_argerror(L, idx, "module has been closed");
    return u->l;
}

/* Push a module owning l (one reference). Its children become modules too
 * (each with a reference of its own), kept as the userdata's list, unless
 * `children` (a stack index, 0 for none) gives that list. */
static lps_layer *push_module(lua_State *L, lps_layer *l, int children)
{
    if (!l) lps_lua_raise(L);
    children = children ? lua_absindex(L, children) : 0;
    module_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->l = l;
    luaL_setmetatable(L, LPS_MODULE_MT);
    if (children) {
        lua_pushvalue(L, children);
    } else if (l->nchildren) {
        lua_createtable(L, l->nchildren, 0);
        for (int i = 0; i < l->nchildren; i++) {
            push_module(L, lps_layer_ref(l->children[i]), 0);
            lua_rawseti(L, -2, i + 1);
        }
    } else {
        return l;
    }
    lua_setiuservalue(L, -2, 1);
    return l;
}

/* The modules of the list at idx (shared, not copied), in a scratch array;
 * pushes a table of them (the Sequential's children). */
static lps_layer **module_list(lua_State *L, int idx, const char *op, int *n)
{
    idx = lua_absindex(L, idx);
    *n = (int)luaL_len(L, idx);
    if (*n < 1) luaL_error(L, "%s: needs at least one module", op);
    if (*n > LPS_ARCH_MAX_LAYERS) luaL_error(L, "%s: at most %d modules, got %d", op, LPS_ARCH_MAX_LAYERS, *n);
    lps_layer **kids = lps_lua_scratch(L, sizeof *kids * (size_t)*n);
    lua_createtable(L, *n, 0);
    for (int i = 0; i < *n; i++) {
        lua_geti(L, idx, i + 1);
        module_ud *u = luaL_testudata(L, -1, LPS_MODULE_MT);
        if (!u || !u->l)
            luaL_error(L, "%s: entry %d is a %s, expected a module", op, i + 1,
                       u ? "closed module" : luaL_typename(L, -1));
        kids[i] = u->l;
        lua_rawseti(L, -2, i + 1);
    }
    return kids;
}

/* A branch (body, shortcut) at the top of the stack: a module or a list of
 * modules (shared, as sequential{...} shares them; *m set), or an arch list
 * (*a set; an empty list: the identity). Leaves one value on the stack that
 * keeps what it made alive. */
static void branch(lua_State *L, const char *op, lps_layer **m, lps_arch **a)
{
    module_ud *u = luaL_testudata(L, -1, LPS_MODULE_MT);
    int list = lua_type(L, -1) == LUA_TTABLE && luaL_len(L, -1) > 0;
    if (list) {
        lua_geti(L, -1, 1);
        list = luaL_testudata(L, -1, LPS_MODULE_MT) != NULL;
        lua_pop(L, 1);
    }
    if (u) {
        if (!u->l) luaL_error(L, "%s: the module is closed", op);
        *m = u->l;
        lua_pushvalue(L, -1);
    } else if (list) {
        int n;
        lps_layer **kids = module_list(L, -1, op, &n); /* pushes the array and the list */
        *m = push_module(L, lps_sequential_new(kids, n), -1);
        lua_replace(L, -3);
        lua_pop(L, 1); /* the new module stays */
    } else if (lua_type(L, -1) == LUA_TTABLE && luaL_len(L, -1) == 0) {
        *a = lps_lua_scratch(L, sizeof **a);
        memset(*a, 0, sizeof **a);
    } else {
        *a = lps_lua_checkarch(L, -1, op);
    }
}

/* layer(type, fields[, generator]): one layer of the registry from its
 * arch fields ({in = 784, out = 10}); a residual's body and shortcut are
 * arch lists, modules or lists of modules. */
static int l_layer(lua_State *L)
{
    const char *type = luaL_checkstring(L, 1);
    lps_rng *g = lps_lua_optgenerator(L, 2);
    if (!g) g = lps_lua_optrng(L, 3);
    lua_settop(L, 3); /* the generator stays referenced */
    lps_arch_entry e;
    lps_layer *given[2] = {NULL, NULL};
    if (lps_arch_entry_init(&e, type)) return lps_lua_raise(L);
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_newtable(L); /* keeps the branches' arch boxes alive */
        int anchor = lua_gettop(L), nanchor = 0;
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "%s: option keys must be strings, got a %s", type, luaL_typename(L, -2));
            const char *k = lua_tostring(L, -2);
            int br = lps_layer_type_branches(e.type) ? !strcmp(k, "body") ? 0 : !strcmp(k, "shortcut") ? 1 : -1 : -1;
            if (br >= 0) {
                lps_arch *a = NULL;
                char op[64];
                snprintf(op, sizeof op, "%.40s %s", type, k);
                branch(L, op, &given[br], &a);
                lua_rawseti(L, anchor, ++nanchor);
                if (br) e.shortcut = a;
                else e.body = a;
                lua_pop(L, 1);
                continue;
            }
            if (!strcmp(k, "generator") || !strcmp(k, "type")) {
                lua_pop(L, 1);
                continue;
            }
            double v;
            if (lua_type(L, -1) == LUA_TBOOLEAN) v = lua_toboolean(L, -1);
            else if (lua_type(L, -1) == LUA_TNUMBER) v = lua_tonumber(L, -1);
            else return luaL_error(L, "%s: option %s must be a number or a boolean, got a %s", type, k,
                                   luaL_typename(L, -1));
            if (lps_arch_entry_set(&e, k, v)) return lps_lua_raise(L);
            lua_pop(L, 1);
        }
    }
    push_module(L, given[0] || given[1] ? lps_layer_new_branches(&e, given[0], given[1], g)
                                        : lps_layer_new(&e, g), 0);
    return 1;
}

/* sequential{m1, m2, ...}: the modules are shared, not copied. */
static int l_sequential(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int n;
    lps_layer **kids = module_list(L, 1, "sequential", &n);
    push_module(L, lps_sequential_new(kids, n), -1);
    return 1;
}

/* from_arch(arch[, generator | false]): a Sequential with new weights (false: zeros). */
static int l_from_arch(lua_State *L)
{
    lps_arch *a = lps_lua_checkarch(L, 1, "from_arch");
    /* false: no initial draw (zeros), for weights about to be copied in */
    lps_rng *g = lua_isboolean(L, 2) && !lua_toboolean(L, 2) ? NULL : lps_lua_optrng(L, 2);
    lps_layer *m = lps_layer_from_arch(a, g);
    if (!m) return luaL_error(L, "from_arch: %s", lps_errmsg());
    push_module(L, m, 0);
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
 * forward last ran on another input; the recomputation is a replay (no
 * running statistics updated, the last random draws reused). */
static int m_backward(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lps_tensor *x = lps_lua_checktensor(L, 2), *gy = lps_lua_checktensor(L, 3);
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    out_shape(L, l, x, &nd, shape);
    lps_tensor *y = lps_lua_newtensor(L, nd, shape);
    LPS_LCHECK(L, lps_layer_replay(l, x, y));
    lps_tensor *gx = lps_lua_newtensor(L, x->ndim, x->shape);
    LPS_LCHECK(L, lps_layer_backward(l, x, y, gy, gx));
    return 1;
}

/* input_gradients(x, gy[, group]) -> y, gx: one forward of x (N samples),
 * then the input gradient of each block of N rows of gy (k*N x out),
 * averaged over consecutive groups of `group` samples (default 1): gx is
 * (k*N/group x x's sizes). lps_layer_input_gradients. */
static int m_input_gradients(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lps_tensor *x = lps_lua_checktensor(L, 2), *gy = lps_lua_checktensor(L, 3);
    lua_Integer group = luaL_optinteger(L, 4, 1);
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    out_shape(L, l, x, &nd, shape);
    int64_t n = x->shape[0];
    if (n < 1) return luaL_argerror(L, 2, "input_gradients: the input has no samples");
    int fits = gy->ndim == nd && gy->shape[0] >= n && gy->shape[0] % n == 0;
    for (int i = 1; fits && i < nd; i++) fits = gy->shape[i] == shape[i];
    if (!fits)
        return luaL_error(L, "input_gradients: gy must stack blocks of %d rows shaped like the output "
                          "(%d x ...), got %d rows", (int)n, (int)shape[0], (int)gy->shape[0]);
    luaL_argcheck(L, group >= 1 && n % group == 0, 4, "group must be a positive divisor of x's rows");
    lps_tensor *y = lps_lua_newtensor(L, nd, shape);
    int64_t gsh[LPS_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) gsh[i] = x->shape[i];
    gsh[0] = gy->shape[0] / n * (n / group);
    lps_tensor *gx = lps_lua_newtensor(L, x->ndim, gsh);
    LPS_LCHECK(L, lps_layer_input_gradients(l, x, y, gy, group, gx));
    return 2;
}

/* output_shape(shape) -> shape: the output's sizes for an input of these
 * sizes (a list, the batch first), checking that the input fits. */
static int m_output_shape(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int nd = (int)luaL_len(L, 2), ond;
    luaL_argcheck(L, nd >= 1 && nd <= LPS_MAX_DIMS, 2, "a list of 1 to 4 sizes");
    int64_t in[LPS_MAX_DIMS], out[LPS_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        lua_geti(L, 2, i + 1);
        int ok;
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        luaL_argcheck(L, ok && v >= 0, 2, "sizes must be non-negative integers");
        in[i] = v;
        lua_pop(L, 1);
    }
    LPS_LCHECK(L, lps_layer_out_shape(l, nd, in, &ond, out));
    lua_createtable(L, ond, 0);
    for (int i = 0; i < ond; i++) {
        lua_pushinteger(L, out[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
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

/* stat_prior(w): the dream prior of the module's batch norm layers (w
 * finite, 0: off; negative for gradient ascent on the input) */
static int m_stat_prior(lua_State *L)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lua_Number w = luaL_checknumber(L, 2);
    if (!(w >= -1e30 && w <= 1e30))
        return luaL_argerror(L, 2, lua_pushfstring(L, "a finite weight expected, got %f", w));
    lps_layer_set_stat_prior(l, (float)w);
    lua_settop(L, 1);
    return 1;
}

/* stat_prior_weight(), uses_batch_stats(): the module's own settings */
static int m_stat_prior_weight(lua_State *L)
{
    lua_pushnumber(L, lps_lua_checkmodule(L, 1)->stat_prior);
    return 1;
}

static int m_uses_batch_stats(lua_State *L)
{
    lua_pushboolean(L, lps_lua_checkmodule(L, 1)->batch_stats);
    return 1;
}

/* batch_stats([flag=true]): eval-mode batch norm normalizes by each batch's statistics (AdaBN) */
static int m_batch_stats(lua_State *L)
{
    lps_layer_set_batch_stats(lps_lua_checkmodule(L, 1), lua_isnoneornil(L, 2) || lua_toboolean(L, 2));
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
    lua_pushstring(L, lps_layer_type_name(lps_lua_checkmodule(L, 1)->type));
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

/* arch() -> the architecture as a list of entry tables, and its JSON text. */
static int m_arch(lua_State *L)
{
    lps_arch **box = lps_lua_newarchbox(L); /* frees the arch however this ends */
    if (lps_layer_arch(lps_lua_checkmodule(L, 1), box)) return lps_lua_raise(L);
    char *json;
    size_t jl;
    if (lps_arch_to_json(*box, &json, &jl)) return lps_lua_raise(L);
    lua_pushlstring(L, json, jl);
    free(json);
    lps_lua_pusharch(L, *box);
    lua_insert(L, -2);
    return 2;
}

typedef struct {
    lua_State *L;
    int buffers; /* which to list: 0 parameters, 1 buffers */
    int n;
} named_ctx;

static void named_one(void *ud, const char *name, lps_tensor *t, int is_buffer)
{
    named_ctx *c = ud;
    if (is_buffer != c->buffers) return;
    lua_State *L = c->L;
    lua_createtable(L, 0, 2);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lps_lua_pushtensor(L, lps_tensor_reshape(t, t->ndim, t->shape));
    lua_setfield(L, -2, "tensor");
    lua_rawseti(L, -2, ++c->n);
}

/* named_parameters() / named_buffers() -> {{name = "0.weight", tensor = view}, ...}
 * in PyTorch's state_dict order; the tensors share memory with the module. */
static int count_buffers(const lps_layer *l)
{
    int n = l->nbuffers;
    for (int i = 0; i < l->nchildren; i++) n += count_buffers(l->children[i]);
    return n;
}

static int named(lua_State *L, int buffers)
{
    lps_layer *l = lps_lua_checkmodule(L, 1);
    lua_newtable(L);
    if (buffers && count_buffers(l) == 0) return 1; /* no names to format */
    named_ctx c = {L, buffers, 0};
    lps_layer_named(l, named_one, &c);
    return 1;
}

static int m_named_parameters(lua_State *L) { return named(L, 0); }
static int m_named_buffers(lua_State *L) { return named(L, 1); }

static int m_tostring(lua_State *L)
{
    module_ud *u = luaL_checkudata(L, 1, LPS_MODULE_MT);
    if (!u->l) {
        lua_pushliteral(L, "lualps.Module (closed)");
        return 1;
    }
    char *s = lps_layer_repr(u->l);
    if (!s) return lps_lua_raise(L);
    lua_pushstring(L, s);
    free(s);
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

/* cross_entropy(logits, labels[, want_grad]) -> mean loss[, dloss/dlogits] */
static int l_cross_entropy(lua_State *L)
{
    lps_tensor *z = lps_lua_checktensor(L, 1);
    if (z->ndim != 2 || z->shape[1] < 1) {
        char b[64];
        return luaL_error(L, "cross_entropy: logits %s should be (batch x classes)",
                          lps_shape_str(z, b, sizeof b));
    }
    int32_t *y = lps_lua_checklabels32(L, 2, z->shape[0], z->shape[1], "cross_entropy");
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
    {"zero_grad", m_zero_grad}, {"train", m_train}, {"evaluate", m_evaluate}, {"eval", m_evaluate},
    {"freeze", m_freeze}, {"stat_prior", m_stat_prior}, {"batch_stats", m_batch_stats},
    {"stat_prior_weight", m_stat_prior_weight}, {"uses_batch_stats", m_uses_batch_stats}, {"input_gradients", m_input_gradients}, {"output_shape", m_output_shape},
    {"is_training", m_is_training}, {"type", m_type}, {"num_parameters", m_num_parameters},
    {"children", m_children}, {"arch", m_arch}, {"named_parameters", m_named_parameters},
    {"named_buffers", m_named_buffers}, {"close", m_gc}, {NULL, NULL}};

static const luaL_Reg metamethods[] = {
    {"__index", m_index}, {"__len", m_len}, {"__tostring", m_tostring},
    {"__gc", m_gc}, {"__close", m_gc}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"layer", l_layer}, {"sequential", l_sequential}, {"from_arch", l_from_arch},
    {"cross_entropy", l_cross_entropy}, {NULL, NULL}};

void lps_lua_open_nn(lua_State *L)
{
    luaL_newmetatable(L, LPS_MODULE_MT);
    luaL_setfuncs(L, metamethods, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
    /* The method table, so lualps/nn.lua can add methods written in Lua. */
    luaL_getmetatable(L, LPS_MODULE_MT);
    lua_getfield(L, -1, "methods");
    lua_setfield(L, -3, "Module");
    lua_pop(L, 1);
}
