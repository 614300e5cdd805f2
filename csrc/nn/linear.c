/* linear.c - y = x W^T + b with PyTorch's layout (W is out x in). */
#include "nn/nn_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static lps_status lin_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                                int64_t *out)
{
    if (ndim != 2 || in[1] != l->cfg[0] || in[0] > INT32_MAX) {
        lps_tensor t = {.ndim = ndim};
        for (int i = 0; i < ndim; i++) t.shape[i] = in[i];
        return lps_fail(LPS_ESHAPE, "linear(%lld -> %lld): input %s should be (batch x %lld)%s",
                        (long long)l->cfg[0], (long long)l->cfg[1], SH(&t), (long long)l->cfg[0],
                        ndim > 2 ? "; put a flatten() before it" : "");
    }
    *ondim = 2;
    out[0] = in[0];
    out[1] = l->cfg[1];
    return LPS_OK;
}

static lps_status lin_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    int b = (int)x->shape[0], in = (int)l->cfg[0], out = (int)l->cfg[1];
    const float *bias = l->param[1]->data;
    for (int r = 0; r < b; r++) memcpy(y->data + (int64_t)r * out, bias, (size_t)out * sizeof(float));
    if (b && in)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, out, in, 1.0f, x->data, in,
                    l->param[0]->data, in, 1.0f, y->data, out);
    return LPS_OK;
}

static lps_status lin_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                               const lps_tensor *gy, lps_tensor *gx)
{
    (void)y;
    int b = (int)x->shape[0], in = (int)l->cfg[0], out = (int)l->cfg[1];
    if (b == 0) {
        return LPS_OK;
    }
    /* dW += gy^T x; db += column sums of gy; dx = gy W */
    if (in && !l->frozen)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, b, 1.0f, gy->data, out,
                    x->data, in, 1.0f, l->grad[0]->data, in);
    float *gb = l->grad[1]->data;
    for (int r = 0; r < b && !l->frozen; r++) {
        const float *g = gy->data + (int64_t)r * out;
        for (int j = 0; j < out; j++) gb[j] += g[j];
    }
    if (gx && in) {
        if (out)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, in, out, 1.0f, gy->data, out,
                        l->param[0]->data, in, 0.0f, gx->data, in);
        else
            memset(gx->data, 0, (size_t)gx->numel * sizeof(float));
    }
    return LPS_OK;
}

static const lps_layer_ops lin_ops = {LPS_LAYER_LINEAR, "linear", lin_out_shape, lin_forward,
                                      lin_backward, NULL};

lps_layer *lps_linear_new(int64_t in, int64_t out, lps_rng *init)
{
    if (in < 1 || out < 1 || in > INT32_MAX / 2 || out > INT32_MAX / 2) {
        lps_fail(LPS_EINVAL, "linear: sizes must be positive, got %lld -> %lld", (long long)in,
                 (long long)out);
        return NULL;
    }
    lps_layer *l = lps_layer_alloc(&lin_ops);
    if (!l) return NULL;
    l->cfg[0] = in;
    l->cfg[1] = out;
    int64_t wshape[2] = {out, in};
    if (lps_layer_add_params(l, 2, wshape, out, 1.0 / sqrt((double)in), init)) {
        lps_layer_free(l);
        return NULL;
    }
    return l;
}
