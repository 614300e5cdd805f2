/* baselines.c - MLP views (check, forward, unit permutations) and the
 * feature baselines raw / sorted / stats / gram, with cosine matrices. */
#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define W(m, l) ((m)->p[2 * (l)])
#define B(m, l) ((m)->p[2 * (l) + 1])

lps_status lps_mlp_check(const char *op, const lps_mlp_view *m)
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
        for (int k = 0; k < 2; k++) {
            const lps_tensor *t = k ? b : w;
            for (int64_t i = 0; i < t->numel; i++)
                if (!isfinite(t->data[i]))
                    return lps_fail(LPS_ENUMERIC, "%s: %s%d has a non-finite value at flat index %lld",
                                    op, k ? "b" : "W", l + 1, (long long)i + 1);
        }
    }
    return LPS_OK;
}

int64_t lps_mlp_numel(const lps_mlp_view *m)
{
    int64_t n = 0;
    for (int i = 0; i < 2 * m->nlayers; i++) n += m->p[i]->numel;
    return n;
}

int64_t lps_mlp_hidden(const lps_mlp_view *m)
{
    int64_t n = 0;
    for (int l = 0; l + 1 < m->nlayers; l++) n += W(m, l)->shape[0];
    return n;
}

/* out = x W^T + b, then ReLU if relu. */
static lps_status linear(lps_tensor *out, const lps_tensor *x, const lps_mlp_view *m, int l, int relu)
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

static lps_status check_input(const char *op, const lps_mlp_view *m, const lps_tensor *x)
{
    lps_status st = lps_mlp_check(op, m);
    if (st) return st;
    if (x->ndim != 2 || x->shape[1] != W(m, 0)->shape[1])
        return lps_fail(LPS_ESHAPE, "%s: input %s should be N x %lld for W1 %s", op, SH(x),
                        (long long)W(m, 0)->shape[1], SH(W(m, 0)));
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(x->data[i]))
            return lps_fail(LPS_ENUMERIC, "%s: input has a non-finite value at flat index %lld", op,
                            (long long)i + 1);
    return LPS_OK;
}

lps_status lps_mlp_hidden_acts(lps_tensor *const *acts, const lps_mlp_view *m, const lps_tensor *x)
{
    lps_status st = check_input("hidden_acts", m, x);
    if (st) return st;
    for (int l = 0; l + 1 < m->nlayers; l++)
        if (acts[l]->ndim != 2 || acts[l]->shape[0] != x->shape[0] ||
            acts[l]->shape[1] != W(m, l)->shape[0])
            return lps_fail(LPS_ESHAPE, "hidden_acts: output %d %s should be (%lldx%lld)", l + 1,
                            SH(acts[l]), (long long)x->shape[0], (long long)W(m, l)->shape[0]);
    for (int l = 0; l + 1 < m->nlayers; l++)
        if ((st = linear(acts[l], l ? acts[l - 1] : x, m, l, 1))) return st;
    return LPS_OK;
}

lps_status lps_mlp_apply(lps_tensor *out, const lps_mlp_view *m, const lps_tensor *x)
{
    lps_status st = check_input("forward", m, x);
    if (st) return st;
    int L = m->nlayers;
    if (out->ndim != 2 || out->shape[0] != x->shape[0] || out->shape[1] != W(m, L - 1)->shape[0])
        return lps_fail(LPS_ESHAPE, "forward: output %s should be (%lldx%lld)", SH(out),
                        (long long)x->shape[0], (long long)W(m, L - 1)->shape[0]);
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

/* perm[off + i] for hidden layer l, identity for the input and the output. */
static int64_t unit(const int64_t *perm, const int64_t *off, int L, int layer, int64_t i)
{
    return (perm && layer >= 0 && layer < L - 1) ? perm[off[layer] + i] : i;
}

static lps_status check_perm(const char *op, const lps_mlp_view *m, const int64_t *perm, int64_t *off)
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

/* Write layer l of m, permuted, into w (rows x cols) and b. */
static void permuted_layer(float *w, float *b, const lps_mlp_view *m, int l, const int64_t *perm,
                           const int64_t *off)
{
    const lps_tensor *W0 = W(m, l);
    int64_t rows = W0->shape[0], cols = W0->shape[1];
    for (int64_t i = 0; i < rows; i++) {
        int64_t r = unit(perm, off, m->nlayers, l, i);
        const float *src = W0->data + r * cols;
        float *dst = w + i * cols;
        if (l == 0 || !perm)
            memcpy(dst, src, (size_t)cols * sizeof(float));
        else
            for (int64_t k = 0; k < cols; k++) dst[k] = src[perm[off[l - 1] + k]];
        b[i] = B(m, l)->data[r];
    }
}

lps_status lps_mlp_permute(lps_tensor **out, const lps_mlp_view *m, const int64_t *perm)
{
    lps_status st = lps_mlp_check("permute", m);
    if (st) return st;
    int64_t *off = malloc((size_t)m->nlayers * sizeof *off);
    if (!off) return lps_fail(LPS_ENOMEM, "permute: out of memory");
    if ((st = check_perm("permute", m, perm, off))) goto done;
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
        permuted_layer(out[2 * l]->data, out[2 * l + 1]->data, m, l, perm, off);
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

lps_status lps_mlp_sort_perm(int64_t *perm, const lps_mlp_view *m)
{
    lps_status st = lps_mlp_check("sorted", m);
    if (st) return st;
    int64_t off = 0;
    for (int l = 0; l + 1 < m->nlayers; l++) {
        const lps_tensor *w = W(m, l);
        int64_t h = w->shape[0], cols = w->shape[1];
        keyed *k = malloc((size_t)h * sizeof *k);
        if (!k) return lps_fail(LPS_ENOMEM, "sorted: out of memory");
        /* A row's norm does not depend on the order of its columns, so the
         * previous layer's reordering need not be applied first. */
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

/* ------------------------------------------------------------ features */

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

/* Linear interpolation between order statistics (NumPy's default). */
static double quantile(const double *s, int64_t n, double q)
{
    double pos = q * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos);
    if (lo >= n - 1) return s[n - 1];
    double f = pos - (double)lo;
    return s[lo] + f * (s[lo + 1] - s[lo]);
}

#define NSTATS 7
static lps_status tensor_stats(float *out, const lps_tensor *t)
{
    int64_t n = t->numel;
    double *s = malloc((size_t)n * sizeof *s);
    if (!s) return lps_fail(LPS_ENOMEM, "stats: out of memory");
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; i++) mean += (s[i] = t->data[i]);
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) var += (s[i] - mean) * (s[i] - mean);
    var /= (double)n;
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    static const double qs[5] = {0.0, 0.25, 0.5, 0.75, 1.0};
    out[0] = (float)mean;
    out[1] = (float)var;
    for (int j = 0; j < 5; j++) out[2 + j] = (float)quantile(s, n, qs[j]);
    free(s);
    return LPS_OK;
}

/* Pooled side and pooled input size for the gram features. */
static lps_status gram_dims(const lps_mlp_view *m, const lps_feat_opts *o, int64_t *side, int64_t *dp)
{
    int64_t d = W(m, 0)->shape[1];
    int pool = o && o->gram_pool > 1 ? o->gram_pool : 1;
    if (pool == 1) {
        *side = 0;
        *dp = d;
        return LPS_OK;
    }
    int64_t s = (int64_t)llround(sqrt((double)d));
    if (s * s != d || s % pool != 0)
        return lps_fail(LPS_EINVAL, "gram: pooling by %d needs a square input of side divisible by %d, got %lld inputs",
                        pool, pool, (long long)d);
    *side = s;
    *dp = (s / pool) * (s / pool);
    return LPS_OK;
}

static lps_status gram_features(float *out, const lps_mlp_view *m, const lps_feat_opts *o)
{
    int64_t side, dp;
    lps_status st = gram_dims(m, o, &side, &dp);
    if (st) return st;
    const lps_tensor *w = W(m, 0);
    int64_t h = w->shape[0], d = w->shape[1];
    int pool = side ? o->gram_pool : 1;
    lps_tensor *wp = lps_tensor_new2(h, dp), *g = lps_tensor_new2(dp, dp);
    if (!wp || !g) {
        lps_tensor_free(wp);
        lps_tensor_free(g);
        return LPS_ENOMEM;
    }
    /* Unit-norm rows remove each unit's scale; block-averaging the input
     * pixels of W1 block-averages its Gram matrix. */
    for (int64_t i = 0; i < h; i++) {
        const float *r = w->data + i * d;
        double nrm = 0.0;
        for (int64_t c = 0; c < d; c++) nrm += (double)r[c] * r[c];
        nrm = sqrt(nrm);
        double scale = nrm > 0.0 ? 1.0 / (nrm * pool * pool) : 0.0;
        float *dst = wp->data + i * dp;
        for (int64_t c = 0; c < d; c++) {
            int64_t pc = side ? (c / side / pool) * (side / pool) + (c % side) / pool : c;
            dst[pc] += (float)(r[c] * scale);
        }
    }
    st = lps_matmul(g, wp, 1, wp, 0, 1.0f, 0.0f);
    if (st == LPS_OK) {
        /* Upper triangle; off-diagonal entries count twice in <Ga, Gb>_F. */
        const float r2 = 1.41421356237309515f;
        int64_t k = 0;
        for (int64_t i = 0; i < dp; i++)
            for (int64_t j = i; j < dp; j++) out[k++] = g->data[i * dp + j] * (i == j ? 1.0f : r2);
    }
    lps_tensor_free(wp);
    lps_tensor_free(g);
    return st;
}

static const char *feat_name(lps_feat_method method)
{
    static const char *names[] = {"raw", "sorted", "stats", "gram"};
    return (unsigned)method < 4 ? names[method] : "features";
}

lps_status lps_features_size(int64_t *n, lps_feat_method method, const lps_mlp_view *m,
                             const lps_feat_opts *o)
{
    lps_status st = lps_mlp_check(feat_name(method), m);
    if (st) return st;
    switch (method) {
    case LPS_FEAT_RAW:
    case LPS_FEAT_SORTED: *n = lps_mlp_numel(m); return LPS_OK;
    case LPS_FEAT_STATS: *n = (int64_t)NSTATS * 2 * m->nlayers; return LPS_OK;
    case LPS_FEAT_GRAM: {
        int64_t side, dp;
        if ((st = gram_dims(m, o, &side, &dp))) return st;
        *n = dp * (dp + 1) / 2;
        return LPS_OK;
    }
    }
    return lps_fail(LPS_EINVAL, "features: unknown method %d", (int)method);
}

lps_status lps_features(float *out, int64_t n, lps_feat_method method, const lps_mlp_view *m,
                        const lps_feat_opts *o)
{
    int64_t need;
    lps_status st = lps_features_size(&need, method, m, o);
    if (st) return st;
    if (n != need)
        return lps_fail(LPS_ESHAPE, "%s: output has %lld entries, the model gives %lld",
                        feat_name(method), (long long)n, (long long)need);
    if (method == LPS_FEAT_STATS) {
        for (int i = 0; i < 2 * m->nlayers; i++)
            if ((st = tensor_stats(out + NSTATS * i, m->p[i]))) return st;
        return LPS_OK;
    }
    if (method == LPS_FEAT_GRAM) return gram_features(out, m, o);
    int64_t *perm = NULL, *off = malloc((size_t)m->nlayers * sizeof *off);
    if (!off) return lps_fail(LPS_ENOMEM, "%s: out of memory", feat_name(method));
    if (method == LPS_FEAT_SORTED) {
        perm = malloc((size_t)(lps_mlp_hidden(m)) * sizeof *perm);
        if (!perm) st = lps_fail(LPS_ENOMEM, "sorted: out of memory");
        else st = lps_mlp_sort_perm(perm, m);
    }
    if (st == LPS_OK) st = check_perm(feat_name(method), m, perm, off);
    for (int l = 0; l < m->nlayers && st == LPS_OK; l++) {
        int64_t nw = W(m, l)->numel;
        permuted_layer(out, out + nw, m, l, perm, off);
        out += nw + B(m, l)->numel;
    }
    free(perm);
    free(off);
    return st;
}

lps_status lps_standardize(lps_tensor *x, lps_tensor *mean, lps_tensor *sd, int fit)
{
    if (x->ndim != 2)
        return lps_fail(LPS_ESHAPE, "standardize: needs a 2-D (n x f) tensor, got %s", SH(x));
    int64_t n = x->shape[0], f = x->shape[1];
    if (mean->numel != f || sd->numel != f)
        return lps_fail(LPS_ESHAPE, "standardize: mean %s and sd %s should have %lld entries",
                        SH(mean), SH(sd), (long long)f);
    if (fit && n == 0) return lps_fail(LPS_EINVAL, "standardize: cannot fit on 0 rows");
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(x->data[i]))
            return lps_fail(LPS_ENUMERIC, "standardize: non-finite value at row %lld, column %lld",
                            (long long)(i / f + 1), (long long)(i % f + 1));
    if (fit) {
        for (int64_t j = 0; j < f; j++) {
            double s = 0.0, ss = 0.0;
            for (int64_t i = 0; i < n; i++) s += x->data[i * f + j];
            double mu = s / (double)n;
            for (int64_t i = 0; i < n; i++) {
                double dv = x->data[i * f + j] - mu;
                ss += dv * dv;
            }
            double sdv = sqrt(ss / (double)n);
            mean->data[j] = (float)mu;
            sd->data[j] = sdv < 1e-12 ? 1.0f : (float)sdv;
        }
    }
    for (int64_t j = 0; j < f; j++)
        if (!isfinite(mean->data[j]) || !isfinite(sd->data[j]) || !(sd->data[j] > 0.0f))
            return lps_fail(LPS_EINVAL, "standardize: column %lld has mean %g and sd %g (need finite, sd > 0)",
                            (long long)j + 1, mean->data[j], sd->data[j]);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < f; j++)
            x->data[i * f + j] = (x->data[i * f + j] - mean->data[j]) / sd->data[j];
    return LPS_OK;
}

static lps_tensor *unit_rows(const lps_tensor *a)
{
    lps_tensor *u = lps_tensor_clone(a);
    if (!u) return NULL;
    int64_t n = a->shape[0], f = a->shape[1];
    for (int64_t i = 0; i < n; i++) {
        float *r = u->data + i * f;
        double s = 0.0;
        for (int64_t j = 0; j < f; j++) s += (double)r[j] * r[j];
        float inv = s > 0.0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int64_t j = 0; j < f; j++) r[j] *= inv;
    }
    return u;
}

lps_status lps_cosine_matrix(lps_tensor *out, const lps_tensor *a, const lps_tensor *b)
{
    if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[1])
        return lps_fail(LPS_ESHAPE, "cosine: needs na x f and nb x f, got %s and %s", SH(a), SH(b));
    if (out->ndim != 2 || out->shape[0] != a->shape[0] || out->shape[1] != b->shape[0])
        return lps_fail(LPS_ESHAPE, "cosine: output %s should be (%lldx%lld)", SH(out),
                        (long long)a->shape[0], (long long)b->shape[0]);
    for (int k = 0; k < 2; k++) {
        const lps_tensor *t = k ? b : a;
        for (int64_t i = 0; i < t->numel; i++)
            if (!isfinite(t->data[i]))
                return lps_fail(LPS_ENUMERIC, "cosine: non-finite feature in row %lld of the %s set",
                                (long long)(i / t->shape[1] + 1), k ? "second" : "first");
    }
    lps_tensor *ua = unit_rows(a), *ub = ua ? unit_rows(b) : NULL;
    lps_status st = ub ? lps_matmul(out, ua, 0, ub, 1, 1.0f, 0.0f) : LPS_ENOMEM;
    if (st == LPS_OK)
        for (int64_t i = 0; i < out->numel; i++) /* rounding can step past +-1 */
            out->data[i] = out->data[i] > 1.0f ? 1.0f : out->data[i] < -1.0f ? -1.0f : out->data[i];
    lps_tensor_free(ua);
    lps_tensor_free(ub);
    return st;
}
