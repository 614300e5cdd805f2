/* assign.c - linear assignment by shortest augmenting paths with dual
 * potentials (Kuhn-Munkres in the Jonker-Volgenant form), O(n^2 m). */
#include "core/internal.h"

#include <math.h>
#include <stdlib.h>

/* Rows 1..n of c (n x m, n <= m, 1-based in the loops below) to distinct
 * columns; writes col_of_row (0-based). */
static lps_status solve(int64_t *col_of_row, const double *c, int64_t n, int64_t m, double sign)
{
    double *u = calloc((size_t)(n + 1), sizeof *u), *v = calloc((size_t)(m + 1), sizeof *v);
    double *minv = malloc((size_t)(m + 1) * sizeof *minv);
    int64_t *p = calloc((size_t)(m + 1), sizeof *p), *way = calloc((size_t)(m + 1), sizeof *way);
    char *used = malloc((size_t)(m + 1)), *matched = calloc((size_t)(n + 1), 1);
    lps_status st = LPS_OK;
    if (!u || !v || !minv || !p || !way || !used || !matched) {
        st = lps_fail(LPS_ENOMEM, "assign: cannot allocate work space for %lldx%lld",
                      (long long)n, (long long)m);
        goto done;
    }
    if (n == m) {
        /* Column reduction (as in Jonker-Volgenant): v_j = min_i c_ij keeps
         * the duals feasible with u = 0, and each column whose best row is
         * still free is matched on a tight edge. Only the rows left over
         * need augmenting paths. (Square only: with spare columns the duals
         * of unmatched columns must stay <= 0.) */
        for (int64_t j = 1; j <= m; j++) {
            int64_t best = 1;
            for (int64_t i = 2; i <= n; i++)
                if (sign * c[(i - 1) * m + j - 1] < sign * c[(best - 1) * m + j - 1]) best = i;
            v[j] = sign * c[(best - 1) * m + j - 1];
            if (!matched[best]) {
                matched[best] = 1;
                p[j] = best;
            }
        }
    }
    for (int64_t i = 1; i <= n; i++) {
        if (matched[i]) continue; /* matched by the column reduction */
        /* Grow a shortest-path tree from row i over reduced costs until it
         * reaches a free column, then flip the path. */
        p[0] = i;
        int64_t j0 = 0;
        for (int64_t j = 0; j <= m; j++) {
            minv[j] = HUGE_VAL;
            used[j] = 0;
        }
        do {
            used[j0] = 1;
            int64_t i0 = p[j0], j1 = 0;
            double delta = HUGE_VAL;
            const double *row = c + (i0 - 1) * m;
            for (int64_t j = 1; j <= m; j++) {
                if (used[j]) continue;
                double cur = sign * row[j - 1] - u[i0] - v[j];
                if (cur < minv[j]) {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if (minv[j] < delta) {
                    delta = minv[j];
                    j1 = j;
                }
            }
            if (j1 == 0) { /* only possible with non-finite costs, checked before */
                st = lps_fail(LPS_ENUMERIC, "assign: no augmenting path (non-finite costs?)");
                goto done;
            }
            for (int64_t j = 0; j <= m; j++) {
                if (used[j]) {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else
                    minv[j] -= delta;
            }
            j0 = j1;
        } while (p[j0] != 0);
        do {
            int64_t j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    for (int64_t j = 1; j <= m; j++)
        if (p[j]) col_of_row[p[j] - 1] = j - 1;
done:
    free(u);
    free(v);
    free(minv);
    free(p);
    free(way);
    free(used);
    free(matched);
    return st;
}

lps_status lps_linear_assignment(int64_t *assign, double *total, const double *cost, int64_t n,
                                 int64_t m, int maximize)
{
    if (n < 0 || m < 0)
        return lps_fail(LPS_ESHAPE, "assign: negative size %lldx%lld", (long long)n, (long long)m);
    if (n > 0 && m > INT64_MAX / n / 8)
        return lps_fail(LPS_ENOMEM, "assign: %lldx%lld is too large", (long long)n, (long long)m);
    for (int64_t i = 0; i < n * m; i++)
        if (!isfinite(cost[i]))
            return lps_fail(LPS_ENUMERIC, "assign: cost (%lld,%lld) is not finite",
                            (long long)(i / m + 1), (long long)(i % m + 1));
    double sign = maximize ? -1.0 : 1.0;
    lps_status st = LPS_OK;
    if (n <= m) {
        if (n > 0) st = solve(assign, cost, n, m, sign);
    } else {
        /* More rows than columns: assign every column to a row instead. */
        double *ct = malloc((size_t)(n * m) * sizeof *ct);
        int64_t *row_of_col = malloc((size_t)(m ? m : 1) * sizeof *row_of_col);
        if (!ct || !row_of_col) {
            free(ct);
            free(row_of_col);
            return lps_fail(LPS_ENOMEM, "assign: cannot allocate %lldx%lld", (long long)m,
                            (long long)n);
        }
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++) ct[j * n + i] = cost[i * m + j];
        for (int64_t i = 0; i < n; i++) assign[i] = -1;
        if (m > 0) st = solve(row_of_col, ct, m, n, sign);
        if (st == LPS_OK)
            for (int64_t j = 0; j < m; j++) assign[row_of_col[j]] = j;
        free(ct);
        free(row_of_col);
    }
    if (st == LPS_OK && total) {
        double t = 0.0;
        for (int64_t i = 0; i < n; i++)
            if (assign[i] >= 0) t += cost[i * m + assign[i]];
        *total = t;
    }
    return st;
}
