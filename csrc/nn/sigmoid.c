/* sigmoid.c - 1 / (1 + exp(-x)), element-wise. */
#include "nn/nn_internal.h"

#include <stdio.h>

static lps_status sigmoid_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    (void)l;
    return lps_unary(y, x, LPS_SIGMOID);
}

/* From the output: s' = s (1 - s). */
static lps_status sigmoid_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                   const lps_tensor *gy, lps_tensor *gx)
{
    (void)l;
    if (!gx) return LPS_OK;
    const float *s = y->data, *g = gy->data;
    for (int64_t i = 0; i < x->numel; i++) gx->data[i] = g[i] * (s[i] * (1.0f - s[i]));
    return LPS_OK;
}

static void sigmoid_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "Sigmoid()");
}

static const lps_field no_fields[] = {{NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_sigmoid_type = {
    .name = "sigmoid", .fields = no_fields, .flow = lps_flow_same, .forward = sigmoid_forward,
    .backward = sigmoid_backward, .repr = sigmoid_repr};
