/* internal.h - helpers shared by the C core; not part of the public API. */
#ifndef LPS_INTERNAL_H
#define LPS_INTERNAL_H

#include "lualps.h"

/* 64-byte aligned allocation of n floats (NULL with an error set on failure). */
float *lps_alloc_floats(int64_t n, const char *op);
void lps_free_floats(float *p);

/* Short shape strings for error messages, e.g. SH(t) -> "(2x3)". */
#define LPS_SHAPE_BUF 64
#define SH(t) lps_shape_str((t), (char[LPS_SHAPE_BUF]){0}, LPS_SHAPE_BUF)

#endif
