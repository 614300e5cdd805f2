/* net.c - views of MLPs and CNNs for the baselines: checks, forward passes,
 * hidden activations and permutations of hidden units (conv channels). */
#include "eval/eval_internal.h"

#include <math.h>
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
        if (m->geom && (m->geom[l].conv || m->geom[l].pool_k))
            return lps_fail(LPS_EINVAL, "%s: layer %d is a conv2d or pools after a linear layer", op, l + 1);
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

/* Conv layers [0, nconv), then linear layers; the head is linear. */
static lps_status cnn_check(const char *op, const lps_net_view *m)
{
    int L = m->nlayers, nconv = 0;
    if (L < 2)
        return lps_fail(LPS_EINVAL, "%s: a CNN needs at least a conv2d layer and a linear head, got %d layers",
                        op, L);
    for (int l = 0; l < L; l++)
        if (m->geom[l].conv && l != nconv++)
            return lps_fail(LPS_EINVAL, "%s: layer %d is a conv2d after a linear layer", op, l + 1);
    if (nconv == L) return lps_fail(LPS_EINVAL, "%s: the last layer (the head) must be linear", op);
    for (int l = 0; l < L; l++) {
        const lps_tensor *w = W(m, l), *b = B(m, l), *prev = l ? W(m, l - 1) : NULL;
        const lps_net_layer *g = &m->geom[l];
        if (!w || !b) return lps_fail(LPS_EINVAL, "%s: layer %d is missing a tensor", op, l + 1);
        if (g->conv) {
            if (w->ndim != 4 || w->shape[0] < 1 || w->shape[1] < 1 || w->shape[2] < 1 ||
                w->shape[2] != w->shape[3])
                return lps_fail(LPS_ESHAPE, "%s: W%d of a conv2d must be a 4-D (out x in x k x k) tensor, got %s",
                                op, l + 1, SH(w));
            if (g->stride < 1 || g->padding < 0 || g->pool_k < 0 || (g->pool_k && g->pool_s < 1))
                return lps_fail(LPS_EINVAL, "%s: conv2d layer %d has stride %d, padding %d, pooling %d (stride %d)",
                                op, l + 1, g->stride, g->padding, g->pool_k, g->pool_s);
            if (prev && w->shape[1] != prev->shape[0])
                return lps_fail(LPS_ESHAPE, "%s: W%d %s does not take the %lld channels of W%d %s", op,
                                l + 1, SH(w), (long long)prev->shape[0], l, SH(prev));
        } else {
            if (w->ndim != 2 || w->shape[0] < 1 || w->shape[1] < 1)
                return lps_fail(LPS_ESHAPE, "%s: W%d must be a non-empty 2-D (out x in) tensor, got %s",
                                op, l + 1, SH(w));
            if (g->pool_k) return lps_fail(LPS_EINVAL, "%s: linear layer %d cannot pool", op, l + 1);
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
    return net_is_cnn(m) ? cnn_check(op, m) : mlp_check(op, m);
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

int lps_net_same_arch(const lps_net_view *a, const lps_net_view *b)
{
    if (a->nlayers != b->nlayers || net_is_cnn(a) != net_is_cnn(b)) return 0;
    for (int l = 0; l < a->nlayers; l++) {
        if (!lps_same_shape(W(a, l), W(b, l)) || !lps_same_shape(B(a, l), B(b, l))) return 0;
        if (net_is_cnn(a)) {
            const lps_net_layer *x = &a->geom[l], *y = &b->geom[l];
            if (x->conv != y->conv || x->stride != y->stride || x->padding != y->padding ||
                x->pool_k != y->pool_k || (x->pool_k && x->pool_s != y->pool_s))
                return 0;
        }
    }
    return 1;
}

/* Side of conv layer l's output maps (after pooling) for side s; 0 if too small. */
static int64_t conv_side(const lps_net_view *m, int l, int64_t s)
{
    const lps_net_layer *g = &m->geom[l];
    int64_t k = W(m, l)->shape[2], padded = s + 2 * (int64_t)g->padding;
    if (padded < k) return 0;
    int64_t o = (padded - k) / g->stride + 1;
    if (g->pool_k) o = o < g->pool_k ? 0 : (o - g->pool_k) / g->pool_s + 1;
    return o;
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
    int64_t cin = W(m, 0)->shape[1], s = (int64_t)llround(sqrt((double)d / (double)cin));
    if (d % cin || s * s * cin != d)
        return lps_fail(LPS_ESHAPE, "hidden_acts: inputs of %lld values are not %lld square channels (W1 %s)",
                        (long long)d, (long long)cin, SH(W(m, 0)));
    int64_t s0 = s;
    for (int l = 0; l + 1 < m->nlayers; l++) {
        const lps_tensor *w = W(m, l);
        if (m->geom[l].conv) {
            int64_t o = conv_side(m, l, s);
            if (o < 1)
                return lps_fail(LPS_ESHAPE, "hidden_acts: conv2d layer %d (W%d %s) gets %lldx%lld maps, too small for its kernel or pooling",
                                l + 1, l + 1, SH(w), (long long)s, (long long)s);
            s = o;
            sizes[l] = w->shape[0] * s * s;
        } else {
            sizes[l] = w->shape[0];
        }
        const lps_tensor *next = W(m, l + 1);
        if (m->geom[l].conv && !m->geom[l + 1].conv && next->shape[1] != sizes[l])
            return lps_fail(LPS_ESHAPE, "hidden_acts: W%d %s does not take the %lldx%lldx%lld maps of conv2d layer %d on %lldx%lld inputs",
                            l + 2, SH(next), (long long)w->shape[0], (long long)s, (long long)s,
                            l + 1, (long long)s0, (long long)s0);
    }
    return LPS_OK;
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

/* A layer of lps.nn with conv layer l's weights. */
static lps_layer *conv_layer(const lps_net_view *m, int l)
{
    const lps_tensor *w = W(m, l);
    lps_rng r; /* the constructor's random weights are overwritten */
    lps_rng_seed(&r, 0);
    lps_layer *c = lps_conv2d_new(w->shape[1], w->shape[0], w->shape[2], m->geom[l].stride,
                                  m->geom[l].padding, &r);
    if (c && (lps_copy(c->param[0], w) || lps_copy(c->param[1], B(m, l)))) {
        lps_layer_free(c);
        c = NULL;
    }
    return c;
}

/* y = pool(relu(conv_l(x))) as a new 4-D tensor, with lps.nn's layers.
 * Max-pooling and ReLU commute (both monotone), so the ReLU runs on the
 * pooled maps, a quarter of the values. */
static lps_status conv_stage(lps_tensor **y, const lps_net_view *m, int l, const lps_tensor *x)
{
    lps_layer *c = conv_layer(m, l), *p = NULL, *r = lps_relu_new();
    lps_tensor *a = NULL, *z = NULL;
    int64_t shape[4], pshape[4];
    int nd;
    lps_status st = c && r ? lps_layer_out_shape(c, 4, x->shape, &nd, shape) : LPS_ENOMEM;
    if (!st && !(a = lps_tensor_empty(4, shape))) st = LPS_ENOMEM;
    if (!st) st = lps_layer_forward(c, x, a);
    if (!st && m->geom[l].pool_k) {
        p = lps_maxpool2d_new(m->geom[l].pool_k, m->geom[l].pool_s);
        st = p ? lps_layer_out_shape(p, 4, shape, &nd, pshape) : LPS_ENOMEM;
        if (!st && !(z = lps_tensor_empty(4, pshape))) st = LPS_ENOMEM;
        if (!st) st = lps_layer_forward(p, a, z);
        lps_tensor_free(a);
        a = z;
    }
    if (!st) st = lps_layer_forward(r, a, a); /* element-wise: in place */
    lps_layer_free(c);
    lps_layer_free(p);
    lps_layer_free(r);
    if (st) {
        lps_tensor_free(a);
        return st;
    }
    *y = a;
    return LPS_OK;
}

/* CNN hidden activations into acts (sizes already checked). */
static lps_status cnn_hidden(lps_tensor *const *acts, const lps_net_view *m, const lps_tensor *x)
{
    int64_t n = x->shape[0], cin = W(m, 0)->shape[1];
    int64_t s = (int64_t)llround(sqrt((double)(x->shape[1] / cin)));
    lps_tensor img = {x->storage, x->data, 4, {n, cin, s, s}, x->numel};
    lps_tensor *cur = NULL;
    lps_status st = LPS_OK;
    for (int l = 0; l + 1 < m->nlayers && !st; l++) {
        if (m->geom[l].conv) {
            lps_tensor *y = NULL;
            st = conv_stage(&y, m, l, cur ? cur : &img);
            lps_tensor_free(cur);
            cur = y;
            if (!st) memcpy(acts[l]->data, y->data, (size_t)y->numel * sizeof(float));
        } else {
            st = linear(acts[l], acts[l - 1], m, l, 1);
        }
    }
    lps_tensor_free(cur);
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
