/* lua_eval.c - Lua binding of the baselines and evaluation metrics, as the
 * table lualps.core._eval (wrapped by lualps/eval.lua). 1-based at this
 * boundary: permutations, labels are taken as given, indices and cluster ids
 * are returned 1-based. */
#include <math.h>
#include <string.h>

#include "lua/binding.h"

/* Scratch memory owned by a userdata pushed on the stack, so a Lua error
 * anywhere after it cannot leak it. */
static void *scratch(lua_State *L, size_t bytes)
{
    return lua_newuserdatauv(L, bytes ? bytes : 1, 0);
}

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

/* Integer field key of the table at the top (def when absent). */
static int spec_int(lua_State *L, const char *key, int def, const char *op, const char *what, int i)
{
    lua_getfield(L, -1, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < 0 || v > 1 << 20)
        luaL_error(L, "%s: %s's spec layer %d has a bad %s (%s)", op, what, i, key, luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    return (int)v;
}

/* A spec size that disagrees with the tensor it describes. */
static void spec_size(lua_State *L, const lps_tensor *w, int dim, const char *key, int l,
                      const char *op, const char *what, int i)
{
    int v = spec_int(L, key, -1, op, what, i);
    if (v >= 0 && dim < w->ndim && w->shape[dim] != v)
        luaL_error(L, "%s: %s's spec layer %d has %s = %d, but W%d is %s", op, what, i, key, v, l + 1,
                   lps_shape_str(w, (char[64]){0}, 64));
}

/* Fill geom (nw entries) from the .spec of the model table at idx; returns
 * geom for a CNN, NULL for an MLP (no .spec, or one without conv2d). */
static const lps_net_layer *model_geom(lua_State *L, int idx, lps_net_layer *geom, int nw,
                                       const lps_tensor **ptrs, const char *op, const char *what)
{
    lua_getfield(L, idx, "family");
    const char *family = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (family && strcmp(family, "mlp") && strcmp(family, "cnn"))
        luaL_error(L, "%s: %s's .family must be \"mlp\" or \"cnn\", got \"%s\"", op, what, family);
    int want_cnn = family && !strcmp(family, "cnn"), has_family = family != NULL;
    lua_pop(L, 1);
    lua_getfield(L, idx, "spec");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (want_cnn || ptrs[0]->ndim == 4)
            luaL_error(L, "%s: %s is a CNN (W1 %s) without its .spec; the baselines need the lps.nn sequential spec",
                       op, what, lps_shape_str(ptrs[0], (char[64]){0}, 64));
        return NULL;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: %s's .spec must be an lps.nn sequential spec, got a %s", op, what,
                   luaL_typename(L, -1));
    lua_getfield(L, -1, "layers");
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: %s's .spec has no layers list (a sequential spec)", op, what);
    memset(geom, 0, (size_t)nw * sizeof *geom);
    int nl = (int)luaL_len(L, -1), w = -1, relu = 0, flat = 0, nconv = 0;
    for (int i = 1; i <= nl; i++) {
        lua_geti(L, -1, i);
        if (!lua_istable(L, -1)) luaL_error(L, "%s: %s's spec layer %d is not a table", op, what, i);
        lua_getfield(L, -1, "type");
        const char *t = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
        int is_lin = !strcmp(t, "linear"), is_conv = !strcmp(t, "conv2d");
        int is_relu = !strcmp(t, "relu"), is_pool = !strcmp(t, "maxpool2d"), is_flat = !strcmp(t, "flatten");
        lua_pop(L, 1);
        if (is_lin || is_conv) {
            if (w >= 0 && !relu)
                luaL_error(L, "%s: %s's spec layer %d (%s) follows a layer without ReLU; the baselines take ReLU nets",
                           op, what, i, is_lin ? "linear" : "conv2d");
            if (is_conv && (flat || (w >= 0 && !geom[w].conv)))
                luaL_error(L, "%s: %s's spec layer %d is a conv2d after a flatten or linear layer", op, what, i);
            if (is_lin && nconv && !flat)
                luaL_error(L, "%s: %s's spec layer %d is linear after conv2d layers without a flatten", op, what, i);
            if (++w >= nw)
                luaL_error(L, "%s: %s's spec has more conv2d/linear layers than its %d weight/bias pairs",
                           op, what, nw);
            relu = 0;
            const lps_tensor *wt = ptrs[2 * w];
            geom[w].conv = is_conv;
            if (is_conv) {
                nconv++;
                geom[w].stride = spec_int(L, "stride", 1, op, what, i);
                geom[w].padding = spec_int(L, "padding", 0, op, what, i);
                spec_size(L, wt, 0, "out_channels", w, op, what, i);
                spec_size(L, wt, 1, "in_channels", w, op, what, i);
                spec_size(L, wt, 2, "kernel_size", w, op, what, i);
            } else {
                spec_size(L, wt, 0, "out_features", w, op, what, i);
                spec_size(L, wt, 1, "in_features", w, op, what, i);
            }
        } else if (is_relu) {
            if (w < 0 || relu)
                luaL_error(L, "%s: %s's spec layer %d: a ReLU must follow a conv2d or linear layer, once", op, what, i);
            relu = 1;
        } else if (is_pool) {
            if (w < 0 || !geom[w].conv || geom[w].pool_k)
                luaL_error(L, "%s: %s's spec layer %d: max-pooling must follow a conv2d layer, once", op, what, i);
            geom[w].pool_k = spec_int(L, "kernel_size", 0, op, what, i);
            geom[w].pool_s = spec_int(L, "stride", 0, op, what, i);
            if (geom[w].pool_k < 1) luaL_error(L, "%s: %s's spec layer %d has no kernel_size", op, what, i);
            if (geom[w].pool_s < 1) geom[w].pool_s = geom[w].pool_k; /* as lps.nn: stride defaults to the kernel */
        } else if (is_flat) {
            if (flat || (w >= 0 && !geom[w].conv))
                luaL_error(L, "%s: %s's spec layer %d: one flatten, before the linear layers", op, what, i);
            flat = 1;
        } else {
            luaL_error(L, "%s: %s's spec layer %d is %s; the baselines take conv2d and linear layers with ReLU, max-pooling and flatten",
                       op, what, i, t);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    if (w + 1 != nw)
        luaL_error(L, "%s: %s's spec has %d conv2d/linear layers for %d weight/bias pairs", op, what, w + 1, nw);
    if (relu) luaL_error(L, "%s: %s's spec ends in a ReLU; the head must be linear", op, what);
    if (has_family && want_cnn != (nconv > 0))
        luaL_error(L, "%s: %s's .family is \"%s\" but its spec has %d conv2d layers", op, what,
                   want_cnn ? "cnn" : "mlp", nconv);
    return nconv ? geom : NULL;
}

/* Fill m from the model table at idx; ptrs has room for its n tensors and
 * geom for its n/2 layers. */
static void fill_model(lua_State *L, int idx, lps_net_view *m, const lps_tensor **ptrs,
                       lps_net_layer *geom, int n, const char *op, const char *what)
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
    m->geom = model_geom(L, idx, geom, n / 2, ptrs, op, what);
}

/* One model at idx; the view's arrays live in a userdata pushed on the stack. */
static lps_net_view check_model(lua_State *L, int idx, const char *op)
{
    idx = lua_absindex(L, idx);
    int n = model_len(L, idx, op, "a model");
    const lps_tensor **ptrs = scratch(L, (size_t)n * sizeof *ptrs + (size_t)(n / 2) * sizeof(lps_net_layer));
    lps_net_view m;
    fill_model(L, idx, &m, ptrs, (lps_net_layer *)(ptrs + n), n, op, "the model");
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
    size_t bytes = (size_t)nm * sizeof(lps_net_view) + (size_t)total * sizeof(lps_tensor *) +
                   (size_t)(total / 2) * sizeof(lps_net_layer);
    lps_net_view *v = scratch(L, bytes);
    const lps_tensor **ptrs = (const lps_tensor **)(v + nm);
    lps_net_layer *geom = (lps_net_layer *)(ptrs + total);
    char what[48], opm[96];
    for (int64_t i = 0; i < nm; i++) {
        lua_geti(L, idx, i + 1);
        int n = (int)luaL_len(L, -1);
        snprintf(what, sizeof what, "model %lld", (long long)i + 1);
        fill_model(L, -1, &v[i], ptrs, geom, n, op, what);
        snprintf(opm, sizeof opm, "%s: model %lld%s", op, (long long)i + 1, set);
        LPS_LCHECK(L, lps_net_check(opm, &v[i]));
        ptrs += n;
        geom += n / 2;
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
    int64_t *perm = scratch(L, (size_t)lps_net_units(m) * sizeof *perm), off = 0;
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

/* --------------------------------------------------------- plain values */

/* Integers from a Lua array or a 1-D tensor of whole numbers. */
static int64_t *check_labels(lua_State *L, int idx, int64_t *n, const char *op, const char *what)
{
    idx = lua_absindex(L, idx);
    lps_tensor *t = lps_lua_totensor(L, idx);
    if (t) {
        *n = t->numel;
        int64_t *v = scratch(L, (size_t)*n * sizeof *v);
        for (int64_t i = 0; i < *n; i++) {
            float x = t->data[i];
            if (!(x == floorf(x)) || fabsf(x) > 16777216.0f)
                luaL_error(L, "%s: %s entry %d is not a whole number (%f)", op, what, (int)i + 1, (double)x);
            v[i] = (int64_t)x;
        }
        return v;
    }
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: %s must be an array of integers or a tensor, got a %s", op, what,
                   luaL_typename(L, idx));
    *n = (int64_t)luaL_len(L, idx);
    int64_t *v = scratch(L, (size_t)*n * sizeof *v);
    for (int64_t i = 0; i < *n; i++) {
        lua_geti(L, idx, i + 1);
        int ok;
        lua_Integer x = lua_tointegerx(L, -1, &ok);
        if (!ok || lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s: %s entry %d is not an integer (%s)", op, what, (int)i + 1,
                       luaL_typename(L, -1));
        v[i] = (int64_t)x;
        lua_pop(L, 1);
    }
    return v;
}

static double *check_numbers(lua_State *L, int idx, int64_t *n, const char *op, const char *what)
{
    idx = lua_absindex(L, idx);
    lps_tensor *t = lps_lua_totensor(L, idx);
    if (t) {
        *n = t->numel;
        double *v = scratch(L, (size_t)*n * sizeof *v);
        for (int64_t i = 0; i < *n; i++) v[i] = t->data[i];
        return v;
    }
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: %s must be an array of numbers or a tensor, got a %s", op, what,
                   luaL_typename(L, idx));
    *n = (int64_t)luaL_len(L, idx);
    double *v = scratch(L, (size_t)*n * sizeof *v);
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

static void push_int_array(lua_State *L, const int64_t *v, int64_t n, int64_t add)
{
    lua_createtable(L, (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        lua_pushinteger(L, v[i] + add);
        lua_rawseti(L, -2, i + 1);
    }
}

static int opt_int_field(lua_State *L, int idx, const char *key, int def)
{
    if (!lua_istable(L, idx)) return def;
    lua_getfield(L, idx, key);
    int ok, v = def;
    if (!lua_isnil(L, -1)) {
        lua_Integer x = lua_tointegerx(L, -1, &ok);
        if (!ok || x < -1000000000 || x > 1000000000) luaL_error(L, "option %s must be an integer", key);
        v = (int)x;
    }
    lua_pop(L, 1);
    return v;
}

/* The generator in opts.generator, or NULL. */
static lps_rng *opt_generator(lua_State *L, int idx)
{
    if (!lua_istable(L, idx)) return NULL;
    lua_getfield(L, idx, "generator");
    lps_rng *r = lua_isnil(L, -1) ? NULL : luaL_checkudata(L, -1, LPS_GENERATOR_MT);
    lua_pop(L, 1); /* opts keeps it alive */
    return r;
}

/* -------------------------------------------------------------- features */

static lps_feat_method check_method(lua_State *L, int idx)
{
    static const char *const names[] = {"raw", "sorted", "stats", "gram", NULL};
    return (lps_feat_method)luaL_checkoption(L, idx, NULL, names);
}

static lps_feat_opts feat_opts(lua_State *L, int idx)
{
    lps_feat_opts o = {opt_int_field(L, idx, "pool", 2)};
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
        if (method == LPS_FEAT_GRAM && (v[0].geom != NULL) != (v[i].geom != NULL))
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

/* The key of one model's architecture, e.g. "l128x784-l2x128" or
 * "c8x1k5s2p2-c16x8k3s1p1m2/2-l2x784" (m: max-pooling kernel/stride). */
static void push_arch_key(lua_State *L, const lps_net_view *m)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int l = 0; l < m->nlayers; l++) {
        const lps_tensor *w = m->p[2 * l];
        char part[160];
        if (m->geom && m->geom[l].conv) {
            const lps_net_layer *g = &m->geom[l];
            int k = snprintf(part, sizeof part, "%sc%lldx%lldk%llds%dp%d", l ? "-" : "",
                             (long long)w->shape[0], (long long)w->shape[1], (long long)w->shape[2],
                             g->stride, g->padding);
            if (g->pool_k) snprintf(part + k, sizeof part - (size_t)k, "m%d/%d", g->pool_k, g->pool_s);
        } else {
            snprintf(part, sizeof part, "%sl%lldx%lld", l ? "-" : "", (long long)w->shape[0],
                     (long long)w->shape[1]);
        }
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
            lua_pushfstring(L, "%s:%I", v[i].geom ? "cnn" : "mlp", (LUAI_UACINT)f);
        } else {
            lua_pushliteral(L, "stats");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* place(out, block, rows, cols): out[rows[i], cols[j]] = block[i, j] (1-based). */
static int l_place(lua_State *L)
{
    lps_tensor *out = lps_lua_checktensor(L, 1), *blk = lps_lua_checktensor(L, 2);
    int64_t nr, nc;
    int64_t *rows = check_labels(L, 3, &nr, "place", "rows");
    int64_t *cols = check_labels(L, 4, &nc, "place", "columns");
    if (out->ndim != 2 || blk->ndim != 2 || blk->shape[0] != nr || blk->shape[1] != nc)
        return luaL_error(L, "place: needs a 2-D output and a %d x %d block (rows x columns), got %d-D and %d-D",
                          (int)nr, (int)nc, out->ndim, blk->ndim);
    for (int64_t i = 0; i < nr; i++)
        if (rows[i] < 1 || rows[i] > out->shape[0])
            return luaL_error(L, "place: row %d (%d) out of range 1..%d", (int)i + 1, (int)rows[i], (int)out->shape[0]);
    for (int64_t j = 0; j < nc; j++)
        if (cols[j] < 1 || cols[j] > out->shape[1])
            return luaL_error(L, "place: column %d (%d) out of range 1..%d", (int)j + 1, (int)cols[j], (int)out->shape[1]);
    for (int64_t i = 0; i < nr; i++)
        for (int64_t j = 0; j < nc; j++)
            out->data[(rows[i] - 1) * out->shape[1] + cols[j] - 1] = blk->data[i * nc + j];
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
    lps_tensor **acts = scratch(L, (size_t)nh * sizeof *acts);
    int64_t *sizes = scratch(L, (size_t)nh * sizeof *sizes);
    for (int l = 0; l < nh; l++) sizes[l] = m.p[2 * l]->shape[0];
    /* an MLP's input is checked by hidden_acts, with its message */
    if (m.geom && x->ndim == 2) LPS_LCHECK(L, lps_net_hidden_sizes(sizes, &m, x->shape[1]));
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
    lps_tensor **out = scratch(L, (size_t)n * sizeof *out);
    LPS_LCHECK(L, lps_net_permute(out, &m, perm));
    push_model(L, out, n); /* takes ownership before anything can raise */
    return 1;
}

static int l_sort_perm(lua_State *L)
{
    lps_net_view m = check_model(L, 1, "sort_perm");
    LPS_LCHECK(L, lps_net_check("sort_perm", &m));
    int64_t *perm = scratch(L, (size_t)lps_net_units(&m) * sizeof *perm);
    LPS_LCHECK(L, lps_net_sort_perm(perm, &m));
    push_perm(L, perm, &m);
    return 1;
}

/* ----------------------------------------------------- matching and CKA */

static lps_match_opts match_opts(lua_State *L, int idx)
{
    lps_match_opts o = {opt_int_field(L, idx, "max_iter", 100), opt_generator(L, idx)};
    if (o.max_iter < 1) luaL_error(L, "matching: option max_iter must be >= 1");
    return o;
}

/* weight_matching(a, b, opts) -> perms (aligning b to a), similarity, sweeps */
static int l_weight_matching(lua_State *L)
{
    lps_net_view a = check_model(L, 1, "matching"), b = check_model(L, 2, "matching");
    lps_match_opts o = match_opts(L, 3);
    LPS_LCHECK(L, lps_net_check("matching", &a));
    int64_t *perm = scratch(L, (size_t)lps_net_units(&a) * sizeof *perm);
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
    const lps_tensor **t = scratch(L, (size_t)len * sizeof *t);
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

/* assign(cost, maximize) -> 1-based columns (0 for an unassigned row), total */
static int l_assign(lua_State *L)
{
    lps_tensor *c = lps_lua_checktensor(L, 1);
    int maximize = lua_toboolean(L, 2);
    if (c->ndim != 2) return luaL_error(L, "assign: needs a 2-D cost matrix, got %d dimensions", c->ndim);
    int64_t n = c->shape[0], m = c->shape[1];
    double *cost = scratch(L, (size_t)(n * m) * sizeof *cost);
    for (int64_t i = 0; i < n * m; i++) cost[i] = c->data[i];
    int64_t *as = scratch(L, (size_t)n * sizeof *as);
    double total;
    LPS_LCHECK(L, lps_linear_assignment(as, &total, cost, n, m, maximize));
    push_int_array(L, as, n, 1);
    lua_pushnumber(L, total);
    return 2;
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

/* retrieval(sim, qlabels, glabels, ks, exclude_self) -> {cmc...}, map, nvalid */
static int l_retrieval(lua_State *L)
{
    lps_tensor *s = check_sim(L, 1, "retrieval");
    int64_t *ql = labels_for(L, 2, s->shape[0], "retrieval", "query labels");
    int64_t *gl = labels_for(L, 3, s->shape[1], "retrieval", "gallery labels");
    int64_t nk;
    int64_t *ks = check_labels(L, 4, &nk, "retrieval", "ranks");
    if (nk > 1000) return luaL_error(L, "retrieval: at most 1000 ranks");
    double *cmc = scratch(L, (size_t)nk * sizeof *cmc), map;
    int64_t nvalid;
    LPS_LCHECK(L, lps_retrieval(cmc, &map, &nvalid, s, ql, gl, ks, (int)nk, lua_toboolean(L, 5)));
    lua_createtable(L, (int)nk, 0);
    for (int64_t j = 0; j < nk; j++) {
        lua_pushnumber(L, cmc[j]);
        lua_rawseti(L, -2, j + 1);
    }
    lua_pushnumber(L, map);
    lua_pushinteger(L, nvalid);
    return 3;
}

static int l_knn_classify(lua_State *L)
{
    lps_tensor *s = check_sim(L, 1, "knn");
    int64_t *gl = labels_for(L, 2, s->shape[1], "knn", "gallery labels");
    lua_Integer k = luaL_checkinteger(L, 3);
    int64_t *pred = scratch(L, (size_t)s->shape[0] * sizeof *pred);
    LPS_LCHECK(L, lps_knn_classify(pred, s, gl, k, lua_toboolean(L, 4)));
    push_int_array(L, pred, s->shape[0], 0);
    return 1;
}

static int l_centroid_classify(lua_State *L)
{
    lps_tensor *s = check_sim(L, 1, "centroid");
    int64_t *gl = labels_for(L, 2, s->shape[1], "centroid", "gallery labels");
    int64_t *pred = scratch(L, (size_t)s->shape[0] * sizeof *pred);
    LPS_LCHECK(L, lps_centroid_classify(pred, s, gl, lua_toboolean(L, 3)));
    push_int_array(L, pred, s->shape[0], 0);
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
    int64_t *idx = scratch(L, (size_t)k * sizeof *idx);
    float *sc = scratch(L, (size_t)k * sizeof *sc);
    LPS_LCHECK(L, lps_topk(idx, sc, e, q->data, q->numel, k));
    push_int_array(L, idx, k, 1);
    lua_createtable(L, (int)k, 0);
    for (lua_Integer i = 0; i < k; i++) {
        lua_pushnumber(L, sc[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 2;
}

/* kmeans(x, k, opts) -> {cluster ids 1..k}, centres, inertia */
static int l_kmeans(lua_State *L)
{
    lps_tensor *x = lps_lua_checktensor(L, 1);
    lua_Integer k = luaL_checkinteger(L, 2);
    lps_kmeans_opts o = {opt_int_field(L, 3, "restarts", 10), opt_int_field(L, 3, "max_iter", 300)};
    if (o.restarts < 1 || o.max_iter < 1)
        return luaL_error(L, "kmeans: options restarts and max_iter must be >= 1");
    lps_rng *r = opt_generator(L, 3);
    if (!r) r = lps_lua_optrng(L, 0);
    if (x->ndim != 2) return luaL_error(L, "kmeans: points must be a 2-D (n x d) tensor");
    if (k < 1 || k > x->shape[0])
        return luaL_error(L, "kmeans: k = %d out of range 1..%d (the number of points)", (int)k,
                          (int)x->shape[0]);
    int64_t *as = scratch(L, (size_t)x->shape[0] * sizeof *as);
    int64_t shape[2] = {k, x->shape[1]};
    lps_tensor *c = lps_lua_newtensor(L, 2, shape);
    double inertia;
    LPS_LCHECK(L, lps_kmeans(as, c, &inertia, x, k, &o, r));
    push_int_array(L, as, x->shape[0], 1);
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
    double *m = scratch(L, (size_t)(n * n) * sizeof *m), *w = scratch(L, (size_t)n * sizeof *w);
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
    double *var = scratch(L, (size_t)k * sizeof *var);
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
    {"features", l_features}, {"feature_matrix", l_feature_matrix},
    {"feature_keys", l_feature_keys}, {"place", l_place},
    {"standardize", l_standardize}, {"cosine_matrix", l_cosine_matrix},
    {"forward", l_forward}, {"hidden", l_hidden}, {"permute", l_permute},
    {"sort_perm", l_sort_perm}, {"weight_matching", l_weight_matching},
    {"matching_matrix", l_matching_matrix}, {"linear_cka", l_linear_cka},
    {"cka_matrix", l_cka_matrix}, {"cka_layers", l_cka_layers}, {"assign", l_assign}, {"retrieval", l_retrieval},
    {"knn_classify", l_knn_classify}, {"centroid_classify", l_centroid_classify},
    {"nmi", l_nmi}, {"ami", l_ami}, {"emi", l_emi}, {"kendall_tau", l_kendall},
    {"spearman", l_spearman}, {"topk", l_topk}, {"kmeans", l_kmeans}, {"symeig", l_symeig},
    {"pca", l_pca}, {"mds", l_mds}, {NULL, NULL}};

void lps_lua_open_eval(lua_State *L)
{
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "_eval");
}
