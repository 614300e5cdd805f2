/* avgpool2d.c - 2-D average pooling, two layer types with one kernel that
 * averages windows: avgpool2d (a kernel at a stride, no padding) and
 * adaptive_avgpool2d (PyTorch's windows for an output size: window i of n
 * inputs and m outputs covers floor(i n / m) .. ceil((i + 1) n / m) - 1;
 * output 1 is global average pooling). Planes are independent, so a split
 * over threads gives the same bits. */
#include "nn/nn_internal.h"
#include "nn/simd.h"

#include <stdio.h>
#include <string.h>

extern const lps_layer_type lps_adaptive_avgpool2d_type;

/* Window i of an axis of n inputs and m outputs: [*a, *b). */
static void window(const lps_layer *l, int64_t i, int64_t n, int64_t m, int64_t *a, int64_t *b)
{
    if (l->type == &lps_adaptive_avgpool2d_type) {
        *a = i * n / m;
        *b = ((i + 1) * n + m - 1) / m;
    } else {
        *a = i * FI(&l->cfg, 1);
        *b = *a + FI(&l->cfg, 0);
    }
}

/* o[0..n) = v, 8 floats a store. */
KERNEL static void fill(float *o, int64_t n, float v)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) ST8(o + i, BC8(v));
    for (; i < n; i++) o[i] = v;
}

/* Whether the one window of an output of 1 x 1 covers the whole h x w plane. */
static int is_global(const lps_layer *l, int64_t h, int64_t w)
{
    int64_t r0, r1, c0, c1;
    window(l, 0, h, 1, &r0, &r1);
    window(l, 0, w, 1, &c0, &c1);
    return r0 == 0 && r1 == h && c0 == 0 && c1 == w;
}

typedef struct {
    const lps_layer *l;
    int64_t planes, h, w, oh, ow;
    const float *x, *gy;
    float *y, *gx; /* forward: y; backward: gx */
} avgjob;

static void avg_part(void *ctx, int t, int nt)
{
    const avgjob *j = ctx;
    int64_t p0, p1, h = j->h, w = j->w;
    lps_par_range(j->planes, t, nt, &p0, &p1);
    /* global pooling's backward: every input gets its plane's g once; one
     * pass writing 0 + g, the sum the general loop forms (+0 for g = -0) */
    int global = j->gx && j->oh == 1 && j->ow == 1 && is_global(j->l, h, w);
    for (int64_t p = p0; p < p1; p++) {
        const float *xp = j->x + p * h * w;
        float *gxp = j->gx ? j->gx + p * h * w : NULL;
        if (global) {
            fill(gxp, h * w, 0.0f + j->gy[p] / (float)(h * w));
            continue;
        }
        if (gxp) memset(gxp, 0, (size_t)(h * w) * sizeof(float));
        for (int64_t oh = 0; oh < j->oh; oh++) {
            int64_t r0, r1, c0, c1;
            window(j->l, oh, h, j->oh, &r0, &r1);
            for (int64_t ow = 0; ow < j->ow; ow++) {
                window(j->l, ow, w, j->ow, &c0, &c1);
                int64_t o = (p * j->oh + oh) * j->ow + ow;
                float count = (float)((r1 - r0) * (c1 - c0));
                if (gxp) {
                    float g = j->gy[o] / count;
                    for (int64_t r = r0; r < r1; r++)
                        for (int64_t c = c0; c < c1; c++) gxp[r * w + c] += g;
                    continue;
                }
                float s = 0.0f;
                if (c0 == 0 && c1 == w) /* whole rows (global pooling): one run */
                    s = lps_sum_floats(xp + r0 * w, (r1 - r0) * w);
                else
                    for (int64_t r = r0; r < r1; r++)
                        for (int64_t c = c0; c < c1; c++) s += xp[r * w + c];
                j->y[o] = s / count;
            }
        }
    }
}

static void avg_run(const lps_layer *l, const lps_tensor *x, const lps_tensor *y, const lps_tensor *gy,
                    lps_tensor *gx)
{
    avgjob j = {l, x->shape[0] * x->shape[1], x->shape[2], x->shape[3], y->shape[2], y->shape[3],
                x->data, gy ? gy->data : NULL, gy ? NULL : y->data, gx ? gx->data : NULL};
    /* threads only for a large batch: waking one costs some microseconds */
    int nt = x->numel >= (1 << 18) ? lps_par_threads() : 1;
    lps_par_run(nt, avg_part, &j);
}

static lps_status avg_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    avg_run(l, x, y, NULL, NULL);
    return LPS_OK;
}

static lps_status avg_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                               const lps_tensor *gy, lps_tensor *gx)
{
    if (gx) avg_run(l, x, y, gy, gx);
    return LPS_OK;
}

static lps_status adaptive_flow(const lps_arch_entry *e, lps_flow *f)
{
    lps_status s = lps_flow_planes(f);
    if (s) return s;
    if (f->d[1] == 0 || f->d[2] == 0)
        return lps_flow_fail(f, LPS_ESHAPE, "needs a non-empty input but %s gives %s", f->from,
                             FSH(3, f->d));
    f->d[1] = f->d[2] = FI(e, 0);
    return LPS_OK;
}

static void avg_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    snprintf(buf, n, "AvgPool2d(kernel_size=%lld, stride=%lld, padding=0)", (long long)FI(e, 0),
             (long long)FI(e, 1));
}

static void adaptive_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    snprintf(buf, n, "AdaptiveAvgPool2d(output_size=%lld)", (long long)FI(e, 0));
}

static const lps_field avg_fields[] = {{"kernel", LPS_FIELD_INT, 1, 1024, LPS_REQUIRED, 0},
                                       {"stride", LPS_FIELD_INT, 1, 1024, LPS_DEF_FIRST, 0},
                                       {NULL, 0, 0, 0, 0, 0}};
static const lps_field adaptive_fields[] = {{"output", LPS_FIELD_INT, 1, 1024, LPS_REQUIRED, 0},
                                            {NULL, 0, 0, 0, 0, 0}};

/* A window mean commutes with a positive scale of its channel and acts on
 * each channel alike. */
const lps_layer_type lps_avgpool2d_type = {
    .name = "avgpool2d", .fields = avg_fields, .flags = LPS_LT_CHANNELWISE, .flow = lps_flow_window,
    .forward = avg_forward, .backward = avg_backward, .repr = avg_repr};

const lps_layer_type lps_adaptive_avgpool2d_type = {
    .name = "adaptive_avgpool2d", .fields = adaptive_fields, .flags = LPS_LT_CHANNELWISE,
    .flow = adaptive_flow, .forward = avg_forward, .backward = avg_backward, .repr = adaptive_repr};
