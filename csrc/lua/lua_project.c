/* lua_project.c - k-means, eigendecomposition, PCA, MDS and linear
 * assignment; in lualps.core._eval (lualps/eval.lua). */
#include "lua/binding.h"

/* assign(cost, maximize) -> 1-based columns (0 for an unassigned row), total */
static int l_assign(lua_State *L)
{
    lps_tensor *c = lps_lua_checktensor(L, 1);
    int maximize = lua_toboolean(L, 2);
    if (c->ndim != 2) return luaL_error(L, "assign: needs a 2-D cost matrix, got %d dimensions", c->ndim);
    int64_t n = c->shape[0], m = c->shape[1];
    double *cost = lps_lua_scratch(L, (size_t)(n * m) * sizeof *cost);
    for (int64_t i = 0; i < n * m; i++) cost[i] = c->data[i];
    int64_t *as = lps_lua_scratch(L, (size_t)n * sizeof *as);
    double total;
    LPS_LCHECK(L, lps_linear_assignment(as, &total, cost, n, m, maximize));
    lps_lua_pushindices(L, as, n, 1);
    lua_pushnumber(L, total);
    return 2;
}

/* kmeans(x, k, opts) -> {cluster ids 1..k}, centres, inertia */
static int l_kmeans(lua_State *L)
{
    lps_tensor *x = lps_lua_checktensor(L, 1);
    lua_Integer k = luaL_checkinteger(L, 2);
    lps_kmeans_opts o = {lps_lua_optint(L, 3, "restarts", 10, "kmeans"), lps_lua_optint(L, 3, "max_iter", 300, "kmeans")};
    if (o.restarts < 1 || o.max_iter < 1)
        return luaL_error(L, "kmeans: options restarts and max_iter must be >= 1");
    lps_rng *r = lps_lua_optgenerator(L, 3);
    if (!r) r = lps_lua_optrng(L, 0);
    if (x->ndim != 2) return luaL_error(L, "kmeans: points must be a 2-D (n x d) tensor");
    if (k < 1 || k > x->shape[0])
        return luaL_error(L, "kmeans: k = %d out of range 1..%d (the number of points)", (int)k,
                          (int)x->shape[0]);
    int64_t *as = lps_lua_scratch(L, (size_t)x->shape[0] * sizeof *as);
    int64_t shape[2] = {k, x->shape[1]};
    lps_tensor *c = lps_lua_newtensor(L, 2, shape);
    double inertia;
    LPS_LCHECK(L, lps_kmeans(as, c, &inertia, x, k, &o, r));
    lps_lua_pushindices(L, as, x->shape[0], 1);
    lua_insert(L, -2);
    lua_pushnumber(L, inertia);
    return 3;
}

/* symeig(a) -> eigenvalues (1-D, increasing), eigenvectors (columns) */
static int l_symeig(lua_State *L)
{
    lps_tensor *a = lps_lua_checktensor(L, 1);
    if (a->ndim != 2 || a->shape[0] != a->shape[1] || a->shape[0] < 1)
        return luaL_error(L, "symeig: needs a non-empty square matrix");
    int64_t n = a->shape[0];
    double *m = lps_lua_scratch(L, (size_t)(n * n) * sizeof *m), *w = lps_lua_scratch(L, (size_t)n * sizeof *w);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) m[i * n + j] = 0.5 * ((double)a->data[i * n + j] + a->data[j * n + i]);
    LPS_LCHECK(L, lps_symeig(m, w, n));
    lps_tensor *tw = lps_lua_newtensor(L, 1, &n);
    int64_t shape[2] = {n, n};
    lps_tensor *tv = lps_lua_newtensor(L, 2, shape);
    for (int64_t i = 0; i < n; i++) tw->data[i] = (float)w[i];
    for (int64_t i = 0; i < n * n; i++) tv->data[i] = (float)m[i];
    return 2;
}

static int l_pca(lua_State *L)
{
    lps_tensor *x = lps_lua_checktensor(L, 1);
    lua_Integer k = luaL_optinteger(L, 2, 2);
    if (x->ndim != 2) return luaL_error(L, "pca: needs a 2-D (n x d) tensor");
    int64_t mx = x->shape[0] < x->shape[1] ? x->shape[0] : x->shape[1];
    if (k < 1 || k > mx) return luaL_error(L, "pca: k = %d out of range 1..%d", (int)k, (int)mx);
    double *var = lps_lua_scratch(L, (size_t)k * sizeof *var);
    int64_t shape[2] = {x->shape[0], k};
    lps_tensor *out = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_pca(out, var, x, k));
    lua_createtable(L, (int)k, 0);
    for (lua_Integer i = 0; i < k; i++) {
        lua_pushnumber(L, var[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 2;
}

static int l_mds(lua_State *L)
{
    lps_tensor *s = lps_lua_checktensor(L, 1);
    lua_Integer k = luaL_optinteger(L, 2, 2);
    if (s->ndim != 2 || s->shape[0] != s->shape[1])
        return luaL_error(L, "mds: needs a square similarity matrix");
    if (k < 1 || k > s->shape[0]) return luaL_error(L, "mds: k = %d out of range 1..%d", (int)k, (int)s->shape[0]);
    int64_t shape[2] = {s->shape[0], k};
    lps_tensor *out = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_mds(out, s, k));
    return 1;
}

static const luaL_Reg functions[] = {
    {"assign", l_assign}, {"kmeans", l_kmeans}, {"symeig", l_symeig}, {"pca", l_pca},
    {"mds", l_mds}, {NULL, NULL}};

void lps_lua_open_project(lua_State *L) { luaL_setfuncs(L, functions, 0); }
