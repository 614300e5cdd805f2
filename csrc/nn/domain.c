/* domain.c - image domains (inverted, rotated, blurred, shrunk, warped,
 * outlined, on a texture...): the same classes seen through another lens, so
 * tasks can differ in domain. Every domain is one fixed function of the
 * image; the random ones (texture, elastic) draw from LPS_DOMAIN_SEED. */
#include "nn/nn_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[LPS_NDOMAINS] = {"identity", "invert", "rot90", "blur", "downup", "zoomout",
                                                 "shift", "vflip", "edges", "texture", "elastic"};

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

/* Sobel gradient magnitude / 4, at most 1 (a unit step gives 1); zeros
 * outside. */
static void edges(float *o, const float *x, int64_t s)
{
    for (int64_t r = 0; r < s; r++)
        for (int64_t c = 0; c < s; c++) {
            float v[3][3];
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) {
                    int64_t rr = r + i - 1, cc = c + j - 1;
                    v[i][j] = rr >= 0 && rr < s && cc >= 0 && cc < s ? x[rr * s + cc] : 0.0f;
                }
            float gx = (v[0][2] + 2.0f * v[1][2] + v[2][2]) - (v[0][0] + 2.0f * v[1][0] + v[2][0]);
            float gy = (v[2][0] + 2.0f * v[2][1] + v[2][2]) - (v[0][0] + 2.0f * v[0][1] + v[0][2]);
            float m = sqrtf(gx * gx + gy * gy) * 0.25f;
            o[r * s + c] = m < 1.0f ? m : 1.0f;
        }
}

/* A geometric domain samples each output pixel at a source point of x,
 * bilinearly with zeros outside: four taps (source index or -1, weight). */
typedef struct { int64_t idx[4]; float w[4]; } tap;

static void set_tap(tap *t, double fr, double fc, int64_t s)
{
    double r0 = floor(fr), c0 = floor(fc);
    float a = (float)(fr - r0), b = (float)(fc - c0);
    const float w[4] = {(1.0f - a) * (1.0f - b), (1.0f - a) * b, a * (1.0f - b), a * b};
    for (int k = 0; k < 4; k++) {
        double r = r0 + k / 2, c = c0 + k % 2;
        int in = r >= 0 && r < (double)s && c >= 0 && c < (double)s;
        t->idx[k] = in ? (int64_t)r * s + (int64_t)c : -1;
        t->w[k] = in ? w[k] : 0.0f;
    }
}

/* Control displacements of the elastic field: a (G+1) x (G+1) grid over the
 * image, each (dr, dc) uniform in [-A, A], row by row, dr first. */
#define ELASTIC_GRID 4

static void elastic_at(const double *ctl, double r, double c, int64_t s, double *dr, double *dc)
{
    double u = r * ELASTIC_GRID / (double)(s - 1), v = c * ELASTIC_GRID / (double)(s - 1);
    int i = u >= ELASTIC_GRID ? ELASTIC_GRID - 1 : (int)u, j = v >= ELASTIC_GRID ? ELASTIC_GRID - 1 : (int)v;
    double fu = u - i, fv = v - j;
    for (int k = 0; k < 2; k++) {
        const double *p = ctl + k;
        int n = ELASTIC_GRID + 1;
        double top = (1 - fv) * p[2 * (i * n + j)] + fv * p[2 * (i * n + j + 1)];
        double bot = (1 - fv) * p[2 * ((i + 1) * n + j)] + fv * p[2 * ((i + 1) * n + j + 1)];
        *(k == 0 ? dr : dc) = (1 - fu) * top + fu * bot;
    }
}

/* The taps of geometric domain d for side s. */
static void geometric_taps(tap *taps, lps_domain d, int64_t s)
{
    double m = (s - 1) / 2.0, ctl[2 * (ELASTIC_GRID + 1) * (ELASTIC_GRID + 1)];
    int64_t k = s / 5;
    if (d == LPS_DOMAIN_ELASTIC) {
        lps_rng g;
        lps_rng_seed(&g, LPS_DOMAIN_SEED);
        double amp = s / 7.0;
        for (size_t i = 0; i < sizeof ctl / sizeof ctl[0]; i++) ctl[i] = amp * (2.0 * lps_rng_uniform(&g) - 1.0);
    }
    for (int64_t r = 0; r < s; r++)
        for (int64_t c = 0; c < s; c++) {
            double fr = (double)r, fc = (double)c;
            switch (d) {
            case LPS_DOMAIN_ZOOMOUT: fr = m + (r - m) * (5.0 / 3.0), fc = m + (c - m) * (5.0 / 3.0); break;
            case LPS_DOMAIN_SHIFT: fr = (double)(r - k), fc = (double)(c - k); break;
            case LPS_DOMAIN_VFLIP: fr = (double)(s - 1 - r); break;
            case LPS_DOMAIN_ELASTIC: {
                double dr, dc;
                elastic_at(ctl, fr, fc, s, &dr, &dc);
                fr += dr, fc += dc;
                break;
            }
            default: break;
            }
            set_tap(&taps[r * s + c], fr, fc, s);
        }
}

static void warp(float *o, const float *x, const tap *taps, int64_t per)
{
    for (int64_t j = 0; j < per; j++) {
        const tap *t = &taps[j];
        float v = 0.0f;
        for (int k = 0; k < 4; k++)
            if (t->idx[k] >= 0) v += t->w[k] * x[t->idx[k]];
        o[j] = v;
    }
}

static int is_geometric(lps_domain d)
{
    return d == LPS_DOMAIN_ZOOMOUT || d == LPS_DOMAIN_SHIFT || d == LPS_DOMAIN_VFLIP || d == LPS_DOMAIN_ELASTIC;
}

lps_status lps_image_domain(lps_tensor *out, const lps_tensor *x, lps_domain d)
{
    if (!lps_domain_name(d)) return lps_fail(LPS_EINVAL, "image_domain: unknown domain %d", (int)d);
    if (!lps_same_shape(out, x))
        return lps_fail(LPS_ESHAPE, "image_domain: output %s differs from input %s", SH(out), SH(x));
    int pointwise = d == LPS_DOMAIN_IDENTITY || d == LPS_DOMAIN_INVERT || d == LPS_DOMAIN_TEXTURE;
    if (out->data == x->data && x->numel > 0 && !pointwise)
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
    tap *taps = NULL;
    if ((d == LPS_DOMAIN_BLUR || d == LPS_DOMAIN_TEXTURE) && !(tmp = lps_alloc_floats(per, "image_domain")))
        return LPS_ENOMEM;
    if (is_geometric(d)) {
        if (!(taps = malloc(sizeof *taps * (size_t)per)))
            return lps_fail(LPS_ENOMEM, "image_domain: cannot allocate the taps of %lld pixels", (long long)per);
        geometric_taps(taps, d, s);
    }
    if (d == LPS_DOMAIN_TEXTURE) {
        lps_rng g;
        lps_rng_seed(&g, LPS_DOMAIN_SEED);
        for (int64_t j = 0; j < per; j++) tmp[j] = 0.6f * (float)lps_rng_uniform(&g);
    }
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x->data + i * per;
        float *oi = out->data + i * per;
        switch (d) {
        case LPS_DOMAIN_IDENTITY: if (oi != xi) memcpy(oi, xi, sizeof *oi * (size_t)per); break;
        case LPS_DOMAIN_INVERT: for (int64_t j = 0; j < per; j++) oi[j] = 1.0f - xi[j]; break;
        case LPS_DOMAIN_ROT90: rot90(oi, xi, s); break;
        case LPS_DOMAIN_BLUR: blur(oi, xi, tmp, s); break;
        case LPS_DOMAIN_DOWNUP: downup(oi, xi, s); break;
        case LPS_DOMAIN_EDGES: edges(oi, xi, s); break;
        case LPS_DOMAIN_TEXTURE: for (int64_t j = 0; j < per; j++) oi[j] = xi[j] + (1.0f - xi[j]) * tmp[j]; break;
        default: warp(oi, xi, taps, per); break;
        }
    }
    lps_free_floats(tmp);
    free(taps);
    return LPS_OK;
}
