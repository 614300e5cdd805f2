/* conv_gemm.c - the small matrix products of the convolution kernels
 * (Winograd's per-position products, a sample's im2col product), in vectors
 * of 16 (simd.h's KERNEL16: AVX-512 where the core has it). OpenBLAS picks
 * its AVX2 kernel on this machine, packs both operands on every call and
 * runs thin products (16 or 32 channels deep) far below its peak; these
 * keep their operands in the cache, read them in place and need no packing
 * of the wide one.
 *
 * Every output is one fixed sum whatever computes it (a block, its overlap
 * with the last block, or the scalar path for narrow products), so results
 * depend only on the shapes. */
#include "nn/conv_internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

enum { NN_MR = 8, NN_KMAX = CONV_GEMM_KMAX };

void conv_pack_rows(float *ap, int w, const float *a, int64_t ars, int64_t acs, int64_t mr, int64_t k)
{
    for (int64_t p = 0; p < k; p++)
        for (int r = 0; r < w; r++) ap[p * w + r] = a[(r < mr ? r : mr - 1) * ars + p * acs];
}

/* Products narrower than a vector, as scalars: the nn kernels' sums, in
 * the same order (no contraction: -ffp-contract=off), so the same bits;
 * fused (fmaf, exact on any core; one instruction in the FMA build of
 * FMA_CLONE) for conv_gemm_fma.c's. */
FMA_CLONE void conv_gemm_narrow(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int fused)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (int64_t p = 0; p < k; p++) {
                float x = a[i * ars + p * acs], y = b[p * ldb + j];
                s = fused ? fmaf(x, y, s) : s + x * y;
            }
            c[i * ldc + j] = s;
        }
}

/* The nt kernels' sums shorter than a vector: c(i, j) += one sum over p. */
FMA_CLONE void conv_gemm_nt_short(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float *c, int64_t ldc, int fused)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (int64_t p = 0; p < k; p++) {
                float x = a[i * lda + p], y = b[j * ldb + p];
                s = fused ? fmaf(x, y, s) : s + x * y;
            }
            c[i * ldc + j] += s;
        }
}

/* C = A B, A read at a[i ars + p acs]: c(i, j) = sum over p in order of
 * a(i, p) b(p, j), from 0. Eight rows of C by 32 columns a block (16
 * vector sums); the last columns overlap the ones before when n is not a
 * multiple (the same sums again), and products narrower than a vector run
 * as scalars in the same order. */
KERNEL16 static void nn_kernel(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars,
                               int64_t acs, const float *pre, const float *b, int64_t ldb, float *c,
                               int64_t ldc)
{
    if (n < 16) {
        conv_gemm_narrow(m, n, k, a, ars, acs, b, ldb, c, ldc, 0);
        return;
    }
    float ap[NN_MR * NN_KMAX];
    for (int64_t i0 = 0; i0 < m; i0 += NN_MR) {
        int64_t mr = m - i0 < NN_MR ? m - i0 : NN_MR;
        const float *wp = pre ? pre + i0 * k : ap;
        if (!pre) conv_pack_rows(ap, NN_MR, a + i0 * ars, ars, acs, mr, k);
        for (int64_t j = 0; j < n; j += 32) {
            int64_t j0 = j + 16 <= n ? j : n - 16, j1 = j + 32 <= n ? j + 16 : n - 16;
            v16 s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};
            v16 s40 = {0}, s41 = {0}, s50 = {0}, s51 = {0}, s60 = {0}, s61 = {0}, s70 = {0}, s71 = {0};
            const float *bp = b, *w = wp;
            for (int64_t p = 0; p < k; p++, bp += ldb, w += NN_MR) {
                v16 x0 = LD16(bp + j0), x1 = LD16(bp + j1);
                s00 += x0 * w[0];
                s01 += x1 * w[0];
                s10 += x0 * w[1];
                s11 += x1 * w[1];
                s20 += x0 * w[2];
                s21 += x1 * w[2];
                s30 += x0 * w[3];
                s31 += x1 * w[3];
                s40 += x0 * w[4];
                s41 += x1 * w[4];
                s50 += x0 * w[5];
                s51 += x1 * w[5];
                s60 += x0 * w[6];
                s61 += x1 * w[6];
                s70 += x0 * w[7];
                s71 += x1 * w[7];
            }
            float *cr = c + i0 * ldc;
            ST16(cr + j1, s01);
            ST16(cr + j0, s00);
#define ROW(r, a0, a1)                                                                             \
    if (mr > r) {                                                                                  \
        ST16(cr + r * ldc + j1, a1);                                                               \
        ST16(cr + r * ldc + j0, a0);                                                               \
    }
            ROW(1, s10, s11)
            ROW(2, s20, s21)
            ROW(3, s30, s31)
            ROW(4, s40, s41)
            ROW(5, s50, s51)
            ROW(6, s60, s61)
            ROW(7, s70, s71)
#undef ROW
        }
    }
}

/* The same products in vectors of 8, for cores without AVX-512: 16 vector
 * registers hold four rows of C by 16 columns (8 sums), a broadcast and a
 * product. Each c(i, j) is the same sum in the same order as nn_kernel's
 * (and the same scalars for narrow products), so the same bits. */
enum { NN8_MR = 4 };
KERNEL static void nn_kernel8(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars,
                              int64_t acs, const float *pre, const float *b, int64_t ldb, float *c,
                              int64_t ldc)
{
    if (n < 16) {
        conv_gemm_narrow(m, n, k, a, ars, acs, b, ldb, c, ldc, 0);
        return;
    }
    float ap[NN8_MR * NN_KMAX];
    for (int64_t i0 = 0; i0 < m; i0 += NN8_MR) {
        int64_t mr = m - i0 < NN8_MR ? m - i0 : NN8_MR;
        const float *wp = pre ? pre + i0 * k : ap;
        if (!pre) conv_pack_rows(ap, NN8_MR, a + i0 * ars, ars, acs, mr, k);
        for (int64_t j = 0; j < n; j += 16) {
            int64_t j0 = j + 16 <= n ? j : n - 16;
            v8 s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};
            const float *bp = b + j0, *w = wp;
            for (int64_t p = 0; p < k; p++, bp += ldb, w += NN8_MR) {
                v8 x0 = LD8(bp), x1 = LD8(bp + 8), w0 = BC8(w[0]), w1 = BC8(w[1]);
                s00 += x0 * w0;
                s01 += x1 * w0;
                s10 += x0 * w1;
                s11 += x1 * w1;
                v8 w2 = BC8(w[2]), w3 = BC8(w[3]);
                s20 += x0 * w2;
                s21 += x1 * w2;
                s30 += x0 * w3;
                s31 += x1 * w3;
            }
            float *cr = c + i0 * ldc + j0;
            ST8(cr, s00);
            ST8(cr + 8, s01);
            if (mr > 1) ST8(cr + ldc, s10), ST8(cr + ldc + 8, s11);
            if (mr > 2) ST8(cr + 2 * ldc, s20), ST8(cr + 2 * ldc + 8, s21);
            if (mr > 3) ST8(cr + 3 * ldc, s30), ST8(cr + 3 * ldc + 8, s31);
        }
    }
}

/* The kernels in use: -1 the core's best, else forced (lps_set_conv_kernels). */
enum { K_UNFUSED8, K_FMA8, K_WIDE16 };
static const char *const KERNEL_NAMES[] = {"unfused8", "fma8", "wide16"};
static int forced = -1;

static int kernels(void) { return forced >= 0 ? forced : WIDE16 ? K_WIDE16 : HAS_FMA ? K_FMA8 : K_UNFUSED8; }

const char *lps_conv_kernels(void) { return KERNEL_NAMES[kernels()]; }

lps_status lps_set_conv_kernels(const char *name)
{
    if (!name || !strcmp(name, "auto")) {
        forced = -1;
        return LPS_OK;
    }
    for (int k = 0; k < 3; k++)
        if (!strcmp(name, KERNEL_NAMES[k])) {
            if ((k == K_FMA8 && !HAS_FMA) || (k == K_WIDE16 && !WIDE16))
                return lps_fail(LPS_EINVAL, "set_conv_kernels: this core cannot run the '%s' kernels", name);
            forced = k;
            return LPS_OK;
        }
    return lps_fail(LPS_EINVAL, "set_conv_kernels: unknown kernels '%s' (auto, unfused8, fma8, wide16)", name);
}

/* The rows a block of the nn kernels in use packs: 8 (wide16) or 4. */
static int64_t pack_width(void) { return kernels() == K_WIDE16 ? NN_MR : NN8_MR; }

int64_t conv_gemm_pack_floats(int64_t m, int64_t k)
{
    int64_t w = pack_width();
    return (m + w - 1) / w * w * k;
}

void conv_gemm_pack(int64_t m, int64_t k, const float *a, int64_t ars, int64_t acs, float *ap)
{
    int64_t w = pack_width();
    if (k > NN_KMAX) return; /* conv_gemm_nn then hands the product to BLAS */
    for (int64_t i0 = 0; i0 < m; i0 += w)
        conv_pack_rows(ap + i0 * k, (int)w, a + i0 * ars, ars, acs, m - i0 < w ? m - i0 : w, k);
}

void conv_gemm_nn(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                  const float *ap, const float *b, int64_t ldb, float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    if (k <= NN_KMAX) {
        int which = kernels();
        if (which == K_WIDE16)
            nn_kernel(m, n, k, a, ars, acs, ap, b, ldb, c, ldc);
        else if (which == K_FMA8)
            conv_gemm_nn_fma(m, n, k, a, ars, acs, ap, b, ldb, c, ldc);
        else
            nn_kernel8(m, n, k, a, ars, acs, ap, b, ldb, c, ldc);
        return;
    }
    /* deeper than the packed block holds (no caller's shape here): BLAS */
    int ta = acs != 1;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f,
                a, (int)(ta ? acs : ars), b, (int)ldb, 0.0f, c, (int)ldc);
}

/* Pairs of vectors to one: lanes (a's first half, b's first half) of each
 * 2h-lane block, plus (a's second half, b's second half): h = 8 gives
 * a[l] + a[l + 8] in lanes 0..7 and b's in 8..15; h = 4 then halves each
 * 4-lane block, and so on. */
#define HALVES8(a, b) (__builtin_shufflevector((a), (b), 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) \
    + __builtin_shufflevector((a), (b), 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
#define HALVES4(a, b) (__builtin_shufflevector((a), (b), 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) \
    + __builtin_shufflevector((a), (b), 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
#define HALVES2(a, b) (__builtin_shufflevector((a), (b), 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) \
    + __builtin_shufflevector((a), (b), 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
#define HALVES1(a, b) (__builtin_shufflevector((a), (b), 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) \
    + __builtin_shufflevector((a), (b), 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
#define HALVES(a, b, h) HALVES##h(a, b) /* __builtin_shufflevector: GCC >= 12 and Clang */
/* the accumulator (4 r + q for s_rq) each lane of the last round holds */
static const unsigned char WHERE[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

/* C += A B^T: c(i, j) += sum over p of a[i lda + p] b[j ldb + p], each sum
 * in 16 lanes (lane l over p = l mod 16, in order) then the lanes in a
 * fixed tree (HALVES); a last
 * partial vector is read ending at k with the lanes already counted masked
 * to zero. Four rows of A by four of B a block (16 vector sums). Sums
 * shorter than a vector run as scalars. */
KERNEL16 static void nt_kernel(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                               const float *b, int64_t ldb, float *c, int64_t ldc)
{
    if (k < 16) {
        conv_gemm_nt_short(m, n, k, a, lda, b, ldb, c, ldc, 0);
        return;
    }
    int64_t full = k / 16 * 16, last = k - 16;
    v16i tail;
    for (int l = 0; l < 16; l++) tail[l] = last + l >= full ? -1 : 0;
    for (int64_t i0 = 0; i0 < m; i0 += 4) {
        int64_t mr = m - i0 < 4 ? m - i0 : 4;
        const float *a0 = a + i0 * lda, *a1 = a0 + (mr > 1 ? lda : 0);
        const float *a2 = a0 + (mr > 2 ? 2 * lda : 0), *a3 = a0 + (mr > 3 ? 3 * lda : 0);
        for (int64_t j0 = 0; j0 < n; j0 += 4) {
            int64_t nr = n - j0 < 4 ? n - j0 : 4;
            const float *b0 = b + j0 * ldb, *b1 = b0 + (nr > 1 ? ldb : 0);
            const float *b2 = b0 + (nr > 2 ? 2 * ldb : 0), *b3 = b0 + (nr > 3 ? 3 * ldb : 0);
            v16 s00 = {0}, s01 = {0}, s02 = {0}, s03 = {0}, s10 = {0}, s11 = {0}, s12 = {0}, s13 = {0};
            v16 s20 = {0}, s21 = {0}, s22 = {0}, s23 = {0}, s30 = {0}, s31 = {0}, s32 = {0}, s33 = {0};
#define NT_STEP(x0, x1, x2, x3, q)                                                                 \
    do {                                                                                           \
        v16 y0 = LD16(b0 + (q)), y1 = LD16(b1 + (q)), y2 = LD16(b2 + (q)), y3 = LD16(b3 + (q));   \
        s00 += x0 * y0;                                                                            \
        s01 += x0 * y1;                                                                            \
        s02 += x0 * y2;                                                                            \
        s03 += x0 * y3;                                                                            \
        s10 += x1 * y0;                                                                            \
        s11 += x1 * y1;                                                                            \
        s12 += x1 * y2;                                                                            \
        s13 += x1 * y3;                                                                            \
        s20 += x2 * y0;                                                                            \
        s21 += x2 * y1;                                                                            \
        s22 += x2 * y2;                                                                            \
        s23 += x2 * y3;                                                                            \
        s30 += x3 * y0;                                                                            \
        s31 += x3 * y1;                                                                            \
        s32 += x3 * y2;                                                                            \
        s33 += x3 * y3;                                                                            \
    } while (0)
            for (int64_t p = 0; p < full; p += 16) {
                v16 x0 = LD16(a0 + p), x1 = LD16(a1 + p), x2 = LD16(a2 + p), x3 = LD16(a3 + p);
                NT_STEP(x0, x1, x2, x3, p);
            }
            if (full < k) {
                v16 x0 = (v16)((v16i)LD16(a0 + last) & tail), x1 = (v16)((v16i)LD16(a1 + last) & tail);
                v16 x2 = (v16)((v16i)LD16(a2 + last) & tail), x3 = (v16)((v16i)LD16(a3 + last) & tail);
                NT_STEP(x0, x1, x2, x3, last);
            }
#undef NT_STEP
            /* the 16 sums at once: four rounds, each adding halves of pairs
             * of vectors (lanes l and l + 8 of a sum, then l and l + 4, ...):
             * the lanes of z hold the sums in the order of WHERE */
            v16 t0 = HALVES(s00, s01, 8), t1 = HALVES(s02, s03, 8), t2 = HALVES(s10, s11, 8);
            v16 t3 = HALVES(s12, s13, 8), t4 = HALVES(s20, s21, 8), t5 = HALVES(s22, s23, 8);
            v16 t6 = HALVES(s30, s31, 8), t7 = HALVES(s32, s33, 8);
            v16 u0 = HALVES(t0, t1, 4), u1 = HALVES(t2, t3, 4), u2 = HALVES(t4, t5, 4), u3 = HALVES(t6, t7, 4);
            v16 w0 = HALVES(u0, u1, 2), w1 = HALVES(u2, u3, 2);
            v16 z = HALVES(w0, w1, 1);
            float h[16];
            for (int l = 0; l < 16; l++) h[WHERE[l]] = z[l];
            for (int r = 0; r < mr; r++)
                for (int q = 0; q < nr; q++) c[(i0 + r) * ldc + j0 + q] += h[r * 4 + q];
        }
    }
}

/* nt_kernel in vectors of 8, for cores without AVX-512: each sum's 16
 * lanes as two vectors (lanes 0-7, then 8-15, in two passes over p), four
 * rows of A by two of B a block (8 sums in registers). Its last rounds,
 * lanes l + l+8 then HSUM8, are HALVES' tree, so every sum has nt_kernel's
 * bits. */
KERNEL static void nt_kernel8(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                              const float *b, int64_t ldb, float *c, int64_t ldc)
{
    if (k < 16) {
        conv_gemm_nt_short(m, n, k, a, lda, b, ldb, c, ldc, 0);
        return;
    }
    int64_t full = k / 16 * 16, last = k - 16;
    v8i tail[2];
    for (int l = 0; l < 16; l++) tail[l / 8][l % 8] = last + l >= full ? -1 : 0;
    for (int64_t i0 = 0; i0 < m; i0 += 4) {
        int64_t mr = m - i0 < 4 ? m - i0 : 4;
        const float *a0 = a + i0 * lda, *a1 = a0 + (mr > 1 ? lda : 0);
        const float *a2 = a0 + (mr > 2 ? 2 * lda : 0), *a3 = a0 + (mr > 3 ? 3 * lda : 0);
        for (int64_t j0 = 0; j0 < n; j0 += 2) {
            int64_t nr = n - j0 < 2 ? n - j0 : 2;
            const float *b0 = b + j0 * ldb, *b1 = b0 + (nr > 1 ? ldb : 0);
            v8 u[8];
            for (int h = 0; h < 2; h++) {
                v8 s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};
#define NT8_STEP(x0, x1, x2, x3, q)                                                                \
    do {                                                                                           \
        v8 y0 = LD8(b0 + (q)), y1 = LD8(b1 + (q));                                                 \
        s00 += x0 * y0;                                                                            \
        s01 += x0 * y1;                                                                            \
        s10 += x1 * y0;                                                                            \
        s11 += x1 * y1;                                                                            \
        s20 += x2 * y0;                                                                            \
        s21 += x2 * y1;                                                                            \
        s30 += x3 * y0;                                                                            \
        s31 += x3 * y1;                                                                            \
    } while (0)
                for (int64_t p = 8 * h; p < full; p += 16) {
                    v8 x0 = LD8(a0 + p), x1 = LD8(a1 + p), x2 = LD8(a2 + p), x3 = LD8(a3 + p);
                    NT8_STEP(x0, x1, x2, x3, p);
                }
                if (full < k) {
                    int64_t q = last + 8 * h;
                    v8i t = tail[h];
                    v8 x0 = (v8)((v8i)LD8(a0 + q) & t), x1 = (v8)((v8i)LD8(a1 + q) & t);
                    v8 x2 = (v8)((v8i)LD8(a2 + q) & t), x3 = (v8)((v8i)LD8(a3 + q) & t);
                    NT8_STEP(x0, x1, x2, x3, q);
                }
#undef NT8_STEP
                if (h == 0) {
                    u[0] = s00, u[1] = s01, u[2] = s10, u[3] = s11;
                    u[4] = s20, u[5] = s21, u[6] = s30, u[7] = s31;
                } else {
                    u[0] += s00, u[1] += s01, u[2] += s10, u[3] += s11;
                    u[4] += s20, u[5] += s21, u[6] += s30, u[7] += s31;
                }
            }
            for (int r = 0; r < mr; r++)
                for (int q = 0; q < nr; q++) c[(i0 + r) * ldc + j0 + q] += HSUM8(u[2 * r + q]);
        }
    }
}

void conv_gemm_nt(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0 || k <= 0) return;
    int which = kernels();
    if (which == K_WIDE16)
        nt_kernel(m, n, k, a, lda, b, ldb, c, ldc);
    else if (which == K_FMA8)
        conv_gemm_nt_fma(m, n, k, a, lda, b, ldb, c, ldc);
    else
        nt_kernel8(m, n, k, a, lda, b, ldb, c, ldc);
}
