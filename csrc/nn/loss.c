/* loss.c - softmax cross-entropy, computed through log-sum-exp so large
 * logits neither overflow nor lose the loss. */
#include "nn/nn_internal.h"

#include <math.h>

lps_status lps_cross_entropy(const lps_tensor *logits, const int32_t *labels, double *loss,
                             lps_tensor *grad, int64_t *correct)
{
    if (logits->ndim != 2 || logits->shape[1] < 1)
        return lps_fail(LPS_ESHAPE, "cross_entropy: logits %s should be (batch x classes)",
                        SH(logits));
    if (grad && !lps_same_shape(grad, logits))
        return lps_fail(LPS_ESHAPE, "cross_entropy: gradient %s differs from logits %s", SH(grad),
                        SH(logits));
    int64_t b = logits->shape[0], c = logits->shape[1];
    for (int64_t i = 0; i < b; i++)
        if (labels[i] < 0 || labels[i] >= c)
            return lps_fail(LPS_ERANGE, "cross_entropy: label %d of sample %lld is out of range "
                            "0..%lld (0-based)", (int)labels[i], (long long)i, (long long)c - 1);
    double total = 0.0;
    int64_t hits = 0;
    float inv_b = b ? 1.0f / (float)b : 0.0f;
    for (int64_t i = 0; i < b; i++) {
        const float *z = logits->data + i * c;
        int64_t arg = 0;
        float m = z[0];
        for (int64_t j = 1; j < c; j++)
            if (z[j] > m) m = z[j], arg = j;
        double sum = 0.0;
        for (int64_t j = 0; j < c; j++) sum += exp((double)z[j] - m);
        double lse = m + log(sum);
        total += lse - z[labels[i]];
        hits += arg == labels[i];
        if (grad) {
            float *g = grad->data + i * c;
            for (int64_t j = 0; j < c; j++)
                g[j] = (float)(exp((double)z[j] - lse)) * inv_b;
            g[labels[i]] -= inv_b;
        }
    }
    *loss = b ? total / (double)b : 0.0;
    if (correct) *correct = hits;
    return LPS_OK;
}
