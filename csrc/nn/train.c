/* train.c - the minibatch training loop and evaluation, entirely in C. All
 * buffers are allocated before the first step; steps allocate nothing. */
#include "nn/nn_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Buffers of one batch: inputs, labels, logits and their gradient. */
typedef struct {
    lps_tensor *x, *logits, *glogits;
    int32_t *y;
    int64_t rowsize, classes, cap;
    int ndim;
    int64_t shape[LPS_MAX_DIMS]; /* of one batch of cap samples */
} batchbuf;

static void batch_free(batchbuf *b)
{
    lps_tensor_free(b->x);
    lps_tensor_free(b->logits);
    lps_tensor_free(b->glogits);
    free(b->y);
}

/* need_x: training gathers shuffled rows into a buffer; evaluation reads
 * consecutive rows in place and needs none. */
static lps_status batch_init(batchbuf *b, lps_layer *model, const lps_tensor *x, int64_t cap,
                             int need_x, const char *op)
{
    memset(b, 0, sizeof *b);
    b->ndim = x->ndim;
    memcpy(b->shape, x->shape, sizeof b->shape);
    b->shape[0] = cap;
    b->cap = cap;
    b->rowsize = 1;
    for (int i = 1; i < x->ndim; i++) b->rowsize *= x->shape[i];
    int nd;
    int64_t out[LPS_MAX_DIMS];
    lps_status s = lps_layer_out_shape(model, x->ndim, b->shape, &nd, out);
    if (s) return s;
    if (nd != 2)
        return lps_fail(LPS_ESHAPE, "%s: the model's output should be (batch x classes), got %d "
                        "dimensions", op, nd);
    b->classes = out[1];
    b->x = need_x ? lps_tensor_new(x->ndim, b->shape) : NULL;
    b->logits = lps_tensor_new(2, out);
    b->glogits = need_x ? lps_tensor_new(2, out) : NULL;
    b->y = need_x ? malloc((size_t)(cap ? cap : 1) * sizeof *b->y) : NULL;
    if ((need_x && (!b->x || !b->glogits || !b->y)) || !b->logits) {
        batch_free(b);
        return lps_fail(LPS_ENOMEM, "%s: cannot allocate batch buffers", op);
    }
    return LPS_OK;
}

/* Headers for the first n samples of the batch buffers. */
static void batch_views(const batchbuf *b, int64_t n, lps_tensor *x, lps_tensor *lg,
                        lps_tensor *glg)
{
    int64_t shape[LPS_MAX_DIMS];
    memcpy(shape, b->shape, sizeof shape);
    shape[0] = n;
    *x = lps_view_as(b->x ? b->x : b->logits, b->ndim, shape); /* data set by eval */
    int64_t oshape[2] = {n, b->classes};
    *lg = lps_view_as(b->logits, 2, oshape);
    *glg = lps_view_as(b->glogits ? b->glogits : b->logits, 2, oshape);
}

static lps_status check_data(const char *op, const lps_tensor *x, const int32_t *y, int64_t classes)
{
    for (int64_t i = 0; i < x->shape[0]; i++)
        if (y[i] < 0 || y[i] >= classes)
            return lps_fail(LPS_ERANGE, "%s: label %d of sample %lld is out of range 0..%lld "
                            "(0-based) for a model with %lld outputs", op, (int)y[i],
                            (long long)i, (long long)classes - 1, (long long)classes);
    return LPS_OK;
}

static lps_status eval_batches(lps_layer *model, batchbuf *b, const lps_tensor *x, const int32_t *y,
                               double *loss, double *accuracy)
{
    int64_t n = x->shape[0];
    double total = 0.0;
    int64_t hits = 0;
    for (int64_t at = 0; at < n; at += b->cap) {
        int64_t m = n - at < b->cap ? n - at : b->cap;
        lps_tensor bx, lg, glg;
        batch_views(b, m, &bx, &lg, &glg);
        /* Contiguous rows: a header over the data, no copy. */
        bx.data = x->data + at * b->rowsize;
        lps_status s = model->type->forward(model, &bx, &lg);
        if (s) return s;
        double l;
        int64_t c;
        s = lps_cross_entropy(&lg, y + at, &l, NULL, &c);
        if (s) return s;
        total += l * (double)m;
        hits += c;
    }
    *loss = n ? total / (double)n : NAN;
    *accuracy = n ? (double)hits / (double)n : NAN;
    return LPS_OK;
}

static int count_layers(const lps_layer *l)
{
    int n = 1;
    for (int i = 0; i < l->nchildren; i++) n += count_layers(l->children[i]);
    return n;
}

/* Exchange each layer's mode and batch_stats with modes[k], modes[k + 1],
 * depth first. */
static void swap_modes(lps_layer *l, int *modes, int *k)
{
    int t = l->training, bs = l->batch_stats;
    l->training = modes[*k];
    l->batch_stats = modes[*k + 1];
    modes[*k] = t;
    modes[*k + 1] = bs;
    *k += 2;
    for (int i = 0; i < l->nchildren; i++) swap_modes(l->children[i], modes, k);
}

/* Evaluation runs in eval mode, as after PyTorch's model.eval() (batch norm
 * by its running statistics, which stay as they are, whatever batch_stats
 * says; no dropout); each layer's own mode comes back after. */
static lps_status eval_with(lps_layer *model, batchbuf *b, const lps_tensor *x, const int32_t *y,
                            double *loss, double *accuracy)
{
    int n = count_layers(model), k = 0;
    int *modes = calloc((size_t)n * 2, sizeof *modes);
    if (!modes) return lps_fail(LPS_ENOMEM, "evaluate: out of memory");
    swap_modes(model, modes, &k);
    lps_status s = eval_batches(model, b, x, y, loss, accuracy);
    k = 0;
    swap_modes(model, modes, &k);
    free(modes);
    return s;
}

lps_status lps_evaluate(lps_layer *model, const lps_tensor *x, const int32_t *y, int64_t batch,
                        double *loss, double *accuracy)
{
    if (batch <= 0) batch = 256;
    if (x->shape[0] < batch) batch = x->shape[0] ? x->shape[0] : 1;
    batchbuf b;
    lps_status s = batch_init(&b, model, x, batch, 0, "evaluate");
    if (s) return s;
    s = check_data("evaluate", x, y, b.classes);
    if (!s) s = eval_with(model, &b, x, y, loss, accuracy);
    batch_free(&b);
    return s;
}

typedef struct {
    lps_tensor **params, **grads;
    int n;
    int64_t *perm;
} trainstate;

static lps_status train_epochs(lps_layer *model, const lps_tensor *x, const int32_t *y,
                               const lps_train_opts *o, batchbuf *b, batchbuf *vb, trainstate *st,
                               double base_lr)
{
    int64_t n = x->shape[0], bs = o->batch_size;
    int64_t steps = o->drop_last ? n / bs : (n + bs - 1) / bs;
    double interval = o->progress_interval > 0 ? o->progress_interval : 0.25;
    for (int64_t i = 0; i < n; i++) st->perm[i] = i;
    for (int e = 0; e < o->epochs; e++) {
        double t0 = now(), last_report = t0, total = 0.0, lr = base_lr;
        int64_t hits = 0, seen = 0;
        if (o->shuffle) lps_rng_shuffle(o->rng, st->perm, n);
        for (int64_t k = 0; k < steps; k++) {
            if (o->schedule) {
                double t = e + (o->schedule->per_batch ? (double)k / (double)steps : 0.0);
                lr = lps_schedule_lr(o->schedule, base_lr, t);
                lps_optim_set_lr(o->optim, lr);
            }
            int64_t start = k * bs, m = n - start < bs ? n - start : bs;
            lps_tensor bx, lg, glg;
            batch_views(b, m, &bx, &lg, &glg);
            for (int64_t r = 0; r < m; r++) {
                int64_t src = st->perm[start + r];
                memcpy(bx.data + r * b->rowsize, x->data + src * b->rowsize,
                       (size_t)b->rowsize * sizeof(float));
                b->y[r] = y[src];
            }
            lps_status s = model->type->forward(model, &bx, &lg);
            double loss;
            int64_t c;
            if (!s) s = lps_cross_entropy(&lg, b->y, &loss, &glg, &c);
            if (s) return s;
            if (!isfinite(loss))
                return lps_fail(LPS_ENUMERIC, "train: loss is %s at epoch %d, step %lld (of %lld); "
                                "try a lower learning rate, or check the data for NaN",
                                isnan(loss) ? "NaN" : "infinite", e + 1, (long long)k + 1,
                                (long long)steps);
            lps_layer_zero_grad(model);
            s = model->type->backward(model, &bx, &lg, &glg, NULL);
            if (!s) s = lps_optim_step(o->optim, st->params, st->grads, st->n);
            if (s) return s;
            total += loss * (double)m;
            hits += c;
            seen += m;
            if (o->progress && k + 1 < steps) {
                double t = now();
                if (t - last_report >= interval) {
                    last_report = t;
                    lps_progress p = {e + 1, o->epochs, k + 1, steps, seen, total / (double)seen,
                                      (double)hits / (double)seen, t - t0, lr, 0, NAN, NAN};
                    if (o->progress(&p, o->progress_ud))
                        return lps_fail(LPS_EINVAL, "train: stopped by the progress callback at "
                                        "epoch %d, step %lld", e + 1, (long long)k + 1);
                }
            }
        }
        lps_epoch_stats es = {seen ? total / (double)seen : NAN,
                              seen ? (double)hits / (double)seen : NAN, now() - t0, lr, NAN, NAN};
        if (o->val_x) {
            lps_status s = eval_with(model, vb, o->val_x, o->val_y, &es.val_loss, &es.val_accuracy);
            if (s) return s;
        }
        if (o->stats) o->stats[e] = es;
        if (o->progress) {
            lps_progress p = {e + 1, o->epochs, steps, steps, seen, es.loss, es.accuracy,
                              now() - t0, lr, 1, es.val_loss, es.val_accuracy};
            if (o->progress(&p, o->progress_ud))
                return lps_fail(LPS_EINVAL, "train: stopped by the progress callback after epoch %d",
                                e + 1);
        }
    }
    return LPS_OK;
}

lps_status lps_train(lps_layer *model, const lps_tensor *x, const int32_t *y,
                     const lps_train_opts *o)
{
    if (!o->optim) return lps_fail(LPS_EINVAL, "train: an optimizer is required");
    if (o->epochs < 0 || o->batch_size < 1)
        return lps_fail(LPS_EINVAL, "train: need epochs >= 0 and batch_size >= 1, got %d and %lld",
                        o->epochs, (long long)o->batch_size);
    if (o->shuffle && !o->rng) return lps_fail(LPS_EINVAL, "train: shuffling needs a generator");
    if (o->schedule && lps_schedule_check(o->schedule)) return LPS_EINVAL;
    int64_t n = x->shape[0];
    if (n == 0 || (o->drop_last && n < o->batch_size))
        return lps_fail(LPS_EINVAL, "train: %lld samples make no batch of %lld", (long long)n,
                        (long long)o->batch_size);
    if (o->val_x && (o->val_x->ndim != x->ndim ||
                     memcmp(o->val_x->shape + 1, x->shape + 1, sizeof(int64_t) * (LPS_MAX_DIMS - 1))))
        return lps_fail(LPS_ESHAPE, "train: validation samples %s differ from training samples %s",
                        SH(o->val_x), SH(x));
    int64_t bs = o->batch_size < n ? o->batch_size : n;
    batchbuf b, vb;
    memset(&vb, 0, sizeof vb);
    trainstate st = {0};
    lps_status s = batch_init(&b, model, x, bs, 1, "train");
    if (s) return s;
    s = check_data("train", x, y, b.classes);
    if (!s && o->val_x) {
        int64_t vn = o->val_x->shape[0];
        int64_t ebs = o->eval_batch > 0 ? o->eval_batch : 256;
        s = batch_init(&vb, model, o->val_x, vn < ebs ? (vn ? vn : 1) : ebs, 0, "train (validation)");
        if (!s) s = check_data("train (validation)", o->val_x, o->val_y, vb.classes);
    }
    if (!s) {
        st.n = lps_layer_params(model, NULL, NULL, 0);
        st.params = calloc((size_t)st.n + 1, sizeof *st.params);
        st.grads = calloc((size_t)st.n + 1, sizeof *st.grads);
        st.perm = malloc((size_t)n * sizeof *st.perm);
        if (!st.params || !st.grads || !st.perm)
            s = lps_fail(LPS_ENOMEM, "train: cannot allocate the index of %lld samples", (long long)n);
        else
            lps_layer_params(model, st.params, st.grads, st.n);
    }
    if (!s) {
        /* The loop's batch size may be smaller than asked when n is small. */
        lps_train_opts oo = *o;
        oo.batch_size = bs;
        double base_lr = lps_optim_get_config(o->optim)->lr;
        s = train_epochs(model, x, y, &oo, &b, &vb, &st, base_lr);
        lps_optim_set_lr(o->optim, base_lr);
    }
    free(st.params);
    free(st.grads);
    free(st.perm);
    batch_free(&b);
    batch_free(&vb);
    return s;
}
