/* nn_internal.h - what the layer files share (not public API): the layer
 * type each file defines, the shape flow of architectures, and helpers. */
#ifndef LPS_NN_INTERNAL_H
#define LPS_NN_INTERNAL_H

#include "core/internal.h"

#include <stdarg.h>

/* What flows between entries while an architecture's shapes are chained,
 * without the batch. */
typedef struct lps_flow {
    int rank;          /* 0: unknown; 1: features; 2; 3: channels x height x width */
    int64_t d[3];      /* sizes; LPS_ARCH_UNKNOWN where only the input would tell */
    int64_t mult;      /* rank 1 of unknown size: a known factor of it (flattened channels) */
    int flat;          /* rank 1 made by flattening pre (named in messages) */
    int64_t pre[3];
    char who[256];     /* the entry being checked: "layer 2 (conv2d)" */
    char from[256];    /* what feeds it: "layer 1 (conv2d)", "the input" */
    int instance;      /* the shapes of a real input (kernels' size limits apply) */
    int quiet;         /* who and from left unformatted: a first pass, rerun named if it fails */
} lps_flow;

/* Flags of a layer type: what the methods that read weights may assume. */
enum {
    /* Its units are its weight's rows (a neuron, a conv output channel):
     * weight-space methods read it. */
    LPS_LT_WEIGHTED = 1u,
    /* The same map on every channel, commuting with a positive scale of a
     * channel: weight-space methods see through it (ReLU, pooling, flatten). */
    LPS_LT_CHANNELWISE = 2u,
    /* Element-wise, nondecreasing, backward reads only the sign of its
     * input: before a window maximum it may run after it, on fewer values. */
    LPS_LT_SIGN_GATE = 4u,
    /* A per-channel window maximum (see LPS_LT_SIGN_GATE). */
    LPS_LT_WINDOW_MAX = 8u,
    /* max(0, x) exactly (ReLU): a layer type with forward_relu may apply it. */
    LPS_LT_RELU = 16u,
    /* Frozen, its backward reads neither x's nor y's values, only their
     * shapes: the input gradient is one linear map of gy, the same for
     * every sample (lps_layer_input_gradients maps group means through it). */
    LPS_LT_AFFINE = 32u,
};

/* A layer type: one file of csrc/nn/ defines it, registry.c lists it. */
struct lps_layer_type {
    const char *name;        /* the arch "type" */
    const lps_field *fields; /* ends at key NULL; at most LPS_ARCH_FIELDS */
    unsigned flags;          /* LPS_LT_* */
    int branches;            /* entries hold body and shortcut lists */
    /* Check e against what flows into it and advance f (sizes may be
     * LPS_ARCH_UNKNOWN); errors via lps_flow_fail. */
    lps_status (*flow)(const lps_arch_entry *e, lps_flow *f);
    /* Give a new layer (l->cfg set; children built for branches) its
     * parameters, buffers and workspace, drawing weights from init. */
    lps_status (*create)(lps_layer *l, lps_rng *init);
    lps_status (*forward)(lps_layer *l, const lps_tensor *x, lps_tensor *y);
    /* Given x, y = f(x) and gy = dL/dy: add dL/dparams to the gradients
     * (unless frozen) and write gx = dL/dx (skipped when gx is NULL). */
    lps_status (*backward)(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                           const lps_tensor *gy, lps_tensor *gx);
    void (*destroy)(lps_layer *l); /* frees priv; may be NULL */
    /* PyTorch's printing of a leaf, e.g. "Linear(in_features=4, out_features=2)". */
    void (*repr)(const lps_arch_entry *e, char *buf, size_t n);
    /* Optional: forward, then max(0, .) in the same pass, for a ReLU right
     * after the layer (model.c's sequential). Its backward is then given the
     * ReLU's output as y (the ReLU's backward reads the sign of that, the
     * same as of its input), so a type with this hook must not read y's
     * values in backward. */
    lps_status (*forward_relu)(lps_layer *l, const lps_tensor *x, lps_tensor *y);
    /* Optional, with forward_relu: the pair's backward in one pass, gy
     * being the ReLU's output gradient (y its output): the layer gates gy
     * itself, with the values the ReLU's backward would give, instead of a
     * pass of the ReLU's backward writing them. */
    lps_status (*backward_relu)(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx);
    /* Optional: forward, then + r (y's shape) and with relu max(0, .), in
     * the same pass: the last layer of a residual block's body adding the
     * shortcut (residual.c), without writing the body's output. As with
     * forward_relu, its backward must not read y's values. */
    lps_status (*forward_add)(lps_layer *l, const lps_tensor *x, const float *r, int relu,
                              lps_tensor *y);
    /* Containers: the output shape of an instance (else the flow gives it). */
    lps_status (*out_shape)(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                            int64_t *out);
};

/* An integer field of an entry (fields are doubles, integers exact). */
#define FI(e, i) ((int64_t)(e)->v[i])

/* Fail naming f->who, e.g. "arch: layer 2 (conv2d): kernel 5 is larger ...". */
lps_status lps_flow_fail(const lps_flow *f, lps_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* snprintf for names that may be cut short (nested layers), without the
 * compiler's truncation warnings. */
void lps_fmt(char *buf, size_t n, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Python's repr of a float ("1e-05", "0.1", "1.0") for PyTorch's printing. */
const char *lps_py_float(char *buf, size_t n, double v);
/* "(8x7x7)" with "?" for unknown sizes, into buf. */
const char *lps_flow_shape(int rank, const int64_t *d, char *buf, size_t n);
#define FSH(r, d) lps_flow_shape((r), (d), (char[64]){0}, 64)
/* Flow through every entry of a list (a residual's branches), naming entry i
 * as f->who followed by i (set f->who to "layer 3 (residual) body layer "). */
lps_status lps_arch_flow(const lps_arch *a, lps_flow *f);
/* Chain an arch's shapes again (after building it from layers). */
lps_status lps_arch_reflow(lps_arch *a);
/* Fields whose default is another field's value (LPS_DEF_FIRST), filled. */
void lps_arch_entry_finish(lps_arch_entry *e);
/* Flow for layers that keep the shape (element-wise). */
lps_status lps_flow_same(const lps_arch_entry *e, lps_flow *f);
/* Check that planes (channels x height x width) flow in; an unknown input
 * becomes planes of unknown sizes. */
lps_status lps_flow_planes(lps_flow *f);
/* Flow for pooling windows of fields 0 (kernel) and 1 (stride), no padding. */
lps_status lps_flow_window(const lps_arch_entry *e, lps_flow *f);

/* A zeroed layer of type t with one reference and entry e (branches not
 * kept: they become children); NULL with an error set on failure. */
lps_layer *lps_layer_alloc(const lps_layer_type *t, const lps_arch_entry *e);
/* A Sequential of n >= 0 children (0: the identity, a residual's empty
 * shortcut); lps_sequential_new refuses 0 for users. */
lps_layer *lps_sequential_of(lps_layer *const *children, int n);
int lps_layer_is_sequential(const lps_layer *l);
/* Whether sequential l's last layer has forward_add (and is not the second
 * of a pair run as one pass); then lps_seq_forward_add runs l with it. */
int lps_seq_adds(const lps_layer *l);
lps_status lps_seq_forward_add(lps_layer *l, const lps_tensor *x, const float *r, int relu,
                               lps_tensor *y);
/* Add a learnable tensor of the given shape named name, with a zeroed
 * gradient, filled uniform in +-bound from r (bound 0 with r NULL: zeros). */
lps_status lps_layer_add_param(lps_layer *l, const char *name, int ndim, const int64_t *shape,
                               double bound, lps_rng *r);
/* Add a buffer of n values filled with v. */
lps_status lps_layer_add_buffer(lps_layer *l, const char *name, int64_t n, float v);

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
