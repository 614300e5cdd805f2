/* conv_winograd.c - 3x3 stride-1 convolution by Winograd's F(2x2, 3x3)
 * (Lavin & Gray 2016): each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A
 * for its 4x4 input tile d, so 16 products replace 36 and the work becomes
 * 16 GEMMs (one per transformed position xi) over channels x tiles. The
 * backward pass is the exact adjoint: with dM = A dY A^T per tile,
 * dU[xi] = sum over tiles of dM[xi] V[xi]^T, dV[xi] = U[xi]^T dM[xi], and
 * dx gathers B dV B^T back from the overlapping tiles. Samples go through in
 * groups so the transformed tiles stay near the cache. */
#include "nn/conv_internal.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Geometry of one call: tiles per sample (th x tw) and per group. */
typedef struct {
    int64_t c1, c2, th, tw, tp, group, wq;
} wgeo;

static void geometry(const lps_layer *l, const convjob *d, wgeo *g)
{
    g->c1 = CIN(l);
    g->c2 = COUT(l);
    g->th = (d->oh + 1) / 2;
    g->tw = (d->ow + 1) / 2;
    g->tp = g->th * g->tw;
    g->wq = 2 * g->tw + 2;
    /* V (16 c1 T) and M (16 c2 T) near 1 MB, the L2 cache of a core: the
     * GEMMs run as well from 256 KB to 2 MB (measured), slower beyond. */
    int64_t budget = (1 << 20) / 4;
    int64_t per = 16 * (g->c1 + g->c2) * g->tp;
    g->group = budget / (per > 0 ? per : 1);
    if (g->group < 1) g->group = 1;
    if (g->group > d->b) g->group = d->b;
}

/* U[xi][co][ci] = G w[co][ci] G^T. */
static void filter_transform(const float *w, int64_t c2, int64_t c1, float *u)
{
    int64_t cs = c2 * c1;
    for (int64_t o = 0; o < c2; o++)
        for (int64_t i = 0; i < c1; i++) {
            const float *g = w + (o * c1 + i) * 9;
            float t[4][3];
            for (int j = 0; j < 3; j++) {
                float a = g[j], b = g[3 + j], c = g[6 + j], ac = a + c;
                t[0][j] = a;
                t[1][j] = 0.5f * (ac + b);
                t[2][j] = 0.5f * (ac - b);
                t[3][j] = c;
            }
            for (int r = 0; r < 4; r++) {
                float a = t[r][0], b = t[r][1], c = t[r][2], ac = a + c;
                float v[4] = {a, 0.5f * (ac + b), 0.5f * (ac - b), c};
                for (int j = 0; j < 4; j++) u[(r * 4 + j) * cs + o * c1 + i] = v[j];
            }
        }
}

/* dw[co][ci] += G^T dU[xi][co][ci] G. */
static void filter_grad(const float *du, int64_t c2, int64_t c1, float *dw)
{
    int64_t cs = c2 * c1;
    for (int64_t o = 0; o < c2; o++)
        for (int64_t i = 0; i < c1; i++) {
            float d[4][4], t[3][4];
            for (int x = 0; x < 16; x++) d[x / 4][x % 4] = du[x * cs + o * c1 + i];
            for (int j = 0; j < 4; j++) {
                float s = d[1][j] + d[2][j];
                t[0][j] = d[0][j] + 0.5f * s;
                t[1][j] = 0.5f * (d[1][j] - d[2][j]);
                t[2][j] = 0.5f * s + d[3][j];
            }
            float *g = dw + (o * c1 + i) * 9;
            for (int r = 0; r < 3; r++) {
                float s = t[r][1] + t[r][2];
                g[r * 3 + 0] += t[r][0] + 0.5f * s;
                g[r * 3 + 1] += 0.5f * (t[r][1] - t[r][2]);
                g[r * 3 + 2] += 0.5f * s + t[r][3];
            }
        }
}

/* Tiles go four at a time; when tw is not a multiple of 4 the last four
 * overlap the ones before, which only rewrites the same values. */
static inline int64_t quad_start(int64_t tx, int64_t tw) { return tx + 4 <= tw ? tx : tw - 4; }

/* One input plane into V: v points at V[0][c][first tile of the sample],
 * xs apart per xi. rows: the scratch of wino_prep. Vectors of 8 (simd.h)
 * where a row is long enough, else of 4 (SSE2), else scalars: each value is
 * the same one subtraction or addition whichever computes it. */
KERNEL static void input_transform(const float *xp, const convjob *d, int64_t pad, const wgeo *g,
                                   float *v, int64_t xs, float *rows)
{
    int64_t wq = g->wq, tw = g->tw, n = d->w;
    float *r[4] = {rows, rows + wq, rows + 2 * wq, rows + 3 * wq};
    const float *zero = rows + 6 * wq;
    /* the padding columns stay zero: only columns pad .. pad + w are written */
    for (int i = 0; i < 4; i++) {
        for (int64_t c = 0; c < pad; c++) r[i][c] = 0.0f;
        for (int64_t c = pad + n; c < wq; c++) r[i][c] = 0.0f;
    }
    for (int64_t ty = 0; ty < g->th; ty++) {
        const float *x[4];
        for (int i = 0; i < 4; i++) {
            int64_t ih = 2 * ty - pad + i;
            x[i] = ih >= 0 && ih < d->h ? xp + ih * n : zero;
        }
        /* B^T d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3) */
        float *t0 = r[0] + pad, *t1 = r[1] + pad, *t2 = r[2] + pad, *t3 = r[3] + pad;
        int64_t c = 0;
        for (; c + 8 <= n; c += 8) {
            v8 d0 = LD8(x[0] + c), d1 = LD8(x[1] + c), d2 = LD8(x[2] + c), d3 = LD8(x[3] + c);
            ST8(t0 + c, d0 - d2);
            ST8(t1 + c, d1 + d2);
            ST8(t2 + c, d2 - d1);
            ST8(t3 + c, d1 - d3);
        }
#ifdef __SSE2__
        for (; c + 4 <= n; c += 4) {
            __m128 d0 = _mm_loadu_ps(x[0] + c), d1 = _mm_loadu_ps(x[1] + c);
            __m128 d2 = _mm_loadu_ps(x[2] + c), d3 = _mm_loadu_ps(x[3] + c);
            _mm_storeu_ps(t0 + c, _mm_sub_ps(d0, d2));
            _mm_storeu_ps(t1 + c, _mm_add_ps(d1, d2));
            _mm_storeu_ps(t2 + c, _mm_sub_ps(d2, d1));
            _mm_storeu_ps(t3 + c, _mm_sub_ps(d1, d3));
        }
#endif
        for (; c < n; c++) {
            float d0 = x[0][c], d1 = x[1][c], d2 = x[2][c], d3 = x[3][c];
            t0[c] = d0 - d2;
            t1[c] = d1 + d2;
            t2[c] = d2 - d1;
            t3[c] = d1 - d3;
        }
        /* then B on the columns, the same combinations */
        float *vt = v + ty * tw;
        for (int i = 0; i < 4; i++) {
            const float *t = r[i];
            float *o0 = vt + (i * 4) * xs, *o1 = o0 + xs, *o2 = o1 + xs, *o3 = o2 + xs;
            if (tw >= 8) {
                /* eight tiles at a time, the last eight overlapping the ones
                 * before (the same values again); reads stay within 2 tw + 2 */
                for (int64_t q = 0; q < tw; q += 8) {
                    int64_t tx = q + 8 <= tw ? q : tw - 8;
                    v8 p0 = LD8(t + 2 * tx), p1 = LD8(t + 2 * tx + 8);
                    v8 q0 = LD8(t + 2 * tx + 2), q1 = LD8(t + 2 * tx + 10);
                    v8 a = EVEN8(p0, p1), b = ODD8(p0, p1);
                    v8 cc = EVEN8(q0, q1), e = ODD8(q0, q1);
                    ST8(o0 + tx, a - cc);
                    ST8(o1 + tx, b + cc);
                    ST8(o2 + tx, cc - b);
                    ST8(o3 + tx, b - e);
                }
                continue;
            }
#ifdef __SSE2__
            if (tw >= 4) {
                for (int64_t q = 0; q < tw; q += 4) {
                    int64_t tx = quad_start(q, tw);
                    /* columns 2tx.. and 2tx+2.., split into even and odd */
                    __m128 p0 = _mm_loadu_ps(t + 2 * tx), p1 = _mm_loadu_ps(t + 2 * tx + 4);
                    __m128 q0 = _mm_loadu_ps(t + 2 * tx + 2), q1 = _mm_loadu_ps(t + 2 * tx + 6);
                    __m128 a = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(2, 0, 2, 0));
                    __m128 b = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(3, 1, 3, 1));
                    __m128 cc = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(2, 0, 2, 0));
                    __m128 e = _mm_shuffle_ps(q0, q1, _MM_SHUFFLE(3, 1, 3, 1));
                    _mm_storeu_ps(o0 + tx, _mm_sub_ps(a, cc));
                    _mm_storeu_ps(o1 + tx, _mm_add_ps(b, cc));
                    _mm_storeu_ps(o2 + tx, _mm_sub_ps(cc, b));
                    _mm_storeu_ps(o3 + tx, _mm_sub_ps(b, e));
                }
                continue;
            }
#endif
            for (int64_t tx = 0; tx < tw; tx++) {
                float a = t[2 * tx], b = t[2 * tx + 1], cc = t[2 * tx + 2], e = t[2 * tx + 3];
                o0[tx] = a - cc;
                o1[tx] = b + cc;
                o2[tx] = cc - b;
                o3[tx] = b - e;
            }
        }
    }
}

/* One output plane from M: m points at M[0][co][first tile], xs apart;
 * y = A^T M A + bias, rows (m0 + m1 + m2, m1 - m2 - m3), then columns. */
KERNEL static void output_transform(const float *m, int64_t xs, const wgeo *g, const convjob *d,
                                    float bias, float *yp)
{
    int64_t tw = g->tw;
    for (int64_t ty = 0; ty < g->th; ty++) {
        const float *mt = m + ty * tw;
        float *y0 = yp + 2 * ty * d->ow, *y1 = 2 * ty + 1 < d->oh ? y0 + d->ow : NULL;
        if (tw >= 8) { /* eight tiles at a time, as input_transform */
            v8 bv = BC8(bias);
            for (int64_t q = 0; q < tw; q += 8) {
                int64_t tx = q + 8 <= tw ? q : tw - 8, cols = d->ow - 2 * tx;
                v8 s0[4], s1[4];
                for (int j = 0; j < 4; j++) {
                    v8 q0 = LD8(mt + j * xs + tx), q1 = LD8(mt + (4 + j) * xs + tx);
                    v8 q2 = LD8(mt + (8 + j) * xs + tx), q3 = LD8(mt + (12 + j) * xs + tx);
                    s0[j] = (q0 + q1) + q2;
                    s1[j] = (q1 - q2) - q3;
                }
                for (int row = 0; row < 2; row++) {
                    float *yr = row ? y1 : y0;
                    if (!yr) break;
                    const v8 *sr = row ? s1 : s0;
                    v8 a = ((sr[0] + sr[1]) + sr[2]) + bv, b = ((sr[1] - sr[2]) - sr[3]) + bv;
                    v8 u = ZIPLO8(a, b), w = ZIPHI8(a, b);
                    if (cols >= 16) {
                        ST8(yr + 2 * tx, u);
                        ST8(yr + 2 * tx + 8, w);
                    } else { /* odd width: the last tile has one column */
                        float tmp[16];
                        ST8(tmp, u);
                        ST8(tmp + 8, w);
                        memcpy(yr + 2 * tx, tmp, (size_t)cols * sizeof(float));
                    }
                }
            }
            continue;
        }
#ifdef __SSE2__
        if (tw >= 4) {
            __m128 bv = _mm_set1_ps(bias);
            for (int64_t q = 0; q < tw; q += 4) {
                int64_t tx = quad_start(q, tw), cols = d->ow - 2 * tx;
                __m128 s0[4], s1[4];
                for (int j = 0; j < 4; j++) {
                    __m128 q0 = _mm_loadu_ps(mt + j * xs + tx);
                    __m128 q1 = _mm_loadu_ps(mt + (4 + j) * xs + tx);
                    __m128 q2 = _mm_loadu_ps(mt + (8 + j) * xs + tx);
                    __m128 q3 = _mm_loadu_ps(mt + (12 + j) * xs + tx);
                    s0[j] = _mm_add_ps(_mm_add_ps(q0, q1), q2);
                    s1[j] = _mm_sub_ps(_mm_sub_ps(q1, q2), q3);
                }
                for (int row = 0; row < 2; row++) {
                    float *yr = row ? y1 : y0;
                    if (!yr) break;
                    const __m128 *sr = row ? s1 : s0;
                    __m128 a = _mm_add_ps(_mm_add_ps(_mm_add_ps(sr[0], sr[1]), sr[2]), bv);
                    __m128 b = _mm_add_ps(_mm_sub_ps(_mm_sub_ps(sr[1], sr[2]), sr[3]), bv);
                    if (cols >= 8) {
                        _mm_storeu_ps(yr + 2 * tx, _mm_unpacklo_ps(a, b));
                        _mm_storeu_ps(yr + 2 * tx + 4, _mm_unpackhi_ps(a, b));
                    } else { /* odd width: the last tile has one column */
                        float tmp[8];
                        _mm_storeu_ps(tmp, _mm_unpacklo_ps(a, b));
                        _mm_storeu_ps(tmp + 4, _mm_unpackhi_ps(a, b));
                        memcpy(yr + 2 * tx, tmp, (size_t)cols * sizeof(float));
                    }
                }
            }
            continue;
        }
#endif
        for (int64_t tx = 0; tx < tw; tx++) {
            float s0[4], s1[4];
            for (int j = 0; j < 4; j++) {
                float q0 = mt[j * xs + tx], q1 = mt[(4 + j) * xs + tx];
                float q2 = mt[(8 + j) * xs + tx], q3 = mt[(12 + j) * xs + tx];
                s0[j] = q0 + q1 + q2;
                s1[j] = q1 - q2 - q3;
            }
            int64_t c = 2 * tx;
            int two = c + 1 < d->ow;
            y0[c] = s0[0] + s0[1] + s0[2] + bias;
            if (two) y0[c + 1] = s0[1] - s0[2] - s0[3] + bias;
            if (y1) {
                y1[c] = s1[0] + s1[1] + s1[2] + bias;
                if (two) y1[c + 1] = s1[1] - s1[2] - s1[3] + bias;
            }
        }
    }
}

/* One output-gradient plane into dM = A dy A^T (outside the output: 0):
 * rows (g0, g0 + g1, g0 - g1, -g1) of each 2x2 tile, then its columns.
 * rows: the scratch of wino_prep. */
KERNEL static void grad_transform(const float *gp, const convjob *d, const wgeo *g, float *m,
                                  int64_t xs, float *rows)
{
    int64_t tw = g->tw, wp = 2 * tw, odd = wp > d->ow;
    const float *zero = rows + 6 * g->wq;
    for (int64_t ty = 0; ty < g->th; ty++) {
        /* the tile row's two gradient rows, zero beyond the output: read in
         * place unless the width is odd */
        const float *r0 = gp + 2 * ty * d->ow;
        const float *r1 = 2 * ty + 1 < d->oh ? r0 + d->ow : zero;
        if (odd) {
            float *c0 = rows, *c1 = rows + wp;
            memcpy(c0, r0, (size_t)d->ow * sizeof(float));
            memcpy(c1, r1, (size_t)d->ow * sizeof(float));
            c0[d->ow] = c1[d->ow] = 0.0f;
            r0 = c0;
            r1 = c1;
        }
        float *mt = m + ty * tw;
        int64_t tx = 0;
        if (tw >= 8) { /* eight tiles at a time, as input_transform */
            v8 z = BC8(0.0f);
            for (int64_t q = 0; q < tw; q += 8) {
                tx = q + 8 <= tw ? q : tw - 8;
                v8 u0 = LD8(r0 + 2 * tx), u1 = LD8(r0 + 2 * tx + 8);
                v8 w0 = LD8(r1 + 2 * tx), w1 = LD8(r1 + 2 * tx + 8);
                v8 a = EVEN8(u0, u1), b = ODD8(u0, u1);
                v8 e = EVEN8(w0, w1), f = ODD8(w0, w1);
                v8 pr[4] = {a, a + e, a - e, z - e}, qr[4] = {b, b + f, b - f, z - f};
                for (int i = 0; i < 4; i++) {
                    ST8(mt + (i * 4 + 0) * xs + tx, pr[i]);
                    ST8(mt + (i * 4 + 1) * xs + tx, pr[i] + qr[i]);
                    ST8(mt + (i * 4 + 2) * xs + tx, pr[i] - qr[i]);
                    ST8(mt + (i * 4 + 3) * xs + tx, z - qr[i]);
                }
            }
            continue;
        }
#ifdef __SSE2__
        if (tw >= 4)
            for (int64_t q = 0; q < tw; q += 4) {
                tx = quad_start(q, tw);
                __m128 u0 = _mm_loadu_ps(r0 + 2 * tx), u1 = _mm_loadu_ps(r0 + 2 * tx + 4);
                __m128 w0 = _mm_loadu_ps(r1 + 2 * tx), w1 = _mm_loadu_ps(r1 + 2 * tx + 4);
                __m128 a = _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(2, 0, 2, 0));
                __m128 b = _mm_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 1, 3, 1));
                __m128 e = _mm_shuffle_ps(w0, w1, _MM_SHUFFLE(2, 0, 2, 0));
                __m128 f = _mm_shuffle_ps(w0, w1, _MM_SHUFFLE(3, 1, 3, 1));
                __m128 pr[4] = {a, _mm_add_ps(a, e), _mm_sub_ps(a, e),
                                _mm_sub_ps(_mm_setzero_ps(), e)};
                __m128 qr[4] = {b, _mm_add_ps(b, f), _mm_sub_ps(b, f),
                                _mm_sub_ps(_mm_setzero_ps(), f)};
                for (int i = 0; i < 4; i++) {
                    _mm_storeu_ps(mt + (i * 4 + 0) * xs + tx, pr[i]);
                    _mm_storeu_ps(mt + (i * 4 + 1) * xs + tx, _mm_add_ps(pr[i], qr[i]));
                    _mm_storeu_ps(mt + (i * 4 + 2) * xs + tx, _mm_sub_ps(pr[i], qr[i]));
                    _mm_storeu_ps(mt + (i * 4 + 3) * xs + tx, _mm_sub_ps(_mm_setzero_ps(), qr[i]));
                }
            }
        tx = tw >= 4 ? tw : 0;
#endif
        for (; tx < tw; tx++) {
            float a = r0[2 * tx], b = r0[2 * tx + 1], e = r1[2 * tx], f = r1[2 * tx + 1];
            float pr[4] = {a, a + e, a - e, 0.0f - e}, qr[4] = {b, b + f, b - f, 0.0f - f};
            for (int i = 0; i < 4; i++) {
                mt[(i * 4 + 0) * xs + tx] = pr[i];
                mt[(i * 4 + 1) * xs + tx] = pr[i] + qr[i];
                mt[(i * 4 + 2) * xs + tx] = pr[i] - qr[i];
                mt[(i * 4 + 3) * xs + tx] = 0.0f - qr[i];
            }
        }
    }
}

/* The dx plane from B dV B^T of each tile, placed back where the tile came
 * from. Per tile row: X B^T on the columns, (c0, c1 - c2 + c3, c1 + c2 - c0,
 * -c3), where neighbouring tiles share two columns: column 2k gets c0 of
 * tile k plus the third value of tile k-1, column 2k+1 the second of k plus
 * the fourth of k-1. Then B X on the rows, (X0, X1 - X2 + X3, X1 + X2 - X0,
 * -X3), where the first two rows also get the last two of the tile row
 * above (carried in k0, k1): each dx row is then written once, no zeroing.
 * rows: the scratch of wino_prep. */
KERNEL static void input_grad(const float *v, int64_t xs, const wgeo *g, const convjob *d,
                              int64_t pad, float *gxp, float *rows)
{
    int64_t wq = g->wq, tw = g->tw, n = d->w;
    float *x0 = rows, *x1 = rows + wq, *x2 = rows + 2 * wq, *x3 = rows + 3 * wq;
    float *k0 = rows + 4 * wq + pad, *k1 = rows + 5 * wq + pad;
    memset(k0, 0, (size_t)n * sizeof(float));
    memset(k1, 0, (size_t)n * sizeof(float));
    for (int64_t ty = 0; ty < g->th; ty++) {
        const float *vt = v + ty * tw;
        for (int i = 0; i < 4; i++) {
            const float *p0 = vt + (i * 4) * xs, *p1 = p0 + xs, *p2 = p1 + xs, *p3 = p2 + xs;
            float *r = rows + i * wq;
            float carry2 = 0.0f, carry3 = 0.0f; /* third and fourth value of tile tx-1 */
            int64_t tx = 0;
            /* eight tiles at a time: o2, o3 moved one tile on (lane 7 of
             * the eight before into lane 0), then columns interleaved */
            v8 z = BC8(0.0f), l2 = z, l3 = z;
            for (; tx + 8 <= tw; tx += 8) {
                v8 c0 = LD8(p0 + tx), c1 = LD8(p1 + tx), c2 = LD8(p2 + tx), c3 = LD8(p3 + tx);
                v8 o1 = (c1 - c2) + c3, o2 = (c1 + c2) - c0, o3 = z - c3;
                v8 s2 = __builtin_shufflevector(l2, o2, 7, 8, 9, 10, 11, 12, 13, 14);
                v8 s3 = __builtin_shufflevector(l3, o3, 7, 8, 9, 10, 11, 12, 13, 14);
                v8 ev = c0 + s2, od = o1 + s3;
                ST8(r + 2 * tx, ZIPLO8(ev, od));
                ST8(r + 2 * tx + 8, ZIPHI8(ev, od));
                l2 = o2;
                l3 = o3;
            }
            carry2 = l2[7];
            carry3 = l3[7];
#ifdef __SSE2__
            __m128 q2 = _mm_set_ss(carry2), q3 = _mm_set_ss(carry3);
            for (; tx + 4 <= tw; tx += 4) {
                __m128 c0 = _mm_loadu_ps(p0 + tx), c1 = _mm_loadu_ps(p1 + tx);
                __m128 c2 = _mm_loadu_ps(p2 + tx), c3 = _mm_loadu_ps(p3 + tx);
                __m128 o1 = _mm_add_ps(_mm_sub_ps(c1, c2), c3);
                __m128 o2 = _mm_sub_ps(_mm_add_ps(c1, c2), c0);
                __m128 o3 = _mm_sub_ps(_mm_setzero_ps(), c3);
                /* (last of the previous four, first three of these) */
                __m128 s2 = _mm_move_ss(_mm_shuffle_ps(o2, o2, _MM_SHUFFLE(2, 1, 0, 0)), q2);
                __m128 s3 = _mm_move_ss(_mm_shuffle_ps(o3, o3, _MM_SHUFFLE(2, 1, 0, 0)), q3);
                __m128 ev = _mm_add_ps(c0, s2), od = _mm_add_ps(o1, s3);
                _mm_storeu_ps(r + 2 * tx, _mm_unpacklo_ps(ev, od));
                _mm_storeu_ps(r + 2 * tx + 4, _mm_unpackhi_ps(ev, od));
                q2 = _mm_shuffle_ps(o2, o2, _MM_SHUFFLE(3, 3, 3, 3));
                q3 = _mm_shuffle_ps(o3, o3, _MM_SHUFFLE(3, 3, 3, 3));
            }
            carry2 = _mm_cvtss_f32(q2);
            carry3 = _mm_cvtss_f32(q3);
#endif
            for (; tx < tw; tx++) {
                float c0 = p0[tx], c1 = p1[tx], c2 = p2[tx], c3 = p3[tx];
                r[2 * tx] = c0 + carry2;
                r[2 * tx + 1] = (c1 - c2 + c3) + carry3;
                carry2 = c1 + c2 - c0;
                carry3 = 0.0f - c3;
            }
            r[2 * tw] = carry2;
            r[2 * tw + 1] = carry3;
        }
        /* padded rows 2ty, 2ty + 1 are complete; 2ty + 2, 2ty + 3 carry on */
        int64_t ih0 = 2 * ty - pad, ih1 = ih0 + 1;
        float *y0 = ih0 >= 0 && ih0 < d->h ? gxp + ih0 * n : NULL;
        float *y1 = ih1 >= 0 && ih1 < d->h ? gxp + ih1 * n : NULL;
        const float *a0 = x0 + pad, *a1 = x1 + pad, *a2 = x2 + pad, *a3 = x3 + pad;
        int64_t c = 0;
        for (; c + 8 <= n; c += 8) {
            v8 b0 = LD8(a0 + c), b1 = LD8(a1 + c), b2 = LD8(a2 + c), b3 = LD8(a3 + c);
            v8 f0 = b0 + LD8(k0 + c), f1 = ((b1 - b2) + b3) + LD8(k1 + c);
            ST8(k0 + c, (b1 + b2) - b0);
            ST8(k1 + c, BC8(0.0f) - b3);
            if (y0) ST8(y0 + c, f0);
            if (y1) ST8(y1 + c, f1);
        }
#ifdef __SSE2__
        for (; c + 4 <= n; c += 4) {
            __m128 b0 = _mm_loadu_ps(a0 + c), b1 = _mm_loadu_ps(a1 + c);
            __m128 b2 = _mm_loadu_ps(a2 + c), b3 = _mm_loadu_ps(a3 + c);
            __m128 f0 = _mm_add_ps(b0, _mm_loadu_ps(k0 + c));
            __m128 f1 = _mm_add_ps(_mm_add_ps(_mm_sub_ps(b1, b2), b3), _mm_loadu_ps(k1 + c));
            _mm_storeu_ps(k0 + c, _mm_sub_ps(_mm_add_ps(b1, b2), b0));
            _mm_storeu_ps(k1 + c, _mm_sub_ps(_mm_setzero_ps(), b3));
            if (y0) _mm_storeu_ps(y0 + c, f0);
            if (y1) _mm_storeu_ps(y1 + c, f1);
        }
#endif
        for (; c < n; c++) {
            float f0 = a0[c] + k0[c], f1 = (a1[c] - a2[c] + a3[c]) + k1[c];
            k0[c] = a1[c] + a2[c] - a0[c];
            k1[c] = 0.0f - a3[c];
            if (y0) y0[c] = f0;
            if (y1) y1[c] = f1;
        }
    }
    for (int i = 0; i < 2; i++) {
        int64_t ih = 2 * g->th + i - pad;
        if (ih >= 0 && ih < d->h) memcpy(gxp + ih * n, i ? k1 : k0, (size_t)n * sizeof(float));
    }
}

enum { S_V, S_M, S_DU, S_ROWS };

/* Shared U (the transformed filters); per thread V, M, rows (6 rows of wq
 * floats for the transforms, then a row of zeros) and for backward dU. */
static lps_status wino_prep(const convjob *j, int backward)
{
    lps_layer *l = j->l;
    convpriv *p = l->priv;
    wgeo g;
    geometry(l, j, &g);
    const char *op = backward ? "conv2d backward" : "conv2d";
    int64_t tmax = g.group * g.tp, nu = 16 * g.c1 * g.c2;
    float *u = lps_scratch_get(&p->shared, nu, op);
    if (!u) return LPS_ENOMEM;
    if (!backward || j->gx) filter_transform(l->param[0]->data, g.c2, g.c1, u);
    for (int t = 0; t < j->nt; t++) {
        lps_scratch *s = conv_slots(j, t);
        float *rows = lps_scratch_get(&s[S_ROWS], 7 * g.wq, op);
        float *du = backward ? lps_scratch_get(&s[S_DU], nu, op) : NULL;
        if (!lps_scratch_get(&s[S_V], 16 * g.c1 * tmax, op) ||
            !lps_scratch_get(&s[S_M], 16 * g.c2 * tmax, op) || !rows || (backward && !du))
            return LPS_ENOMEM;
        memset(rows + 6 * g.wq, 0, (size_t)g.wq * sizeof(float));
        if (du) memset(du, 0, (size_t)nu * sizeof(float));
    }
    return LPS_OK;
}

static void wino_fwd(const convjob *j, int th, int64_t b0, int64_t b1)
{
    const lps_layer *l = j->l;
    wgeo g;
    geometry(l, j, &g);
    lps_scratch *sc = conv_slots(j, th);
    const float *u = ((convpriv *)l->priv)->shared.p, *bias = conv_bias(l);
    float *v = sc[S_V].p, *m = sc[S_M].p, *rows = sc[S_ROWS].p;
    int64_t in_plane = j->h * j->w, out_plane = j->oh * j->ow;
    for (int64_t n0 = b0; n0 < b1; n0 += g.group) {
        int64_t gs = b1 - n0 < g.group ? b1 - n0 : g.group, t = gs * g.tp;
        for (int64_t s = 0; s < gs; s++)
            for (int64_t c = 0; c < g.c1; c++)
                input_transform(j->x + ((n0 + s) * g.c1 + c) * in_plane, j, PAD(l), &g,
                                v + c * t + s * g.tp, g.c1 * t, rows);
        for (int k = 0; k < 16; k++)
            conv_gemm_nn(g.c2, t, g.c1, u + k * g.c2 * g.c1, g.c1, 1, NULL, v + k * g.c1 * t, t,
                         m + k * g.c2 * t, t);
        for (int64_t s = 0; s < gs; s++)
            for (int64_t c = 0; c < g.c2; c++)
                output_transform(m + c * t + s * g.tp, g.c2 * t, &g, j, bias[c],
                                 j->y + ((n0 + s) * g.c2 + c) * out_plane);
    }
}

static void wino_bwd(const convjob *j, int th, int64_t b0, int64_t b1)
{
    const lps_layer *l = j->l;
    wgeo g;
    geometry(l, j, &g);
    lps_scratch *sc = conv_slots(j, th);
    const float *u = ((convpriv *)l->priv)->shared.p;
    float *v = sc[S_V].p, *m = sc[S_M].p, *rows = sc[S_ROWS].p, *du = sc[S_DU].p;
    int64_t in_plane = j->h * j->w, out_plane = j->oh * j->ow;
    float *gb = conv_gb(j, th);
    for (int64_t n = b0; n < b1 && !l->frozen && gb; n++)
        for (int64_t c = 0; c < g.c2; c++)
            gb[c] += lps_sum_floats(j->gy + (n * g.c2 + c) * out_plane, out_plane);
    for (int64_t n0 = b0; n0 < b1; n0 += g.group) {
        int64_t gs = b1 - n0 < g.group ? b1 - n0 : g.group, t = gs * g.tp;
        for (int64_t s = 0; s < gs; s++) {
            for (int64_t c = 0; c < g.c1 && !l->frozen; c++)
                input_transform(j->x + ((n0 + s) * g.c1 + c) * in_plane, j, PAD(l), &g,
                                v + c * t + s * g.tp, g.c1 * t, rows);
            for (int64_t c = 0; c < g.c2; c++)
                grad_transform(j->gy + ((n0 + s) * g.c2 + c) * out_plane, j, &g,
                               m + c * t + s * g.tp, g.c2 * t, rows);
        }
        /* dU[xi] (c2 x c1) += dM[xi] (c2 x T) V[xi]^T */
        for (int k = 0; k < 16 && !l->frozen; k++)
            conv_gemm_nt(g.c2, g.c1, t, m + k * g.c2 * t, t, v + k * g.c1 * t, t, du + k * g.c2 * g.c1,
                         g.c1);
        if (!j->gx) continue;
        /* dV[xi] (c1 x T) = U[xi]^T dM[xi], U read transposed in place */
        for (int k = 0; k < 16; k++)
            conv_gemm_nn(g.c1, t, g.c2, u + k * g.c2 * g.c1, 1, g.c1, NULL, m + k * g.c2 * t, t,
                         v + k * g.c1 * t, t);
        for (int64_t s = 0; s < gs; s++)
            for (int64_t c = 0; c < g.c1; c++)
                input_grad(v + c * t + s * g.tp, g.c1 * t, &g, j, PAD(l),
                           j->gx + ((n0 + s) * g.c1 + c) * in_plane, rows);
    }
}

/* dW from the threads' dU, added in thread order. */
static void wino_finish(const convjob *j)
{
    if (j->l->frozen) return;
    int64_t nu = 16 * CIN(j->l) * COUT(j->l);
    float *du = conv_slots(j, 0)[S_DU].p;
    for (int t = 1; t < j->nt; t++) {
        const float *o = conv_slots(j, t)[S_DU].p;
        for (int64_t i = 0; i < nu; i++) du[i] += o[i];
    }
    filter_grad(du, COUT(j->l), CIN(j->l), conv_gw(j, 0));
}

const convkernel lps_conv_wino = {wino_prep, wino_fwd, wino_bwd, wino_finish};
