/* metric_loss.c - the embedding head (projection + L2 normalization) and the
 * losses that train it: softmax cross-entropy over tasks, batch-hard triplet. */
#include "core/internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NORM_FLOOR 1e-12

lps_status lps_embed_forward(lps_tensor *Y, lps_tensor *U, const lps_tensor *F,
                             const lps_tensor *P, const lps_tensor *p)
{
    if (F->ndim != 2 || P->ndim != 2 || F->shape[1] != P->shape[1])
        return lps_fail(LPS_ESHAPE, "embed_forward: features %s and projection %s do not fit", SH(F),
                        SH(P));
    int64_t B = F->shape[0], e = P->shape[0];
    if (p->numel != e)
        return lps_fail(LPS_ESHAPE, "embed_forward: bias %s should have %lld entries", SH(p), (long long)e);
    if (Y->ndim != 2 || Y->shape[0] != B || Y->shape[1] != e || !lps_same_shape(U, Y))
        return lps_fail(LPS_ESHAPE, "embed_forward: outputs %s and %s should be (%lldx%lld)", SH(Y),
                        SH(U), (long long)B, (long long)e);
    lps_status s = lps_matmul(U, F, 0, P, 1, 1.0f, 0.0f);
    if (s) return s;
    for (int64_t b = 0; b < B; b++) {
        float *u = U->data + b * e, *y = Y->data + b * e;
        double ss = 0;
        for (int64_t c = 0; c < e; c++) {
            u[c] += p->data[c];
            ss += (double)u[c] * u[c];
        }
        double r = fmax(sqrt(ss), NORM_FLOOR);
        for (int64_t c = 0; c < e; c++) y[c] = (float)(u[c] / r);
    }
    return LPS_OK;
}

lps_status lps_embed_backward(lps_tensor *dF, lps_tensor *dP, lps_tensor *dp,
                              const lps_tensor *dY, const lps_tensor *U, const lps_tensor *F,
                              const lps_tensor *P)
{
    const char *op = "embed_backward";
    if (F->ndim != 2 || P->ndim != 2 || U->ndim != 2 || F->shape[1] != P->shape[1] ||
        U->shape[0] != F->shape[0] || U->shape[1] != P->shape[0])
        return lps_fail(LPS_ESHAPE, "%s: features %s, projection %s and saved output %s do not fit",
                        op, SH(F), SH(P), SH(U));
    int64_t B = U->shape[0], e = U->shape[1];
    if (!lps_same_shape(dY, U) || !lps_same_shape(dP, P) || dp->numel != e)
        return lps_fail(LPS_ESHAPE, "%s: gradients %s, %s, %s do not match %s, %s", op, SH(dY), SH(dP),
                        SH(dp), SH(U), SH(P));
    if (dF && !lps_same_shape(dF, F))
        return lps_fail(LPS_ESHAPE, "%s: input gradient %s should match %s", op, SH(dF), SH(F));
    int64_t shp[2] = {B, e};
    lps_tensor *dU = lps_tensor_empty(2, shp);
    if (!dU) return LPS_ENOMEM;
    /* y = u / r  =>  du = (dy - y (y . dy)) / r */
    for (int64_t b = 0; b < B; b++) {
        const float *u = U->data + b * e, *g = dY->data + b * e;
        float *du = dU->data + b * e;
        double ss = 0, dot = 0;
        for (int64_t c = 0; c < e; c++) ss += (double)u[c] * u[c];
        double r = fmax(sqrt(ss), NORM_FLOOR);
        for (int64_t c = 0; c < e; c++) dot += (double)u[c] * g[c];
        dot /= r;
        for (int64_t c = 0; c < e; c++) {
            du[c] = (float)((g[c] - u[c] / r * dot) / r);
            dp->data[c] += du[c];
        }
    }
    lps_status s = lps_matmul(dP, dU, 1, F, 0, 1.0f, 1.0f);
    if (!s && dF) s = lps_matmul(dF, dU, 0, P, 0, 1.0f, 0.0f);
    lps_tensor_free(dU);
    return s;
}

lps_status lps_embed_xent(double *loss, int64_t *correct, lps_tensor *dY, lps_tensor *dC,
                          lps_tensor *dc, const lps_tensor *Y, const lps_tensor *C,
                          const lps_tensor *c, const int64_t *labels, float scale, int cosine)
{
    const char *op = "embed_xent";
    if (Y->ndim != 2 || C->ndim != 2 || Y->shape[1] != C->shape[1])
        return lps_fail(LPS_ESHAPE, "%s: embeddings %s and classifier %s do not fit", op, SH(Y), SH(C));
    int64_t B = Y->shape[0], e = Y->shape[1], T = C->shape[0];
    if (B < 1 || T < 1)
        return lps_fail(LPS_ESHAPE, "%s: need at least one embedding and one class, got %s and %s", op,
                        SH(Y), SH(C));
    if ((c && c->numel != T) || (dc && dc->numel != T))
        return lps_fail(LPS_ESHAPE, "%s: classifier bias and its gradient need %lld entries", op,
                        (long long)T);
    if ((dY && !lps_same_shape(dY, Y)) || (dC && !lps_same_shape(dC, C)))
        return lps_fail(LPS_ESHAPE, "%s: gradients should match %s and %s", op, SH(Y), SH(C));
    if (!isfinite(scale) || !(scale > 0))
        return lps_fail(LPS_EINVAL, "%s: scale must be finite and > 0, got %g", op, (double)scale);
    for (int64_t b = 0; b < B; b++)
        if (labels[b] < 0 || labels[b] >= T)
            return lps_fail(LPS_ERANGE, "%s: label %lld of item %lld out of range 1..%lld", op,
                            (long long)labels[b] + 1, (long long)b + 1, (long long)T);
    int64_t shc[2] = {T, e}, shl[2] = {B, T};
    lps_tensor *Cn = lps_tensor_clone(C), *L = lps_tensor_empty(2, shl), *dCn = NULL;
    float *rn = lps_alloc_floats(T, op);
    lps_status s = (Cn && L && rn) ? LPS_OK : LPS_ENOMEM;
    if (!s && dC && !(dCn = lps_tensor_new(2, shc))) s = LPS_ENOMEM;
    if (s) goto done;
    for (int64_t t = 0; t < T; t++) { /* cosine head: unit rows, remember 1/||C_t|| */
        double ss = 0;
        for (int64_t k = 0; k < e; k++) ss += (double)C->data[t * e + k] * C->data[t * e + k];
        rn[t] = cosine ? (float)(1.0 / fmax(sqrt(ss), NORM_FLOOR)) : 1.0f;
        for (int64_t k = 0; k < e; k++) Cn->data[t * e + k] *= rn[t];
    }
    if ((s = lps_matmul(L, Y, 0, Cn, 1, scale, 0.0f))) goto done;
    double total = 0;
    int64_t hits = 0;
    for (int64_t b = 0; b < B; b++) { /* logits -> softmax - onehot, scaled by 1/B */
        float *z = L->data + b * T;
        int64_t best = 0;
        double mx = -INFINITY, se = 0;
        for (int64_t t = 0; t < T; t++) {
            if (c) z[t] += scale * c->data[t];
            if (z[t] > z[best]) best = t;
            if (z[t] > mx) mx = z[t];
        }
        for (int64_t t = 0; t < T; t++) se += exp((double)z[t] - mx);
        total += mx + log(se) - z[labels[b]];
        hits += best == labels[b];
        for (int64_t t = 0; t < T; t++)
            z[t] = (float)((exp((double)z[t] - mx) / se - (t == labels[b])) / (double)B);
    }
    if (!isfinite(total)) {
        s = lps_fail(LPS_ENUMERIC, "%s: the loss is not finite (non-finite embeddings or classifier?)", op);
        goto done;
    }
    *loss = total / (double)B;
    if (correct) *correct = hits;
    if (dY && (s = lps_matmul(dY, L, 0, Cn, 0, scale, 0.0f))) goto done;
    if (dc)
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++) dc->data[t] += scale * L->data[b * T + t];
    if (dC) {
        if ((s = lps_matmul(dCn, L, 1, Y, 0, scale, 0.0f))) goto done;
        for (int64_t t = 0; t < T; t++) { /* through the row normalization */
            const float *cn = Cn->data + t * e, *g = dCn->data + t * e;
            double dot = 0;
            if (cosine)
                for (int64_t k = 0; k < e; k++) dot += (double)cn[k] * g[k];
            for (int64_t k = 0; k < e; k++)
                dC->data[t * e + k] += (float)((g[k] - cn[k] * dot) * rn[t]);
        }
    }
done:
    lps_tensor_free(Cn);
    lps_tensor_free(L);
    lps_tensor_free(dCn);
    lps_free_floats(rn);
    return s;
}

static double dist(const float *a, const float *b, int64_t e, lps_dist metric)
{
    double acc = 0;
    if (metric == LPS_DIST_COSINE) {
        for (int64_t k = 0; k < e; k++) acc += (double)a[k] * b[k];
        return 1.0 - acc;
    }
    for (int64_t k = 0; k < e; k++) acc += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
    return sqrt(acc + NORM_FLOOR);
}

/* Add g * d(dist(a, b))/da to ga and the b part to gb. */
static void dist_grad(float *ga, float *gb, const float *a, const float *b, int64_t e,
                      lps_dist metric, double g)
{
    if (metric == LPS_DIST_COSINE) {
        for (int64_t k = 0; k < e; k++) {
            ga[k] -= (float)(g * b[k]);
            gb[k] -= (float)(g * a[k]);
        }
        return;
    }
    double dd = dist(a, b, e, metric);
    for (int64_t k = 0; k < e; k++) {
        float v = (float)(g * ((double)a[k] - b[k]) / dd);
        ga[k] += v;
        gb[k] -= v;
    }
}

lps_status lps_triplet_hard(double *loss, int64_t *valid, int64_t *active, lps_tensor *dY,
                            const lps_tensor *Y, const int64_t *labels, float margin,
                            lps_dist metric)
{
    const char *op = "triplet_hard";
    if (Y->ndim != 2)
        return lps_fail(LPS_ESHAPE, "%s: embeddings must be 2-D, got %s", op, SH(Y));
    if (dY && !lps_same_shape(dY, Y))
        return lps_fail(LPS_ESHAPE, "%s: gradient %s should match %s", op, SH(dY), SH(Y));
    if (!isfinite(margin) || margin < 0)
        return lps_fail(LPS_EINVAL, "%s: margin must be finite and >= 0, got %g", op, (double)margin);
    if (metric != LPS_DIST_COSINE && metric != LPS_DIST_EUCLID)
        return lps_fail(LPS_EINVAL, "%s: unknown distance", op);
    int64_t B = Y->shape[0], e = Y->shape[1];
    if (B > 8192) /* a B x B distance matrix */
        return lps_fail(LPS_ESHAPE, "%s: batch of %lld is too large (limit 8192)", op, (long long)B);
    double *D = B ? malloc((size_t)(B * B) * sizeof(double)) : NULL;
    if (B && !D) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %lld distances", op, (long long)(B * B));
    for (int64_t i = 0; i < B; i++)
        for (int64_t j = 0; j < B; j++)
            D[i * B + j] = dist(Y->data + i * e, Y->data + j * e, e, metric);
    if (dY) lps_fill(dY, 0.0f);
    double total = 0;
    int64_t nvalid = 0, nactive = 0;
    /* First pass counts the anchors (the mean's denominator); second adds gradients. */
    for (int pass = 0; pass < 2; pass++)
        for (int64_t a = 0; a < B; a++) {
            int64_t p = -1, n = -1;
            for (int64_t j = 0; j < B; j++) {
                if (j == a) continue;
                if (labels[j] == labels[a]) {
                    if (p < 0 || D[a * B + j] > D[a * B + p]) p = j;
                } else if (n < 0 || D[a * B + j] < D[a * B + n]) {
                    n = j;
                }
            }
            if (p < 0 || n < 0) continue;
            if (pass == 0) {
                nvalid++;
                continue;
            }
            double hinge = margin + D[a * B + p] - D[a * B + n];
            if (hinge <= 0) continue;
            total += hinge;
            nactive++;
            if (!dY) continue;
            float *ga = dY->data + a * e;
            const float *ya = Y->data + a * e;
            dist_grad(ga, dY->data + p * e, ya, Y->data + p * e, e, metric, 1.0 / (double)nvalid);
            dist_grad(ga, dY->data + n * e, ya, Y->data + n * e, e, metric, -1.0 / (double)nvalid);
        }
    free(D);
    *loss = nvalid ? total / (double)nvalid : 0.0;
    if (valid) *valid = nvalid;
    if (active) *active = nactive;
    if (!isfinite(*loss))
        return lps_fail(LPS_ENUMERIC, "%s: the loss is not finite (non-finite embeddings?)", op);
    return LPS_OK;
}

lps_status lps_pair_regression(double *loss, int64_t *npairs, lps_tensor *dY, const lps_tensor *Y,
                               const int64_t *labels, const lps_tensor *T)
{
    const char *op = "pair_regression";
    if (Y->ndim != 2 || Y->shape[0] < 2)
        return lps_fail(LPS_ESHAPE, "%s: need at least two embeddings (B x e), got %s", op, SH(Y));
    if (T->ndim != 2 || T->shape[0] != T->shape[1])
        return lps_fail(LPS_ESHAPE, "%s: targets must be a square (n x n) matrix, got %s", op, SH(T));
    if (dY && !lps_same_shape(dY, Y))
        return lps_fail(LPS_ESHAPE, "%s: gradient %s should match %s", op, SH(dY), SH(Y));
    int64_t B = Y->shape[0], e = Y->shape[1], n = T->shape[0];
    for (int64_t b = 0; b < B; b++)
        if (labels[b] < 0 || labels[b] >= n)
            return lps_fail(LPS_ERANGE, "%s: label %lld of item %lld out of range 1..%lld", op,
                            (long long)labels[b] + 1, (long long)b + 1, (long long)n);
    int64_t shc[2] = {B, B};
    lps_tensor *C = lps_tensor_empty(2, shc);
    if (!C) return LPS_ENOMEM;
    lps_status s = lps_matmul(C, Y, 0, Y, 1, 1.0f, 0.0f);
    if (s) { lps_tensor_free(C); return s; }
    /* residuals, pairs counted once (i < j); C becomes 2 r_ij / P on both sides */
    double sum = 0;
    int64_t P = 0;
    for (int64_t i = 0; i < B; i++)
        for (int64_t j = i + 1; j < B; j++) {
            float t = T->data[labels[i] * n + labels[j]];
            if (isfinite(t)) {
                double r = (double)C->data[i * B + j] - t;
                sum += r * r;
                P++;
            }
        }
    *loss = P > 0 ? sum / (double)P : 0.0;
    if (npairs) *npairs = P;
    if (dY) {
        for (int64_t i = 0; i < B; i++)
            for (int64_t j = 0; j < B; j++) {
                float t = T->data[labels[i] * n + labels[j]];
                float g = 0.0f;
                if (i != j && isfinite(t) && P > 0) g = (float)(2.0 * ((double)C->data[i * B + j] - t) / (double)P);
                C->data[i * B + j] = g;
            }
        /* symmetric C: row i of C Y is sum_j 2 r_ij / P y_j */
        s = lps_matmul(dY, C, 0, Y, 0, 1.0f, 0.0f);
    }
    (void)e;
    lps_tensor_free(C);
    return s;
}
