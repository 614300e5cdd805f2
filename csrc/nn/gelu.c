/* gelu.c - the exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, element-
 * wise (PyTorch's GELU(approximate='none')), in double and rounded once. */
#include "nn/nn_internal.h"

#include <math.h>
#include <stdio.h>

#define SQRT1_2 0.70710678118654752440     /* 1 / sqrt(2) */
#define INV_SQRT_2PI 0.39894228040143267794 /* 1 / sqrt(2 pi) */

static lps_status gelu_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    (void)l;
    for (int64_t i = 0; i < x->numel; i++) {
        double v = x->data[i];
        y->data[i] = (float)(0.5 * v * (1.0 + erf(v * SQRT1_2)));
    }
    return LPS_OK;
}

/* d/dx = Phi(x) + x phi(x), from the input. */
static lps_status gelu_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    (void)l;
    (void)y;
    if (!gx) return LPS_OK;
    for (int64_t i = 0; i < x->numel; i++) {
        double v = x->data[i];
        double d = 0.5 * (1.0 + erf(v * SQRT1_2)) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
        gx->data[i] = (float)(gy->data[i] * d);
    }
    return LPS_OK;
}

static void gelu_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "GELU(approximate='none')");
}

static const lps_field no_fields[] = {{NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_gelu_type = {
    .name = "gelu", .fields = no_fields, .flow = lps_flow_same, .forward = gelu_forward,
    .backward = gelu_backward, .repr = gelu_repr};
