/* cka.c - linear CKA (Kornblith et al. 2019) of hidden activations on a
 * probe batch: the `cka` baseline, which needs data where the others do not. */
#include "core/internal.h"

#include <math.h>
#include <stdlib.h>

/* Centre the columns of x (N x p) in place; return ||x'x||_F. */
static lps_status centre(lps_tensor *x, double *selfnorm)
{
    int64_t n = x->shape[0], p = x->shape[1];
    for (int64_t j = 0; j < p; j++) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += x->data[i * p + j];
        float mu = (float)(s / (double)n);
        for (int64_t i = 0; i < n; i++) x->data[i * p + j] -= mu;
    }
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
static lps_status paired(double *cka, lps_tensor *const *xa, const double *na, int la,
                         lps_tensor *const *xb, const double *nb, int lb)
{
    int64_t s = (int64_t)la / gcd64(la, lb) * lb;
    double sum = 0.0, c = 0.0;
    lps_status st = LPS_OK;
    for (int l = 0; l < la && !st; l++)
        for (int m = 0; m < lb && !st; m++) {
            int64_t w = overlap(s, la, l, lb, m);
            if (!w) continue;
            st = cross(&c, xa[l], na[l], xb[m], nb[m]);
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
    lps_tensor **c = calloc((size_t)n, sizeof *c);
    double *nrm = calloc((size_t)n, sizeof *nrm);
    if (!c || !nrm) st = lps_fail(LPS_ENOMEM, "cka_layers: out of memory");
    for (int k = 0; k < n && !st; k++) {
        c[k] = lps_tensor_clone(k < la ? xa[k] : xb[k - la]);
        st = c[k] ? centre(c[k], &nrm[k]) : LPS_ENOMEM;
    }
    if (!st) st = paired(cka, c, nrm, la, c + la, nrm + la, lb);
    for (int k = 0; c && k < n; k++) lps_tensor_free(c[k]);
    free(c);
    free(nrm);
    return st;
}

/* Centred hidden activations of one model: nh tensors and their norms. */
typedef struct {
    lps_tensor **act;
    double *norm;
    int nh;
} prepared;

static void prepared_free(prepared *p)
{
    if (p->act)
        for (int l = 0; l < p->nh; l++) lps_tensor_free(p->act[l]);
    free(p->act);
    free(p->norm);
}

static lps_status prepare(prepared *p, const lps_mlp_view *m, const lps_tensor *probe)
{
    lps_status st = lps_mlp_check("cka", m);
    if (st) return st;
    int nh = m->nlayers - 1;
    p->act = calloc((size_t)nh, sizeof *p->act);
    p->norm = calloc((size_t)nh, sizeof *p->norm);
    if (!p->act || !p->norm) return lps_fail(LPS_ENOMEM, "cka: out of memory");
    p->nh = nh;
    for (int l = 0; l < nh; l++)
        if (!(p->act[l] = lps_tensor_new2(probe->shape[0], m->p[2 * l]->shape[0])))
            return LPS_ENOMEM;
    st = lps_mlp_hidden_acts(p->act, m, probe);
    for (int l = 0; l < nh && !st; l++) st = centre(p->act[l], &p->norm[l]);
    return st;
}

lps_status lps_cka_matrix(lps_tensor *out, const lps_mlp_view *a, int64_t na,
                          const lps_mlp_view *b, int64_t nb, const lps_tensor *probe)
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
    for (int64_t i = 0; i < na + nb && !st; i++)
        st = prepare(&pa[i], i < na ? &a[i] : &b[i - na], probe);
    for (int64_t i = 0; i < na && !st; i++)
        for (int64_t j = 0; j < nb && !st; j++) {
            const prepared *x = &pa[i], *y = &pa[na + j];
            double c = 0.0;
            st = paired(&c, x->act, x->norm, x->nh, y->act, y->norm, y->nh);
            out->data[i * nb + j] = (float)c;
        }
    for (int64_t i = 0; i < na + nb; i++) prepared_free(&pa[i]);
    free(pa);
    return st;
}
