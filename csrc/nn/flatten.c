/* flatten.c - (B, ...) -> (B, rest), channel-major as PyTorch's Flatten. */
#include "nn/nn_internal.h"

#include <stdio.h>
#include <string.h>

static lps_status flat_flow(const lps_arch_entry *e, lps_flow *f)
{
    (void)e;
    if (f->rank == 0) { /* an unknown input: unknown features */
        f->rank = 1;
        f->d[0] = LPS_ARCH_UNKNOWN;
        f->mult = 1;
        f->flat = 0;
        return LPS_OK;
    }
    if (f->rank == 1) return LPS_OK;
    memcpy(f->pre, f->d, sizeof f->pre);
    int64_t n = 1;
    for (int i = 0; i < f->rank; i++) {
        if (f->d[i] == LPS_ARCH_UNKNOWN) n = LPS_ARCH_UNKNOWN;
        else if (f->d[i] < 1) /* no layer gives an empty size: guard the division */
            return lps_flow_fail(f, LPS_ESHAPE, "%s from %s has an empty dimension", FSH(f->rank, f->d), f->from);
        else if (n != LPS_ARCH_UNKNOWN) {
            /* padding can grow sizes layer after layer: no overflow */
            if (n > ((int64_t)1 << 62) / f->d[i])
                return lps_flow_fail(f, LPS_ESHAPE, "%s from %s has more than 2^62 elements",
                                     FSH(f->rank, f->d), f->from);
            n *= f->d[i];
        }
    }
    /* a known channel count still tells that the features are a multiple of it */
    f->mult = n == LPS_ARCH_UNKNOWN && f->d[0] != LPS_ARCH_UNKNOWN ? f->d[0] : 1;
    f->flat = f->rank == 3;
    f->rank = 1;
    f->d[0] = n;
    return LPS_OK;
}

static lps_status flat_forward(lps_layer *l, const lps_tensor *x, lps_tensor *y)
{
    (void)l;
    if (x->numel && y->data != x->data) memcpy(y->data, x->data, (size_t)x->numel * sizeof(float));
    return LPS_OK;
}

static lps_status flat_backward(lps_layer *l, const lps_tensor *x, const lps_tensor *y,
                                const lps_tensor *gy, lps_tensor *gx)
{
    (void)l;
    (void)y;
    if (gx && x->numel && gx->data != gy->data)
        memcpy(gx->data, gy->data, (size_t)x->numel * sizeof(float));
    return LPS_OK;
}

static void flat_repr(const lps_arch_entry *e, char *buf, size_t n)
{
    (void)e;
    snprintf(buf, n, "Flatten()");
}

static const lps_field no_fields[] = {{NULL, 0, 0, 0, 0, 0}};

/* Channel c becomes a block of columns: a positive scale of c scales its block. */
const lps_layer_type lps_flatten_type = {
    .name = "flatten", .fields = no_fields, .flags = LPS_LT_CHANNELWISE, .flow = flat_flow,
    .forward = flat_forward, .backward = flat_backward, .repr = flat_repr};
