/* chainnorm.c - chain normalization of ReLU MLPs (removes the per-unit
 * rescaling symmetry) and outgoing unit importance. */
#include "core/internal.h"

#include <math.h>

static lps_status check_mlp(const char *op, int nlayers, lps_tensor *const *W,
                            lps_tensor *const *b)
{
    if (nlayers < 1) return lps_fail(LPS_EINVAL, "%s: need at least 1 layer, got %d", op, nlayers);
    for (int l = 0; l < nlayers; l++) {
        if (!W[l] || !b[l]) return lps_fail(LPS_EINVAL, "%s: layer %d is missing", op, l + 1);
        if (W[l]->ndim != 2)
            return lps_fail(LPS_ESHAPE, "%s: weight %d must be 2-D, got %s", op, l + 1, SH(W[l]));
        if (b[l]->numel != W[l]->shape[0])
            return lps_fail(LPS_ESHAPE, "%s: bias %d %s does not match weight %d %s", op, l + 1,
                            SH(b[l]), l + 1, SH(W[l]));
        if (l > 0 && W[l]->shape[1] != W[l - 1]->shape[0])
            return lps_fail(LPS_ESHAPE, "%s: weight %d %s does not take the %lld outputs of layer %d",
                            op, l + 1, SH(W[l]), (long long)W[l - 1]->shape[0], l);
        for (int64_t i = 0; i < W[l]->numel; i++)
            if (!isfinite(W[l]->data[i]))
                return lps_fail(LPS_ENUMERIC, "%s: weight %d has a non-finite entry at %lld", op,
                                l + 1, (long long)i + 1);
        for (int64_t i = 0; i < b[l]->numel; i++)
            if (!isfinite(b[l]->data[i]))
                return lps_fail(LPS_ENUMERIC, "%s: bias %d has a non-finite entry at %lld", op,
                                l + 1, (long long)i + 1);
    }
    return LPS_OK;
}

lps_status lps_chain_normalize(int nlayers, lps_tensor *const *W, lps_tensor *const *b, float eps)
{
    lps_status s = check_mlp("chain_normalize", nlayers, W, b);
    if (s) return s;
    if (!(eps >= 0)) /* infinity is allowed: then only the checks run */
        return lps_fail(LPS_EINVAL, "chain_normalize: eps must be >= 0, got %g", eps);
    /* Layer by layer: the outgoing multiplication changes the next layer's
     * incoming weights before they are normalized in turn. */
    for (int l = 0; l + 1 < nlayers; l++) {
        int64_t h = W[l]->shape[0], in = W[l]->shape[1];
        float *next = W[l + 1]->data;
        int64_t hn = W[l + 1]->shape[0];
        for (int64_t j = 0; j < h; j++) {
            float *row = W[l]->data + j * in;
            double ss = (double)b[l]->data[j] * b[l]->data[j];
            for (int64_t k = 0; k < in; k++) ss += (double)row[k] * row[k];
            double n = sqrt(ss);
            if (!(n > eps)) continue;
            float nf = (float)n;
            for (int64_t k = 0; k < in; k++) row[k] /= nf;
            b[l]->data[j] /= nf;
            for (int64_t r = 0; r < hn; r++) next[r * h + j] *= nf;
        }
    }
    return LPS_OK;
}

lps_status lps_column_norms(lps_tensor *out, const lps_tensor *W)
{
    if (W->ndim != 2 || out->numel != W->shape[1])
        return lps_fail(LPS_ESHAPE, "column_norms: needs a 2-D weight and one output per column, got %s and %s",
                        SH(W), SH(out));
    int64_t rows = W->shape[0], cols = W->shape[1];
    for (int64_t j = 0; j < cols; j++) {
        double ss = 0;
        for (int64_t r = 0; r < rows; r++) ss += (double)W->data[r * cols + j] * W->data[r * cols + j];
        out->data[j] = (float)sqrt(ss);
    }
    return LPS_OK;
}
