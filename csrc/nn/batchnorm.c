/* batchnorm.c - batch normalization over the channels of (batch x features
 * [x length]) (batchnorm1d) and (batch x channels x h x w) (batchnorm2d),
 * PyTorch's rules: in train mode each channel is normalized by its batch
 * mean and biased variance, and the running statistics move by momentum
 * (the variance's unbiased); in eval mode the running statistics normalize,
 * or with batch_stats the batch's, as in train mode but leaving the running
 * ones (AdaBN: a model meeting shifted inputs renormalizes on them).
 * Sums are in double, channel by channel in a fixed order, so the threads
 * (a range of channels each) never change a result. */
#include "nn/nn_internal.h"
#include "nn/simd.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define FEATURES(l) FI(&(l)->cfg, 0)
#define EPS(l) ((l)->cfg.v[1])
#define MOMENTUM(l) ((l)->cfg.v[2])
/* Normalized by the batch's statistics: train mode, or eval mode with
 * batch_stats (lps_layer_set_batch_stats), which leaves the running ones. */
#define BATCH(l) ((l)->training || (l)->batch_stats)

static lps_status bn1d_flow(const lps_arch_entry *e, lps_flow *f)
{
    int64_t c = FI(e, 0);
    if (f->rank == 0) return LPS_OK; /* (features) or (features x length): unknown */
    if (f->rank == 3)
        return lps_flow_fail(f, LPS_ESHAPE, "needs (features) or (features x length) per sample but "
                             "%s gives %s: batchnorm2d normalizes images", f->from, FSH(3, f->d));
    if (f->d[0] != LPS_ARCH_UNKNOWN && f->d[0] != c)
        return lps_flow_fail(f, LPS_ESHAPE, "\"features\" is %lld but %s gives %lld %s",
                             (long long)c, f->from, (long long)f->d[0],
                             f->rank == 1 ? "features" : "channels");
    if (f->d[0] == LPS_ARCH_UNKNOWN && c % f->mult != 0)
        return lps_flow_fail(f, LPS_ESHAPE, "\"features\" is %lld, not a multiple of the %lld channels "
                             "flattened before it", (long long)c, (long long)f->mult);
    f->d[0] = c;
    f->mult = 1;
    return LPS_OK;
}

static lps_status bn2d_flow(const lps_arch_entry *e, lps_flow *f)
{
    int64_t c = FI(e, 0);
    if (f->rank == 0) {
        f->rank = 3;
        f->d[1] = f->d[2] = LPS_ARCH_UNKNOWN;
    } else if (f->rank != 3) {
        return lps_flow_fail(f, LPS_ESHAPE, "needs (channels x height x width) but %s gives %s%s: "
                             "batchnorm1d normalizes features", f->from, FSH(f->rank, f->d),
                             f->rank == 1 ? " features" : "");
    } else if (f->d[0] != LPS_ARCH_UNKNOWN && f->d[0] != c) {
        return lps_flow_fail(f, LPS_ESHAPE, "\"features\" is %lld but %s gives %lld channels %s",
                             (long long)c, f->from, (long long)f->d[0], FSH(3, f->d));
    }
    f->d[0] = c;
    return LPS_OK;
}

/* ------------------------------------------------------------ kernels */

/* The batch statistics of the last train-mode forward, for backward; and
 * the last forward's per-channel scale and shift (its y = x a + b), from
 * which backward_relu recomputes the gate of a ReLU after it. */
typedef struct {
    lps_scratch mean, invstd, ra, rb;
    int64_t b, s; /* the batch and the values per sample and channel they came from */
} bnpriv;

typedef struct {
    lps_layer *l;
    const float *x, *gy;
    float *y, *gx;
    int64_t b, c, s; /* batch, channels, values per sample and channel */
    int backward, relu; /* relu: forward_relu's max(0, .) after, or backward_relu's gate */
    const float *ra, *rb; /* the last forward's a and b per channel (bnpriv) */
    const float *r;       /* forward_add's addend, or NULL */
} bnjob;

/* Sums over channel ch in a fixed order: samples in turn, each plane with
 * interleaved partial sums in double (csum: four, a[k] over i = 4q + k;
 * csq and cdot: two, over even and odd i), a plane's tail on a[0], then
 * (a[0] + a[1]) + (a[2] + a[3]) or a[0] + a[1] added to the total. The
 * kernels run four or eight planes at once (their sums are independent
 * chains, each plane's done as one alone would be), vectors holding the
 * partial sums; the backward pass's csum of gy and cdot share one pass. */

/* The four planes starting at sample n (past the batch: the last again,
 * its sum unused) of channel ch of x. */
static void planes(const bnjob *j, const float *x, int64_t n, int64_t ch, const float *p[4])
{
    for (int k = 0; k < 4; k++) p[k] = x + ((n + k < j->b ? n + k : j->b - 1) * j->c + ch) * j->s;
}

KERNEL static void sum4(const float *const p[4], int64_t s, double out[4])
{
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    v4d a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 4 <= s; i += 4) {
        a0 += LD4D(p0 + i);
        a1 += LD4D(p1 + i);
        a2 += LD4D(p2 + i);
        a3 += LD4D(p3 + i);
    }
    v4d a[4] = {a0, a1, a2, a3};
    for (int k = 0; k < 4; k++) {
        double t0 = a[k][0];
        for (int64_t r = i; r < s; r++) t0 += p[k][r];
        out[k] = (t0 + a[k][1]) + (a[k][2] + a[k][3]);
    }
}

/* The even and odd chains of two planes in one vector, lanes (even, odd)
 * of the first then of the second: given the terms d and e of four values
 * of each, PAIR_STEP adds (d[0], d[1], e[0], e[1]), then (d[2], d[3], e[2],
 * e[3]), each lane the adds of its chain alone. */
#define PAIR_STEP(a, d, e)                                                                         \
    ((a) = ((a) + __builtin_shufflevector((d), (e), 0, 1, 4, 5)) +                                 \
           __builtin_shufflevector((d), (e), 2, 3, 6, 7))

/* Of (x - m)^2 over eight planes (eight chains at once hide the adds'
 * latency; each plane's sum is the one it would have alone). Four values a
 * step: the even and odd chains take (i, i + 1) and then (i + 2, i + 3). */
KERNEL static void sq8(const float *const p[8], int64_t s, double m, double out[8])
{
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    const float *p4 = p[4], *p5 = p[5], *p6 = p[6], *p7 = p[7];
    v4d a01 = {0, 0, 0, 0}, a23 = a01, a45 = a01, a67 = a01;
    v4d mv = {m, m, m, m};
    int64_t i = 0;
#define SQ(q) ((LD4D(q + i) - mv) * (LD4D(q + i) - mv))
    for (; i + 4 <= s; i += 4) {
        PAIR_STEP(a01, SQ(p0), SQ(p1));
        PAIR_STEP(a23, SQ(p2), SQ(p3));
        PAIR_STEP(a45, SQ(p4), SQ(p5));
        PAIR_STEP(a67, SQ(p6), SQ(p7));
    }
#undef SQ
    v4d a[4] = {a01, a23, a45, a67};
    for (int k = 0; k < 8; k++) {
        double e = a[k / 2][2 * (k % 2)], o = a[k / 2][2 * (k % 2) + 1];
        for (int64_t r = i; r < s; r++) { /* i is even: r's parity picks its chain */
            double d = (p[k][r] - m) * (p[k][r] - m);
            if ((r - i) % 2) o += d;
            else e += d;
        }
        out[k] = e + o;
    }
}

/* g at i, +0 where the ReLU after the layer let nothing through (x a + b,
 * the last forward's value before the ReLU's max, not above 0): relu.c's
 * backward values, the gate recomputed from x rather than read from the
 * ReLU's output (one stream less). Four floats (ra, rb: a and b in lanes),
 * one. */
#define GATE4(x, g, i)                                                                             \
    ((v4f)((v4i) * (const v4fu *)((g) + (i)) & (*(const v4fu *)((x) + (i)) * ra + rb > 0.0f)))
#define GATE1(x, g, r) ((x)[r] * ga + gb > 0.0f ? (g)[r] : 0.0f)

/* The backward pass's two sums over four planes in one pass over them:
 * sg[k] of g (csum's order: sum4) and out[k] of (x - m) g (centred4's);
 * each chain is the one its own pass would run, so the bits are the same.
 * With gate, g as GATE4 gives it (backward_relu): the values the ReLU's own
 * backward would have written, in the same sums. Inlined into two kernels
 * with gate a constant, so the plain one has no test in its loop. */
static inline __attribute__((always_inline)) void
sumdot4_body(const float *const p[4], const float *const g[4], int64_t s, double m, double sg[4],
             double out[4], int gate, float ga, float gb)
{
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    const float *g0 = g[0], *g1 = g[1], *g2 = g[2], *g3 = g[3];
    v4d a01 = {0, 0, 0, 0}, a23 = a01; /* PAIR_STEP's */
    v4d s0 = a01, s1 = s0, s2 = s0, s3 = s0;
    v4d mv = {m, m, m, m};
    v4f ra = {ga, ga, ga, ga}, rb = {gb, gb, gb, gb};
    int64_t i = 0;
    for (; i + 4 <= s; i += 4) {
        v4d h0, h1, h2, h3;
        if (gate) {
            v4f q0 = GATE4(p0, g0, i), q1 = GATE4(p1, g1, i), q2 = GATE4(p2, g2, i), q3 = GATE4(p3, g3, i);
            h0 = CVT4D(q0), h1 = CVT4D(q1), h2 = CVT4D(q2), h3 = CVT4D(q3);
        } else {
            h0 = LD4D(g0 + i), h1 = LD4D(g1 + i), h2 = LD4D(g2 + i), h3 = LD4D(g3 + i);
        }
        s0 += h0;
        s1 += h1;
        s2 += h2;
        s3 += h3;
        v4d d0 = (LD4D(p0 + i) - mv) * h0, d1 = (LD4D(p1 + i) - mv) * h1;
        v4d d2 = (LD4D(p2 + i) - mv) * h2, d3 = (LD4D(p3 + i) - mv) * h3;
        PAIR_STEP(a01, d0, d1);
        PAIR_STEP(a23, d2, d3);
    }
    v4d a[2] = {a01, a23}, sv[4] = {s0, s1, s2, s3};
    for (int k = 0; k < 4; k++) {
        double e = a[k / 2][2 * (k % 2)], o = a[k / 2][2 * (k % 2) + 1], t0 = sv[k][0];
        for (int64_t r = i; r < s; r++) {
            float h = gate ? GATE1(p[k], g[k], r) : g[k][r];
            double d = (p[k][r] - m) * h;
            if ((r - i) % 2) o += d;
            else e += d;
            t0 += h;
        }
        out[k] = e + o;
        sg[k] = (t0 + sv[k][1]) + (sv[k][2] + sv[k][3]);
    }
}

KERNEL static void sumdot4(const float *const p[4], const float *const g[4], int64_t s, double m,
                           double sg[4], double out[4])
{
    sumdot4_body(p, g, s, m, sg, out, 0, 0.0f, 0.0f);
}

KERNEL static void sumdot4_gated(const float *const p[4], const float *const g[4], int64_t s, double m,
                                 double sg[4], double out[4], float ga, float gb)
{
    sumdot4_body(p, g, s, m, sg, out, 1, ga, gb);
}

static double csum(const bnjob *j, const float *x, int64_t ch)
{
    double t = 0, r[4];
    const float *p[4];
    for (int64_t n = 0; n < j->b; n += 4) {
        planes(j, x, n, ch, p);
        sum4(p, j->s, r);
        for (int k = 0; k < 4 && n + k < j->b; k++) t += r[k];
    }
    return t;
}

/* Of (x - m)^2 over channel ch, eight planes at a time (past the batch:
 * the last again, its sum unused). */
static double csq(const bnjob *j, int64_t ch, double m)
{
    double t = 0, r[8];
    const float *p[8];
    for (int64_t n = 0; n < j->b; n += 8) {
        planes(j, j->x, n, ch, p);
        planes(j, j->x, n + 4, ch, p + 4);
        sq8(p, j->s, m, r);
        for (int k = 0; k < 8 && n + k < j->b; k++) t += r[k];
    }
    return t;
}

/* csum of gy and ccentred with gy at once: *sg and *dot (gy gated, with
 * relu: backward_relu). */
static void csumdot(const bnjob *j, int64_t ch, double m, double *sg, double *dot)
{
    double t = 0, d = 0, rs[4], rd[4];
    const float *p[4], *g[4];
    for (int64_t n = 0; n < j->b; n += 4) {
        planes(j, j->x, n, ch, p);
        planes(j, j->gy, n, ch, g);
        if (j->relu) sumdot4_gated(p, g, j->s, m, rs, rd, j->ra[ch], j->rb[ch]);
        else sumdot4(p, g, j->s, m, rs, rd);
        for (int k = 0; k < 4 && n + k < j->b; k++) {
            t += rs[k];
            d += rd[k];
        }
    }
    *sg = t;
    *dot = d;
}

/* out = in * a + b over channel ch; then + j->r if set (forward_add: as
 * residual.c's add_range after); with relu, then max(0, .) as relu.c
 * (x < 0 ? 0 : x, which keeps NaN and -0). */
KERNEL static void affine(const bnjob *j, const float *in, float *out, int64_t ch, float a, float b,
                          int relu)
{
    v8 av = BC8(a), bv = BC8(b);
    const float *r = j->r;
    for (int64_t n = 0; n < j->b; n++) {
        int64_t o = (n * j->c + ch) * j->s, i = 0;
        if (r) {
            for (; i + 8 <= j->s; i += 8) {
                v8 v = (LD8(in + o + i) * av + bv) + LD8(r + o + i);
                ST8(out + o + i, relu ? RELU8(v) : v);
            }
            for (; i < j->s; i++) {
                float v = (in[o + i] * a + b) + r[o + i];
                out[o + i] = relu && v < 0.0f ? 0.0f : v;
            }
            continue;
        }
        if (relu) {
            for (; i + 8 <= j->s; i += 8) {
                v8 v = LD8(in + o + i) * av + bv;
                ST8(out + o + i, RELU8(v));
            }
            for (; i < j->s; i++) {
                float v = in[o + i] * a + b;
                out[o + i] = v < 0.0f ? 0.0f : v;
            }
            continue;
        }
        for (; i + 8 <= j->s; i += 8) ST8(out + o + i, LD8(in + o + i) * av + bv);
        for (; i < j->s; i++) out[o + i] = in[o + i] * a + b;
    }
}

/* gx = ((gy - gm) - (x - m) k) a over channel ch (train mode's backward);
 * with gate, gy gated as in sumdot4 (8 floats: GATE8). */
#define GATE8(x, g, i) ((v8)((v8i)LD8((g) + (i)) & (v8i)(LD8((x) + (i)) * rav + rbv > BC8(0.0f))))
static inline __attribute__((always_inline)) void
centred_grad_body(const bnjob *j, int64_t ch, float gm, float m, float k, float a, int gate)
{
    v8 gmv = BC8(gm), mv = BC8(m), kv = BC8(k), av = BC8(a);
    float ga = gate ? j->ra[ch] : 0.0f, gb = gate ? j->rb[ch] : 0.0f;
    v8 rav = BC8(ga), rbv = BC8(gb);
    for (int64_t b = 0; b < j->b; b++) {
        int64_t o = (b * j->c + ch) * j->s, i = 0;
        const float *x = j->x + o, *g = j->gy + o;
        float *gx = j->gx + o;
        for (; i + 8 <= j->s; i += 8) {
            v8 h = gate ? GATE8(x, g, i) : (v8)LD8(g + i);
            ST8(gx + i, ((h - gmv) - (LD8(x + i) - mv) * kv) * av);
        }
        for (; i < j->s; i++) {
            float h = gate ? GATE1(x, g, i) : g[i];
            gx[i] = ((h - gm) - (x[i] - m) * k) * a;
        }
    }
}

KERNEL static void centred_grad(const bnjob *j, int64_t ch, float gm, float m, float k, float a)
{
    centred_grad_body(j, ch, gm, m, k, a, 0);
}

KERNEL static void centred_grad_gated(const bnjob *j, int64_t ch, float gm, float m, float k, float a)
{
    centred_grad_body(j, ch, gm, m, k, a, 1);
}

/* gx = gy a over channel ch, gy gated (eval mode's backward_relu; as
 * affine with b = 0 on the ReLU's gradient). */
KERNEL static void gated_scale(const bnjob *j, int64_t ch, float a)
{
    v8 av = BC8(a), bv = BC8(0.0f), rav = BC8(j->ra[ch]), rbv = BC8(j->rb[ch]);
    float ga = j->ra[ch], gb = j->rb[ch];
    for (int64_t b = 0; b < j->b; b++) {
        int64_t o = (b * j->c + ch) * j->s, i = 0;
        const float *x = j->x + o, *g = j->gy + o;
        float *gx = j->gx + o;
        for (; i + 8 <= j->s; i += 8) ST8(gx + i, GATE8(x, g, i) * av + bv);
        for (; i < j->s; i++) gx[i] = GATE1(x, g, i) * a + 0.0f;
    }
}

static void bn_forward_part(const bnjob *j, int64_t ch)
{
    lps_layer *l = j->l;
    bnpriv *p = l->priv;
    double w = l->param[0]->data[ch], bias = l->param[1]->data[ch], mean, invstd;
    float *rm = l->buffer[0]->data, *rv = l->buffer[1]->data;
    if (BATCH(l)) {
        double n = (double)(j->b * j->s);
        mean = csum(j, j->x, ch) / n;
        double sq = csq(j, ch, mean);
        invstd = 1.0 / sqrt(sq / n + EPS(l));
        p->mean.p[ch] = (float)mean;
        p->invstd.p[ch] = (float)invstd;
        if (l->training && !l->replay) {
            double m = MOMENTUM(l);
            rm[ch] = (float)(m * mean + (1.0 - m) * rm[ch]);
            rv[ch] = (float)(m * (sq / (n - 1.0)) + (1.0 - m) * rv[ch]);
        }
    } else {
        mean = rm[ch];
        invstd = 1.0 / sqrt((double)rv[ch] + EPS(l));
    }
    double a = invstd * w;
    float fa = (float)a, fb = (float)(bias - mean * a);
    p->ra.p[ch] = fa;
    p->rb.p[ch] = fb;
    affine(j, j->x, j->y, ch, fa, fb, j->relu);
}

/* The dream prior of eval mode with the running statistics (batch_stats
 * off; lps_layer_set_stat_prior): gx += the
 * gradient of stat_prior * b * (the mean over channels of KL(N(m, v) || N(rm, rv))),
 * b the samples, where m and v are the batch's biased mean and variance of channel ch and
 * rm and rv the running ones (both variances + eps): so an input drawn to
 * the statistics the layer saw in training (DeepInversion's prior) is
 * pulled by the same force per sample whatever the batch. */
static void stat_prior_grad(const bnjob *j, int64_t ch)
{
    lps_layer *l = j->l;
    double n = (double)(j->b * j->s);
    if (n < 1) return;
    double m = csum(j, j->x, ch) / n, v = csq(j, ch, m) / n + EPS(l);
    double rm = l->buffer[0]->data[ch], rv = (double)l->buffer[1]->data[ch] + EPS(l);
    double k = (double)l->stat_prior / ((double)j->c * (double)j->s);
    float cm = (float)(k * (m - rm) / rv), cv = (float)(k * (1.0 / rv - 1.0 / v)), fm = (float)m;
    for (int64_t b = 0; b < j->b; b++) {
        int64_t o = (b * j->c + ch) * j->s;
        for (int64_t i = 0; i < j->s; i++) j->gx[o + i] += cm + cv * (j->x[o + i] - fm);
    }
}

/* Train mode (through the batch statistics, PyTorch's formula):
 * gx = (gy - mean(gy) - (x - mean) k) invstd w, k = sum((x - mean) gy) invstd^2 / n;
 * eval mode: gx = gy w invstd. */
static void bn_backward_part(const bnjob *j, int64_t ch)
{
    lps_layer *l = j->l;
    bnpriv *p = l->priv;
    double w = l->param[0]->data[ch], mean, invstd;
    if (BATCH(l)) {
        mean = p->mean.p[ch];
        invstd = p->invstd.p[ch];
    } else {
        mean = l->buffer[0]->data[ch];
        invstd = 1.0 / sqrt((double)l->buffer[1]->data[ch] + EPS(l));
    }
    double sg = 0, dot = 0;
    if (!l->frozen || BATCH(l)) {
        csumdot(j, ch, mean, &sg, &dot);
    }
    if (!l->frozen) {
        l->grad[0]->data[ch] += (float)(dot * invstd);
        l->grad[1]->data[ch] += (float)sg;
    }
    if (!j->gx) return;
    float a = (float)(invstd * w);
    if (!BATCH(l)) {
        if (j->relu) gated_scale(j, ch, a);
        else affine(j, j->gy, j->gx, ch, a, 0.0f, 0);
        if (l->stat_prior != 0.0f) stat_prior_grad(j, ch);
        return;
    }
    double n = (double)(j->b * j->s);
    (j->relu ? centred_grad_gated : centred_grad)(j, ch, (float)(sg / n), (float)mean,
                                                  (float)(dot * invstd * invstd / n), a);
}

static void bn_part(void *ctx, int t, int nt)
{
    const bnjob *j = ctx;
    int64_t c0, c1;
    lps_par_range(j->c, t, nt, &c0, &c1);
    for (int64_t ch = c0; ch < c1; ch++) (j->backward ? bn_backward_part : bn_forward_part)(j, ch);
}

static lps_status bn_run(lps_layer *l, const lps_tensor *x, const lps_tensor *gy, float *out,
                         int backward, int relu, const float *r)
{
    bnpriv *p = l->priv;
    int64_t c = FEATURES(l), b = x->shape[0], s = b ? x->numel / (b * c) : 0;
    bnjob j = {l, x->data, gy ? gy->data : NULL, backward ? NULL : out, backward ? out : NULL,
               b, c, s, backward, relu, p->ra.p, p->rb.p, r};
    if (x->numel == 0) return LPS_OK; /* an empty batch: nothing to normalize or learn */
    if (BATCH(l) && b * s == 1)
        return lps_fail(LPS_ESHAPE, "%s: %s needs more than one value per channel, got "
                        "input %s (a batch of one: %s, or a larger batch)",
                        l->type->name, l->training ? "train mode" : "batch_stats", SH(x),
                        l->training ? "use eval mode" : "batch_stats(false)");
    if (BATCH(l) && backward && (p->b != b || p->s != s))
        return lps_fail(LPS_EINVAL, "%s backward: input %s was not the last forward's input",
                        l->type->name, SH(x));
    if (backward && relu && !p->ra.p)
        return lps_fail(LPS_EINVAL, "%s backward: no forward before it", l->type->name);
    if (BATCH(l) && !backward) {
        if (!lps_scratch_get(&p->mean, c, l->type->name) || !lps_scratch_get(&p->invstd, c, l->type->name))
            return LPS_ENOMEM;
        p->b = b;
        p->s = s;
    }
    if (!backward && (!lps_scratch_get(&p->ra, c, l->type->name) ||
                      !lps_scratch_get(&p->rb, c, l->type->name)))
        return LPS_ENOMEM;
    j.ra = p->ra.p;
    j.rb = p->rb.p;
    int nt = x->numel >= (1 << 16) ? lps_par_threads() : 1;
    lps_par_run(nt < c ? nt : (int)c, bn_part, &j);
    return LPS_OK;
}

static lps_status bn_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    return bn_run(l, x, NULL, y->data, 0, 0, NULL);
}

static lps_status bn_forward_relu(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    return bn_run(l, x, NULL, y->data, 0, 1, NULL);
}

static lps_status bn_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                              const lps_tensor *gy, lps_tensor *gx)
{
    (void)y; /* not read: forward_relu's backward gets the ReLU's output here */
    return bn_run(l, x, gy, gx ? gx->data : NULL, 1, 0, NULL);
}

/* The ReLU's backward and the layer's in one pass: y (the ReLU's output)
 * not read, the gate recomputed from x and the last forward's a, b (in train
 * mode the batch's, which the check of x's shape ties to x). */
static lps_status bn_backward_relu(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                   const lps_tensor *gy, lps_tensor *gx)
{
    (void)y;
    return bn_run(l, x, gy, gx ? gx->data : NULL, 1, 1, NULL);
}

static lps_status bn_forward_add(lps_layer *l, const lps_tensor *x, const float *r, int relu,
                                 lps_tensor *y)
{
    return bn_run(l, x, NULL, y->data, 0, relu, r);
}

/* ------------------------------------------------------------ the layer */

static lps_status bn_create(lps_layer *l, lps_rng *init)
{
    (void)init;
    int64_t c = FEATURES(l);
    l->priv = calloc(1, sizeof(bnpriv));
    if (!l->priv || lps_layer_add_param(l, "weight", 1, &c, 0, NULL) ||
        lps_layer_add_param(l, "bias", 1, &c, 0, NULL) ||
        lps_layer_add_buffer(l, "running_mean", c, 0.0f) ||
        lps_layer_add_buffer(l, "running_var", c, 1.0f))
        return LPS_ENOMEM;
    lps_fill(l->param[0], 1.0f);
    return LPS_OK;
}

static void bn_destroy(lps_layer *l)
{
    bnpriv *p = l->priv;
    if (!p) return;
    lps_scratch_free(&p->mean);
    lps_scratch_free(&p->invstd);
    lps_scratch_free(&p->ra);
    lps_scratch_free(&p->rb);
    free(p);
}

static void repr(const lps_arch_entry *e, char *buf, size_t n, int d)
{
    char eps[40], mom[40];
    snprintf(buf, n, "BatchNorm%dd(%lld, eps=%s, momentum=%s, affine=True, track_running_stats=True)",
             d, (long long)FI(e, 0), lps_py_float(eps, sizeof eps, e->v[1]),
             lps_py_float(mom, sizeof mom, e->v[2]));
}

static void bn1d_repr(const lps_arch_entry *e, char *buf, size_t n) { repr(e, buf, n, 1); }
static void bn2d_repr(const lps_arch_entry *e, char *buf, size_t n) { repr(e, buf, n, 2); }

static const lps_field bn_fields[] = {
    {"features", LPS_FIELD_INT, 1, INT32_MAX / 2, LPS_REQUIRED, 0},
    {"eps", LPS_FIELD_REAL, 0, 1, 1e-5, 0},
    {"momentum", LPS_FIELD_REAL, 0, 1, 0.1, 0},
    {NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_batchnorm1d_type = {
    .name = "batchnorm1d", .fields = bn_fields, .flow = bn1d_flow, .create = bn_create,
    .forward = bn_forward, .backward = bn_backward, .destroy = bn_destroy, .repr = bn1d_repr,
    .forward_relu = bn_forward_relu, .backward_relu = bn_backward_relu, .forward_add = bn_forward_add};

const lps_layer_type lps_batchnorm2d_type = {
    .name = "batchnorm2d", .fields = bn_fields, .flow = bn2d_flow, .create = bn_create,
    .forward = bn_forward, .backward = bn_backward, .destroy = bn_destroy, .repr = bn2d_repr,
    .forward_relu = bn_forward_relu, .backward_relu = bn_backward_relu, .forward_add = bn_forward_add};
