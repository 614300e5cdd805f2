/* units.c - conv and linear networks seen as layers of units: chain
 * normalization, unit importance, the mixing matrices that carry unit
 * embeddings from layer to layer, and first-layer kernel features. */
#include "core/internal.h"

#include <math.h>
#include <string.h>

static int is_conv(const lps_tensor *w) { return w->ndim == 4; }
static int64_t units(const lps_tensor *w) { return w->shape[0]; }
/* Inputs of one unit of layer l (its fan-in): cin*k*k or in. */
static int64_t fan_in(const lps_tensor *w) { return w->numel / w->shape[0]; }
/* Input channels (units of the previous layer) that a unit reads. */
static int64_t in_units(const lps_tensor *w, int64_t hw) { return is_conv(w) ? w->shape[1] : w->shape[1] / hw; }
/* Weights from one input unit to one output unit: k*k or hw. */
static int64_t slice(const lps_tensor *w, int64_t hw) { return is_conv(w) ? w->shape[2] * w->shape[3] : hw; }

/* A view of the tensors (the structure is in their shapes). */
typedef struct {
    int nlayers;
    lps_tensor *const *W, *const *b;
} view;

/* Inputs of layer l per unit of layer l-1: h*w positions for the first
 * linear layer after conv layers (0 when they do not divide), else 1. */
static int64_t positions(const view *v, int l)
{
    const lps_tensor *w = v->W[l], *p = l > 0 ? v->W[l - 1] : NULL;
    if (is_conv(w) || !p || !is_conv(p) || w->ndim != 2) return 1;
    return w->shape[1] % units(p) == 0 ? w->shape[1] / units(p) : 0;
}

static lps_status check(const char *op, const view *v)
{
    if (v->nlayers < 1) return lps_fail(LPS_EINVAL, "%s: need at least 1 layer, got %d", op, v->nlayers);
    int seen_linear = 0;
    for (int l = 0; l < v->nlayers; l++) {
        const lps_tensor *w = v->W[l], *b = v->b[l];
        if (!w || !b) return lps_fail(LPS_EINVAL, "%s: layer %d is missing", op, l + 1);
        if (w->ndim != 2 && w->ndim != 4)
            return lps_fail(LPS_ESHAPE, "%s: weight %d must be 2-D (linear) or 4-D (conv), got %s", op,
                            l + 1, SH(w));
        if (is_conv(w) && seen_linear)
            return lps_fail(LPS_ESHAPE, "%s: conv weight %d %s follows a linear layer", op, l + 1, SH(w));
        seen_linear |= !is_conv(w);
        if (w->shape[0] < 1 || fan_in(w) < 1)
            return lps_fail(LPS_ESHAPE, "%s: weight %d %s is empty", op, l + 1, SH(w));
        if (b->numel != units(w))
            return lps_fail(LPS_ESHAPE, "%s: bias %d %s does not match weight %d %s", op, l + 1, SH(b),
                            l + 1, SH(w));
        if (l > 0 && !v->W[l - 1]) return lps_fail(LPS_EINVAL, "%s: layer %d is missing", op, l);
        int64_t hw = positions(v, l);
        if (hw < 1)
            return lps_fail(LPS_ESHAPE, "%s: weight %d %s does not read whole maps of the %lld channels "
                            "of layer %d", op, l + 1, SH(w), (long long)units(v->W[l - 1]), l);
        if (l > 0 && in_units(w, hw) != units(v->W[l - 1]))
            return lps_fail(LPS_ESHAPE, "%s: weight %d %s does not take the %lld units of layer %d%s", op,
                            l + 1, SH(w), (long long)units(v->W[l - 1]), l,
                            hw > 1 ? " (times its positions)" : "");
        for (int k = 0; k < 2; k++) {
            const lps_tensor *t = k ? b : w;
            for (int64_t i = 0; i < t->numel; i++)
                if (!isfinite(t->data[i]))
                    return lps_fail(LPS_ENUMERIC, "%s: %s %d has a non-finite entry at %lld", op,
                                    k ? "bias" : "weight", l + 1, (long long)i + 1);
        }
    }
    return LPS_OK;
}

/* Multiply the outgoing weights of unit j of layer l by f. */
static void scale_outgoing(const view *v, int l, int64_t j, float f)
{
    const lps_tensor *nx = v->W[l + 1];
    int64_t hw = positions(v, l + 1);
    int64_t s = slice(nx, hw), rows = units(nx), row = fan_in(nx);
    for (int64_t r = 0; r < rows; r++) {
        float *p = nx->data + r * row + j * s;
        for (int64_t q = 0; q < s; q++) p[q] *= f;
    }
}

lps_status lps_units_check(const char *op, int nlayers, lps_tensor *const *W, lps_tensor *const *b)
{
    view v = {nlayers, W, b};
    return check(op, &v);
}

lps_status lps_chain_normalize_units(int nlayers, lps_tensor *const *W, lps_tensor *const *b,
                                     float eps)
{
    view vv = {nlayers, W, b}, *v = &vv;
    lps_status st = check("chain_normalize", v);
    if (st) return st;
    if (!(eps >= 0)) return lps_fail(LPS_EINVAL, "chain_normalize: eps must be >= 0, got %g", eps);
    /* Layer by layer: the outgoing multiplication changes the next layer's
     * incoming weights before they are normalized in turn. */
    for (int l = 0; l + 1 < v->nlayers; l++) {
        const lps_tensor *w = v->W[l];
        int64_t h = units(w), in = fan_in(w);
        for (int64_t j = 0; j < h; j++) {
            float *row = w->data + j * in;
            double ss = (double)v->b[l]->data[j] * v->b[l]->data[j];
            for (int64_t k = 0; k < in; k++) ss += (double)row[k] * row[k];
            double n = sqrt(ss);
            if (!(n > eps)) continue;
            float nf = (float)n;
            for (int64_t k = 0; k < in; k++) row[k] /= nf;
            v->b[l]->data[j] /= nf;
            scale_outgoing(v, l, j, nf);
        }
    }
    return LPS_OK;
}

lps_status lps_units_importance(lps_tensor *out, int nlayers, lps_tensor *const *W,
                                lps_tensor *const *b, int l)
{
    view vv = {nlayers, W, b}, *v = &vv;
    lps_status st = check("units_importance", v);
    if (st) return st;
    if (l < 0 || l + 1 >= v->nlayers)
        return lps_fail(LPS_ERANGE, "units_importance: layer %d has no outgoing weights (1..%d)", l + 1,
                        v->nlayers - 1);
    int64_t h = units(v->W[l]);
    if (out->numel != h)
        return lps_fail(LPS_ESHAPE, "units_importance: out %s should have %lld entries", SH(out), (long long)h);
    const lps_tensor *nx = v->W[l + 1];
    int64_t hw = positions(v, l + 1), s = slice(nx, hw), row = fan_in(nx);
    for (int64_t j = 0; j < h; j++) {
        double ss = 0;
        for (int64_t r = 0; r < units(nx); r++) {
            const float *p = nx->data + r * row + j * s;
            for (int64_t q = 0; q < s; q++) ss += (double)p[q] * p[q];
        }
        out->data[j] = (float)sqrt(ss);
    }
    return LPS_OK;
}

lps_status lps_units_mixing(lps_tensor *out, int nlayers, lps_tensor *const *W,
                            lps_tensor *const *b, int l)
{
    view vv = {nlayers, W, b}, *v = &vv;
    lps_status st = check("units_mixing", v);
    if (st) return st;
    if (l < 1 || l >= v->nlayers)
        return lps_fail(LPS_ERANGE, "units_mixing: layer %d has no previous layer (2..%d)", l + 1, v->nlayers);
    const lps_tensor *w = v->W[l];
    int64_t hw = positions(v, l), s = slice(w, hw), h = units(w), hp = in_units(w, hw);
    if (out->ndim != 2 || out->shape[0] != h || out->shape[1] != hp)
        return lps_fail(LPS_ESHAPE, "units_mixing: out %s should be (%lldx%lld)", SH(out), (long long)h,
                        (long long)hp);
    for (int64_t j = 0; j < h; j++)
        for (int64_t i = 0; i < hp; i++) {
            const float *p = w->data + j * fan_in(w) + i * s;
            double sum = 0;
            for (int64_t q = 0; q < s; q++) sum += p[q];
            out->data[j * hp + i] = (float)sum;
        }
    return LPS_OK;
}

lps_status lps_conv_unit_features(lps_tensor *out, const lps_tensor *W, int64_t s)
{
    if (W->ndim != 4 || W->shape[2] != W->shape[3])
        return lps_fail(LPS_ESHAPE, "conv_unit_features: needs square conv kernels (cout x cin x k x k), got %s",
                        SH(W));
    int64_t cout = W->shape[0], cin = W->shape[1], k = W->shape[2];
    if (k > s || k % 2 == 0 || s % 2 == 0)
        return lps_fail(LPS_ESHAPE, "conv_unit_features: a %lldx%lld kernel does not centre in %lldx%lld "
                        "(both odd, kernel not larger)", (long long)k, (long long)k, (long long)s, (long long)s);
    if (out->ndim != 2 || out->shape[0] != cout || out->shape[1] != cin * s * s)
        return lps_fail(LPS_ESHAPE, "conv_unit_features: out %s should be (%lldx%lld)", SH(out), (long long)cout,
                        (long long)(cin * s * s));
    memset(out->data, 0, sizeof(float) * (size_t)out->numel);
    int64_t off = (s - k) / 2;
    for (int64_t o = 0; o < cout; o++)
        for (int64_t c = 0; c < cin; c++)
            for (int64_t r = 0; r < k; r++)
                for (int64_t q = 0; q < k; q++)
                    out->data[(o * cin + c) * s * s + (r + off) * s + q + off] =
                        W->data[((o * cin + c) * k + r) * k + q];
    return LPS_OK;
}
