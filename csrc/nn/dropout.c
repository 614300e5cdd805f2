/* dropout.c - in train mode each value is zeroed with probability p and the
 * others scaled by 1/(1-p), as PyTorch's Dropout; in eval mode the identity.
 * The layer draws its masks from a generator of its own, seeded from the
 * init generator when it is built: a model built from a seed trains the
 * same every time. A replay reuses the last mask. */
#include "nn/nn_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P(l) ((l)->cfg.v[0])

static lps_status drop_flow(const lps_arch_entry *e, lps_flow *f)
{
    if (e->v[0] >= 1.0)
        return lps_flow_fail(f, LPS_EINVAL, "\"p\" is %g: it must be below 1 (p = 1 drops every value)",
                             e->v[0]);
    return LPS_OK;
}

typedef struct {
    lps_rng rng;
    unsigned char *mask; /* 1: kept */
    int64_t cap;
    int ndim;            /* shape of the last mask (0: none yet) */
    int64_t shape[LPS_MAX_DIMS];
} droppriv;

static int active(const lps_layer *l) { return l->training && P(l) > 0; }

static int same_shape(const droppriv *p, const lps_tensor *x)
{
    return p->ndim == x->ndim && memcmp(p->shape, x->shape, sizeof p->shape) == 0;
}

/* A new mask for x's shape: 32 random bits per value, kept when they are at
 * least p 2^32. A replay draws from a copy of the generator: the mask the
 * next forward will draw, the generator left as it was. */
static lps_status draw(lps_layer *l, const lps_tensor *x)
{
    droppriv *p = l->priv;
    if (x->numel > p->cap) {
        unsigned char *m = malloc((size_t)x->numel);
        if (!m) return lps_fail(LPS_ENOMEM, "dropout: cannot allocate a mask of %lld values",
                                (long long)x->numel);
        free(p->mask);
        p->mask = m;
        p->cap = x->numel;
    }
    lps_rng copy = p->rng, *r = l->replay ? &copy : &p->rng;
    uint64_t thr = (uint64_t)(P(l) * 4294967296.0), bits = 0;
    for (int64_t i = 0; i < x->numel; i++) {
        if (!(i & 1)) bits = lps_rng_next(r);
        p->mask[i] = (bits & 0xffffffffu) >= thr;
        bits >>= 32;
    }
    p->ndim = x->ndim;
    memcpy(p->shape, x->shape, sizeof p->shape);
    return LPS_OK;
}

/* out = in * mask / (1 - p) */
static void apply(const lps_layer *l, const float *in, float *out, int64_t n)
{
    const unsigned char *m = ((const droppriv *)l->priv)->mask;
    float scale = (float)(1.0 / (1.0 - P(l)));
    for (int64_t i = 0; i < n; i++) out[i] = m[i] ? in[i] * scale : 0.0f;
}

static lps_status drop_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    if (!active(l)) {
        if (x->numel && y->data != x->data) memcpy(y->data, x->data, (size_t)x->numel * sizeof(float));
        return LPS_OK;
    }
    if (!(l->replay && same_shape(l->priv, x))) {
        lps_status s = draw(l, x);
        if (s) return s;
    }
    apply(l, x->data, y->data, x->numel);
    return LPS_OK;
}

static lps_status drop_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    (void)y;
    if (!gx) return LPS_OK;
    if (!active(l)) {
        if (x->numel && gx->data != gy->data) memcpy(gx->data, gy->data, (size_t)x->numel * sizeof(float));
        return LPS_OK;
    }
    if (!same_shape(l->priv, x))
        return lps_fail(LPS_EINVAL, "dropout backward: input %s was not the last forward's input "
                        "(no mask of its shape)", SH(x));
    apply(l, gy->data, gx->data, x->numel);
    return LPS_OK;
}

static lps_status drop_create(lps_layer *l, lps_rng *init)
{
    droppriv *p = calloc(1, sizeof *p);
    if (!p) return LPS_ENOMEM;
    lps_rng_seed(&p->rng, init ? lps_rng_next(init) : 0);
    l->priv = p;
    return LPS_OK;
}

static void drop_destroy(lps_layer *l)
{
    droppriv *p = l->priv;
    if (!p) return;
    free(p->mask);
    free(p);
}

static void drop_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    char p[40];
    snprintf(buf, n, "Dropout(p=%s, inplace=False)", lps_py_float(p, sizeof p, e->v[0]));
}

static const lps_field drop_fields[] = {{"p", LPS_FIELD_REAL, 0, 1, 0.5, 0}, {NULL, 0, 0, 0, 0, 0}};

/* The identity in eval mode, which is what the weight-space methods read. */
const lps_layer_type lps_dropout_type = {
    .name = "dropout", .fields = drop_fields, .flags = LPS_LT_CHANNELWISE, .flow = drop_flow,
    .create = drop_create, .forward = drop_forward, .backward = drop_backward,
    .destroy = drop_destroy, .repr = drop_repr};
