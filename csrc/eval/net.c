/* net.c - views of MLPs and CNNs for the baselines: checks, forward passes,
 * hidden activations and permutations of hidden units (conv channels). */
#include "eval/eval_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lps_status check_finite(const char *op, const lps_net_view *m, int l)
{
    for (int k = 0; k < 2; k++) {
        const lps_tensor *t = k ? B(m, l) : W(m, l);
        for (int64_t i = 0; i < t->numel; i++)
            if (!isfinite(t->data[i]))
                return lps_fail(LPS_ENUMERIC, "%s: %s%d has a non-finite value at flat index %lld",
                                op, k ? "b" : "W", l + 1, (long long)i + 1);
    }
    return LPS_OK;
}

static lps_status mlp_check(const char *op, const lps_net_view *m)
{
    if (m->nlayers < 2)
        return lps_fail(LPS_EINVAL, "%s: a model needs at least 2 linear layers (W1, b1, W2, b2), got %d",
                        op, m->nlayers);
    for (int l = 0; l < m->nlayers; l++) {
        const lps_tensor *w = W(m, l), *b = B(m, l);
        if (!w || !b) return lps_fail(LPS_EINVAL, "%s: layer %d is missing a tensor", op, l + 1);
        if (w->ndim != 2 || w->shape[0] < 1 || w->shape[1] < 1)
            return lps_fail(LPS_ESHAPE, "%s: W%d must be a non-empty 2-D (out x in) tensor, got %s",
                            op, l + 1, SH(w));
        if (b->ndim != 1 || b->shape[0] != w->shape[0])
            return lps_fail(LPS_ESHAPE, "%s: b%d %s does not match W%d %s", op, l + 1, SH(b), l + 1,
                            SH(w));
        if (l > 0 && w->shape[1] != W(m, l - 1)->shape[0])
            return lps_fail(LPS_ESHAPE, "%s: W%d %s does not take the %lld outputs of W%d %s", op,
                            l + 1, SH(w), (long long)W(m, l - 1)->shape[0], l, SH(W(m, l - 1)));
        lps_status st = check_finite(op, m, l);
        if (st) return st;
    }
    return LPS_OK;
}

/* The module of m's architecture with m's weights (the caller frees it);
 * checks that the architecture is a chain of m's weight layers and that
 * every tensor has the shape its entry gives. idx (optional, nlayers
 * entries) receives each weight layer's position among the children. */
static lps_status net_module(const char *op, const lps_net_view *m, lps_layer **out, int *idx)
{
    *out = NULL;
    int n, *pos = malloc(sizeof *pos * (size_t)m->nlayers);
    if (!pos) return lps_fail(LPS_ENOMEM, "%s: out of memory", op);
    lps_status st = lps_arch_weight_layers(m->arch, pos, m->nlayers, &n, op);
    if (!st && n != m->nlayers)
        st = lps_fail(LPS_EINVAL, "%s: the architecture has %d weight layers (linear, conv2d) for %d "
                      "weight/bias pairs", op, n, m->nlayers);
    lps_rng r; /* the constructor's random weights are overwritten */
    lps_rng_seed(&r, 0);
    lps_layer *mod = st ? NULL : lps_layer_from_arch(m->arch, &r);
    if (!st && !mod) st = LPS_EINVAL;
    for (int l = 0; !st && l < m->nlayers; l++) {
        const lps_layer *c = mod->children[pos[l]];
        for (int k = 0; k < 2 && !st; k++) {
            const lps_tensor *t = k ? B(m, l) : W(m, l), *want = k < c->nparams ? c->param[k] : NULL;
            if (!t) st = lps_fail(LPS_EINVAL, "%s: layer %d is missing a tensor", op, l + 1);
            else if (!want || !lps_same_shape(t, want))
                st = lps_fail(LPS_ESHAPE, "%s: %s%d %s does not fit layer %d (%s) of the architecture%s%s",
                              op, k ? "b" : "W", l + 1, SH(t), pos[l] + 1, lps_layer_type_name(c->type),
                              want ? ", which takes " : " (it has none)", want ? SH(want) : "");
            else
                st = lps_copy(c->param[k], t);
        }
    }
    if (!st) lps_layer_set_training(mod, 0);
    if (st) lps_layer_free(mod);
    else *out = mod;
    if (idx && !st) memcpy(idx, pos, sizeof *pos * (size_t)m->nlayers);
    free(pos);
    return st;
}

/* Conv layers [0, nconv), then linear layers; the head is linear. */
static lps_status cnn_check(const char *op, const lps_net_view *m)
{
    int L = m->nlayers, nconv = 0;
    if (L < 2)
        return lps_fail(LPS_EINVAL, "%s: a CNN needs at least a conv2d layer and a linear head, got %d layers",
                        op, L);
    for (int l = 0; l < L; l++)
        if (W(m, l) && W(m, l)->ndim == 4 && l != nconv++)
            return lps_fail(LPS_EINVAL, "%s: layer %d is a conv2d after a linear layer", op, l + 1);
    if (nconv == L) return lps_fail(LPS_EINVAL, "%s: the last layer (the head) must be linear", op);
    for (int l = 0; l < L; l++) {
        const lps_tensor *w = W(m, l), *b = B(m, l), *prev = l ? W(m, l - 1) : NULL;
        if (!w || !b) return lps_fail(LPS_EINVAL, "%s: layer %d is missing a tensor", op, l + 1);
        if (l < nconv) {
            if (w->ndim != 4 || w->shape[0] < 1 || w->shape[1] < 1 || w->shape[2] < 1 ||
                w->shape[2] != w->shape[3])
                return lps_fail(LPS_ESHAPE, "%s: W%d of a conv2d must be a 4-D (out x in x k x k) tensor, got %s",
                                op, l + 1, SH(w));
            if (prev && w->shape[1] != prev->shape[0])
                return lps_fail(LPS_ESHAPE, "%s: W%d %s does not take the %lld channels of W%d %s", op,
                                l + 1, SH(w), (long long)prev->shape[0], l, SH(prev));
        } else {
            if (w->ndim != 2 || w->shape[0] < 1 || w->shape[1] < 1)
                return lps_fail(LPS_ESHAPE, "%s: W%d must be a non-empty 2-D (out x in) tensor, got %s",
                                op, l + 1, SH(w));
            if (l == nconv && w->shape[1] % prev->shape[0])
                return lps_fail(LPS_ESHAPE, "%s: W%d %s does not take whole maps of the %lld channels of W%d %s",
                                op, l + 1, SH(w), (long long)prev->shape[0], l, SH(prev));
            if (l > nconv && w->shape[1] != prev->shape[0])
                return lps_fail(LPS_ESHAPE, "%s: W%d %s does not take the %lld outputs of W%d %s", op,
                                l + 1, SH(w), (long long)prev->shape[0], l, SH(prev));
        }
        if (b->ndim != 1 || b->shape[0] != w->shape[0])
            return lps_fail(LPS_ESHAPE, "%s: b%d %s does not match W%d %s", op, l + 1, SH(b), l + 1,
                            SH(w));
        lps_status st = check_finite(op, m, l);
        if (st) return st;
    }
    return LPS_OK;
}

lps_status lps_net_check(const char *op, const lps_net_view *m)
{
    if (m->nlayers < 1 || !m->p)
        return lps_fail(LPS_EINVAL, "%s: a model needs at least 2 layers, got %d", op, m->nlayers);
    int n;
    /* the structure first: a layer the methods cannot read says more than shapes */
    lps_status st = m->arch ? lps_arch_weight_layers(m->arch, NULL, 0, &n, op) : LPS_OK;
    if (!st) st = net_is_cnn(m) ? cnn_check(op, m) : mlp_check(op, m);
    if (st || !m->arch) return st;
    lps_layer *mod;
    st = net_module(op, m, &mod, NULL);
    lps_layer_free(mod);
    return st;
}

int64_t lps_net_numel(const lps_net_view *m)
{
    int64_t n = 0;
    for (int i = 0; i < 2 * m->nlayers; i++) n += m->p[i]->numel;
    return n;
}

int64_t lps_net_units(const lps_net_view *m)
{
    int64_t n = 0;
    for (int l = 0; l + 1 < m->nlayers; l++) n += W(m, l)->shape[0];
    return n;
}

/* Same entries (types and fields) in the same order. */
static int same_entries(const lps_arch *a, const lps_arch *b)
{
    if (!a || !b) return !a && !b;
    if (a->n != b->n) return 0;
    for (size_t i = 0; i < a->n; i++) {
        const lps_arch_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->type != y->type || memcmp(x->v, y->v, sizeof x->v) != 0) return 0;
    }
    return 1;
}

int lps_net_same_arch(const lps_net_view *a, const lps_net_view *b)
{
    if (a->nlayers != b->nlayers || net_is_cnn(a) != net_is_cnn(b)) return 0;
    for (int l = 0; l < a->nlayers; l++)
        if (!lps_same_shape(W(a, l), W(b, l)) || !lps_same_shape(B(a, l), B(b, l))) return 0;
    return !net_is_cnn(a) || same_entries(a->arch, b->arch);
}

/* The children [first, last) of mod applied to x (a new tensor in *y);
 * x is kept. */
static lps_status run_children(lps_layer *mod, int first, int last, const lps_tensor *x, lps_tensor **y)
{
    lps_tensor *cur = NULL;
    lps_status st = LPS_OK;
    for (int i = first; i < last && !st; i++) {
        const lps_tensor *in = cur ? cur : x;
        int nd;
        int64_t shape[LPS_MAX_DIMS];
        lps_tensor *out = NULL;
        st = lps_layer_out_shape(mod->children[i], in->ndim, in->shape, &nd, shape);
        if (!st && !(out = lps_tensor_empty(nd, shape))) st = LPS_ENOMEM;
        if (!st) st = lps_layer_forward(mod->children[i], in, out);
        lps_tensor_free(cur);
        cur = out;
    }
    if (st) {
        lps_tensor_free(cur);
        return st;
    }
    *y = cur;
    return LPS_OK;
}

/* The rows of x (N x cin*s*s) as N square images. */
static lps_status images(const lps_net_view *m, const lps_tensor *x, lps_tensor *img, const char *op)
{
    int64_t cin = W(m, 0)->shape[1], d = x->shape[1], s = (int64_t)llround(sqrt((double)d / (double)cin));
    if (d % cin || s * s * cin != d)
        return lps_fail(LPS_ESHAPE, "%s: inputs of %lld values are not %lld square channels (W1 %s)", op,
                        (long long)d, (long long)cin, SH(W(m, 0)));
    *img = (lps_tensor){x->storage, x->data, 4, {x->shape[0], cin, s, s}, x->numel};
    return LPS_OK;
}

lps_status lps_net_hidden_sizes(int64_t *sizes, const lps_net_view *m, int64_t d)
{
    if (!net_is_cnn(m)) {
        if (d != W(m, 0)->shape[1])
            return lps_fail(LPS_ESHAPE, "hidden_acts: inputs of %lld values do not fit W1 %s",
                            (long long)d, SH(W(m, 0)));
        for (int l = 0; l + 1 < m->nlayers; l++) sizes[l] = W(m, l)->shape[0];
        return LPS_OK;
    }
    lps_layer *mod;
    int *idx = malloc(sizeof *idx * (size_t)m->nlayers);
    lps_status st = idx ? net_module("hidden_acts", m, &mod, idx) : LPS_ENOMEM;
    if (st) {
        free(idx);
        return st;
    }
    lps_tensor one = {0};
    one.ndim = 2;
    one.shape[0] = 1;
    one.shape[1] = d;
    lps_tensor img;
    st = images(m, &one, &img, "hidden_acts");
    int nd = 4;
    int64_t shape[LPS_MAX_DIMS];
    memcpy(shape, img.shape, sizeof shape);
    /* hidden layer l is what enters weight layer l + 1 */
    for (int l = 0, i = 0; !st && l + 1 < m->nlayers; l++) {
        for (; !st && i < idx[l + 1]; i++) {
            int nnd;
            int64_t next[LPS_MAX_DIMS];
            st = lps_layer_out_shape(mod->children[i], nd, shape, &nnd, next);
            if (st) {
                char msg[600];
                snprintf(msg, sizeof msg, "%s", lps_errmsg());
                st = lps_fail(st, "hidden_acts: %lldx%lld inputs: layer %d: %s", (long long)img.shape[2],
                              (long long)img.shape[3], i + 1, msg);
            }
            nd = nnd;
            memcpy(shape, next, sizeof shape);
        }
        int64_t n = 1;
        for (int k = 1; k < nd; k++) n *= shape[k];
        sizes[l] = n;
    }
    if (!st) { /* the head must take the last hidden layer */
        int nnd;
        int64_t next[LPS_MAX_DIMS];
        st = lps_layer_out_shape(mod->children[idx[m->nlayers - 1]], nd, shape, &nnd, next);
        if (st) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s", lps_errmsg());
            st = lps_fail(st, "hidden_acts: on %lldx%lld inputs: %s", (long long)img.shape[2],
                          (long long)img.shape[3], msg);
        }
    }
    lps_layer_free(mod);
    free(idx);
    return st;
}

/* out = x W^T + b, then ReLU if relu. */
static lps_status linear(lps_tensor *out, const lps_tensor *x, const lps_net_view *m, int l, int relu)
{
    lps_status st = lps_matmul(out, x, 0, W(m, l), 1, 1.0f, 0.0f);
    if (st) return st;
    const float *b = B(m, l)->data;
    int64_t h = out->shape[1];
    for (int64_t r = 0; r < out->shape[0]; r++) {
        float *o = out->data + r * h;
        for (int64_t j = 0; j < h; j++) {
            float v = o[j] + b[j];
            o[j] = relu && !(v > 0.0f) ? 0.0f : v;
        }
    }
    return LPS_OK;
}

static lps_status check_input(const char *op, const lps_net_view *m, const lps_tensor *x)
{
    lps_status st = lps_net_check(op, m);
    if (st) return st;
    if (!net_is_cnn(m) && (x->ndim != 2 || x->shape[1] != W(m, 0)->shape[1]))
        return lps_fail(LPS_ESHAPE, "%s: input %s should be N x %lld for W1 %s", op, SH(x),
                        (long long)W(m, 0)->shape[1], SH(W(m, 0)));
    if (x->ndim != 2)
        return lps_fail(LPS_ESHAPE, "%s: input %s should be N x d (square images)", op, SH(x));
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(x->data[i]))
            return lps_fail(LPS_ENUMERIC, "%s: input has a non-finite value at flat index %lld", op,
                            (long long)i + 1);
    return LPS_OK;
}

/* CNN hidden activations into acts (sizes already checked): conv stages
 * through the module, linear layers as the MLP path computes them. */
static lps_status cnn_hidden(lps_tensor *const *acts, const lps_net_view *m, const lps_tensor *x)
{
    lps_layer *mod;
    int *idx = malloc(sizeof *idx * (size_t)m->nlayers);
    lps_status st = idx ? net_module("hidden_acts", m, &mod, idx) : LPS_ENOMEM;
    if (st) {
        free(idx);
        return st;
    }
    lps_tensor img;
    st = images(m, x, &img, "hidden_acts");
    lps_tensor *cur = NULL;
    for (int l = 0; l + 1 < m->nlayers && !st; l++) {
        const lps_tensor *in = cur ? cur : &img;
        lps_tensor *y = NULL;
        if (W(m, l)->ndim == 4) {
            st = run_children(mod, idx[l], idx[l + 1], in, &y);
        } else {
            lps_tensor *z = lps_tensor_new2(x->shape[0], W(m, l)->shape[0]);
            st = z ? linear(z, in, m, l, 0) : LPS_ENOMEM;
            if (!st) st = run_children(mod, idx[l] + 1, idx[l + 1], z, &y);
            lps_tensor_free(z);
        }
        lps_tensor_free(cur);
        cur = y;
        if (!st) memcpy(acts[l]->data, y->data, (size_t)y->numel * sizeof(float));
    }
    lps_tensor_free(cur);
    lps_layer_free(mod);
    free(idx);
    return st;
}

lps_status lps_net_hidden_acts(lps_tensor *const *acts, const lps_net_view *m, const lps_tensor *x)
{
    lps_status st = check_input("hidden_acts", m, x);
    if (st) return st;
    int64_t *sizes = malloc((size_t)m->nlayers * sizeof *sizes);
    if (!sizes) return lps_fail(LPS_ENOMEM, "hidden_acts: out of memory");
    st = lps_net_hidden_sizes(sizes, m, x->shape[1]);
    for (int l = 0; l + 1 < m->nlayers && !st; l++)
        if (acts[l]->ndim != 2 || acts[l]->shape[0] != x->shape[0] || acts[l]->shape[1] != sizes[l])
            st = lps_fail(LPS_ESHAPE, "hidden_acts: output %d %s should be (%lldx%lld)", l + 1,
                          SH(acts[l]), (long long)x->shape[0], (long long)sizes[l]);
    free(sizes);
    if (st) return st;
    if (net_is_cnn(m)) return cnn_hidden(acts, m, x);
    for (int l = 0; l + 1 < m->nlayers; l++)
        if ((st = linear(acts[l], l ? acts[l - 1] : x, m, l, 1))) return st;
    return LPS_OK;
}

static lps_status cnn_apply(lps_tensor *out, const lps_net_view *m, const lps_tensor *x)
{
    int nh = m->nlayers - 1;
    int64_t *sizes = malloc((size_t)nh * sizeof *sizes);
    lps_tensor **acts = calloc((size_t)nh, sizeof *acts);
    lps_status st = sizes && acts ? LPS_OK : lps_fail(LPS_ENOMEM, "forward: out of memory");
    if (!st) st = lps_net_hidden_sizes(sizes, m, x->shape[1]);
    for (int l = 0; l < nh && !st; l++)
        if (!(acts[l] = lps_tensor_new2(x->shape[0], sizes[l]))) st = LPS_ENOMEM;
    if (!st) st = lps_net_hidden_acts(acts, m, x);
    if (!st) st = linear(out, acts[nh - 1], m, nh, 0);
    for (int l = 0; acts && l < nh; l++) lps_tensor_free(acts[l]);
    free(acts);
    free(sizes);
    return st;
}

lps_status lps_net_apply(lps_tensor *out, const lps_net_view *m, const lps_tensor *x)
{
    lps_status st = check_input("forward", m, x);
    if (st) return st;
    int L = m->nlayers;
    if (out->ndim != 2 || out->shape[0] != x->shape[0] || out->shape[1] != W(m, L - 1)->shape[0])
        return lps_fail(LPS_ESHAPE, "forward: output %s should be (%lldx%lld)", SH(out),
                        (long long)x->shape[0], (long long)W(m, L - 1)->shape[0]);
    if (net_is_cnn(m)) return cnn_apply(out, m, x);
    lps_tensor *acts[2] = {NULL, NULL}; /* ping-pong between two buffers */
    const lps_tensor *in = x;
    for (int l = 0; l + 1 < L && st == LPS_OK; l++) {
        lps_tensor *a = lps_tensor_new2(x->shape[0], W(m, l)->shape[0]);
        if (!a) {
            st = LPS_ENOMEM;
            break;
        }
        lps_tensor_free(acts[l % 2]);
        acts[l % 2] = a;
        st = linear(a, in, m, l, 1);
        in = a;
    }
    if (st == LPS_OK) st = linear(out, in, m, L - 1, 0);
    lps_tensor_free(acts[0]);
    lps_tensor_free(acts[1]);
    return st;
}

/* ------------------------------------------------------- permutations */

/* perm[off + i] for hidden layer l, identity for the input and the output. */
static int64_t unit(const int64_t *perm, const int64_t *off, int L, int layer, int64_t i)
{
    return (perm && layer >= 0 && layer < L - 1) ? perm[off[layer] + i] : i;
}

lps_status lps_net_perm_offsets(const char *op, const lps_net_view *m, const int64_t *perm,
                                int64_t *off)
{
    int64_t o = 0, maxh = 1;
    for (int l = 0; l + 1 < m->nlayers; l++) {
        off[l] = o;
        int64_t h = W(m, l)->shape[0];
        if (h > maxh) maxh = h;
        o += h;
    }
    if (!perm) return LPS_OK;
    char *seen = calloc((size_t)maxh, 1);
    if (!seen) return lps_fail(LPS_ENOMEM, "%s: out of memory", op);
    lps_status st = LPS_OK;
    for (int l = 0; l + 1 < m->nlayers && !st; l++) {
        int64_t h = W(m, l)->shape[0];
        memset(seen, 0, (size_t)maxh);
        for (int64_t i = 0; i < h; i++) {
            int64_t v = perm[off[l] + i];
            if (v < 0 || v >= h || seen[v]) {
                st = lps_fail(LPS_EINVAL, "%s: hidden layer %d: entry %lld (%lld) is not a permutation of 1..%lld",
                              op, l + 1, (long long)i + 1, (long long)v + 1, (long long)h);
                break;
            }
            seen[v] = 1;
        }
    }
    free(seen);
    return st;
}

void lps_net_permuted_layer(float *w, float *b, const lps_net_view *m, int l, const int64_t *perm,
                            const int64_t *off)
{
    const lps_tensor *W0 = W(m, l);
    int64_t rows = W0->shape[0], cols = net_cols(m, l), blk = l ? net_blk(m, l) : 1;
    for (int64_t i = 0; i < rows; i++) {
        int64_t r = unit(perm, off, m->nlayers, l, i);
        const float *src = W0->data + r * cols;
        float *dst = w + i * cols;
        const int64_t *pc = l && perm ? perm + off[l - 1] : NULL;
        if (!pc)
            memcpy(dst, src, (size_t)cols * sizeof(float));
        else if (blk == 1)
            for (int64_t k = 0; k < cols; k++) dst[k] = src[pc[k]];
        else /* a channel's kernel slice or its block of flattened map columns */
            for (int64_t k = 0; k < cols / blk; k++)
                memcpy(dst + k * blk, src + pc[k] * blk, (size_t)blk * sizeof(float));
        b[i] = B(m, l)->data[r];
    }
}

lps_status lps_net_permute(lps_tensor **out, const lps_net_view *m, const int64_t *perm)
{
    lps_status st = lps_net_check("permute", m);
    if (st) return st;
    int64_t *off = malloc((size_t)m->nlayers * sizeof *off);
    if (!off) return lps_fail(LPS_ENOMEM, "permute: out of memory");
    if ((st = lps_net_perm_offsets("permute", m, perm, off))) goto done;
    for (int i = 0; i < 2 * m->nlayers; i++) out[i] = NULL;
    for (int l = 0; l < m->nlayers; l++) {
        out[2 * l] = lps_tensor_clone(W(m, l));
        out[2 * l + 1] = lps_tensor_clone(B(m, l));
        if (!out[2 * l] || !out[2 * l + 1]) {
            for (int i = 0; i <= 2 * l + 1; i++) {
                lps_tensor_free(out[i]);
                out[i] = NULL;
            }
            st = LPS_ENOMEM;
            goto done;
        }
        lps_net_permuted_layer(out[2 * l]->data, out[2 * l + 1]->data, m, l, perm, off);
    }
done:
    free(off);
    return st;
}

typedef struct { double key; int64_t idx; } keyed;

static int by_key_desc(const void *pa, const void *pb)
{
    const keyed *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

lps_status lps_net_sort_perm(int64_t *perm, const lps_net_view *m)
{
    lps_status st = lps_net_check("sorted", m);
    if (st) return st;
    int64_t off = 0;
    for (int l = 0; l + 1 < m->nlayers; l++) {
        const lps_tensor *w = W(m, l);
        int64_t h = w->shape[0], cols = net_cols(m, l);
        keyed *k = malloc((size_t)h * sizeof *k);
        if (!k) return lps_fail(LPS_ENOMEM, "sorted: out of memory");
        /* A row's norm does not depend on the order of its columns (or of
         * its input channels), so the previous layer's reordering need not
         * be applied first. */
        for (int64_t i = 0; i < h; i++) {
            double s = (double)B(m, l)->data[i] * B(m, l)->data[i];
            for (int64_t c = 0; c < cols; c++) s += (double)w->data[i * cols + c] * w->data[i * cols + c];
            k[i].key = s;
            k[i].idx = i;
        }
        qsort(k, (size_t)h, sizeof *k, by_key_desc);
        for (int64_t i = 0; i < h; i++) perm[off + i] = k[i].idx;
        free(k);
        off += h;
    }
    return LPS_OK;
}
