/* lua_net.c - models for the weight-space baselines (lps_net_view): their
 * features, forward passes, hidden activations, permutations, weight
 * matching and CKA matrices; in lualps.core._eval (lualps/eval.lua). A
 * model is a table {W1, b1, W2, b2, ...} with its .arch (a CNN needs it);
 * permutations are 1-based at this boundary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/binding.h"

/* ---------------------------------------------------------------- models */

/* A model is an array {W1, b1, W2, b2, ...}; a CNN also carries .spec (the
 * lps.nn sequential spec) giving its strides, padding and pooling. */

static int model_len(lua_State *L, int idx, const char *op, const char *what)
{
    if (!lua_istable(L, idx))
        return luaL_error(L, "%s: %s must be an array of tensors {W1, b1, W2, b2, ...}, got a %s", op,
                          what, luaL_typename(L, idx));
    lua_Integer n = luaL_len(L, idx);
    if (n < 4 || n % 2 || n > 2 * 100000)
        return luaL_error(L, "%s: %s must hold W1, b1, W2, b2, ... (an even number >= 4 of tensors), got %d entries",
                          op, what, (int)n);
    return (int)n;
}

/* The architecture of the model table at idx: its .arch (a list or JSON
 * text), or NULL for an MLP given as weights only. */
static const lps_arch *model_arch(lua_State *L, int idx, const lps_tensor *w1, const char *op,
                                  const char *what)
{
    lua_getfield(L, idx, "arch");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (w1->ndim == 4)
            luaL_error(L, "%s: %s is a CNN (W1 %s) without its .arch; the weight-space methods need "
                       "its architecture (strides, padding, pooling)", op, what,
                       lps_shape_str(w1, (char[64]){0}, 64));
        return NULL;
    }
    char opm[128];
    snprintf(opm, sizeof opm, "%s: %s", op, what);
    const lps_arch *a = lps_lua_checkarch(L, -1, opm);
    lua_remove(L, -2); /* the arch's box stays on the stack: it keeps the arch alive */
    return a;
}

/* Fill m from the model table at idx; ptrs has room for its n tensors. The
 * arch's box is left on the stack. */
static void fill_model(lua_State *L, int idx, lps_net_view *m, const lps_tensor **ptrs, int n,
                       const char *op, const char *what)
{
    idx = lua_absindex(L, idx);
    for (int i = 0; i < n; i++) {
        lua_geti(L, idx, i + 1);
        const lps_tensor *t = lps_lua_totensor(L, -1);
        if (!t)
            luaL_error(L, "%s: %s entry %d is a %s, expected a tensor", op, what, i + 1,
                       luaL_typename(L, -1));
        ptrs[i] = t;
        lua_pop(L, 1); /* the table keeps it alive */
    }
    m->nlayers = n / 2;
    m->p = ptrs;
    m->arch = model_arch(L, idx, ptrs[0], op, what);
}

/* One model at idx; the view's arrays live in a userdata pushed on the stack. */
static lps_net_view check_model(lua_State *L, int idx, const char *op)
{
    idx = lua_absindex(L, idx);
    int n = model_len(L, idx, op, "a model");
    const lps_tensor **ptrs = lps_lua_scratch(L, (size_t)n * sizeof *ptrs);
    lps_net_view m;
    fill_model(L, idx, &m, ptrs, n, op, "the model");
    return m;
}

/* An array of models at idx -> views (in a userdata pushed on the stack),
 * each checked (errors name the model). */
static lps_net_view *check_models_of(lua_State *L, int idx, int64_t *count, const char *op,
                                     const char *set)
{
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    int64_t nm = (int64_t)luaL_len(L, idx), total = 0;
    for (int64_t i = 0; i < nm; i++) {
        lua_geti(L, idx, i + 1);
        char what[48];
        snprintf(what, sizeof what, "model %lld", (long long)i + 1);
        total += model_len(L, -1, op, what);
        lua_pop(L, 1);
    }
    size_t bytes = (size_t)nm * sizeof(lps_net_view) + (size_t)total * sizeof(lps_tensor *);
    lps_net_view *v = lps_lua_scratch(L, bytes);
    lua_createtable(L, (int)nm, 0); /* keeps the models' arch boxes alive */
    int anchor = lua_gettop(L);
    const lps_tensor **ptrs = (const lps_tensor **)(v + nm);
    char what[48], opm[96];
    for (int64_t i = 0; i < nm; i++) {
        lua_geti(L, idx, i + 1);
        int n = (int)luaL_len(L, -1);
        snprintf(what, sizeof what, "model %lld", (long long)i + 1);
        int top = lua_gettop(L);
        fill_model(L, -1, &v[i], ptrs, n, op, what);
        if (lua_gettop(L) > top) lua_rawseti(L, anchor, (lua_Integer)i + 1); /* the arch box */
        snprintf(opm, sizeof opm, "%s: model %lld%s", op, (long long)i + 1, set);
        LPS_LCHECK(L, lps_net_check(opm, &v[i]));
        ptrs += n;
        lua_pop(L, 1);
    }
    *count = nm;
    return v;
}

static lps_net_view *check_models(lua_State *L, int idx, int64_t *count, const char *op)
{
    return check_models_of(L, idx, count, op, "");
}

/* The two sets of a similarity matrix; errors say which set. */
static lps_net_view *check_set(lua_State *L, int idx, int64_t *count, const char *op)
{
    return check_models_of(L, idx, count, op, idx == 1 ? " of the first set" : " of the second set");
}

static void push_model(lua_State *L, lps_tensor **t, int n)
{
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lps_lua_pushtensor(L, t[i]);
        t[i] = NULL;
        lua_rawseti(L, -2, i + 1);
    }
}

/* Flat 0-based permutation from a table of per-hidden-layer 1-based arrays. */
static int64_t *check_perm(lua_State *L, int idx, const lps_net_view *m, const char *op)
{
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    int nh = m->nlayers - 1;
    if (luaL_len(L, idx) != nh)
        luaL_error(L, "%s: expected %d permutations (one per hidden layer), got %d", op, nh,
                   (int)luaL_len(L, idx));
    int64_t *perm = lps_lua_scratch(L, (size_t)lps_net_units(m) * sizeof *perm), off = 0;
    for (int l = 0; l < nh; l++) {
        int64_t h = m->p[2 * l]->shape[0]; /* the model is checked */
        lua_geti(L, idx, l + 1);
        if (!lua_istable(L, -1) || luaL_len(L, -1) != h)
            luaL_error(L, "%s: permutation %d must be an array of %d indices", op, l + 1, (int)h);
        for (int64_t i = 0; i < h; i++) {
            lua_geti(L, -1, i + 1);
            int ok;
            lua_Integer v = lua_tointegerx(L, -1, &ok);
            if (!ok) luaL_error(L, "%s: permutation %d entry %d is not an integer", op, l + 1, (int)i + 1);
            if (v < 1 || v > h)
                luaL_error(L, "%s: permutation %d entry %d (%I) out of range 1..%d", op, l + 1,
                           (int)i + 1, (LUAI_UACINT)v, (int)h);
            perm[off + i] = (int64_t)v - 1;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        off += h;
    }
    return perm;
}

static void push_perm(lua_State *L, const int64_t *perm, const lps_net_view *m)
{
    int nh = m->nlayers - 1;
    int64_t off = 0;
    lua_createtable(L, nh, 0);
    for (int l = 0; l < nh; l++) {
        int64_t h = m->p[2 * l]->shape[0];
        lua_createtable(L, (int)h, 0);
        for (int64_t i = 0; i < h; i++) {
            lua_pushinteger(L, perm[off + i] + 1);
            lua_rawseti(L, -2, i + 1);
        }
        lua_rawseti(L, -2, l + 1);
        off += h;
    }
}

/* -------------------------------------------------------------- features */

static lps_feat_method check_method(lua_State *L, int idx)
{
    static const char *const names[] = {"raw", "sorted", "stats", "gram", NULL};
    return (lps_feat_method)luaL_checkoption(L, idx, NULL, names);
}

static lps_feat_opts feat_opts(lua_State *L, int idx)
{
    lps_feat_opts o = {lps_lua_optint(L, idx, "pool", 2, "gram")};
    if (o.gram_pool < 1) luaL_error(L, "gram: option pool must be >= 1");
    return o;
}

/* features(method, model, opts) -> 1-D tensor */
static int l_features(lua_State *L)
{
    lps_feat_method method = check_method(L, 1);
    lps_net_view m = check_model(L, 2, "features");
    lps_feat_opts o = feat_opts(L, 3);
    int64_t n;
    LPS_LCHECK(L, lps_features_size(&n, method, &m, &o));
    lps_tensor *t = lps_lua_newtensor(L, 1, &n);
    LPS_LCHECK(L, lps_features(t->data, n, method, &m, &o));
    return 1;
}

/* feature_matrix(method, models, opts) -> (n x f) tensor */
static int l_feature_matrix(lua_State *L)
{
    lps_feat_method method = check_method(L, 1);
    int64_t nm;
    lps_net_view *v = check_models(L, 2, &nm, "feature_matrix");
    lps_feat_opts o = feat_opts(L, 3);
    if (nm == 0) return luaL_error(L, "feature_matrix: no models");
    int64_t f, fi;
    LPS_LCHECK(L, lps_features_size(&f, method, &v[0], &o));
    int64_t shape[2] = {nm, f};
    lps_tensor *t = lps_lua_newtensor(L, 2, shape);
    for (int64_t i = 0; i < nm; i++) {
        LPS_LCHECK(L, lps_features_size(&fi, method, &v[i], &o));
        if (method == LPS_FEAT_GRAM && (v[0].p[0]->ndim == 4) != (v[i].p[0]->ndim == 4))
            return luaL_error(L, "feature_matrix: model %d and model 1 are of different families (MLP, CNN); their gram features live in different spaces (similarity_matrix gives NaN across families)",
                              (int)i + 1);
        if (fi != f)
            return luaL_error(L, "feature_matrix: model %d gives %d features, model 1 gives %d",
                              (int)i + 1, (int)fi, (int)f);
        if ((method == LPS_FEAT_RAW || method == LPS_FEAT_SORTED) && !lps_net_same_arch(&v[0], &v[i]))
            return luaL_error(L, "feature_matrix: model %d and model 1 differ in architecture; %s features compare one architecture (similarity_matrix gives NaN across architectures)",
                              (int)i + 1, method == LPS_FEAT_RAW ? "raw" : "sorted");
        LPS_LCHECK(L, lps_features(t->data + i * f, f, method, &v[i], &o));
    }
    return 1;
}

/* The key of one model's architecture: its canonical arch JSON, or for an
 * MLP given as weights only its shapes ("l128x784-l2x128"). */
static void push_arch_key(lua_State *L, const lps_net_view *m)
{
    if (m->arch) {
        char *json;
        size_t n;
        LPS_LCHECK(L, lps_arch_to_json(m->arch, &json, &n));
        lua_pushlstring(L, json, n);
        free(json);
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int l = 0; l < m->nlayers; l++) {
        const lps_tensor *w = m->p[2 * l];
        char part[160];
        snprintf(part, sizeof part, "%sl%lldx%lld", l ? "-" : "", (long long)w->shape[0],
                 (long long)w->shape[1]);
        luaL_addstring(&b, part);
    }
    luaL_pushresult(&b);
}

/* feature_keys(method, models, opts) -> {key of each model}: two models'
 * features are comparable (same space) iff their keys are equal. raw,
 * sorted: the architecture; gram: family and length; stats: one key. */
static int l_feature_keys(lua_State *L)
{
    lps_feat_method method = check_method(L, 1);
    int64_t nm;
    lps_net_view *v = check_models(L, 2, &nm, "feature_keys");
    lps_feat_opts o = feat_opts(L, 3);
    lua_createtable(L, (int)nm, 0);
    for (int64_t i = 0; i < nm; i++) {
        if (method == LPS_FEAT_RAW || method == LPS_FEAT_SORTED) {
            push_arch_key(L, &v[i]);
        } else if (method == LPS_FEAT_GRAM) {
            int64_t f;
            LPS_LCHECK(L, lps_features_size(&f, method, &v[i], &o));
            lua_pushfstring(L, "%s:%I", v[i].arch && v[i].p[0]->ndim == 4 ? "cnn" : "mlp", (LUAI_UACINT)f);
        } else {
            lua_pushliteral(L, "stats");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* ---------------------------------------------------- models: forward etc */

static int l_forward(lua_State *L)
{
    lps_net_view m = check_model(L, 1, "forward");
    lps_tensor *x = lps_lua_checktensor(L, 2);
    LPS_LCHECK(L, lps_net_check("forward", &m));
    const lps_tensor *wl = m.p[2 * m.nlayers - 2];
    int64_t shape[2] = {x->ndim == 2 ? x->shape[0] : 0, wl->shape[0]};
    lps_tensor *out = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_net_apply(out, &m, x));
    return 1;
}

/* hidden(model, x) -> {acts of hidden layer 1, ...} (conv maps flattened) */
static int l_hidden(lua_State *L)
{
    lps_net_view m = check_model(L, 1, "hidden");
    lps_tensor *x = lps_lua_checktensor(L, 2);
    LPS_LCHECK(L, lps_net_check("hidden", &m));
    int nh = m.nlayers - 1;
    lps_tensor **acts = lps_lua_scratch(L, (size_t)nh * sizeof *acts);
    int64_t *sizes = lps_lua_scratch(L, (size_t)nh * sizeof *sizes);
    for (int l = 0; l < nh; l++) sizes[l] = m.p[2 * l]->shape[0];
    /* an MLP's input is checked by hidden_acts, with its message */
    if (m.arch && m.p[0]->ndim == 4 && x->ndim == 2) LPS_LCHECK(L, lps_net_hidden_sizes(sizes, &m, x->shape[1]));
    lua_createtable(L, nh, 0);
    for (int l = 0; l < nh; l++) {
        int64_t shape[2] = {x->ndim == 2 ? x->shape[0] : 0, sizes[l]};
        acts[l] = lps_lua_newtensor(L, 2, shape);
        lua_rawseti(L, -2, l + 1);
    }
    LPS_LCHECK(L, lps_net_hidden_acts(acts, &m, x));
    return 1;
}

static int l_permute(lua_State *L)
{
    lps_net_view m = check_model(L, 1, "permute");
    LPS_LCHECK(L, lps_net_check("permute", &m));
    int64_t *perm = check_perm(L, 2, &m, "permute");
    int n = 2 * m.nlayers;
    lps_tensor **out = lps_lua_scratch(L, (size_t)n * sizeof *out);
    LPS_LCHECK(L, lps_net_permute(out, &m, perm));
    push_model(L, out, n); /* takes ownership before anything can raise */
    return 1;
}

static int l_sort_perm(lua_State *L)
{
    lps_net_view m = check_model(L, 1, "sort_perm");
    LPS_LCHECK(L, lps_net_check("sort_perm", &m));
    int64_t *perm = lps_lua_scratch(L, (size_t)lps_net_units(&m) * sizeof *perm);
    LPS_LCHECK(L, lps_net_sort_perm(perm, &m));
    push_perm(L, perm, &m);
    return 1;
}

/* ----------------------------------------------------- matching and CKA */

static lps_match_opts match_opts(lua_State *L, int idx)
{
    lps_match_opts o = {lps_lua_optint(L, idx, "max_iter", 100, "matching"), lps_lua_optgenerator(L, idx)};
    if (o.max_iter < 1) luaL_error(L, "matching: option max_iter must be >= 1");
    return o;
}

/* weight_matching(a, b, opts) -> perms (aligning b to a), similarity, sweeps */
static int l_weight_matching(lua_State *L)
{
    lps_net_view a = check_model(L, 1, "matching"), b = check_model(L, 2, "matching");
    lps_match_opts o = match_opts(L, 3);
    LPS_LCHECK(L, lps_net_check("matching", &a));
    int64_t *perm = lps_lua_scratch(L, (size_t)lps_net_units(&a) * sizeof *perm);
    double sim;
    int iters;
    LPS_LCHECK(L, lps_weight_matching(perm, &sim, &iters, &a, &b, &o));
    push_perm(L, perm, &a);
    lua_pushnumber(L, sim);
    lua_pushinteger(L, iters);
    return 3;
}

static int l_matching_matrix(lua_State *L)
{
    int64_t na, nb;
    lps_net_view *a = check_set(L, 1, &na, "matching"), *b = check_set(L, 2, &nb, "matching");
    lps_match_opts o = match_opts(L, 3);
    int64_t shape[2] = {na, nb};
    lps_tensor *out = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_matching_matrix(out, a, na, b, nb, &o));
    return 1;
}

static int l_cka_matrix(lua_State *L)
{
    int64_t na, nb;
    lps_net_view *a = check_set(L, 1, &na, "cka"), *b = check_set(L, 2, &nb, "cka");
    lps_tensor *probe = lps_lua_checktensor(L, 3);
    int64_t shape[2] = {na, nb};
    lps_tensor *out = lps_lua_newtensor(L, 2, shape);
    LPS_LCHECK(L, lps_cka_matrix(out, a, na, b, nb, probe));
    return 1;
}

static const luaL_Reg functions[] = {
    {"features", l_features}, {"feature_matrix", l_feature_matrix},
    {"feature_keys", l_feature_keys}, {"forward", l_forward}, {"hidden", l_hidden},
    {"permute", l_permute}, {"sort_perm", l_sort_perm}, {"weight_matching", l_weight_matching},
    {"matching_matrix", l_matching_matrix}, {"cka_matrix", l_cka_matrix}, {NULL, NULL}};

void lps_lua_open_net(lua_State *L) { luaL_setfuncs(L, functions, 0); }
