/* domain.c - image domains (inverted, rotated, blurred, downsampled): the
 * same classes seen through another lens, so tasks can differ in domain. */
#include "nn/nn_internal.h"

#include <string.h>

static const char *const names[LPS_NDOMAINS] = {"identity", "invert", "rot90", "blur", "downup"};

const char *lps_domain_name(lps_domain d)
{
    return (int)d >= 0 && d < LPS_NDOMAINS ? names[d] : NULL;
}

int lps_domain_from_name(const char *name)
{
    for (int d = 0; name && d < LPS_NDOMAINS; d++)
        if (strcmp(name, names[d]) == 0) return d;
    return -1;
}

static void rot90(float *o, const float *x, int64_t s)
{
    for (int64_t r = 0; r < s; r++)
        for (int64_t c = 0; c < s; c++) o[r * s + c] = x[(s - 1 - c) * s + r];
}

/* Separable [1 2 1] / 4 along rows, then along columns; zeros outside. */
static void blur(float *o, const float *x, float *tmp, int64_t s)
{
    for (int64_t r = 0; r < s; r++)
        for (int64_t c = 0; c < s; c++) {
            const float *p = x + r * s + c;
            float left = c > 0 ? p[-1] : 0.0f, right = c + 1 < s ? p[1] : 0.0f;
            tmp[r * s + c] = (left + 2.0f * p[0] + right) * 0.25f;
        }
    for (int64_t r = 0; r < s; r++)
        for (int64_t c = 0; c < s; c++) {
            const float *p = tmp + r * s + c;
            float up = r > 0 ? p[-s] : 0.0f, down = r + 1 < s ? p[s] : 0.0f;
            o[r * s + c] = (up + 2.0f * p[0] + down) * 0.25f;
        }
}

static void downup(float *o, const float *x, int64_t s)
{
    for (int64_t r = 0; r < s; r += 2)
        for (int64_t c = 0; c < s; c += 2) {
            const float *p = x + r * s + c;
            float m = ((p[0] + p[1]) + (p[s] + p[s + 1])) * 0.25f;
            o[r * s + c] = o[r * s + c + 1] = o[(r + 1) * s + c] = o[(r + 1) * s + c + 1] = m;
        }
}

lps_status lps_image_domain(lps_tensor *out, const lps_tensor *x, lps_domain d)
{
    if (!lps_domain_name(d)) return lps_fail(LPS_EINVAL, "image_domain: unknown domain %d", (int)d);
    if (!lps_same_shape(out, x))
        return lps_fail(LPS_ESHAPE, "image_domain: output %s differs from input %s", SH(out), SH(x));
    if (out->data == x->data && x->numel > 0 && d != LPS_DOMAIN_IDENTITY && d != LPS_DOMAIN_INVERT)
        return lps_fail(LPS_EINVAL, "image_domain: %s cannot work in place", names[d]);
    int64_t n = x->shape[0], per = n > 0 ? x->numel / n : 0, s = 0;
    while (s * s < per) s++;
    int square = x->ndim == 2 || (x->ndim == 4 && x->shape[1] == 1 && x->shape[2] == x->shape[3]);
    if (!square || s * s != per || s < 2)
        return lps_fail(LPS_ESHAPE, "image_domain: %s: expected N x (s*s) or N x 1 x s x s square "
                        "images (s >= 2)", SH(x));
    if (d == LPS_DOMAIN_DOWNUP && s % 2)
        return lps_fail(LPS_ESHAPE, "image_domain: downup needs an even side, got %lld", (long long)s);
    float *tmp = NULL;
    if (d == LPS_DOMAIN_BLUR && !(tmp = lps_alloc_floats(per, "image_domain"))) return LPS_ENOMEM;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x->data + i * per;
        float *oi = out->data + i * per;
        switch (d) {
        case LPS_DOMAIN_IDENTITY: if (oi != xi) memcpy(oi, xi, sizeof *oi * (size_t)per); break;
        case LPS_DOMAIN_INVERT: for (int64_t j = 0; j < per; j++) oi[j] = 1.0f - xi[j]; break;
        case LPS_DOMAIN_ROT90: rot90(oi, xi, s); break;
        case LPS_DOMAIN_BLUR: blur(oi, xi, tmp, s); break;
        case LPS_DOMAIN_DOWNUP: downup(oi, xi, s); break;
        default: break;
        }
    }
    lps_free_floats(tmp);
    return LPS_OK;
}
