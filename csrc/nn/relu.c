/* relu.c - max(0, x), element-wise. */
#include "nn/nn_internal.h"
#include "nn/simd.h"

#include <stdio.h>
#include <string.h>

/* Branch-free (signs of activations are random, so branches mispredict) and
 * NaN-preserving like PyTorch: RELU8 keeps x when x is NaN or -0, the same
 * as the scalar x < 0 ? 0 : x. Backward: the subgradient at 0 is 0, as in
 * PyTorch. Large tensors are split over threads. */
typedef struct {
    const float *a, *g;
    float *o;
    int64_t n;
} relujob;

/* o = relu(a) over [i, end), or with g the gradient g where a > 0 (else +0);
 * 8 floats at a time, each lane the scalar's result. */
KERNEL static void relu_range(const float *a, const float *g, float *o, int64_t i, int64_t end)
{
    if (!g) {
        for (; i + 8 <= end; i += 8) ST8(o + i, RELU8(LD8(a + i)));
        for (; i < end; i++) o[i] = a[i] < 0.0f ? 0.0f : a[i];
        return;
    }
    for (; i + 8 <= end; i += 8) ST8(o + i, (v8)((v8i)LD8(g + i) & (v8i)(LD8(a + i) > BC8(0.0f))));
    for (; i < end; i++) o[i] = a[i] > 0.0f ? g[i] : 0.0f;
}

static void relu_part(void *ctx, int t, int nt)
{
    const relujob *j = ctx;
    int64_t i, end;
    lps_par_range(j->n, t, nt, &i, &end);
    relu_range(j->a, j->g, j->o, i, end);
}

static void relu_run(const float *a, const float *g, float *o, int64_t n)
{
    relujob j = {a, g, o, n};
    lps_par_run(n >= (1 << 18) ? lps_par_threads() : 1, relu_part, &j);
}

static lps_status relu_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    (void)l;
    relu_run(x->data, NULL, y->data, x->numel);
    return LPS_OK;
}

static lps_status relu_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    (void)l;
    (void)y;
    if (gx) relu_run(x->data, gy->data, gx->data, x->numel);
    return LPS_OK;
}

static void relu_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "ReLU()");
}

static const lps_field no_fields[] = {{NULL, 0, 0, 0, 0, 0}};

/* Positive-homogeneous (relu(a x) = a relu(x) for a > 0): chain
 * normalization and the weight-space methods see through it. */
const lps_layer_type lps_relu_type = {
    .name = "relu", .fields = no_fields, .flags = LPS_LT_CHANNELWISE | LPS_LT_SIGN_GATE | LPS_LT_RELU,
    .flow = lps_flow_same, .forward = relu_forward, .backward = relu_backward, .repr = relu_repr};
