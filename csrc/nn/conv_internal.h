/* conv_internal.h - what conv.c shares with its kernel files (not public API). */
#ifndef LPS_CONV_INTERNAL_H
#define LPS_CONV_INTERNAL_H

#include "nn/nn_internal.h"

/* Layer config: cin, cout, kernel, stride, padding (l->cfg). */
#define CIN cfg[0]
#define COUT cfg[1]
#define KS cfg[2]
#define STRIDE cfg[3]
#define PAD cfg[4]

#define CONV_NSCRATCH 6
typedef struct {
    lps_scratch s[CONV_NSCRATCH];
} convpriv;

/* Sizes of one call: batch, input and output planes. */
typedef struct {
    int64_t b, h, w, oh, ow;
} convdims;

/* Direct, for few input values per output (cin k k small). */
int lps_direct_applies(const lps_layer *l);
lps_status lps_direct_forward(lps_layer *l, const convdims *d, const float *x, float *y);
lps_status lps_direct_backward(lps_layer *l, const convdims *d, const float *x, const float *gy,
                               float *gx);

/* Winograd F(2x2, 3x3): 3x3 kernels at stride 1, any padding. */
int lps_wino_applies(const lps_layer *l);
lps_status lps_wino_forward(lps_layer *l, const convdims *d, const float *x, float *y);
lps_status lps_wino_backward(lps_layer *l, const convdims *d, const float *x, const float *gy,
                             float *gx);

#endif
