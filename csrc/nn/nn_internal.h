/* nn_internal.h - helpers shared by the layer files (not public API). */
#ifndef LPS_NN_INTERNAL_H
#define LPS_NN_INTERNAL_H

#include "core/internal.h"

/* A zeroed layer with one reference; NULL with an error set on failure. */
lps_layer *lps_layer_alloc(const lps_layer_ops *ops);
/* Give l a weight of the given shape and a bias of `nbias` values, both with
 * zeroed gradients, filled uniform in +-bound from r (weight first). */
lps_status lps_layer_add_params(lps_layer *l, int wdim, const int64_t *wshape, int64_t nbias,
                                double bound, lps_rng *r);

/* A header over t's data with another shape (no allocation; never freed). */
static inline lps_tensor lps_view_as(const lps_tensor *t, int ndim, const int64_t *shape)
{
    lps_tensor v = *t;
    v.ndim = ndim;
    v.numel = 1;
    for (int i = 0; i < LPS_MAX_DIMS; i++) {
        v.shape[i] = i < ndim ? shape[i] : 1;
        if (i < ndim) v.numel *= shape[i];
    }
    return v;
}

/* Sum of n floats in a fixed order (8 interleaved partial sums, so the adds
 * do not wait on each other; the order never depends on the machine). */
float lps_sum_floats(const float *x, int64_t n);

/* Grow-only scratch floats owned by a layer. */
typedef struct { float *p; int64_t n; } lps_scratch;
float *lps_scratch_get(lps_scratch *s, int64_t n, const char *op);
void lps_scratch_free(lps_scratch *s);

/* Threads for the layers' own loops (nn/parallel.c): at most LPS_PAR_MAX,
 * as many as BLAS is set to use. lps_par_run calls fn(ctx, t, nt) for
 * t = 0..nt-1, t = 0 on the calling thread, BLAS set to one thread meanwhile;
 * lps_par_range gives part t of n items. */
#define LPS_PAR_MAX 8
typedef void (*lps_task_fn)(void *ctx, int t, int nt);
int lps_par_threads(void);
void lps_par_run(int nt, lps_task_fn fn, void *ctx);
void lps_par_range(int64_t n, int t, int nt, int64_t *lo, int64_t *hi);

#endif
