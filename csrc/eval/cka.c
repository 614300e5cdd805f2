/* cka.c - linear CKA (Kornblith et al. 2019) of hidden activations on a
 * probe batch: the `cka` baseline, which needs data where the others do not.
 * A layer's centred activations X (N x p) are compared either directly,
 * ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F), or through their N x N Gram matrices
 * K = X X', <Kx, Ky>_F / (||Kx||_F ||Ky||_F): the same value, cheaper for
 * wide layers (flattened conv maps, p > N). */
#include "eval/eval_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Centre the columns of x (N x p) in place. */
static void centre_cols(lps_tensor *x)
{
    int64_t n = x->shape[0], p = x->shape[1];
    for (int64_t j = 0; j < p; j++) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += x->data[i * p + j];
        float mu = (float)(s / (double)n);
        for (int64_t i = 0; i < n; i++) x->data[i * p + j] -= mu;
    }
}

/* Centre the columns of x (N x p) in place; return ||x'x||_F. */
static lps_status centre(lps_tensor *x, double *selfnorm)
{
    int64_t p = x->shape[1];
    centre_cols(x);
    lps_tensor *g = lps_tensor_new2(p, p);
    if (!g) return LPS_ENOMEM;
    lps_status st = lps_matmul(g, x, 1, x, 0, 1.0f, 0.0f);
    double ss = 0.0;
    for (int64_t i = 0; i < g->numel; i++) ss += (double)g->data[i] * g->data[i];
    *selfnorm = sqrt(ss);
    lps_tensor_free(g);
    return st;
}

/* ||y'x||_F^2 / (nx ny) for centred x, y; 0 when a side is constant. */
static lps_status cross(double *cka, const lps_tensor *x, double nx, const lps_tensor *y, double ny)
{
    /* A constant (e.g. dead ReLU) layer has no similarity structure to compare. */
    if (!(nx > 0.0) || !(ny > 0.0)) {
        *cka = 0.0;
        return LPS_OK;
    }
    lps_tensor *c = lps_tensor_new2(x->shape[1], y->shape[1]);
    if (!c) return LPS_ENOMEM;
    lps_status st = lps_matmul(c, x, 1, y, 0, 1.0f, 0.0f);
    double ss = 0.0;
    for (int64_t i = 0; i < c->numel; i++) ss += (double)c->data[i] * c->data[i];
    lps_tensor_free(c);
    *cka = ss / (nx * ny);
    return st;
}

lps_status lps_linear_cka(double *cka, const lps_tensor *x, const lps_tensor *y)
{
    if (x->ndim != 2 || y->ndim != 2 || x->shape[0] != y->shape[0])
        return lps_fail(LPS_ESHAPE, "cka: needs N x p and N x q, got %s and %s", SH(x), SH(y));
    if (x->shape[0] < 2 || x->shape[1] < 1 || y->shape[1] < 1)
        return lps_fail(LPS_EINVAL, "cka: needs at least 2 rows and 1 column, got %s and %s", SH(x),
                        SH(y));
    for (int k = 0; k < 2; k++) {
        const lps_tensor *t = k ? y : x;
        for (int64_t i = 0; i < t->numel; i++)
            if (!isfinite(t->data[i]))
                return lps_fail(LPS_ENUMERIC, "cka: non-finite value in the %s matrix at row %lld",
                                k ? "second" : "first", (long long)(i / t->shape[1] + 1));
    }
    lps_tensor *xc = lps_tensor_clone(x), *yc = xc ? lps_tensor_clone(y) : NULL;
    double nx = 0.0, ny = 0.0;
    lps_status st = yc ? LPS_OK : LPS_ENOMEM;
    if (!st) st = centre(xc, &nx);
    if (!st) st = centre(yc, &ny);
    if (!st) st = cross(cka, xc, nx, yc, ny);
    lps_tensor_free(xc);
    lps_tensor_free(yc);
    return st;
}

/* Models of different depths are paired by relative depth: hidden layer l
 * (0-based) of a model with L hidden layers covers [l/L, (l+1)/L) of the
 * depth, and two models' CKA is the mean over depth of the CKA of the layers
 * covering it, i.e. sum over pairs (l, m) of overlap(l, m) * CKA(l, m). Same
 * depth: layer l with layer l, the plain mean over layers. The overlaps are
 * integers in units of 1/lcm(la, lb), so the sum is exact in its weights. */
static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int64_t overlap(int64_t s, int la, int l, int lb, int m)
{
    int64_t a0 = l * (s / la), a1 = (l + 1) * (s / la);
    int64_t b0 = m * (s / lb), b1 = (m + 1) * (s / lb);
    int64_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

/* Depth-paired CKA of two models' centred activations and their norms. */
/* One layer ready for comparison: its centred activations x with
 * ||x'x||_F, or its Gram matrix k = x x' with ||k||_F, or both. */
typedef struct {
    lps_tensor *x, *k;
    double xnorm, knorm;
} layer_rep;

static void rep_free(layer_rep *r)
{
    lps_tensor_free(r->x);
    lps_tensor_free(r->k);
    r->x = r->k = NULL;
}

/* r->k = x x' from r->x, unless already there. */
static lps_status rep_gram(layer_rep *r)
{
    if (r->k) return LPS_OK;
    int64_t n = r->x->shape[0];
    if (!(r->k = lps_tensor_new2(n, n))) return LPS_ENOMEM;
    lps_status st = lps_matmul(r->k, r->x, 0, r->x, 1, 1.0f, 0.0f);
    double ss = 0.0;
    for (int64_t i = 0; i < r->k->numel; i++) ss += (double)r->k->data[i] * r->k->data[i];
    r->knorm = sqrt(ss);
    return st;
}

/* Takes x (N x p activations): centred in place and kept, or with gram
 * replaced by its Gram matrix (x is freed). */
static lps_status rep_init(layer_rep *r, lps_tensor *x, int gram)
{
    r->x = x;
    r->k = NULL;
    r->xnorm = r->knorm = 0.0;
    if (!gram) return centre(x, &r->xnorm);
    centre_cols(x);
    lps_status st = rep_gram(r);
    lps_tensor_free(r->x);
    r->x = NULL;
    return st;
}

/* CKA of two layers (0 when a side is constant). Through the Gram matrices
 * unless both sides have their activations. */
static lps_status rep_cka(double *cka, layer_rep *x, layer_rep *y)
{
    if (x->x && y->x) return cross(cka, x->x, x->xnorm, y->x, y->xnorm);
    lps_status st = rep_gram(x);
    if (!st) st = rep_gram(y);
    if (st) return st;
    if (!(x->knorm > 0.0) || !(y->knorm > 0.0)) {
        *cka = 0.0;
        return LPS_OK;
    }
    double dot = 0.0;
    for (int64_t i = 0; i < x->k->numel; i++) dot += (double)x->k->data[i] * y->k->data[i];
    *cka = dot / (x->knorm * y->knorm);
    return LPS_OK;
}

/* Depth-paired CKA of two models' prepared layers. */
static lps_status paired(double *cka, layer_rep *xa, int la, layer_rep *xb, int lb)
{
    int64_t s = (int64_t)la / gcd64(la, lb) * lb;
    double sum = 0.0, c = 0.0;
    lps_status st = LPS_OK;
    for (int l = 0; l < la && !st; l++)
        for (int m = 0; m < lb && !st; m++) {
            int64_t w = overlap(s, la, l, lb, m);
            if (!w) continue;
            st = rep_cka(&c, &xa[l], &xb[m]);
            sum += (double)w * c;
        }
    *cka = sum / (double)s;
    return st;
}

/* Both lists non-empty, every matrix N x p with the same N >= 2, finite. */
static lps_status check_layers(const lps_tensor *const *x, int n, int64_t rows, const char *side)
{
    if (n < 1) return lps_fail(LPS_EINVAL, "cka_layers: the %s model has no layers", side);
    for (int l = 0; l < n; l++) {
        const lps_tensor *t = x[l];
        if (!t || t->ndim != 2 || t->shape[0] != rows || t->shape[1] < 1)
            return lps_fail(LPS_ESHAPE, "cka_layers: layer %d of the %s model is %s; every layer must be %lld x p, p >= 1",
                            l + 1, side, t ? SH(t) : "missing", (long long)rows);
        for (int64_t i = 0; i < t->numel; i++)
            if (!isfinite(t->data[i]))
                return lps_fail(LPS_ENUMERIC, "cka_layers: layer %d of the %s model has a non-finite value at row %lld",
                                l + 1, side, (long long)(i / t->shape[1] + 1));
    }
    return LPS_OK;
}

lps_status lps_cka_layers(double *cka, const lps_tensor *const *xa, int la,
                          const lps_tensor *const *xb, int lb)
{
    if (la < 1 || lb < 1 || !xa[0])
        return lps_fail(LPS_EINVAL, "cka_layers: needs at least one layer per model, got %d and %d", la, lb);
    int64_t rows = xa[0]->ndim == 2 ? xa[0]->shape[0] : -1;
    if (rows < 2)
        return lps_fail(LPS_ESHAPE, "cka_layers: layer 1 of the first model is %s; needs N x p with N >= 2",
                        SH(xa[0]));
    lps_status st = check_layers(xa, la, rows, "first");
    if (!st) st = check_layers(xb, lb, rows, "second");
    if (st) return st;
    int n = la + lb;
    layer_rep *r = calloc((size_t)n, sizeof *r);
    if (!r) return lps_fail(LPS_ENOMEM, "cka_layers: out of memory");
    for (int k = 0; k < n && !st; k++) {
        const lps_tensor *x = k < la ? xa[k] : xb[k - la];
        lps_tensor *c = lps_tensor_clone(x);
        /* wide layers (e.g. flattened conv maps) through N x N Grams */
        st = c ? rep_init(&r[k], c, x->shape[1] > rows) : LPS_ENOMEM;
    }
    if (!st) st = paired(cka, r, la, r + la, lb);
    for (int k = 0; k < n; k++) rep_free(&r[k]);
    free(r);
    return st;
}

/* Prepared hidden layers of one model. */
typedef struct {
    layer_rep *rep;
    int nh;
} prepared;

static void prepared_free(prepared *p)
{
    for (int l = 0; p->rep && l < p->nh; l++) rep_free(&p->rep[l]);
    free(p->rep);
}

/* Hidden activations of m on probe, centred; conv layers wider than the
 * probe batch kept as Grams (MLP layers as activations, as always). */
static lps_status prepare(prepared *p, const lps_net_view *m, const lps_tensor *probe, const char *op)
{
    lps_status st = lps_net_check(op, m);
    if (st) return st;
    int nh = m->nlayers - 1;
    int64_t n = probe->shape[0];
    lps_tensor **acts = calloc((size_t)nh, sizeof *acts);
    int64_t *sizes = malloc((size_t)nh * sizeof *sizes);
    p->rep = calloc((size_t)nh, sizeof *p->rep);
    p->nh = nh;
    if (!acts || !sizes || !p->rep) st = lps_fail(LPS_ENOMEM, "cka: out of memory");
    for (int l = 0; l < nh && !st; l++) sizes[l] = W(m, l)->shape[0];
    if (!st && net_is_cnn(m)) st = lps_net_hidden_sizes(sizes, m, probe->shape[1]);
    for (int l = 0; l < nh && !st; l++)
        if (!(acts[l] = lps_tensor_new2(n, sizes[l]))) st = LPS_ENOMEM;
    if (!st) st = lps_net_hidden_acts(acts, m, probe);
    for (int l = 0; l < nh && !st; l++) {
        int gram = net_is_cnn(m) && W(m, l)->ndim == 4 && sizes[l] > n;
        st = rep_init(&p->rep[l], acts[l], gram);
        acts[l] = NULL; /* owned by the rep */
    }
    for (int l = 0; acts && l < nh; l++) lps_tensor_free(acts[l]);
    free(acts);
    free(sizes);
    return st;
}

lps_status lps_cka_matrix(lps_tensor *out, const lps_net_view *a, int64_t na,
                          const lps_net_view *b, int64_t nb, const lps_tensor *probe)
{
    if (na < 0 || nb < 0 || na > INT32_MAX || nb > INT32_MAX)
        return lps_fail(LPS_EINVAL, "cka: model counts %lld and %lld out of range", (long long)na,
                        (long long)nb);
    if (out->ndim != 2 || out->shape[0] != na || out->shape[1] != nb)
        return lps_fail(LPS_ESHAPE, "cka: output %s should be (%lldx%lld)", SH(out), (long long)na,
                        (long long)nb);
    if (probe->ndim != 2 || probe->shape[0] < 2)
        return lps_fail(LPS_ESHAPE, "cka: the probe batch must be N x d with N >= 2, got %s",
                        SH(probe));
    if (na == 0 || nb == 0) return LPS_OK;
    prepared *pa = calloc((size_t)(na + nb), sizeof *pa);
    if (!pa) return lps_fail(LPS_ENOMEM, "cka: out of memory");
    lps_status st = LPS_OK;
    char op[64];
    for (int64_t i = 0; i < na + nb && !st; i++) {
        snprintf(op, sizeof op, "cka: model %lld of the %s set", (long long)(i < na ? i : i - na) + 1,
                 i < na ? "first" : "second");
        st = prepare(&pa[i], i < na ? &a[i] : &b[i - na], probe, op);
        if (st && st != LPS_ENOMEM) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", lps_errmsg());
            if (strncmp(msg, op, strlen(op)) != 0) st = lps_fail(st, "%s: %s", op, msg);
        }
    }
    for (int64_t i = 0; i < na && !st; i++)
        for (int64_t j = 0; j < nb && !st; j++) {
            double c = 0.0;
            st = paired(&c, pa[i].rep, pa[i].nh, pa[na + j].rep, pa[na + j].nh);
            out->data[i * nb + j] = (float)c;
        }
    for (int64_t i = 0; i < na + nb; i++) prepared_free(&pa[i]);
    free(pa);
    return st;
}
