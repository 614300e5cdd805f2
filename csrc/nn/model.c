/* model.c - what all layers share (references, checked forward/backward,
 * parameter lists) and the sequential container with its reused buffers. */
#include "nn/nn_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

lps_layer *lps_layer_alloc(const lps_layer_ops *ops)
{
    lps_layer *l = calloc(1, sizeof *l);
    if (!l) {
        lps_fail(LPS_ENOMEM, "%s: cannot allocate a layer", ops->name);
        return NULL;
    }
    l->ops = ops;
    l->refcount = 1;
    l->training = 1;
    return l;
}

lps_status lps_layer_add_params(lps_layer *l, int wdim, const int64_t *wshape, int64_t nbias,
                                double bound, lps_rng *r)
{
    l->param[0] = lps_tensor_new(wdim, wshape);
    l->grad[0] = lps_tensor_new(wdim, wshape);
    l->param[1] = lps_tensor_new(1, &nbias);
    l->grad[1] = lps_tensor_new(1, &nbias);
    l->nparams = 2;
    for (int i = 0; i < 2; i++)
        if (!l->param[i] || !l->grad[i]) return LPS_ENOMEM;
    lps_rand(l->param[0], r, (float)-bound, (float)bound);
    lps_rand(l->param[1], r, (float)-bound, (float)bound);
    return LPS_OK;
}

float *lps_scratch_get(lps_scratch *s, int64_t n, const char *op)
{
    if (n <= s->n) return s->p;
    float *p = lps_alloc_floats(n, op);
    if (!p) return NULL;
    lps_free_floats(s->p);
    s->p = p;
    s->n = n;
    return p;
}

void lps_scratch_free(lps_scratch *s)
{
    lps_free_floats(s->p);
    s->p = NULL;
    s->n = 0;
}

float lps_sum_floats(const float *x, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += x[i + k];
    for (int k = 0; i < n; i++, k++) acc[k] += x[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

lps_layer *lps_layer_ref(lps_layer *l)
{
    l->refcount++;
    return l;
}

void lps_layer_free(lps_layer *l)
{
    if (!l || --l->refcount > 0) return;
    if (l->ops->destroy) l->ops->destroy(l);
    for (int i = 0; i < l->nparams; i++) {
        lps_tensor_free(l->param[i]);
        lps_tensor_free(l->grad[i]);
    }
    for (int i = 0; i < l->nchildren; i++) lps_layer_free(l->children[i]);
    free(l->children);
    free(l);
}

/* ------------------------------------------------------ checked calls */

lps_status lps_layer_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                               int64_t *out)
{
    if (ndim < 1 || ndim > LPS_MAX_DIMS)
        return lps_fail(LPS_ESHAPE, "%s: input has %d dimensions", l->ops->name, ndim);
    return l->ops->out_shape(l, ndim, in, ondim, out);
}

static lps_status check_out(const lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                            const char *what)
{
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    lps_status s = lps_layer_out_shape(l, x->ndim, x->shape, &nd, shape);
    if (s) return s;
    lps_tensor want = lps_view_as(y, nd, shape);
    if (!lps_same_shape(&want, y))
        return lps_fail(LPS_ESHAPE, "%s: %s %s should be %s for input %s", l->ops->name, what,
                        SH(y), SH(&want), SH(x));
    return LPS_OK;
}

lps_status lps_layer_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    lps_status s = check_out(l, x, y, "output");
    return s ? s : l->ops->forward(l, x, y);
}

lps_status lps_layer_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                              const lps_tensor *gy, lps_tensor *gx)
{
    lps_status s = check_out(l, x, y, "output");
    if (s) return s;
    if (!lps_same_shape(gy, y))
        return lps_fail(LPS_ESHAPE, "%s backward: output gradient %s differs from output %s",
                        l->ops->name, SH(gy), SH(y));
    if (gx && !lps_same_shape(gx, x))
        return lps_fail(LPS_ESHAPE, "%s backward: input gradient %s differs from input %s",
                        l->ops->name, SH(gx), SH(x));
    return l->ops->backward(l, x, y, gy, gx);
}

static int collect(const lps_layer *l, lps_tensor **p, lps_tensor **g, int max, int k)
{
    for (int i = 0; i < l->nparams; i++, k++)
        if (k < max) {
            if (p) p[k] = l->param[i];
            if (g) g[k] = l->grad[i];
        }
    for (int i = 0; i < l->nchildren; i++) k = collect(l->children[i], p, g, max, k);
    return k;
}

int lps_layer_params(const lps_layer *l, lps_tensor **params, lps_tensor **grads, int max)
{
    return collect(l, params, grads, max, 0);
}

int64_t lps_layer_numel(const lps_layer *l)
{
    int64_t n = 0;
    for (int i = 0; i < l->nparams; i++) n += l->param[i]->numel;
    for (int i = 0; i < l->nchildren; i++) n += lps_layer_numel(l->children[i]);
    return n;
}

void lps_layer_zero_grad(lps_layer *l)
{
    for (int i = 0; i < l->nparams; i++)
        memset(l->grad[i]->data, 0, (size_t)l->grad[i]->numel * sizeof(float));
    for (int i = 0; i < l->nchildren; i++) lps_layer_zero_grad(l->children[i]);
}

void lps_layer_set_frozen(lps_layer *l, int frozen)
{
    l->frozen = frozen != 0;
    for (int i = 0; i < l->nchildren; i++) lps_layer_set_frozen(l->children[i], frozen);
}

void lps_layer_set_training(lps_layer *l, int training)
{
    l->training = training != 0;
    for (int i = 0; i < l->nchildren; i++) lps_layer_set_training(l->children[i], training);
}

/* ------------------------------------------------------------ sequential */

/* Activation and gradient between child i and i+1: storage grown on demand,
 * and a header with the current shape over it. */
typedef struct {
    lps_tensor *store;
    lps_tensor view;
} seqbuf;

typedef struct {
    seqbuf *act, *grad; /* nchildren - 1 each */
    int64_t in_shape[LPS_MAX_DIMS];
    int in_ndim;        /* shape of the last forward's input (0: none yet) */
} seqpriv;

static lps_status ensure(seqbuf *b, int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    if (!b->store || b->store->numel < n) {
        lps_tensor_free(b->store);
        b->store = lps_tensor_new(1, &n);
        if (!b->store) return LPS_ENOMEM;
    }
    b->view = lps_view_as(b->store, ndim, shape);
    return LPS_OK;
}

/* Chain the children's shapes; on failure name the child. */
static lps_status seq_shapes(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                             int64_t *out, seqpriv *sizing)
{
    int nd = ndim;
    int64_t cur[LPS_MAX_DIMS];
    memcpy(cur, in, sizeof(int64_t) * (size_t)ndim);
    for (int i = 0; i < l->nchildren; i++) {
        int nnd;
        int64_t next[LPS_MAX_DIMS];
        lps_status s = lps_layer_out_shape(l->children[i], nd, cur, &nnd, next);
        if (s) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", lps_errmsg());
            return lps_fail(s, "sequential layer %d: %s", i + 1, msg);
        }
        if (sizing && i + 1 < l->nchildren) {
            if (ensure(&sizing->act[i], nnd, next) || ensure(&sizing->grad[i], nnd, next))
                return LPS_ENOMEM;
        }
        nd = nnd;
        memcpy(cur, next, sizeof cur);
    }
    *ondim = nd;
    memcpy(out, cur, sizeof(int64_t) * (size_t)nd);
    return LPS_OK;
}

/* A relu directly followed by a max-pooling runs as one step (seq_forward). */
static int relu_pool(const lps_layer *l, int i)
{
    return i + 1 < l->nchildren && l->children[i]->ops->type == LPS_LAYER_RELU &&
           l->children[i + 1]->ops->type == LPS_LAYER_MAXPOOL2D;
}

static lps_status seq_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                                int64_t *out)
{
    return seq_shapes(l, ndim, in, ondim, out, NULL);
}

static lps_status seq_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    seqpriv *p = l->priv;
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    p->in_ndim = 0;
    lps_status s = seq_shapes(l, x->ndim, x->shape, &nd, shape, p);
    if (s) return s;
    for (int i = 0; i < l->nchildren; i++) {
        const lps_tensor *in = i ? &p->act[i - 1].view : x;
        if (relu_pool(l, i)) {
            /* relu then max-pooling is max-pooling then relu, on a quarter of
             * the values: the relu's own output is never built */
            lps_layer *relu = l->children[i], *pool = l->children[i + 1];
            lps_tensor *out = i + 2 < l->nchildren ? &p->act[i + 1].view : y;
            s = pool->ops->forward(pool, in, out);
            if (!s) s = relu->ops->forward(relu, out, out);
            if (s) return s;
            i++;
            continue;
        }
        lps_tensor *out = i + 1 < l->nchildren ? &p->act[i].view : y;
        s = l->children[i]->ops->forward(l->children[i], in, out);
        if (s) return s;
    }
    p->in_ndim = x->ndim;
    memcpy(p->in_shape, x->shape, sizeof p->in_shape);
    return LPS_OK;
}

static lps_status seq_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                               const lps_tensor *gy, lps_tensor *gx)
{
    seqpriv *p = l->priv;
    if (p->in_ndim != x->ndim || memcmp(p->in_shape, x->shape, sizeof p->in_shape) != 0)
        return lps_fail(LPS_EINVAL, "sequential backward: input %s was not the last forward's input",
                        SH(x));
    int n = l->nchildren;
    for (int i = n - 1; i >= 0; i--) {
        if (i > 0 && relu_pool(l, i - 1)) {
            /* the pair's backward: relu's mask from the pooled output (positive
             * exactly where the pooled input is), then the pooling's backward
             * on the relu's input; windows whose maximum is not positive get
             * no gradient either way. The relu's output gradient buffer holds
             * the masked pooled gradient. */
            int r = i - 1;
            lps_layer *relu = l->children[r], *pool = l->children[i];
            const lps_tensor *in = r ? &p->act[r - 1].view : x;
            const lps_tensor *out = i + 1 < n ? &p->act[i].view : y;
            const lps_tensor *gout = i + 1 < n ? &p->grad[i].view : gy;
            lps_tensor *gin = r ? &p->grad[r - 1].view : gx;
            lps_tensor masked = lps_view_as(p->grad[r].store, out->ndim, out->shape);
            if (gin) {
                lps_status s = relu->ops->backward(relu, out, out, gout, &masked);
                if (!s) s = pool->ops->backward(pool, in, out, &masked, gin);
                if (s) return s;
            }
            i = r;
            continue;
        }
        const lps_tensor *in = i ? &p->act[i - 1].view : x;
        const lps_tensor *out = i + 1 < n ? &p->act[i].view : y;
        const lps_tensor *gout = i + 1 < n ? &p->grad[i].view : gy;
        lps_tensor *gin = i ? &p->grad[i - 1].view : gx;
        lps_status s = l->children[i]->ops->backward(l->children[i], in, out, gout, gin);
        if (s) return s;
    }
    return LPS_OK;
}

static void seq_destroy(lps_layer *l)
{
    seqpriv *p = l->priv;
    if (!p) return;
    for (int i = 0; i + 1 < l->nchildren; i++) {
        lps_tensor_free(p->act[i].store);
        lps_tensor_free(p->grad[i].store);
    }
    free(p->act);
    free(p->grad);
    free(p);
}

static int contains(const lps_layer *tree, const lps_layer *l)
{
    if (tree == l) return 1;
    for (int i = 0; i < tree->nchildren; i++)
        if (contains(tree->children[i], l)) return 1;
    return 0;
}

static const lps_layer_ops seq_ops = {LPS_LAYER_SEQUENTIAL, "sequential", seq_out_shape, seq_forward,
                                      seq_backward, seq_destroy};

lps_layer *lps_sequential_new(lps_layer *const *children, int n)
{
    if (n < 1) {
        lps_fail(LPS_EINVAL, "sequential: needs at least one layer");
        return NULL;
    }
    /* A layer used twice would count its parameters twice and share buffers. */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (contains(children[j], children[i]) || contains(children[i], children[j])) {
                lps_fail(LPS_EINVAL, "sequential: layer %d (%s) is also used by layer %d; "
                         "a layer may appear only once", i + 1, children[i]->ops->name, j + 1);
                return NULL;
            }
    lps_layer *l = lps_layer_alloc(&seq_ops);
    if (!l) return NULL;
    l->children = calloc((size_t)n, sizeof *l->children);
    seqpriv *p = calloc(1, sizeof *p);
    l->priv = p;
    if (p) {
        p->act = calloc((size_t)n, sizeof *p->act);
        p->grad = calloc((size_t)n, sizeof *p->grad);
    }
    if (!l->children || !p || !p->act || !p->grad) {
        lps_layer_free(l);
        lps_fail(LPS_ENOMEM, "sequential: cannot allocate %d layers", n);
        return NULL;
    }
    for (int i = 0; i < n; i++) l->children[i] = lps_layer_ref(children[i]);
    l->nchildren = n;
    return l;
}
