/* metrics.c - retrieval (CMC, mAP), nearest-neighbour classification,
 * NMI/AMI, rank correlations and the top-k embedding query. */
#include "core/internal.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { double key; int64_t idx; } keyed;

/* Decreasing key, then increasing index: a total, deterministic order. */
static int by_key_desc(const void *pa, const void *pb)
{
    const keyed *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static lps_status check_sim(const char *op, const lps_tensor *sim, int exclude_diag, int64_t *ngeff)
{
    if (sim->ndim != 2)
        return lps_fail(LPS_ESHAPE, "%s: similarity must be a 2-D (queries x gallery) tensor, got %s",
                        op, SH(sim));
    int64_t nq = sim->shape[0], ng = sim->shape[1];
    if (nq == 0 || ng == 0)
        return lps_fail(LPS_EINVAL, "%s: empty query or gallery set %s", op, SH(sim));
    if (exclude_diag && nq != ng)
        return lps_fail(LPS_ESHAPE, "%s: exclude_self needs a square similarity, got %s", op, SH(sim));
    for (int64_t i = 0; i < sim->numel; i++)
        if (isnan(sim->data[i]))
            return lps_fail(LPS_ENUMERIC, "%s: similarity (%lld,%lld) is NaN", op,
                            (long long)(i / ng + 1), (long long)(i % ng + 1));
    *ngeff = ng - (exclude_diag ? 1 : 0);
    if (*ngeff < 1) return lps_fail(LPS_EINVAL, "%s: no gallery item left after excluding self", op);
    return LPS_OK;
}

/* The ranked gallery of query q in buf; returns its length. */
static int64_t rank_gallery(keyed *buf, const lps_tensor *sim, int64_t q, int exclude_diag)
{
    int64_t ng = sim->shape[1], n = 0;
    const float *row = sim->data + q * ng;
    for (int64_t j = 0; j < ng; j++) {
        if (exclude_diag && j == q) continue;
        buf[n].key = row[j];
        buf[n++].idx = j;
    }
    qsort(buf, (size_t)n, sizeof *buf, by_key_desc);
    return n;
}

/* The first k of query q's ranked gallery in buf[0..k), by insertion:
 * O(ng k) where the full sort is O(ng log ng), the same order. */
static void top_gallery(keyed *buf, const lps_tensor *sim, int64_t q, int exclude_diag, int64_t k)
{
    int64_t ng = sim->shape[1], n = 0;
    const float *row = sim->data + q * ng;
    for (int64_t j = 0; j < ng; j++) {
        if (exclude_diag && j == q) continue;
        keyed e = {row[j], j};
        if (n == k && by_key_desc(&e, &buf[k - 1]) >= 0) continue;
        int64_t pos = n < k ? n++ : k - 1;
        for (; pos > 0 && by_key_desc(&e, &buf[pos - 1]) < 0; pos--) buf[pos] = buf[pos - 1];
        buf[pos] = e;
    }
}

lps_status lps_retrieval(double *cmc, double *map, int64_t *nvalid, double *ap_out, const lps_tensor *sim,
                         const int64_t *qlab, const int64_t *glab, const int64_t *ks, int nk,
                         int exclude_diag)
{
    int64_t ngeff;
    lps_status st = check_sim("retrieval", sim, exclude_diag, &ngeff);
    if (st) return st;
    for (int j = 0; j < nk; j++)
        if (ks[j] < 1 || ks[j] > ngeff)
            return lps_fail(LPS_ERANGE, "retrieval: rank k = %lld out of range 1..%lld (gallery size)",
                            (long long)ks[j], (long long)ngeff);
    int64_t nq = sim->shape[0];
    keyed *buf = malloc((size_t)sim->shape[1] * sizeof *buf);
    if (!buf) return lps_fail(LPS_ENOMEM, "retrieval: out of memory");
    for (int j = 0; j < nk; j++) cmc[j] = 0.0;
    double apsum = 0.0;
    int64_t valid = 0;
    for (int64_t q = 0; q < nq; q++) {
        int64_t n = rank_gallery(buf, sim, q, exclude_diag), rel = 0, first = 0;
        for (int64_t r = 0; r < n; r++)
            if (glab[buf[r].idx] == qlab[q]) rel++;
        if (ap_out) ap_out[q] = NAN;
        if (rel == 0) continue; /* nothing to find: no precision defined */
        double ap = 0.0;
        int64_t hits = 0;
        for (int64_t r = 0; r < n; r++)
            if (glab[buf[r].idx] == qlab[q]) {
                if (hits++ == 0) first = r + 1;
                ap += (double)hits / (double)(r + 1);
            }
        apsum += ap / (double)rel;
        if (ap_out) ap_out[q] = ap / (double)rel;
        for (int j = 0; j < nk; j++) cmc[j] += first <= ks[j] ? 1.0 : 0.0;
        valid++;
    }
    free(buf);
    if (valid == 0)
        return lps_fail(LPS_EINVAL, "retrieval: no query has a gallery item with its label");
    for (int j = 0; j < nk; j++) cmc[j] /= (double)valid;
    *map = apsum / (double)valid;
    if (nvalid) *nvalid = valid;
    return LPS_OK;
}

lps_status lps_knn_classify(int64_t *pred, const lps_tensor *sim, const int64_t *glab, int64_t k,
                            int exclude_diag)
{
    int64_t ngeff;
    lps_status st = check_sim("knn", sim, exclude_diag, &ngeff);
    if (st) return st;
    if (k < 1 || k > ngeff)
        return lps_fail(LPS_ERANGE, "knn: k = %lld out of range 1..%lld (gallery size)", (long long)k,
                        (long long)ngeff);
    keyed *buf = malloc((size_t)sim->shape[1] * sizeof *buf);
    if (!buf) return lps_fail(LPS_ENOMEM, "knn: out of memory");
    for (int64_t q = 0; q < sim->shape[0]; q++) {
        top_gallery(buf, sim, q, exclude_diag, k);
        int64_t best = 0, bestvotes = 0;
        double bestsum = -HUGE_VAL;
        for (int64_t a = 0; a < k; a++) {
            int64_t lab = glab[buf[a].idx], votes = 0;
            double sum = 0.0;
            for (int64_t b = 0; b < k; b++)
                if (glab[buf[b].idx] == lab) {
                    votes++;
                    sum += buf[b].key;
                }
            if (votes > bestvotes || (votes == bestvotes && (sum > bestsum || (sum == bestsum && lab < best)))) {
                best = lab;
                bestvotes = votes;
                bestsum = sum;
            }
        }
        pred[q] = best;
    }
    free(buf);
    return LPS_OK;
}

static int cmp_i64(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return (a > b) - (a < b);
}

/* Sorted distinct values of v into *uniq (malloc'ed); returns their count or -1. */
static int64_t distinct(int64_t **uniq, const int64_t *v, int64_t n)
{
    int64_t *u = malloc((size_t)(n ? n : 1) * sizeof *u);
    if (!u) return -1;
    memcpy(u, v, (size_t)n * sizeof *u);
    qsort(u, (size_t)n, sizeof *u, cmp_i64);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (i == 0 || u[i] != u[m - 1]) u[m++] = u[i];
    *uniq = u;
    return m;
}

static int64_t find(const int64_t *u, int64_t m, int64_t v)
{
    int64_t lo = 0, hi = m - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (u[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

lps_status lps_centroid_classify(int64_t *pred, const lps_tensor *sim, const int64_t *glab,
                                 int exclude_diag)
{
    int64_t ngeff;
    lps_status st = check_sim("centroid", sim, exclude_diag, &ngeff);
    if (st) return st;
    int64_t ng = sim->shape[1], *u = NULL, m = distinct(&u, glab, ng);
    double *sum = m > 0 ? calloc((size_t)m, sizeof *sum) : NULL;
    int64_t *cnt = m > 0 ? calloc((size_t)m, sizeof *cnt) : NULL, *cls = malloc((size_t)ng * sizeof *cls);
    if (!sum || !cnt || !cls) {
        st = lps_fail(LPS_ENOMEM, "centroid: out of memory");
        goto done;
    }
    for (int64_t j = 0; j < ng; j++) cls[j] = find(u, m, glab[j]);
    for (int64_t q = 0; q < sim->shape[0]; q++) {
        memset(sum, 0, (size_t)m * sizeof *sum);
        memset(cnt, 0, (size_t)m * sizeof *cnt);
        for (int64_t j = 0; j < ng; j++) {
            if (exclude_diag && j == q) continue;
            sum[cls[j]] += sim->data[q * ng + j];
            cnt[cls[j]]++;
        }
        int64_t best = -1;
        double bestv = -HUGE_VAL;
        for (int64_t c = 0; c < m; c++) /* increasing label: ties keep the smaller */
            if (cnt[c] && (best < 0 || sum[c] / (double)cnt[c] > bestv)) {
                best = c;
                bestv = sum[c] / (double)cnt[c];
            }
        pred[q] = u[best];
    }
done:
    free(u);
    free(sum);
    free(cnt);
    free(cls);
    return st;
}

/* ---------------------------------------------------- mutual information */

typedef struct {
    int64_t r, c, n;
    int64_t *a, *b; /* row and column sums */
    int64_t *t;     /* r x c contingency counts */
} contingency;

static void cont_free(contingency *ct)
{
    free(ct->a);
    free(ct->b);
    free(ct->t);
}

static lps_status cont_build(contingency *ct, const char *op, const int64_t *x, const int64_t *y, int64_t n)
{
    memset(ct, 0, sizeof *ct);
    if (n < 1) return lps_fail(LPS_EINVAL, "%s: the labelings are empty", op);
    int64_t *ux = NULL, *uy = NULL;
    ct->n = n;
    ct->r = distinct(&ux, x, n);
    ct->c = distinct(&uy, y, n);
    lps_status st = LPS_OK;
    if (ct->r < 0 || ct->c < 0 || (ct->r > 0 && ct->c > INT64_MAX / 8 / ct->r)) {
        st = lps_fail(LPS_ENOMEM, "%s: out of memory", op);
        goto done;
    }
    ct->a = calloc((size_t)ct->r, sizeof *ct->a);
    ct->b = calloc((size_t)ct->c, sizeof *ct->b);
    ct->t = calloc((size_t)(ct->r * ct->c), sizeof *ct->t);
    if (!ct->a || !ct->b || !ct->t) {
        st = lps_fail(LPS_ENOMEM, "%s: cannot allocate a %lldx%lld contingency table", op,
                      (long long)ct->r, (long long)ct->c);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t p = find(ux, ct->r, x[i]), q = find(uy, ct->c, y[i]);
        ct->t[p * ct->c + q]++;
        ct->a[p]++;
        ct->b[q]++;
    }
done:
    free(ux);
    free(uy);
    if (st) cont_free(ct);
    return st;
}

/* As scikit-learn's mutual_info_score: tiny terms are zeroed, the sum clipped at 0. */
static double mutual_info(const contingency *ct)
{
    if (ct->r == 1 || ct->c == 1) return 0.0;
    double n = (double)ct->n, logn = log(n), mi = 0.0;
    for (int64_t i = 0; i < ct->r; i++)
        for (int64_t j = 0; j < ct->c; j++) {
            int64_t nij = ct->t[i * ct->c + j];
            if (!nij) continue;
            double p = (double)nij / n;
            double log_outer = -log((double)ct->a[i] * (double)ct->b[j]) + logn + logn;
            double term = p * (log((double)nij) - logn) + p * log_outer;
            if (fabs(term) >= DBL_EPSILON) mi += term;
        }
    return mi > 0.0 ? mi : 0.0;
}

static double entropy(const int64_t *counts, int64_t m, int64_t n)
{
    double h = 0.0, logn = log((double)n);
    for (int64_t i = 0; i < m; i++)
        if (counts[i]) h -= ((double)counts[i] / (double)n) * (log((double)counts[i]) - logn);
    return h;
}

/* E[MI] under random permutations with fixed marginals (hypergeometric
 * n_ij), summed in log space like scikit-learn's implementation. */
static double expected_mi(const contingency *ct)
{
    if (ct->r == 1 || ct->c == 1) return 0.0;
    double N = (double)ct->n, emi = 0.0, lgN1 = lgamma(N + 1.0), logN = log(N);
    for (int64_t i = 0; i < ct->r; i++) {
        double ai = (double)ct->a[i];
        for (int64_t j = 0; j < ct->c; j++) {
            double bj = (double)ct->b[j];
            int64_t start = ct->a[i] - ct->n + ct->b[j], end = ct->a[i] < ct->b[j] ? ct->a[i] : ct->b[j];
            if (start < 1) start = 1;
            double fixed = lgamma(ai + 1.0) + lgamma(bj + 1.0) + lgamma(N - ai + 1.0) + lgamma(N - bj + 1.0);
            for (int64_t nij = start; nij <= end; nij++) {
                double x = (double)nij;
                double term2 = logN + log(x) - log(ai) - log(bj);
                double gln = fixed - (lgamma(x + 1.0) + lgN1) - lgamma(ai - x + 1.0) - lgamma(bj - x + 1.0) -
                             lgamma(N - ai - bj + x + 1.0);
                emi += (x / N) * term2 * exp(gln);
            }
        }
    }
    return emi;
}

static lps_status labels_same_n(const char *op, int64_t n)
{
    return n < 1 ? lps_fail(LPS_EINVAL, "%s: the labelings are empty", op) : LPS_OK;
}

lps_status lps_nmi(double *nmi, const int64_t *a, const int64_t *b, int64_t n)
{
    contingency ct;
    lps_status st = labels_same_n("nmi", n);
    if (st || (st = cont_build(&ct, "nmi", a, b, n))) return st;
    if (ct.r == 1 && ct.c == 1) *nmi = 1.0; /* neither splits the data: a perfect match */
    else {
        double mi = mutual_info(&ct);
        if (mi == 0.0) *nmi = 0.0;
        else *nmi = mi / ((entropy(ct.a, ct.r, n) + entropy(ct.b, ct.c, n)) / 2.0);
    }
    cont_free(&ct);
    return LPS_OK;
}

lps_status lps_emi(double *emi, const int64_t *a, const int64_t *b, int64_t n)
{
    contingency ct;
    lps_status st = labels_same_n("emi", n);
    if (st || (st = cont_build(&ct, "emi", a, b, n))) return st;
    *emi = expected_mi(&ct);
    cont_free(&ct);
    return LPS_OK;
}

lps_status lps_ami(double *ami, const int64_t *a, const int64_t *b, int64_t n)
{
    contingency ct;
    lps_status st = labels_same_n("ami", n);
    if (st || (st = cont_build(&ct, "ami", a, b, n))) return st;
    if (ct.r == 1 && ct.c == 1) *ami = 1.0;
    else {
        double mi = mutual_info(&ct), emi = expected_mi(&ct);
        double norm = (entropy(ct.a, ct.r, n) + entropy(ct.b, ct.c, n)) / 2.0;
        double den = norm - emi;
        /* Keep the sign when rounding makes emi reach the normalizer. */
        if (den < 0) den = den < -DBL_EPSILON ? den : -DBL_EPSILON;
        else den = den > DBL_EPSILON ? den : DBL_EPSILON;
        *ami = (mi - emi) / den;
    }
    cont_free(&ct);
    return LPS_OK;
}

/* ------------------------------------------------------ rank correlations */

static lps_status check_pairs(const char *op, const double *x, const double *y, int64_t n)
{
    if (n < 2) return lps_fail(LPS_EINVAL, "%s: needs at least 2 pairs, got %lld", op, (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]) || !isfinite(y[i]))
            return lps_fail(LPS_ENUMERIC, "%s: pair %lld is not finite (%g, %g)", op, (long long)i + 1,
                            x[i], y[i]);
    return LPS_OK;
}

lps_status lps_kendall_tau_b(double *tau, const double *x, const double *y, int64_t n)
{
    lps_status st = check_pairs("kendall", x, y, n);
    if (st) return st;
    int64_t conc = 0, disc = 0, tx = 0, ty = 0; /* tx: tied in x only */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = i + 1; j < n; j++) {
            int dx = (x[i] > x[j]) - (x[i] < x[j]), dy = (y[i] > y[j]) - (y[i] < y[j]);
            if (dx && dy) {
                if (dx == dy) conc++;
                else disc++;
            } else if (dy) tx++;
            else if (dx) ty++;
        }
    double den = sqrt((double)(conc + disc + tx) * (double)(conc + disc + ty));
    *tau = den > 0.0 ? (double)(conc - disc) / den : NAN;
    return LPS_OK;
}

/* Average ranks (1-based) of v. */
static lps_status avg_ranks(double *rank, const double *v, int64_t n)
{
    keyed *k = malloc((size_t)n * sizeof *k);
    if (!k) return lps_fail(LPS_ENOMEM, "spearman: out of memory");
    for (int64_t i = 0; i < n; i++) {
        k[i].key = -v[i]; /* by_key_desc on -v gives increasing v */
        k[i].idx = i;
    }
    qsort(k, (size_t)n, sizeof *k, by_key_desc);
    for (int64_t i = 0; i < n;) {
        int64_t j = i;
        while (j + 1 < n && k[j + 1].key == k[i].key) j++;
        double r = (double)(i + j) / 2.0 + 1.0;
        for (int64_t t = i; t <= j; t++) rank[k[t].idx] = r;
        i = j + 1;
    }
    free(k);
    return LPS_OK;
}

lps_status lps_spearman_rho(double *rho, const double *x, const double *y, int64_t n)
{
    lps_status st = check_pairs("spearman", x, y, n);
    if (st) return st;
    double *rx = malloc((size_t)n * 2 * sizeof *rx);
    if (!rx) return lps_fail(LPS_ENOMEM, "spearman: out of memory");
    double *ry = rx + n;
    if ((st = avg_ranks(rx, x, n)) || (st = avg_ranks(ry, y, n))) {
        free(rx);
        return st;
    }
    double mean = (double)(n + 1) / 2.0, sxy = 0.0, sxx = 0.0, syy = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double a = rx[i] - mean, b = ry[i] - mean;
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    free(rx);
    *rho = sxx > 0.0 && syy > 0.0 ? sxy / sqrt(sxx * syy) : NAN;
    return LPS_OK;
}

/* ------------------------------------------------------------ top-k query */

/* a ranks below b: smaller score, or equal score and larger index. */
static inline int worse(float sa, int64_t ia, float sb, int64_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}

lps_status lps_topk(int64_t *idx, float *score, const lps_tensor *emb, const float *q, int64_t e,
                    int64_t k)
{
    if (emb->ndim != 2 || emb->shape[1] != e)
        return lps_fail(LPS_ESHAPE, "topk: embeddings %s should be N x %lld (the query length)",
                        SH(emb), (long long)e);
    int64_t n = emb->shape[0];
    if (n == 0) return lps_fail(LPS_EINVAL, "topk: no embeddings to search");
    if (k < 1 || k > n)
        return lps_fail(LPS_ERANGE, "topk: k = %lld out of range 1..%lld", (long long)k, (long long)n);
    if (n > INT32_MAX || e > INT32_MAX) return lps_fail(LPS_ESHAPE, "topk: sizes beyond BLAS's 32-bit limit");
    for (int64_t j = 0; j < e; j++)
        if (!isfinite(q[j]))
            return lps_fail(LPS_ENUMERIC, "topk: query entry %lld is not finite", (long long)j + 1);
    /* Scores in blocks of rows: the block stays in cache between the sgemv
     * and the selection, and no N-sized buffer is allocated per query. */
    enum { BLOCK = 2048 };
    float s[BLOCK];
    /* Min-heap of the best k so far, its worst at the root; most rows fail
     * the first comparison, so the scan is O(N). */
    int64_t m = 0;
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK;
        if (e > 0)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)nb, (int)e, 1.0f, emb->data + b0 * e, (int)e,
                        q, 1, 0.0f, s, 1);
        else
            memset(s, 0, (size_t)nb * sizeof *s);
        for (int64_t t = 0; t < nb; t++) {
            float v = s[t];
            int64_t i = b0 + t;
            if (!isfinite(v))
                return lps_fail(LPS_ENUMERIC, "topk: embedding row %lld gives a non-finite score",
                                (long long)i + 1);
            if (m == k && worse(v, i, score[0], idx[0])) continue;
            int64_t c;
            if (m < k) { /* sift up */
                c = m++;
                while (c > 0) {
                    int64_t p = (c - 1) / 2;
                    if (!worse(v, i, score[p], idx[p])) break;
                    score[c] = score[p];
                    idx[c] = idx[p];
                    c = p;
                }
            } else { /* replace the root, sift down */
                c = 0;
                for (;;) {
                    int64_t l = 2 * c + 1, r = l + 1, w = c;
                    float ws = v;
                    int64_t wi = i;
                    if (l < m && worse(score[l], idx[l], ws, wi)) { w = l; ws = score[l]; wi = idx[l]; }
                    if (r < m && worse(score[r], idx[r], ws, wi)) w = r;
                    if (w == c) break;
                    score[c] = score[w];
                    idx[c] = idx[w];
                    c = w;
                }
            }
            score[c] = v;
            idx[c] = i;
        }
    }
    /* Heap to best-first order: repeatedly move the worst to the end. */
    for (int64_t end = k - 1; end > 0; end--) {
        float v = score[end];
        int64_t vi = idx[end];
        score[end] = score[0];
        idx[end] = idx[0];
        int64_t c = 0;
        for (;;) {
            int64_t l = 2 * c + 1, r = l + 1, w = c;
            float ws = v;
            int64_t wi = vi;
            if (l < end && worse(score[l], idx[l], ws, wi)) { w = l; ws = score[l]; wi = idx[l]; }
            if (r < end && worse(score[r], idx[r], ws, wi)) w = r;
            if (w == c) break;
            score[c] = score[w];
            idx[c] = idx[w];
            c = w;
        }
        score[c] = v;
        idx[c] = vi;
    }
    return LPS_OK;
}
