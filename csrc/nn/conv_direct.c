/* conv_direct.c - convolution computed directly, for layers with few input
 * values per output (a 3x3 first layer on grey images; conv.c chooses),
 * where a GEMM would be too thin. One sample at a time, from the padded
 * input split into `stride` column phases, where the inputs of 8
 * neighbouring outputs are 8 contiguous floats for every kernel tap
 * (conv_split.c). */
#include "nn/conv_internal.h"

#include <string.h>

enum { S_X, S_G, S_GX };

/* Offset of each tap (ci, ki, kj) from its output's first input. */
static void tap_offsets(const convsplit *g, int64_t *off)
{
    for (int64_t ci = 0, t = 0; ci < g->cin; ci++)
        for (int64_t ki = 0; ki < g->k; ki++)
            for (int64_t kj = 0; kj < g->k; kj++, t++)
                off[t] = (ci * g->s + kj % g->s) * g->plane + ki * g->wc + kj / g->s;
}

/* y for 4 output channels co..co+3 (fewer at the end) of one sample: two
 * output rows x 8 columns x 4 channels per step, 8 vector sums. */
KERNEL static void forward_block(const float *xs, const convsplit *g, const convjob *d,
                                 const int64_t *off, const float *w, const float *bias,
                                 int64_t co, float *yn)
{
    int64_t nco = g->cout - co < 4 ? g->cout - co : 4, taps = g->taps;
    const float *w0 = w + co * taps, *w1 = nco > 1 ? w0 + taps : w0;
    const float *w2 = nco > 2 ? w0 + 2 * taps : w0, *w3 = nco > 3 ? w0 + 3 * taps : w0;
    int64_t rs = g->s * g->wc; /* from one output row's inputs to the next */
    /* the last pair of rows and group of 8 columns overlap the ones before
     * when the plane is not a multiple (rewriting the same values) */
    for (int64_t q = 0; q < d->oh; q += 2)
        for (int64_t c = 0; c < d->ow; c += 8) {
            int64_t oh = q + 2 <= d->oh || d->oh < 2 ? q : d->oh - 2;
            int64_t ow = c + 8 <= d->ow || d->ow < 8 ? c : d->ow - 8;
            const float *base = xs + oh * rs + ow;
            float b0 = bias[co], b1 = bias[co + (nco > 1)], b2 = bias[co + (nco > 2 ? 2 : 0)];
            float b3 = bias[co + (nco > 3 ? 3 : 0)];
            v8 a00 = BC8(b0), a01 = a00, a10 = BC8(b1), a11 = a10;
            v8 a20 = BC8(b2), a21 = a20, a30 = BC8(b3), a31 = a30;
            for (int64_t t = 0; t < taps; t++) {
                const float *p = base + off[t];
                float f0 = w0[t], f1 = w1[t], f2 = w2[t], f3 = w3[t];
                v8 x0 = LD8(p), x1 = LD8(p + rs), wv = BC8(f0);
                a00 += wv * x0;
                a01 += wv * x1;
                wv = BC8(f1);
                a10 += wv * x0;
                a11 += wv * x1;
                wv = BC8(f2);
                a20 += wv * x0;
                a21 += wv * x1;
                wv = BC8(f3);
                a30 += wv * x0;
                a31 += wv * x1;
            }
            int64_t cols = d->ow - ow < 8 ? d->ow - ow : 8;
            if (nco == 4 && cols == 8 && oh + 1 < d->oh) {
                float *y0 = yn + (co * d->oh + oh) * d->ow + ow;
                int64_t cs = d->oh * d->ow;
                ST8(y0, a00);
                ST8(y0 + d->ow, a01);
                ST8(y0 + cs, a10);
                ST8(y0 + cs + d->ow, a11);
                ST8(y0 + 2 * cs, a20);
                ST8(y0 + 2 * cs + d->ow, a21);
                ST8(y0 + 3 * cs, a30);
                ST8(y0 + 3 * cs + d->ow, a31);
                continue;
            }
            v8 acc[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
            for (int j = 0; j < nco; j++)
                for (int r = 0; r < 2 && oh + r < d->oh; r++) {
                    float *dst = yn + ((co + j) * d->oh + oh + r) * d->ow + ow;
                    if (cols == 8) {
                        ST8(dst, acc[j][r]);
                    } else {
                        float tmp[8];
                        ST8(tmp, acc[j][r]);
                        memcpy(dst, tmp, (size_t)cols * sizeof(float));
                    }
                }
        }
}

/* gy rows padded with zeros to whole vectors plus 16 columns, and one more
 * row: the layout input_grad reads (and weight_grad when rows are short). */
static int64_t gp_row(const convsplit *g) { return g->owp + 16; }

/* Shared: the tap offsets. Per thread: the split input; for backward the
 * padded gy (zeroed here: only its valid part is ever written) and the split
 * input gradient. */
static lps_status direct_prep(const convjob *j, int backward)
{
    convsplit g;
    conv_split_geometry(j, &g);
    const char *op = backward ? "conv2d backward" : "conv2d";
    /* the int64 offsets live in a float scratch, 2 floats each */
    float *off = lps_scratch_get(&((convpriv *)j->l->priv)->shared, 2 * g.taps, op);
    if (!off) return LPS_ENOMEM;
    tap_offsets(&g, (int64_t *)(void *)off);
    int64_t gsize = g.cout * (j->oh + 1) * gp_row(&g);
    for (int t = 0; t < j->nt; t++) {
        lps_scratch *s = conv_slots(j, t);
        if (!lps_scratch_get(&s[S_X], g.cin * g.s * g.plane, op)) return LPS_ENOMEM;
        if (!backward) continue;
        float *gp = lps_scratch_get(&s[S_G], gsize, op);
        if (!gp || (j->gx && !lps_scratch_get(&s[S_GX], g.cin * g.s * g.plane, op)))
            return LPS_ENOMEM;
        memset(gp, 0, (size_t)gsize * sizeof(float));
    }
    return LPS_OK;
}

static const int64_t *offsets(const convjob *j)
{
    return (const int64_t *)(const void *)((convpriv *)j->l->priv)->shared.p;
}

static void direct_fwd(const convjob *j, int t, int64_t n0, int64_t n1)
{
    const lps_layer *l = j->l;
    convsplit g;
    conv_split_geometry(j, &g);
    float *xs = conv_slots(j, t)[S_X].p;
    int64_t in_size = g.cin * j->h * j->w, out_size = g.cout * j->oh * j->ow;
    for (int64_t n = n0; n < n1; n++) {
        conv_split_input(j->x + n * in_size, j, &g, xs);
        for (int64_t co = 0; co < g.cout; co += 4)
            forward_block(xs, &g, j, offsets(j), l->param[0]->data, conv_bias(l), co,
                          j->y + n * out_size);
    }
}

/* dW[co][tap] += sum over outputs of gy * the tap's input, 9 taps at a time
 * (taps past the last repeat tap 0 and are dropped), and db[co] += sum of
 * gy (gb NULL: no bias), in vector partial sums. gy rows are gs floats apart (planes gps),
 * ow_n >= 8 wide:
 * when ow is not a multiple of 8 the last group of 8 overlaps the one
 * before and its repeated lanes are masked to zero. */
KERNEL static void weight_grad(const float *xs, const float *gy, int64_t gs, int64_t gps, int64_t ow_n,
                               const convsplit *g, const convjob *d, const int64_t *off, float *gw,
                               float *gb)
{
    int64_t taps = g->taps, rs = g->s * g->wc, last = ow_n - 8, seen = ow_n / 8 * 8;
    v8i tail;
    for (int i = 0; i < 8; i++) tail[i] = last + i >= seen || last == seen ? -1 : 0;
    for (int64_t co = 0; co < g->cout; co++) {
        const float *gc = gy + co * gps;
        v8 gsum = {0};
        for (int64_t oh = 0; oh < d->oh && gb; oh++)
            for (int64_t c = 0; c < ow_n; c += 8) {
                int64_t ow = c + 8 <= ow_n ? c : last;
                v8 gv = LD8(gc + oh * gs + ow);
                gsum += c == ow ? gv : (v8)((v8i)gv & tail);
            }
        if (gb) gb[co] += HSUM8(gsum);
        for (int64_t t0 = 0; t0 < taps; t0 += 9) {
            int64_t nt = taps - t0 < 9 ? taps - t0 : 9;
            const int64_t *ot = off + t0;
            int64_t o0 = ot[0], o1 = nt > 1 ? ot[1] : o0, o2 = nt > 2 ? ot[2] : o0;
            int64_t o3 = nt > 3 ? ot[3] : o0, o4 = nt > 4 ? ot[4] : o0, o5 = nt > 5 ? ot[5] : o0;
            int64_t o6 = nt > 6 ? ot[6] : o0, o7 = nt > 7 ? ot[7] : o0, o8 = nt > 8 ? ot[8] : o0;
            v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
            v8 a8 = {0};
            for (int64_t oh = 0; oh < d->oh; oh++) {
                const float *gr = gc + oh * gs, *base = xs + oh * rs;
                for (int64_t c = 0; c < ow_n; c += 8) {
                    int64_t ow = c + 8 <= ow_n ? c : last;
                    v8 gv = LD8(gr + ow);
                    if (c != ow) gv = (v8)((v8i)gv & tail);
                    const float *b = base + ow;
                    a0 += gv * LD8(b + o0);
                    a1 += gv * LD8(b + o1);
                    a2 += gv * LD8(b + o2);
                    a3 += gv * LD8(b + o3);
                    if (nt <= 4) continue;
                    a4 += gv * LD8(b + o4);
                    a5 += gv * LD8(b + o5);
                    a6 += gv * LD8(b + o6);
                    a7 += gv * LD8(b + o7);
                    a8 += gv * LD8(b + o8);
                }
            }
            v8 acc[9] = {a0, a1, a2, a3, a4, a5, a6, a7, a8};
            for (int64_t t = 0; t < nt; t++) gw[co * taps + t0 + t] += HSUM8(acc[t]);
        }
    }
}

/* The input gradient in the split layout: each tap's inputs get the sum
 * over output channels of w * gy, two output rows x 16 columns at a time. */
KERNEL static void input_grad(const float *gp, const convsplit *g, const convjob *d, const int64_t *off,
                              const float *w, float *gxs)
{
    int64_t taps = g->taps, rs = g->s * g->wc, cs = (d->oh + 1) * g->owp;
    memset(gxs, 0, (size_t)(g->cin * g->s * g->plane) * sizeof(float));
    for (int64_t t = 0; t < taps; t++)
        for (int64_t oh = 0; oh < d->oh; oh += 2) {
            /* the odd row past the end reads a zero row of gp */
            float *dst = gxs + oh * rs + off[t];
            for (int64_t ow = 0; ow < d->ow; ow += 16) {
                const float *gr = gp + oh * g->owp + ow;
                v8 a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0};
                for (int64_t co = 0; co < g->cout; co++, gr += cs) {
                    float f = w[co * taps + t];
                    v8 wv = BC8(f);
                    a00 += wv * LD8(gr);
                    a01 += wv * LD8(gr + 8);
                    a10 += wv * LD8(gr + g->owp);
                    a11 += wv * LD8(gr + g->owp + 8);
                }
                ST8(dst + ow, LD8(dst + ow) + a00);
                ST8(dst + ow + 8, LD8(dst + ow + 8) + a01);
                ST8(dst + rs + ow, LD8(dst + rs + ow) + a10);
                ST8(dst + rs + ow + 8, LD8(dst + rs + ow + 8) + a11);
            }
        }
}

static void direct_bwd(const convjob *j, int t, int64_t n0, int64_t n1)
{
    const lps_layer *l = j->l;
    convsplit g;
    conv_split_geometry(j, &g);
    lps_scratch *sc = conv_slots(j, t);
    float *xs = sc[S_X].p, *gp = sc[S_G].p, *gxs = sc[S_GX].p;
    float *gw = conv_gw(j, t), *gb = conv_gb(j, t);
    const int64_t *off = offsets(j);
    int64_t owq = gp_row(&g);
    g.owp = owq;
    int64_t in_size = g.cin * j->h * j->w, out_plane = j->oh * j->ow;
    for (int64_t n = n0; n < n1; n++) {
        const float *gn = j->gy + n * g.cout * out_plane;
        for (int64_t co = 0; co < g.cout && (j->gx || j->ow < 8); co++)
            for (int64_t oh = 0; oh < j->oh; oh++)
                memcpy(gp + co * (j->oh + 1) * owq + oh * owq, gn + co * out_plane + oh * j->ow,
                       (size_t)j->ow * sizeof(float));
        if (!l->frozen) {
            conv_split_input(j->x + n * in_size, j, &g, xs);
            if (j->ow >= 8)
                weight_grad(xs, gn, j->ow, out_plane, j->ow, &g, j, off, gw, gb);
            else /* rows narrower than a vector: from the zero-padded copy */
                weight_grad(xs, gp, owq, (j->oh + 1) * owq, 8, &g, j, off, gw, gb);
        }
        if (!j->gx) continue;
        input_grad(gp, &g, j, off, l->param[0]->data, gxs);
        conv_unsplit(gxs, j, &g, j->gx + n * in_size);
    }
}

const convkernel lps_conv_direct = {direct_prep, direct_fwd, direct_bwd, NULL};
