/* conv2d.c - 2-D convolution (cross-correlation, as PyTorch): the layer, the
 * choice of kernel (direct for few inputs per output, Winograd for 3x3 at
 * stride 1, else im2col + GEMM sample by sample, here) and the split of a
 * batch over threads. */
#include "nn/conv_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static lps_status conv_flow(const lps_arch_entry *e, lps_flow *f)
{
    int64_t cin = FI(e, 0), cout = FI(e, 1), k = FI(e, 2), s = FI(e, 3), pad = FI(e, 4);
    if (f->rank == 0) { /* unknown input: channels out, sizes unknown */
        f->rank = 3;
        f->d[0] = cout;
        f->d[1] = f->d[2] = LPS_ARCH_UNKNOWN;
        return LPS_OK;
    }
    if (f->rank != 3)
        return lps_flow_fail(f, LPS_ESHAPE, "needs (channels x height x width) but %s gives %s%s",
                             f->from, FSH(f->rank, f->d), f->rank == 1 ? " features" : "");
    if (f->d[0] != LPS_ARCH_UNKNOWN && f->d[0] != cin)
        return lps_flow_fail(f, LPS_ESHAPE, "\"in\" is %lld but %s gives %lld channels %s",
                             (long long)cin, f->from, (long long)f->d[0], FSH(3, f->d));
    for (int i = 1; i < 3; i++)
        if (f->d[i] != LPS_ARCH_UNKNOWN && f->d[i] + 2 * pad < k)
            return lps_flow_fail(f, LPS_ESHAPE, "kernel %lld is larger than its input%s: %s gives %s",
                                 (long long)k, pad ? " plus padding" : "", f->from, FSH(3, f->d));
    int64_t oh = f->d[1] == LPS_ARCH_UNKNOWN ? LPS_ARCH_UNKNOWN : (f->d[1] + 2 * pad - k) / s + 1;
    int64_t ow = f->d[2] == LPS_ARCH_UNKNOWN ? LPS_ARCH_UNKNOWN : (f->d[2] + 2 * pad - k) / s + 1;
    if (f->instance && oh != LPS_ARCH_UNKNOWN && ow != LPS_ARCH_UNKNOWN &&
        (oh * ow > INT32_MAX / 4 || cin * k * k > INT32_MAX / 4 || oh * ow * cin * k * k > LPS_MAX_NUMEL))
        return lps_flow_fail(f, LPS_ESHAPE, "input %s from %s is too large for BLAS", FSH(3, f->d), f->from);
    f->d[0] = cout;
    f->d[1] = oh;
    f->d[2] = ow;
    return LPS_OK;
}

/* ------------------------------------------------ im2col + GEMM, per sample */

enum { S_COL, S_X, S_GX, S_PACK };

/* A 1x1 kernel at stride 1 without padding needs no im2col: x is the matrix. */
static int plain_1x1(const lps_layer *l) { return KS(l) == 1 && STRIDE(l) == 1 && PAD(l) == 0; }

/* A 1x1 kernel at a larger stride without padding: its columns are the
 * input subsampled, read in place (no split layout), and the input gradient
 * is the columns put back, zero elsewhere (0 + v, as col2im's sum). */
static int strided_1x1(const lps_layer *l) { return KS(l) == 1 && STRIDE(l) > 1 && PAD(l) == 0; }

static void gather_1x1(const float *xn, const convjob *j, int64_t s, int64_t cin, float *col)
{
    int64_t np = j->oh * j->ow;
    for (int64_t ci = 0; ci < cin; ci++)
        for (int64_t oh = 0; oh < j->oh; oh++) {
            const float *src = xn + (ci * j->h + oh * s) * j->w;
            float *dst = col + ci * np + oh * j->ow;
            for (int64_t c = 0; c < j->ow; c++) dst[c] = src[c * s];
        }
}

static void scatter_1x1(const float *col, const convjob *j, int64_t s, int64_t cin, float *gxn)
{
    int64_t np = j->oh * j->ow;
    memset(gxn, 0, (size_t)(cin * j->h * j->w) * sizeof(float));
    for (int64_t ci = 0; ci < cin; ci++)
        for (int64_t oh = 0; oh < j->oh; oh++) {
            float *dst = gxn + (ci * j->h + oh * s) * j->w;
            const float *src = col + ci * np + oh * j->ow;
            for (int64_t c = 0; c < j->ow; c++) dst[c * s] = 0.0f + src[c];
        }
}

/* col (K x P): row (ci, ki, kj) holds, output by output, the input at that
 * tap, copied from the split layout 8 floats at a time; a copy that runs
 * past an output row spills into the next one's first floats before those
 * are written (col has 8 floats of slack). */
KERNEL static void im2col(const float *xs, const convsplit *g, const convjob *j, float *col)
{
    int64_t np = j->oh * j->ow, rs = g->s * g->wc;
    for (int64_t ci = 0, t = 0; ci < g->cin; ci++)
        for (int64_t ki = 0; ki < g->k; ki++)
            for (int64_t kj = 0; kj < g->k; kj++, t++) {
                const float *src = xs + (ci * g->s + kj % g->s) * g->plane + ki * g->wc + kj / g->s;
                float *dst = col + t * np;
                for (int64_t oh = 0; oh < j->oh; oh++)
                    for (int64_t c = 0; c < j->ow; c += 8) ST8(dst + oh * j->ow + c, LD8(src + oh * rs + c));
            }
}

/* The adjoint: gxs (the split layout, zeroed here) accumulates the columns;
 * lanes past an output row are masked to zero. */
KERNEL static void col2im(const float *col, const convsplit *g, const convjob *j, float *gxs)
{
    int64_t np = j->oh * j->ow, rs = g->s * g->wc, last = j->ow / 8 * 8;
    v8i tail;
    for (int i = 0; i < 8; i++) tail[i] = last + i < j->ow ? -1 : 0;
    memset(gxs, 0, (size_t)(g->cin * g->s * g->plane) * sizeof(float));
    for (int64_t ci = 0, t = 0; ci < g->cin; ci++)
        for (int64_t ki = 0; ki < g->k; ki++)
            for (int64_t kj = 0; kj < g->k; kj++, t++) {
                float *dst = gxs + (ci * g->s + kj % g->s) * g->plane + ki * g->wc + kj / g->s;
                const float *src = col + t * np;
                for (int64_t oh = 0; oh < j->oh; oh++) {
                    float *d = dst + oh * rs;
                    const float *sr = src + oh * j->ow;
                    int64_t c = 0;
                    for (; c < last; c += 8) ST8(d + c, LD8(d + c) + LD8(sr + c));
                    if (c < j->ow) ST8(d + c, LD8(d + c) + (v8)((v8i)LD8(sr + c) & tail));
                }
            }
}

/* 0: col2im + conv_unsplit always (the reference for tests;
 * lps_conv_fold_direct). */
static int fold_direct = 1;

void lps_set_conv_fold_direct(int on) { fold_direct = on != 0; }

/* Vectors of input gradients in a row that col2im_direct handles: 8
 * columns each at stride 1, 16 at stride 2. */
enum { FOLD_MAXCH = 32 };

/* Whether col2im_direct folds a layer's columns: strides 1 and 2, kernels
 * up to 8, rows of up to FOLD_MAXCH vectors. */
static int folds_direct(const convsplit *g, const convjob *j)
{
    return fold_direct && g->s <= 2 && g->k <= 8 && (j->w + 8 * g->s - 1) / (8 * g->s) <= FOLD_MAXCH;
}

#define BCI8(i) ((v8i){(i), (i), (i), (i), (i), (i), (i), (i)})

/* col2im and conv_unsplit in one (strides 1 and 2): each input gradient
 * gathered in registers from 0.0f, its columns' values added in the order
 * col2im adds them (taps by ki, then kj), and stored straight into gxn.
 *
 * Input columns m .. m + 7 (stride 1) are the padded columns m + pad ..;
 * at stride 2, input columns m + 2i are phase pe = pad & 1's columns
 * ce + i, m + 2i + 1 the other phase's co + i. A tap (ki, kj) adds to them
 * output columns d .. d + 7 (d the phase column less kj / s) of its row of
 * col: a load at row + d (d > -8 never reaches before col: the tap's rows
 * start kj np floats in; at most 7 floats past a row, and col has 8 of
 * slack) with the lanes outside [0, ow) masked to +0.0f, as col2im's
 * masked lanes are. A sum from +0.0f is never -0.0f, so adding +0.0f
 * changes no bit. Taps with d >= ow add nothing: skipped (a suffix of each
 * phase's kj, as d falls with kj). */
KERNEL static void col2im_direct(const float *col, const convsplit *g, const convjob *j, float *gxn)
{
    int64_t np = j->oh * j->ow, ow = j->ow, s = g->s, k = g->k, pad = g->pad, h = j->h, w = j->w;
    int64_t step = 8 * s, nch = (w + step - 1) / step, pe = pad & 1;
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    v8i msk[FOLD_MAXCH][8];
    int64_t off[FOLD_MAXCH][8], ks0[FOLD_MAXCH][2];
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t m = ch * step;
        ks0[ch][0] = ks0[ch][1] = k;
        for (int64_t kj = k - 1; kj >= 0; kj--) {
            /* stride 1: one phase (0); stride 2: 0 for the even lanes */
            int64_t ph = s == 1 ? 0 : (kj & 1) != pe;
            int64_t d = s == 1 ? m + pad - kj : (ph ? (m + pad + 1) >> 1 : (m + pad) >> 1) - (kj >> 1);
            if (d >= ow) continue;
            ks0[ch][ph] = kj;
            off[ch][kj] = kj * np + d;
            msk[ch][kj] = (lane + BCI8((int32_t)d) >= BCI8(0)) & (lane + BCI8((int32_t)d) < BCI8((int32_t)ow));
        }
    }
    for (int64_t ci = 0; ci < g->cin; ci++)
        for (int64_t ih = 0; ih < h; ih++) {
            int64_t r = ih + pad;
            float *out = gxn + (ci * h + ih) * w;
            const float *cc = col + ci * k * k * np;
            /* floats of this sample's gradient after this row: a vector
             * store may run past the row into them (written later) */
            int64_t after = (g->cin * h - (ci * h + ih) - 1) * w;
            for (int64_t ch = 0; ch < nch; ch++) {
                int64_t m = ch * step;
                const int64_t *o = off[ch];
                const v8i *mk = msk[ch];
                v8 acce = BC8(0.0f), acco = BC8(0.0f);
                for (int64_t ki = 0; ki < k; ki++) {
                    if (r < ki || ((r - ki) & (s - 1))) continue;
                    int64_t oh = (r - ki) >> (s - 1); /* s is 1 or 2 */
                    if (oh >= j->oh) continue;
                    const float *base = cc + ki * k * np + oh * ow;
                    for (int64_t kj = ks0[ch][0]; kj < k; kj += s)
                        acce = acce + (v8)((v8i)LD8(base + o[kj]) & mk[kj]);
                    for (int64_t kj = ks0[ch][1]; kj < k; kj += s)
                        acco = acco + (v8)((v8i)LD8(base + o[kj]) & mk[kj]);
                }
                if (s == 1) {
                    if (m + 8 <= w + after) ST8(out + m, acce);
                    else
                        for (int64_t i = 0; m + i < w; i++) out[m + i] = acce[i];
                    continue;
                }
                v8 lo = ZIPLO8(acce, acco), hi = ZIPHI8(acce, acco);
                if (m + 16 <= w + after) {
                    ST8(out + m, lo);
                    ST8(out + m + 8, hi);
                } else {
                    float t[16];
                    ST8(t, lo);
                    ST8(t + 8, hi);
                    for (int64_t i = 0; m + i < w; i++) out[m + i] = t[i];
                }
            }
        }
}

/* A sample's product by conv_gemm.c when its wide operand (depth x P
 * floats) stays in a core's L2 cache, else by BLAS (which blocks for it). */
static int in_cache(int64_t depth, int64_t np) { return depth <= 1024 && depth * np <= (1 << 17); }

/* At stride 1 with fewer output channels than input ones, the input
 * gradient as a convolution of gy (cout channels, padded by k - 1 - pad)
 * with the flipped, transposed kernel: its columns (cout k k) are fewer
 * than the product's (cin k k) and its product is deep (cout k k, not
 * cout), with no columns to fold back (col2im). */
static int transposed_bwd(const lps_layer *l)
{
    return STRIDE(l) == 1 && KS(l) > 1 && PAD(l) <= KS(l) - 1 && COUT(l) < CIN(l);
}

/* The job and split geometry of that convolution: gy's planes in, x's out. */
static void transposed_geometry(const convjob *j, convjob *t, convsplit *g)
{
    const lps_layer *l = j->l;
    *t = *j;
    t->h = j->oh, t->w = j->ow, t->oh = j->h, t->ow = j->w;
    g->cin = COUT(l);
    g->cout = CIN(l);
    g->k = KS(l);
    g->s = 1;
    g->pad = KS(l) - 1 - PAD(l);
    g->owp = (t->ow + 7) / 8 * 8;
    g->hp = (t->oh + 1) + g->k;
    g->wc = g->owp + g->k - 1 + 8;
    g->plane = g->hp * g->wc;
    g->taps = g->cin * g->k * g->k;
}

static lps_status gemm_prep(const convjob *j, int backward)
{
    const lps_layer *l = j->l;
    if (plain_1x1(l)) return LPS_OK;
    convsplit g;
    conv_split_geometry(j, &g);
    int64_t kk = CIN(l) * KS(l) * KS(l), np = j->oh * j->ow, xsize = g.cin * g.s * g.plane;
    int split = !strided_1x1(l);
    /* the weights packed once per call for the samples' products (forward:
     * W, backward: W^T) */
    int64_t pack = backward ? conv_gemm_pack_floats(kk, COUT(l)) : conv_gemm_pack_floats(COUT(l), kk);
    int64_t tcol = 0, tx = 0, cout = COUT(l), k = KS(l);
    if (backward && j->gx && transposed_bwd(l)) {
        /* the flipped kernel wt[ci][co][ki][kj] = w[co][ci][k-1-ki][k-1-kj], shared */
        convjob tj;
        convsplit tg;
        transposed_geometry(j, &tj, &tg);
        tcol = tg.taps * j->h * j->w + 8;
        tx = tg.cin * tg.plane;
        int64_t cin = CIN(l), taps = cout * k * k;
        float *wt = lps_scratch_get(&((convpriv *)l->priv)->shared, cin * taps, "conv2d");
        if (!wt) return LPS_ENOMEM;
        const float *w = l->param[0]->data;
        for (int64_t ci = 0; ci < cin; ci++)
            for (int64_t co = 0; co < cout; co++)
                for (int64_t t = 0; t < k * k; t++)
                    wt[ci * taps + co * k * k + t] = w[(co * cin + ci) * k * k + (k * k - 1 - t)];
        pack = conv_gemm_pack_floats(cin, taps);
    }
    for (int t = 0; t < j->nt; t++) {
        lps_scratch *s = conv_slots(j, t);
        if (!lps_scratch_get(&s[S_COL], (kk * np + 8 > tcol ? kk * np + 8 : tcol), "conv2d") ||
            !lps_scratch_get(&s[S_PACK], pack, "conv2d") ||
            (split && !lps_scratch_get(&s[S_X], xsize > tx ? xsize : tx, "conv2d")) ||
            (split && backward && j->gx && !lps_scratch_get(&s[S_GX], xsize, "conv2d")))
            return LPS_ENOMEM;
    }
    return LPS_OK;
}

static void gemm_fwd(const convjob *j, int t, int64_t n0, int64_t n1)
{
    const lps_layer *l = j->l;
    int64_t kk = CIN(l) * KS(l) * KS(l), np = j->oh * j->ow, cout = COUT(l);
    const float *wt = l->param[0]->data, *bias = conv_bias(l);
    lps_scratch *sc = conv_slots(j, t);
    convsplit g;
    conv_split_geometry(j, &g);
    float *wp = NULL;
    if (in_cache(kk, np) && !plain_1x1(l)) {
        wp = sc[S_PACK].p;
        conv_gemm_pack(cout, kk, wt, kk, 1, wp);
    }
    for (int64_t n = n0; n < n1; n++) {
        const float *xn = j->x + n * CIN(l) * j->h * j->w, *col = xn;
        float *yn = j->y + n * cout * np;
        if (strided_1x1(l)) {
            gather_1x1(xn, j, STRIDE(l), CIN(l), sc[S_COL].p);
            col = sc[S_COL].p;
        } else if (!plain_1x1(l)) {
            conv_split_input(xn, j, &g, sc[S_X].p);
            im2col(sc[S_X].p, &g, j, sc[S_COL].p);
            col = sc[S_COL].p;
        }
        /* y_n (cout x P) = W (cout x K) col (K x P), then + bias */
        if (in_cache(kk, np))
            conv_gemm_nn(cout, np, kk, wt, kk, 1, wp, col, np, yn, np);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)cout, (int)np, (int)kk, 1.0f,
                        wt, (int)kk, col, (int)np, 0.0f, yn, (int)np);
        for (int64_t c = 0; c < cout; c++) {
            float *row = yn + c * np, bc = bias[c];
            for (int64_t i = 0; i < np; i++) row[i] += bc;
        }
    }
}

static void gemm_bwd(const convjob *j, int t, int64_t n0, int64_t n1)
{
    const lps_layer *l = j->l;
    int64_t kk = CIN(l) * KS(l) * KS(l), np = j->oh * j->ow, cout = COUT(l);
    int64_t in_size = CIN(l) * j->h * j->w;
    const float *wt = l->param[0]->data;
    float *gw = conv_gw(j, t), *gb = conv_gb(j, t);
    lps_scratch *sc = conv_slots(j, t);
    float *col = sc[S_COL].p, *wp = NULL;
    convsplit g;
    conv_split_geometry(j, &g);
    int trans = j->gx && transposed_bwd(l);
    convjob tj;
    convsplit tg;
    const float *wflip = trans ? ((const convpriv *)l->priv)->shared.p : NULL;
    int64_t hw = j->h * j->w;
    if (trans) {
        transposed_geometry(j, &tj, &tg);
        if (in_cache(tg.taps, hw)) {
            wp = sc[S_PACK].p;
            conv_gemm_pack(CIN(l), tg.taps, wflip, tg.taps, 1, wp);
        }
    } else if (j->gx && in_cache(cout, np) && !plain_1x1(l)) {
        wp = sc[S_PACK].p;
        conv_gemm_pack(kk, cout, wt, 1, kk, wp);
    }
    for (int64_t n = n0; n < n1; n++) {
        const float *xn = j->x + n * in_size, *gn = j->gy + n * cout * np, *cn = xn;
        if (!l->frozen) {
            for (int64_t c = 0; c < cout && gb; c++) gb[c] += lps_sum_floats(gn + c * np, np);
            if (strided_1x1(l)) {
                gather_1x1(xn, j, STRIDE(l), CIN(l), col);
                cn = col;
            } else if (!plain_1x1(l)) {
                conv_split_input(xn, j, &g, sc[S_X].p);
                im2col(sc[S_X].p, &g, j, col);
                cn = col;
            }
            /* dW (cout x K) += gy_n (cout x P) col^T */
            if (in_cache(kk, np))
                conv_gemm_nt(cout, kk, np, gn, np, cn, np, gw, kk);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)cout, (int)kk, (int)np, 1.0f,
                            gn, (int)np, cn, (int)np, 1.0f, gw, (int)kk);
        }
        if (!j->gx) continue;
        if (trans) {
            /* gx_n (cin x hw) = flipped W (cin x cout k k) im2col(gy_n padded) */
            float *gxn = j->gx + n * in_size;
            conv_split_input(gn, &tj, &tg, sc[S_X].p);
            im2col(sc[S_X].p, &tg, &tj, col);
            if (in_cache(tg.taps, hw))
                conv_gemm_nn(CIN(l), hw, tg.taps, wflip, tg.taps, 1, wp, col, hw, gxn, hw);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)CIN(l), (int)hw, (int)tg.taps, 1.0f,
                            wflip, (int)tg.taps, col, (int)hw, 0.0f, gxn, (int)hw);
            continue;
        }
        /* dcol (K x P) = W^T gy_n, folded back onto the sample's input */
        float *gxn = j->gx + n * in_size, *dcol = plain_1x1(l) ? gxn : col;
        if (in_cache(cout, np))
            conv_gemm_nn(kk, np, cout, wt, 1, kk, wp, gn, np, dcol, np);
        else
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kk, (int)np, (int)cout, 1.0f, wt,
                        (int)kk, gn, (int)np, 0.0f, dcol, (int)np);
        if (plain_1x1(l)) continue;
        if (strided_1x1(l)) {
            scatter_1x1(col, j, STRIDE(l), CIN(l), gxn);
            continue;
        }
        if (folds_direct(&g, j)) {
            col2im_direct(col, &g, j, gxn);
            continue;
        }
        col2im(col, &g, j, sc[S_GX].p);
        conv_unsplit(sc[S_GX].p, j, &g, gxn);
    }
}

static const convkernel conv_gemm = {gemm_prep, gemm_fwd, gemm_bwd, NULL};

/* -------------------------------------------------------------- dispatch */

lps_scratch *conv_slots(const convjob *j, int t) { return ((convpriv *)j->l->priv)->s[t]; }

float *conv_gw(const convjob *j, int t)
{
    return j->nt == 1 ? j->l->grad[0]->data : conv_slots(j, t)[CONV_PART].p;
}

float *conv_gb(const convjob *j, int t)
{
    if (!HAS_BIAS(j->l)) return NULL;
    return j->nt == 1 ? j->l->grad[1]->data : conv_slots(j, t)[CONV_PART].p + j->l->grad[0]->numel;
}

const float *conv_bias(const lps_layer *l)
{
    return HAS_BIAS(l) ? l->param[1]->data : ((const convpriv *)l->priv)->zeros;
}

/* The kernel for a layer, from timings of each on 28x28 and 14x14 planes
 * (scripts/bench_conv.lua's layers): direct for at most 9 inputs per output
 * (a 3x3 first layer on grey images; more, and im2col + GEMM wins);
 * Winograd for 3x3 at stride 1 from 4 input channels (with fewer its GEMMs
 * are too thin); im2col + GEMM for the rest. */
static const convkernel *kernel_of(const lps_layer *l)
{
    if (KS(l) > 1 && CIN(l) * KS(l) * KS(l) <= 9) return &lps_conv_direct;
    if (KS(l) == 3 && STRIDE(l) == 1 && CIN(l) >= 4) return &lps_conv_wino;
    return &conv_gemm;
}

typedef struct {
    convjob *j;
    const convkernel *k;
    int backward;
} convtask;

static void run_part(void *ctx, int t, int nt)
{
    convtask *c = ctx;
    int64_t n0, n1;
    lps_par_range(c->j->b, t, nt, &n0, &n1);
    if (n1 > n0) (c->backward ? c->k->bwd : c->k->fwd)(c->j, t, n0, n1);
}

/* Threads for a call: one unless there is enough work to be worth waking
 * others for (about a millisecond), and at least a sample each. */
static int threads_for(const lps_layer *l, int64_t b, int64_t np)
{
    int nt = lps_par_threads();
    double macs = (double)b * (double)np * (double)(COUT(l) * CIN(l) * KS(l) * KS(l));
    if (macs < 4e6) return 1;
    return b < nt ? (int)b : nt;
}

static lps_status conv_run(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                           const lps_tensor *gy, lps_tensor *gx, int backward)
{
    convjob j = {l, x->shape[0], x->shape[2], x->shape[3], y->shape[2], y->shape[3], x->data,
                 gy ? gy->data : NULL, backward ? NULL : y->data, gx ? gx->data : NULL, 1};
    if (j.b == 0) return LPS_OK;
    j.nt = threads_for(l, j.b, j.oh * j.ow);
    const convkernel *k = kernel_of(l);
    int64_t part = l->grad[0]->numel + (HAS_BIAS(l) ? l->grad[1]->numel : 0);
    for (int t = 0; t < j.nt && backward && j.nt > 1; t++) {
        float *p = lps_scratch_get(&conv_slots(&j, t)[CONV_PART], part, "conv2d backward");
        if (!p) return LPS_ENOMEM;
        memset(p, 0, (size_t)part * sizeof(float));
    }
    lps_status s = k->prep(&j, backward);
    if (s) return s;
    convtask c = {&j, k, backward};
    lps_par_run(j.nt, run_part, &c);
    if (backward && k->finish) k->finish(&j);
    /* the threads' shares of the gradients, added in thread order */
    for (int t = 0; t < j.nt && backward && j.nt > 1 && !l->frozen; t++) {
        const float *p = conv_slots(&j, t)[CONV_PART].p;
        float *gw = l->grad[0]->data, *gb = HAS_BIAS(l) ? l->grad[1]->data : NULL;
        int64_t nw = l->grad[0]->numel;
        for (int64_t i = 0; i < nw; i++) gw[i] += p[i];
        for (int64_t i = 0; HAS_BIAS(l) && i < l->grad[1]->numel; i++) gb[i] += p[nw + i];
    }
    return LPS_OK;
}

static lps_status conv_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    return conv_run(l, x, y, NULL, NULL, 0);
}

static lps_status conv_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    return conv_run(l, x, y, gy, gx, 1);
}

static void conv_destroy(lps_layer *l)
{
    convpriv *p = l->priv;
    if (!p) return;
    for (int t = 0; t < LPS_PAR_MAX; t++)
        for (int i = 0; i < CONV_NSLOTS; i++) lps_scratch_free(&p->s[t][i]);
    lps_scratch_free(&p->shared);
    free(p->zeros);
    free(p);
}

static lps_status conv_create(lps_layer *l, lps_rng *init)
{
    int64_t cin = CIN(l), cout = COUT(l), k = KS(l);
    convpriv *p = calloc(1, sizeof(convpriv));
    l->priv = p;
    int64_t wshape[4] = {cout, cin, k, k};
    double bound = 1.0 / sqrt((double)(cin * k * k));
    if (!p || lps_layer_add_param(l, "weight", 4, wshape, bound, init) ||
        (FI(&l->cfg, 5) ? lps_layer_add_param(l, "bias", 1, &cout, bound, init)
                        : !(p->zeros = calloc((size_t)cout, sizeof(float)))))
        return lps_fail(LPS_ENOMEM, "conv2d: cannot allocate %lld -> %lld, k=%lld", (long long)cin,
                        (long long)cout, (long long)k);
    return LPS_OK;
}

static void conv_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    snprintf(buf, n, "Conv2d(%lld, %lld, kernel_size=%lld, stride=%lld, padding=%lld%s)",
             (long long)FI(e, 0), (long long)FI(e, 1), (long long)FI(e, 2), (long long)FI(e, 3),
             (long long)FI(e, 4), FI(e, 5) ? "" : ", bias=False");
}

static const lps_field conv_fields[] = {
    {"in", LPS_FIELD_INT, 1, 1 << 20, LPS_REQUIRED, 0},   {"out", LPS_FIELD_INT, 1, 1 << 20, LPS_REQUIRED, 0},
    {"kernel", LPS_FIELD_INT, 1, 1024, LPS_REQUIRED, 0}, {"stride", LPS_FIELD_INT, 1, 1024, 1, 0},
    {"padding", LPS_FIELD_INT, 0, 1024, 0, 0},           {"bias", LPS_FIELD_BOOL, 0, 1, 1, 1},
    {NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_conv2d_type = {
    .name = "conv2d", .fields = conv_fields, .flags = LPS_LT_WEIGHTED | LPS_LT_AFFINE, .flow = conv_flow,
    .create = conv_create, .forward = conv_forward, .backward = conv_backward,
    .destroy = conv_destroy, .repr = conv_repr};
