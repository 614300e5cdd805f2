/* matching.c - Git Re-Basin weight matching (Ainsworth et al. 2022): align
 * the hidden units (conv channels) of model b to model a without data, then
 * compare. */
#include "eval/eval_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lps_status same_arch(const char *op, const lps_net_view *a, const lps_net_view *b)
{
    if (net_is_cnn(a) != net_is_cnn(b))
        return lps_fail(LPS_ESHAPE, "%s: one model is a CNN and the other an MLP; matching needs one architecture",
                        op);
    if (a->nlayers != b->nlayers)
        return lps_fail(LPS_ESHAPE, "%s: models have %d and %d layers; matching needs one architecture",
                        op, a->nlayers, b->nlayers);
    for (int l = 0; l < a->nlayers; l++)
        if (!lps_same_shape(W(a, l), W(b, l)))
            return lps_fail(LPS_ESHAPE, "%s: W%d is %s in one model and %s in the other", op, l + 1,
                            SH(W(a, l)), SH(W(b, l)));
    if (!lps_net_same_arch(a, b))
        return lps_fail(LPS_ESHAPE, "%s: the models' strides, padding or pooling differ; matching needs one architecture",
                        op);
    return LPS_OK;
}

typedef struct {
    const lps_net_view *a, *b;
    int nh;           /* hidden layers */
    int64_t *off;     /* offset of each hidden layer in perm */
    lps_tensor **fix; /* per hidden layer: the terms that no permutation changes */
    lps_tensor *cost, *wa, *wb; /* scratch: h x h cost; W's of a and b rearranged */
    double *dcost;
    int64_t *cand;
} matcher;

static void matcher_free(matcher *mt)
{
    if (mt->fix)
        for (int l = 0; l < mt->nh; l++) lps_tensor_free(mt->fix[l]);
    free(mt->fix);
    free(mt->off);
    lps_tensor_free(mt->cost);
    lps_tensor_free(mt->wa);
    lps_tensor_free(mt->wb);
    free(mt->dcost);
    free(mt->cand);
}

/* A header over the first rows*cols floats of buf, for passing to
 * lps_matmul; it owns nothing and is never freed. */
static lps_tensor borrow(const lps_tensor *buf, int64_t rows, int64_t cols)
{
    lps_tensor v = {buf->storage, buf->data, 2, {rows, cols, 1, 1}, rows * cols};
    return v;
}

/* Unit-major copy of layer n of m: u (units x rows*blk) with u[i, o*blk + t]
 * = W_n[row(o), i*blk + t], row(o) = rowperm[o] (or o when NULL), so that
 * u_a u_b^T sums a unit's whole block of columns over the rows. */
static lps_tensor unit_major(const lps_tensor *buf, const lps_net_view *m, int n,
                             const int64_t *rowperm)
{
    const lps_tensor *w = W(m, n);
    int64_t rows = w->shape[0], cols = net_cols(m, n), blk = net_blk(m, n), units = cols / blk;
    lps_tensor u = borrow(buf, units, rows * blk);
    for (int64_t o = 0; o < rows; o++) {
        const float *src = w->data + (rowperm ? rowperm[o] : o) * cols;
        for (int64_t i = 0; i < units; i++)
            memcpy(u.data + i * rows * blk + o * blk, src + i * blk, (size_t)blk * sizeof(float));
    }
    return u;
}

/* c += (a's outgoing weights of hidden layer l) . (b's, rows permuted by
 * rowperm)^T, over the units of layer l. */
static lps_status outgoing_term(matcher *mt, lps_tensor *c, int l, const int64_t *rowperm)
{
    if (net_blk(mt->a, l + 1) == 1 && !rowperm)
        return lps_matmul(c, W(mt->a, l + 1), 1, W(mt->b, l + 1), 0, 1.0f, 1.0f);
    lps_tensor ua = unit_major(mt->wa, mt->a, l + 1, NULL), ub = unit_major(mt->wb, mt->b, l + 1, rowperm);
    return lps_matmul(c, &ua, 0, &ub, 1, 1.0f, 1.0f);
}

static lps_status matcher_init(matcher *mt, const lps_net_view *a, const lps_net_view *b)
{
    memset(mt, 0, sizeof *mt);
    mt->a = a;
    mt->b = b;
    mt->nh = a->nlayers - 1;
    int64_t maxh = 1, maxw = 1;
    for (int l = 0; l < a->nlayers; l++) {
        if (l < mt->nh && W(a, l)->shape[0] > maxh) maxh = W(a, l)->shape[0];
        if (W(a, l)->numel > maxw) maxw = W(a, l)->numel;
    }
    mt->off = malloc((size_t)mt->nh * sizeof *mt->off);
    mt->fix = calloc((size_t)mt->nh, sizeof *mt->fix);
    mt->cost = lps_tensor_new2(maxh, maxh);
    mt->wa = lps_tensor_new2(1, maxw);
    mt->wb = lps_tensor_new2(1, maxw);
    mt->dcost = malloc((size_t)(maxh * maxh) * sizeof *mt->dcost);
    mt->cand = malloc((size_t)maxh * sizeof *mt->cand);
    if (!mt->off || !mt->fix || !mt->cost || !mt->wa || !mt->wb || !mt->dcost || !mt->cand)
        return lps_fail(LPS_ENOMEM, "matching: out of memory");
    int64_t o = 0;
    lps_status st = LPS_OK;
    for (int l = 0; l < mt->nh && !st; l++) {
        mt->off[l] = o;
        int64_t h = W(a, l)->shape[0];
        o += h;
        lps_tensor *f = mt->fix[l] = lps_tensor_new2(h, h);
        if (!f) return LPS_ENOMEM;
        const float *ba = B(a, l)->data, *bb = B(b, l)->data;
        for (int64_t i = 0; i < h; i++)
            for (int64_t j = 0; j < h; j++) f->data[i * h + j] = ba[i] * bb[j];
        if (l == 0) { /* the input is never permuted */
            lps_tensor wa0 = net_mat(a, 0), wb0 = net_mat(b, 0);
            st = lps_matmul(f, &wa0, 0, &wb0, 1, 1.0f, 1.0f);
        }
        if (!st && l == mt->nh - 1) /* nor is the output */
            st = outgoing_term(mt, f, l, NULL);
    }
    return st;
}

/* cost (h_l x h_l) for hidden layer l given the other layers' permutations
 * (without the outgoing weights' term unless outgoing). */
static lps_status layer_cost(matcher *mt, int l, const int64_t *perm, int64_t h, int outgoing)
{
    const lps_net_view *a = mt->a, *b = mt->b;
    lps_tensor cv = borrow(mt->cost, h, h), *c = &cv;
    lps_status st = lps_copy(c, mt->fix[l]);
    if (!st && l > 0) {
        /* incoming: Wa_l . (Wb_l with input units in previous layer's order)^T */
        const lps_tensor *wbl = W(b, l);
        int64_t cols = net_cols(b, l), blk = net_blk(b, l);
        lps_tensor wb = borrow(mt->wb, h, cols), wal = net_mat(a, l);
        const int64_t *pp = perm + mt->off[l - 1];
        if (blk == 1)
            for (int64_t j = 0; j < h; j++)
                for (int64_t k = 0; k < cols; k++) wb.data[j * cols + k] = wbl->data[j * cols + pp[k]];
        else
            for (int64_t j = 0; j < h; j++)
                for (int64_t k = 0; k < cols / blk; k++)
                    memcpy(wb.data + j * cols + k * blk, wbl->data + j * cols + pp[k] * blk,
                           (size_t)blk * sizeof(float));
        st = lps_matmul(c, &wal, 0, &wb, 1, 1.0f, 1.0f);
    }
    if (!st && outgoing && l < mt->nh - 1) {
        /* outgoing: Wa_{l+1}^T . (Wb_{l+1} with rows in next layer's order) */
        const lps_tensor *wbn = W(b, l + 1);
        const int64_t *pn = perm + mt->off[l + 1];
        if (net_blk(b, l + 1) == 1) {
            int64_t rows = wbn->shape[0];
            lps_tensor wb = borrow(mt->wb, rows, h);
            for (int64_t i = 0; i < rows; i++)
                memcpy(wb.data + i * h, wbn->data + pn[i] * h, (size_t)h * sizeof(float));
            st = lps_matmul(c, W(a, l + 1), 1, &wb, 0, 1.0f, 1.0f);
        } else {
            st = outgoing_term(mt, c, l, pn);
        }
    }
    if (!st)
        for (int64_t i = 0; i < h * h; i++) mt->dcost[i] = c->data[i];
    return st;
}

/* <flat a, flat aligned b> in double. */
static double aligned_dot(const lps_net_view *a, const lps_net_view *b, const int64_t *perm,
                          const int64_t *off)
{
    double dot = 0.0;
    int L = a->nlayers;
    for (int l = 0; l < L; l++) {
        const lps_tensor *wa = W(a, l), *wb = W(b, l);
        int64_t rows = wa->shape[0], cols = net_cols(a, l), blk = l ? net_blk(a, l) : 1;
        const int64_t *pr = l < L - 1 ? perm + off[l] : NULL, *pc = l > 0 ? perm + off[l - 1] : NULL;
        for (int64_t i = 0; i < rows; i++) {
            int64_t r = pr ? pr[i] : i;
            const float *x = wa->data + i * cols, *y = wb->data + r * cols;
            double s = 0.0;
            if (pc && blk == 1)
                for (int64_t k = 0; k < cols; k++) s += (double)x[k] * y[pc[k]];
            else if (pc) /* blocks of a channel's columns */
                for (int64_t k = 0; k < cols; k++) s += (double)x[k] * y[pc[k / blk] * blk + k % blk];
            else /* the input side is never permuted: a contiguous dot product */
                for (int64_t k = 0; k < cols; k++) s += (double)x[k] * y[k];
            dot += s + (double)B(a, l)->data[i] * B(b, l)->data[r];
        }
    }
    return dot;
}

static double sqnorm(const lps_net_view *m)
{
    double s = 0.0;
    for (int i = 0; i < 2 * m->nlayers; i++)
        for (int64_t k = 0; k < m->p[i]->numel; k++) s += (double)m->p[i]->data[k] * m->p[i]->data[k];
    return s;
}

/* Alternating updates from perm until a sweep improves nothing. */
static lps_status descend(matcher *mt, int64_t *perm, int64_t *order, const lps_match_opts *o,
                          int *sweeps)
{
    int max_iter = o && o->max_iter > 0 ? o->max_iter : 100;
    lps_status st = LPS_OK;
    for (int improved = 1; improved && *sweeps < max_iter && !st; (*sweeps)++) {
        improved = 0;
        if (o && o->rng) lps_rng_shuffle(o->rng, order, mt->nh);
        for (int t = 0; t < mt->nh && !st; t++) {
            int l = (int)order[t];
            int64_t h = W(mt->a, l)->shape[0], *pl = perm + mt->off[l];
            if ((st = layer_cost(mt, l, perm, h, 1))) break;
            double old = 0.0, now;
            for (int64_t i = 0; i < h; i++) old += mt->dcost[i * h + pl[i]];
            if ((st = lps_linear_assignment(mt->cand, &now, mt->dcost, h, h, 1))) break;
            /* Equal optima must not flip back and forth. */
            if (now > old + 1e-7 * (1.0 + fabs(old))) {
                memcpy(pl, mt->cand, (size_t)h * sizeof *pl);
                improved = 1;
            }
        }
    }
    return st;
}

static lps_status match_pair(int64_t *perm, double *sim, int *iters, const lps_net_view *a,
                             const lps_net_view *b, const lps_match_opts *o)
{
    matcher mt;
    lps_status st = matcher_init(&mt, a, b);
    int64_t order[512], nhid = lps_net_units(a), *idperm = NULL;
    int sweeps = 0;
    if (!st && mt.nh > 512) st = lps_fail(LPS_EINVAL, "matching: more than 512 hidden layers");
    /* Start from the input side: each layer matched on its incoming weights
     * and bias given the layer before (the later layers' orders are not yet
     * known). From the identity the alternating updates can stall in a poor
     * local optimum; this start finds a planted permutation at once. */
    for (int l = 0; l < mt.nh && !st; l++) {
        order[l] = l;
        int64_t h = W(a, l)->shape[0];
        if (!(st = layer_cost(&mt, l, perm, h, 0)))
            st = lps_linear_assignment(perm + mt.off[l], NULL, mt.dcost, h, h, 1);
    }
    if (!st) st = descend(&mt, perm, order, o, &sweeps);
    double nn = sqrt(sqnorm(a) * sqnorm(b)), inv = nn > 0.0 ? 1.0 / nn : 0.0;
    double s = st ? 0.0 : aligned_dot(a, b, perm, mt.off) * inv;
    if (!st && !(idperm = malloc((size_t)nhid * sizeof *idperm)))
        st = lps_fail(LPS_ENOMEM, "matching: out of memory");
    if (!st) {
        /* Never end below no alignment at all: if that is better, descend from it too. */
        for (int l = 0; l < mt.nh; l++)
            for (int64_t i = 0; i < W(a, l)->shape[0]; i++) idperm[mt.off[l] + i] = i;
        double s0 = aligned_dot(a, b, idperm, mt.off) * inv;
        if (s0 > s) {
            st = descend(&mt, idperm, order, o, &sweeps);
            double s1 = st ? 0.0 : aligned_dot(a, b, idperm, mt.off) * inv;
            if (s1 > s) {
                s = s1;
                memcpy(perm, idperm, (size_t)nhid * sizeof *perm);
            }
        }
    }
    if (!st && sim) *sim = s;
    if (iters) *iters = sweeps;
    free(idperm);
    matcher_free(&mt);
    return st;
}

lps_status lps_weight_matching(int64_t *perm, double *sim, int *iters, const lps_net_view *a,
                               const lps_net_view *b, const lps_match_opts *o)
{
    lps_status st;
    if ((st = lps_net_check("matching", a)) || (st = lps_net_check("matching", b)) ||
        (st = same_arch("matching", a, b)))
        return st;
    return match_pair(perm, sim, iters, a, b, o);
}

lps_status lps_matching_matrix(lps_tensor *out, const lps_net_view *a, int64_t na,
                               const lps_net_view *b, int64_t nb, const lps_match_opts *o)
{
    if (na < 0 || nb < 0)
        return lps_fail(LPS_EINVAL, "matching: negative model count");
    if (out->ndim != 2 || out->shape[0] != na || out->shape[1] != nb)
        return lps_fail(LPS_ESHAPE, "matching: output %s should be (%lldx%lld)", SH(out),
                        (long long)na, (long long)nb);
    if (na == 0 || nb == 0) return LPS_OK;
    lps_status st;
    char op[64];
    int64_t maxu = 1;
    for (int64_t i = 0; i < na + nb; i++) {
        const lps_net_view *m = i < na ? &a[i] : &b[i - na];
        snprintf(op, sizeof op, "matching: model %lld of the %s set", (long long)(i < na ? i : i - na) + 1,
                 i < na ? "first" : "second");
        if ((st = lps_net_check(op, m))) return st;
        if (lps_net_units(m) > maxu) maxu = lps_net_units(m);
    }
    int64_t *perm = malloc((size_t)maxu * sizeof *perm);
    if (!perm) return lps_fail(LPS_ENOMEM, "matching: out of memory");
    st = LPS_OK;
    for (int64_t i = 0; i < na && !st; i++)
        for (int64_t j = 0; j < nb && !st; j++) {
            /* No permutation relates different architectures: not comparable. */
            double s = NAN;
            if (lps_net_same_arch(&a[i], &b[j])) st = match_pair(perm, &s, NULL, &a[i], &b[j], o);
            out->data[i * nb + j] = (float)s;
        }
    free(perm);
    return st;
}
