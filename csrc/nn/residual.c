/* residual.c - y = body(x) + shortcut(x): PyTorch's module with two
 * nn.Sequential attributes, body and shortcut (empty: the identity). The
 * branches are its children (model.c builds them from the entry's lists);
 * blocks nest. */
#include "nn/nn_internal.h"
#include "nn/simd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Both branches from what flows in; their outputs must add. */
static lps_status res_flow(const lps_arch_entry *e, lps_flow *f)
{
    lps_flow b = *f, s = *f;
    if (!f->quiet) lps_fmt(b.who, sizeof b.who, "%s body layer ", f->who);
    lps_status st = lps_arch_flow(e->body, &b);
    if (st) return st;
    if (!f->quiet) lps_fmt(s.who, sizeof s.who, "%s shortcut layer ", f->who);
    if ((st = lps_arch_flow(e->shortcut, &s))) return st;
    int differ = b.rank && s.rank && b.rank != s.rank;
    for (int i = 0; !differ && b.rank && s.rank && i < b.rank; i++)
        differ = b.d[i] != LPS_ARCH_UNKNOWN && s.d[i] != LPS_ARCH_UNKNOWN && b.d[i] != s.d[i];
    if (differ)
        return lps_flow_fail(f, LPS_ESHAPE, "its branches do not add: the body gives %s but the "
                             "shortcut%s gives %s", FSH(b.rank, b.d),
                             e->shortcut && e->shortcut->n ? "" : " (the identity)", FSH(s.rank, s.d));
    /* the better known; unknown sizes from the other when it knows its rank
     * (a branch of unknown rank holds no sizes) */
    const lps_flow *r = b.rank ? &b : &s, *o = r == &b ? &s : &b;
    f->rank = r->rank;
    for (int i = 0; i < r->rank; i++)
        f->d[i] = r->d[i] != LPS_ARCH_UNKNOWN || !o->rank ? r->d[i] : o->d[i];
    f->mult = r->mult;
    f->flat = r->flat;
    memcpy(f->pre, r->pre, sizeof f->pre);
    return LPS_OK;
}

static int identity(const lps_layer *c) { return c->nchildren == 0 && lps_layer_is_sequential(c); }

static lps_status res_out_shape(const lps_layer *l, int ndim, const int64_t *in, int *ondim,
                                int64_t *out)
{
    int nd[2];
    int64_t sh[2][LPS_MAX_DIMS];
    static const char *const names[2] = {"body", "shortcut"};
    for (int b = 0; b < 2; b++)
        if (lps_layer_out_shape(l->children[b], ndim, in, &nd[b], sh[b])) {
            char msg[700];
            lps_fmt(msg, sizeof msg, "%s", lps_errmsg());
            return lps_fail(LPS_ESHAPE, "residual %s: %s", names[b], msg);
        }
    lps_tensor t[3] = {{.ndim = ndim}, {.ndim = nd[0]}, {.ndim = nd[1]}};
    memcpy(t[0].shape, in, sizeof(int64_t) * (size_t)ndim);
    memcpy(t[1].shape, sh[0], sizeof(int64_t) * (size_t)nd[0]);
    memcpy(t[2].shape, sh[1], sizeof(int64_t) * (size_t)nd[1]);
    if (!lps_same_shape(&t[1], &t[2]))
        return lps_fail(LPS_ESHAPE, "residual: its branches do not add for input %s: the body gives %s "
                        "but the shortcut%s gives %s", SH(&t[0]), SH(&t[1]),
                        identity(l->children[1]) ? " (the identity)" : "", SH(&t[2]));
    *ondim = nd[0];
    memcpy(out, sh[0], sizeof(int64_t) * (size_t)nd[0]);
    return LPS_OK;
}

/* The branches' outputs (their backward reads them) and the shortcut's
 * input gradient, kept between calls. */
typedef struct {
    lps_scratch out[2], gs;
} respriv;

/* o = a + b element-wise (a may be o), split over threads when large:
 * element-wise, so the same bits on any thread count. */
typedef struct {
    const float *a, *b;
    float *o;
    int64_t n;
    int relu; /* then max(0, .), as relu.c (forward_relu) */
} addjob;

/* o may be a (in place); 8 floats at a time, each the one addition. */
KERNEL static void add_range(float *o, const float *a, const float *b, int64_t i, int64_t end, int relu)
{
    if (relu) {
        for (; i + 8 <= end; i += 8) {
            v8 v = LD8(a + i) + LD8(b + i);
            ST8(o + i, RELU8(v));
        }
        for (; i < end; i++) {
            float v = a[i] + b[i];
            o[i] = v < 0.0f ? 0.0f : v;
        }
        return;
    }
    for (; i + 8 <= end; i += 8) ST8(o + i, LD8(a + i) + LD8(b + i));
    for (; i < end; i++) o[i] = a[i] + b[i];
}

static void add_part(void *ctx, int t, int nt)
{
    const addjob *j = ctx;
    int64_t i, end;
    lps_par_range(j->n, t, nt, &i, &end);
    add_range(j->o, j->a, j->b, i, end, j->relu);
}

static void add(float *o, const float *a, const float *b, int64_t n, int relu)
{
    addjob j = {a, b, o, n, relu};
    lps_par_run(n >= (1 << 18) ? lps_par_threads() : 1, add_part, &j);
}

static lps_tensor header(float *p, const lps_tensor *like)
{
    lps_tensor t = {.data = p};
    return lps_view_as(&t, like->ndim, like->shape);
}

static lps_status res_run(lps_layer *l, const lps_tensor *x, lps_tensor *y, int relu)
{
    respriv *p = l->priv;
    int id = identity(l->children[1]);
    float *a = lps_scratch_get(&p->out[0], y->numel, "residual");
    float *c = id ? x->data : lps_scratch_get(&p->out[1], y->numel, "residual");
    if (y->numel && (!a || !c)) return LPS_ENOMEM;
    lps_layer *body = l->children[0];
    if (lps_seq_adds(body)) {
        /* the shortcut first, then the body, its last layer adding the
         * shortcut's output (and the ReLU) in its own pass: the sum and
         * max of add_range, without writing and reading back the body's
         * output (which backward never reads: forward_add) */
        lps_tensor o = header(c, y);
        lps_status s = id ? LPS_OK : l->children[1]->type->forward(l->children[1], x, &o);
        return s ? s : lps_seq_forward_add(body, x, c, relu, y);
    }
    for (int b = 0; b < 2 - id; b++) {
        lps_layer *k = l->children[b];
        lps_tensor o = header(b ? c : a, y);
        lps_status s = k->type->forward(k, x, &o);
        if (s) return s;
    }
    add(y->data, a, c, y->numel, relu);
    return LPS_OK;
}

static lps_status res_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    return res_run(l, x, y, 0);
}

static lps_status res_forward_relu(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    return res_run(l, x, y, 1);
}

static lps_status res_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                               const lps_tensor *gy, lps_tensor *gx)
{
    respriv *p = l->priv;
    int id = identity(l->children[1]);
    lps_layer *body = l->children[0], *sc = l->children[1];
    /* y's shape only (forward_relu: y may be the ReLU's output); the
     * branches get their own outputs, kept by forward */
    lps_tensor yb = header(p->out[0].p, y);
    lps_status s = body->type->backward(body, x, &yb, gy, gx);
    if (s || id) {
        if (!s && gx) add(gx->data, gx->data, gy->data, x->numel, 0);
        return s;
    }
    lps_tensor ys = header(p->out[1].p, y), gs = {0};
    if (gx) {
        float *g = lps_scratch_get(&p->gs, x->numel, "residual backward");
        if (x->numel && !g) return LPS_ENOMEM;
        gs = header(g, x);
    }
    if ((s = sc->type->backward(sc, x, &ys, gy, gx ? &gs : NULL))) return s;
    if (gx) add(gx->data, gx->data, gs.data, x->numel, 0);
    return LPS_OK;
}

static lps_status res_create(lps_layer *l, lps_rng *init)
{
    (void)init;
    l->priv = calloc(1, sizeof(respriv));
    return l->priv ? LPS_OK : LPS_ENOMEM;
}

static void res_destroy(lps_layer *l)
{
    respriv *p = l->priv;
    if (!p) return;
    lps_scratch_free(&p->out[0]);
    lps_scratch_free(&p->out[1]);
    lps_scratch_free(&p->gs);
    free(p);
}

static void res_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "Residual");
}

static const lps_field no_fields[] = {{NULL, 0, 0, 0, 0, 0}};

const lps_layer_type lps_residual_type = {
    .name = "residual", .fields = no_fields, .branches = 1, .flow = res_flow,
    .create = res_create, .forward = res_forward, .backward = res_backward,
    .destroy = res_destroy, .repr = res_repr, .out_shape = res_out_shape,
    .forward_relu = res_forward_relu};
