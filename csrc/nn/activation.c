/* activation.c - relu, tanh and flatten: shape-free element-wise layers. */
#include "nn/nn_internal.h"

#include <math.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

static lps_status same_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                             int64_t *out)
{
    (void)l;
    *ondim = ndim;
    memcpy(out, in, sizeof(int64_t) * (size_t)ndim);
    return LPS_OK;
}

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

static lps_status flat_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                                 int64_t *out)
{
    (void)l;
    if (ndim < 2)
        return lps_fail(LPS_ESHAPE, "flatten: input needs a batch dimension and at least one more, "
                        "got %d dimension", ndim);
    int64_t rest = 1;
    for (int i = 1; i < ndim; i++) rest *= in[i];
    *ondim = 2;
    out[0] = in[0];
    out[1] = rest;
    return LPS_OK;
}

static lps_status flat_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    (void)l;
    if (x->numel && y->data != x->data)
        memcpy(y->data, x->data, (size_t)x->numel * sizeof(float));
    return LPS_OK;
}

static lps_status flat_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    (void)l;
    (void)y;
    if (gx && x->numel && gx->data != gy->data)
        memcpy(gx->data, gy->data, (size_t)x->numel * sizeof(float));
    return LPS_OK;
}

static const lps_layer_ops relu_ops = {LPS_LAYER_RELU, "relu", same_shape, relu_forward, relu_backward,
                                       NULL};
static const lps_layer_ops tanh_ops = {LPS_LAYER_TANH, "tanh", same_shape, tanh_forward, tanh_backward,
                                       NULL};
static const lps_layer_ops flat_ops = {LPS_LAYER_FLATTEN, "flatten", flat_out_shape, flat_forward,
                                       flat_backward, NULL};

lps_layer *lps_relu_new(void) { return lps_layer_alloc(&relu_ops); }
lps_layer *lps_tanh_new(void) { return lps_layer_alloc(&tanh_ops); }
lps_layer *lps_flatten_new(void) { return lps_layer_alloc(&flat_ops); }
