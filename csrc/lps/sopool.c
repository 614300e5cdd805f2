/* sopool.c - second-order (and first-order) pooling of unit embeddings:
 * a weighted sum over units, so invariant to their order and count. */
#include "core/internal.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

int64_t lps_sopool_size(int64_t d, lps_sopool_mode mode)
{
    return mode == LPS_SOPOOL_MEAN ? d : d * (d + 1) / 2;
}

static lps_status check(const char *op, const lps_tensor *out, int64_t off, const lps_tensor *Z,
                        const lps_tensor *w, const lps_sopool_opts *o)
{
    if (!o || (int)o->mode < LPS_SOPOOL_POWER || (int)o->mode > LPS_SOPOOL_MEAN)
        return lps_fail(LPS_EINVAL, "%s: unknown pooling mode", op);
    if (Z->ndim != 2 || Z->shape[0] < 1 || Z->shape[1] < 1)
        return lps_fail(LPS_ESHAPE, "%s: unit embeddings must be 2-D with at least one unit and one "
                        "feature, got %s", op, SH(Z));
    int64_t h = Z->shape[0], d = Z->shape[1], n = lps_sopool_size(d, o->mode);
    if (d > 1024) /* d x d work matrices; far beyond any useful width */
        return lps_fail(LPS_ESHAPE, "%s: embedding width %lld is above 1024", op, (long long)d);
    if (w->numel != h)
        return lps_fail(LPS_ESHAPE, "%s: weights %s need one entry per unit of %s", op, SH(w), SH(Z));
    for (int64_t j = 0; j < h; j++)
        if (!(w->data[j] >= 0.0f) || !isfinite(w->data[j]))
            return lps_fail(LPS_EINVAL, "%s: unit weight %lld is %g; weights must be finite and >= 0",
                            op, (long long)j + 1, (double)w->data[j]);
    if (off < 0 || off > out->numel || n > out->numel - off)
        return lps_fail(LPS_ERANGE, "%s: %lld values at offset %lld do not fit in %s", op,
                        (long long)n, (long long)off + 1, SH(out));
    if (o->mode == LPS_SOPOOL_POWER || o->mode == LPS_SOPOOL_SQRTM)
        if (!(o->eps > 0) || !isfinite(o->eps))
            return lps_fail(LPS_EINVAL, "%s: eps must be finite and > 0, got %g", op, (double)o->eps);
    if (o->mode == LPS_SOPOOL_SQRTM && (o->iters < 1 || o->iters > 50))
        return lps_fail(LPS_EINVAL, "%s: Newton-Schulz iterations must be 1..50, got %d", op, o->iters);
    return LPS_OK;
}

/* Weights scaled to sum 1 (uniform when they sum to 0). */
static void unit_weights(const lps_tensor *w, float *wn)
{
    int64_t h = w->numel;
    double s = 0;
    for (int64_t j = 0; j < h; j++) s += w->data[j];
    for (int64_t j = 0; j < h; j++) wn[j] = s > 0 ? (float)(w->data[j] / s) : (float)(1.0 / (double)h);
}

/* C = alpha op(A) op(B) + beta C for d x d matrices. */
static void mm(float *C, const float *A, int ta, const float *B, int tb, float alpha, float beta, int d)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, d, d,
                d, alpha, A, d, B, d, beta, C, d);
}

/* S = Z^T diag(wn) Z; scratch holds h*d floats. */
static void second_moment(float *S, const lps_tensor *Z, const float *wn, float *scratch)
{
    int64_t h = Z->shape[0], d = Z->shape[1];
    for (int64_t j = 0; j < h; j++)
        for (int64_t c = 0; c < d; c++) scratch[j * d + c] = wn[j] * Z->data[j * d + c];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d, (int)d, (int)h, 1.0f, Z->data,
                (int)d, scratch, (int)d, 0.0f, S, (int)d);
}

/* Newton-Schulz square root of Sp (d x d), scaled by nf = ||Sp||_F so the
 * iteration converges: A = Sp/nf, Y0 = A, Z0 = I, T_k = (3I - Z Y)/2,
 * Y_k = Y T_k, Z_k = T_k Z; sqrt(Sp) ~ sqrt(nf) Y_N. Ys, Zs hold iters+1
 * matrices and Ts iters (T_k at index k-1), all kept for the backward. */
static double newton_schulz(const float *Sp, int d, int iters, float *Ys, float *Zs, float *Ts)
{
    int64_t dd = (int64_t)d * d;
    double nf = 0;
    for (int64_t i = 0; i < dd; i++) nf += (double)Sp[i] * Sp[i];
    nf = sqrt(nf);
    for (int64_t i = 0; i < dd; i++) Ys[i] = (float)(Sp[i] / nf);
    memset(Zs, 0, (size_t)dd * sizeof(float));
    for (int i = 0; i < d; i++) Zs[(int64_t)i * d + i] = 1.0f;
    for (int k = 1; k <= iters; k++) {
        float *Yp = Ys + (k - 1) * dd, *Zp = Zs + (k - 1) * dd, *T = Ts + (k - 1) * dd;
        mm(T, Zp, 0, Yp, 0, -0.5f, 0.0f, d);
        for (int i = 0; i < d; i++) T[(int64_t)i * d + i] += 1.5f;
        mm(Ys + k * dd, Yp, 0, T, 0, 1.0f, 0.0f, d);
        mm(Zs + k * dd, T, 0, Zp, 0, 1.0f, 0.0f, d);
    }
    return nf;
}

typedef struct {
    float *wn, *scratch, *S, *Ys, *Zs, *Ts, *G, *dY, *dZ, *dT, *tmp;
} work;

static void work_free(work *w)
{
    float **p = (float **)w;
    for (size_t i = 0; i < sizeof *w / sizeof(float *); i++) lps_free_floats(p[i]);
}

static lps_status work_alloc(work *w, int64_t h, int64_t d, const lps_sopool_opts *o, int backward,
                             const char *op)
{
    memset(w, 0, sizeof *w);
    int64_t dd = d * d, it = o->mode == LPS_SOPOOL_SQRTM ? o->iters : 0;
    int ns = it > 0, bw = backward && ns;
    struct { float **p; int64_t n; } want[] = {
        {&w->wn, h}, {&w->scratch, h * d}, {&w->S, dd}, {&w->Ys, ns ? (it + 1) * dd : 0},
        {&w->Zs, ns ? (it + 1) * dd : 0}, {&w->Ts, ns ? it * dd : 0}, {&w->G, backward ? dd : 0},
        {&w->dY, bw ? dd : 0}, {&w->dZ, bw ? dd : 0}, {&w->dT, bw ? dd : 0}, {&w->tmp, bw ? dd : 0}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (want[i].n == 0) continue;
        *want[i].p = lps_alloc_floats(want[i].n, op);
        if (!*want[i].p) {
            work_free(w);
            return LPS_ENOMEM;
        }
    }
    return LPS_OK;
}

lps_status lps_sopool_forward(lps_tensor *out, int64_t off, const lps_tensor *Z,
                              const lps_tensor *w, const lps_sopool_opts *o)
{
    const char *op = "sopool_forward";
    lps_status s = check(op, out, off, Z, w, o);
    if (s) return s;
    int64_t h = Z->shape[0], d = Z->shape[1];
    float *dst = out->data + off;
    work k;
    if ((s = work_alloc(&k, h, d, o, 0, op))) return s;
    unit_weights(w, k.wn);
    if (o->mode == LPS_SOPOOL_MEAN) {
        for (int64_t c = 0; c < d; c++) dst[c] = 0.0f;
        for (int64_t j = 0; j < h; j++)
            for (int64_t c = 0; c < d; c++) dst[c] += k.wn[j] * Z->data[j * d + c];
        work_free(&k);
        return LPS_OK;
    }
    second_moment(k.S, Z, k.wn, k.scratch);
    const float *R = k.S; /* the normalized matrix whose upper triangle is written */
    float scale = 1.0f;
    if (o->mode == LPS_SOPOOL_SQRTM) {
        for (int64_t i = 0; i < d; i++) k.S[i * d + i] += o->eps;
        double nf = newton_schulz(k.S, (int)d, o->iters, k.Ys, k.Zs, k.Ts);
        R = k.Ys + (int64_t)o->iters * d * d;
        scale = (float)sqrt(nf);
    }
    float se = sqrtf(o->eps);
    int64_t n = 0;
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i; j < d; j++) {
            float v = R[i * d + j];
            if (o->mode == LPS_SOPOOL_POWER)
                v = v >= 0 ? sqrtf(v + o->eps) - se : -(sqrtf(-v + o->eps) - se);
            else
                v *= scale;
            dst[n++] = v;
        }
    work_free(&k);
    return LPS_OK;
}

/* Backward of the square root: from G = dL/d(sqrt(nf) Y_N) to dL/dSp in G. */
static void newton_schulz_backward(work *k, const float *Sp, int d, int iters)
{
    int64_t dd = (int64_t)d * d;
    double nf = 0;
    for (int64_t i = 0; i < dd; i++) nf += (double)Sp[i] * Sp[i];
    nf = sqrt(nf);
    float rn = (float)sqrt(nf);
    const float *YN = k->Ys + (int64_t)iters * dd;
    double dnf = 0;
    for (int64_t i = 0; i < dd; i++) {
        dnf += (double)k->G[i] * YN[i];
        k->dY[i] = rn * k->G[i];
    }
    dnf /= 2.0 * rn;
    memset(k->dZ, 0, (size_t)dd * sizeof(float));
    for (int it = iters; it >= 1; it--) {
        const float *Yp = k->Ys + (it - 1) * dd, *Zp = k->Zs + (it - 1) * dd, *T = k->Ts + (it - 1) * dd;
        /* Y_k = Y_{k-1} T_k, Z_k = T_k Z_{k-1}, T_k = 1.5 I - 0.5 Z_{k-1} Y_{k-1} */
        mm(k->dT, Yp, 1, k->dY, 0, 1.0f, 0.0f, d);
        mm(k->dT, k->dZ, 0, Zp, 1, 1.0f, 1.0f, d);
        mm(k->tmp, k->dY, 0, T, 1, 1.0f, 0.0f, d);          /* new dY */
        mm(k->tmp, Zp, 1, k->dT, 0, -0.5f, 1.0f, d);
        mm(k->dY, T, 1, k->dZ, 0, 1.0f, 0.0f, d);           /* new dZ, into dY's old space */
        mm(k->dY, k->dT, 0, Yp, 1, -0.5f, 1.0f, d);
        float *t = k->dZ;                                   /* rotate: dZ <- dY, dY <- tmp */
        k->dZ = k->dY;
        k->dY = k->tmp;
        k->tmp = t;
    }
    /* A = Sp / nf (dA = dY), nf = ||Sp||_F */
    double dot = 0;
    for (int64_t i = 0; i < dd; i++) dot += (double)k->dY[i] * Sp[i];
    dnf -= dot / (nf * nf);
    for (int64_t i = 0; i < dd; i++)
        k->G[i] = (float)(k->dY[i] / nf + dnf * Sp[i] / nf);
}

lps_status lps_sopool_backward(lps_tensor *dZ, const lps_tensor *dout, int64_t off,
                               const lps_tensor *Z, const lps_tensor *w, const lps_sopool_opts *o)
{
    const char *op = "sopool_backward";
    lps_status s = check(op, dout, off, Z, w, o);
    if (s) return s;
    if (!lps_same_shape(dZ, Z))
        return lps_fail(LPS_ESHAPE, "%s: gradient %s should match the unit embeddings %s", op, SH(dZ),
                        SH(Z));
    int64_t h = Z->shape[0], d = Z->shape[1], dd = d * d;
    const float *g = dout->data + off;
    work k;
    if ((s = work_alloc(&k, h, d, o, 1, op))) return s;
    unit_weights(w, k.wn);
    if (o->mode == LPS_SOPOOL_MEAN) {
        for (int64_t j = 0; j < h; j++)
            for (int64_t c = 0; c < d; c++) dZ->data[j * d + c] = k.wn[j] * g[c];
        work_free(&k);
        return LPS_OK;
    }
    second_moment(k.S, Z, k.wn, k.scratch);
    /* G = gradient w.r.t. the full normalized matrix (upper triangle only). */
    memset(k.G, 0, (size_t)dd * sizeof(float));
    int64_t n = 0;
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i; j < d; j++) {
            float v = g[n++];
            if (o->mode == LPS_SOPOOL_POWER) v *= 0.5f / sqrtf(fabsf(k.S[i * d + j]) + o->eps);
            k.G[i * d + j] = v;
        }
    if (o->mode == LPS_SOPOOL_SQRTM) {
        for (int64_t i = 0; i < d; i++) k.S[i * d + i] += o->eps;
        newton_schulz(k.S, (int)d, o->iters, k.Ys, k.Zs, k.Ts);
        newton_schulz_backward(&k, k.S, (int)d, o->iters);
    }
    /* S = Z^T diag(w) Z  =>  dZ = diag(w) Z (G + G^T) */
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = 0; j < d; j++) k.S[i * d + j] = k.G[i * d + j] + k.G[j * d + i];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)h, (int)d, (int)d, 1.0f, Z->data,
                (int)d, k.S, (int)d, 0.0f, dZ->data, (int)d);
    for (int64_t j = 0; j < h; j++)
        for (int64_t c = 0; c < d; c++) dZ->data[j * d + c] *= k.wn[j];
    work_free(&k);
    return LPS_OK;
}
