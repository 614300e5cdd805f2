/* lua_aux.c - the argument helpers every binding file uses, as lauxlib is
 * to Lua: raising C errors, scratch memory, tensor arguments and results,
 * the one label checker, options. */
#include <math.h>
#include <stdio.h>

#include "lua/binding.h"

int lps_lua_raise(lua_State *L) { return luaL_error(L, "%s", lps_errmsg()); }

/* ------------------------------------------------ tensor arguments */
/* (the userdata's functions and methods are lua_tensor.c's) */


lps_tensor *lps_lua_totensor(lua_State *L, int idx)
{
    lps_tensor_ud *u = luaL_testudata(L, idx, LPS_TENSOR_MT);
    return u ? u->t : NULL;
}

lps_tensor *lps_lua_checktensor(lua_State *L, int idx)
{
    lps_tensor_ud *u = luaL_checkudata(L, idx, LPS_TENSOR_MT);
    if (!u->t) luaL_argerror(L, idx, "tensor has been closed");
    return u->t;
}

/* Tell the collector about tensor data it does not see: the userdata is a
 * few bytes, the floats live in C, and a loop making large tensors would
 * otherwise grow far ahead of the collector (GBs before a cycle). Views
 * share storage (refcount > 1) and allocate nothing. */
static void account(lua_State *L, const lps_tensor *t)
{
    int64_t kb = t->numel * (int64_t)sizeof(float) / 1024;
    if (kb >= 16 && lps_tensor_refcount(t) == 1) lua_gc(L, LUA_GCSTEP, kb > INT32_MAX ? INT32_MAX : (int)kb);
}

static lps_tensor_ud *push_ud(lua_State *L)
{
    lps_tensor_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = NULL;
    luaL_setmetatable(L, LPS_TENSOR_MT);
    return u;
}

lps_tensor *lps_lua_pushtensor(lua_State *L, lps_tensor *t)
{
    if (!t) lps_lua_raise(L);
    lps_tensor_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = t;
    luaL_setmetatable(L, LPS_TENSOR_MT);
    account(L, t);
    return t;
}

lps_tensor *lps_lua_newtensor(lua_State *L, int ndim, const int64_t *shape)
{
    lps_tensor_ud *u = push_ud(L); /* owned by Lua before the data exists */
    u->t = lps_tensor_new(ndim, shape);
    if (!u->t) lps_lua_raise(L);
    account(L, u->t);
    return u->t;
}

lps_tensor *lps_lua_emptytensor(lua_State *L, int ndim, const int64_t *shape)
{
    lps_tensor_ud *u = push_ud(L);
    u->t = lps_tensor_empty(ndim, shape);
    if (!u->t) lps_lua_raise(L);
    account(L, u->t);
    return u->t;
}


void *lps_lua_scratch(lua_State *L, size_t bytes) { return lua_newuserdatauv(L, bytes ? bytes : 1, 0); }

/* Label i (0-based) of the tensor t or the table at idx as a double; NaN
 * for what is not a number. */
static double label_at(lua_State *L, int idx, const lps_tensor *t, int64_t i)
{
    if (t) return t->data[i];
    lua_geti(L, idx, i + 1);
    int ok;
    lua_Number v = lua_tonumberx(L, -1, &ok);
    lua_pop(L, 1);
    return ok ? (double)v : NAN;
}

static int64_t label_count(lua_State *L, int idx, int64_t n, const char *op, const char *what,
                           lps_tensor **t)
{
    *t = lps_lua_totensor(L, idx);
    int64_t have;
    if (*t)
        have = (*t)->numel;
    else if (lua_istable(L, idx))
        have = (int64_t)luaL_len(L, idx);
    else
        return luaL_error(L, "%s: %s should be a tensor or a table of class numbers, got a %s", op, what,
                          luaL_typename(L, idx));
    if (n >= 0 && have != n) luaL_error(L, "%s: %d %s for %d samples", op, (int)have, what, (int)n);
    return have;
}

static int64_t check_one(lua_State *L, double v, int64_t i, int64_t classes, const char *op,
                         const char *what)
{
    if (classes < 0) { /* categories: any whole number, kept as given */
        if (isnan(v)) luaL_error(L, "%s: %s entry %d is not a number", op, what, (int)i + 1);
        if (!(fabs(v) <= 9007199254740992.0) || v != floor(v)) {
            char num[32];
            snprintf(num, sizeof num, "%g", v);
            luaL_error(L, "%s: %s entry %d is %s, not a whole number", op, what, (int)i + 1, num);
        }
        return (int64_t)v;
    }
    if (!(v >= 1 && (classes == 0 || v <= (double)classes) && v <= 9007199254740992.0) || v != floor(v)) {
        char num[32], range[40];
        if (isnan(v)) snprintf(num, sizeof num, "not a number");
        else snprintf(num, sizeof num, "%g", v);
        if (classes > 0) snprintf(range, sizeof range, "1..%lld", (long long)classes);
        else snprintf(range, sizeof range, "(a whole number >= 1)");
        luaL_error(L, "%s: %s entry %d is %s, not a class number %s", op, what, (int)i + 1, num, range);
    }
    return (int64_t)v - 1;
}

int64_t *lps_lua_checklabels(lua_State *L, int idx, int64_t n, int64_t classes, const char *op,
                             const char *what, int64_t *count)
{
    idx = lua_absindex(L, idx);
    lps_tensor *t;
    int64_t have = label_count(L, idx, n, op, what, &t);
    int64_t *y = lps_lua_scratch(L, sizeof *y * (size_t)have);
    for (int64_t i = 0; i < have; i++) y[i] = check_one(L, label_at(L, idx, t, i), i, classes, op, what);
    if (count) *count = have;
    return y;
}

int32_t *lps_lua_checklabels32(lua_State *L, int idx, int64_t n, int64_t classes, const char *op)
{
    idx = lua_absindex(L, idx);
    lps_tensor *t;
    int64_t have = label_count(L, idx, n, op, "labels", &t);
    if (classes <= 0 || classes > INT32_MAX) classes = INT32_MAX;
    int32_t *y = lps_lua_scratch(L, sizeof *y * (size_t)have);
    for (int64_t i = 0; i < have; i++)
        y[i] = (int32_t)check_one(L, label_at(L, idx, t, i), i, classes, op, "labels");
    return y;
}

int lps_lua_optint(lua_State *L, int idx, const char *key, int def, const char *op)
{
    if (!lua_istable(L, idx)) return def;
    lua_getfield(L, idx, key);
    int v = def;
    if (!lua_isnil(L, -1)) {
        int ok;
        lua_Integer x = lua_tointegerx(L, -1, &ok);
        if (!ok || x < -1000000000 || x > 1000000000)
            luaL_error(L, "%s: option %s must be an integer, got %s", op, key, luaL_tolstring(L, -1, NULL));
        v = (int)x;
    }
    lua_pop(L, 1);
    return v;
}

lps_rng *lps_lua_optgenerator(lua_State *L, int idx)
{
    if (!lua_istable(L, idx)) return NULL;
    lua_getfield(L, idx, "generator");
    lps_rng *r = lua_isnil(L, -1) ? NULL : luaL_checkudata(L, -1, LPS_GENERATOR_MT);
    lua_pop(L, 1); /* the options table keeps it alive */
    return r;
}

void lps_lua_pushindices(lua_State *L, const int64_t *v, int64_t n, int64_t add)
{
    lua_createtable(L, (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        lua_pushinteger(L, v[i] + add);
        lua_rawseti(L, -2, i + 1);
    }
}
