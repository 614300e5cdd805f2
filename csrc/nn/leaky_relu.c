/* leaky_relu.c - x for x > 0, else slope x, element-wise (PyTorch's
 * LeakyReLU: the gradient at 0 is slope's, as its backward takes x > 0). */
#include "nn/nn_internal.h"

#include <float.h>
#include <stdio.h>

static lps_status leaky_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    float a = (float)l->cfg.v[0];
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i];
        y->data[i] = v > 0.0f ? v : v * a;
    }
    return LPS_OK;
}

static lps_status leaky_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                 const lps_tensor *gy, lps_tensor *gx)
{
    (void)y;
    if (!gx) return LPS_OK;
    float a = (float)l->cfg.v[0];
    for (int64_t i = 0; i < x->numel; i++) gx->data[i] = x->data[i] > 0.0f ? gy->data[i] : gy->data[i] * a;
    return LPS_OK;
}

static void leaky_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    snprintf(buf, n, "LeakyReLU(negative_slope=%g)", e->v[0]);
}

static const lps_field leaky_fields[] = {{"slope", LPS_FIELD_REAL, -DBL_MAX, DBL_MAX, 0.01, 0},
                                         {NULL, 0, 0, 0, 0, 0}};

/* leaky_relu(a x) = a leaky_relu(x) for a > 0, the same map on every
 * channel: the weight-space methods see through it. */
const lps_layer_type lps_leaky_relu_type = {
    .name = "leaky_relu", .fields = leaky_fields, .flags = LPS_LT_CHANNELWISE, .flow = lps_flow_same,
    .forward = leaky_forward, .backward = leaky_backward, .repr = leaky_repr};
