/* conv_gemm_fma.c - conv_gemm.c's products on cores with AVX2 and FMA
 * (conv_gemm.c picks them where HAS_FMA, simd.h, unless
 * lps_set_conv_kernels says otherwise). A fused multiply-add is one
 * instruction where conv_gemm.c's kernels spend two, so a register block
 * can hold 12 sums instead of 8 with room to spare: 4 rows by 24 columns
 * (nn), 4 rows by 3 (nt). Each output is still one fixed chain of fused
 * products whatever block computes it, so results depend on the shapes
 * only (and on the core having FMA: these bits differ from conv_gemm.c's). */
#include "nn/conv_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#define FMA_FN __attribute__((target("avx2,fma")))
#define FMA_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

FMA_INLINE v8 fma8(v8 a, v8 b, v8 c) { return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }

enum { MR = 4 };

/* Four packed rows of A (w) by nv vectors of B from column j0 (nv = 1 to
 * 3, a constant where inlined): 4 nv sums in registers. */
FMA_INLINE void nn_block(int nv, int64_t mr, int64_t k, const float *w, const float *b, int64_t ldb,
                         float *c, int64_t ldc)
{
    v8 s[MR][3] = {{{0}}};
    for (int64_t p = 0; p < k; p++, b += ldb, w += MR) {
        v8 x[3];
        _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) x[v] = LD8(b + 8 * v);
        _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++) {
            v8 wr = BC8(w[r]);
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) s[r][v] = fma8(x[v], wr, s[r][v]);
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++)
        if (r < mr)
            _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) ST8(c + r * ldc + 8 * v, s[r][v]);
}

FMA_FN void conv_gemm_nn_fma(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars,
                             int64_t acs, const float *pre, const float *b, int64_t ldb, float *c,
                             int64_t ldc)
{
    if (n < 16) {
        conv_gemm_narrow(m, n, k, a, ars, acs, b, ldb, c, ldc, 1);
        return;
    }
    float ap[MR * CONV_GEMM_KMAX]; /* k <= CONV_GEMM_KMAX: conv_gemm_nn checks */
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
        int64_t mr = m - i0 < MR ? m - i0 : MR;
        const float *wp = pre ? pre + i0 * k : ap;
        if (!pre) conv_pack_rows(ap, MR, a + i0 * ars, ars, acs, mr, k);
        float *cr = c + i0 * ldc;
        /* blocks of 24 columns, then the rest as one block of 24, 16 or 8
         * ending at n, overlapping the one before (the same sums again):
         * 49 columns (7x7 planes) cost 56, not 72 */
        int64_t j = 0;
        for (; j + 24 <= n; j += 24) nn_block(3, mr, k, wp, b + j, ldb, cr + j, ldc);
        int64_t rest = n - j;
        if (rest > 16 && n >= 24)
            nn_block(3, mr, k, wp, b + n - 24, ldb, cr + n - 24, ldc);
        else if (rest > 16) { /* 17 to 23 columns in all */
            nn_block(2, mr, k, wp, b, ldb, cr, ldc);
            nn_block(1, mr, k, wp, b + n - 8, ldb, cr + n - 8, ldc);
        } else if (rest > 8)
            nn_block(2, mr, k, wp, b + n - 16, ldb, cr + n - 16, ldc);
        else if (rest > 0)
            nn_block(1, mr, k, wp, b + n - 8, ldb, cr + n - 8, ldc);
    }
}

/* C += A B^T. Each sum runs in 8 lanes (lane l over p = l mod 8, in order,
 * fused); a last partial vector is read ending at k with the lanes already
 * counted masked to zero; then HSUM8. Sums shorter than a vector as
 * scalars. Four rows of A by nb (3, 2 or 1) of B a block. */
FMA_INLINE void nt_block(int nb, int64_t mr, int64_t k, const float *a, int64_t lda, const float *b,
                         int64_t ldb, v8i tail, float *c, int64_t ldc)
{
    int64_t full = k / 8 * 8, last = k - 8;
    const float *ar[MR], *br[3];
    _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++) ar[r] = a + (r < mr ? r : 0) * lda;
    _Pragma("GCC unroll 4") for (int q = 0; q < nb; q++) br[q] = b + q * ldb;
    v8 s[MR][3] = {{{0}}};
    for (int64_t p = 0; p < full; p += 8) {
        v8 y[3];
        _Pragma("GCC unroll 4") for (int q = 0; q < nb; q++) y[q] = LD8(br[q] + p);
        _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++) {
            v8 x = LD8(ar[r] + p);
            _Pragma("GCC unroll 4") for (int q = 0; q < nb; q++) s[r][q] = fma8(x, y[q], s[r][q]);
        }
    }
    if (full < k) {
        v8 y[3];
        _Pragma("GCC unroll 4") for (int q = 0; q < nb; q++) y[q] = LD8(br[q] + last);
        _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++) {
            v8 x = (v8)((v8i)LD8(ar[r] + last) & tail);
            _Pragma("GCC unroll 4") for (int q = 0; q < nb; q++) s[r][q] = fma8(x, y[q], s[r][q]);
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++)
        if (r < mr)
            _Pragma("GCC unroll 4") for (int q = 0; q < nb; q++) c[r * ldc + q] += HSUM8(s[r][q]);
}

FMA_FN void conv_gemm_nt_fma(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                             const float *b, int64_t ldb, float *c, int64_t ldc)
{
    if (k < 8) {
        conv_gemm_nt_short(m, n, k, a, lda, b, ldb, c, ldc, 1);
        return;
    }
    int64_t full = k / 8 * 8, last = k - 8;
    v8i tail;
    for (int l = 0; l < 8; l++) tail[l] = last + l >= full ? -1 : 0;
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
        int64_t mr = m - i0 < MR ? m - i0 : MR;
        const float *ai = a + i0 * lda;
        float *ci = c + i0 * ldc;
        int64_t j0 = 0;
        for (; j0 + 3 <= n; j0 += 3) nt_block(3, mr, k, ai, lda, b + j0 * ldb, ldb, tail, ci + j0, ldc);
        if (n - j0 == 2) nt_block(2, mr, k, ai, lda, b + j0 * ldb, ldb, tail, ci + j0, ldc);
        if (n - j0 == 1) nt_block(1, mr, k, ai, lda, b + j0 * ldb, ldb, tail, ci + j0, ldc);
    }
}
#else
/* no FMA build (HAS_FMA is 0): never called, but linked */
void conv_gemm_nn_fma(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                      const float *pre, const float *b, int64_t ldb, float *c, int64_t ldc)
{
    conv_gemm_nn(m, n, k, a, ars, acs, pre, b, ldb, c, ldc);
}
void conv_gemm_nt_fma(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                      int64_t ldb, float *c, int64_t ldc)
{
    conv_gemm_nt(m, n, k, a, lda, b, ldb, c, ldc);
}
#endif
