/* conv_split.c - the zero-padded, phase-split layout of one sample's input
 * (see conv_internal.h), read by the direct and im2col kernels. */
#include "nn/conv_internal.h"

#include <string.h>

void conv_split_geometry(const convjob *j, convsplit *g)
{
    const lps_layer *l = j->l;
    g->cin = l->CIN;
    g->cout = l->COUT;
    g->k = l->KS;
    g->s = l->STRIDE;
    g->pad = l->PAD;
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

void conv_split_input(const float *x, const convjob *j, const convsplit *g, float *xs)
{
    memset(xs, 0, (size_t)(g->cin * g->s * g->plane) * sizeof(float));
    int64_t rows = j->h + g->pad < g->hp ? j->h : g->hp - g->pad;
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
