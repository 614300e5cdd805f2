/* conv_internal.h - what conv.c shares with its kernel files (not public API). */
#ifndef LPS_CONV_INTERNAL_H
#define LPS_CONV_INTERNAL_H

#include "nn/nn_internal.h"
#include "nn/simd.h"

/* The layer's fields (conv2d.c): in, out, kernel, stride, padding, bias. */
#define CIN(l) FI(&(l)->cfg, 0)
#define COUT(l) FI(&(l)->cfg, 1)
#define KS(l) FI(&(l)->cfg, 2)
#define STRIDE(l) FI(&(l)->cfg, 3)
#define PAD(l) FI(&(l)->cfg, 4)
/* "bias": false leaves the layer with its weight alone. */
#define HAS_BIAS(l) ((l)->nparams > 1)

/* Scratch of each thread: slot CONV_PART holds its share of the weight and
 * bias gradients when a backward pass runs on several threads; the kernels
 * use the others as they like. shared: scratch all threads read. */
enum { CONV_NSLOTS = 6, CONV_PART = 5 };
typedef struct {
    lps_scratch s[LPS_PAR_MAX][CONV_NSLOTS];
    lps_scratch shared;
    float *zeros; /* cout zeros: the bias the kernels add when it has none */
} convpriv;

/* One forward or backward call, split over nt threads by samples. */
typedef struct {
    lps_layer *l;
    int64_t b, h, w, oh, ow; /* batch, input and output planes */
    const float *x, *gy;
    float *y, *gx;
    int nt;
} convjob;

/* A kernel family: prep runs first on the calling thread (it allocates every
 * thread's scratch and fails there, if anywhere); fwd and bwd then run on
 * samples [n0, n1) on thread t, bwd adding the weight gradients to
 * conv_gw / conv_gb; finish (may be NULL) runs last, on the calling thread. */
typedef struct {
    lps_status (*prep)(const convjob *j, int backward);
    void (*fwd)(const convjob *j, int t, int64_t n0, int64_t n1);
    void (*bwd)(const convjob *j, int t, int64_t n0, int64_t n1);
    void (*finish)(const convjob *j);
} convkernel;

/* Thread t's scratch slots, and where its weight gradients go (conv_gb:
 * NULL without a bias). conv_bias: the bias, zeros without one (one code
 * path in the kernels; x + 0 is x). */
lps_scratch *conv_slots(const convjob *j, int t);
float *conv_gw(const convjob *j, int t);
float *conv_gb(const convjob *j, int t);
const float *conv_bias(const lps_layer *l);


/* One sample's input, zero-padded and split into `stride` column phases
 * (conv_split.c): xs[ci][phase][r][c] = padded x[ci][r][c s + phase]. Then
 * the inputs of 8 neighbouring outputs at any kernel tap are 8 contiguous
 * floats: output (oh, ow) at tap (ki, kj) reads row oh s + ki of phase
 * kj % s at column ow + kj / s. Rows and columns have slack for an extra
 * output row and a vector past the end. */
typedef struct {
    int64_t cin, cout, k, s, pad, hp, wc, plane, taps;
    int64_t owp; /* output row length rounded up to 8 */
} convsplit;
void conv_split_geometry(const convjob *j, convsplit *g);
void conv_split_input(const float *x, const convjob *j, const convsplit *g, float *xs);
/* The plane of input gradients from the split layout (the inverse). */
void conv_unsplit(const float *xs, const convjob *j, const convsplit *g, float *x);

/* The deepest product (k) the nn kernels pack (each packs a block of A's
 * rows, k floats each, on the stack); conv_gemm_nn hands deeper ones to
 * BLAS, and conv_gemm_nn_fma must not be called with them. */
enum { CONV_GEMM_KMAX = 1024 };

/* Small matrix products (conv_gemm.c), row-major. conv_gemm_nn: C (m x n)
 * = A (m x k) B (k x n), A's element (i, p) at a[i ars + p acs] (so either
 * A or its transpose in place); needs ars or acs to be 1. ap: A as
 * conv_gemm_pack packed it (the same bits, without packing A again on
 * every call: a layer's weights for each sample), or NULL. conv_gemm_nt:
 * C (m x n) += A (m x k) B^T, B (n x k). Results depend on the shapes only. */
void conv_gemm_nn(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                  const float *ap, const float *b, int64_t ldb, float *c, int64_t ldc);
/* A (m x k, read as conv_gemm_nn reads it) packed for the nn kernels in
 * use, into conv_gemm_pack_floats(m, k) floats. Pack and product must run
 * under the same kernels (lps_set_conv_kernels between them is an error). */
int64_t conv_gemm_pack_floats(int64_t m, int64_t k);
void conv_gemm_pack(int64_t m, int64_t k, const float *a, int64_t ars, int64_t acs, float *ap);
void conv_gemm_nt(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float *c, int64_t ldc);
/* Their scalar paths (products narrower, sums shorter than a vector),
 * fused or not: conv_gemm_nn's and conv_gemm_nt's arguments. */
void conv_gemm_narrow(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                      const float *b, int64_t ldb, float *c, int64_t ldc, int fused);
void conv_gemm_nt_short(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float *c, int64_t ldc, int fused);
/* mr rows of A (as conv_gemm_nn reads it) packed column by column, w a
 * column: ap[p w + r] = a(r, p); rows mr .. w - 1 repeat the last (the
 * kernels drop their sums). */
void conv_pack_rows(float *ap, int w, const float *a, int64_t ars, int64_t acs, int64_t mr, int64_t k);
/* The same with fused multiply-adds, for cores with AVX2 and FMA
 * (conv_gemm_fma.c; conv_gemm_nn/nt call them where the "fma8" kernels run);
 * conv_gemm_nn_fma needs k <= CONV_GEMM_KMAX. */
void conv_gemm_nn_fma(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                      const float *pre, const float *b, int64_t ldb, float *c, int64_t ldc);
void conv_gemm_nt_fma(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                      int64_t ldb, float *c, int64_t ldc);

/* Direct, for few input values per output (cin k k small). */
extern const convkernel lps_conv_direct;
/* Winograd F(2x2, 3x3): 3x3 kernels at stride 1, any padding. */
extern const convkernel lps_conv_wino;

#endif
