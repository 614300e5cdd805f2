/* baselines.c - the feature baselines raw / sorted / stats / gram of MLPs
 * and CNNs, standardization and cosine matrices. */
#include "eval/eval_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ features */

static int cmp_float(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* Rearrange s[lo, hi) so that each rank in ranks (increasing, within
 * [lo, hi)) holds the value a full sort puts there: multiple quickselect
 * with branch-free partitions (< p, == p, > p), a full sort past a depth
 * limit. The quantiles need a few order statistics, not a sorted copy of a
 * large W1; the values (finite floats) are exactly those of a sort. */
static void select_ranks(float *s, int64_t lo, int64_t hi, const int64_t *ranks, int nr, int depth)
{
    while (nr > 0 && hi - lo > 1) {
        if (depth-- <= 0 || hi - lo < 16) {
            qsort(s + lo, (size_t)(hi - lo), sizeof *s, cmp_float);
            return;
        }
        float a = s[lo], b = s[lo + (hi - lo) / 2], c = s[hi - 1];
        float p = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        int64_t lt = lo, gt;
        for (int64_t i = lo; i < hi; i++) {
            float v = s[i];
            s[i] = s[lt];
            s[lt] = v;
            lt += v < p;
        }
        gt = lt;
        for (int64_t i = lt; i < hi; i++) {
            float v = s[i];
            s[i] = s[gt];
            s[gt] = v;
            gt += !(v > p);
        }
        int nl = 0, nm;
        while (nl < nr && ranks[nl] < lt) nl++;
        for (nm = nl; nm < nr && ranks[nm] < gt; nm++) {}
        select_ranks(s, lo, lt, ranks, nl, depth);
        ranks += nm;
        nr -= nm;
        lo = gt;
    }
}

/* Linear interpolation between order statistics (NumPy's default); lo and
 * lo + 1 of qpos must be in place. */
static void qpos(double q, int64_t n, int64_t *lo, double *f)
{
    double pos = q * (double)(n - 1);
    *lo = (int64_t)floor(pos);
    *f = pos - (double)*lo;
}

static double quantile(const float *s, int64_t n, double q)
{
    int64_t lo;
    double f;
    qpos(q, n, &lo, &f);
    if (lo >= n - 1) return s[n - 1];
    return (double)s[lo] + f * ((double)s[lo + 1] - (double)s[lo]);
}

static int cmp_i64(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return (a > b) - (a < b);
}

#define NSTATS 7
static lps_status tensor_stats(float *out, const lps_tensor *t)
{
    int64_t n = t->numel;
    const float *x = t->data;
    float *s = malloc((size_t)n * sizeof *s);
    if (!s) return lps_fail(LPS_ENOMEM, "stats: out of memory");
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; i++) mean += (double)x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    var /= (double)n;
    memcpy(s, x, (size_t)n * sizeof *s);
    static const double qs[5] = {0.0, 0.25, 0.5, 0.75, 1.0};
    int64_t ranks[10];
    int nr = 0;
    for (int j = 0; j < 5; j++) {
        int64_t lo;
        double f;
        qpos(qs[j], n, &lo, &f);
        ranks[nr++] = lo < n - 1 ? lo : n - 1;
        if (lo + 1 < n) ranks[nr++] = lo + 1;
    }
    qsort(ranks, (size_t)nr, sizeof *ranks, cmp_i64);
    int nu = 0;
    for (int j = 0; j < nr; j++)
        if (!nu || ranks[j] != ranks[nu - 1]) ranks[nu++] = ranks[j];
    int depth = 8;
    for (int64_t m = n; m > 1; m >>= 1) depth += 2;
    select_ranks(s, 0, n, ranks, nu, depth);
    out[0] = (float)mean;
    out[1] = (float)var;
    for (int j = 0; j < 5; j++) out[2 + j] = (float)quantile(s, n, qs[j]);
    free(s);
    return LPS_OK;
}

/* Pooled side and pooled input size for the gram features. */
static lps_status gram_dims(const lps_net_view *m, const lps_feat_opts *o, int64_t *side, int64_t *dp)
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

/* out = upper triangle (with the diagonal) of wp^T wp (dp x dp), off-diagonal
 * entries times sqrt 2, so that dot products are Frobenius products. */
static lps_status gram_upper(float *out, const lps_tensor *wp, int64_t dp)
{
    lps_tensor *g = lps_tensor_new2(dp, dp);
    if (!g) return LPS_ENOMEM;
    lps_status st = lps_matmul(g, wp, 1, wp, 0, 1.0f, 0.0f);
    if (st == LPS_OK) {
        /* Upper triangle; off-diagonal entries count twice in <Ga, Gb>_F. */
        const float r2 = 1.41421356237309515f;
        int64_t k = 0;
        for (int64_t i = 0; i < dp; i++)
            for (int64_t j = i; j < dp; j++) out[k++] = g->data[i * dp + j] * (i == j ? 1.0f : r2);
    }
    lps_tensor_free(g);
    return st;
}

static lps_status gram_features(float *out, const lps_net_view *m, const lps_feat_opts *o)
{
    int64_t side, dp;
    lps_status st = gram_dims(m, o, &side, &dp);
    if (st) return st;
    const lps_tensor *w = W(m, 0);
    int64_t h = w->shape[0], d = w->shape[1];
    int pool = side ? o->gram_pool : 1;
    lps_tensor *wp = lps_tensor_new2(h, dp);
    if (!wp) return LPS_ENOMEM;
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
    st = gram_upper(out, wp, dp);
    lps_tensor_free(wp);
    return st;
}

/* CNN kernels are compared on a common 5x5 grid of taps. */
#define GRAM_TAPS 5

static lps_status cnn_gram_dims(const lps_net_view *m, int64_t *dp)
{
    const lps_tensor *w = W(m, 0);
    int64_t k = w->shape[2];
    if (k > GRAM_TAPS || k % 2 == 0)
        return lps_fail(LPS_EINVAL, "gram: the first conv2d's %lldx%lld kernels (W1 %s) do not centre in %dx%d; gram takes odd kernel sizes up to %d",
                        (long long)k, (long long)k, SH(w), GRAM_TAPS, GRAM_TAPS, GRAM_TAPS);
    *dp = w->shape[1] * GRAM_TAPS * GRAM_TAPS;
    return LPS_OK;
}

/* Each output channel's kernel centred in zeros on the 5x5 grid and scaled
 * to unit norm; the Gram over the channels forgets their order. */
static lps_status cnn_gram_features(float *out, const lps_net_view *m)
{
    int64_t dp;
    lps_status st = cnn_gram_dims(m, &dp);
    if (st) return st;
    const lps_tensor *w = W(m, 0);
    int64_t h = w->shape[0], cin = w->shape[1], k = w->shape[2], kk = cin * k * k;
    int64_t at = (GRAM_TAPS - k) / 2, t2 = GRAM_TAPS * GRAM_TAPS;
    lps_tensor *wp = lps_tensor_new2(h, dp);
    if (!wp) return LPS_ENOMEM;
    for (int64_t i = 0; i < h; i++) {
        const float *r = w->data + i * kk;
        double nrm = 0.0;
        for (int64_t c = 0; c < kk; c++) nrm += (double)r[c] * r[c];
        double scale = nrm > 0.0 ? 1.0 / sqrt(nrm) : 0.0;
        float *dst = wp->data + i * dp;
        for (int64_t c = 0; c < cin; c++)
            for (int64_t a = 0; a < k; a++)
                for (int64_t b = 0; b < k; b++)
                    dst[c * t2 + (a + at) * GRAM_TAPS + b + at] = (float)(r[(c * k + a) * k + b] * scale);
    }
    st = gram_upper(out, wp, dp);
    lps_tensor_free(wp);
    return st;
}

/* The stats slots (layer indices): the first layer, the last hidden layer,
 * the head. One hidden layer fills the first two with the same layer. */
#define NSLOTS 3
static void stats_slots(int *slot, const lps_net_view *m)
{
    slot[0] = 0;
    slot[1] = m->nlayers - 2;
    slot[2] = m->nlayers - 1;
}

static const char *feat_name(lps_feat_method method)
{
    static const char *names[] = {"raw", "sorted", "stats", "gram"};
    return (unsigned)method < 4 ? names[method] : "features";
}

lps_status lps_features_size(int64_t *n, lps_feat_method method, const lps_net_view *m,
                             const lps_feat_opts *o)
{
    lps_status st = lps_net_check(feat_name(method), m);
    if (st) return st;
    switch (method) {
    case LPS_FEAT_RAW:
    case LPS_FEAT_SORTED: *n = lps_net_numel(m); return LPS_OK;
    case LPS_FEAT_STATS: *n = (int64_t)NSTATS * 2 * NSLOTS; return LPS_OK;
    case LPS_FEAT_GRAM: {
        int64_t side, dp;
        if ((st = net_is_cnn(m) ? cnn_gram_dims(m, &dp) : gram_dims(m, o, &side, &dp))) return st;
        *n = dp * (dp + 1) / 2;
        return LPS_OK;
    }
    }
    return lps_fail(LPS_EINVAL, "features: unknown method %d", (int)method);
}

lps_status lps_features(float *out, int64_t n, lps_feat_method method, const lps_net_view *m,
                        const lps_feat_opts *o)
{
    int64_t need;
    lps_status st = lps_features_size(&need, method, m, o);
    if (st) return st;
    if (n != need)
        return lps_fail(LPS_ESHAPE, "%s: output has %lld entries, the model gives %lld",
                        feat_name(method), (long long)n, (long long)need);
    if (method == LPS_FEAT_STATS) {
        int slot[NSLOTS];
        stats_slots(slot, m);
        for (int i = 0; i < 2 * NSLOTS; i++)
            if ((st = tensor_stats(out + NSTATS * i, m->p[2 * slot[i / 2] + i % 2]))) return st;
        return LPS_OK;
    }
    if (method == LPS_FEAT_GRAM) return net_is_cnn(m) ? cnn_gram_features(out, m) : gram_features(out, m, o);
    int64_t *perm = NULL, *off = malloc((size_t)m->nlayers * sizeof *off);
    if (!off) return lps_fail(LPS_ENOMEM, "%s: out of memory", feat_name(method));
    if (method == LPS_FEAT_SORTED) {
        perm = malloc((size_t)(lps_net_units(m)) * sizeof *perm);
        if (!perm) st = lps_fail(LPS_ENOMEM, "sorted: out of memory");
        else st = lps_net_sort_perm(perm, m);
    }
    if (st == LPS_OK) st = lps_net_perm_offsets(feat_name(method), m, perm, off);
    for (int l = 0; l < m->nlayers && st == LPS_OK; l++) {
        int64_t nw = W(m, l)->numel;
        lps_net_permuted_layer(out, out + nw, m, l, perm, off);
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
