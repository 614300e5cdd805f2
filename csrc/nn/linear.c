/* linear.c - y = x W^T + b with PyTorch's layout (W is out x in); without
 * a bias ("bias": false) y = x W^T. */
#include "nn/nn_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static lps_status lin_flow(const lps_arch_entry *e, lps_flow *f)
{
    int64_t in = FI(e, 0), out = FI(e, 1);
    if (f->rank > 1)
        return lps_flow_fail(f, LPS_ESHAPE, "needs flat features but %s gives %s: put a flatten "
                             "before it", f->from, FSH(f->rank, f->d));
    if (f->rank == 1 && f->d[0] != LPS_ARCH_UNKNOWN && f->d[0] != in) {
        if (f->flat)
            return lps_flow_fail(f, LPS_ESHAPE, "\"in\" is %lld but %s gives %lld features: %s "
                                 "flattened", (long long)in, f->from, (long long)f->d[0],
                                 FSH(3, f->pre));
        return lps_flow_fail(f, LPS_ESHAPE, "\"in\" is %lld but %s gives %lld features",
                             (long long)in, f->from, (long long)f->d[0]);
    }
    if (f->rank == 1 && f->d[0] == LPS_ARCH_UNKNOWN && in % f->mult != 0)
        return lps_flow_fail(f, LPS_ESHAPE, "\"in\" is %lld, not a multiple of the %lld channels "
                             "flattened before it (channels x height x width)", (long long)in,
                             (long long)f->mult);
    f->rank = 1;
    f->d[0] = out;
    f->flat = 0;
    f->mult = 1;
    return LPS_OK;
}

static lps_status lin_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    int b = (int)x->shape[0], in = (int)FI(&l->cfg, 0), out = (int)FI(&l->cfg, 1);
    const float *bias = l->nparams > 1 ? l->param[1]->data : NULL;
    if (!bias && y->numel) memset(y->data, 0, (size_t)y->numel * sizeof(float));
    for (int r = 0; r < b && bias; r++) memcpy(y->data + (int64_t)r * out, bias, (size_t)out * sizeof(float));
    if (b && in)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, out, in, 1.0f, x->data, in,
                    l->param[0]->data, in, 1.0f, y->data, out);
    return LPS_OK;
}

static lps_status lin_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                               const lps_tensor *gy, lps_tensor *gx)
{
    (void)y;
    int b = (int)x->shape[0], in = (int)FI(&l->cfg, 0), out = (int)FI(&l->cfg, 1);
    if (b == 0) {
        return LPS_OK;
    }
    /* dW += gy^T x; db += column sums of gy; dx = gy W */
    if (in && !l->frozen)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, b, 1.0f, gy->data, out,
                    x->data, in, 1.0f, l->grad[0]->data, in);
    float *gb = l->nparams > 1 ? l->grad[1]->data : NULL;
    for (int r = 0; r < b && !l->frozen && gb; r++) {
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

static lps_status lin_create(lps_layer *l, lps_rng *init)
{
    int64_t in = FI(&l->cfg, 0), out = FI(&l->cfg, 1), wshape[2] = {out, in};
    double bound = 1.0 / sqrt((double)in);
    if (lps_layer_add_param(l, "weight", 2, wshape, bound, init) ||
        (FI(&l->cfg, 2) && lps_layer_add_param(l, "bias", 1, &out, bound, init)))
        return LPS_ENOMEM;
    return LPS_OK;
}

static void lin_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    snprintf(buf, n, "Linear(in_features=%lld, out_features=%lld%s)", (long long)FI(e, 0),
             (long long)FI(e, 1), FI(e, 2) ? "" : ", bias=False");
}

static const lps_field lin_fields[] = {{"in", LPS_FIELD_INT, 1, INT32_MAX / 2, LPS_REQUIRED, 0},
                                       {"out", LPS_FIELD_INT, 1, INT32_MAX / 2, LPS_REQUIRED, 0},
                                       {"bias", LPS_FIELD_BOOL, 0, 1, 1, 1},
                                       {NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_linear_type = {
    .name = "linear", .fields = lin_fields, .flags = LPS_LT_WEIGHTED | LPS_LT_AFFINE, .flow = lin_flow,
    .create = lin_create, .forward = lin_forward, .backward = lin_backward, .repr = lin_repr};
