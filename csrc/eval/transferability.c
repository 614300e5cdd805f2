/* transferability.c - data-based transferability estimators: how well a
 * candidate model suits a target task, judged from its outputs on a few
 * target samples (LogME, LEEP, leave-one-out k-NN, a ridge probe scored by
 * its closed-form leave-one-out accuracy). Everything is in double, as the
 * LogME reference (numpy float64) is. */
#include "core/internal.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK's symmetric divide-and-conquer eigensolver, bundled in Debian's
 * libopenblas (no lapacke.h needed); the trailing size_t are gfortran's
 * hidden lengths of the two character arguments. Measured 1.05 ms against
 * lps_symeig's 6.9 ms at 128 x 128, one thread. */
extern void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                    double *w, double *work, const int *lwork, int *iwork, const int *liwork,
                    int *info, size_t jobz_len, size_t uplo_len);

/* ------------------------------------------------------------ checks */

/* x is n x cols (2-D, n >= 2, cols >= 1, finite); y holds n labels in
 * 0..classes-1 with at least two distinct ones. */
static lps_status check_xy(const char *op, const char *what, const lps_tensor *x, const int64_t *y,
                           int64_t classes)
{
    if (x->ndim != 2 || x->shape[1] < 1)
        return lps_fail(LPS_ESHAPE, "%s: %s must be a 2-D (samples x columns) tensor, got %s", op,
                        what, SH(x));
    int64_t n = x->shape[0], d = x->shape[1];
    if (n < 2) return lps_fail(LPS_EINVAL, "%s: needs at least 2 samples, got %s", op, SH(x));
    if (classes < 2)
        return lps_fail(LPS_EINVAL, "%s: needs at least 2 classes, got %lld", op, (long long)classes);
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(x->data[i]))
            return lps_fail(LPS_ENUMERIC, "%s: %s (%lld,%lld) is not finite", op, what,
                            (long long)(i / d + 1), (long long)(i % d + 1));
    int64_t first = -1, two = 0;
    for (int64_t i = 0; i < n; i++) {
        if (y[i] < 0 || y[i] >= classes)
            return lps_fail(LPS_ERANGE, "%s: label %lld of sample %lld out of range 0..%lld", op,
                            (long long)y[i], (long long)i, (long long)classes - 1);
        if (first < 0) first = y[i];
        else if (y[i] != first) two = 1;
    }
    if (!two)
        return lps_fail(LPS_EINVAL, "%s: all %lld samples have the same label; needs two classes", op,
                        (long long)n);
    return LPS_OK;
}

/* ---------------------------------------------------------- spectrum */

/* The spectrum of a data matrix a (n x d, row-major): a = u diag(s) v',
 * sigma = s^2 (all min(n, d) values, decreasing, rounding below 0 clamped
 * to 0), u (n x k, row-major). Worked out from the smaller Gram matrix:
 * a'a (d x d; u = a v / s) or a a' (n x n; u its eigenvectors). Where
 * sigma <= 1e-12 * the largest (a null direction: rounding noise), the
 * column of u is set to 0: it carries nothing either estimator uses.
 *
 * LogME.py keeps, from a'a, only singular values > 1e-10. The null ones
 * of a rank-deficient F (a dead ReLU unit is a zero column) come out of
 * LAPACK as 0 or as rounding noise (~1e-16 |F|^2, above the cut at the
 * usual scales), so whether the reference counts one is a matter of
 * rounding: on 40 x 12 features with two dead units numpy returned 1.1e-16
 * (kept) and 0 (dropped). A kept one adds log(alpha) to the log
 * determinant, the exact evidence of the D-dimensional prior; here they
 * are always kept, so the value does not depend on rounding noise or on
 * the scale of F. (From a a', n < d, the reference sums only n terms of
 * that log determinant: lps_logme's exact flag adds the other d - n.) */
typedef struct {
    int64_t k, rank; /* components; those above the noise floor */
    double *sigma;   /* k */
    double *u;       /* n x k */
} spectrum;

static void spectrum_free(spectrum *sp)
{
    free(sp->sigma);
    free(sp->u);
    sp->sigma = sp->u = NULL;
}

/* Eigenpairs of the symmetric m x m matrix g (upper triangle, row-major):
 * w increasing; eigenvector j in row j of g. */
static lps_status eigh(double *g, double *w, int m, const char *op)
{
    int lwork = -1, liwork = -1, info = 0, iq = 0;
    double wq = 0.0;
    /* row-major upper = column-major lower */
    dsyevd_("V", "L", &m, g, &m, w, &wq, &lwork, &iq, &liwork, &info, 1, 1);
    if (info) return lps_fail(LPS_ENUMERIC, "%s: eigensolver workspace query failed (%d)", op, info);
    lwork = (int)wq;
    liwork = iq;
    double *work = malloc((size_t)lwork * sizeof *work);
    int *iwork = malloc((size_t)liwork * sizeof *iwork);
    if (work && iwork) dsyevd_("V", "L", &m, g, &m, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    lps_status st = !work || !iwork ? lps_fail(LPS_ENOMEM, "%s: out of memory", op)
                    : info ? lps_fail(LPS_ENUMERIC, "%s: eigensolver did not converge (%d)", op, info)
                           : LPS_OK;
    free(work);
    free(iwork);
    return st;
}

static lps_status spectrum_of(spectrum *sp, const double *a, int64_t n, int64_t d, const char *op)
{
    memset(sp, 0, sizeof *sp);
    int dual = n <= d; /* a a' is the smaller Gram matrix */
    int64_t m = dual ? n : d;
    if (m > 16384 || n > INT_MAX || d > INT_MAX) /* LAPACK takes int sizes and workspaces */
        return lps_fail(LPS_ENOMEM, "%s: %lld x %lld features make too large a Gram matrix", op,
                        (long long)n, (long long)d);
    double *g = malloc((size_t)(m * m) * sizeof *g), *w = malloc((size_t)m * sizeof *w);
    sp->sigma = malloc((size_t)m * sizeof *sp->sigma);
    sp->u = malloc((size_t)(n * m) * sizeof *sp->u);
    lps_status st = LPS_OK;
    if (!g || !w || !sp->sigma || !sp->u) {
        st = lps_fail(LPS_ENOMEM, "%s: out of memory for %lld x %lld features", op, (long long)n,
                      (long long)d);
        goto done;
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, dual ? CblasNoTrans : CblasTrans, (int)m,
                (int)(dual ? d : n), 1.0, a, (int)d, 0.0, g, (int)m);
    if ((st = eigh(g, w, (int)m, op))) goto done;
    sp->k = m;
    double floor = 1e-12 * (w[m - 1] > 0.0 ? w[m - 1] : 0.0);
    for (int64_t c = 0; c < m; c++) {
        const double *v = g + (m - 1 - c) * m; /* the c-th largest eigenpair */
        double lam = w[m - 1 - c] > 0.0 ? w[m - 1 - c] : 0.0;
        int null = !(lam > floor);
        sp->rank += !null;
        if (dual) {
            sp->sigma[c] = lam;
            for (int64_t i = 0; i < n; i++) sp->u[i * m + c] = null ? 0.0 : v[i];
        } else {
            double s = sqrt(lam); /* as LogME.py: s = sqrt(eig), sigma = s^2, u = a v / s */
            sp->sigma[c] = s * s;
            for (int64_t i = 0; i < n; i++) {
                double acc = 0.0;
                if (!null)
                    for (int64_t j = 0; j < d; j++) acc += a[i * d + j] * v[j];
                sp->u[i * m + c] = null ? 0.0 : acc / s;
            }
        }
    }
done:
    free(g);
    free(w);
    if (st) spectrum_free(sp);
    return st;
}

/* The features in double, optionally with their column means removed. */
static double *to_double(const lps_tensor *x, int centre, const char *op)
{
    int64_t n = x->shape[0], d = x->shape[1];
    double *a = malloc((size_t)x->numel * sizeof *a);
    if (!a) {
        lps_fail(LPS_ENOMEM, "%s: out of memory for %s", op, SH(x));
        return NULL;
    }
    for (int64_t i = 0; i < x->numel; i++) a[i] = x->data[i];
    if (centre)
        for (int64_t j = 0; j < d; j++) {
            double s = 0.0;
            for (int64_t i = 0; i < n; i++) s += a[i * d + j];
            s /= (double)n;
            for (int64_t i = 0; i < n; i++) a[i * d + j] -= s;
        }
    return a;
}

/* The spectrum of f (its columns centred when centre) and proj (k x
 * classes, malloc'ed) = u' Y for the one-hot targets Y of y. */
static lps_status projected_spectrum(spectrum *sp, double **proj, const lps_tensor *f,
                                     const int64_t *y, int64_t classes, int centre, const char *op)
{
    int64_t n = f->shape[0], d = f->shape[1];
    double *a = to_double(f, centre, op);
    if (!a) return LPS_ENOMEM;
    lps_status st = spectrum_of(sp, a, n, d, op);
    free(a);
    if (st) return st;
    int64_t k = sp->k;
    double *p = *proj = calloc((size_t)(k * classes), sizeof *p);
    if (!p) {
        spectrum_free(sp);
        return lps_fail(LPS_ENOMEM, "%s: out of memory", op);
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < k; j++) p[j * classes + y[i]] += sp->u[i * k + j];
    return LPS_OK;
}

/* ------------------------------------------------------------- LogME */

/* One class's evidence: the fixed-point iteration of LogME.py
 * (_fit_fixed_point), step for step. x2 = (u'y)^2, res_x2 = |y|^2 - sum x2. */
static double logme_class(const double *sigma, const double *x2, int64_t k, double res_x2,
                          double n, double d, int exact, double *alpha_out, double *beta_out)
{
    double alpha = 1.0, beta = 1.0, m2 = 0.0, res2 = 0.0;
    int no_signal = 1;
    for (int64_t j = 0; j < k; j++) no_signal &= sigma[j] == 0.0;
    if (no_signal) { /* all-zero features: no evidence at all (the reference divides 0 by 0) */
        *alpha_out = 0.0;
        *beta_out = 0.0;
        return -HUGE_VAL;
    }
    for (int it = 0; it < 11; it++) {
        double t = alpha / beta, gamma = 0.0;
        m2 = 0.0;
        res2 = 0.0;
        for (int64_t j = 0; j < k; j++) {
            gamma += sigma[j] / (sigma[j] + t);
            m2 += sigma[j] * x2[j] / ((t + sigma[j]) * (t + sigma[j]));
            double r = 1.0 + sigma[j] / t;
            res2 += x2[j] / (r * r);
        }
        res2 += res_x2;
        alpha = gamma / (m2 + 1e-5);
        beta = (n - gamma) / (res2 + 1e-5);
        if (fabs(alpha / beta - t) / t <= 1e-3) break;
    }
    double logdet = 0.0;
    for (int64_t j = 0; j < k; j++) logdet += log(alpha + beta * sigma[j]);
    if (exact) logdet += (d - (double)k) * log(alpha); /* the D - k null directions of the prior */
    double ev = d / 2.0 * log(alpha) + n / 2.0 * log(beta) - 0.5 * logdet - beta / 2.0 * res2 -
                alpha / 2.0 * m2 - n / 2.0 * log(2.0 * 3.14159265358979323846);
    *alpha_out = alpha;
    *beta_out = beta;
    return ev / n;
}

lps_status lps_logme(double *score, double *evidence, double *alpha, double *beta,
                     const lps_tensor *f, const int64_t *y, int64_t classes, int exact)
{
    lps_status st = check_xy("logme", "features", f, y, classes);
    if (st) return st;
    int64_t n = f->shape[0], d = f->shape[1];
    spectrum sp;
    double *proj;
    if ((st = projected_spectrum(&sp, &proj, f, y, classes, 0, "logme"))) return st;
    int64_t k = sp.k;
    double *x2 = malloc((size_t)k * sizeof *x2);
    if (!x2) {
        st = lps_fail(LPS_ENOMEM, "logme: out of memory");
        goto done;
    }
    double sum = 0.0;
    for (int64_t c = 0; c < classes; c++) {
        double count = 0.0, xx = 0.0, al, be;
        for (int64_t i = 0; i < n; i++) count += y[i] == c;
        for (int64_t j = 0; j < k; j++) {
            x2[j] = proj[j * classes + c] * proj[j * classes + c];
            xx += x2[j];
        }
        double ev = logme_class(sp.sigma, x2, k, count - xx, (double)n, (double)d, exact, &al, &be);
        if (evidence) evidence[c] = ev;
        if (alpha) alpha[c] = al;
        if (beta) beta[c] = be;
        sum += ev;
    }
    *score = sum / (double)classes;
done:
    free(proj);
    free(x2);
    spectrum_free(&sp);
    return st;
}

/* -------------------------------------------------------------- LEEP */

lps_status lps_leep(double *score, const lps_tensor *theta, const int64_t *y, int64_t classes)
{
    lps_status st = check_xy("leep", "source probabilities", theta, y, classes);
    if (st) return st;
    int64_t n = theta->shape[0], z = theta->shape[1];
    for (int64_t i = 0; i < n; i++) {
        double s = 0.0;
        for (int64_t j = 0; j < z; j++) {
            float p = theta->data[i * z + j];
            if (p < 0.0f)
                return lps_fail(LPS_EINVAL, "leep: source probability (%lld,%lld) = %g is negative (pass softmax outputs, not logits)",
                                (long long)i + 1, (long long)j + 1, (double)p);
            s += p;
        }
        if (fabs(s - 1.0) > 1e-3)
            return lps_fail(LPS_EINVAL, "leep: source probabilities of sample %lld sum to %.6g, not 1 (pass softmax outputs)",
                            (long long)i + 1, s);
    }
    /* joint (classes x z) = P(y, z) = sum over samples of class y of theta / n */
    double *joint = calloc((size_t)(classes * z), sizeof *joint), *colsum = calloc((size_t)z, sizeof *colsum);
    if (!joint || !colsum) {
        free(joint);
        free(colsum);
        return lps_fail(LPS_ENOMEM, "leep: out of memory");
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < z; j++) joint[y[i] * z + j] += theta->data[i * z + j] / (double)n;
    for (int64_t c = 0; c < classes; c++)
        for (int64_t j = 0; j < z; j++) colsum[j] += joint[c * z + j];
    /* P(y | z) = P(y, z) / P(z); a source class no sample gives mass to
     * contributes nothing to any sample (theta is 0 there). */
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double p = 0.0;
        for (int64_t j = 0; j < z; j++)
            if (colsum[j] > 0.0) p += joint[y[i] * z + j] / colsum[j] * theta->data[i * z + j];
        total += log(p);
    }
    *score = total / (double)n;
    free(joint);
    free(colsum);
    return LPS_OK;
}

/* -------------------------------------------------------------- k-NN */

lps_status lps_knn_loo(double *acc, const lps_tensor *f, const int64_t *y, int64_t classes, int64_t k)
{
    lps_status st = check_xy("knn", "features", f, y, classes);
    if (st) return st;
    int64_t n = f->shape[0];
    if (k < 1 || k > n - 1)
        return lps_fail(LPS_ERANGE, "knn: k = %lld out of range 1..%lld (samples - 1)", (long long)k,
                        (long long)n - 1);
    lps_tensor *sim = lps_tensor_new2(n, n);
    int64_t *pred = malloc((size_t)n * sizeof *pred);
    if (!sim || !pred) st = lps_fail(LPS_ENOMEM, "knn: out of memory for %lld samples", (long long)n);
    if (!st) st = lps_cosine_matrix(sim, f, f);
    if (!st) st = lps_knn_classify(pred, sim, y, k, 1);
    if (!st) {
        int64_t right = 0;
        for (int64_t i = 0; i < n; i++) right += pred[i] == y[i];
        *acc = (double)right / (double)n;
    }
    lps_tensor_free(sim);
    free(pred);
    return st;
}

/* ------------------------------------------------------- ridge probe */

/* Leave-one-out predictions at ridge lam: with H = 11'/n + u diag(sigma /
 * (sigma + lam)) u', yhat_-i = (yhat_i - H_ii y_i) / (1 - H_ii). Writes them
 * to pred (n x classes) and returns the summed squared LOO residual. */
static double ridge_loo(double *pred, const spectrum *sp, const double *proj, const double *ybar,
                        const int64_t *y, int64_t n, int64_t classes, double lam, double *filt)
{
    int64_t k = sp->k;
    for (int64_t j = 0; j < k; j++) /* lam is 0 only when every sigma is */
        filt[j] = sp->sigma[j] > 0.0 ? sp->sigma[j] / (sp->sigma[j] + lam) : 0.0;
    double press = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double *ui = sp->u + i * k;
        double h = 1.0 / (double)n;
        for (int64_t j = 0; j < k; j++) h += ui[j] * ui[j] * filt[j];
        for (int64_t c = 0; c < classes; c++) {
            /* u' Yc = u' Y (the columns of u are orthogonal to 1) */
            double fit = ybar[c], yi = y[i] == c ? 1.0 : 0.0;
            for (int64_t j = 0; j < k; j++) fit += ui[j] * filt[j] * proj[j * classes + c];
            double loo = (fit - h * yi) / (1.0 - h);
            pred[i * classes + c] = loo;
            press += (yi - loo) * (yi - loo);
        }
    }
    return press;
}

lps_status lps_ridge_loo(lps_ridge_result *r, double *loo, const lps_tensor *f, const int64_t *y,
                         int64_t classes, double rho)
{
    lps_status st = check_xy("linear_probe", "features", f, y, classes);
    if (st) return st;
    if (rho != 0.0 && !(rho >= 1e-6 && rho <= 1e6)) /* near 0 the hat diagonal reaches 1 */
        return lps_fail(LPS_EINVAL, "linear_probe: lambda = %g out of range 1e-6..1e6 (0 chooses it)", rho);
    int64_t n = f->shape[0], d = f->shape[1];
    spectrum sp;
    double *proj;
    if ((st = projected_spectrum(&sp, &proj, f, y, classes, 1, "linear_probe"))) return st;
    int64_t k = sp.k;
    double *filt = malloc((size_t)k * sizeof *filt), *ybar = calloc((size_t)classes, sizeof *ybar);
    double *pred = malloc((size_t)(n * classes) * sizeof *pred);
    if (!filt || !ybar || !pred) {
        st = lps_fail(LPS_ENOMEM, "linear_probe: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < n; i++) ybar[y[i]] += 1.0 / (double)n;
    double scale = 0.0; /* trace(Fc'Fc) / D: the mean eigenvalue over the D feature directions */
    for (int64_t j = 0; j < k; j++) scale += sp.sigma[j];
    scale /= (double)d;
    double best_rho = rho;
    if (rho == 0.0) { /* the grid 10^-3 .. 10^3 in half decades, by the smallest LOO squared error */
        double best = HUGE_VAL;
        for (int g = LPS_RIDGE_GRID - 1; g >= 0; g--) { /* ties keep the stronger ridge */
            double rg = pow(10.0, -3.0 + 0.5 * g);
            double press = ridge_loo(pred, &sp, proj, ybar, y, n, classes, rg * scale, filt);
            if (r) r->grid_press[g] = press / (double)n;
            if (press < best) best = press, best_rho = rg;
        }
    }
    double press = ridge_loo(pred, &sp, proj, ybar, y, n, classes, best_rho * scale, filt);
    int64_t right = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t arg = 0;
        for (int64_t c = 1; c < classes; c++)
            if (pred[i * classes + c] > pred[i * classes + arg]) arg = c;
        right += arg == y[i];
    }
    if (loo) memcpy(loo, pred, (size_t)(n * classes) * sizeof *loo);
    if (r) {
        r->accuracy = (double)right / (double)n;
        r->mse = press / (double)n;
        r->rho = best_rho;
        r->lambda = best_rho * scale;
        r->rank = sp.rank;
    }
done:
    free(proj);
    free(filt);
    free(ybar);
    free(pred);
    spectrum_free(&sp);
    return st;
}

/* ----------------------------------------------------------- softmax */

lps_status lps_softmax_rows(lps_tensor *out, const lps_tensor *logits)
{
    if (logits->ndim != 2 || logits->shape[1] < 1)
        return lps_fail(LPS_ESHAPE, "softmax: logits must be a 2-D (samples x classes) tensor, got %s", SH(logits));
    if (out->ndim != 2 || out->shape[0] != logits->shape[0] || out->shape[1] != logits->shape[1])
        return lps_fail(LPS_ESHAPE, "softmax: output %s should be %s", SH(out), SH(logits));
    int64_t n = logits->shape[0], z = logits->shape[1];
    for (int64_t i = 0; i < logits->numel; i++)
        if (!isfinite(logits->data[i]))
            return lps_fail(LPS_ENUMERIC, "softmax: logit (%lld,%lld) is not finite",
                            (long long)(i / z + 1), (long long)(i % z + 1));
    for (int64_t i = 0; i < n; i++) {
        const float *l = logits->data + i * z;
        float *o = out->data + i * z;
        double m = l[0], s = 0.0;
        for (int64_t j = 1; j < z; j++) m = l[j] > m ? l[j] : m;
        for (int64_t j = 0; j < z; j++) s += exp((double)l[j] - m);
        for (int64_t j = 0; j < z; j++) o[j] = (float)(exp((double)l[j] - m) / s);
    }
    return LPS_OK;
}
