/* conv.c - 2-D convolution (cross-correlation, as PyTorch): the layer, the
 * choice of kernel (direct for few inputs per output, Winograd for 3x3 at
 * stride 1, else im2col + GEMM sample by sample, here) and the split of a
 * batch over threads. */
#include "nn/conv_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static lps_status conv_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                                 int64_t *out)
{
    lps_tensor t = {.ndim = ndim};
    for (int i = 0; i < ndim; i++) t.shape[i] = i < ndim ? in[i] : 1;
    if (ndim != 4 || in[1] != l->CIN)
        return lps_fail(LPS_ESHAPE, "conv2d(%lld -> %lld, k=%lld): input %s should be "
                        "(batch x %lld x height x width)", (long long)l->CIN, (long long)l->COUT,
                        (long long)l->KS, SH(&t), (long long)l->CIN);
    int64_t h = in[2] + 2 * l->PAD, w = in[3] + 2 * l->PAD;
    if (h < l->KS || w < l->KS)
        return lps_fail(LPS_ESHAPE, "conv2d: input %s with padding %lld is smaller than the "
                        "kernel %lldx%lld", SH(&t), (long long)l->PAD, (long long)l->KS,
                        (long long)l->KS);
    int64_t oh = (h - l->KS) / l->STRIDE + 1, ow = (w - l->KS) / l->STRIDE + 1;
    if (in[0] > INT32_MAX || oh * ow > INT32_MAX / 4 || l->CIN * l->KS * l->KS > INT32_MAX / 4 ||
        oh * ow * l->CIN * l->KS * l->KS > LPS_MAX_NUMEL)
        return lps_fail(LPS_ESHAPE, "conv2d: input %s is too large for BLAS", SH(&t));
    *ondim = 4;
    out[0] = in[0];
    out[1] = l->COUT;
    out[2] = oh;
    out[3] = ow;
    return LPS_OK;
}

/* Output columns ow whose input column ow*s - pad + kj lies in [0, w). */
static void valid_range(int64_t ow_n, int64_t s, int64_t pad, int64_t kj, int64_t w, int64_t *lo,
                        int64_t *hi)
{
    int64_t a = pad - kj; /* need ow*s >= a */
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    int64_t b = w - 1 + pad - kj; /* need ow*s <= b */
    *hi = b < 0 ? 0 : b / s + 1;
    if (*hi > ow_n) *hi = ow_n;
    if (*lo > *hi) *lo = *hi;
}

/* col (K x P, rows ld apart): row (c, ki, kj), column (oh, ow) holds
 * x[c, oh*s - pad + ki, ow*s - pad + kj] (0 in the padding). */
static void im2col(const lps_layer *l, const float *x, int64_t h, int64_t w, int64_t oh_n,
                   int64_t ow_n, float *col, int64_t ld)
{
    int64_t k = l->KS, s = l->STRIDE, pad = l->PAD;
    for (int64_t c = 0; c < l->CIN; c++)
        for (int64_t ki = 0; ki < k; ki++)
            for (int64_t kj = 0; kj < k; kj++) {
                float *row = col + ((c * k + ki) * k + kj) * ld;
                int64_t lo, hi;
                valid_range(ow_n, s, pad, kj, w, &lo, &hi);
                for (int64_t oh = 0; oh < oh_n; oh++) {
                    float *dst = row + oh * ow_n;
                    int64_t ih = oh * s - pad + ki;
                    if (ih < 0 || ih >= h) {
                        memset(dst, 0, (size_t)ow_n * sizeof(float));
                        continue;
                    }
                    int64_t base = (c * h + ih) * w - pad + kj; /* + ow*s is in range */
                    for (int64_t ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
                    if (s == 1 && hi > lo)
                        memcpy(dst + lo, x + base + lo, (size_t)(hi - lo) * sizeof(float));
                    else
                        for (int64_t ow = lo; ow < hi; ow++) dst[ow] = x[base + ow * s];
                    for (int64_t ow = hi; ow < ow_n; ow++) dst[ow] = 0.0f;
                }
            }
}

/* The adjoint of im2col: gx (zeroed first) accumulates the columns. */
static void col2im(const lps_layer *l, const float *col, int64_t ld, int64_t h, int64_t w,
                   int64_t oh_n, int64_t ow_n, float *gx)
{
    int64_t k = l->KS, s = l->STRIDE, pad = l->PAD;
    memset(gx, 0, (size_t)(l->CIN * h * w) * sizeof(float));
    for (int64_t c = 0; c < l->CIN; c++)
        for (int64_t ki = 0; ki < k; ki++)
            for (int64_t kj = 0; kj < k; kj++) {
                const float *row = col + ((c * k + ki) * k + kj) * ld;
                int64_t lo, hi;
                valid_range(ow_n, s, pad, kj, w, &lo, &hi);
                for (int64_t oh = 0; oh < oh_n; oh++) {
                    int64_t ih = oh * s - pad + ki;
                    if (ih < 0 || ih >= h) continue;
                    const float *src = row + oh * ow_n;
                    int64_t base = (c * h + ih) * w - pad + kj;
                    for (int64_t ow = lo; ow < hi; ow++) gx[base + ow * s] += src[ow];
                }
            }
}

/* ------------------------------------------------ im2col + GEMM, per sample */

enum { S_COL };

/* A 1x1 kernel at stride 1 without padding needs no im2col: x is the matrix. */
static int plain_1x1(const lps_layer *l) { return l->KS == 1 && l->STRIDE == 1 && l->PAD == 0; }

static lps_status gemm_prep(const convjob *j, int backward)
{
    (void)backward;
    const lps_layer *l = j->l;
    int64_t kk = l->CIN * l->KS * l->KS, np = j->oh * j->ow;
    for (int t = 0; t < j->nt && !plain_1x1(l); t++)
        if (!lps_scratch_get(&conv_slots(j, t)[S_COL], kk * np, "conv2d")) return LPS_ENOMEM;
    return LPS_OK;
}

static void gemm_fwd(const convjob *j, int t, int64_t n0, int64_t n1)
{
    const lps_layer *l = j->l;
    int64_t kk = l->CIN * l->KS * l->KS, np = j->oh * j->ow, cout = l->COUT;
    const float *wt = l->param[0]->data, *bias = l->param[1]->data;
    float *col = conv_slots(j, t)[S_COL].p;
    for (int64_t n = n0; n < n1; n++) {
        const float *xn = j->x + n * l->CIN * j->h * j->w;
        float *yn = j->y + n * cout * np;
        if (plain_1x1(l))
            col = (float *)xn; /* only read */
        else
            im2col(l, xn, j->h, j->w, j->oh, j->ow, col, np);
        /* y_n (cout x P) = W (cout x K) col (K x P), then + bias */
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
    int64_t kk = l->CIN * l->KS * l->KS, np = j->oh * j->ow, cout = l->COUT;
    int64_t in_size = l->CIN * j->h * j->w;
    const float *wt = l->param[0]->data;
    float *gw = conv_gw(j, t), *gb = conv_gb(j, t), *col = conv_slots(j, t)[S_COL].p;
    for (int64_t n = n0; n < n1; n++) {
        const float *xn = j->x + n * in_size, *gn = j->gy + n * cout * np;
        for (int64_t c = 0; c < cout; c++) gb[c] += lps_sum_floats(gn + c * np, np);
        const float *cn = plain_1x1(l) ? xn : col;
        if (!plain_1x1(l)) im2col(l, xn, j->h, j->w, j->oh, j->ow, col, np);
        /* dW (cout x K) += gy_n (cout x P) col^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)cout, (int)kk, (int)np, 1.0f, gn,
                    (int)np, cn, (int)np, 1.0f, gw, (int)kk);
        if (!j->gx) continue;
        /* dcol (K x P) = W^T gy_n, folded back onto the sample's input */
        float *gxn = j->gx + n * in_size, *dcol = plain_1x1(l) ? gxn : col;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)kk, (int)np, (int)cout, 1.0f, wt,
                    (int)kk, gn, (int)np, 0.0f, dcol, (int)np);
        if (!plain_1x1(l)) col2im(l, col, np, j->h, j->w, j->oh, j->ow, gxn);
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
    return j->nt == 1 ? j->l->grad[1]->data : conv_slots(j, t)[CONV_PART].p + j->l->grad[0]->numel;
}

static const convkernel *kernel_of(const lps_layer *l)
{
    if (lps_direct_applies(l)) return &lps_conv_direct;
    if (lps_wino_applies(l)) return &lps_conv_wino;
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
    double macs = (double)b * (double)np * (double)(l->COUT * l->CIN * l->KS * l->KS);
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
    int64_t part = l->grad[0]->numel + l->grad[1]->numel;
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
    for (int t = 0; t < j.nt && backward && j.nt > 1; t++) {
        const float *p = conv_slots(&j, t)[CONV_PART].p;
        float *gw = l->grad[0]->data, *gb = l->grad[1]->data;
        int64_t nw = l->grad[0]->numel;
        for (int64_t i = 0; i < nw; i++) gw[i] += p[i];
        for (int64_t i = 0; i < l->grad[1]->numel; i++) gb[i] += p[nw + i];
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
    free(p);
}

static const lps_layer_ops conv_ops = {LPS_LAYER_CONV2D, "conv2d", conv_out_shape, conv_forward,
                                       conv_backward, conv_destroy};

lps_layer *lps_conv2d_new(int64_t cin, int64_t cout, int64_t k, int64_t stride, int64_t padding,
                          lps_rng *init)
{
    const int64_t lim = 1 << 20;
    if (cin < 1 || cout < 1 || k < 1 || stride < 1 || padding < 0 || cin > lim || cout > lim ||
        k > 1024 || stride > 1024 || padding > 1024) {
        lps_fail(LPS_EINVAL, "conv2d: need positive channels, kernel and stride and padding >= 0, "
                 "got %lld -> %lld, k=%lld, stride=%lld, padding=%lld", (long long)cin,
                 (long long)cout, (long long)k, (long long)stride, (long long)padding);
        return NULL;
    }
    lps_layer *l = lps_layer_alloc(&conv_ops);
    if (!l) return NULL;
    int64_t cfg[5] = {cin, cout, k, stride, padding};
    memcpy(l->cfg, cfg, sizeof cfg);
    l->priv = calloc(1, sizeof(convpriv));
    int64_t wshape[4] = {cout, cin, k, k};
    if (!l->priv ||
        lps_layer_add_params(l, 4, wshape, cout, 1.0 / sqrt((double)(cin * k * k)), init)) {
        lps_layer_free(l);
        lps_fail(LPS_ENOMEM, "conv2d: cannot allocate %lld -> %lld, k=%lld", (long long)cin,
                 (long long)cout, (long long)k);
        return NULL;
    }
    return l;
}
