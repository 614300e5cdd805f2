/* conv_split.c - the zero-padded, phase-split layout of one sample's input
 * (see conv_internal.h), read by the direct and im2col kernels. */
#include "nn/conv_internal.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void conv_split_geometry(const convjob *j, convsplit *g)
{
    const lps_layer *l = j->l;
    g->cin = CIN(l);
    g->cout = COUT(l);
    g->k = KS(l);
    g->s = STRIDE(l);
    g->pad = PAD(l);
    g->owp = (j->ow + 7) / 8 * 8;
    /* rows: one more output row than needed (pairs of rows) */
    g->hp = (j->oh + 1) * g->s + g->k;
    g->wc = g->owp + (g->k - 1) / g->s + 8;
    g->plane = g->hp * g->wc;
    g->taps = g->cin * g->k * g->k;
}

/* Columns c of phase ph whose input column c s + ph - pad lies in [0, w). */
static void phase_cols(const convjob *j, const convsplit *g, int64_t ph, int64_t *c0, int64_t *c1)
{
    int64_t a = g->pad - ph, b = j->w + g->pad - ph; /* need a <= c s < b */
    *c0 = a <= 0 ? 0 : (a + g->s - 1) / g->s;
    *c1 = b <= 0 ? 0 : (b + g->s - 1) / g->s;
    if (*c1 > g->wc) *c1 = g->wc;
    if (*c0 > *c1) *c0 = *c1;
}


/* Stride 2, one input row: even columns to one phase and odd ones to the
 * other (which phase, and from which column, follows the padding's parity). */
static void split_row2(const float *src, int64_t w, float *ev, float *od)
{
    int64_t i = 0;
#ifdef __SSE2__
    for (; 2 * i + 8 <= w; i += 4) {
        __m128 a = _mm_loadu_ps(src + 2 * i), b = _mm_loadu_ps(src + 2 * i + 4);
        _mm_storeu_ps(ev + i, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm_storeu_ps(od + i, _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
#endif
    for (; 2 * i < w; i++) {
        ev[i] = src[2 * i];
        if (2 * i + 1 < w) od[i] = src[2 * i + 1];
    }
}

static void unsplit_row2(const float *ev, const float *od, int64_t w, float *dst)
{
    int64_t i = 0;
#ifdef __SSE2__
    for (; 2 * i + 8 <= w; i += 4) {
        __m128 a = _mm_loadu_ps(ev + i), b = _mm_loadu_ps(od + i);
        _mm_storeu_ps(dst + 2 * i, _mm_unpacklo_ps(a, b));
        _mm_storeu_ps(dst + 2 * i + 4, _mm_unpackhi_ps(a, b));
    }
#endif
    for (; 2 * i < w; i++) {
        dst[2 * i] = ev[i];
        if (2 * i + 1 < w) dst[2 * i + 1] = od[i];
    }
}

/* Where input row ih's even and odd columns go in the stride-2 layout. */
static void row2(const convsplit *g, int64_t ci, int64_t ih, int64_t *ev, int64_t *od)
{
    int64_t r = (ih + g->pad) * g->wc, pe = g->pad & 1;
    *ev = (ci * 2 + pe) * g->plane + r + (g->pad >> 1);
    *od = (ci * 2 + (1 - pe)) * g->plane + r + ((g->pad + 1) >> 1);
}

void conv_split_input(const float *x, const convjob *j, const convsplit *g, float *xs)
{
    memset(xs, 0, (size_t)(g->cin * g->s * g->plane) * sizeof(float));
    int64_t rows = j->h + g->pad < g->hp ? j->h : g->hp - g->pad;
    if (g->s == 2) {
        for (int64_t ci = 0; ci < g->cin; ci++)
            for (int64_t ih = 0; ih < rows; ih++) {
                int64_t ev, od;
                row2(g, ci, ih, &ev, &od);
                split_row2(x + (ci * j->h + ih) * j->w, j->w, xs + ev, xs + od);
            }
        return;
    }
    for (int64_t ci = 0; ci < g->cin; ci++)
        for (int64_t ph = 0; ph < g->s; ph++) {
            float *dst = xs + (ci * g->s + ph) * g->plane + g->pad * g->wc;
            int64_t c0, c1;
            phase_cols(j, g, ph, &c0, &c1);
            for (int64_t ih = 0; ih < rows; ih++) {
                const float *src = x + (ci * j->h + ih) * j->w + ph - g->pad;
                float *row = dst + ih * g->wc;
                if (g->s == 1)
                    memcpy(row + c0, src + c0, (size_t)(c1 - c0) * sizeof(float));
                else
                    for (int64_t c = c0; c < c1; c++) row[c] = src[c * g->s];
            }
        }
}

void conv_unsplit(const float *xs, const convjob *j, const convsplit *g, float *x)
{
    if (g->s == 2) {
        for (int64_t ci = 0; ci < g->cin; ci++)
            for (int64_t ih = 0; ih < j->h; ih++) {
                int64_t ev, od;
                row2(g, ci, ih, &ev, &od);
                unsplit_row2(xs + ev, xs + od, j->w, x + (ci * j->h + ih) * j->w);
            }
        return;
    }
    for (int64_t ci = 0; ci < g->cin; ci++)
        for (int64_t ph = 0; ph < g->s; ph++) {
            int64_t c0, c1;
            phase_cols(j, g, ph, &c0, &c1);
            const float *src = xs + (ci * g->s + ph) * g->plane + g->pad * g->wc;
            for (int64_t ih = 0; ih < j->h; ih++) {
                float *dst = x + (ci * j->h + ih) * j->w + ph - g->pad;
                const float *row = src + ih * g->wc;
                if (g->s == 1)
                    memcpy(dst + c0, row + c0, (size_t)(c1 - c0) * sizeof(float));
                else
                    for (int64_t c = c0; c < c1; c++) dst[c * g->s] = row[c];
            }
        }
}
