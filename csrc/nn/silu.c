/* silu.c - x sigmoid(x) = x / (1 + exp(-x)), element-wise, PyTorch's
 * formula: exp overflows to inf for x below about -88, giving -0, not NaN. */
#include "nn/nn_internal.h"

#include <math.h>
#include <stdio.h>

static lps_status silu_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    (void)l;
    for (int64_t i = 0; i < x->numel; i++) y->data[i] = x->data[i] / (1.0f + expf(-x->data[i]));
    return LPS_OK;
}

/* d/dx = s (1 + x (1 - s)) with s = sigmoid(x), from the input. */
static lps_status silu_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    (void)l;
    (void)y;
    if (!gx) return LPS_OK;
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i], s = 1.0f / (1.0f + expf(-v));
        gx->data[i] = gy->data[i] * (s * (1.0f + v * (1.0f - s)));
    }
    return LPS_OK;
}

static void silu_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "SiLU()");
}

static const lps_field no_fields[] = {{NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_silu_type = {
    .name = "silu", .fields = no_fields, .flow = lps_flow_same, .forward = silu_forward,
    .backward = silu_backward, .repr = silu_repr};
