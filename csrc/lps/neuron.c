/* neuron.c - the shared unit encoder of the second-order network: every
 * hidden unit of a layer is one set element, embedded by the same map. */
#include "core/internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

static lps_status check(const char *op, const lps_tensor *U, const lps_tensor *bias,
                        const lps_tensor *imp, const lps_tensor *A, const lps_tensor *a,
                        const lps_tensor *Z)
{
    if (U->ndim != 2 || A->ndim != 2 || Z->ndim != 2)
        return lps_fail(LPS_ESHAPE, "%s: unit features, encoder weight and output must be 2-D, got %s, %s, %s",
                        op, SH(U), SH(A), SH(Z));
    int64_t h = U->shape[0], k = U->shape[1], d = A->shape[0];
    if (A->shape[1] != k + 2)
        return lps_fail(LPS_ESHAPE, "%s: encoder weight %s should have %lld columns for features %s plus bias and importance",
                        op, SH(A), (long long)(k + 2), SH(U));
    if (bias->numel != h || imp->numel != h)
        return lps_fail(LPS_ESHAPE, "%s: bias %s and importance %s need one entry per unit of %s", op,
                        SH(bias), SH(imp), SH(U));
    if (!a || a->numel != d)
        return lps_fail(LPS_ESHAPE, "%s: encoder bias %s should have %lld entries", op, SH(a), (long long)d);
    if (Z->shape[0] != h || Z->shape[1] != d)
        return lps_fail(LPS_ESHAPE, "%s: unit embeddings %s should be (%lldx%lld)", op, SH(Z),
                        (long long)h, (long long)d);
    if (h > INT32_MAX || k + 2 > INT32_MAX || d > INT32_MAX)
        return lps_fail(LPS_ESHAPE, "%s: sizes beyond BLAS's 32-bit limit", op);
    return LPS_OK;
}

static lps_status check_act(const char *op, lps_act act)
{
    if (act != LPS_ACT_RELU && act != LPS_ACT_TANH && act != LPS_ACT_LINEAR)
        return lps_fail(LPS_EINVAL, "%s: unknown activation %d", op, (int)act);
    return LPS_OK;
}

lps_status lps_neuron_forward(lps_tensor *Z, const lps_tensor *U, const lps_tensor *bias,
                              const lps_tensor *imp, const lps_tensor *A, const lps_tensor *a,
                              lps_act act)
{
    lps_status s = check("neuron_forward", U, bias, imp, A, a, Z);
    if (!s) s = check_act("neuron_forward", act);
    if (s) return s;
    int64_t h = U->shape[0], k = U->shape[1], d = A->shape[0], lda = k + 2;
    if (h == 0 || d == 0) return LPS_OK;
    /* The first k columns of A are a strided submatrix (lda = k + 2): no
     * copy of the concatenated features is needed. */
    if (k > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)h, (int)d, (int)k, 1.0f, U->data,
                    (int)k, A->data, (int)lda, 0.0f, Z->data, (int)d);
    else
        memset(Z->data, 0, (size_t)(h * d) * sizeof(float));
    for (int64_t j = 0; j < h; j++) {
        float bj = bias->data[j], ij = imp->data[j];
        float *z = Z->data + j * d;
        for (int64_t c = 0; c < d; c++) {
            float v = z[c] + bj * A->data[c * lda + k] + ij * A->data[c * lda + k + 1] + a->data[c];
            z[c] = act == LPS_ACT_RELU ? (v > 0.0f ? v : 0.0f) : act == LPS_ACT_TANH ? tanhf(v) : v;
        }
    }
    return LPS_OK;
}

lps_status lps_neuron_backward(lps_tensor *dU, lps_tensor *dA, lps_tensor *da,
                               const lps_tensor *dZ, const lps_tensor *Z, const lps_tensor *U,
                               const lps_tensor *bias, const lps_tensor *imp, const lps_tensor *A,
                               lps_act act)
{
    const char *op = "neuron_backward";
    lps_status s = check(op, U, bias, imp, A, da, Z);
    if (!s) s = check_act(op, act);
    if (s) return s;
    if (!lps_same_shape(dZ, Z) || !lps_same_shape(dA, A))
        return lps_fail(LPS_ESHAPE, "%s: gradients %s and %s should match %s and %s", op, SH(dZ),
                        SH(dA), SH(Z), SH(A));
    if (dU && !lps_same_shape(dU, U))
        return lps_fail(LPS_ESHAPE, "%s: input gradient %s should match %s", op, SH(dU), SH(U));
    int64_t h = U->shape[0], k = U->shape[1], d = A->shape[0], lda = k + 2;
    if (h == 0 || d == 0) {
        if (dU) lps_fill(dU, 0.0f);
        return LPS_OK;
    }
    float *G = lps_alloc_floats(h * d, op);
    if (!G) return LPS_ENOMEM;
    /* The derivative from the output alone: relu' = [z > 0], tanh' = 1 - z^2. */
    const float *z = Z->data, *dz = dZ->data;
    for (int64_t i = 0; i < h * d; i++)
        G[i] = act == LPS_ACT_RELU ? (z[i] > 0.0f ? dz[i] : 0.0f)
             : act == LPS_ACT_TANH ? dz[i] * (1.0f - z[i] * z[i]) : dz[i];
    if (k > 0) /* dA[:, :k] += G^T U, written through the stride of A */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)k, (int)h, 1.0f, G,
                    (int)d, U->data, (int)k, 1.0f, dA->data, (int)lda);
    for (int64_t j = 0; j < h; j++) {
        const float *g = G + j * d;
        float bj = bias->data[j], ij = imp->data[j];
        for (int64_t c = 0; c < d; c++) {
            dA->data[c * lda + k] += g[c] * bj;
            dA->data[c * lda + k + 1] += g[c] * ij;
            da->data[c] += g[c];
        }
    }
    if (dU && k > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)h, (int)k, (int)d, 1.0f, G,
                    (int)d, A->data, (int)lda, 0.0f, dU->data, (int)k);
    lps_free_floats(G);
    return LPS_OK;
}
