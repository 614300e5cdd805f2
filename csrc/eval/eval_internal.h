/* eval_internal.h - net-view helpers shared by the baselines' sources. */
#ifndef LPS_EVAL_INTERNAL_H
#define LPS_EVAL_INTERNAL_H

#include "core/internal.h"

#define W(m, l) ((m)->p[2 * (l)])
#define B(m, l) ((m)->p[2 * (l) + 1])

/* A CNN: conv2d layers first (an MLP may carry its architecture too). */
static inline int net_is_cnn(const lps_net_view *m)
{
    return m->arch && m->nlayers > 0 && m->p[0] && m->p[0]->ndim == 4;
}

/* Columns of W_l seen as a (units x cols) matrix (conv: cin * k * k). */
static inline int64_t net_cols(const lps_net_view *m, int l)
{
    return W(m, l)->numel / W(m, l)->shape[0];
}

/* Columns of W_l per unit of the layer before (l >= 1): 1 between linear
 * layers, k * k for a conv layer, height * width of the last conv layer's
 * maps for the first linear layer after them. */
static inline int64_t net_blk(const lps_net_view *m, int l)
{
    return net_cols(m, l) / W(m, l - 1)->shape[0];
}

/* W_l as a 2-D (units x cols) header; borrows, never freed. */
static inline lps_tensor net_mat(const lps_net_view *m, int l)
{
    const lps_tensor *w = W(m, l);
    lps_tensor v = {w->storage, w->data, 2, {w->shape[0], net_cols(m, l), 1, 1}, w->numel};
    return v;
}

/* off[l] = offset of hidden layer l in a flat permutation; checks perm
 * (NULL: none) is one permutation per hidden layer. */
lps_status lps_net_perm_offsets(const char *op, const lps_net_view *m, const int64_t *perm,
                                int64_t *off);
/* Layer l of m with its rows and input units permuted (perm NULL: as is)
 * written to w (numel of W_l) and b. */
void lps_net_permuted_layer(float *w, float *b, const lps_net_view *m, int l, const int64_t *perm,
                            const int64_t *off);

#endif
