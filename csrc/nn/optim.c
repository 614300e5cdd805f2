/* optim.c - SGD (momentum, Nesterov, weight decay) and Adam/AdamW with
 * PyTorch's update rules, and learning-rate schedules. */
#include "nn/nn_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

struct lps_optim {
    lps_optim_config c;
    int64_t steps;
    int nstate;      /* parameters the state was built for (0: none yet) */
    int64_t *numel;  /* their sizes */
    float **buf1;    /* momentum buffer (sgd) or first moment (adam) */
    float **buf2;    /* second moment (adam) */
};

static int bad(double v, double lo, double hi) { return !(v >= lo && v <= hi); }

lps_optim *lps_optim_new(const lps_optim_config *c)
{
    const char *name = c->kind == LPS_SGD ? "sgd" : "adam";
    if (c->kind != LPS_SGD && c->kind != LPS_ADAM) {
        lps_fail(LPS_EINVAL, "optimizer: unknown kind %d", (int)c->kind);
        return NULL;
    }
    if (bad(c->lr, 0, 1e6) || bad(c->weight_decay, 0, 1e6)) {
        lps_fail(LPS_EINVAL, "%s: need finite lr >= 0 and weight_decay >= 0, got %g and %g", name,
                 c->lr, c->weight_decay);
        return NULL;
    }
    if (c->kind == LPS_SGD && (bad(c->momentum, 0, 1) || bad(c->dampening, 0, 1) ||
                               (c->nesterov && (c->momentum <= 0 || c->dampening != 0)))) {
        lps_fail(LPS_EINVAL, "sgd: need momentum and dampening in [0, 1], and nesterov needs "
                 "momentum > 0 and dampening 0; got momentum %g, dampening %g", c->momentum,
                 c->dampening);
        return NULL;
    }
    if (c->kind == LPS_ADAM && (bad(c->beta1, 0, 1) || bad(c->beta2, 0, 1) || c->beta1 >= 1 ||
                                c->beta2 >= 1 || bad(c->eps, 0, 1))) {
        lps_fail(LPS_EINVAL, "adam: need betas in [0, 1) and eps in [0, 1], got (%g, %g) and %g",
                 c->beta1, c->beta2, c->eps);
        return NULL;
    }
    lps_optim *o = calloc(1, sizeof *o);
    if (!o) {
        lps_fail(LPS_ENOMEM, "%s: cannot allocate", name);
        return NULL;
    }
    o->c = *c;
    return o;
}

void lps_optim_reset(lps_optim *o)
{
    for (int i = 0; i < o->nstate; i++) {
        lps_free_floats(o->buf1[i]);
        if (o->buf2) lps_free_floats(o->buf2[i]);
    }
    free(o->buf1);
    free(o->buf2);
    free(o->numel);
    o->buf1 = o->buf2 = NULL;
    o->numel = NULL;
    o->nstate = 0;
    o->steps = 0;
}

void lps_optim_free(lps_optim *o)
{
    if (!o) return;
    lps_optim_reset(o);
    free(o);
}

const lps_optim_config *lps_optim_get_config(const lps_optim *o) { return &o->c; }
void lps_optim_set_lr(lps_optim *o, double lr) { o->c.lr = lr; }
int64_t lps_optim_steps(const lps_optim *o) { return o->steps; }

/* Zeroed state for these parameters (the first step). */
static lps_status build_state(lps_optim *o, lps_tensor *const *params, int n)
{
    int two = o->c.kind == LPS_ADAM;
    o->numel = calloc((size_t)n + 1, sizeof *o->numel);
    o->buf1 = calloc((size_t)n + 1, sizeof *o->buf1);
    if (two) o->buf2 = calloc((size_t)n + 1, sizeof *o->buf2);
    if (!o->numel || !o->buf1 || (two && !o->buf2)) goto fail;
    for (int i = 0; i < n; i++) {
        int64_t m = params[i]->numel;
        o->nstate = i + 1;
        o->numel[i] = m;
        o->buf1[i] = lps_alloc_floats(m, "optimizer state");
        if (two) o->buf2[i] = lps_alloc_floats(m, "optimizer state");
        if (!o->buf1[i] || (two && !o->buf2[i])) goto fail;
        memset(o->buf1[i], 0, (size_t)m * sizeof(float));
        if (two) memset(o->buf2[i], 0, (size_t)m * sizeof(float));
    }
    o->nstate = n;
    return LPS_OK;
fail:
    lps_optim_reset(o);
    return lps_fail(LPS_ENOMEM, "optimizer: cannot allocate state for %d parameters", n);
}

/* The updates below run 4 floats at a time with SSE2 (x86-64's baseline) and
 * finish with the same operations in scalar code: IEEE add, mul, div and sqrt
 * round identically either way, so results do not depend on the path. */
static void sgd_update(const lps_optim_config *c, int64_t steps, float *p, const float *g,
                       float *buf, int64_t n)
{
    float lr = (float)c->lr, wd = (float)c->weight_decay, mom = (float)c->momentum;
    float damp = 1.0f - (float)c->dampening;
    int first = steps == 0, nest = c->nesterov;
    int64_t i = 0;
    if (mom == 0.0f) {
#ifdef __SSE2__
        __m128 vlr = _mm_set1_ps(lr), vwd = _mm_set1_ps(wd);
        for (; i + 4 <= n; i += 4) {
            __m128 pv = _mm_loadu_ps(p + i);
            __m128 d = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(vwd, pv));
            _mm_storeu_ps(p + i, _mm_sub_ps(pv, _mm_mul_ps(vlr, d)));
        }
#endif
        for (; i < n; i++) p[i] -= lr * (g[i] + wd * p[i]);
        return;
    }
#ifdef __SSE2__
    __m128 vlr = _mm_set1_ps(lr), vwd = _mm_set1_ps(wd), vmom = _mm_set1_ps(mom);
    __m128 vdamp = _mm_set1_ps(damp);
    for (; i + 4 <= n; i += 4) {
        __m128 pv = _mm_loadu_ps(p + i);
        __m128 d = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(vwd, pv));
        __m128 b = first ? d
                         : _mm_add_ps(_mm_mul_ps(vmom, _mm_loadu_ps(buf + i)), _mm_mul_ps(vdamp, d));
        _mm_storeu_ps(buf + i, b);
        __m128 u = nest ? _mm_add_ps(d, _mm_mul_ps(vmom, b)) : b;
        _mm_storeu_ps(p + i, _mm_sub_ps(pv, _mm_mul_ps(vlr, u)));
    }
#endif
    for (; i < n; i++) {
        float d = g[i] + wd * p[i];
        /* PyTorch starts the buffer at the first gradient, undamped. */
        float b = first ? d : mom * buf[i] + damp * d;
        buf[i] = b;
        p[i] -= lr * (nest ? d + mom * b : b);
    }
}

static void adam_update(const lps_optim_config *c, int64_t t, float *p, const float *g, float *m,
                        float *v, int64_t n)
{
    float b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->eps;
    float c1 = 1.0f - b1, c2 = 1.0f - b2;
    double bc1 = 1.0 - pow(c->beta1, (double)t), bc2 = 1.0 - pow(c->beta2, (double)t);
    float step = (float)(c->lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float keep = c->decoupled ? (float)(1.0 - c->lr * c->weight_decay) : 1.0f;
    float l2 = c->decoupled ? 0.0f : (float)c->weight_decay;
    int64_t i = 0;
#ifdef __SSE2__
    __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vc1 = _mm_set1_ps(c1);
    __m128 vc2 = _mm_set1_ps(c2), veps = _mm_set1_ps(eps), vstep = _mm_set1_ps(step);
    __m128 vinv = _mm_set1_ps(inv_sqrt_bc2), vkeep = _mm_set1_ps(keep), vl2 = _mm_set1_ps(l2);
    for (; i + 4 <= n; i += 4) {
        __m128 pv = _mm_loadu_ps(p + i);
        __m128 d = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(vl2, pv));
        __m128 mi = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(m + i)), _mm_mul_ps(vc1, d));
        __m128 vi = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(v + i)), _mm_mul_ps(_mm_mul_ps(vc2, d), d));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        __m128 den = _mm_add_ps(_mm_mul_ps(_mm_sqrt_ps(vi), vinv), veps);
        pv = _mm_sub_ps(_mm_mul_ps(pv, vkeep), _mm_div_ps(_mm_mul_ps(vstep, mi), den));
        _mm_storeu_ps(p + i, pv);
    }
#endif
    for (; i < n; i++) {
        float d = g[i] + l2 * p[i];
        float mi = b1 * m[i] + c1 * d;
        float vi = b2 * v[i] + c2 * d * d;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
        p[i] = p[i] * keep - step * mi / denom;
    }
}

lps_status lps_optim_step(lps_optim *o, lps_tensor *const *params, lps_tensor *const *grads, int n)
{
    for (int i = 0; i < n; i++)
        if (params[i]->numel != grads[i]->numel)
            return lps_fail(LPS_ESHAPE, "optimizer step: parameter %d %s and its gradient %s differ",
                            i + 1, SH(params[i]), SH(grads[i]));
    if (o->nstate == 0 && o->steps == 0) {
        if (n > 0 && build_state(o, params, n)) return LPS_ENOMEM;
    } else {
        if (n != o->nstate)
            return lps_fail(LPS_EINVAL, "optimizer step: got %d parameters, but the state was built "
                            "for %d (use one optimizer per model, or reset it)", n, o->nstate);
        for (int i = 0; i < n; i++)
            if (params[i]->numel != o->numel[i])
                return lps_fail(LPS_ESHAPE, "optimizer step: parameter %d has %lld values, but the "
                                "state was built for %lld (use one optimizer per model, or reset it)",
                                i + 1, (long long)params[i]->numel, (long long)o->numel[i]);
    }
    for (int i = 0; i < n; i++) {
        if (o->c.kind == LPS_SGD)
            sgd_update(&o->c, o->steps, params[i]->data, grads[i]->data, o->buf1[i],
                       params[i]->numel);
        else
            adam_update(&o->c, o->steps + 1, params[i]->data, grads[i]->data, o->buf1[i],
                        o->buf2[i], params[i]->numel);
    }
    o->steps++;
    return LPS_OK;
}

/* ------------------------------------------------------------ schedules */

lps_status lps_schedule_check(const lps_schedule *s)
{
    switch (s->kind) {
    case LPS_SCHED_CONSTANT: return LPS_OK;
    case LPS_SCHED_STEP:
        if (!(s->step_size > 0) || !(s->gamma >= 0) || !isfinite(s->gamma) || !isfinite(s->step_size))
            return lps_fail(LPS_EINVAL, "step schedule: need step_size > 0 and gamma >= 0, got %g "
                            "and %g", s->step_size, s->gamma);
        return LPS_OK;
    case LPS_SCHED_COSINE:
        if (!(s->t_max > 0) || !isfinite(s->t_max) || !(s->eta_min >= 0) || !isfinite(s->eta_min))
            return lps_fail(LPS_EINVAL, "cosine schedule: need t_max > 0 and eta_min >= 0, got %g "
                            "and %g", s->t_max, s->eta_min);
        return LPS_OK;
    }
    return lps_fail(LPS_EINVAL, "schedule: unknown kind %d", (int)s->kind);
}

double lps_schedule_lr(const lps_schedule *s, double base_lr, double t)
{
    switch (s->kind) {
    case LPS_SCHED_STEP: return base_lr * pow(s->gamma, floor(t / s->step_size));
    case LPS_SCHED_COSINE: {
        double u = t < s->t_max ? t : s->t_max;
        return s->eta_min + (base_lr - s->eta_min) * (1.0 + cos(3.14159265358979323846 * u / s->t_max)) / 2.0;
    }
    default: return base_lr;
    }
}
