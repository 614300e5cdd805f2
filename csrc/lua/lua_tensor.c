/* lua_tensor.c - the lualps.Tensor userdata: creation, access, math, printing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/binding.h"

/* Output of a's shape for an operation that writes every element. */
static lps_tensor *like(lua_State *L, const lps_tensor *a)
{
    return lps_lua_emptytensor(L, a->ndim, a->shape);
}

/* ------------------------------------------------------------- shapes */

/* Read sizes from arguments first..last (numbers), or one table of numbers. */
static int check_shape(lua_State *L, int first, int last, int64_t *shape, const char *op)
{
    int nd = 0;
    if (first <= last && lua_istable(L, first)) {
        nd = (int)luaL_len(L, first);
        if (nd < 1 || nd > LPS_MAX_DIMS)
            return luaL_error(L, "%s: a shape has 1 to %d sizes, got %d", op, LPS_MAX_DIMS, nd);
        for (int i = 0; i < nd; i++) {
            lua_geti(L, first, i + 1);
            int ok;
            lua_Integer v = lua_tointegerx(L, -1, &ok);
            if (!ok) return luaL_error(L, "%s: size %d of the shape is not an integer", op, i + 1);
            shape[i] = v;
            lua_pop(L, 1);
        }
    } else {
        nd = last - first + 1;
        if (nd < 1 || nd > LPS_MAX_DIMS)
            return luaL_error(L, "%s: a shape has 1 to %d sizes, got %d", op, LPS_MAX_DIMS, nd);
        for (int i = 0; i < nd; i++) shape[i] = luaL_checkinteger(L, first + i);
    }
    for (int i = 0; i < nd; i++)
        if (shape[i] < 0)
            return luaL_error(L, "%s: size %d is negative (%d)", op, i + 1, (int)shape[i]);
    if (lps_shape_check(op, nd, shape, NULL)) lps_lua_raise(L);
    return nd;
}

/* Number of leading size arguments before an optional trailing non-size argument. */
static int last_size_arg(lua_State *L, int extra_trailing)
{
    int top = lua_gettop(L);
    return top - extra_trailing;
}

/* ------------------------------------------------------------- creation */

/* Walk a nested table: find the shape from first elements, then fill. */
static void nested_shape(lua_State *L, int idx, int64_t *shape, int *nd)
{
    lua_pushvalue(L, idx);
    *nd = 0;
    while (lua_istable(L, -1)) {
        if (*nd == LPS_MAX_DIMS)
            luaL_error(L, "tensor: nested table is deeper than %d levels", LPS_MAX_DIMS);
        shape[(*nd)++] = (int64_t)luaL_len(L, -1);
        if (shape[*nd - 1] == 0) break;
        lua_geti(L, -1, 1);
        lua_remove(L, -2);
    }
    lua_pop(L, 1);
    if (*nd == 0) luaL_error(L, "tensor: expected a (nested) table of numbers");
}

static int64_t nested_fill(lua_State *L, int idx, const int64_t *shape, int nd, int depth,
                           float *out, int64_t pos, char *path, size_t plen)
{
    int64_t n = (int64_t)luaL_len(L, idx);
    if (n != shape[depth])
        luaL_error(L, "tensor: ragged nested table: %s has %d entries, expected %d", path, (int)n,
                   (int)shape[depth]);
    for (int64_t i = 1; i <= n; i++) {
        int t = lua_geti(L, idx, i);
        size_t l = strlen(path);
        snprintf(path + l, plen - l, "[%lld]", (long long)i);
        if (depth + 1 < nd) {
            if (t != LUA_TTABLE)
                luaL_error(L, "tensor: ragged nested table: %s is a %s, expected a table", path,
                           luaL_typename(L, -1));
            pos = nested_fill(L, lua_gettop(L), shape, nd, depth + 1, out, pos, path, plen);
        } else {
            int ok;
            lua_Number v = lua_tonumberx(L, -1, &ok);
            if (!ok || t == LUA_TSTRING)
                luaL_error(L, "tensor: element %s is a %s, expected a number", path,
                           luaL_typename(L, -1));
            out[pos++] = (float)v;
        }
        path[l] = '\0';
        lua_pop(L, 1);
    }
    return pos;
}

static int l_tensor(lua_State *L)
{
    if (lps_lua_totensor(L, 1)) { /* tensor(t) copies */
        lps_tensor *src = lps_lua_checktensor(L, 1);
        return lps_lua_pushtensor(L, lps_tensor_clone(src)), 1;
    }
    if (lua_type(L, 1) == LUA_TNUMBER) { /* a scalar becomes a 1-element tensor */
        int64_t one = 1;
        lps_tensor *t = lps_lua_newtensor(L, 1, &one);
        t->data[0] = (float)lua_tonumber(L, 1);
        return 1;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    int64_t shape[LPS_MAX_DIMS];
    int nd;
    nested_shape(L, 1, shape, &nd);
    lps_tensor *t = lps_lua_newtensor(L, nd, shape);
    char path[128] = "t";
    nested_fill(L, 1, shape, nd, 0, t->data, 0, path, sizeof path);
    return 1;
}

static int fill_new(lua_State *L, int last, float v, const char *op)
{
    int64_t shape[LPS_MAX_DIMS];
    int nd = check_shape(L, 1, last, shape, op);
    lps_tensor *t = lps_lua_newtensor(L, nd, shape);
    if (v != 0.0f) lps_fill(t, v);
    return 1;
}

static int l_zeros(lua_State *L) { return fill_new(L, lua_gettop(L), 0.0f, "zeros"); }
static int l_ones(lua_State *L) { return fill_new(L, lua_gettop(L), 1.0f, "ones"); }

static int l_full(lua_State *L)
{
    int top = lua_gettop(L);
    if (top < 2) return luaL_error(L, "full: expected sizes then a value, e.g. full(2, 3, 0.5)");
    float v = (float)luaL_checknumber(L, top);
    return fill_new(L, top - 1, v, "full");
}

static int l_arange(lua_State *L)
{
    int64_t n = luaL_checkinteger(L, 1);
    if (n < 0) return luaL_error(L, "arange: n must be >= 0, got %d", (int)n);
    lps_tensor *t = lps_lua_newtensor(L, 1, &n);
    lps_arange(t);
    return 1;
}

static int random_new(lua_State *L, int normal)
{
    int top = lua_gettop(L);
    int has_gen = top >= 1 && luaL_testudata(L, top, LPS_GENERATOR_MT) != NULL;
    lps_rng *r = lps_lua_optrng(L, has_gen ? top : 0);
    int64_t shape[LPS_MAX_DIMS];
    int nd = check_shape(L, 1, last_size_arg(L, has_gen), shape, normal ? "randn" : "rand");
    lps_tensor *t = lps_lua_newtensor(L, nd, shape);
    LPS_LCHECK(L, normal ? lps_randn(t, r, 0.0f, 1.0f) : lps_rand(t, r, 0.0f, 1.0f));
    return 1;
}

static int l_rand(lua_State *L) { return random_new(L, 0); }
static int l_randn(lua_State *L) { return random_new(L, 1); }

/* ------------------------------------------------------------- access */

static int l_shape(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) {
        lua_pushinteger(L, t->shape[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int l_size(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    if (lua_isnoneornil(L, 2)) return l_shape(L);
    lua_Integer d = luaL_checkinteger(L, 2);
    if (d < 1 || d > t->ndim)
        return luaL_error(L, "size: dimension %d out of range 1..%d", (int)d, t->ndim);
    lua_pushinteger(L, t->shape[d - 1]);
    return 1;
}

static int l_dim(lua_State *L)
{
    lua_pushinteger(L, lps_lua_checktensor(L, 1)->ndim);
    return 1;
}

static int l_numel(lua_State *L)
{
    lua_pushinteger(L, lps_lua_checktensor(L, 1)->numel);
    return 1;
}

static int l_len(lua_State *L)
{
    lua_pushinteger(L, lps_lua_checktensor(L, 1)->shape[0]);
    return 1;
}

/* Flat offset from 1-based indices at arguments first..first+ndim-1. */
static int64_t flat_index(lua_State *L, lps_tensor *t, int first, const char *op)
{
    int given = lua_gettop(L) - first + 1;
    if (strcmp(op, "set") == 0) given--; /* the value comes last */
    if (given != t->ndim)
        return luaL_error(L, "%s: tensor has %d dimensions, got %d indices", op, t->ndim, given);
    int64_t off = 0;
    for (int i = 0; i < t->ndim; i++) {
        lua_Integer ix = luaL_checkinteger(L, first + i);
        if (ix < 1 || ix > t->shape[i])
            return luaL_error(L, "%s: index %d out of range 1..%d for dimension %d of a %s tensor", op,
                              (int)ix, (int)t->shape[i], i + 1,
                              lps_shape_str(t, (char[64]){0}, 64));
        off = off * t->shape[i] + (ix - 1);
    }
    return off;
}

static int l_get(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    lua_pushnumber(L, t->data[flat_index(L, t, 2, "get")]);
    return 1;
}

static int l_set(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    int64_t off = flat_index(L, t, 2, "set");
    t->data[off] = (float)luaL_checknumber(L, lua_gettop(L));
    lua_settop(L, 1);
    return 1;
}

static void push_nested(lua_State *L, const lps_tensor *t, int depth, const float **p)
{
    lua_createtable(L, (int)t->shape[depth], 0);
    for (int64_t i = 0; i < t->shape[depth]; i++) {
        if (depth + 1 < t->ndim)
            push_nested(L, t, depth + 1, p);
        else
            lua_pushnumber(L, *(*p)++);
        lua_rawseti(L, -2, i + 1);
    }
}

static int l_totable(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    const float *p = t->data;
    push_nested(L, t, 0, &p);
    return 1;
}

static int l_clone(lua_State *L)
{
    return lps_lua_pushtensor(L, lps_tensor_clone(lps_lua_checktensor(L, 1))), 1;
}

static int l_copy(lua_State *L)
{
    lps_tensor *dst = lps_lua_checktensor(L, 1), *src = lps_lua_checktensor(L, 2);
    LPS_LCHECK(L, lps_copy(dst, src));
    lua_settop(L, 1);
    return 1;
}

static int l_reshape(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    int64_t shape[LPS_MAX_DIMS];
    int nd, infer = -1;
    /* Sizes may include one -1, inferred from the element count. */
    if (lua_istable(L, 2)) {
        nd = (int)luaL_len(L, 2);
        if (nd < 1 || nd > LPS_MAX_DIMS)
            return luaL_error(L, "reshape: a shape has 1 to %d sizes, got %d", LPS_MAX_DIMS, nd);
        for (int i = 0; i < nd; i++) {
            lua_geti(L, 2, i + 1);
            shape[i] = lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
    } else {
        nd = lua_gettop(L) - 1;
        if (nd < 1 || nd > LPS_MAX_DIMS)
            return luaL_error(L, "reshape: a shape has 1 to %d sizes, got %d", LPS_MAX_DIMS, nd);
        for (int i = 0; i < nd; i++) shape[i] = luaL_checkinteger(L, i + 2);
    }
    int64_t known = 1;
    for (int i = 0; i < nd; i++) {
        if (shape[i] == -1 && infer < 0) {
            infer = i;
            continue;
        }
        if (shape[i] < 0) return luaL_error(L, "reshape: size %d is negative (%d)", i + 1, (int)shape[i]);
        /* a product past the element limit never matches (and would overflow) */
        if (shape[i] > 0 && known > LPS_MAX_NUMEL / shape[i]) {
            char b[64];
            return luaL_error(L, "reshape: cannot view %s (%I elements): size %d (%I) makes too many",
                              lps_shape_str(t, b, sizeof b), (lua_Integer)t->numel, i + 1, (lua_Integer)shape[i]);
        }
        known *= shape[i] ? shape[i] : 1;
    }
    if (infer >= 0) {
        if (known == 0 || t->numel % known)
            return luaL_error(L, "reshape: cannot infer size %d: %d elements do not divide by %d",
                              infer + 1, (int)t->numel, (int)known);
        shape[infer] = t->numel / known;
    }
    return lps_lua_pushtensor(L, lps_tensor_reshape(t, nd, shape)), 1;
}

static int l_t(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    if (t->ndim != 2) {
        char b[64];
        return luaL_error(L, "t: needs a 2-D tensor, got %s", lps_shape_str(t, b, sizeof b));
    }
    int64_t shape[2] = {t->shape[1], t->shape[0]};
    lps_tensor *o = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_transpose(o, t));
    return 1;
}

static int l_rows(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2), j = luaL_optinteger(L, 3, i);
    if (i < 1 || j < i - 1 || j > t->shape[0])
        return luaL_error(L, "rows: rows %d..%d out of range 1..%d", (int)i, (int)j, (int)t->shape[0]);
    return lps_lua_pushtensor(L, lps_tensor_rows(t, i - 1, j - i + 1)), 1;
}

static int l_index_rows(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    lps_tensor *it = lps_lua_totensor(L, 2);
    int64_t n;
    if (it)
        n = it->numel;
    else {
        luaL_checktype(L, 2, LUA_TTABLE);
        n = (int64_t)luaL_len(L, 2);
    }
    int64_t *idx = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof(int64_t), 0); /* GC-owned scratch */
    for (int64_t k = 0; k < n; k++) {
        double v;
        if (it)
            v = it->data[k];
        else {
            lua_geti(L, 2, k + 1);
            int ok;
            v = (double)lua_tointegerx(L, -1, &ok);
            if (!ok) return luaL_error(L, "index_rows: entry %d is not an integer", (int)k + 1);
            lua_pop(L, 1);
        }
        if (v != floor(v)) return luaL_error(L, "index_rows: entry %d is not an integer", (int)k + 1);
        /* beyond any row count (and clear of int64's ends, inf included):
         * the conversion below would overflow */
        if (fabs(v) > 0x1p62) {
            char b[32];
            snprintf(b, sizeof b, "%g", v);
            return luaL_error(L, "index_rows: index %s (position %d) out of range 1..%I", b, (int)k + 1,
                              (lua_Integer)t->shape[0]);
        }
        idx[k] = (int64_t)v - 1;
    }
    int64_t shape[LPS_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = n;
    lps_tensor *o = lps_lua_newtensor(L, t->ndim, shape);
    LPS_LCHECK(L, lps_index_rows(o, t, idx, n));
    return 1;
}

/* ------------------------------------------------------------- math */

static int l_matmul(lua_State *L)
{
    lps_tensor *a = lps_lua_checktensor(L, 1), *b = lps_lua_checktensor(L, 2);
    int ta = lua_toboolean(L, 3), tb = lua_toboolean(L, 4);
    if (a->ndim != 2 || b->ndim != 2) {
        char s1[64], s2[64];
        return luaL_error(L, "matmul: needs 2-D tensors, got %s and %s", lps_shape_str(a, s1, 64),
                          lps_shape_str(b, s2, 64));
    }
    int64_t shape[2] = {ta ? a->shape[1] : a->shape[0], tb ? b->shape[0] : b->shape[1]};
    lps_tensor *c;
    if (!lua_isnoneornil(L, 5)) { /* matmul(a, b, ta, tb, out): reuse out */
        c = lps_lua_checktensor(L, 5);
        lua_settop(L, 5);
    } else
        c = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_matmul(c, a, ta, b, tb, 1.0f, 0.0f));
    return 1;
}

static int arith(lua_State *L, lps_binop op)
{
    lps_tensor *a = lps_lua_totensor(L, 1), *b = lps_lua_totensor(L, 2);
    if (a && b) {
        /* A row vector on the left broadcasts too: swap for + and *, and
         * for - compute -(b - a). */
        if (!lps_same_shape(a, b) && a->numel == b->shape[b->ndim - 1] && b->ndim >= 2 &&
            op != LPS_DIV) {
            lps_tensor *o = like(L, b);
            LPS_LCHECK(L, lps_binary(o, b, op, a));
            if (op == LPS_SUB) lps_unary(o, o, LPS_NEG);
            return 1;
        }
        lps_tensor *o = like(L, a);
        LPS_LCHECK(L, lps_binary(o, a, op, b));
        return 1;
    }
    if (a && lua_type(L, 2) == LUA_TNUMBER) {
        lps_tensor *o = like(L, a);
        LPS_LCHECK(L, lps_binary_scalar(o, a, op, (float)lua_tonumber(L, 2), 0));
        return 1;
    }
    if (b && lua_type(L, 1) == LUA_TNUMBER) {
        lps_tensor *o = like(L, b);
        LPS_LCHECK(L, lps_binary_scalar(o, b, op, (float)lua_tonumber(L, 1), 1));
        return 1;
    }
    static const char *sym[] = {"+", "-", "*", "/"};
    return luaL_error(L, "arithmetic '%s': expected tensors or numbers, got %s and %s", sym[op],
                      luaL_typename(L, 1), luaL_typename(L, 2));
}

static int l_add(lua_State *L) { return arith(L, LPS_ADD); }
static int l_sub(lua_State *L) { return arith(L, LPS_SUB); }
static int l_mul(lua_State *L) { return arith(L, LPS_MUL); }
static int l_div(lua_State *L) { return arith(L, LPS_DIV); }

static int l_unm(lua_State *L)
{
    lps_tensor *a = lps_lua_checktensor(L, 1);
    lps_unary(like(L, a), a, LPS_NEG);
    return 1;
}

/* In place: t:op_(u) with u a tensor (same shape or row) or a number. */
static int inplace(lua_State *L, lps_binop op)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    lps_tensor *u = lps_lua_totensor(L, 2);
    if (u && op == LPS_ADD && !lua_isnoneornil(L, 3)) {
        float alpha = (float)luaL_checknumber(L, 3);
        if (lps_same_shape(t, u) || t->numel == u->numel) {
            LPS_LCHECK(L, lps_axpy(t, alpha, u));
        } else {
            /* Scaled broadcast: go through a scratch copy of the row. */
            lps_tensor *s = like(L, u);
            lps_binary_scalar(s, u, LPS_MUL, alpha, 0);
            LPS_LCHECK(L, lps_binary(t, t, op, s));
        }
    } else if (u) {
        LPS_LCHECK(L, lps_binary(t, t, op, u));
    } else {
        LPS_LCHECK(L, lps_binary_scalar(t, t, op, (float)luaL_checknumber(L, 2), 0));
    }
    lua_settop(L, 1);
    return 1;
}

static int l_add_(lua_State *L) { return inplace(L, LPS_ADD); }
static int l_sub_(lua_State *L) { return inplace(L, LPS_SUB); }
static int l_mul_(lua_State *L) { return inplace(L, LPS_MUL); }
static int l_div_(lua_State *L) { return inplace(L, LPS_DIV); }

static int l_fill_(lua_State *L)
{
    lps_fill(lps_lua_checktensor(L, 1), (float)luaL_checknumber(L, 2));
    lua_settop(L, 1);
    return 1;
}

static int l_zero_(lua_State *L)
{
    lps_fill(lps_lua_checktensor(L, 1), 0.0f);
    lua_settop(L, 1);
    return 1;
}

#define UNARY(name, OP)                                                                          \
    static int l_##name(lua_State *L)                                                            \
    {                                                                                            \
        lps_tensor *a = lps_lua_checktensor(L, 1);                                               \
        lps_unary(like(L, a), a, OP);                                                            \
        return 1;                                                                                \
    }
UNARY(exp, LPS_EXP)
UNARY(log, LPS_LOG)
UNARY(sqrt, LPS_SQRT)
UNARY(abs, LPS_ABS)
UNARY(relu, LPS_RELU)
UNARY(sigmoid, LPS_SIGMOID)
UNARY(tanh, LPS_TANH)

/* t:op() over all elements returns a number; t:op(d) reduces dimension d.
 * max/min over a dimension also return the 1-based positions. */
static int reduce(lua_State *L, lps_redop op)
{
    lps_tensor *a = lps_lua_checktensor(L, 1);
    if (lua_isnoneornil(L, 2)) {
        double r;
        LPS_LCHECK(L, lps_reduce_all(a, op, &r));
        if (op == LPS_ARGMAX)
            lua_pushinteger(L, (lua_Integer)r + 1);
        else
            lua_pushnumber(L, r);
        return 1;
    }
    lua_Integer d = luaL_checkinteger(L, 2);
    if (d < 1 || d > a->ndim)
        return luaL_error(L, "reduce: dimension %d out of range 1..%d", (int)d, a->ndim);
    int64_t shape[LPS_MAX_DIMS];
    int nd = lps_reduce_shape(a, (int)d - 1, shape);
    lps_tensor *o = lps_lua_newtensor(L, nd, shape);
    LPS_LCHECK(L, lps_reduce_dim(o, a, (int)d - 1, op));
    if (op == LPS_ARGMAX) lps_binary_scalar(o, o, LPS_ADD, 1.0f, 0);
    if (op == LPS_MAX) {
        lps_tensor *ix = lps_lua_newtensor(L, nd, shape);
        LPS_LCHECK(L, lps_reduce_dim(ix, a, (int)d - 1, LPS_ARGMAX));
        lps_binary_scalar(ix, ix, LPS_ADD, 1.0f, 0);
        return 2;
    }
    return 1;
}

static int l_sum(lua_State *L) { return reduce(L, LPS_SUM); }
static int l_mean(lua_State *L) { return reduce(L, LPS_MEAN); }
static int l_max(lua_State *L) { return reduce(L, LPS_MAX); }
static int l_min(lua_State *L) { return reduce(L, LPS_MIN); }
static int l_argmax(lua_State *L) { return reduce(L, LPS_ARGMAX); }
static int l_norm(lua_State *L) { return reduce(L, LPS_NORM); }

static int l_allclose(lua_State *L)
{
    lps_tensor *a = lps_lua_checktensor(L, 1), *b = lps_lua_checktensor(L, 2);
    float rtol = (float)luaL_optnumber(L, 3, 1e-5), atol = (float)luaL_optnumber(L, 4, 1e-8);
    lua_pushboolean(L, lps_allclose(a, b, rtol, atol));
    return 1;
}

static int l_is_tensor(lua_State *L)
{
    lua_pushboolean(L, lps_lua_totensor(L, 1) != NULL);
    return 1;
}

static int l_refcount(lua_State *L)
{
    lua_pushinteger(L, lps_tensor_refcount(lps_lua_checktensor(L, 1)));
    return 1;
}

/* ------------------------------------------------------------- printing */

static void add_num(luaL_Buffer *b, float v)
{
    char s[32];
    snprintf(s, sizeof s, "%.4g", (double)v);
    luaL_addstring(b, s);
}

/* One row of up to 6 values with an ellipsis in the middle when longer. */
static void add_row(luaL_Buffer *b, const float *x, int64_t n)
{
    luaL_addchar(b, '[');
    for (int64_t i = 0; i < n; i++) {
        if (n > 6 && i == 3) {
            luaL_addstring(b, "..., ");
            i = n - 3;
        }
        add_num(b, x[i]);
        if (i + 1 < n) luaL_addstring(b, ", ");
    }
    luaL_addchar(b, ']');
}

static int l_tostring(lua_State *L)
{
    lps_tensor_ud *u = luaL_checkudata(L, 1, LPS_TENSOR_MT);
    if (!u->t) {
        lua_pushstring(L, "lualps.Tensor (closed)");
        return 1;
    }
    lps_tensor *t = u->t;
    char sh[64];
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "lualps.Tensor float32 %s\n", lps_shape_str(t, sh, sizeof sh));
    luaL_addvalue(&b);
    if (t->ndim == 2 && t->numel > 0) {
        int64_t rows = t->shape[0], cols = t->shape[1];
        luaL_addchar(&b, '[');
        for (int64_t r = 0; r < rows; r++) {
            if (rows > 6 && r == 3) {
                luaL_addstring(&b, " ...\n");
                r = rows - 3;
            }
            if (r) luaL_addchar(&b, ' ');
            add_row(&b, t->data + r * cols, cols);
            luaL_addstring(&b, r + 1 < rows ? ",\n" : "");
        }
        luaL_addchar(&b, ']');
    } else {
        /* 1-D, 3-D, 4-D: the first values in storage order. */
        add_row(&b, t->data, t->numel);
    }
    luaL_pushresult(&b);
    return 1;
}

/* t[i]: element of a 1-D tensor, row view otherwise; names look up methods. */
static int l_index(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lps_tensor *t = lps_lua_checktensor(L, 1);
        lua_Integer i = luaL_checkinteger(L, 2);
        if (i < 1 || i > t->shape[0])
            return luaL_error(L, "index %d out of range 1..%d", (int)i, (int)t->shape[0]);
        if (t->ndim == 1) {
            lua_pushnumber(L, t->data[i - 1]);
            return 1;
        }
        lps_tensor *row = lps_tensor_rows(t, i - 1, 1);
        if (!row) return lps_lua_raise(L);
        int64_t shape[LPS_MAX_DIMS];
        for (int k = 1; k < t->ndim; k++) shape[k - 1] = t->shape[k];
        lps_tensor *v = lps_tensor_reshape(row, t->ndim - 1, shape);
        lps_tensor_free(row);
        return lps_lua_pushtensor(L, v), 1;
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int l_newindex(lua_State *L)
{
    lps_tensor *t = lps_lua_checktensor(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (t->ndim != 1) return luaL_error(L, "t[i] = v works on 1-D tensors; use t:set(i, j, v)");
    if (i < 1 || i > t->shape[0])
        return luaL_error(L, "index %d out of range 1..%d", (int)i, (int)t->shape[0]);
    t->data[i - 1] = (float)luaL_checknumber(L, 3);
    return 0;
}

static int l_gc(lua_State *L)
{
    lps_tensor_ud *u = luaL_checkudata(L, 1, LPS_TENSOR_MT);
    lps_tensor_free(u->t);
    u->t = NULL;
    return 0;
}

static const luaL_Reg methods[] = {
    {"shape", l_shape}, {"size", l_size}, {"dim", l_dim}, {"numel", l_numel},
    {"get", l_get}, {"set", l_set}, {"totable", l_totable}, {"clone", l_clone},
    {"copy", l_copy}, {"reshape", l_reshape}, {"view", l_reshape}, {"t", l_t},
    {"rows", l_rows}, {"index_rows", l_index_rows}, {"matmul", l_matmul},
    {"add", l_add}, {"sub", l_sub}, {"mul", l_mul}, {"div", l_div},
    {"add_", l_add_}, {"sub_", l_sub_}, {"mul_", l_mul_}, {"div_", l_div_},
    {"fill_", l_fill_}, {"zero_", l_zero_},
    {"exp", l_exp}, {"log", l_log}, {"sqrt", l_sqrt}, {"abs", l_abs}, {"relu", l_relu},
    {"sigmoid", l_sigmoid}, {"tanh", l_tanh},
    {"sum", l_sum}, {"mean", l_mean}, {"max", l_max}, {"min", l_min},
    {"argmax", l_argmax}, {"norm", l_norm}, {"refcount", l_refcount},
    {"close", l_gc}, {NULL, NULL}};

static const luaL_Reg metamethods[] = {
    {"__index", l_index}, {"__newindex", l_newindex}, {"__len", l_len},
    {"__tostring", l_tostring}, {"__gc", l_gc}, {"__close", l_gc},
    {"__add", l_add}, {"__sub", l_sub}, {"__mul", l_mul}, {"__div", l_div},
    {"__unm", l_unm}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"tensor", l_tensor}, {"zeros", l_zeros}, {"ones", l_ones}, {"full", l_full},
    {"arange", l_arange}, {"rand", l_rand}, {"randn", l_randn}, {"matmul", l_matmul},
    {"allclose", l_allclose}, {"is_tensor", l_is_tensor}, {NULL, NULL}};

void lps_lua_open_tensor(lua_State *L)
{
    luaL_newmetatable(L, LPS_TENSOR_MT);
    luaL_setfuncs(L, metamethods, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
    lua_pushliteral(L, "lualps.Tensor");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
    /* Expose the method table so Lua code can extend tensors. */
    luaL_getmetatable(L, LPS_TENSOR_MT);
    lua_getfield(L, -1, "methods");
    lua_setfield(L, -3, "Tensor");
    lua_pop(L, 1);
}
