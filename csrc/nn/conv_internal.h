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

/* Scratch of each thread: slot CONV_PART holds its share of the weight and
 * bias gradients when a backward pass runs on several threads; the kernels
 * use the others as they like. shared: scratch all threads read. */
enum { CONV_NSLOTS = 6, CONV_PART = 5 };
typedef struct {
    lps_scratch s[LPS_PAR_MAX][CONV_NSLOTS];
    lps_scratch shared;
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

/* Thread t's scratch slots, and where its weight gradients go. */
lps_scratch *conv_slots(const convjob *j, int t);
float *conv_gw(const convjob *j, int t);
float *conv_gb(const convjob *j, int t);

/* Direct, for few input values per output (cin k k small). */
extern const convkernel lps_conv_direct;
int lps_direct_applies(const lps_layer *l);
/* Winograd F(2x2, 3x3): 3x3 kernels at stride 1, any padding. */
extern const convkernel lps_conv_wino;
int lps_wino_applies(const lps_layer *l);

#endif
