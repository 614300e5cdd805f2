/*
 * lualps.h - the whole public C API of lualps.
 *
 * Conventions
 *  - Every fallible function returns an lps_status (LPS_OK == 0) or NULL, and
 *    leaves a message naming the operation and the offending values in a
 *    thread-local buffer read with lps_errmsg(). The library never prints,
 *    never exits, never aborts.
 *  - Tensors are float32, 1 to 4 dimensions, contiguous row-major. Indices in
 *    C are 0-based (the Lua binding converts to and from 1-based).
 *  - Ownership: whoever calls lps_tensor_new / _view / _clone owns the
 *    returned lps_tensor and releases it with lps_tensor_free. Storage is
 *    reference counted, so a view keeps its parent's data alive.
 *  - Operations write into an output tensor the caller allocated (so loops
 *    can reuse buffers); out may alias an input for element-wise operations.
 */
#ifndef LUALPS_H
#define LUALPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LPS_VERSION "0.1.0"
#define LPS_MAX_DIMS 4
/* Largest element count of one tensor: 2^40 floats (4 TiB) is beyond any
 * machine we target, and keeps every byte count far from overflow. */
#define LPS_MAX_NUMEL ((int64_t)1 << 40)

/* ------------------------------------------------------------------ errors */

typedef enum {
    LPS_OK = 0,
    LPS_EINVAL,   /* bad argument value */
    LPS_ESHAPE,   /* shapes do not fit the operation */
    LPS_ERANGE,   /* index out of range */
    LPS_ENOMEM,   /* allocation failed or size too large */
    LPS_EIO,      /* file could not be read or written */
    LPS_EFORMAT,  /* file content is malformed or corrupt */
    LPS_ENUMERIC  /* NaN or infinity where a finite number is needed */
} lps_status;

/* Message of the last failure on this thread ("" if none). */
const char *lps_errmsg(void);
/* Record a failure (printf-style); returns s so callers can `return lps_fail(...)`. */
lps_status lps_fail(lps_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
const char *lps_status_name(lps_status s);

/* ---------------------------------------------------------------- threads */

/* BLAS threads used by matrix products (OpenBLAS). */
void lps_set_num_threads(int n);
int lps_get_num_threads(void);

/* ------------------------------------------------------------------ random */

/* xoshiro256** (Blackman & Vigna), seeded through splitmix64: the same seed
 * gives the same stream on every platform. */
typedef struct lps_rng {
    uint64_t s[4];
    int has_spare;   /* Box-Muller produces normals in pairs */
    double spare;
} lps_rng;

void lps_rng_seed(lps_rng *r, uint64_t seed);
uint64_t lps_rng_next(lps_rng *r);
double lps_rng_uniform(lps_rng *r);            /* [0, 1), 53 bits */
double lps_rng_normal(lps_rng *r);             /* mean 0, sd 1 */
uint64_t lps_rng_below(lps_rng *r, uint64_t n); /* [0, n), unbiased; n > 0 */
void lps_rng_shuffle(lps_rng *r, int64_t *v, int64_t n); /* Fisher-Yates */

/* ----------------------------------------------------------------- tensors */

typedef struct lps_storage lps_storage; /* opaque, reference counted */

/* Fields are read-only for users; use the functions below to change them. */
typedef struct lps_tensor {
    lps_storage *storage;
    float *data;                  /* first element (storage data + offset) */
    int ndim;                     /* 1..LPS_MAX_DIMS */
    int64_t shape[LPS_MAX_DIMS];  /* unused trailing entries are 1 */
    int64_t numel;
} lps_tensor;

/* Check a shape (1..4 dims, each >= 0, product <= LPS_MAX_NUMEL). */
lps_status lps_shape_check(const char *op, int ndim, const int64_t *shape, int64_t *numel);
/* Format a shape as "(2x3)" into buf; returns buf. */
const char *lps_shape_str(const lps_tensor *t, char *buf, size_t n);

lps_tensor *lps_tensor_new(int ndim, const int64_t *shape);     /* zero-filled */
lps_tensor *lps_tensor_empty(int ndim, const int64_t *shape);   /* uninitialised */
lps_tensor *lps_tensor_new2(int64_t rows, int64_t cols);         /* shorthand */
lps_tensor *lps_tensor_clone(const lps_tensor *t);               /* deep copy */
/* A new header over the same storage: `count` rows (first dim) from `start`. */
lps_tensor *lps_tensor_rows(const lps_tensor *t, int64_t start, int64_t count);
/* A new header over the same storage with another shape of equal numel. */
lps_tensor *lps_tensor_reshape(const lps_tensor *t, int ndim, const int64_t *shape);
void lps_tensor_free(lps_tensor *t);
/* Views over one storage share its reference count (for tests and debugging). */
int lps_tensor_refcount(const lps_tensor *t);
int lps_same_shape(const lps_tensor *a, const lps_tensor *b);

lps_status lps_fill(lps_tensor *t, float v);
lps_status lps_copy(lps_tensor *dst, const lps_tensor *src);  /* same numel */
lps_status lps_arange(lps_tensor *t);                          /* 0, 1, 2, ... */
lps_status lps_rand(lps_tensor *t, lps_rng *r, float lo, float hi);
lps_status lps_randn(lps_tensor *t, lps_rng *r, float mean, float sd);
/* out (2-D, t's cols x rows) = transpose of t (2-D). */
lps_status lps_transpose(lps_tensor *out, const lps_tensor *t);
/* out[i,:] = a[idx[i],:] with 0-based idx; out has n rows. */
lps_status lps_index_rows(lps_tensor *out, const lps_tensor *a, const int64_t *idx, int64_t n);

/* C = alpha * op(A) op(B) + beta * C, op = transpose when ta/tb; 2-D only. */
lps_status lps_matmul(lps_tensor *c, const lps_tensor *a, int ta,
                      const lps_tensor *b, int tb, float alpha, float beta);

typedef enum { LPS_ADD, LPS_SUB, LPS_MUL, LPS_DIV } lps_binop;
/* out = a op b, where b has a's shape, or is a row vector (numel equal to
 * a's last dimension) broadcast over the rows of a. */
lps_status lps_binary(lps_tensor *out, const lps_tensor *a, lps_binop op, const lps_tensor *b);
/* out = a op s; with swap, out = s op a. */
lps_status lps_binary_scalar(lps_tensor *out, const lps_tensor *a, lps_binop op, float s, int swap);
/* y += alpha * x (same numel). */
lps_status lps_axpy(lps_tensor *y, float alpha, const lps_tensor *x);

typedef enum {
    LPS_EXP, LPS_LOG, LPS_SQRT, LPS_ABS, LPS_RELU, LPS_SIGMOID, LPS_TANH, LPS_NEG
} lps_unop;
lps_status lps_unary(lps_tensor *out, const lps_tensor *a, lps_unop op);

typedef enum { LPS_SUM, LPS_MEAN, LPS_MAX, LPS_MIN, LPS_ARGMAX, LPS_NORM } lps_redop;
/* Over all elements (ARGMAX gives the 0-based flat index). Empty tensors:
 * sum 0, norm 0; mean/max/min/argmax fail with LPS_EINVAL. */
lps_status lps_reduce_all(const lps_tensor *a, lps_redop op, double *result);
/* Over dimension dim (0-based); out has a's shape without that dimension
 * (a 1-D input reduces to a 1-element tensor). ARGMAX writes 0-based indices. */
lps_status lps_reduce_dim(lps_tensor *out, const lps_tensor *a, int dim, lps_redop op);
/* The shape lps_reduce_dim writes; returns its ndim. */
int lps_reduce_shape(const lps_tensor *a, int dim, int64_t *shape);

/* |a - b| <= atol + rtol * |b| everywhere (shapes must match; NaN never close). */
int lps_allclose(const lps_tensor *a, const lps_tensor *b, float rtol, float atol);

/* ------------------------------------------------- layers and training */
/* (nn: linear.c, conv.c, activation.c, loss.c, optim.c, model.c, train.c, data.c) */

/* ------------------------------------------------------- modelset store */
/* (modelset.c) */

/* ------------------------------------------- second-order (LPS) layers */
/* (chainnorm.c, neuron.c, sopool.c) */

/* ---------------------------------------------- baselines and metrics */
/* (baselines.c, assign.c, metrics.c) */

#ifdef __cplusplus
}
#endif
#endif /* LUALPS_H */
