/* ops.c - matrix products (OpenBLAS), element-wise maps and reductions. */
#include "core/internal.h"

#include <cblas.h>
#include <float.h>
#include <math.h>

lps_status lps_matmul(lps_tensor *c, const lps_tensor *a, int ta, const lps_tensor *b, int tb,
                      float alpha, float beta)
{
    if (a->ndim != 2 || b->ndim != 2 || c->ndim != 2)
        return lps_fail(LPS_ESHAPE, "matmul: needs 2-D tensors, got %s and %s", SH(a), SH(b));
    int64_t m = ta ? a->shape[1] : a->shape[0], k = ta ? a->shape[0] : a->shape[1];
    int64_t kb = tb ? b->shape[1] : b->shape[0], n = tb ? b->shape[0] : b->shape[1];
    if (k != kb)
        return lps_fail(LPS_ESHAPE, "matmul: inner sizes differ: %s%s times %s%s", SH(a),
                        ta ? "^T" : "", SH(b), tb ? "^T" : "");
    if (c->shape[0] != m || c->shape[1] != n)
        return lps_fail(LPS_ESHAPE, "matmul: output %s should be (%lldx%lld)", SH(c), (long long)m,
                        (long long)n);
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
        return lps_fail(LPS_ESHAPE, "matmul: sizes beyond BLAS's 32-bit limit");
    if (m == 0 || n == 0) return LPS_OK;
    if (k == 0) { /* BLAS may skip scaling C when k is 0 */
        for (int64_t i = 0; i < m * n; i++) c->data[i] = beta == 0.0f ? 0.0f : beta * c->data[i];
        return LPS_OK;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)m, (int)n, (int)k, alpha, a->data, (int)a->shape[1], b->data,
                (int)b->shape[1], beta, c->data, (int)n);
    return LPS_OK;
}

#define BINLOOP(EXPR)                                                                            \
    for (int64_t r = 0; r < rows; r++) {                                                         \
        const float *x = a->data + r * cols, *y = b->data + (bcast ? 0 : r * cols);              \
        float *o = out->data + r * cols;                                                         \
        for (int64_t i = 0; i < cols; i++) o[i] = EXPR;                                          \
    }

lps_status lps_binary(lps_tensor *out, const lps_tensor *a, lps_binop op, const lps_tensor *b)
{
    static const char *names[] = {"add", "sub", "mul", "div"};
    if (!lps_same_shape(out, a))
        return lps_fail(LPS_ESHAPE, "%s: output %s differs from input %s", names[op], SH(out), SH(a));
    int64_t cols = a->shape[a->ndim - 1], rows = cols ? a->numel / cols : 0;
    int bcast;
    if (lps_same_shape(a, b))
        bcast = 0;
    else if (b->numel == cols && b->shape[b->ndim - 1] == cols && a->ndim >= 2 &&
             (b->ndim == 1 || b->shape[0] == 1))
        bcast = 1;
    else
        return lps_fail(LPS_ESHAPE,
                        "%s: shapes %s and %s do not match (nor is the second a row of the first)",
                        names[op], SH(a), SH(b));
    if (bcast && cols == 0) return LPS_OK;
    switch (op) {
    case LPS_ADD: BINLOOP(x[i] + y[i]) break;
    case LPS_SUB: BINLOOP(x[i] - y[i]) break;
    case LPS_MUL: BINLOOP(x[i] * y[i]) break;
    case LPS_DIV: BINLOOP(x[i] / y[i]) break;
    }
    return LPS_OK;
}

#define SCALOOP(EXPR)                                                                            \
    for (int64_t i = 0; i < n; i++) {                                                            \
        float x = a->data[i];                                                                    \
        out->data[i] = EXPR;                                                                     \
    }

lps_status lps_binary_scalar(lps_tensor *out, const lps_tensor *a, lps_binop op, float s, int swap)
{
    if (out->numel != a->numel)
        return lps_fail(LPS_ESHAPE, "scalar op: output %s differs from input %s", SH(out), SH(a));
    int64_t n = a->numel;
    switch (op) {
    case LPS_ADD: SCALOOP(x + s) break;
    case LPS_SUB: if (swap) { SCALOOP(s - x) } else { SCALOOP(x - s) } break;
    case LPS_MUL: SCALOOP(x * s) break;
    case LPS_DIV: if (swap) { SCALOOP(s / x) } else { SCALOOP(x / s) } break;
    }
    return LPS_OK;
}

lps_status lps_axpy(lps_tensor *y, float alpha, const lps_tensor *x)
{
    if (y->numel != x->numel)
        return lps_fail(LPS_ESHAPE, "add_: sizes differ: %s and %s", SH(y), SH(x));
    for (int64_t i = 0; i < y->numel; i++) y->data[i] += alpha * x->data[i];
    return LPS_OK;
}

static inline float sigmoidf(float x)
{
    /* Split by sign so exp never overflows. */
    if (x >= 0) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

lps_status lps_unary(lps_tensor *out, const lps_tensor *a, lps_unop op)
{
    if (out->numel != a->numel)
        return lps_fail(LPS_ESHAPE, "unary op: output %s differs from input %s", SH(out), SH(a));
    int64_t n = a->numel;
    switch (op) {
    case LPS_EXP: SCALOOP(expf(x)) break;
    case LPS_LOG: SCALOOP(logf(x)) break;
    case LPS_SQRT: SCALOOP(sqrtf(x)) break;
    case LPS_ABS: SCALOOP(fabsf(x)) break;
    case LPS_RELU: SCALOOP(x > 0.0f ? x : 0.0f) break;
    case LPS_SIGMOID: SCALOOP(sigmoidf(x)) break;
    case LPS_TANH: SCALOOP(tanhf(x)) break;
    case LPS_NEG: SCALOOP(-x) break;
    }
    return LPS_OK;
}

static const char *redname(lps_redop op)
{
    static const char *names[] = {"sum", "mean", "max", "min", "argmax", "norm"};
    return names[op];
}

/* Reduce n values spaced `step` apart. Sums accumulate in double. */
static double reduce_strided(const float *x, int64_t n, int64_t step, lps_redop op)
{
    double acc = 0.0;
    int64_t best = 0;
    switch (op) {
    case LPS_SUM:
    case LPS_MEAN: {
        /* Four fixed partial sums: vectorizable, and the order (so the
         * result) does not depend on the machine. */
        double p[4] = {0, 0, 0, 0};
        int64_t i = 0;
        if (step == 1)
            for (; i + 4 <= n; i += 4)
                for (int k = 0; k < 4; k++) p[k] += x[i + k];
        for (; i < n; i++) acc += x[i * step];
        acc += (p[0] + p[1]) + (p[2] + p[3]);
        return op == LPS_MEAN ? acc / (double)n : acc;
    }
    case LPS_NORM:
        for (int64_t i = 0; i < n; i++) acc += (double)x[i * step] * x[i * step];
        return sqrt(acc);
    case LPS_MAX:
    case LPS_ARGMAX:
        /* NaN wins, as in NumPy: a NaN anywhere must not hide. */
        for (int64_t i = 1; i < n; i++) {
            float v = x[i * step], b = x[best * step];
            if (isnan(b)) break;
            if (v > b || isnan(v)) best = i;
        }
        return op == LPS_MAX ? x[best * step] : (double)best;
    case LPS_MIN:
        for (int64_t i = 1; i < n; i++) {
            float v = x[i * step], b = x[best * step];
            if (isnan(b)) break;
            if (v < b || isnan(v)) best = i;
        }
        return x[best * step];
    }
    return 0.0;
}

lps_status lps_reduce_all(const lps_tensor *a, lps_redop op, double *result)
{
    if (a->numel == 0 && op != LPS_SUM && op != LPS_NORM)
        return lps_fail(LPS_EINVAL, "%s: tensor %s is empty", redname(op), SH(a));
    *result = reduce_strided(a->data, a->numel, 1, op);
    return LPS_OK;
}

int lps_reduce_shape(const lps_tensor *a, int dim, int64_t *shape)
{
    int nd = 0;
    for (int i = 0; i < a->ndim; i++)
        if (i != dim) shape[nd++] = a->shape[i];
    if (nd == 0) shape[nd++] = 1;
    return nd;
}

lps_status lps_reduce_dim(lps_tensor *out, const lps_tensor *a, int dim, lps_redop op)
{
    if (dim < 0 || dim >= a->ndim)
        return lps_fail(LPS_ERANGE, "%s: dimension %d out of range 1..%d for %s", redname(op), dim + 1,
                        a->ndim, SH(a));
    int64_t shape[LPS_MAX_DIMS];
    int nd = lps_reduce_shape(a, dim, shape);
    int64_t expect = 1;
    for (int i = 0; i < nd; i++) expect *= shape[i];
    if (out->numel != expect)
        return lps_fail(LPS_ESHAPE, "%s: output %s has the wrong size for reducing %s over dimension %d",
                        redname(op), SH(out), SH(a), dim + 1);
    int64_t n = a->shape[dim];
    if (n == 0 && op != LPS_SUM && op != LPS_NORM)
        return lps_fail(LPS_EINVAL, "%s: dimension %d of %s is empty", redname(op), dim + 1, SH(a));
    int64_t inner = 1, outer = 1;
    for (int i = dim + 1; i < a->ndim; i++) inner *= a->shape[i];
    for (int i = 0; i < dim; i++) outer *= a->shape[i];
    for (int64_t o = 0; o < outer; o++)
        for (int64_t in = 0; in < inner; in++)
            out->data[o * inner + in] =
                (float)reduce_strided(a->data + o * n * inner + in, n, inner, op);
    return LPS_OK;
}
