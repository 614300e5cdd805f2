/* model.c - what all layers share (references, checked forward/backward,
 * parameters and buffers with their PyTorch names, printing, building from
 * an architecture and back) and the Sequential container with its reused
 * buffers. Nothing here names a layer type. */
#include "nn/nn_internal.h"
#include "nn/simd.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

lps_layer *lps_layer_alloc(const lps_layer_type *t, const lps_arch_entry *e)
{
    lps_layer *l = calloc(1, sizeof *l);
    if (!l) {
        lps_fail(LPS_ENOMEM, "%s: cannot allocate a layer", t->name);
        return NULL;
    }
    l->type = t;
    l->refcount = 1;
    l->training = 1;
    if (e) l->cfg = *e;
    l->cfg.type = t;
    return l;
}

lps_status lps_layer_add_param(lps_layer *l, const char *name, int ndim, const int64_t *shape,
                               double bound, lps_rng *r)
{
    if (l->nparams == LPS_LAYER_TENSORS)
        return lps_fail(LPS_EINVAL, "%s: more than %d parameters", l->type->name, LPS_LAYER_TENSORS);
    lps_tensor *p = lps_tensor_new(ndim, shape), *g = lps_tensor_new(ndim, shape);
    if (!p || !g) {
        lps_tensor_free(p);
        lps_tensor_free(g);
        return LPS_ENOMEM;
    }
    if (r) lps_rand(p, r, (float)-bound, (float)bound);
    l->param[l->nparams] = p;
    l->grad[l->nparams] = g;
    l->param_name[l->nparams++] = name;
    return LPS_OK;
}

lps_status lps_layer_add_buffer(lps_layer *l, const char *name, int64_t n, float v)
{
    if (l->nbuffers == LPS_LAYER_TENSORS)
        return lps_fail(LPS_EINVAL, "%s: more than %d buffers", l->type->name, LPS_LAYER_TENSORS);
    lps_tensor *b = lps_tensor_new(1, &n);
    if (!b) return LPS_ENOMEM;
    lps_fill(b, v);
    l->buffer[l->nbuffers] = b;
    l->buffer_name[l->nbuffers++] = name;
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
    if (l->type->destroy) l->type->destroy(l);
    for (int i = 0; i < l->nparams; i++) {
        lps_tensor_free(l->param[i]);
        lps_tensor_free(l->grad[i]);
    }
    for (int i = 0; i < l->nbuffers; i++) lps_tensor_free(l->buffer[i]);
    for (int i = 0; i < l->nchildren; i++) lps_layer_free(l->children[i]);
    free(l->children);
    free(l);
}

/* ------------------------------------------------------ building */

/* A short name of one layer for shape messages: "conv2d(1 -> 8)". */
static void layer_who(const lps_layer *l, char *buf, size_t n)
{
    const lps_field *f = l->type->fields;
    if (f && f[0].key && f[1].key && !strcmp(f[0].key, "in") && !strcmp(f[1].key, "out"))
        snprintf(buf, n, "%s(%lld -> %lld)", l->type->name, (long long)FI(&l->cfg, 0),
                 (long long)FI(&l->cfg, 1));
    else
        snprintf(buf, n, "%s", l->type->name);
}

static int contains(const lps_layer *tree, const lps_layer *l);

/* Some layer of b is also in a. */
static int shares(const lps_layer *a, const lps_layer *b)
{
    if (contains(a, b)) return 1;
    for (int i = 0; i < b->nchildren; i++)
        if (shares(a, b->children[i])) return 1;
    return 0;
}

static const char *const branch_names[2] = {"body", "shortcut"};

/* A branch type's two children, named as the attributes of the PyTorch
 * module: each the given module (shared; a leaf becomes a Sequential of one,
 * as an nn.Sequential attribute holds it) or built from the entry's list
 * (none: an empty Sequential, the identity). */
static lps_status add_branches(lps_layer *l, const lps_arch_entry *e, lps_layer *const *given,
                               lps_rng *init)
{
    const char *t = l->type->name;
    l->children = calloc(2, sizeof *l->children);
    if (!l->children) return lps_fail(LPS_ENOMEM, "%s: cannot allocate its branches", t);
    l->child_names = branch_names;
    for (int b = 0; b < 2; b++) {
        lps_layer *m = given ? given[b] : NULL, *c;
        const lps_arch *a = b ? e->shortcut : e->body;
        if (m) c = lps_layer_is_sequential(m) ? lps_layer_ref(m) : lps_sequential_of(&m, 1);
        else c = a ? lps_layer_from_arch(a, init) : lps_sequential_of(NULL, 0);
        if (!c) {
            char msg[600];
            lps_fmt(msg, sizeof msg, "%s", lps_errmsg());
            return lps_fail(LPS_EINVAL, "%s: %s %s", t, branch_names[b], msg);
        }
        l->children[l->nchildren++] = c;
    }
    if (shares(l->children[0], l->children[1]))
        return lps_fail(LPS_EINVAL, "%s: body and shortcut share a layer; a layer may appear only once", t);
    return LPS_OK;
}

/* lps_layer_new, with a branch type's branches given as modules (NULL: from
 * the entry's lists). */
static lps_layer *layer_new(const lps_arch_entry *entry, lps_layer *const *given, lps_rng *init)
{
    if (!entry || !entry->type) {
        lps_fail(LPS_EINVAL, "layer: no layer type");
        return NULL;
    }
    lps_arch_entry ec = *entry, *e = &ec;
    lps_arch_entry_finish(e);
    const lps_layer_type *t = e->type;
    lps_layer *l = NULL;
    lps_arch *mod_arch[2] = {NULL, NULL}; /* the given branches' lists, for the checks */
    for (int i = 0; t->fields && t->fields[i].key; i++)
        if (isnan(e->v[i])) {
            lps_fail(LPS_EINVAL, "%s: \"%s\" is missing", t->name, t->fields[i].key);
            return NULL;
        }
    for (int b = 0; given && b < 2; b++) {
        if (!given[b]) continue;
        if (!t->branches) {
            lps_fail(LPS_EINVAL, "%s: has no branches", t->name);
            goto done;
        }
        if (lps_layer_arch(given[b], &mod_arch[b])) {
            char msg[600];
            lps_fmt(msg, sizeof msg, "%s", lps_errmsg());
            lps_fail(LPS_EINVAL, "%s: %s: %s", t->name, branch_names[b], msg);
            goto done;
        }
        if (b) e->shortcut = mod_arch[b];
        else e->body = mod_arch[b];
    }
    if (t->branches && !e->body) {
        lps_fail(LPS_EINVAL, "%s: \"body\" is missing", t->name);
        goto done;
    }
    /* the fields alone must be consistent (no input yet) */
    lps_flow f = {.mult = 1, .quiet = 1};
    if (t->flow(e, &f)) { /* rerun named for the message */
        f = (lps_flow){.mult = 1};
        lps_fmt(f.who, sizeof f.who, "%s", t->name);
        lps_fmt(f.from, sizeof f.from, "its input");
        if (t->flow(e, &f)) goto done;
    }
    if (!(l = lps_layer_alloc(t, e))) goto done;
    lps_status s = t->branches ? add_branches(l, e, given, init) : LPS_OK;
    if (!s && t->create) s = t->create(l, init);
    l->cfg.body = l->cfg.shortcut = NULL; /* the branches are its children now */
    if (s) {
        if (s == LPS_ENOMEM) lps_fail(LPS_ENOMEM, "%s: cannot allocate its parameters", t->name);
        lps_layer_free(l);
        l = NULL;
    }
done:
    lps_arch_free(mod_arch[0]);
    lps_arch_free(mod_arch[1]);
    return l;
}

lps_layer *lps_layer_new(const lps_arch_entry *entry, lps_rng *init)
{
    return layer_new(entry, NULL, init);
}

lps_layer *lps_layer_new_branches(const lps_arch_entry *entry, lps_layer *body, lps_layer *shortcut,
                                  lps_rng *init)
{
    lps_layer *given[2] = {body, shortcut};
    return layer_new(entry, given, init);
}

lps_layer *lps_layer_from_arch(const lps_arch *a, lps_rng *init)
{
    int n = a ? (int)a->n : 0;
    lps_layer **kids = calloc((size_t)(n ? n : 1), sizeof *kids);
    if (!kids) {
        lps_fail(LPS_ENOMEM, "from_arch: cannot allocate %d layers", n);
        return NULL;
    }
    lps_layer *seq = NULL;
    int i = 0;
    for (; i < n; i++) {
        kids[i] = lps_layer_new(&a->entries[i], init);
        if (!kids[i]) {
            char msg[600];
            lps_fmt(msg, sizeof msg, "%s", lps_errmsg());
            lps_fail(LPS_EINVAL, "layer %d: %s", i + 1, msg);
            break;
        }
    }
    if (i == n) seq = lps_sequential_of(kids, n);
    for (int k = 0; k < i; k++) lps_layer_free(kids[k]);
    free(kids);
    return seq;
}

static lps_status arch_of(const lps_layer *l, lps_arch **out, const char *who);

/* The entries of a Sequential's children. */
static lps_status arch_of_children(const lps_layer *l, lps_arch *a, const char *who)
{
    a->entries = calloc((size_t)(l->nchildren ? l->nchildren : 1), sizeof *a->entries);
    if (!a->entries) return lps_fail(LPS_ENOMEM, "arch: out of memory");
    for (int i = 0; i < l->nchildren; i++) {
        const lps_layer *c = l->children[i];
        if (!c->type->flow)
            return lps_fail(LPS_EINVAL, "arch: %slayer %d is a nested Sequential, which has no arch "
                            "entry (the list is flat: build the model as one sequential, with "
                            "residual blocks for branches)", who, i + 1);
        lps_arch_entry *e = &a->entries[a->n++];
        *e = c->cfg;
        if (c->type->branches) {
            char sub[256];
            lps_fmt(sub, sizeof sub, "%slayer %d (%s) ", who, i + 1, c->type->name);
            for (int b = 0; b < c->nchildren && b < 2; b++) {
                lps_status s = arch_of(c->children[b], b ? &e->shortcut : &e->body, sub);
                if (s) return s;
            }
            if (!e->shortcut && !(e->shortcut = calloc(1, sizeof *e->shortcut)))
                return lps_fail(LPS_ENOMEM, "arch: out of memory");
        }
    }
    return LPS_OK;
}

static lps_status arch_of(const lps_layer *l, lps_arch **out, const char *who)
{
    lps_arch *a = calloc(1, sizeof *a);
    if (!a) return lps_fail(LPS_ENOMEM, "arch: out of memory");
    lps_status s;
    if (l->type->flow) { /* a leaf: a list of one */
        lps_layer tmp = {.type = l->type, .nchildren = 1, .children = (lps_layer **)&l};
        s = arch_of_children(&tmp, a, who);
    } else {
        s = arch_of_children(l, a, who);
    }
    if (s) {
        lps_arch_free(a);
        return s;
    }
    *out = a;
    return LPS_OK;
}

lps_status lps_layer_arch(const lps_layer *l, lps_arch **out)
{
    *out = NULL;
    lps_arch *a;
    lps_status s = arch_of(l, &a, "");
    if (s) return s;
    if ((s = lps_arch_reflow(a))) {
        lps_arch_free(a);
        return s;
    }
    *out = a;
    return LPS_OK;
}

/* ------------------------------------------------------ checked calls */

/* The output shape of l for input sizes a tensor can have (1 to
 * LPS_MAX_DIMS of them, at most 2^40 elements): a layer's own forward and
 * a sequential's children, whose sizes come from such an input. */
static lps_status out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim, int64_t *out)
{
    if (l->type->out_shape) return l->type->out_shape(l, ndim, in, ondim, out);
    if (in[0] > INT32_MAX)
        return lps_fail(LPS_ESHAPE, "%s: a batch of %lld samples is more than BLAS takes", l->type->name,
                        (long long)in[0]);
    if (ndim == 1) { /* a batch of scalars: only element-wise layers take it */
        if (l->type->flow != lps_flow_same)
            return lps_fail(LPS_ESHAPE, "%s: input (%lld) needs a batch dimension and at least one more",
                            l->type->name, (long long)in[0]);
        *ondim = 1;
        out[0] = in[0];
        return LPS_OK;
    }
    lps_tensor t = {.ndim = ndim};
    for (int i = 0; i < ndim; i++) t.shape[i] = in[i];
    lps_flow f;
    lps_status s = LPS_OK;
    /* quiet first (formatting the names costs more than the check); a
     * failure is rerun named for its message */
    for (int quiet = 1; quiet >= 0; quiet--) {
        memset(&f, 0, sizeof f);
        f.rank = ndim - 1;
        for (int i = 1; i < ndim; i++) f.d[i - 1] = in[i];
        f.mult = 1;
        f.instance = 1;
        f.quiet = quiet;
        if (!quiet) {
            layer_who(l, f.who, sizeof f.who);
            lps_fmt(f.from, sizeof f.from, "its input %s", SH(&t));
        }
        if (!(s = l->type->flow(&l->cfg, &f))) break;
    }
    if (s) return s;
    if (f.rank < 1) {
        layer_who(l, f.who, sizeof f.who);
        return lps_fail(LPS_ESHAPE, "%s: gives no output for input %s", f.who, SH(&t));
    }
    *ondim = f.rank + 1;
    out[0] = in[0];
    for (int i = 0; i < f.rank; i++) out[i + 1] = f.d[i];
    return LPS_OK;
}

lps_status lps_layer_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                               int64_t *out)
{
    if (ndim < 1 || ndim > LPS_MAX_DIMS)
        return lps_fail(LPS_ESHAPE, "%s: input has %d dimensions", l->type->name, ndim);
    /* sizes no tensor can have (more than 2^40 elements) would overflow
     * the shape flows' arithmetic: checked once, where sizes come in */
    if (lps_shape_check(l->type->name, ndim, in, NULL)) return LPS_ESHAPE;
    return out_shape(l, ndim, in, ondim, out);
}

static lps_status check_out(const lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                            const char *what)
{
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    lps_status s = out_shape(l, x->ndim, x->shape, &nd, shape);
    if (s) return s;
    lps_tensor want = lps_view_as(y, nd, shape);
    if (!lps_same_shape(&want, y))
        return lps_fail(LPS_ESHAPE, "%s: %s %s should be %s for input %s", l->type->name, what,
                        SH(y), SH(&want), SH(x));
    return LPS_OK;
}

lps_status lps_layer_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    lps_status s = check_out(l, x, y, "output");
    return s ? s : l->type->forward(l, x, y);
}

static void set_replay(lps_layer *l, int on)
{
    l->replay = on;
    for (int i = 0; i < l->nchildren; i++) set_replay(l->children[i], on);
}

lps_status lps_layer_replay(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    set_replay(l, 1);
    lps_status s = lps_layer_forward(l, x, y);
    set_replay(l, 0);
    return s;
}

lps_status lps_layer_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                              const lps_tensor *gy, lps_tensor *gx)
{
    lps_status s = check_out(l, x, y, "output");
    if (s) return s;
    if (!lps_same_shape(gy, y))
        return lps_fail(LPS_ESHAPE, "%s backward: output gradient %s differs from output %s",
                        l->type->name, SH(gy), SH(y));
    if (gx && !lps_same_shape(gx, x))
        return lps_fail(LPS_ESHAPE, "%s backward: input gradient %s differs from input %s",
                        l->type->name, SH(gx), SH(x));
    return l->type->backward(l, x, y, gy, gx);
}

/* ------------------------------------------------------ tensors */

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

static void named(const lps_layer *l, char *prefix, size_t len, lps_named_fn fn, void *ud)
{
    for (int b = 0; b < 2; b++) /* parameters, then buffers, as PyTorch's state_dict */
        for (int i = 0; i < (b ? l->nbuffers : l->nparams); i++) {
            snprintf(prefix + len, 512 - len, "%s", b ? l->buffer_name[i] : l->param_name[i]);
            fn(ud, prefix, b ? l->buffer[i] : l->param[i], b);
        }
    for (int i = 0; i < l->nchildren; i++) {
        int k = l->child_names ? snprintf(prefix + len, 512 - len, "%s.", l->child_names[i])
                               : snprintf(prefix + len, 512 - len, "%d.", i);
        if (k > 0 && len + (size_t)k < 500) named(l->children[i], prefix, len + (size_t)k, fn, ud);
    }
    prefix[len] = '\0';
}

void lps_layer_named(const lps_layer *l, lps_named_fn fn, void *ud)
{
    char prefix[512] = "";
    named(l, prefix, 0, fn, ud);
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

void lps_layer_set_stat_prior(lps_layer *l, float w)
{
    l->stat_prior = w;
    for (int i = 0; i < l->nchildren; i++) lps_layer_set_stat_prior(l->children[i], w);
}

void lps_layer_set_batch_stats(lps_layer *l, int on)
{
    l->batch_stats = on != 0;
    for (int i = 0; i < l->nchildren; i++) lps_layer_set_batch_stats(l->children[i], on);
}

void lps_layer_set_training(lps_layer *l, int training)
{
    l->training = training != 0;
    for (int i = 0; i < l->nchildren; i++) lps_layer_set_training(l->children[i], training);
}

/* ------------------------------------------------------ printing */

typedef struct {
    char *b;
    size_t n, cap;
    int oom;
} text;

static void add(text *t, const char *s)
{
    size_t k = strlen(s);
    if (t->oom) return;
    if (t->n + k + 1 > t->cap) {
        size_t cap = (t->cap + k + 1) * 2;
        char *nb = realloc(t->b, cap);
        if (!nb) {
            t->oom = 1;
            return;
        }
        t->b = nb;
        t->cap = cap;
    }
    memcpy(t->b + t->n, s, k + 1);
    t->n += k;
}

static void repr(text *t, const lps_layer *l, int indent)
{
    char s[256];
    l->type->repr(&l->cfg, s, sizeof s);
    add(t, s);
    if (l->type->flow && !l->nchildren) return;
    if (!l->nchildren) { /* an empty container: PyTorch prints "Sequential()" */
        add(t, "()");
        return;
    }
    add(t, "(\n");
    for (int i = 0; i < l->nchildren; i++) {
        for (int k = 0; k < indent + 2; k++) add(t, " ");
        if (l->child_names) snprintf(s, sizeof s, "(%s): ", l->child_names[i]);
        else snprintf(s, sizeof s, "(%d): ", i);
        add(t, s);
        repr(t, l->children[i], indent + 2);
        add(t, "\n");
    }
    for (int k = 0; k < indent; k++) add(t, " ");
    add(t, ")");
}

char *lps_layer_repr(const lps_layer *l)
{
    text t = {NULL, 0, 0, 0};
    add(&t, "");
    repr(&t, l, 0);
    if (t.oom) {
        free(t.b);
        lps_fail(LPS_ENOMEM, "repr: out of memory");
        return NULL;
    }
    return t.b;
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
        b->store = lps_tensor_empty(1, &n); /* every layer writes its output before it is read */
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
        lps_status s = out_shape(l->children[i], nd, cur, &nnd, next);
        if (s) {
            char msg[1024];
            lps_fmt(msg, sizeof msg, "%s", lps_errmsg());
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

/* A sign-gated element-wise layer directly followed by a window maximum runs
 * after it (seq_forward): max-pooling then ReLU is ReLU then max-pooling, on
 * a fraction of the values. */
static int fused(const lps_layer *l, int i)
{
    return i + 1 < l->nchildren && (l->children[i]->type->flags & LPS_LT_SIGN_GATE) &&
           (l->children[i + 1]->type->flags & LPS_LT_WINDOW_MAX);
}

/* A layer that applies a ReLU in its own forward pass (forward_relu),
 * directly followed by a ReLU that is not run after a window maximum: the
 * pair runs as one pass, writing only the ReLU's output; in backward the
 * ReLU's gradient comes first, from the sign of its output, then the
 * layer's, given the ReLU's output as its y (see forward_relu). */
static int relu_fused(const lps_layer *l, int i)
{
    return i + 1 < l->nchildren && l->children[i]->type->forward_relu &&
           (l->children[i + 1]->type->flags & LPS_LT_RELU) && !fused(l, i + 1);
}

static lps_status seq_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                                int64_t *out)
{
    return seq_shapes(l, ndim, in, ondim, out, NULL);
}

/* seq_forward, the last layer adding r (and with relu a ReLU) when r is set. */
static lps_status seq_run(lps_layer *l, const lps_tensor *x, lps_tensor *y, const float *r, int relu)
{
    seqpriv *p = l->priv;
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    p->in_ndim = 0;
    lps_status s = seq_shapes(l, x->ndim, x->shape, &nd, shape, p);
    if (s) return s;
    if (l->nchildren == 0) { /* identity */
        if (x->numel && y->data != x->data) memcpy(y->data, x->data, (size_t)x->numel * sizeof(float));
    }
    for (int i = 0; i < l->nchildren; i++) {
        const lps_tensor *in = i ? &p->act[i - 1].view : x;
        if (fused(l, i)) {
            lps_layer *gate = l->children[i], *pool = l->children[i + 1];
            lps_tensor *out = i + 2 < l->nchildren ? &p->act[i + 1].view : y;
            s = pool->type->forward(pool, in, out);
            if (!s) s = gate->type->forward(gate, out, out);
            if (s) return s;
            i++;
            continue;
        }
        if (relu_fused(l, i)) {
            lps_layer *k = l->children[i];
            lps_tensor *out = i + 2 < l->nchildren ? &p->act[i + 1].view : y;
            if ((s = k->type->forward_relu(k, in, out))) return s;
            i++;
            continue;
        }
        lps_tensor *out = i + 1 < l->nchildren ? &p->act[i].view : y;
        lps_layer *k = l->children[i];
        if (r && i + 1 == l->nchildren) s = k->type->forward_add(k, in, r, relu, out);
        else s = k->type->forward(k, in, out);
        if (s) return s;
    }
    p->in_ndim = x->ndim;
    memcpy(p->in_shape, x->shape, sizeof p->in_shape);
    return LPS_OK;
}

static lps_status seq_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    return seq_run(l, x, y, NULL, 0);
}

int lps_seq_adds(const lps_layer *l)
{
    int n = l->nchildren;
    return lps_layer_is_sequential(l) && n > 0 && l->children[n - 1]->type->forward_add &&
           !(n > 1 && (fused(l, n - 2) || relu_fused(l, n - 2)));
}

lps_status lps_seq_forward_add(lps_layer *l, const lps_tensor *x, const float *r, int relu,
                               lps_tensor *y)
{
    return seq_run(l, x, y, r, relu);
}

/* Children n-1 down to lo (lo = 0: the whole backward), gx the gradient
 * at child lo's input; a pair run as one forward pass must not straddle lo. */
static lps_status seq_backward_to(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                  const lps_tensor *gy, lps_tensor *gx, int lo)
{
    seqpriv *p = l->priv;
    if (p->in_ndim != x->ndim || memcmp(p->in_shape, x->shape, sizeof p->in_shape) != 0)
        return lps_fail(LPS_EINVAL, "sequential backward: input %s was not the last forward's input",
                        SH(x));
    int n = l->nchildren;
    if (n == 0 && gx && x->numel && gx->data != gy->data)
        memcpy(gx->data, gy->data, (size_t)x->numel * sizeof(float));
    for (int i = n - 1; i >= lo; i--) {
        int pool_pair = i > lo && fused(l, i - 1), relu_pair = !pool_pair && i > lo && relu_fused(l, i - 1);
        if (pool_pair || relu_pair) {
            /* a pair run as one forward pass: layer r, then layer i */
            int r = i - 1;
            lps_layer *first = l->children[r], *second = l->children[i];
            const lps_tensor *in = r ? &p->act[r - 1].view : x;
            const lps_tensor *out = i + 1 < n ? &p->act[i].view : y;
            const lps_tensor *gout = i + 1 < n ? &p->grad[i].view : gy;
            lps_tensor *gin = r > lo ? &p->grad[r - 1].view : gx;
            lps_status s = LPS_OK;
            if (pool_pair && gin) {
                /* the gate's mask from the pooled output (positive exactly
                 * where the pooled input is), then the pooling's backward on
                 * the gate's input; windows whose maximum is not positive get
                 * no gradient either way. The gate's output gradient buffer
                 * holds the masked pooled gradient. */
                lps_tensor masked = lps_view_as(p->grad[r].store, out->ndim, out->shape);
                s = first->type->backward(first, out, out, gout, &masked);
                if (!s) s = second->type->backward(second, in, out, &masked, gin);
            } else if (relu_pair && first->type->backward_relu) {
                s = first->type->backward_relu(first, in, out, gout, gin);
            } else if (relu_pair) {
                /* the ReLU's gradient from the sign of its output, into the
                 * layer's output gradient, then the layer's (forward_relu) */
                lps_tensor *gmid = &p->grad[r].view;
                s = second->type->backward(second, out, out, gout, gmid);
                if (!s) s = first->type->backward(first, in, out, gmid, gin);
            }
            if (s) return s;
            i = r;
            continue;
        }
        const lps_tensor *in = i ? &p->act[i - 1].view : x;
        const lps_tensor *out = i + 1 < n ? &p->act[i].view : y;
        const lps_tensor *gout = i + 1 < n ? &p->grad[i].view : gy;
        lps_tensor *gin = i > lo ? &p->grad[i - 1].view : gx;
        lps_status s = l->children[i]->type->backward(l->children[i], in, out, gout, gin);
        if (s) return s;
    }
    return LPS_OK;
}

static lps_status seq_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                               const lps_tensor *gy, lps_tensor *gx)
{
    return seq_backward_to(l, x, y, gy, gx, 0);
}

/* Rows r g .. r g + g - 1 of a (rows x w) to their mean in row r, in place:
 * row r lies in a group before r's (or is its first row), so it is free
 * once the groups before are done. Added row by row, in order, 8 lanes at a
 * time (every element the same chain of adds either way). */
KERNEL static void group_means(float *a, int64_t rows, int64_t w, int64_t g)
{
    float inv = 1.0f / (float)g;
    int64_t w8 = w / 8 * 8;
    for (int64_t r = 0; r < rows / g; r++) {
        float *d = a + r * w;
        const float *s = a + r * g * w;
        if (d != s) memmove(d, s, sizeof(float) * (size_t)w);
        for (int64_t q = 1; q < g; q++) {
            const float *sq = s + q * w;
            int64_t e = 0;
            for (; e < w8; e += 8) ST8(d + e, LD8(d + e) + LD8(sq + e));
            for (; e < w; e++) d[e] += sq[e];
        }
        int64_t e = 0;
        for (; e < w8; e += 8) ST8(d + e, LD8(d + e) * BC8(inv));
        for (; e < w; e++) d[e] *= inv;
    }
}

/* The view of rows [r0, r0 + n) of t (a header, no allocation). */
static lps_tensor rows_of(const lps_tensor *t, int64_t r0, int64_t n)
{
    int64_t sh[LPS_MAX_DIMS];
    memcpy(sh, t->shape, sizeof sh);
    sh[0] = n;
    lps_tensor v = lps_view_as(t, t->ndim, sh);
    v.data = t->data + r0 * (t->numel / (t->shape[0] ? t->shape[0] : 1));
    return v;
}

/* Whether a sequential's first child can take the group means of its
 * output gradients (see lps_layer_input_gradients). */
static int means_first(const lps_layer *l)
{
    return lps_layer_is_sequential(l) && l->nchildren >= 2 && l->children[0]->frozen &&
           (l->children[0]->type->flags & LPS_LT_AFFINE) && !fused(l, 0) && !relu_fused(l, 0);
}

lps_status lps_layer_input_gradients(lps_layer *l, const lps_tensor *x, lps_tensor *y,
                                     const lps_tensor *gy, int64_t group, lps_tensor *gx)
{
    lps_status s = check_out(l, x, y, "output");
    if (s) return s;
    int64_t n = x->shape[0], k = n > 0 ? gy->shape[0] / n : 0;
    if (n < 1) return lps_fail(LPS_ESHAPE, "input_gradients: the input %s has no samples", SH(x));
    int fits = gy->ndim == y->ndim && gy->shape[0] == k * n && k >= 1;
    for (int i = 1; fits && i < y->ndim; i++) fits = gy->shape[i] == y->shape[i];
    if (!fits)
        return lps_fail(LPS_ESHAPE, "input_gradients: gy %s must stack blocks of %lld rows shaped like the "
                        "output %s", SH(gy), (long long)n, SH(y));
    if (group < 1 || n % group)
        return lps_fail(LPS_EINVAL, "input_gradients: group %lld must divide the %lld samples",
                        (long long)group, (long long)n);
    int64_t rows = k * (n / group), per = x->numel / n;
    int fits_gx = gx->ndim == x->ndim && gx->shape[0] == rows;
    for (int i = 1; fits_gx && i < x->ndim; i++) fits_gx = gx->shape[i] == x->shape[i];
    if (!fits_gx)
        return lps_fail(LPS_ESHAPE, "input_gradients: gx %s should have %lld rows shaped like the input %s",
                        SH(gx), (long long)rows, SH(x));
    if ((s = l->type->forward(l, x, y))) return s;
    int fast = group > 1 && means_first(l);
    const lps_tensor *mid = fast ? &((seqpriv *)l->priv)->act[0].view : x;
    int64_t w = fast ? mid->numel / n : per;
    float *buf = NULL, *zeros = NULL;
    if (group > 1 && !(buf = lps_alloc_floats((fast ? k * n : n) * w, "input_gradients")))
        return LPS_ENOMEM;
    lps_tensor big = lps_view_as(mid, mid->ndim, mid->shape); /* k n rows of mid (fast) */
    big.data = buf;
    big.shape[0] = fast ? k * n : n;
    big.numel = big.shape[0] * w;
    for (int64_t c = 0; c < k && !s; c++) {
        lps_tensor gyc = rows_of(gy, c * n, n);
        lps_tensor gxc = group > 1 ? rows_of(&big, fast ? c * n : 0, n) : rows_of(gx, c * n, n);
        s = fast ? seq_backward_to(l, x, y, &gyc, &gxc, 1) : l->type->backward(l, x, y, &gyc, &gxc);
        if (!s && group > 1 && !fast) {
            group_means(buf, n, w, group);
            memcpy(gx->data + c * (n / group) * w, buf, sizeof(float) * (size_t)((n / group) * w));
        }
    }
    if (!s && fast) {
        /* The first child's input gradient is one linear map of its output
         * gradient, whatever the sample: map the means, not every sample
         * (group times fewer). Its backward reads shapes only; x0 holds zeros. */
        group_means(buf, k * n, w, group);
        lps_tensor gm = rows_of(&big, 0, rows);
        lps_tensor x0 = rows_of(gx, 0, rows);
        if (!(zeros = lps_alloc_floats(rows * per, "input_gradients")))
            s = LPS_ENOMEM;
        else {
            memset(zeros, 0, sizeof(float) * (size_t)(rows * per));
            x0.data = zeros;
            lps_layer *first = l->children[0];
            s = first->type->backward(first, &x0, &gm, &gm, gx);
        }
    }
    lps_free_floats(buf);
    lps_free_floats(zeros);
    return s;
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

static void seq_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "Sequential");
}

static int contains(const lps_layer *tree, const lps_layer *l)
{
    if (tree == l) return 1;
    for (int i = 0; i < tree->nchildren; i++)
        if (contains(tree->children[i], l)) return 1;
    return 0;
}

/* Not in the registry: a list of entries is a Sequential, no entry is one. */
static const lps_layer_type seq_type = {
    .name = "sequential", .forward = seq_forward, .backward = seq_backward,
    .destroy = seq_destroy, .repr = seq_repr, .out_shape = seq_out_shape};

lps_layer *lps_sequential_of(lps_layer *const *children, int n)
{
    /* A layer used twice would count its parameters twice and share buffers. */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (contains(children[j], children[i]) || contains(children[i], children[j])) {
                lps_fail(LPS_EINVAL, "sequential: layer %d (%s) is also used by layer %d; "
                         "a layer may appear only once", i + 1, children[i]->type->name, j + 1);
                return NULL;
            }
    lps_layer *l = lps_layer_alloc(&seq_type, NULL);
    if (!l) return NULL;
    l->children = calloc((size_t)(n ? n : 1), sizeof *l->children);
    seqpriv *p = calloc(1, sizeof *p);
    l->priv = p;
    if (p) {
        p->act = calloc((size_t)(n ? n : 1), sizeof *p->act);
        p->grad = calloc((size_t)(n ? n : 1), sizeof *p->grad);
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

lps_layer *lps_sequential_new(lps_layer *const *children, int n)
{
    if (n < 1) {
        lps_fail(LPS_EINVAL, "sequential: needs at least one layer");
        return NULL;
    }
    return lps_sequential_of(children, n);
}

int lps_layer_is_sequential(const lps_layer *l) { return l->type == &seq_type; }
