/* lua_lps.c - Lua binding of the second-order (LPS) layers and losses, as
 * the table `_lps` of lualps.core (used by lualps/similarity.lua). */
#include <math.h>
#include <string.h>

#include "lua/binding.h"

/* Labels: 1-based rows of the classifier or the relation targets. */
static int64_t *check_labels(lua_State *L, int idx, int64_t n)
{
    return lps_lua_checklabels(L, idx, n, 0, "lps", "labels", NULL);
}

static lps_tensor *new2(lua_State *L, int64_t r, int64_t c)
{
    int64_t sh[2] = {r, c};
    return lps_lua_newtensor(L, 2, sh);
}

static lps_tensor *new1(lua_State *L, int64_t n) { return lps_lua_newtensor(L, 1, &n); }

/* chain_normalize_(model [, eps]): model = {W1, b1, ..., WL, bL}, in place. */
static int l_chain_normalize(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    float eps = (float)luaL_optnumber(L, 2, 0.0);
    lua_Integer n = luaL_len(L, 1);
    if (n < 2 || n % 2 || n > 2000)
        return luaL_error(L, "chain_normalize: a model is a list {W1, b1, ..., WL, bL}, got %d entries",
                          (int)n);
    int nl = (int)(n / 2);
    lps_tensor **W = lua_newuserdatauv(L, sizeof(lps_tensor *) * 2 * (size_t)nl, 0), **b = W + nl;
    for (int i = 0; i < (int)n; i++) {
        lua_geti(L, 1, i + 1);
        lps_tensor *t = lps_lua_totensor(L, -1);
        if (!t)
            return luaL_error(L, "chain_normalize: entry %d of the model is a %s, expected a tensor",
                              i + 1, luaL_typename(L, -1));
        lua_pop(L, 1); /* still referenced by the model table */
        if (i % 2) b[i / 2] = t; else W[i / 2] = t;
    }
    LPS_LCHECK(L, lps_chain_normalize(nl, W, b, eps));
    lua_settop(L, 1);
    return 1;
}

/* The tensors of a model table {W1, b1, ..., Wn, bn} at idx: W then b,
 * each nl long, in a scratch userdata pushed on the stack. */
static lps_tensor **model_tensors(lua_State *L, int idx, int *nl, const char *op)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_Integer n = luaL_len(L, idx);
    if (n < 2 || n % 2 || n > 2000)
        luaL_error(L, "%s: a model is a list {W1, b1, ..., Wn, bn}, got %d entries", op, (int)n);
    *nl = (int)(n / 2);
    lps_tensor **W = lps_lua_scratch(L, sizeof(lps_tensor *) * (size_t)n);
    for (int i = 0; i < (int)n; i++) {
        lua_geti(L, idx, i + 1);
        lps_tensor *t = lps_lua_totensor(L, -1);
        if (!t) luaL_error(L, "%s: entry %d of the model is a %s, expected a tensor", op, i + 1, luaL_typename(L, -1));
        lua_pop(L, 1); /* still referenced by the model table */
        W[(i % 2) * *nl + i / 2] = t;
    }
    return W;
}

/* chain_normalize_net_(model [, eps]) in place, model = {W1, b1, ...} of
 * conv and linear layers (the shapes tell the structure); returns the model. */
static int l_chain_normalize_net(lua_State *L)
{
    float eps = (float)luaL_optnumber(L, 2, 0.0);
    int nl;
    lps_tensor **W = model_tensors(L, 1, &nl, "chain_normalize_net");
    LPS_LCHECK(L, lps_chain_normalize_units(nl, W, W + nl, eps));
    lua_settop(L, 1);
    return 1;
}

/* net_prepare(model, chain_norm, s) for a network of conv and linear layers
 * (lps_units_check), model = {W1, b1, ..., Wn, bn} (left as it is): returns
 * {first = first-layer unit features (h1 x fan-in; conv kernels centred in
 * s x s), W1 = the first weight (normalized), bias = {b1, ..., bn}, imp =
 * {imp1, ..., imp(n-1)}, mix = {[2] = M2, ..., [n] = Mn}}, after chain
 * normalization when chain_norm (else only checked). */
static int l_net_prepare(lua_State *L)
{
    int norm = lua_toboolean(L, 2);
    lua_Integer s = luaL_checkinteger(L, 3);
    lua_settop(L, 3);
    int nl;
    model_tensors(L, 1, &nl, "net_prepare");              /* 4: checks the entries */
    lps_tensor **W = lps_lua_scratch(L, sizeof(lps_tensor *) * 2 * (size_t)nl), **b = W + nl; /* 5 */
    lua_createtable(L, 2 * nl, 0);                           /* 6: the copies, kept alive here */
    for (int i = 0; i < 2 * nl; i++) {
        lua_geti(L, 1, i + 1);
        lps_tensor *t = lps_lua_totensor(L, -1);
        lua_pop(L, 1);
        lps_tensor *c = lps_lua_pushtensor(L, lps_tensor_clone(t));
        lua_seti(L, 6, i + 1);
        if (i % 2) b[i / 2] = c; else W[i / 2] = c;
    }
    LPS_LCHECK(L, lps_chain_normalize_units(nl, W, b, norm ? 0.0f : INFINITY));
    lua_createtable(L, 0, 5); /* 7: the result */
    if (W[0]->ndim == 4) {
        /* s x s templates of every input channel must make a tensor (before
         * the size, 2^63 and the like, overflowed the product below) */
        if (s < 1 || s > (1 << 20) || W[0]->shape[1] > LPS_MAX_NUMEL / (s * s))
            return luaL_error(L, "net_prepare: template size %I out of range for %d input channels", s,
                              (int)W[0]->shape[1]);
        int64_t sh[2] = {W[0]->shape[0], W[0]->shape[1] * s * s};
        LPS_LCHECK(L, lps_conv_unit_features(lps_lua_newtensor(L, 2, sh), W[0], s));
    } else {
        lua_geti(L, 6, 1);
    }
    lua_setfield(L, 7, "first");
    lua_geti(L, 6, 1);
    lua_setfield(L, 7, "W1");
    lua_createtable(L, nl, 0);
    for (int l = 0; l < nl; l++) { lua_geti(L, 6, 2 * l + 2); lua_seti(L, -2, l + 1); }
    lua_setfield(L, 7, "bias");
    lua_createtable(L, nl, 0);
    for (int l = 0; l + 1 < nl; l++) {
        LPS_LCHECK(L, lps_units_importance(new1(L, W[l]->shape[0]), nl, W, b, l));
        lua_seti(L, -2, l + 1);
    }
    lua_setfield(L, 7, "imp");
    lua_createtable(L, nl, 0);
    for (int l = 1; l < nl; l++) {
        int64_t hp = W[l - 1]->shape[0];
        LPS_LCHECK(L, lps_units_mixing(new2(L, W[l]->shape[0], hp), nl, W, b, l));
        lua_seti(L, -2, l + 1);
    }
    lua_setfield(L, 7, "mix");
    return 1;
}

/* weight_layers(arch, op): the number of weight layers of an arch the
 * weight-space methods read (lps_arch_weight_layers); raises naming the
 * first layer they cannot read. */
static int l_weight_layers(lua_State *L)
{
    const char *op = luaL_checkstring(L, 2);
    const lps_arch *a = lps_lua_checkarch(L, 1, op);
    int n;
    LPS_LCHECK(L, lps_arch_weight_layers(a, NULL, 0, &n, op));
    lua_pushinteger(L, n);
    return 1;
}

static int l_column_norms(lua_State *L)
{
    lps_tensor *W = lps_lua_checktensor(L, 1);
    if (W->ndim != 2) return luaL_error(L, "column_norms: needs a 2-D weight");
    LPS_LCHECK(L, lps_column_norms(new1(L, W->shape[1]), W));
    return 1;
}

static const char *const acts[] = {"relu", "tanh", "linear", NULL};

/* neuron_forward(U, bias, imp, A, a [, act="relu", Z]) -> Z */
static int l_neuron_forward(lua_State *L)
{
    lps_tensor *U = lps_lua_checktensor(L, 1), *bias = lps_lua_checktensor(L, 2),
               *imp = lps_lua_checktensor(L, 3), *A = lps_lua_checktensor(L, 4),
               *a = lps_lua_checktensor(L, 5);
    lps_act act = (lps_act)luaL_checkoption(L, 6, "relu", acts);
    lps_tensor *Z;
    if (!lua_isnoneornil(L, 7)) {
        Z = lps_lua_checktensor(L, 7);
        lua_settop(L, 7);
    } else {
        if (U->ndim != 2 || A->ndim != 2)
            return luaL_error(L, "neuron_forward: unit features and encoder weight must be 2-D");
        Z = new2(L, U->shape[0], A->shape[0]);
    }
    LPS_LCHECK(L, lps_neuron_forward(Z, U, bias, imp, A, a, act));
    return 1;
}

/* neuron_backward(dZ, Z, U, bias, imp, A, dA, da [, want_dU=true, act="relu"]) -> dU or nil */
static int l_neuron_backward(lua_State *L)
{
    lps_tensor *dZ = lps_lua_checktensor(L, 1), *Z = lps_lua_checktensor(L, 2),
               *U = lps_lua_checktensor(L, 3), *bias = lps_lua_checktensor(L, 4),
               *imp = lps_lua_checktensor(L, 5), *A = lps_lua_checktensor(L, 6),
               *dA = lps_lua_checktensor(L, 7), *da = lps_lua_checktensor(L, 8);
    int want = lua_isnoneornil(L, 9) || lua_toboolean(L, 9);
    lps_act act = (lps_act)luaL_checkoption(L, 10, "relu", acts);
    lps_tensor *dU = NULL;
    if (want) {
        if (U->ndim != 2) return luaL_error(L, "neuron_backward: unit features must be 2-D");
        dU = lps_lua_newtensor(L, 2, U->shape);
    } else
        lua_pushnil(L);
    LPS_LCHECK(L, lps_neuron_backward(dU, dA, da, dZ, Z, U, bias, imp, A, act));
    return 1;
}

static void check_pool_opts(lua_State *L, int idx, lps_sopool_opts *o)
{
    static const char *const modes[] = {"power", "sqrtm", "plain", "mean", NULL};
    o->mode = LPS_SOPOOL_POWER;
    o->eps = 1e-4f;
    o->iters = 5;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "mode");
    if (!lua_isnil(L, -1)) o->mode = (lps_sopool_mode)luaL_checkoption(L, -1, NULL, modes);
    lua_getfield(L, idx, "eps");
    if (!lua_isnil(L, -1)) o->eps = (float)luaL_checknumber(L, -1);
    lua_getfield(L, idx, "iters");
    if (!lua_isnil(L, -1)) {
        lua_Integer it = luaL_checkinteger(L, -1);
        o->iters = it < 0 || it > 1000 ? 1000 : (int)it; /* out of range: the C check says so */
    }
    lua_pop(L, 3);
}

static int l_sopool_size(lua_State *L)
{
    lua_Integer d = luaL_checkinteger(L, 1);
    luaL_argcheck(L, d >= 0 && d <= 1024, 1, "width must be 0..1024");
    lps_sopool_opts o;
    check_pool_opts(L, 2, &o);
    lua_pushinteger(L, lps_sopool_size(d, o.mode));
    return 1;
}

/* sopool_forward(Z, w, opts [, out, pos=1]) -> out (values written from pos) */
static int l_sopool_forward(lua_State *L)
{
    lps_tensor *Z = lps_lua_checktensor(L, 1), *w = lps_lua_checktensor(L, 2);
    lps_sopool_opts o;
    check_pool_opts(L, 3, &o);
    lps_tensor *out;
    lua_Integer pos = luaL_optinteger(L, 5, 1);
    luaL_argcheck(L, pos >= 1, 5, "position must be >= 1");
    if (!lua_isnoneornil(L, 4)) {
        out = lps_lua_checktensor(L, 4);
        lua_settop(L, 4);
    } else {
        if (Z->ndim != 2) return luaL_error(L, "sopool_forward: unit embeddings must be 2-D");
        out = new1(L, lps_sopool_size(Z->shape[1], o.mode));
    }
    LPS_LCHECK(L, lps_sopool_forward(out, pos - 1, Z, w, &o));
    return 1;
}

/* sopool_backward(dout, Z, w, opts [, pos=1]) -> dZ */
static int l_sopool_backward(lua_State *L)
{
    lps_tensor *dout = lps_lua_checktensor(L, 1), *Z = lps_lua_checktensor(L, 2),
               *w = lps_lua_checktensor(L, 3);
    lps_sopool_opts o;
    check_pool_opts(L, 4, &o);
    lua_Integer pos = luaL_optinteger(L, 5, 1);
    luaL_argcheck(L, pos >= 1, 5, "position must be >= 1");
    lps_tensor *dZ = lps_lua_newtensor(L, Z->ndim, Z->shape);
    LPS_LCHECK(L, lps_sopool_backward(dZ, dout, pos - 1, Z, w, &o));
    return 1;
}

/* embed_forward(F, P, p) -> Y, U */
static int l_embed_forward(lua_State *L)
{
    lps_tensor *F = lps_lua_checktensor(L, 1), *P = lps_lua_checktensor(L, 2),
               *p = lps_lua_checktensor(L, 3);
    if (F->ndim != 2 || P->ndim != 2)
        return luaL_error(L, "embed_forward: features and projection must be 2-D");
    lps_tensor *Y = new2(L, F->shape[0], P->shape[0]), *U = new2(L, F->shape[0], P->shape[0]);
    LPS_LCHECK(L, lps_embed_forward(Y, U, F, P, p));
    return 2;
}

/* embed_backward(dY, U, F, P, dP, dp [, want_dF=true]) -> dF or nil */
static int l_embed_backward(lua_State *L)
{
    lps_tensor *dY = lps_lua_checktensor(L, 1), *U = lps_lua_checktensor(L, 2),
               *F = lps_lua_checktensor(L, 3), *P = lps_lua_checktensor(L, 4),
               *dP = lps_lua_checktensor(L, 5), *dp = lps_lua_checktensor(L, 6);
    int want = lua_isnoneornil(L, 7) || lua_toboolean(L, 7);
    lps_tensor *dF = NULL;
    if (want)
        dF = lps_lua_newtensor(L, F->ndim, F->shape);
    else
        lua_pushnil(L);
    LPS_LCHECK(L, lps_embed_backward(dF, dP, dp, dY, U, F, P));
    return 1;
}

/* pair_regression(Y, labels, T) -> loss, dY, pairs (labels 1-based rows of T) */
static int l_pair_regression(lua_State *L)
{
    lps_tensor *Y = lps_lua_checktensor(L, 1), *T = lps_lua_checktensor(L, 3);
    if (Y->ndim != 2) return luaL_error(L, "pair_regression: embeddings must be 2-D");
    int64_t *lab = check_labels(L, 2, Y->shape[0]);
    lps_tensor *dY = new2(L, Y->shape[0], Y->shape[1]);
    double loss;
    int64_t pairs;
    LPS_LCHECK(L, lps_pair_regression(&loss, &pairs, dY, Y, lab, T));
    lua_pushnumber(L, loss);
    lua_insert(L, -2);
    lua_pushinteger(L, pairs);
    return 3;
}

/* xent(Y, labels, C, c|nil, {scale=, cosine=} [, dC, dc]) -> loss, dY, correct */
static int l_xent(lua_State *L)
{
    lps_tensor *Y = lps_lua_checktensor(L, 1), *C = lps_lua_checktensor(L, 3);
    lps_tensor *c = lua_isnoneornil(L, 4) ? NULL : lps_lua_checktensor(L, 4);
    float scale = 1.0f;
    int cosine = 0;
    if (!lua_isnoneornil(L, 5)) {
        luaL_checktype(L, 5, LUA_TTABLE);
        lua_getfield(L, 5, "scale");
        if (!lua_isnil(L, -1)) scale = (float)luaL_checknumber(L, -1);
        lua_getfield(L, 5, "cosine");
        cosine = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    lps_tensor *dC = lua_isnoneornil(L, 6) ? NULL : lps_lua_checktensor(L, 6);
    lps_tensor *dc = lua_isnoneornil(L, 7) ? NULL : lps_lua_checktensor(L, 7);
    if (Y->ndim != 2) return luaL_error(L, "xent: embeddings must be 2-D");
    lua_settop(L, 7);
    int64_t *lab = check_labels(L, 2, Y->shape[0]);
    lps_tensor *dY = lps_lua_newtensor(L, 2, Y->shape);
    double loss;
    int64_t correct;
    LPS_LCHECK(L, lps_embed_xent(&loss, &correct, dY, dC, dc, Y, C, c, lab, scale, cosine));
    lua_pushnumber(L, loss);
    lua_insert(L, -2);
    lua_pushinteger(L, correct);
    return 3;
}

/* triplet(Y, labels, {margin=, metric="cosine"|"euclidean"}) -> loss, dY, valid, active */
static int l_triplet(lua_State *L)
{
    static const char *const metrics[] = {"cosine", "euclidean", NULL};
    lps_tensor *Y = lps_lua_checktensor(L, 1);
    float margin = 0.2f;
    lps_dist metric = LPS_DIST_COSINE;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "margin");
        if (!lua_isnil(L, -1)) margin = (float)luaL_checknumber(L, -1);
        lua_getfield(L, 3, "metric");
        if (!lua_isnil(L, -1)) metric = (lps_dist)luaL_checkoption(L, -1, NULL, metrics);
        lua_pop(L, 2);
    }
    if (Y->ndim != 2) return luaL_error(L, "triplet: embeddings must be 2-D");
    lua_settop(L, 3);
    int64_t *lab = check_labels(L, 2, Y->shape[0]);
    lps_tensor *dY = lps_lua_newtensor(L, 2, Y->shape);
    double loss;
    int64_t valid, active;
    LPS_LCHECK(L, lps_triplet_hard(&loss, &valid, &active, dY, Y, lab, margin, metric));
    lua_pushnumber(L, loss);
    lua_insert(L, -2);
    lua_pushinteger(L, valid);
    lua_pushinteger(L, active);
    return 4;
}

static const luaL_Reg functions[] = {
    {"chain_normalize_", l_chain_normalize}, {"column_norms", l_column_norms}, {"net_prepare", l_net_prepare},
    {"chain_normalize_net_", l_chain_normalize_net}, {"weight_layers", l_weight_layers},
    {"neuron_forward", l_neuron_forward}, {"neuron_backward", l_neuron_backward},
    {"sopool_size", l_sopool_size}, {"sopool_forward", l_sopool_forward},
    {"sopool_backward", l_sopool_backward}, {"embed_forward", l_embed_forward},
    {"embed_backward", l_embed_backward}, {"xent", l_xent}, {"triplet", l_triplet},
    {"pair_regression", l_pair_regression},
    {NULL, NULL}};

void lps_lua_open_lps(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}
