/* cluster.c - k-means (Lloyd) with k-means++ seeding and restarts. */
#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double dist2(const float *x, const double *c, int64_t d)
{
    double s = 0.0;
    for (int64_t j = 0; j < d; j++) {
        double t = x[j] - c[j];
        s += t * t;
    }
    return s;
}

/* k-means++ (Arthur & Vassilvitskii 2007): each next centre is a point drawn
 * with probability proportional to its squared distance to the nearest one. */
static void seed(double *cent, double *near, const lps_tensor *x, int64_t k, lps_rng *r)
{
    int64_t n = x->shape[0], d = x->shape[1];
    int64_t first = (int64_t)lps_rng_below(r, (uint64_t)n);
    for (int64_t j = 0; j < d; j++) cent[j] = x->data[first * d + j];
    for (int64_t i = 0; i < n; i++) near[i] = dist2(x->data + i * d, cent, d);
    for (int64_t c = 1; c < k; c++) {
        double total = 0.0;
        for (int64_t i = 0; i < n; i++) total += near[i];
        int64_t pick = n - 1;
        if (total > 0.0) {
            double u = lps_rng_uniform(r) * total, acc = 0.0;
            for (int64_t i = 0; i < n; i++) {
                acc += near[i];
                if (u < acc) {
                    pick = i;
                    break;
                }
            }
        } else /* every point coincides with a centre */
            pick = (int64_t)lps_rng_below(r, (uint64_t)n);
        double *cc = cent + c * d;
        for (int64_t j = 0; j < d; j++) cc[j] = x->data[pick * d + j];
        for (int64_t i = 0; i < n; i++) {
            double t = dist2(x->data + i * d, cc, d);
            if (t < near[i]) near[i] = t;
        }
    }
}

/* Nearest centre of every point (ties: lower centre); returns inertia and
 * whether any assignment changed. */
static double assign_all(int64_t *as, double *dd, int *changed, const lps_tensor *x,
                         const double *cent, int64_t k)
{
    int64_t n = x->shape[0], d = x->shape[1];
    double inertia = 0.0;
    *changed = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t best = 0;
        double bd = HUGE_VAL;
        for (int64_t c = 0; c < k; c++) {
            double t = dist2(x->data + i * d, cent + c * d, d);
            if (t < bd) {
                bd = t;
                best = c;
            }
        }
        if (as[i] != best) *changed = 1;
        as[i] = best;
        dd[i] = bd;
        inertia += bd;
    }
    return inertia;
}

static void update(double *cent, int64_t *cnt, int64_t *as, double *dd, const lps_tensor *x, int64_t k)
{
    int64_t n = x->shape[0], d = x->shape[1];
    memset(cent, 0, (size_t)(k * d) * sizeof *cent);
    memset(cnt, 0, (size_t)k * sizeof *cnt);
    for (int64_t i = 0; i < n; i++) {
        cnt[as[i]]++;
        for (int64_t j = 0; j < d; j++) cent[as[i] * d + j] += x->data[i * d + j];
    }
    for (int64_t c = 0; c < k; c++) {
        if (cnt[c] == 0) {
            /* An empty cluster takes the point farthest from its centre
             * (from a cluster that keeps at least one point). */
            int64_t far = -1;
            for (int64_t i = 0; i < n; i++)
                if (cnt[as[i]] > 1 && (far < 0 || dd[i] > dd[far])) far = i;
            if (far < 0) continue; /* cannot happen when k <= n */
            int64_t old = as[far];
            for (int64_t j = 0; j < d; j++) cent[old * d + j] -= x->data[far * d + j];
            cnt[old]--;
            as[far] = c;
            dd[far] = 0.0;
            cnt[c] = 1;
            for (int64_t j = 0; j < d; j++) cent[c * d + j] = x->data[far * d + j];
        }
    }
    for (int64_t c = 0; c < k; c++)
        for (int64_t j = 0; j < d; j++) cent[c * d + j] /= (double)cnt[c];
}

lps_status lps_kmeans(int64_t *assign, lps_tensor *centers, double *inertia, const lps_tensor *x,
                      int64_t k, const lps_kmeans_opts *o, lps_rng *r)
{
    if (x->ndim != 2)
        return lps_fail(LPS_ESHAPE, "kmeans: points must be a 2-D (n x d) tensor, got %s", SH(x));
    int64_t n = x->shape[0], d = x->shape[1];
    if (n == 0) return lps_fail(LPS_EINVAL, "kmeans: no points");
    if (k < 1 || k > n)
        return lps_fail(LPS_ERANGE, "kmeans: k = %lld out of range 1..%lld (the number of points)",
                        (long long)k, (long long)n);
    if (centers && (centers->ndim != 2 || centers->shape[0] != k || centers->shape[1] != d))
        return lps_fail(LPS_ESHAPE, "kmeans: centres %s should be (%lldx%lld)", SH(centers),
                        (long long)k, (long long)d);
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(x->data[i]))
            return lps_fail(LPS_ENUMERIC, "kmeans: point %lld has a non-finite coordinate",
                            (long long)(i / (d ? d : 1) + 1));
    int restarts = o && o->restarts > 0 ? o->restarts : 10;
    int max_iter = o && o->max_iter > 0 ? o->max_iter : 300;
    double *cent = malloc((size_t)(k * (d ? d : 1)) * sizeof *cent);
    double *best_cent = malloc((size_t)(k * (d ? d : 1)) * sizeof *best_cent);
    double *dd = malloc((size_t)n * sizeof *dd);
    int64_t *as = malloc((size_t)n * sizeof *as), *cnt = malloc((size_t)k * sizeof *cnt);
    if (!cent || !best_cent || !dd || !as || !cnt) {
        free(cent);
        free(best_cent);
        free(dd);
        free(as);
        free(cnt);
        return lps_fail(LPS_ENOMEM, "kmeans: out of memory for %lld points", (long long)n);
    }
    double best = HUGE_VAL;
    for (int run = 0; run < restarts; run++) {
        seed(cent, dd, x, k, r);
        for (int64_t i = 0; i < n; i++) as[i] = -1;
        int changed;
        double in = assign_all(as, dd, &changed, x, cent, k);
        for (int it = 0; it < max_iter; it++) {
            update(cent, cnt, as, dd, x, k);
            in = assign_all(as, dd, &changed, x, cent, k);
            if (!changed) break;
        }
        if (in < best) { /* strict: the earliest of equal runs wins */
            best = in;
            memcpy(assign, as, (size_t)n * sizeof *as);
            memcpy(best_cent, cent, (size_t)(k * d) * sizeof *cent);
        }
    }
    if (centers)
        for (int64_t i = 0; i < k * d; i++) centers->data[i] = (float)best_cent[i];
    if (inertia) *inertia = best;
    free(cent);
    free(best_cent);
    free(dd);
    free(as);
    free(cnt);
    return LPS_OK;
}
