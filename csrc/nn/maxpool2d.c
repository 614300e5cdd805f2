/* maxpool2d.c - 2-D max pooling without padding. Ties and NaN follow PyTorch: the
 * first maximum of a window wins, a NaN anywhere wins. The backward pass
 * recomputes each window's winner from x, so no index buffer is kept. */
#include "nn/nn_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Does candidate v replace the current maximum m? Greater, or the first NaN. */
static inline int takes(float v, float m) { return (v > m) | (isnan(v) & !isnan(m)); }

/* Flat offset (within one plane) of the winning element of window (oh, ow). */
static inline int64_t argmax_window(const float *x, int64_t w, int64_t k, int64_t s, int64_t oh,
                                    int64_t ow)
{
    int64_t best = oh * s * w + ow * s;
    float m = x[best];
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < k; j++) {
            int64_t at = (oh * s + i) * w + ow * s + j;
            if (takes(x[at], m)) {
                best = at;
                m = x[at];
            }
        }
    return best;
}

#ifdef __SSE2__
/* Four 2x2 windows at once: a, b (top row), c, d (bottom row) hold the four
 * windows' candidates in order; wins[k] masks where candidate k wins. */
static inline __m128 takes4(__m128 v, __m128 m)
{
    __m128 vnan = _mm_cmpunord_ps(v, v), mnan = _mm_cmpunord_ps(m, m);
    return _mm_or_ps(_mm_cmpgt_ps(v, m), _mm_andnot_ps(mnan, vnan));
}

static inline __m128 sel(__m128 mask, __m128 a, __m128 b)
{
    return _mm_or_ps(_mm_and_ps(mask, a), _mm_andnot_ps(mask, b));
}

static inline __m128 win4(const float *r0, const float *r1, __m128 wins[4])
{
    __m128 t0 = _mm_loadu_ps(r0), t1 = _mm_loadu_ps(r0 + 4);
    __m128 u0 = _mm_loadu_ps(r1), u1 = _mm_loadu_ps(r1 + 4);
    __m128 c[4] = {_mm_shuffle_ps(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                   _mm_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
                   _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                   _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 1, 3, 1))};
    __m128 unord = _mm_or_ps(_mm_cmpunord_ps(c[0], c[1]), _mm_cmpunord_ps(c[2], c[3]));
    if (!_mm_movemask_ps(unord)) {
        /* no NaN (the usual case): max keeps its second operand on ties, so
         * each max puts the earlier candidate second; the first candidate
         * equal to the maximum wins */
        __m128 m = _mm_max_ps(_mm_max_ps(c[3], c[2]), _mm_max_ps(c[1], c[0]));
        if (wins) {
            __m128 e0 = _mm_cmpeq_ps(c[0], m), e1 = _mm_cmpeq_ps(c[1], m);
            __m128 e2 = _mm_cmpeq_ps(c[2], m), e01 = _mm_or_ps(e0, e1);
            wins[0] = e0;
            wins[1] = _mm_andnot_ps(e0, e1);
            wins[2] = _mm_andnot_ps(e01, e2);
            wins[3] = _mm_andnot_ps(_mm_or_ps(e01, e2), _mm_castsi128_ps(_mm_set1_epi32(-1)));
        }
        return m;
    }
    __m128 m = c[0];
    __m128 who[4];
    for (int k = 1; k < 4; k++) {
        who[k] = takes4(c[k], m);
        m = sel(who[k], c[k], m);
    }
    /* candidate k wins if it took over and nobody later did */
    if (wins) {
        __m128 later = _mm_setzero_ps();
        for (int k = 3; k >= 1; k--) {
            wins[k] = _mm_andnot_ps(later, who[k]);
            later = _mm_or_ps(later, who[k]);
        }
        wins[0] = _mm_andnot_ps(later, _mm_castsi128_ps(_mm_set1_epi32(-1)));
    }
    return m;
}
#endif

/* One plane of 2x2 stride-2 pooling: y, or (gy given) the gradient into gx. */
static void pool2_plane(const float *xp, int64_t w, int64_t oh_n, int64_t ow_n, float *yp,
                        const float *gp, float *gxp)
{
    for (int64_t oh = 0; oh < oh_n; oh++) {
        const float *r0 = xp + 2 * oh * w, *r1 = r0 + w;
        float *g0 = gxp ? gxp + 2 * oh * w : NULL, *g1 = g0 ? g0 + w : NULL;
        int64_t ow = 0;
#ifdef __SSE2__
        /* The last group of 4 may overlap the one before: windows do not
         * overlap, so recomputing one stores the same values again. */
        for (; ow < ow_n && ow_n >= 4; ow += 4) {
            if (ow + 4 > ow_n) ow = ow_n - 4;
            if (!gp) {
                _mm_storeu_ps(yp + oh * ow_n + ow, win4(r0 + 2 * ow, r1 + 2 * ow, NULL));
                continue;
            }
            __m128 wins[4];
            win4(r0 + 2 * ow, r1 + 2 * ow, wins);
            __m128 g = _mm_loadu_ps(gp + oh * ow_n + ow);
            __m128 ga = _mm_and_ps(wins[0], g), gb = _mm_and_ps(wins[1], g);
            __m128 gc = _mm_and_ps(wins[2], g), gd = _mm_and_ps(wins[3], g);
            _mm_storeu_ps(g0 + 2 * ow, _mm_unpacklo_ps(ga, gb));
            _mm_storeu_ps(g0 + 2 * ow + 4, _mm_unpackhi_ps(ga, gb));
            _mm_storeu_ps(g1 + 2 * ow, _mm_unpacklo_ps(gc, gd));
            _mm_storeu_ps(g1 + 2 * ow + 4, _mm_unpackhi_ps(gc, gd));
        }
#endif
        for (; ow < ow_n; ow++) {
            const float c[4] = {r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1]};
            int best = 0;
            for (int k = 1; k < 4; k++)
                if (takes(c[k], c[best])) best = k;
            if (!gp) {
                yp[oh * ow_n + ow] = c[best];
                continue;
            }
            float g = gp[oh * ow_n + ow];
            g0[2 * ow] = best == 0 ? g : 0.0f;
            g0[2 * ow + 1] = best == 1 ? g : 0.0f;
            g1[2 * ow] = best == 2 ? g : 0.0f;
            g1[2 * ow + 1] = best == 3 ? g : 0.0f;
        }
    }
}

/* One call, split over threads by planes when large. */
typedef struct {
    int64_t k, s, planes, h, w, oh_n, ow_n;
    const float *x, *gy;
    float *y, *gx;
} pooljob;

static void pool_part(void *ctx, int t, int nt)
{
    const pooljob *j = ctx;
    int64_t k = j->k, s = j->s, h = j->h, w = j->w, oh_n = j->oh_n, ow_n = j->ow_n, p0, p1;
    lps_par_range(j->planes, t, nt, &p0, &p1);
    for (int64_t p = p0; p < p1; p++) {
        const float *xp = j->x + p * h * w;
        if (!j->gy) { /* forward */
            float *yp = j->y + p * oh_n * ow_n;
            if (k == 2 && s == 2) {
                pool2_plane(xp, w, oh_n, ow_n, yp, NULL, NULL);
                continue;
            }
            for (int64_t oh = 0; oh < oh_n; oh++)
                for (int64_t ow = 0; ow < ow_n; ow++)
                    yp[oh * ow_n + ow] = xp[argmax_window(xp, w, k, s, oh, ow)];
            continue;
        }
        const float *gp = j->gy + p * oh_n * ow_n;
        float *gxp = j->gx + p * h * w;
        if (k == 2 && s == 2) {
            /* Windows tile the plane: only a leftover odd row/column needs zeros. */
            pool2_plane(xp, w, oh_n, ow_n, NULL, gp, gxp);
            if (w > 2 * ow_n)
                for (int64_t r = 0; r < 2 * oh_n; r++) gxp[r * w + w - 1] = 0.0f;
            if (h > 2 * oh_n) memset(gxp + (h - 1) * w, 0, (size_t)w * sizeof(float));
            continue;
        }
        memset(gxp, 0, (size_t)(h * w) * sizeof(float));
        for (int64_t oh = 0; oh < oh_n; oh++)
            for (int64_t ow = 0; ow < ow_n; ow++)
                gxp[argmax_window(xp, w, k, s, oh, ow)] += gp[oh * ow_n + ow];
    }
}

static void pool_run(const lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                     const lps_tensor *gy, lps_tensor *gx)
{
    pooljob j = {FI(&l->cfg, 0), FI(&l->cfg, 1), x->shape[0] * x->shape[1], x->shape[2], x->shape[3],
                 y->shape[2], y->shape[3], x->data, gy ? gy->data : NULL, y->data,
                 gx ? gx->data : NULL};
    /* threads only for a large batch: waking one costs some microseconds */
    int nt = x->numel >= (1 << 18) ? lps_par_threads() : 1;
    lps_par_run(nt, pool_part, &j);
}

static lps_status pool_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    pool_run(l, x, y, NULL, NULL);
    return LPS_OK;
}

static lps_status pool_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    if (gx) pool_run(l, x, y, gy, gx);
    return LPS_OK;
}

static void pool_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    snprintf(buf, n, "MaxPool2d(kernel_size=%lld, stride=%lld)", (long long)FI(e, 0), (long long)FI(e, 1));
}

static const lps_field pool_fields[] = {{"kernel", LPS_FIELD_INT, 1, 1024, LPS_REQUIRED, 0},
                                        {"stride", LPS_FIELD_INT, 1, 1024, LPS_DEF_FIRST, 0},
                                        {NULL, 0, 0, 0, 0, 0}};

/* A window maximum commutes with ReLU (both monotone) and with a positive
 * scale of its channel. */
const lps_layer_type lps_maxpool2d_type = {
    .name = "maxpool2d", .fields = pool_fields, .flags = LPS_LT_CHANNELWISE | LPS_LT_WINDOW_MAX,
    .flow = lps_flow_window, .forward = pool_forward, .backward = pool_backward, .repr = pool_repr};
