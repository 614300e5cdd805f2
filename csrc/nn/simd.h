/* simd.h - vectors for the layer kernels (GCC/Clang vector extensions; not
 * public API). */
#ifndef LPS_SIMD_H
#define LPS_SIMD_H

#include <stdint.h>

/* Vectors of 8 floats (GCC/Clang vector extensions): kernels written on
 * them and marked KERNEL are built twice, for AVX2 and for the baseline
 * (two SSE halves); each lane does the same operations either way, so both
 * builds give the same bits. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias)); /* unaligned access */
typedef int32_t v8i __attribute__((vector_size(32)));
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KERNEL __attribute__((target_clones("avx2", "default")))
/* Kernels on vectors of 16 (v16 below), built a third time for AVX-512,
 * where a core with full-width units does twice the work of AVX2 a cycle
 * (separate multiply and add units: no FMA needed). The same operations in
 * every lane of every build, so the same bits. */
#define KERNEL16 __attribute__((target_clones("avx512f", "avx2", "default")))
/* Whether the core runs AVX-512, where the 16-float kernels are worth it;
 * elsewhere their 16 sums overflow AVX2's 16 registers and 8-float ones run. */
#define WIDE16 __builtin_cpu_supports("avx512f")
/* Whether the core fuses multiply and add (conv_gemm_fma.c's products; their
 * bits differ from the unfused kernels', so results depend on this too). */
#define HAS_FMA (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
/* Built again for FMA cores, where fmaf is one instruction (a call else). */
#define FMA_CLONE __attribute__((target_clones("fma", "default")))
#else
#define KERNEL
#define KERNEL16
#define WIDE16 0
#define HAS_FMA 0
#define FMA_CLONE
#endif
/* Lane shuffles of two vectors (exact: any compiler gives the same bits).
 * __builtin_shufflevector takes constant indices in GCC >= 12 and Clang. */
#define EVEN8(a, b) __builtin_shufflevector((a), (b), 0, 2, 4, 6, 8, 10, 12, 14)
#define ODD8(a, b) __builtin_shufflevector((a), (b), 1, 3, 5, 7, 9, 11, 13, 15)
#define ZIPLO8(a, b) __builtin_shufflevector((a), (b), 0, 8, 1, 9, 2, 10, 3, 11)
#define ZIPHI8(a, b) __builtin_shufflevector((a), (b), 4, 12, 5, 13, 6, 14, 7, 15)
#define LD8(p) (*(const v8u *)(p))
#define ST8(p, v) (*(v8u *)(p) = (v))
#define BC8(f) ((v8){(f), (f), (f), (f), (f), (f), (f), (f)})
/* max(0, v) lane by lane as relu.c computes it: negative lanes to +0, -0
 * and NaN kept (SSE's max(0, v) returns v for those) */
#define RELU8(v) ((v8)((v8i)(v) & ~(v8i)((v) < BC8(0.0f))))
/* sum of the lanes in a fixed order */
#define HSUM8(v) ((((v)[0] + (v)[4]) + ((v)[2] + (v)[6])) + (((v)[1] + (v)[5]) + ((v)[3] + (v)[7])))
/* Vectors of 16 floats, for KERNEL16 functions (never passed between
 * functions: their ABI differs between the builds). */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t v16i __attribute__((vector_size(64)));
#define LD16(p) (*(const v16u *)(p))
#define ST16(p, v) (*(v16u *)(p) = (v))
/* 4 doubles (a float vector's halves converted): sums in double keep
 * their lanes' order too. */
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v4fu __attribute__((vector_size(16), aligned(4), may_alias));
typedef int32_t v4i __attribute__((vector_size(16)));
/* Four floats at p, or of a v4f, in double: written lane by lane, which
 * GCC 12 turns into one vcvtps2pd to 4 doubles (its __builtin_convertvector
 * converts two halves and joins them, through the stack in the kernels). */
#define LD4D(p) ((v4d){(p)[0], (p)[1], (p)[2], (p)[3]})
#define CVT4D(v) ((v4d){(v)[0], (v)[1], (v)[2], (v)[3]})

#endif
