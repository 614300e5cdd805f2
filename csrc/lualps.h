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
/* What produced a figure: OpenBLAS picks its sgemm kernel per processor
 * (a Haswell and a SkylakeX machine sum in different orders), so results
 * are bit-identical for a seed and thread count on one kernel, not across
 * kernels. The kernel's name ("Haswell", "SkylakeX"; OPENBLAS_CORETYPE=NAME
 * in the environment forces one) and OpenBLAS's build configuration. */
const char *lps_blas_kernel(void);
const char *lps_blas_config(void);
/* Which products the convolutions run, which decides their last bits as
 * the BLAS kernel decides the dense layers': "fma8" (AVX2 and FMA, fused),
 * "wide16" (AVX-512, unfused), "unfused8" (any core; the same bits as
 * "wide16"). By default the core's best; lps_set_conv_kernels forces one
 * the core runs (NULL or "auto": the default again), e.g. to reproduce
 * another machine's figures or to test each. Set it between jobs, not
 * while one runs. LPS_EINVAL for an unknown name or one the core lacks. */
const char *lps_conv_kernels(void);
lps_status lps_set_conv_kernels(const char *name);
/* Whether a convolution's input gradients at strides 1 and 2 fold its
 * columns straight into the input's layout (on, the default) or through
 * the split layout (col2im, then conv_unsplit): the same bits either way;
 * off is the reference the tests compare with. */
void lps_set_conv_fold_direct(int on);
/* End the library's own worker threads (they start again on next use). The
 * Lua module calls it when its state closes. */
void lps_threads_release(void);
/* Float blocks of 64 KiB or more that the library freed are kept (at most
 * 32 blocks, 64 MiB) for its next allocations of about their size: a
 * module built and freed for each of many models reuses the last one's
 * buffers. lps_floats_cached gives how many are kept now and their bytes
 * (either may be NULL); lps_floats_cache_clear hands them back to malloc.
 * The Lua module clears the cache when its state closes. */
void lps_floats_cached(int *blocks, size_t *bytes);
void lps_floats_cache_clear(void);

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
/* (csrc/nn/: one file per layer type, registry.c, arch.c, model.c; loss.c,
 * optim.c, train.c) Layers take and give batches: the first dimension is
 * the sample. Parameter layouts follow PyTorch (linear weight out x in,
 * conv weight cout x cin x k x k).
 *
 * A model's structure has one description, its architecture (the
 * "lualps.arch" JSON list of safetensors files, lps_arch below): a list of
 * entries, one per child of a PyTorch nn.Sequential, each a layer type
 * (registry.c) and the values of that type's fields, e.g.
 *   [{"type":"conv2d","in":1,"out":8,"kernel":5,"stride":2,"padding":2},
 *    {"type":"relu"},{"type":"flatten"},{"type":"linear","in":1568,"out":4}]
 * Layers are built from it (lps_layer_from_arch) and give it back
 * (lps_layer_arch); everything else (the weight-space baselines, LPS's
 * units, the binding) reads the structure from it. */

typedef struct lps_layer_type lps_layer_type; /* a kind of layer (csrc/nn/<type>.c) */
typedef struct lps_layer lps_layer;
typedef struct lps_arch lps_arch;

/* The fields of a layer type, in the order of its entries' values. */
typedef enum { LPS_FIELD_INT, LPS_FIELD_REAL, LPS_FIELD_BOOL } lps_field_kind;
#define LPS_REQUIRED (-1e300)   /* def of a field without a default */
#define LPS_DEF_FIRST (-2e300)  /* def: the value of the entry's first field */
typedef struct lps_field {
    const char *key;      /* the arch key ("in", "kernel", "eps", ...) */
    lps_field_kind kind;
    double lo, hi;        /* inclusive range of INT and REAL values */
    double def;           /* default, LPS_REQUIRED or LPS_DEF_FIRST */
    int quiet;            /* not written (JSON, Lua lists) when it has its default:
                             a field added later leaves older texts as they were */
} lps_field;
#define LPS_ARCH_FIELDS 6

/* The registry: every layer type, in a fixed order. */
const lps_layer_type *lps_layer_type_find(const char *name); /* NULL if unknown */
const lps_layer_type *lps_layer_type_at(int i);              /* NULL past the last */
const char *lps_layer_type_name(const lps_layer_type *t);
const lps_field *lps_layer_type_fields(const lps_layer_type *t); /* ends at key NULL */
/* Entries of this type hold two nested lists (residual: body, shortcut). */
int lps_layer_type_branches(const lps_layer_type *t);

/* One entry: a type and its field values (integers and booleans are exact
 * in the double; booleans are 0 or 1). */
#define LPS_ARCH_UNKNOWN (-1) /* a size only the input shape would tell */
typedef struct lps_arch_entry {
    const lps_layer_type *type;
    double v[LPS_ARCH_FIELDS];
    lps_arch *body, *shortcut;  /* branches (owned by the arch); NULL otherwise */
    /* Shape after this entry without the batch (rank 0..3; sizes may be
     * LPS_ARCH_UNKNOWN); rank 0 when not even the rank is known. */
    int rank;
    int64_t shape[3];
} lps_arch_entry;

struct lps_arch {
    size_t n;                   /* entries */
    lps_arch_entry *entries;
    int in_rank;                /* the optional input entry {"type":"input","shape":[...]}: */
    int64_t in_shape[3];        /* its shape without the batch; in_rank 0 when absent */
};

#define LPS_ARCH_MAX_LAYERS 4096 /* entries of one list, branches included */
#define LPS_ARCH_MAX_DEPTH 16    /* nesting of branches */

/* Parse and check text[0..len): every field (kind, range, required, unknown
 * keys), defaults filled, and shapes chained (fully when an input entry gives
 * the input shape, otherwise as far as the layers tell). Errors are
 * LPS_EFORMAT/LPS_ESHAPE "arch: ..." naming the layer, the field and sizes. */
lps_status lps_arch_parse(lps_arch **out, const char *text, size_t len);
/* The canonical JSON text (fixed key order, defaults written), malloc'd and
 * NUL-terminated; parsing it gives the same arch. */
lps_status lps_arch_to_json(const lps_arch *a, char **text, size_t *len);
void lps_arch_free(lps_arch *a);
/* Chain the shapes again from an input shape (rank 1..3, no batch), filling
 * every entry's shape; messages as lps_arch_parse's. */
lps_status lps_arch_check_input(lps_arch *a, int rank, const int64_t *shape);
/* Fields of one entry by key, for building entries in C: init fills the
 * defaults (required fields NaN), set checks the kind and range. */
lps_status lps_arch_entry_init(lps_arch_entry *e, const char *type);
lps_status lps_arch_entry_set(lps_arch_entry *e, const char *key, double v);
double lps_arch_entry_get(const lps_arch_entry *e, const char *key); /* NaN if no such key */

/* The weight layers (linear, conv2d) of a chain for the weight-space
 * methods (lps_net_view): idx[k] (up to max) = the entry of the k-th, *n
 * their count; fails naming the first entry that is not a weight layer or
 * a channel-wise one between two of them (messages start with op). */
lps_status lps_arch_weight_layers(const lps_arch *a, int *idx, int max, int *n, const char *op);

/* Layers are reference counted: a container holds a reference to each child.
 * Fields are read-only for users. */
#define LPS_LAYER_TENSORS 4
struct lps_layer {
    const lps_layer_type *type;
    int refcount;
    int training;                  /* train() / evaluate() mode flag */
    int replay;                    /* inside lps_layer_replay: no side effects */
    int frozen;                    /* backward computes input gradients only */
    float stat_prior;              /* eval-mode batch norm: weight of the dream prior (0: off) */
    int batch_stats;               /* eval-mode batch norm normalizes by the batch's statistics */
    lps_arch_entry cfg;            /* its arch entry (branches are its children) */
    int nparams;                   /* learnable tensors, PyTorch's order and names */
    lps_tensor *param[LPS_LAYER_TENSORS], *grad[LPS_LAYER_TENSORS];
    const char *param_name[LPS_LAYER_TENSORS];
    int nbuffers;                  /* state that is not learned (running statistics) */
    lps_tensor *buffer[LPS_LAYER_TENSORS];
    const char *buffer_name[LPS_LAYER_TENSORS];
    int nchildren;                 /* containers only */
    lps_layer **children;
    const char *const *child_names; /* NULL: "0", "1", ... (a Sequential) */
    void *priv;                    /* kind-specific workspace */
};

/* A new layer of one entry (branches, if any, built too), initialized as
 * PyTorch does by default (weights and biases uniform in +-1/sqrt(fan_in),
 * weight first), drawing from init. */
lps_layer *lps_layer_new(const lps_arch_entry *e, lps_rng *init);
/* A layer of a type with branches (residual) whose body and shortcut are
 * existing modules, shared (each takes a reference; a leaf becomes a
 * Sequential of one); a NULL branch is built from e's list (a shortcut
 * without one: the identity). */
lps_layer *lps_layer_new_branches(const lps_arch_entry *e, lps_layer *body, lps_layer *shortcut,
                                  lps_rng *init);
/* A Sequential of every entry of a (the input entry builds nothing). */
lps_layer *lps_layer_from_arch(const lps_arch *a, lps_rng *init);
/* The architecture of l (a Sequential gives its children's entries, any
 * other layer a list of one); containers other than at the top fail. */
lps_status lps_layer_arch(const lps_layer *l, lps_arch **out);
/* Takes a new reference to each child. Activations are buffers kept between
 * calls and grown only when a batch is larger than any before. */
lps_layer *lps_sequential_new(lps_layer *const *children, int n);
lps_layer *lps_layer_ref(lps_layer *l);
void lps_layer_free(lps_layer *l); /* drops one reference */

/* Output shape of l for an input shape (checks that the input fits). */
lps_status lps_layer_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                               int64_t *out);
lps_status lps_layer_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y);
/* A forward pass that recomputes what backward needs without side effects:
 * layers with state (batch norm's running statistics, dropout's mask) leave
 * it as the last forward left it (dropout replays its last mask when the
 * shape is the same). For a backward after a forward on the same x. */
lps_status lps_layer_replay(lps_layer *l, const lps_tensor *x, lps_tensor *y);
/* Must follow a forward of the same x (a sequential reuses its activations). */
lps_status lps_layer_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                              const lps_tensor *gy, lps_tensor *gx);
/* Input gradients of several output directions at the cost of one forward:
 * y = l(x) (n samples), then for each of the k blocks of n rows of gy
 * (k n x y's sizes) the gradient with respect to x, averaged over
 * consecutive groups of `group` samples (group divides n; 1: none): gx is
 * (k n / group x x's sizes), block c's group g in row c n / group + g.
 * With group > 1 a frozen first layer that is affine (conv2d, linear) maps
 * the means instead of every sample: the same values up to rounding, at a
 * fraction of that layer's cost. Layers not frozen add their parameter
 * gradients as k backward calls would. */
lps_status lps_layer_input_gradients(lps_layer *l, const lps_tensor *x, lps_tensor *y,
                                     const lps_tensor *gy, int64_t group, lps_tensor *gx);
/* Parameters and gradients in a fixed order (depth first, PyTorch's order);
 * fills up to max entries and returns the total count. */
int lps_layer_params(const lps_layer *l, lps_tensor **params, lps_tensor **grads, int max);
/* Every parameter and buffer under its PyTorch state_dict name ("3.weight",
 * "2.body.0.running_mean"), in state_dict order; fn gets is_buffer. */
typedef void (*lps_named_fn)(void *ud, const char *name, lps_tensor *t, int is_buffer);
void lps_layer_named(const lps_layer *l, lps_named_fn fn, void *ud);
int64_t lps_layer_numel(const lps_layer *l); /* number of parameter values */
void lps_layer_zero_grad(lps_layer *l);
void lps_layer_set_training(lps_layer *l, int training);
/* Frozen layers (and their children) compute only input gradients in
 * backward and leave their parameter gradients as they are: for gradients
 * with respect to the input (saliency, class templates) at about half the
 * cost. */
void lps_layer_set_frozen(lps_layer *l, int frozen);
/* The dream prior of l's batch norm layers (and its children's), weight w
 * (0, the default: off): in eval mode with the running statistics
 * (batch_stats off) their backward adds to the input gradient that of
 * w * b * the mean over channels of KL(batch || running) of their Gaussian
 * statistics, b the samples: gradient descent on it (w > 0; ascent with
 * w < 0) draws inputs to the statistics the layer saw in training, as
 * DeepInversion (Yin et al., 2020) does. Batch statistics couple the
 * samples of one forward. */
void lps_layer_set_stat_prior(lps_layer *l, float w);
/* Batch norm layers of l in eval mode normalize each forward by its own
 * batch's statistics (as in train mode, backward through them) and leave
 * the running ones as they are: AdaBN (Li et al., 2016), for a model
 * reading inputs of another distribution than its training data. Samples
 * of one forward are then coupled. Off by default; train mode ignores it. */
void lps_layer_set_batch_stats(lps_layer *l, int on);
/* PyTorch's printing of the module ("Sequential(\n  (0): Linear(...)\n)"),
 * malloc'd; NULL on failure. */
char *lps_layer_repr(const lps_layer *l);

/* Mean cross-entropy of logits (B x C) against 0-based labels, stable for
 * large logits. When grad is not NULL it receives dLoss/dlogits; when correct
 * is not NULL it receives the number of rows whose first argmax is the label. */
lps_status lps_cross_entropy(const lps_tensor *logits, const int32_t *labels, double *loss,
                             lps_tensor *grad, int64_t *correct);

/* Optimizers, with PyTorch's update rules (torch.optim.SGD, Adam, AdamW). */
typedef enum { LPS_SGD, LPS_ADAM } lps_optim_kind;
typedef struct lps_optim_config {
    lps_optim_kind kind;
    double lr, weight_decay;
    double momentum, dampening; int nesterov;  /* sgd */
    double beta1, beta2, eps; int decoupled;   /* adam; decoupled = AdamW */
} lps_optim_config;
typedef struct lps_optim lps_optim;
lps_optim *lps_optim_new(const lps_optim_config *c); /* validates c */
void lps_optim_free(lps_optim *o);
const lps_optim_config *lps_optim_get_config(const lps_optim *o);
void lps_optim_set_lr(lps_optim *o, double lr);
/* One update of n parameters from their gradients. State (momentum, moments)
 * is allocated on the first step; later steps must pass the same sizes. */
lps_status lps_optim_step(lps_optim *o, lps_tensor *const *params, lps_tensor *const *grads, int n);
void lps_optim_reset(lps_optim *o); /* forget state and step count */
int64_t lps_optim_steps(const lps_optim *o);

/* Learning-rate schedules over epochs t (fractional when stepped per batch):
 * step: lr * gamma^floor(t / step_size); cosine: eta_min + (lr - eta_min) *
 * (1 + cos(pi * min(t, t_max) / t_max)) / 2, as torch.optim.lr_scheduler. */
typedef enum { LPS_SCHED_CONSTANT, LPS_SCHED_STEP, LPS_SCHED_COSINE } lps_sched_kind;
typedef struct lps_schedule {
    lps_sched_kind kind;
    double step_size, gamma;  /* step */
    double t_max, eta_min;    /* cosine */
    int per_batch;            /* update every batch rather than every epoch */
} lps_schedule;
lps_status lps_schedule_check(const lps_schedule *s);
double lps_schedule_lr(const lps_schedule *s, double base_lr, double t);

/* Training: shuffled minibatches, forward, loss, backward, optimizer step. */
typedef struct lps_progress {
    int epoch, epochs;          /* 1-based */
    int64_t step, steps;        /* 1-based step within the epoch */
    int64_t samples;            /* seen so far in this epoch */
    double loss, accuracy;      /* running means over this epoch */
    double seconds, lr;         /* seconds since the epoch began */
    int done;                   /* 1 on the epoch's last call */
    double val_loss, val_accuracy; /* on the last call with validation data, else NaN */
} lps_progress;
/* Return 0 to go on; anything else stops training with LPS_EINVAL (set a
 * message with lps_fail first to say why). */
typedef int (*lps_progress_fn)(const lps_progress *p, void *ud);

typedef struct lps_epoch_stats {
    double loss, accuracy, seconds, lr;
    double val_loss, val_accuracy; /* NaN without validation data */
} lps_epoch_stats;

typedef struct lps_train_opts {
    int epochs;
    int64_t batch_size;
    int shuffle, drop_last;
    lps_rng *rng;                  /* shuffling (needed when shuffle) */
    lps_optim *optim;
    const lps_schedule *schedule;  /* NULL: constant learning rate */
    const lps_tensor *val_x;       /* optional validation set, evaluated per epoch (eval mode) */
    const int32_t *val_y;
    int64_t eval_batch;            /* batch for validation (0: 256) */
    lps_progress_fn progress;      /* optional */
    void *progress_ud;
    double progress_interval;      /* seconds between calls (0: 0.25) */
    lps_epoch_stats *stats;        /* epochs entries, filled in (may be NULL) */
} lps_train_opts;

/* x: N samples (first dimension), y: N 0-based class labels. The optimizer's
 * learning rate is restored when training ends. A NaN or infinite loss stops
 * with LPS_ENUMERIC naming the epoch and step. No global state: different
 * models (with their own optimizers) may train on different threads at once. */
lps_status lps_train(lps_layer *model, const lps_tensor *x, const int32_t *y,
                     const lps_train_opts *o);
/* Mean loss and accuracy over x in batches of `batch` (0: 256), in eval mode
 * (each layer's mode restored after). */
lps_status lps_evaluate(lps_layer *model, const lps_tensor *x, const int32_t *y, int64_t batch,
                        double *loss, double *accuracy);

/* IDX files (LeCun's MNIST format, unsigned bytes), gzip-compressed, read
 * through zlib. Images become N x (rows*cols) floats in [0, 1]; labels N
 * floats (the stored class, 0-based). Errors name the file and the problem. */
lps_tensor *lps_idx_read_images(const char *path);
lps_tensor *lps_idx_read_labels(const char *path);

/* Image domains: transforms of square grayscale images in [0, 1], applied
 * when data is loaded, each one fixed function of the image (the random
 * ones draw from LPS_DOMAIN_SEED). x and out are N x (s*s) (or
 * N x 1 x s x s), same shape; out may alias x only for the pointwise ones
 * (IDENTITY, INVERT, TEXTURE). "Bilinear" samples x between its four
 * nearest pixels, zeros outside.
 *   IDENTITY  a copy
 *   INVERT    1 - x
 *   ROT90     rotated 90 degrees clockwise: out[r][c] = x[s-1-c][r]
 *   BLUR      3x3 binomial kernel [1 2 1]^T [1 2 1] / 16, zeros outside
 *   DOWNUP    2x2 mean pooling, then each mean copied back to its 2x2 block
 *             (s even): the image at half resolution
 *   ZOOMOUT   shrunk to 60% about the centre m = (s-1)/2, zeros around:
 *             out[r][c] = x at (m + (r-m) 5/3, m + (c-m) 5/3), bilinear
 *   SHIFT     moved k = floor(s/5) pixels down and right (5 at 28x28), zero
 *             fill: out[r][c] = x[r-k][c-k]
 *   VFLIP     upside down: out[r][c] = x[s-1-r][c]
 *   EDGES     Sobel gradient magnitude / 4, capped at 1 (a unit step: 1),
 *             zeros outside
 *   TEXTURE   a fixed noise texture T (s*s uniforms in [0, 0.6), row by
 *             row) wherever the image is dark: out = x + (1 - x) T
 *   ELASTIC   out[r][c] = x at (r, c) + d(r, c), bilinear; d interpolates
 *             bilinearly a 5x5 grid of control displacements over the image
 *             (at r, c = 0, (s-1)/4, ..., s-1), each (dr, dc) uniform in
 *             [-s/7, s/7], drawn row by row, dr first */
#define LPS_DOMAIN_SEED 1907u
typedef enum {
    LPS_DOMAIN_IDENTITY, LPS_DOMAIN_INVERT, LPS_DOMAIN_ROT90, LPS_DOMAIN_BLUR, LPS_DOMAIN_DOWNUP,
    LPS_DOMAIN_ZOOMOUT, LPS_DOMAIN_SHIFT, LPS_DOMAIN_VFLIP, LPS_DOMAIN_EDGES, LPS_DOMAIN_TEXTURE,
    LPS_DOMAIN_ELASTIC, LPS_NDOMAINS
} lps_domain;
lps_status lps_image_domain(lps_tensor *out, const lps_tensor *x, lps_domain d);
/* Its name ("identity", "invert", "rot90", "blur", "downup", "zoomout",
 * "shift", "vflip", "edges", "texture", "elastic"); NULL for another value. */
const char *lps_domain_name(lps_domain d);
/* The domain called name, or -1. */
int lps_domain_from_name(const char *name);

/* ----------------------------------------------------------- glyphs */
/* (csrc/data/: glyphs.c, glyph_render.c) Rendered Latin letters, a second
 * image source beside Fashion-MNIST: 52 classes, 0..25 = 'A'..'Z' and
 * 26..51 = 'a'..'z' (no digits), rasterized with FreeType from fixed font
 * files of Debian packages into 28x28 floats in [0, 1], bright on black.
 * A glyph is scaled so its face's capital 'H' is `size` pixels tall (shrunk
 * further if its larger side would pass LPS_GLYPH_MAX_EXTENT), rotated about
 * the centre of its bounding box, emboldened or thinned, and centred on the
 * frame plus a shift. Unhinted, so the pixels are a function of the outline.
 * Classes LPS_GLYPH_CLASSES..LPS_GLYPH_ALL-1 are the digits '0'..'9', drawn
 * alike: a check-only source (held-out zoos, scripts/heldout_zoos.lua) that
 * no training set uses; lps.data.glyphs refuses them, lps.data.digits
 * renders them. */
#define LPS_GLYPH_CLASSES 52
#define LPS_GLYPH_DIGITS 10
#define LPS_GLYPH_ALL (LPS_GLYPH_CLASSES + LPS_GLYPH_DIGITS)
#define LPS_GLYPH_SIDE 28
#define LPS_GLYPH_MAX_EXTENT 26.0

typedef struct lps_glyph_face {
    const char *name;    /* "DejaVu Sans" */
    const char *style;   /* "sans", "serif", "mono", with "bold", "italic"... */
    const char *path;    /* the font file, an absolute Debian path */
    const char *package; /* the Debian package that installs it */
} lps_glyph_face;
int lps_glyph_nfaces(void);
const lps_glyph_face *lps_glyph_face_info(int i); /* 0-based; NULL out of range */
int lps_glyph_letter(int cls);                    /* 'A'..'Z', 'a'..'z'; 0 out of range */
int lps_glyph_char(int cls); /* a letter for 0..51, '0'..'9' for the digits 52..61; 0 out of range */

/* What one image looks like; lps_glyph_draw makes a random one. */
typedef struct lps_glyph_params {
    int face;       /* 0..lps_glyph_nfaces()-1 */
    double size;    /* capital height in pixels, (0, 64] */
    double angle;   /* degrees counter-clockwise, [-180, 180] */
    double dx, dy;  /* shift of the glyph's centre from the frame's, pixels right and down, |.| <= 14 */
    double stroke;  /* pixels every stroke grows by (FT_Outline_Embolden), [-2, 4]; < 0 thins */
    double ink;     /* intensity of full coverage, [0, 1] */
    double noise;   /* sd of a multiplicative Gaussian noise on inked pixels, [0, 1] */
} lps_glyph_params;

/* The random draw of lps_glyphs_render, from r: face uniform; size U[16, 23];
 * angle U[-15, 15]; dx, dy U[-2, 2]; stroke U[-0.4, 1.0]; ink U[0.75, 1];
 * noise 0.05. */
void lps_glyph_draw(lps_rng *r, lps_glyph_params *p);

/* Every face loaded once, with its 62 outlines (letters and digits): open with lps_glyphs_open,
 * release with lps_glyphs_free (the caller owns it). root is prepended to
 * the font paths (NULL or "" for none: tests point it elsewhere); a missing
 * or unreadable file fails with LPS_EIO naming the file and its package.
 * Rendering only reads the handle, but FreeType's library object is not
 * documented as thread-safe: one handle per thread. */
typedef struct lps_glyphs lps_glyphs;
lps_status lps_glyphs_open(lps_glyphs **out, const char *root);
void lps_glyphs_free(lps_glyphs *g);

/* One image of class cls (0-based, 0..LPS_GLYPH_ALL-1) into out (28*28 floats, row-major, top
 * row first). noise draws from r, which may be NULL when p->noise == 0. */
lps_status lps_glyph_render(const lps_glyphs *g, int cls, const lps_glyph_params *p, lps_rng *r,
                            float *out);
/* out: N x 784 (or N x 1 x 28 x 28); image i shows classes[i] (0-based).
 * The k-th image of a class in the list draws its parameters
 * (lps_glyph_draw) and noise from a generator seeded from (seed, class, k)
 * alone: a list of fewer classes gives the same images of those classes,
 * and no thread count changes a bit (rendering is serial). */
lps_status lps_glyphs_render(const lps_glyphs *g, lps_tensor *out, const int32_t *classes,
                             uint64_t seed);

/* ------------------------------------------------------- modelset store */
/* (csrc/store/: modelset.c, mset_*.c; the file format: docs/MODELSET_FORMAT.md)
 * An append-only file of records, one per model: JSON metadata (opaque to C)
 * and named float32 tensors, each a zstd frame, everything CRC-32 checked.
 * Record numbers are 0-based in C; messages name them 1-based, as Lua does. */

typedef struct lps_mset lps_mset; /* an open ModelSet (reader or the one writer) */

typedef enum {
    LPS_CODEC_PLAIN = 1,   /* zstd of the float32 little-endian bytes */
    LPS_CODEC_SHUFFLE = 2, /* byte planes (Blosc-style shuffle), then zstd; lossless */
    LPS_CODEC_BF16 = 3     /* lossy: round to bfloat16 (nearest even), 2 planes, zstd */
} lps_codec;

#define LPS_MSET_MAX_META ((uint32_t)1 << 24)  /* 16 MiB of JSON per record */
#define LPS_MSET_MAX_TENSORS 4096              /* per record */
#define LPS_MSET_MAX_NAME 255                  /* bytes of a tensor name */

typedef struct {
    lps_codec codec; /* default for tensors (LPS_CODEC_SHUFFLE) */
    int level;       /* zstd level 1..19 (1: on float planes smaller and faster than 3) */
    int sync;        /* fdatasync after each record (1); 0: only at flush/close */
    int overwrite;   /* create: replace an existing file (0: refuse) */
} lps_mset_opts;
void lps_mset_opts_default(lps_mset_opts *o);

/* Create a new set (takes the writer lock). opts may be NULL. */
lps_status lps_mset_create(lps_mset **out, const char *path, const lps_mset_opts *opts);
/* Open read-only (append = 0) or for appending (takes the writer lock, drops
 * the trailing index until the next flush, truncates a torn last record).
 * opts (may be NULL) sets codec/level/sync for appending; codec 0 = file's. */
lps_status lps_mset_open(lps_mset **out, const char *path, int append, const lps_mset_opts *opts);
/* Read-only over a memory image (the fuzzer's entry point); buf must outlive ms. */
lps_status lps_mset_open_mem(lps_mset **out, const void *buf, size_t n);
/* Writers: write the index and trailer and sync, then close. Always frees. */
lps_status lps_mset_close(lps_mset *ms);
/* Writers: write the index and trailer now (readers then open fast). */
lps_status lps_mset_flush(lps_mset *ms);

int64_t lps_mset_count(const lps_mset *ms);
const char *lps_mset_path(const lps_mset *ms);
int lps_mset_writable(const lps_mset *ms);
lps_codec lps_mset_default_codec(const lps_mset *ms);
/* How the index was found: 1 from the trailing index, 0 by scanning records. */
int lps_mset_indexed(const lps_mset *ms);
/* Bytes after the last intact record that the opener ignored (torn tail). */
uint64_t lps_mset_tail_bytes(const lps_mset *ms);
/* Index facts without reading the record. */
typedef struct {
    uint64_t offset, length, decoded_bytes;
    uint32_t meta_len, ntensors, codecs; /* codecs: bit (codec - 1) per codec used */
} lps_mset_info;
lps_status lps_mset_record_info(const lps_mset *ms, int64_t i, lps_mset_info *info);

typedef struct {
    char *name;              /* NUL-terminated */
    int ndim;
    int64_t shape[LPS_MAX_DIMS];
    int64_t numel;
    lps_codec codec;
    uint64_t offset;         /* file offset of the zstd frame */
    uint64_t stored_bytes;   /* frame length */
    uint32_t crc;            /* CRC-32 of the frame */
    lps_tensor *tensor;      /* decoded (LPS_MSET_DATA), owned by the record */
} lps_mset_tensor;

typedef struct {
    int64_t index;
    uint64_t offset, length;
    char *meta;              /* JSON text, NUL-terminated (LPS_MSET_META) */
    size_t meta_len;
    int ntensors;
    lps_mset_tensor *tensors; /* LPS_MSET_TABLE or LPS_MSET_DATA */
} lps_mset_record;

enum { LPS_MSET_META = 1, LPS_MSET_TABLE = 2, LPS_MSET_DATA = 4 };
/* Read record i: what = LPS_MSET_META reads only the header and the JSON;
 * TABLE adds the tensor descriptions; DATA decodes every tensor. Every part
 * read is checksummed; errors name the record. rec is cleared first. */
lps_status lps_mset_read(lps_mset *ms, int64_t i, int what, lps_mset_record *rec);
void lps_mset_record_clear(lps_mset_record *rec);

typedef struct {
    const char *name;
    const lps_tensor *tensor;
    lps_codec codec;         /* 0: the set's default */
} lps_mset_input;
/* Append one record (meta: JSON text, not parsed here). *index gets its number. */
lps_status lps_mset_append(lps_mset *ms, const char *meta, size_t meta_len,
                           const lps_mset_input *in, int n, int64_t *index);
/* Copy record i of src to dst byte for byte after checking all its checksums. */
lps_status lps_mset_copy(lps_mset *dst, lps_mset *src, int64_t i, int64_t *index);

typedef struct {
    int64_t record;          /* 0-based record, -1 when not about one record */
    uint64_t offset;         /* file offset where the problem is */
    char msg[240];
} lps_mset_problem;
typedef struct {
    int64_t records;         /* intact records found */
    uint64_t tail_bytes;     /* bytes past the last intact record */
    int indexed;             /* a valid trailing index was present */
    int nproblems;
    lps_mset_problem *problems; /* up to 1000 kept; free with lps_mset_report_free */
    int truncated, rewrote;  /* repair: truncated in place / rewrote the file */
    char backup[512];        /* repair: where the damaged original was kept ("" if not) */
} lps_mset_report;
/* Check every byte: header, index, each record's checksums and frames. The
 * report lists each problem with its record; status is LPS_OK unless the
 * file could not be read at all. */
lps_status lps_mset_verify(const char *path, lps_mset_report *rep);
lps_status lps_mset_verify_mem(const void *buf, size_t n, lps_mset_report *rep);
/* Keep every intact record: truncate a torn tail and rewrite the index in
 * place; if records inside the file are damaged, write a new file with the
 * intact ones and keep the original as path.damaged. */
lps_status lps_mset_repair(const char *path, lps_mset_report *rep);
void lps_mset_report_free(lps_mset_report *rep);
/* The format's checksum, CRC-32C (Castagnoli): hardware when the CPU has
 * SSE4.2; _portable always uses the table code (tests compare the two). */
uint32_t lps_crc32c(const void *p, size_t n);
uint32_t lps_crc32c_portable(const void *p, size_t n);

/* ------------------------------------------- second-order (LPS) layers */
/* (csrc/lps/: chainnorm.c, neuron.c, sopool.c, metric_loss.c)
 * An MLP is given as nlayers weight matrices W[l] (h_l x h_{l-1}, PyTorch
 * layout) and biases b[l] (h_l), ReLU between layers. Backward functions
 * accumulate (+=) into parameter gradients and overwrite input gradients. */

/* In place, for each hidden layer in order: divide every unit's incoming
 * weights and bias by their joint L2 norm n and multiply its outgoing weights
 * (column of W[l+1]) by n. A ReLU network computes the same function after,
 * and a unit rescaled by a > 0 (outgoing by 1/a) normalizes to the same
 * weights. Units with n <= eps are left alone (eps = INFINITY: only the
 * shape and finiteness checks run). Non-finite weights fail. */
lps_status lps_chain_normalize(int nlayers, lps_tensor *const *W, lps_tensor *const *b, float eps);
/* out[j] = L2 norm of column j of W: unit j's outgoing importance. */
lps_status lps_column_norms(lps_tensor *out, const lps_tensor *W);

/* Any network of conv2d and linear layers W[l] (conv: cout x cin x k x k;
 * linear: out x in) with biases b[l], conv layers first, and between them
 * only layers that act on each channel alike and commute with a positive
 * scale of a channel (ReLU, max-pooling, the flatten before the first
 * linear layer; see lps_net_view). The tensors tell the rest: a linear
 * layer after a conv layer reads in / cout_prev positions (h*w) of each
 * channel. A hidden unit is a neuron or a conv output channel; its outgoing
 * weights are the next layer's input slice of it (conv: W[l+1][:, j];
 * linear: the h*w columns of channel j). */
/* Shapes chain, values finite; messages start with op. */
lps_status lps_units_check(const char *op, int nlayers, lps_tensor *const *W, lps_tensor *const *b);
/* Chain normalization of every hidden unit as lps_chain_normalize (which it
 * equals on an MLP): incoming weights and bias divided by their joint norm,
 * outgoing weights multiplied by it. In place; the function is unchanged. */
lps_status lps_chain_normalize_units(int nlayers, lps_tensor *const *W, lps_tensor *const *b,
                                     float eps);
/* out (h_l entries): norm of each unit's outgoing weights, layer l < nlayers-1. */
lps_status lps_units_importance(lps_tensor *out, int nlayers, lps_tensor *const *W,
                                lps_tensor *const *b, int l);
/* out (h_l x h_{l-1}), layer l >= 1: how unit j of layer l mixes unit i of
 * layer l-1, one number per pair: the sum of W[l]'s slice from i to j (a
 * conv kernel's sum over its k x k positions, its response to a constant
 * map; a linear layer after conv layers: the sum over the h*w columns of i;
 * otherwise W[l][j][i] itself). Embedding units through it, U_l = out Z_{l-1},
 * makes layer l blind to the order of layer l-1's units. */
lps_status lps_units_mixing(lps_tensor *out, int nlayers, lps_tensor *const *W,
                            lps_tensor *const *b, int l);
/* out (cout x cin*s*s): each conv kernel (cout x cin x k x k, k <= s, k and
 * s odd) centred in an s x s window of zeros and flattened: kernels of
 * every size as one feature length (a 3x3 kernel is the 5x5 kernel with a
 * zero border, the same filter). */
lps_status lps_conv_unit_features(lps_tensor *out, const lps_tensor *W, int64_t s);

/* Shared unit encoder, one row per unit: Z = act([U | bias | imp] A^T + a)
 * with U (h x k), bias and imp (h), A (d x (k+2)), a (d), Z (h x d). */
typedef enum { LPS_ACT_RELU, LPS_ACT_TANH, LPS_ACT_LINEAR } lps_act;
lps_status lps_neuron_forward(lps_tensor *Z, const lps_tensor *U, const lps_tensor *bias,
                              const lps_tensor *imp, const lps_tensor *A, const lps_tensor *a,
                              lps_act act);
/* Z is the forward output. dU (h x k) may be NULL (first layer: data). */
lps_status lps_neuron_backward(lps_tensor *dU, lps_tensor *dA, lps_tensor *da,
                               const lps_tensor *dZ, const lps_tensor *Z, const lps_tensor *U,
                               const lps_tensor *bias, const lps_tensor *imp,
                               const lps_tensor *A, lps_act act);

/* Pooling of unit embeddings Z (h x d, d <= 1024) with unit weights w (h, >= 0; scaled
 * to sum 1 inside, uniform if all zero). Second order: S = sum_j w_j z_j z_j^T
 * normalized by POWER (sign(s)(sqrt(|s| + eps) - sqrt(eps)) per entry), SQRTM
 * (square root of S + eps I by `iters` Newton-Schulz steps after scaling by
 * its Frobenius norm) or PLAIN (none); the output is S's upper triangle row
 * by row, d(d+1)/2 values. MEAN: first order, sum_j w_j z_j (d values). */
typedef enum { LPS_SOPOOL_POWER, LPS_SOPOOL_SQRTM, LPS_SOPOOL_PLAIN, LPS_SOPOOL_MEAN } lps_sopool_mode;
typedef struct {
    lps_sopool_mode mode;
    float eps;   /* > 0 for POWER and SQRTM */
    int iters;   /* SQRTM: 1..50 */
} lps_sopool_opts;
int64_t lps_sopool_size(int64_t d, lps_sopool_mode mode);
/* Writes lps_sopool_size values at flat offset `off` of out (so the layers of
 * a model concatenate in place); backward reads dout at the same offset and
 * overwrites dZ (h x d). */
lps_status lps_sopool_forward(lps_tensor *out, int64_t off, const lps_tensor *Z,
                              const lps_tensor *w, const lps_sopool_opts *o);
lps_status lps_sopool_backward(lps_tensor *dZ, const lps_tensor *dout, int64_t off,
                               const lps_tensor *Z, const lps_tensor *w, const lps_sopool_opts *o);

/* Embedding head over a batch: U = F P^T + p, Y = U / ||U|| per row, with
 * F (B x n), P (e x n), p (e), U and Y (B x e). Backward needs the saved U;
 * dF may be NULL. */
lps_status lps_embed_forward(lps_tensor *Y, lps_tensor *U, const lps_tensor *F,
                             const lps_tensor *P, const lps_tensor *p);
lps_status lps_embed_backward(lps_tensor *dF, lps_tensor *dP, lps_tensor *dp,
                              const lps_tensor *dY, const lps_tensor *U, const lps_tensor *F,
                              const lps_tensor *P);

/* Softmax cross-entropy (mean over the batch) of a linear classifier on
 * embeddings Y (B x e): logits = scale (Y C^T + c), C (T x e), c (T) or NULL;
 * with cosine, C's rows are L2-normalized first. labels are 0-based in
 * 0..T-1. Any of correct (argmax hits), dY, dC, dc may be NULL. */
lps_status lps_embed_xent(double *loss, int64_t *correct, lps_tensor *dY, lps_tensor *dC,
                          lps_tensor *dc, const lps_tensor *Y, const lps_tensor *C,
                          const lps_tensor *c, const int64_t *labels, float scale, int cosine);

/* Batch-hard triplet loss (Hermans et al. 2017): for each anchor with at
 * least one positive and one negative, max(0, margin + d(a, hardest positive)
 * - d(a, hardest negative)), averaged over those anchors. COSINE: d = 1 - a.b;
 * EUCLID: d = ||a - b||. valid (anchors counted), active (positive hinges)
 * and dY may be NULL. */
typedef enum { LPS_DIST_COSINE, LPS_DIST_EUCLID } lps_dist;
lps_status lps_triplet_hard(double *loss, int64_t *valid, int64_t *active, lps_tensor *dY,
                            const lps_tensor *Y, const int64_t *labels, float margin,
                            lps_dist metric);

/* Relation regression: pull the cosine of every pair of embeddings Y (B x e,
 * unit rows) of different items towards a target given by their labels:
 * loss = mean over pairs i < j of (y_i . y_j - T[labels i][labels j])^2,
 * with T (n x n, symmetric) indexed by the 0-based labels. NaN targets
 * leave their pairs out (counted in npairs only when used). dY may be NULL. */
lps_status lps_pair_regression(double *loss, int64_t *npairs, lps_tensor *dY, const lps_tensor *Y,
                               const int64_t *labels, const lps_tensor *T);

/* ---------------------------------------------- baselines and metrics */
/* (csrc/eval/: baselines.c, matching.c, cka.c, assign.c, metrics.c, cluster.c, project.c) */

/* A borrowed view of a feed-forward network for the weight-space methods:
 * p holds 2*nlayers tensors W1, b1, ..., W_L, b_L, the weight layers'
 * (linear, conv2d) in order. arch NULL: an MLP, W_l (h_l x h_{l-1}),
 * y = W_L relu(... relu(W1 x + b1) ...) + b_L. Otherwise the model's
 * architecture, whose weight layers are those of p and whose other entries
 * sit between them and act on every channel alike and commute with a
 * positive scale of a channel (relu, leaky_relu, max and average pooling,
 * flatten, dropout: the layer types flagged channel-wise): the structure the
 * weight-space methods are defined on. conv2d layers come first (W cout x
 * cin x k x k), the head is linear; inputs are rows of d = cin*s*s values,
 * square s x s images. Hidden layers are 1..L-1; their units are the rows of
 * W_l (conv: output channels). A model with other layers (batch norm,
 * residual blocks, tanh, gelu, sigmoid, silu) or a weight layer without a
 * bias has no weight view: read it through its function (templates)
 * instead. */
typedef struct lps_net_view {
    int nlayers;                /* weight layers, >= 2 */
    const lps_tensor *const *p; /* 2 * nlayers tensors */
    const lps_arch *arch;       /* NULL for an MLP */
} lps_net_view;

/* Shapes chain (each layer takes the units of the one before; the first
 * linear layer after convolutions takes whole blocks of columns per channel)
 * and every value is finite; messages start with op. */
lps_status lps_net_check(const char *op, const lps_net_view *m);
int64_t lps_net_numel(const lps_net_view *m); /* parameters in all */
int64_t lps_net_units(const lps_net_view *m); /* units (channels) of all hidden layers */
/* Same architecture: layer kinds and geometry, every tensor's shape. */
int lps_net_same_arch(const lps_net_view *a, const lps_net_view *b);
/* sizes[l] (l = 0..L-2) = values of hidden layer l+1's activations per input
 * row of d values (conv: channels x height x width after ReLU and pooling). */
lps_status lps_net_hidden_sizes(int64_t *sizes, const lps_net_view *m, int64_t d);

/* out (N x h_L) = the model applied to the rows of x (N x d). */
lps_status lps_net_apply(lps_tensor *out, const lps_net_view *m, const lps_tensor *x);
/* acts[l] (N x sizes[l]), l = 0..L-2: post-ReLU activations of hidden layer
 * l+1 (conv: post-ReLU, post-pooling maps flattened channel-major). */
lps_status lps_net_hidden_acts(lps_tensor *const *acts, const lps_net_view *m,
                               const lps_tensor *x);
/* A permutation of hidden units is one array of lps_net_units(m) 0-based
 * entries, layer after layer: unit i of hidden layer l of the result is unit
 * perm[off_l + i] of m (conv: channel i; the next layer's input channels, or
 * the next linear layer's block of columns of that channel, follow). out
 * receives 2*nlayers new tensors (caller frees); the result computes the
 * same function. */
lps_status lps_net_permute(lps_tensor **out, const lps_net_view *m, const int64_t *perm);
/* The canonical order of the `sorted` baseline: per hidden layer, units by
 * decreasing norm of (incoming weights, bias); equal norms keep index order. */
lps_status lps_net_sort_perm(int64_t *perm, const lps_net_view *m);

/* Fixed-length feature vectors of one model (baselines raw/sorted/stats/gram).
 * raw: the flattened parameters W1, b1, ... (row-major); sorted: the same
 * after lps_net_sort_perm; stats: 7 statistics (mean, population variance,
 * quantiles 0, .25, .5, .75, 1) of each tensor of three slots, 42 for any
 * architecture: the first layer (W, b), the last hidden layer (W, b) and the
 * head (W, b); with one hidden layer the first two slots hold the same layer.
 * gram: MLP: the Gram matrix of the unit-normalized rows of W1 over the
 * (pooled) input pixels; CNN: over the taps of the first conv layer's
 * kernels, each output channel's cin x k x k kernel centred in cin x 5 x 5
 * zeros (odd k <= 5) and normalized to unit norm: (25 cin)^2. Either as the
 * upper triangle with the diagonal, off-diagonal entries times sqrt 2. */
typedef enum { LPS_FEAT_RAW, LPS_FEAT_SORTED, LPS_FEAT_STATS, LPS_FEAT_GRAM } lps_feat_method;
typedef struct lps_feat_opts {
    /* gram of an MLP: average-pool the input image (d = s*s pixels) by
     * pool x pool before the Gram; 0 or 1 = no pooling. s must be divisible
     * by pool. (CNNs ignore it.) */
    int gram_pool;
} lps_feat_opts;
lps_status lps_features_size(int64_t *n, lps_feat_method method, const lps_net_view *m,
                             const lps_feat_opts *o);
lps_status lps_features(float *out, int64_t n, lps_feat_method method, const lps_net_view *m,
                        const lps_feat_opts *o);
/* Standardize the columns of x (n x f) in place: (x - mean) / sd. With fit,
 * mean and sd (f entries each) are first computed from x (population sd;
 * an sd below 1e-12 is taken as 1, so constant columns become 0). */
lps_status lps_standardize(lps_tensor *x, lps_tensor *mean, lps_tensor *sd, int fit);
/* out (na x nb) = cosine of the rows of a (na x f) and b (nb x f); 0 where a row is 0. */
lps_status lps_cosine_matrix(lps_tensor *out, const lps_tensor *a, const lps_tensor *b);

/* Linear assignment (shortest augmenting paths with potentials, O(n^2 m)):
 * cost is n x m row-major, finite. assign[i] = column of row i (0-based), or
 * -1 for rows left over when n > m. Minimizes, or maximizes if maximize. */
lps_status lps_linear_assignment(int64_t *assign, double *total, const double *cost, int64_t n,
                                 int64_t m, int maximize);

/* Git Re-Basin weight matching (Ainsworth et al. 2022) of b to a (same
 * architecture): alternating linear assignment over hidden layers until a
 * sweep improves nothing. Starts from a layer-by-layer match on incoming
 * weights and biases (input side first), and also descends from the identity
 * when that scores higher, so the result is never below no alignment.
 * CNNs: the units of a conv layer are its output channels, whose
 * permutation also acts on the next layer's input channels or the next
 * linear layer's column blocks. perm (lps_net_units entries) aligns b to a
 * via lps_net_permute. sim (optional) = cosine of a's and aligned b's
 * flattened parameters; iters (optional) = sweeps. */
typedef struct lps_match_opts {
    int max_iter; /* sweeps; <= 0 means 100 */
    lps_rng *rng; /* visit layers in a random order each sweep; NULL: in order */
} lps_match_opts;
lps_status lps_weight_matching(int64_t *perm, double *sim, int *iters, const lps_net_view *a,
                               const lps_net_view *b, const lps_match_opts *o);
/* out (na x nb) = weight-matching similarity of every pair; NaN for a pair
 * of different architectures (no permutation relates them). */
lps_status lps_matching_matrix(lps_tensor *out, const lps_net_view *a, int64_t na,
                               const lps_net_view *b, int64_t nb, const lps_match_opts *o);

/* Linear CKA (Kornblith et al. 2019) of x (N x p) and y (N x q): columns
 * centred, ||y'x||_F^2 / (||x'x||_F ||y'y||_F); 0 if either is constant. */
lps_status lps_linear_cka(double *cka, const lps_tensor *x, const lps_tensor *y);
/* Linear CKA of two models given their layers' activations on the same N
 * inputs (xa: la matrices N x p_l, shallow to deep; xb: lb matrices N x q_m),
 * paired by relative depth: layer l (1-based) of L covers ((l-1)/L, l/L] of
 * the depth, and the result is the mean over depth of the CKA of the two
 * layers covering it: sum over (l, m) of overlap(l, m) * CKA(xa_l, xb_m).
 * Same depth: the mean over layers of CKA(xa_l, xb_l). 2 vs 3 layers: weights
 * 1/3 (1,1), 1/6 (1,2), 1/6 (2,2), 1/3 (2,3). Activations of any layer kind
 * (e.g. flattened conv maps) fit; layers wider than N are compared through
 * their N x N Gram matrices (the same value, less work). */
lps_status lps_cka_layers(double *cka, const lps_tensor *const *xa, int la,
                          const lps_tensor *const *xb, int lb);
/* out (na x nb) = lps_cka_layers of every pair's hidden activations
 * (lps_net_hidden_acts) on probe (N x d); the models may differ in depth,
 * widths and family (an MLP against a CNN). */
lps_status lps_cka_matrix(lps_tensor *out, const lps_net_view *a, int64_t na,
                          const lps_net_view *b, int64_t nb, const lps_tensor *probe);

/* Retrieval from sim (nq x ng, larger = more similar) with integer labels.
 * Each query ranks the gallery by decreasing similarity, equal similarities
 * by increasing gallery index. cmc[j] = fraction of queries with a relevant
 * (same-label) item among the first ks[j]; map = mean average precision.
 * Queries without any relevant item are skipped (nvalid counts the others);
 * exclude_diag (square sim) drops gallery item i from query i's ranking.
 * ap (may be NULL; nq entries): each query's average precision, NaN for a
 * skipped query (paired comparisons of two methods query by query). */
lps_status lps_retrieval(double *cmc, double *map, int64_t *nvalid, double *ap, const lps_tensor *sim,
                         const int64_t *qlab, const int64_t *glab, const int64_t *ks, int nk,
                         int exclude_diag);
/* pred[q] = majority label of the k most similar gallery items (vote ties:
 * larger summed similarity, then smaller label). */
lps_status lps_knn_classify(int64_t *pred, const lps_tensor *sim, const int64_t *glab, int64_t k,
                            int exclude_diag);
/* pred[q] = the label whose gallery items have the largest mean similarity
 * to q (ties: smaller label). For cosine of unit embeddings this is the dot
 * product with each class's mean embedding. */
lps_status lps_centroid_classify(int64_t *pred, const lps_tensor *sim, const int64_t *glab,
                                 int exclude_diag);

/* Mutual-information scores of two labelings of n items, as scikit-learn's
 * normalized_mutual_info_score and adjusted_mutual_info_score with the
 * default arithmetic mean (natural logs; same special cases). */
lps_status lps_nmi(double *nmi, const int64_t *a, const int64_t *b, int64_t n);
lps_status lps_ami(double *ami, const int64_t *a, const int64_t *b, int64_t n);
/* Expected mutual information under the permutation model (Vinh et al. 2010). */
lps_status lps_emi(double *emi, const int64_t *a, const int64_t *b, int64_t n);

/* Rank correlations of n >= 2 pairs: Kendall tau-b (ties in either vector;
 * O(n^2)) and Spearman rho (Pearson of average ranks). NaN result when a
 * vector is constant. */
lps_status lps_kendall_tau_b(double *tau, const double *x, const double *y, int64_t n);
lps_status lps_spearman_rho(double *rho, const double *x, const double *y, int64_t n);

/* k most similar rows of emb (N x e) to q (e floats) by dot product (cosine
 * when both are unit length): idx (0-based) and score in decreasing score,
 * equal scores by increasing index. */
lps_status lps_topk(int64_t *idx, float *score, const lps_tensor *emb, const float *q, int64_t e,
                    int64_t k);

/* k-means (Lloyd) with k-means++ seeding drawn from r; the best of
 * `restarts` runs by inertia (sum of squared distances to the centre). */
typedef struct lps_kmeans_opts {
    int restarts; /* <= 0: 10 */
    int max_iter; /* <= 0: 300 */
} lps_kmeans_opts;
lps_status lps_kmeans(int64_t *assign, lps_tensor *centers, double *inertia, const lps_tensor *x,
                      int64_t k, const lps_kmeans_opts *o, lps_rng *r);

/* Symmetric eigendecomposition (Householder + implicit QL): a (n x n,
 * row-major, symmetric) is replaced by the eigenvectors as columns, w gets
 * the eigenvalues in increasing order. Each vector's largest entry is positive. */
lps_status lps_symeig(double *a, double *w, int64_t n);
/* out (n x k) = projection of the rows of x (n x d) on the top k principal
 * axes; var (optional, k) = the variances along them. */
lps_status lps_pca(lps_tensor *out, double *var, const lps_tensor *x, int64_t k);
/* Classical MDS from a similarity matrix (n x n, symmetrized): squared
 * distances s_ii + s_jj - 2 s_ij, double centring, top k eigenpairs. */
lps_status lps_mds(lps_tensor *out, const lps_tensor *sim, int64_t k);

/* ------------------------------------------ transferability estimators */
/* (csrc/eval/transferability.c) How well a candidate model suits a target
 * task, from its outputs on n target samples: features f (n x D, e.g. its
 * penultimate layer) or source-class probabilities theta (n x Z, its
 * softmax). y: n labels in 0..classes-1, at least two distinct. Inputs are
 * borrowed; results go to the caller's variables and arrays. Errors (the
 * message starts with the estimator's name): LPS_ESHAPE for a tensor that is
 * not 2-D, LPS_EINVAL for n < 2, classes < 2 or a single label present,
 * LPS_ERANGE for a label out of range, LPS_ENUMERIC for a non-finite value.
 * Computed in double; deterministic for one BLAS thread count. */

/* LogME (You et al. 2021), as the reference LogME.py (_fit_fixed_point):
 * per class c, the log evidence of the Bayesian linear model y_c ~ N(f w,
 * 1/beta), w ~ N(0, 1/alpha) (D weights) for the one-hot column y_c, alpha
 * and beta by at most 11 fixed-point steps (stop when alpha/beta moves by
 * <= 0.1%) over the min(n, D) singular values of f (from f'f when n > D,
 * else from f f'), divided by n. score = the mean over classes; evidence,
 * alpha, beta (classes entries each, or NULL) per class. All-zero features
 * score -inf. Two departures, both explained in transferability.c: the
 * reference drops singular values <= 1e-10 of f'f, so whether it counts
 * a null direction of a rank-deficient f depends on whether LAPACK's
 * rounding leaves it at 0 or above the cut (here all are counted, each
 * with log(alpha) in the log determinant, as the exact evidence does);
 * and when n < D its log determinant sums only n terms, leaving out the
 * D - n null directions of the prior, so its evidence exceeds the true one
 * by (D - n) log(alpha) / (2n). exact = 0 gives the reference's value,
 * exact = 1 the true one. */
lps_status lps_logme(double *score, double *evidence, double *alpha, double *beta,
                     const lps_tensor *f, const int64_t *y, int64_t classes, int exact);
/* LEEP (Nguyen et al. 2020): theta's rows are probabilities (>= 0, summing
 * to 1 within 1e-3). P(y, z) = sum over samples of class y of theta_iz / n,
 * P(y | z) = P(y, z) / sum_y P(y, z) (0 for a source class without mass),
 * score = mean_i log sum_z P(y_i | z) theta_iz (<= 0). */
lps_status lps_leep(double *score, const lps_tensor *theta, const int64_t *y, int64_t classes);
/* Leave-one-out accuracy of k-NN (1 <= k <= n-1) by cosine similarity of
 * f's rows (zero rows have cosine 0 to all): each sample's label predicted
 * from its k most similar others (lps_knn_classify's votes and ties). */
lps_status lps_knn_loo(double *acc, const lps_tensor *f, const int64_t *y, int64_t classes, int64_t k);
/* Ridge probe: one-hot targets on the centred features with an unpenalized
 * intercept, lambda = rho * trace(Fc'Fc) / D (rho relative to the mean
 * eigenvalue, so scaling f changes nothing), scored by its exact
 * leave-one-out predictions, from the hat matrix H = 11'/n + Fc (Fc'Fc +
 * lambda I)^-1 Fc': yhat_-i = (yhat_i - H_ii y_i) / (1 - H_ii). rho in
 * 1e-6..1e6, or 0: the one of 10^-3, 10^-2.5, ..., 10^3 (LPS_RIDGE_GRID
 * values) with the smallest LOO squared error (ties: the larger). accuracy
 * = share of samples whose LOO prediction's largest entry (ties: smaller
 * class) is their label. loo (n x classes doubles, or NULL) gets the LOO
 * predictions. */
#define LPS_RIDGE_GRID 13
typedef struct lps_ridge_result {
    double accuracy;   /* leave-one-out accuracy */
    double mse;        /* mean over samples of the squared LOO residual, summed over classes */
    double rho, lambda; /* the relative and absolute ridge used */
    int64_t rank;      /* spectral components kept (sigma > 1e-12 * the largest) */
    double grid_press[LPS_RIDGE_GRID]; /* rho = 0: mse at each grid value */
} lps_ridge_result;
lps_status lps_ridge_loo(lps_ridge_result *r, double *loo, const lps_tensor *f, const int64_t *y,
                         int64_t classes, double rho);
/* out (n x Z) = softmax of each row of logits (same shape), through double. */
lps_status lps_softmax_rows(lps_tensor *out, const lps_tensor *logits);

/* ------------------------------------------------------------ safetensors */
/* (csrc/io/: safetensors.c, json.c) The Hugging Face format: an 8-byte little-endian
 * header length N, N bytes of UTF-8 JSON mapping tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
 * "__metadata__" string-to-string map), then the data buffer. Readers check
 * everything the reference implementation checks: header size, UTF-8, JSON,
 * dtype, shape against byte count (with overflow checks), and offsets that
 * tile the data buffer exactly (no gap, no overlap, nothing after). */

#define LPS_ST_MAX_HEADER 100000000 /* bytes, as the reference implementation */
#define LPS_ST_MAX_RANK 16

typedef enum {
    LPS_ST_BOOL, LPS_ST_U8, LPS_ST_I8, LPS_ST_I16, LPS_ST_U16, LPS_ST_I32, LPS_ST_U32,
    LPS_ST_I64, LPS_ST_U64, LPS_ST_F16, LPS_ST_BF16, LPS_ST_F32, LPS_ST_F64, LPS_ST_C64,
    LPS_ST_F8_E5M2, LPS_ST_F8_E4M3, LPS_ST_F8_E8M0, LPS_ST_F6_E2M3, LPS_ST_F6_E3M2, LPS_ST_F4,
    LPS_ST_NDTYPES
} lps_st_dtype;

typedef struct lps_st_entry {
    const char *name;      /* UTF-8, NUL-terminated (names holding NUL are rejected) */
    lps_st_dtype dtype;
    int rank;              /* 0 (a scalar) .. LPS_ST_MAX_RANK */
    const int64_t *shape;  /* rank sizes */
    uint64_t begin, end;   /* byte range in the data buffer */
} lps_st_entry;

typedef struct lps_safetensors {
    size_t n;                   /* tensors, in header order */
    lps_st_entry *entries;
    size_t n_meta;              /* "__metadata__" pairs, in header order */
    const char **meta_keys, **meta_values;
    uint64_t header_len;        /* N */
    const uint8_t *data;        /* the data buffer; NULL after lps_safetensors_load_header */
    uint64_t data_len;
    void *owned_;               /* private */
} lps_safetensors;

/* Parse a whole file image; borrows buf, which must outlive the result. */
lps_safetensors *lps_safetensors_parse(const void *buf, size_t len);
/* Read and check a file; the header length is checked against the file
 * size before anything of that size is allocated. */
lps_safetensors *lps_safetensors_load(const char *path);
/* The same without reading the data buffer (data is NULL). */
lps_safetensors *lps_safetensors_load_header(const char *path);
void lps_safetensors_free(lps_safetensors *st);
/* Index of the tensor called name, or -1. */
int64_t lps_safetensors_find(const lps_safetensors *st, const char *name);
/* Entry i as a new float32 tensor: F32, F16, BF16 exactly, F64 and the
 * integer types (BOOL, U8..U64, I8..I64: counts such as batch norm's
 * num_batches_tracked) rounded to nearest. A scalar (rank 0) gives shape
 * (1); ranks above 4 and other dtypes fail with the tensor's name. */
lps_tensor *lps_safetensors_tensor(const lps_safetensors *st, size_t i);

const char *lps_st_dtype_name(lps_st_dtype d);
int lps_st_dtype_bits(lps_st_dtype d);
/* Exact IEEE binary16 and bfloat16 to float32 (subnormals, inf, NaN). */
float lps_f16_to_f32(uint16_t h);
float lps_bf16_to_f32(uint16_t b);

/* Serialize float32 tensors as the reference writer does: sorted by name,
 * contiguous offsets from 0, header padded with spaces to a multiple of 8,
 * "__metadata__" first (keys sorted) when n_meta > 0. Names and metadata must
 * be valid UTF-8 and unique; "__metadata__" is not a tensor name. *out is
 * malloc'ed: release it with free(). */
lps_status lps_safetensors_encode(const char *const *names, const lps_tensor *const *tensors,
                                  size_t n, const char *const *meta_keys,
                                  const char *const *meta_values, size_t n_meta, uint8_t **out,
                                  size_t *out_len);
/* The same into a file, atomically (a temporary file renamed over path). */
lps_status lps_safetensors_save(const char *path, const char *const *names,
                                const lps_tensor *const *tensors, size_t n,
                                const char *const *meta_keys, const char *const *meta_values,
                                size_t n_meta);

/* The raw text of top-level members of a JSON object (csrc/io/json.c): for
 * each of the n keys, its value's offset in text and its length (0 where the
 * key is absent; of duplicate keys the last, as most readers take). Reads a
 * record's arch or family without decoding the rest of its metadata.
 * LPS_EFORMAT when text is not well-formed JSON or not an object. */
lps_status lps_json_members(const char *text, size_t len, size_t n, const char *const *keys, size_t *off,
                            size_t *mlen);

#ifdef __cplusplus
}
#endif
#endif /* LUALPS_H */
