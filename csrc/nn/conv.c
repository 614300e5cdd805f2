/* conv.c - 2-D convolution (cross-correlation, as PyTorch) by im2col + sgemm
 * over groups of samples, so each GEMM is large enough to run (and thread) well. */
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

/* Samples per GEMM: enough columns for BLAS to run well (and to split over
 * threads), while the column buffer stays near 4 MB. */
static int64_t group_size(const lps_layer *l, int64_t batch, int64_t np)
{
    int64_t kk = l->CIN * l->KS * l->KS;
    int64_t g = ((int64_t)1 << 20) / (kk * np > 0 ? kk * np : 1);
    if (g < 1) g = 1;
    return g < batch ? g : batch;
}

typedef struct {
    int64_t b, h, w, oh, ow, np, kk, cout, group;
    float *col, *gcol, *tmp;
} convjob;

static lps_status conv_setup(lps_layer *l, const lps_tensor *x, const lps_tensor *y, int need_gcol,
                             convjob *j, const char *op)
{
    convpriv *p = l->priv;
    j->b = x->shape[0];
    j->h = x->shape[2];
    j->w = x->shape[3];
    j->oh = y->shape[2];
    j->ow = y->shape[3];
    j->np = j->oh * j->ow;
    j->kk = l->CIN * l->KS * l->KS;
    j->cout = l->COUT;
    j->group = group_size(l, j->b, j->np);
    int64_t cols = j->group * j->np;
    j->col = lps_scratch_get(&p->s[0], j->kk * cols, op);
    j->tmp = lps_scratch_get(&p->s[1], j->cout * cols, op);
    j->gcol = need_gcol ? lps_scratch_get(&p->s[2], j->kk * cols, op) : NULL;
    if (!j->col || !j->tmp || (need_gcol && !j->gcol)) return LPS_ENOMEM;
    return LPS_OK;
}

static lps_status conv_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    convdims d = {x->shape[0], x->shape[2], x->shape[3], y->shape[2], y->shape[3]};
    if (lps_direct_applies(l)) return lps_direct_forward(l, &d, x->data, y->data);
    if (lps_wino_applies(l)) return lps_wino_forward(l, &d, x->data, y->data);
    convjob j;
    if (conv_setup(l, x, y, 0, &j, "conv2d")) return LPS_ENOMEM;
    const float *wt = l->param[0]->data, *bias = l->param[1]->data;
    int64_t in_size = l->CIN * j.h * j.w, out_size = j.cout * j.np;
    for (int64_t n0 = 0; n0 < j.b; n0 += j.group) {
        int64_t g = j.b - n0 < j.group ? j.b - n0 : j.group, ld = g * j.np;
        for (int64_t s = 0; s < g; s++)
            im2col(l, x->data + (n0 + s) * in_size, j.h, j.w, j.oh, j.ow, j.col + s * j.np, ld);
        /* tmp (cout x g*P) = W (cout x K) col (K x g*P) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)j.cout, (int)ld, (int)j.kk,
                    1.0f, wt, (int)j.kk, j.col, (int)ld, 0.0f, j.tmp, (int)ld);
        for (int64_t s = 0; s < g; s++) {
            float *ys = y->data + (n0 + s) * out_size;
            for (int64_t c = 0; c < j.cout; c++) {
                const float *src = j.tmp + c * ld + s * j.np;
                float *dst = ys + c * j.np, bc = bias[c];
                for (int64_t i = 0; i < j.np; i++) dst[i] = src[i] + bc;
            }
        }
    }
    return LPS_OK;
}

static lps_status conv_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    convdims d = {x->shape[0], x->shape[2], x->shape[3], y->shape[2], y->shape[3]};
    if (lps_direct_applies(l))
        return lps_direct_backward(l, &d, x->data, gy->data, gx ? gx->data : NULL);
    if (lps_wino_applies(l))
        return lps_wino_backward(l, &d, x->data, gy->data, gx ? gx->data : NULL);
    convjob j;
    if (conv_setup(l, x, y, gx != NULL, &j, "conv2d backward")) return LPS_ENOMEM;
    const float *wt = l->param[0]->data;
    float *gw = l->grad[0]->data, *gb = l->grad[1]->data;
    int64_t in_size = l->CIN * j.h * j.w, out_size = j.cout * j.np;
    for (int64_t n0 = 0; n0 < j.b; n0 += j.group) {
        int64_t g = j.b - n0 < j.group ? j.b - n0 : j.group, ld = g * j.np;
        /* tmp (cout x g*P): the group's output gradients side by side */
        for (int64_t s = 0; s < g; s++)
            for (int64_t c = 0; c < j.cout; c++)
                memcpy(j.tmp + c * ld + s * j.np, gy->data + (n0 + s) * out_size + c * j.np,
                       (size_t)j.np * sizeof(float));
        for (int64_t c = 0; c < j.cout; c++) gb[c] += lps_sum_floats(j.tmp + c * ld, ld);
        for (int64_t s = 0; s < g; s++)
            im2col(l, x->data + (n0 + s) * in_size, j.h, j.w, j.oh, j.ow, j.col + s * j.np, ld);
        /* dW (cout x K) += tmp (cout x g*P) col^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j.cout, (int)j.kk, (int)ld, 1.0f,
                    j.tmp, (int)ld, j.col, (int)ld, 1.0f, gw, (int)j.kk);
        if (!gx) continue;
        /* dcol (K x g*P) = W^T tmp, folded back onto each sample's input */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)j.kk, (int)ld, (int)j.cout, 1.0f,
                    wt, (int)j.kk, j.tmp, (int)ld, 0.0f, j.gcol, (int)ld);
        for (int64_t s = 0; s < g; s++)
            col2im(l, j.gcol + s * j.np, ld, j.h, j.w, j.oh, j.ow, gx->data + (n0 + s) * in_size);
    }
    return LPS_OK;
}

static void conv_destroy(lps_layer *l)
{
    convpriv *p = l->priv;
    if (!p) return;
    for (int i = 0; i < CONV_NSCRATCH; i++) lps_scratch_free(&p->s[i]);
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
