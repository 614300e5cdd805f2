/* relu.c - max(0, x), element-wise. */
#include "nn/nn_internal.h"

#include <stdio.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Branch-free (signs of activations are random, so branches mispredict) and
 * NaN-preserving like PyTorch: max(0, x) in SSE returns x when x is NaN, the
 * same as the scalar x < 0 ? 0 : x. Backward: the subgradient at 0 is 0, as
 * in PyTorch. Large tensors are split over threads. */
typedef struct {
    const float *a, *g;
    float *o;
    int64_t n;
} relujob;

static void relu_part(void *ctx, int t, int nt)
{
    const relujob *j = ctx;
    int64_t i, end;
    lps_par_range(j->n, t, nt, &i, &end);
    const float *a = j->a, *g = j->g;
    float *o = j->o;
#ifdef __SSE2__
    __m128 zero = _mm_setzero_ps();
    if (!g)
        for (; i + 4 <= end; i += 4) _mm_storeu_ps(o + i, _mm_max_ps(zero, _mm_loadu_ps(a + i)));
    else
        for (; i + 4 <= end; i += 4)
            _mm_storeu_ps(o + i, _mm_and_ps(_mm_cmpgt_ps(_mm_loadu_ps(a + i), zero), _mm_loadu_ps(g + i)));
#endif
    for (; i < end; i++) o[i] = g ? (a[i] > 0.0f ? g[i] : 0.0f) : (a[i] < 0.0f ? 0.0f : a[i]);
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
