/* tanh.c - the hyperbolic tangent, element-wise. */
#include "nn/nn_internal.h"

#include <math.h>
#include <stdio.h>

static lps_status tanh_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    (void)l;
    for (int64_t i = 0; i < x->numel; i++) y->data[i] = tanhf(x->data[i]);
    return LPS_OK;
}

static lps_status tanh_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    (void)l;
    if (!gx) return LPS_OK;
    const float *t = y->data, *g = gy->data;
    for (int64_t i = 0; i < x->numel; i++) gx->data[i] = g[i] * (1.0f - t[i] * t[i]);
    return LPS_OK;
}

static void tanh_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "Tanh()");
}

static const lps_field no_fields[] = {{NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_tanh_type = {
    .name = "tanh", .fields = no_fields, .flow = lps_flow_same, .forward = tanh_forward,
    .backward = tanh_backward, .repr = tanh_repr};
