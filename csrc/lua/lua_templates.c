/* lua_templates.c - the class templates of one model in one call
 * (lualps/similarity/templates.lua): build its module from the arch, copy
 * the weights in, take the input gradients, pool and normalize. The same
 * operations, in the same order, as the Lua steps it replaces (the same
 * bits); one call instead of some forty per model. */
#include "lua/binding.h"

#include <string.h>

/* A layer owned by a userdata on the stack: freed if a Lua error unwinds. */
typedef struct { lps_layer *l; } layer_box;

static int box_gc(lua_State *L)
{
    layer_box *b = lua_touserdata(L, 1);
    if (b->l) lps_layer_free(b->l);
    b->l = NULL;
    return 0;
}

static layer_box *new_box(lua_State *L)
{
    layer_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->l = NULL;
    if (luaL_newmetatable(L, "lualps.TemplateLayer")) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return b;
}

typedef struct {
    lps_tensor **t;
    int n, max;
} buffers_ctx;

static void buffer_one(void *ud, const char *name, lps_tensor *t, int is_buffer)
{
    (void)name;
    buffers_ctx *c = ud;
    if (is_buffer && c->n < c->max) c->t[c->n] = t;
    if (is_buffer) c->n++;
}

static int count_buffers(const lps_layer *l)
{
    int n = l->nbuffers;
    for (int i = 0; i < l->nchildren; i++) n += count_buffers(l->children[i]);
    return n;
}

/* Copy the tensors of the list at idx into dst (n of them): counts and
 * sizes must agree. */
static void fill(lua_State *L, int idx, lps_tensor **dst, int n, const char *what)
{
    int given = lua_istable(L, idx) ? (int)lua_rawlen(L, idx) : 0;
    if (given != n)
        luaL_error(L, "similarity: the model's arch has %d %s tensors, the model %d", n, what, given);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        lps_tensor *src = lps_lua_checktensor(L, -1);
        if (src->numel != dst[i]->numel) {
            char a[64], b[64];
            luaL_error(L, "similarity: %s tensor %d %s does not fit its arch's %s", what, i + 1,
                       lps_shape_str(src, a, sizeof a), lps_shape_str(dst[i], b, sizeof b));
        }
        LPS_LCHECK(L, lps_copy(dst[i], src));
        lua_pop(L, 1);
    }
}

/* Copy the weight lists at (absolute) indices pidx and bidx into m's
 * parameters (in named_parameters order) and buffers (named_buffers). */
static void load(lua_State *L, lps_layer *m, int pidx, int bidx)
{
    int np = lps_layer_params(m, NULL, NULL, 0), nb = count_buffers(m);
    lps_tensor **t = lps_lua_scratch(L, sizeof *t * (size_t)(2 * (np > nb ? np : nb) + 1));
    lps_layer_params(m, t, t + np, np);
    fill(L, pidx, t, np, "parameter");
    buffers_ctx c = {t, 0, nb};
    if (nb) lps_layer_named(m, buffer_one, &c);
    fill(L, bidx, t, nb, "buffer");
    lua_pop(L, 1); /* the scratch */
}

/* load_weights(module, params, buffers): a weight list's tensors copied
 * into a module built from its arch (templates.lua's function_of), the
 * same copy as class_templates makes of them. */
static int l_load_weights(lua_State *L)
{
    load(L, lps_lua_checkmodule(L, 1), 2, 3);
    return 0;
}

/* A module from the arch at idx with the weights of lists pidx, bidx,
 * frozen in evaluation mode (running statistics, no dream prior), owned by
 * a box pushed on the stack. */
static layer_box *build(lua_State *L, int idx, int pidx, int bidx)
{
    lps_arch *a = lps_lua_checkarch(L, idx, "templates");
    layer_box *box = new_box(L);
    if (!(box->l = lps_layer_from_arch(a, NULL))) luaL_error(L, "from_arch: %s", lps_errmsg());
    lps_layer *m = box->l;
    load(L, m, pidx, bidx);
    lps_layer_set_frozen(m, 1);
    lps_layer_set_training(m, 0);
    if (m->batch_stats) lps_layer_set_batch_stats(m, 0);
    if (m->stat_prior != 0) lps_layer_set_stat_prior(m, 0);
    return box;
}

/* A Lua-owned header over rows [r0, r0 + n) of t, reshaped to nd x shape
 * (shape NULL: t's sizes with n rows). */
static lps_tensor *rows(lua_State *L, const lps_tensor *t, int64_t r0, int64_t n, int nd,
                        const int64_t *shape)
{
    lps_tensor *v = lps_lua_pushtensor(L, lps_tensor_rows(t, r0, n));
    if (!shape) return v;
    return lps_lua_pushtensor(L, lps_tensor_reshape(v, nd, shape));
}

/* class_templates(src, params, buffers, x, P, tpool, extras, side) -> T,
 * norms, mean_logit. src: a module (frozen in evaluation mode by the caller) or
 * an arch (list or JSON text) to build one from with the parameter and
 * buffer lists; x: the R ranges' P noise inputs each (R P rows, the
 * module's input shape, side x side images); tpool: the avgpool2d module. See
 * templates.lua's compute for the steps. */
static int l_class_templates(lua_State *L)
{
    luaL_checkstack(L, 24, "class_templates");
    layer_box *box = lua_isuserdata(L, 1) ? NULL : build(L, 1, 2, 3);
    lps_layer *m = box ? box->l : lps_lua_checkmodule(L, 1);
    /* a module given is read as it is: it must not learn or update its statistics here */
    if (!box) luaL_argcheck(L, m->frozen && !m->training, 1, "the module must be frozen and in evaluation mode");
    lps_tensor *x = lps_lua_checktensor(L, 4);
    int64_t P = luaL_checkinteger(L, 5), n = x->shape[0];
    lps_layer *tpool = lps_lua_checkmodule(L, 6);
    int extras = lua_toboolean(L, 7);
    int64_t side = luaL_checkinteger(L, 8);
    luaL_argcheck(L, n > 0, 4, "x has no rows");
    luaL_argcheck(L, P >= 1 && n % P == 0, 5, "P must divide x's rows");
    int64_t R = n / P, d_in = x->numel / n;
    luaL_argcheck(L, side >= 1 && side <= d_in && d_in % side == 0 && d_in / side == side, 8,
                  "the inputs must be side x side images");
    int64_t out[LPS_MAX_DIMS];
    int ond;
    LPS_LCHECK(L, lps_layer_out_shape(m, x->ndim, x->shape, &ond, out));
    if (ond != 2 || out[0] != n || out[1] < 1)
        return luaL_error(L, "class_templates: the module must give %I x k class scores, got %d dims%s", (lua_Integer)n,
                          ond, ond == 2 ? " with other rows or no columns" : "");
    int64_t k = out[1], kb = k > 1 ? k - 1 : 1; /* the classes: the output's width */
    /* d(logit_c - mean logit) for c < k; the last class's is minus their sum */
    lps_tensor *gy = lps_lua_emptytensor(L, 2, (int64_t[]){kb * n, k});
    lps_fill(gy, (float)(-1.0 / (double)k));
    for (int64_t c = 0; c < kb; c++)
        for (int64_t q = c * n; q < (c + 1) * n; q++) gy->data[q * k + c] = (float)(1.0 - 1.0 / (double)k);
    lps_tensor *logits = lps_lua_newtensor(L, ond, out);
    int64_t ash[LPS_MAX_DIMS];
    memcpy(ash, x->shape, sizeof ash);
    ash[0] = k * R;
    lps_tensor *all = lps_lua_newtensor(L, x->ndim, ash);
    lps_tensor *gx = rows(L, all, 0, kb * R, 0, NULL);
    LPS_LCHECK(L, lps_layer_input_gradients(m, x, logits, gy, P, gx));
    if (k > 1) {
        lps_tensor *head = rows(L, all, 0, kb * R, 2, (int64_t[]){kb, R * d_in});
        lps_tensor *last = rows(L, all, kb * R, R, 1, (int64_t[]){R * d_in});
        LPS_LCHECK(L, lps_reduce_dim(last, head, 0, LPS_SUM));
        LPS_LCHECK(L, lps_binary_scalar(last, last, LPS_MUL, -1.0f, 0));
    }
    if (box) { /* release the built module (and its workspaces) now */
        lps_layer_free(box->l);
        box->l = NULL;
    }
    /* block means of each class's R images, k x R seg */
    lps_tensor *img = lps_lua_pushtensor(L, lps_tensor_reshape(all, 4, (int64_t[]){k * R, 1, side, side}));
    int pnd;
    int64_t psh[LPS_MAX_DIMS];
    LPS_LCHECK(L, lps_layer_out_shape(tpool, 4, img->shape, &pnd, psh));
    lps_tensor *pooled = lps_lua_newtensor(L, pnd, psh);
    LPS_LCHECK(L, lps_layer_forward(tpool, img, pooled));
    int64_t w = pooled->numel / k;
    lps_tensor *T = lps_lua_pushtensor(L, lps_tensor_reshape(pooled, 2, (int64_t[]){k, w}));
    int iT = lua_gettop(L);
    lps_tensor *sq = lps_lua_emptytensor(L, 2, T->shape);
    LPS_LCHECK(L, lps_binary(sq, T, LPS_MUL, T));
    lps_tensor *norms = lps_lua_newtensor(L, 1, (int64_t[]){k});
    int inorms = lua_gettop(L);
    LPS_LCHECK(L, lps_reduce_dim(norms, sq, 1, LPS_SUM));
    LPS_LCHECK(L, lps_unary(norms, norms, LPS_SQRT));
    double nmax;
    LPS_LCHECK(L, lps_reduce_all(norms, LPS_MAX, &nmax));
    if (nmax < 1e-12) nmax = 1e-12; /* as math.max(v, 1e-12): NaN stays */
    for (int64_t c = 0; c < k; c++) {
        double v = norms->data[c];
        if (v < 1e-12) v = 1e-12;
        lps_tensor *row = rows(L, T, c, 1, 1, (int64_t[]){w});
        LPS_LCHECK(L, lps_binary_scalar(row, row, LPS_DIV, (float)v, 0));
        lua_pop(L, 2);
    }
    lps_tensor *mean = lps_lua_newtensor(L, 1, (int64_t[]){k});
    int imean = lua_gettop(L);
    double mu;
    LPS_LCHECK(L, lps_reduce_dim(mean, logits, 0, LPS_MEAN));
    LPS_LCHECK(L, lps_reduce_all(mean, LPS_MEAN, &mu));
    LPS_LCHECK(L, lps_binary_scalar(mean, mean, LPS_SUB, (float)mu, 0));
    if (extras) { /* one-hot class count (at most 8), centred logit per range */
        int64_t wide = w + 8 + R;
        lps_tensor *pad = lps_lua_newtensor(L, 2, (int64_t[]){k, wide});
        for (int64_t c = 0; c < k; c++) {
            memcpy(pad->data + c * wide, T->data + c * w, sizeof(float) * (size_t)w);
            pad->data[c * wide + w + (k < 8 ? k : 8) - 1] = 1.0f;
        }
        lps_tensor *lr = lps_lua_newtensor(L, 1, (int64_t[]){k});
        for (int64_t r = 0; r < R; r++) {
            lps_tensor *part = rows(L, logits, r * P, P, 0, NULL);
            LPS_LCHECK(L, lps_reduce_dim(lr, part, 0, LPS_MEAN));
            LPS_LCHECK(L, lps_reduce_all(lr, LPS_MEAN, &mu));
            LPS_LCHECK(L, lps_binary_scalar(lr, lr, LPS_SUB, (float)mu, 0));
            for (int64_t c = 0; c < k; c++) pad->data[c * wide + w + 8 + r] = lr->data[c];
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        lua_replace(L, iT);
    }
    LPS_LCHECK(L, lps_binary_scalar(norms, norms, LPS_DIV, (float)nmax, 0));
    lua_pushvalue(L, iT);
    lua_pushvalue(L, inorms);
    lua_pushvalue(L, imean);
    return 3;
}

static const luaL_Reg functions[] = {
    {"class_templates", l_class_templates}, {"load_weights", l_load_weights}, {NULL, NULL}};

void lps_lua_open_templates(lua_State *L) { luaL_setfuncs(L, functions, 0); }
