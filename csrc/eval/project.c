/* project.c - a small symmetric eigensolver and the 2-D projections built
 * on it: PCA of feature rows, classical MDS of a similarity matrix. */
#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Householder reduction to tridiagonal form (EISPACK tred2, as in the
 * public-domain JAMA): v (n x n) becomes the accumulated transform, d the
 * diagonal, e the off-diagonal. */
static void tred2(double *v, double *d, double *e, int64_t n)
{
#define V(i, j) v[(i) * n + (j)]
    for (int64_t j = 0; j < n; j++) d[j] = V(n - 1, j);
    for (int64_t i = n - 1; i > 0; i--) {
        double scale = 0.0, h = 0.0;
        for (int64_t k = 0; k < i; k++) scale += fabs(d[k]);
        if (scale == 0.0) {
            e[i] = d[i - 1];
            for (int64_t j = 0; j < i; j++) {
                d[j] = V(i - 1, j);
                V(i, j) = 0.0;
                V(j, i) = 0.0;
            }
        } else {
            for (int64_t k = 0; k < i; k++) {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            double f = d[i - 1], g = sqrt(h);
            if (f > 0) g = -g;
            e[i] = scale * g;
            h = h - f * g;
            d[i - 1] = f - g;
            for (int64_t j = 0; j < i; j++) e[j] = 0.0;
            for (int64_t j = 0; j < i; j++) {
                f = d[j];
                V(j, i) = f;
                g = e[j] + V(j, j) * f;
                for (int64_t k = j + 1; k <= i - 1; k++) {
                    g += V(k, j) * d[k];
                    e[k] += V(k, j) * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for (int64_t j = 0; j < i; j++) {
                e[j] /= h;
                f += e[j] * d[j];
            }
            double hh = f / (h + h);
            for (int64_t j = 0; j < i; j++) e[j] -= hh * d[j];
            for (int64_t j = 0; j < i; j++) {
                f = d[j];
                g = e[j];
                for (int64_t k = j; k <= i - 1; k++) V(k, j) -= (f * e[k] + g * d[k]);
                d[j] = V(i - 1, j);
                V(i, j) = 0.0;
            }
        }
        d[i] = h;
    }
    for (int64_t i = 0; i < n - 1; i++) {
        V(n - 1, i) = V(i, i);
        V(i, i) = 1.0;
        double h = d[i + 1];
        if (h != 0.0) {
            for (int64_t k = 0; k <= i; k++) d[k] = V(k, i + 1) / h;
            for (int64_t j = 0; j <= i; j++) {
                double g = 0.0;
                for (int64_t k = 0; k <= i; k++) g += V(k, i + 1) * V(k, j);
                for (int64_t k = 0; k <= i; k++) V(k, j) -= g * d[k];
            }
        }
        for (int64_t k = 0; k <= i; k++) V(k, i + 1) = 0.0;
    }
    for (int64_t j = 0; j < n; j++) {
        d[j] = V(n - 1, j);
        V(n - 1, j) = 0.0;
    }
    V(n - 1, n - 1) = 1.0;
    e[0] = 0.0;
}

/* Implicit QL on the tridiagonal matrix (EISPACK tql2); 0 on success, -1 if
 * an eigenvalue does not converge. */
static int tql2(double *v, double *d, double *e, int64_t n)
{
    for (int64_t i = 1; i < n; i++) e[i - 1] = e[i];
    e[n - 1] = 0.0;
    double f = 0.0, tst1 = 0.0, eps = 0x1.0p-52;
    for (int64_t l = 0; l < n; l++) {
        double t = fabs(d[l]) + fabs(e[l]);
        if (t > tst1) tst1 = t;
        int64_t m = l;
        while (m < n - 1 && fabs(e[m]) > eps * tst1) m++;
        if (m > l) {
            int iter = 0;
            do {
                if (++iter > 60) return -1;
                double g = d[l], p = (d[l + 1] - g) / (2.0 * e[l]), r = hypot(p, 1.0);
                if (p < 0) r = -r;
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                double dl1 = d[l + 1], h = g - d[l];
                for (int64_t i = l + 2; i < n; i++) d[i] -= h;
                f += h;
                p = d[m];
                double c = 1.0, c2 = c, c3 = c, el1 = e[l + 1], s = 0.0, s2 = 0.0;
                for (int64_t i = m - 1; i >= l; i--) {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = hypot(p, e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for (int64_t k = 0; k < n; k++) {
                        h = V(k, i + 1);
                        V(k, i + 1) = s * V(k, i) + c * h;
                        V(k, i) = c * V(k, i) - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
            } while (fabs(e[l]) > eps * tst1);
        }
        d[l] += f;
        e[l] = 0.0;
    }
    return 0;
#undef V
}

lps_status lps_symeig(double *a, double *w, int64_t n)
{
    if (n < 1) return lps_fail(LPS_EINVAL, "symeig: empty matrix");
    for (int64_t i = 0; i < n * n; i++)
        if (!isfinite(a[i]))
            return lps_fail(LPS_ENUMERIC, "symeig: entry (%lld,%lld) is not finite",
                            (long long)(i / n + 1), (long long)(i % n + 1));
    double *e = malloc((size_t)n * sizeof *e);
    if (!e) return lps_fail(LPS_ENOMEM, "symeig: out of memory");
    tred2(a, w, e, n);
    int bad = tql2(a, w, e, n);
    free(e);
    if (bad) return lps_fail(LPS_ENUMERIC, "symeig: QL iteration did not converge");
    /* Increasing eigenvalues (selection sort keeps it simple and stable). */
    for (int64_t i = 0; i < n - 1; i++) {
        int64_t k = i;
        for (int64_t j = i + 1; j < n; j++)
            if (w[j] < w[k]) k = j;
        if (k != i) {
            double t = w[i];
            w[i] = w[k];
            w[k] = t;
            for (int64_t r = 0; r < n; r++) {
                t = a[r * n + i];
                a[r * n + i] = a[r * n + k];
                a[r * n + k] = t;
            }
        }
    }
    /* A deterministic sign: each vector's largest entry (first of equals) is positive. */
    for (int64_t j = 0; j < n; j++) {
        int64_t big = 0;
        for (int64_t r = 1; r < n; r++)
            if (fabs(a[r * n + j]) > fabs(a[big * n + j])) big = r;
        if (a[big * n + j] < 0)
            for (int64_t r = 0; r < n; r++) a[r * n + j] = -a[r * n + j];
    }
    return LPS_OK;
}

/* Flip each output column so its largest |entry| is positive. */
static void orient(lps_tensor *out)
{
    int64_t n = out->shape[0], k = out->shape[1];
    for (int64_t j = 0; j < k; j++) {
        int64_t big = 0;
        for (int64_t i = 1; i < n; i++)
            if (fabsf(out->data[i * k + j]) > fabsf(out->data[big * k + j])) big = i;
        if (out->data[big * k + j] < 0)
            for (int64_t i = 0; i < n; i++) out->data[i * k + j] = -out->data[i * k + j];
    }
}

lps_status lps_pca(lps_tensor *out, double *var, const lps_tensor *x, int64_t k)
{
    if (x->ndim != 2) return lps_fail(LPS_ESHAPE, "pca: needs a 2-D (n x d) tensor, got %s", SH(x));
    int64_t n = x->shape[0], d = x->shape[1], m = n < d ? n : d;
    if (n < 2) return lps_fail(LPS_EINVAL, "pca: needs at least 2 rows, got %s", SH(x));
    if (k < 1 || k > m)
        return lps_fail(LPS_ERANGE, "pca: k = %lld out of range 1..%lld for %s", (long long)k,
                        (long long)m, SH(x));
    if (out->ndim != 2 || out->shape[0] != n || out->shape[1] != k)
        return lps_fail(LPS_ESHAPE, "pca: output %s should be (%lldx%lld)", SH(out), (long long)n,
                        (long long)k);
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(x->data[i]))
            return lps_fail(LPS_ENUMERIC, "pca: row %lld has a non-finite value", (long long)(i / d + 1));
    double *xc = malloc((size_t)(n * d) * sizeof *xc), *g = malloc((size_t)(m * m) * sizeof *g);
    double *w = malloc((size_t)m * sizeof *w);
    lps_status st = LPS_OK;
    if (!xc || !g || !w) {
        st = lps_fail(LPS_ENOMEM, "pca: out of memory for %s", SH(x));
        goto done;
    }
    for (int64_t j = 0; j < d; j++) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += x->data[i * d + j];
        s /= (double)n;
        for (int64_t i = 0; i < n; i++) xc[i * d + j] = x->data[i * d + j] - s;
    }
    /* The smaller of the covariance (d x d) and the Gram matrix (n x n)
     * share their non-zero eigenvalues. */
    int dual = n < d;
    for (int64_t a = 0; a < m; a++)
        for (int64_t b = a; b < m; b++) {
            double s = 0.0;
            if (dual)
                for (int64_t j = 0; j < d; j++) s += xc[a * d + j] * xc[b * d + j];
            else
                for (int64_t i = 0; i < n; i++) s += xc[i * d + a] * xc[i * d + b];
            g[a * m + b] = g[b * m + a] = s / (double)(n - 1);
        }
    if ((st = lps_symeig(g, w, m))) goto done;
    for (int64_t c = 0; c < k; c++) {
        int64_t col = m - 1 - c;
        double lam = w[col] > 0.0 ? w[col] : 0.0;
        if (var) var[c] = lam;
        for (int64_t i = 0; i < n; i++) {
            double s = 0.0;
            if (dual) /* X v = u sigma, sigma^2 = (n-1) lambda */
                s = g[i * m + col] * sqrt(lam * (double)(n - 1));
            else
                for (int64_t j = 0; j < d; j++) s += xc[i * d + j] * g[j * m + col];
            out->data[i * k + c] = (float)s;
        }
    }
    orient(out);
done:
    free(xc);
    free(g);
    free(w);
    return st;
}

lps_status lps_mds(lps_tensor *out, const lps_tensor *sim, int64_t k)
{
    if (sim->ndim != 2 || sim->shape[0] != sim->shape[1])
        return lps_fail(LPS_ESHAPE, "mds: needs a square similarity matrix, got %s", SH(sim));
    int64_t n = sim->shape[0];
    if (n < 2) return lps_fail(LPS_EINVAL, "mds: needs at least 2 items, got %s", SH(sim));
    if (k < 1 || k > n)
        return lps_fail(LPS_ERANGE, "mds: k = %lld out of range 1..%lld", (long long)k, (long long)n);
    if (out->ndim != 2 || out->shape[0] != n || out->shape[1] != k)
        return lps_fail(LPS_ESHAPE, "mds: output %s should be (%lldx%lld)", SH(out), (long long)n,
                        (long long)k);
    for (int64_t i = 0; i < sim->numel; i++)
        if (!isfinite(sim->data[i]))
            return lps_fail(LPS_ENUMERIC, "mds: similarity (%lld,%lld) is not finite",
                            (long long)(i / n + 1), (long long)(i % n + 1));
    double *b = malloc((size_t)(n * n) * sizeof *b), *w = malloc((size_t)n * sizeof *w);
    double *rm = malloc((size_t)n * sizeof *rm);
    lps_status st = LPS_OK;
    if (!b || !w || !rm) {
        st = lps_fail(LPS_ENOMEM, "mds: out of memory for %lld items", (long long)n);
        goto done;
    }
    /* With d_ij^2 = s_ii + s_jj - 2 s_ij, -J D J / 2 is the double-centred
     * (symmetrized) similarity itself. */
    double all = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int64_t j = 0; j < n; j++) {
            double v = 0.5 * ((double)sim->data[i * n + j] + sim->data[j * n + i]);
            b[i * n + j] = v;
            s += v;
        }
        rm[i] = s / (double)n;
        all += s;
    }
    all /= (double)n * (double)n;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) b[i * n + j] += all - rm[i] - rm[j];
    if ((st = lps_symeig(b, w, n))) goto done;
    for (int64_t c = 0; c < k; c++) {
        int64_t col = n - 1 - c;
        double sc = sqrt(w[col] > 0.0 ? w[col] : 0.0);
        for (int64_t i = 0; i < n; i++) out->data[i * k + c] = (float)(b[i * n + col] * sc);
    }
    orient(out);
done:
    free(b);
    free(w);
    free(rm);
    return st;
}
