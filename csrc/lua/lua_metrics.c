/* lua_metrics.c - retrieval, classification, clustering scores, rank
 * correlations, top-k queries, CKA of activations and small matrix helpers;
 * in lualps.core._eval (lualps/eval.lua). Labels are whole numbers >= 1;
 * indices are 1-based both ways. */
#include <math.h>
#include <string.h>

#include "lua/binding.h"

/* Categories (retrieval classes, labelings, ranks): whole numbers as given. */
static int64_t *check_labels(lua_State *L, int idx, int64_t *n, const char *op, const char *what)
{
    return lps_lua_checklabels(L, idx, -1, LPS_CATEGORIES, op, what, n);
}

static double *check_numbers(lua_State *L, int idx, int64_t *n, const char *op, const char *what)
{
    idx = lua_absindex(L, idx);
    lps_tensor *t = lps_lua_totensor(L, idx);
    if (t) {
        *n = t->numel;
        double *v = lps_lua_scratch(L, (size_t)*n * sizeof *v);
        for (int64_t i = 0; i < *n; i++) v[i] = t->data[i];
        return v;
    }
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: %s must be an array of numbers or a tensor, got a %s", op, what,
                   luaL_typename(L, idx));
    *n = (int64_t)luaL_len(L, idx);
    double *v = lps_lua_scratch(L, (size_t)*n * sizeof *v);
    for (int64_t i = 0; i < *n; i++) {
        lua_geti(L, idx, i + 1);
        int ok;
        v[i] = lua_tonumberx(L, -1, &ok);
        if (!ok || lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s: %s entry %d is not a number (%s)", op, what, (int)i + 1,
                       luaL_typename(L, -1));
        lua_pop(L, 1);
    }
    return v;
}

/* place(out, block, rows, cols): out[rows[i], cols[j]] = block[i, j] (1-based). */
static int l_place(lua_State *L)
{
    lps_tensor *out = lps_lua_checktensor(L, 1), *blk = lps_lua_checktensor(L, 2);
    int64_t nr, nc;
    int64_t *rows = lps_lua_checklabels(L, 3, -1, out->ndim == 2 ? out->shape[0] : 0, "place", "rows", &nr);
    int64_t *cols = lps_lua_checklabels(L, 4, -1, out->ndim == 2 ? out->shape[1] : 0, "place", "columns", &nc);
    if (out->ndim != 2 || blk->ndim != 2 || blk->shape[0] != nr || blk->shape[1] != nc)
        return luaL_error(L, "place: needs a 2-D output and a %d x %d block (rows x columns), got %d-D and %d-D",
                          (int)nr, (int)nc, out->ndim, blk->ndim);
    for (int64_t i = 0; i < nr; i++)
        if (rows[i] >= out->shape[0])
            return luaL_error(L, "place: row %d (%d) out of range 1..%d", (int)i + 1, (int)rows[i] + 1, (int)out->shape[0]);
    for (int64_t j = 0; j < nc; j++)
        if (cols[j] >= out->shape[1])
            return luaL_error(L, "place: column %d (%d) out of range 1..%d", (int)j + 1, (int)cols[j] + 1, (int)out->shape[1]);
    for (int64_t i = 0; i < nr; i++)
        for (int64_t j = 0; j < nc; j++)
            out->data[rows[i] * out->shape[1] + cols[j]] = blk->data[i * nc + j];
    return 0;
}

/* standardize(x [, mean, sd]) -> x (in place), mean, sd; fits when mean is nil. */
static int l_standardize(lua_State *L)
{
    lps_tensor *x = lps_lua_checktensor(L, 1);
    int fit = lua_isnoneornil(L, 2);
    if (x->ndim != 2) return luaL_error(L, "standardize: needs a 2-D (n x f) tensor");
    int64_t f = x->shape[1];
    lps_tensor *mean, *sd;
    if (fit) {
        mean = lps_lua_newtensor(L, 1, &f);
        sd = lps_lua_newtensor(L, 1, &f);
    } else {
        mean = lps_lua_checktensor(L, 2);
        sd = lps_lua_checktensor(L, 3);
        lua_pushvalue(L, 2);
        lua_pushvalue(L, 3);
    }
    LPS_LCHECK(L, lps_standardize(x, mean, sd, fit));
    lua_pushvalue(L, 1);
    lua_insert(L, -3);
    return 3;
}

static int l_cosine_matrix(lua_State *L)
{
    lps_tensor *a = lps_lua_checktensor(L, 1), *b = lps_lua_checktensor(L, 2);
    int64_t shape[2] = {a->ndim == 2 ? a->shape[0] : 0, b->ndim == 2 ? b->shape[0] : 0};
    lps_tensor *out = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_cosine_matrix(out, a, b));
    return 1;
}

static int l_linear_cka(lua_State *L)
{
    double c;
    LPS_LCHECK(L, lps_linear_cka(&c, lps_lua_checktensor(L, 1), lps_lua_checktensor(L, 2)));
    lua_pushnumber(L, c);
    return 1;
}

/* An array of tensors at idx (one model's layer activations) -> pointers. */
static const lps_tensor **check_tensor_list(lua_State *L, int idx, int *n, const char *what)
{
    if (!lua_istable(L, idx))
        luaL_error(L, "cka_layers: %s must be an array of activation tensors, got a %s", what,
                   luaL_typename(L, idx));
    lua_Integer len = luaL_len(L, idx);
    if (len < 1 || len > 100000)
        luaL_error(L, "cka_layers: %s must hold 1 to 100000 tensors, got %d", what, (int)len);
    const lps_tensor **t = lps_lua_scratch(L, (size_t)len * sizeof *t);
    for (lua_Integer i = 0; i < len; i++) {
        lua_geti(L, idx, i + 1);
        t[i] = lps_lua_totensor(L, -1);
        if (!t[i])
            luaL_error(L, "cka_layers: %s entry %d is a %s, expected a tensor", what, (int)i + 1,
                       luaL_typename(L, -1));
        lua_pop(L, 1); /* the table keeps it alive */
    }
    *n = (int)len;
    return t;
}

static int l_cka_layers(lua_State *L)
{
    int la, lb;
    const lps_tensor **xa = check_tensor_list(L, 1, &la, "the first model");
    const lps_tensor **xb = check_tensor_list(L, 2, &lb, "the second model");
    double c;
    LPS_LCHECK(L, lps_cka_layers(&c, xa, la, xb, lb));
    lua_pushnumber(L, c);
    return 1;
}

/* ---------------------------------------------------------------- metrics */

static int64_t *labels_for(lua_State *L, int idx, int64_t want, const char *op, const char *what)
{
    int64_t n;
    int64_t *v = check_labels(L, idx, &n, op, what);
    if (n != want)
        luaL_error(L, "%s: %d %s for %d similarity %s", op, (int)n, what, (int)want,
                   strcmp(what, "query labels") ? "columns" : "rows");
    return v;
}

static lps_tensor *check_sim(lua_State *L, int idx, const char *op)
{
    lps_tensor *s = lps_lua_checktensor(L, idx);
    if (s->ndim != 2)
        luaL_error(L, "%s: similarity must be a 2-D (queries x gallery) tensor, got %d dimensions", op, s->ndim);
    return s;
}

/* retrieval(sim, qlabels, glabels, ks, exclude_self) -> {cmc...}, map, nvalid, {ap per query (NaN: skipped)} */
static int l_retrieval(lua_State *L)
{
    lps_tensor *s = check_sim(L, 1, "retrieval");
    int64_t *ql = labels_for(L, 2, s->shape[0], "retrieval", "query labels");
    int64_t *gl = labels_for(L, 3, s->shape[1], "retrieval", "gallery labels");
    int64_t nk;
    int64_t *ks = check_labels(L, 4, &nk, "retrieval", "ranks");
    if (nk > 1000) return luaL_error(L, "retrieval: at most 1000 ranks");
    double *cmc = lps_lua_scratch(L, (size_t)nk * sizeof *cmc), map;
    double *ap = lps_lua_scratch(L, (size_t)s->shape[0] * sizeof *ap);
    int64_t nvalid;
    LPS_LCHECK(L, lps_retrieval(cmc, &map, &nvalid, ap, s, ql, gl, ks, (int)nk, lua_toboolean(L, 5)));
    lua_createtable(L, (int)nk, 0);
    for (int64_t j = 0; j < nk; j++) {
        lua_pushnumber(L, cmc[j]);
        lua_rawseti(L, -2, j + 1);
    }
    lua_pushnumber(L, map);
    lua_pushinteger(L, nvalid);
    lua_createtable(L, (int)s->shape[0], 0);
    for (int64_t q = 0; q < s->shape[0]; q++) {
        lua_pushnumber(L, ap[q]);
        lua_rawseti(L, -2, q + 1);
    }
    return 4;
}

static int l_knn_classify(lua_State *L)
{
    lps_tensor *s = check_sim(L, 1, "knn");
    int64_t *gl = labels_for(L, 2, s->shape[1], "knn", "gallery labels");
    lua_Integer k = luaL_checkinteger(L, 3);
    int64_t *pred = lps_lua_scratch(L, (size_t)s->shape[0] * sizeof *pred);
    LPS_LCHECK(L, lps_knn_classify(pred, s, gl, k, lua_toboolean(L, 4)));
    lps_lua_pushindices(L, pred, s->shape[0], 0);
    return 1;
}

static int l_centroid_classify(lua_State *L)
{
    lps_tensor *s = check_sim(L, 1, "centroid");
    int64_t *gl = labels_for(L, 2, s->shape[1], "centroid", "gallery labels");
    int64_t *pred = lps_lua_scratch(L, (size_t)s->shape[0] * sizeof *pred);
    LPS_LCHECK(L, lps_centroid_classify(pred, s, gl, lua_toboolean(L, 3)));
    lps_lua_pushindices(L, pred, s->shape[0], 0);
    return 1;
}

static int two_labelings(lua_State *L, const char *op,
                         lps_status (*f)(double *, const int64_t *, const int64_t *, int64_t))
{
    int64_t na, nb;
    int64_t *a = check_labels(L, 1, &na, op, "first labeling");
    int64_t *b = check_labels(L, 2, &nb, op, "second labeling");
    if (na != nb) return luaL_error(L, "%s: labelings have %d and %d entries", op, (int)na, (int)nb);
    double v;
    LPS_LCHECK(L, f(&v, a, b, na));
    lua_pushnumber(L, v);
    return 1;
}

static int l_nmi(lua_State *L) { return two_labelings(L, "nmi", lps_nmi); }
static int l_ami(lua_State *L) { return two_labelings(L, "ami", lps_ami); }
static int l_emi(lua_State *L) { return two_labelings(L, "emi", lps_emi); }

static int two_vectors(lua_State *L, const char *op,
                       lps_status (*f)(double *, const double *, const double *, int64_t))
{
    int64_t na, nb;
    double *a = check_numbers(L, 1, &na, op, "x");
    double *b = check_numbers(L, 2, &nb, op, "y");
    if (na != nb) return luaL_error(L, "%s: x has %d entries, y has %d", op, (int)na, (int)nb);
    double v;
    LPS_LCHECK(L, f(&v, a, b, na));
    lua_pushnumber(L, v);
    return 1;
}

static int l_kendall(lua_State *L) { return two_vectors(L, "kendall_tau", lps_kendall_tau_b); }
static int l_spearman(lua_State *L) { return two_vectors(L, "spearman", lps_spearman_rho); }

/* topk(emb, query, k) -> {indices}, {scores} */
static int l_topk(lua_State *L)
{
    lps_tensor *e = lps_lua_checktensor(L, 1), *q = lps_lua_checktensor(L, 2);
    lua_Integer k = luaL_checkinteger(L, 3);
    if (k < 1 || k > (e->ndim == 2 ? e->shape[0] : 0))
        return luaL_error(L, "topk: k = %d out of range 1..%d", (int)k, (int)(e->ndim == 2 ? e->shape[0] : 0));
    int64_t *idx = lps_lua_scratch(L, (size_t)k * sizeof *idx);
    float *sc = lps_lua_scratch(L, (size_t)k * sizeof *sc);
    LPS_LCHECK(L, lps_topk(idx, sc, e, q->data, q->numel, k));
    lps_lua_pushindices(L, idx, k, 1);
    lua_createtable(L, (int)k, 0);
    for (lua_Integer i = 0; i < k; i++) {
        lua_pushnumber(L, sc[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 2;
}

static const luaL_Reg functions[] = {
    {"place", l_place}, {"standardize", l_standardize}, {"cosine_matrix", l_cosine_matrix},
    {"linear_cka", l_linear_cka}, {"cka_layers", l_cka_layers}, {"retrieval", l_retrieval},
    {"knn_classify", l_knn_classify}, {"centroid_classify", l_centroid_classify},
    {"nmi", l_nmi}, {"ami", l_ami}, {"emi", l_emi}, {"kendall_tau", l_kendall},
    {"spearman", l_spearman}, {"topk", l_topk}, {NULL, NULL}};

void lps_lua_open_metrics(lua_State *L) { luaL_setfuncs(L, functions, 0); }
