/* lua_train.c - optimizers, schedules, and the C training loop for Lua. */
#include <math.h>
#include <string.h>

#include "lua/binding.h"

typedef struct {
    lps_optim *o;
    int busy; /* in use by train: close() must wait */
} optim_ud;

/* Number of classes the model outputs for inputs shaped like x (raises). */
static int64_t model_classes(lua_State *L, lps_layer *m, const lps_tensor *x, const char *op)
{
    int nd;
    int64_t shape[LPS_MAX_DIMS];
    LPS_LCHECK(L, lps_layer_out_shape(m, x->ndim, x->shape, &nd, shape));
    if (nd != 2)
        luaL_error(L, "%s: the model's output should be (batch x classes), got %d dimensions", op,
                   nd);
    return shape[1];
}

static lps_optim *checkoptim(lua_State *L, int idx)
{
    optim_ud *u = luaL_checkudata(L, idx, LPS_OPTIM_MT);
    if (!u->o) luaL_argerror(L, idx, "optimizer has been closed");
    return u->o;
}

static double optnum(lua_State *L, int t, const char *k, double def)
{
    lua_getfield(L, t, k);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1)) luaL_error(L, "option '%s' should be a number, got a %s", k,
                                             luaL_typename(L, -1));
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

static int optbool(lua_State *L, int t, const char *k, int def)
{
    lua_getfield(L, t, k);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* optimizer{kind="sgd"|"adam", lr=, ...} with every field given (optim.lua
 * fills the defaults). */
static int l_optimizer(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lps_optim_config c;
    memset(&c, 0, sizeof c);
    lua_getfield(L, 1, "kind");
    const char *kind = luaL_optstring(L, -1, "sgd");
    if (strcmp(kind, "sgd") == 0)
        c.kind = LPS_SGD;
    else if (strcmp(kind, "adam") == 0)
        c.kind = LPS_ADAM;
    else
        return luaL_error(L, "optimizer: unknown kind '%s' (sgd or adam)", kind);
    lua_pop(L, 1);
    c.lr = optnum(L, 1, "lr", c.kind == LPS_SGD ? 0.01 : 1e-3);
    c.weight_decay = optnum(L, 1, "weight_decay", 0);
    c.momentum = optnum(L, 1, "momentum", 0);
    c.dampening = optnum(L, 1, "dampening", 0);
    c.nesterov = optbool(L, 1, "nesterov", 0);
    c.beta1 = optnum(L, 1, "beta1", 0.9);
    c.beta2 = optnum(L, 1, "beta2", 0.999);
    c.eps = optnum(L, 1, "eps", 1e-8);
    c.decoupled = optbool(L, 1, "decoupled", 0);
    optim_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->o = NULL;
    u->busy = 0;
    luaL_setmetatable(L, LPS_OPTIM_MT);
    u->o = lps_optim_new(&c);
    if (!u->o) lps_lua_raise(L);
    return 1;
}

/* Tensors of the list at idx into a GC-owned array. */
static lps_tensor **tensor_list(lua_State *L, int idx, int *n, const char *what)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    *n = (int)luaL_len(L, idx);
    lps_tensor **v = lua_newuserdatauv(L, sizeof *v * (size_t)(*n + 1), 0);
    for (int i = 0; i < *n; i++) {
        lua_geti(L, idx, i + 1);
        v[i] = lps_lua_totensor(L, -1);
        if (!v[i]) luaL_error(L, "optimizer step: %s entry %d is not a tensor", what, i + 1);
        lua_pop(L, 1);
    }
    return v;
}

/* opt:step(params, grads): one update, e.g. with m:parameters(). */
static int o_step(lua_State *L)
{
    lps_optim *o = checkoptim(L, 1);
    int np, ng;
    lps_tensor **p = tensor_list(L, 2, &np, "params"), **g = tensor_list(L, 3, &ng, "grads");
    if (np != ng) return luaL_error(L, "optimizer step: %d params but %d grads", np, ng);
    LPS_LCHECK(L, lps_optim_step(o, p, g, np));
    lua_settop(L, 1);
    return 1;
}

static int o_lr(lua_State *L)
{
    lps_optim *o = checkoptim(L, 1);
    if (!lua_isnoneornil(L, 2)) {
        lua_Number lr = luaL_checknumber(L, 2);
        luaL_argcheck(L, lr >= 0 && isfinite(lr), 2, "learning rate must be finite and >= 0");
        lps_optim_set_lr(o, lr);
    }
    lua_pushnumber(L, lps_optim_get_config(o)->lr);
    return 1;
}

static int o_reset(lua_State *L)
{
    lps_optim_reset(checkoptim(L, 1));
    lua_settop(L, 1);
    return 1;
}

static int o_steps(lua_State *L)
{
    lua_pushinteger(L, lps_optim_steps(checkoptim(L, 1)));
    return 1;
}

static int o_config(lua_State *L)
{
    const lps_optim_config *c = lps_optim_get_config(checkoptim(L, 1));
    lua_newtable(L);
    lua_pushstring(L, c->kind == LPS_SGD ? "sgd" : "adam");
    lua_setfield(L, -2, "kind");
#define F(name) (lua_pushnumber(L, c->name), lua_setfield(L, -2, #name))
    F(lr); F(weight_decay);
    if (c->kind == LPS_SGD) {
        F(momentum); F(dampening);
        lua_pushboolean(L, c->nesterov);
        lua_setfield(L, -2, "nesterov");
    } else {
        F(beta1); F(beta2); F(eps);
        lua_pushboolean(L, c->decoupled);
        lua_setfield(L, -2, "decoupled");
    }
#undef F
    return 1;
}

static int o_tostring(lua_State *L)
{
    optim_ud *u = luaL_checkudata(L, 1, LPS_OPTIM_MT);
    if (!u->o) return lua_pushliteral(L, "lualps.Optimizer (closed)"), 1;
    const lps_optim_config *c = lps_optim_get_config(u->o);
    char s[256];
    if (c->kind == LPS_SGD)
        snprintf(s, sizeof s, "SGD(lr=%g, momentum=%g, dampening=%g, nesterov=%s, weight_decay=%g)",
                 c->lr, c->momentum, c->dampening, c->nesterov ? "true" : "false", c->weight_decay);
    else
        snprintf(s, sizeof s, "%s(lr=%g, betas=(%g, %g), eps=%g, weight_decay=%g)",
                 c->decoupled ? "AdamW" : "Adam", c->lr, c->beta1, c->beta2, c->eps,
                 c->weight_decay);
    lua_pushfstring(L, "%s, %I steps", s, (LUAI_UACINT)lps_optim_steps(u->o));
    return 1;
}

static int o_gc(lua_State *L)
{
    optim_ud *u = luaL_checkudata(L, 1, LPS_OPTIM_MT);
    if (u->busy) return luaL_error(L, "optimizer: cannot close it while train is using it");
    lps_optim_free(u->o);
    u->o = NULL;
    return 0;
}

/* A schedule from a table {kind=, step_size=, gamma=, t_max=, eta_min=, per_batch=}. */
static void checkschedule(lua_State *L, int idx, lps_schedule *s)
{
    memset(s, 0, sizeof *s);
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "kind");
    const char *k = luaL_optstring(L, -1, "constant");
    if (strcmp(k, "step") == 0)
        s->kind = LPS_SCHED_STEP;
    else if (strcmp(k, "cosine") == 0)
        s->kind = LPS_SCHED_COSINE;
    else if (strcmp(k, "constant") == 0)
        s->kind = LPS_SCHED_CONSTANT;
    else
        luaL_error(L, "schedule: unknown kind '%s' (step, cosine or constant)", k);
    lua_pop(L, 1);
    s->step_size = optnum(L, idx, "step_size", 1);
    s->gamma = optnum(L, idx, "gamma", 0.1);
    s->t_max = optnum(L, idx, "t_max", 1);
    s->eta_min = optnum(L, idx, "eta_min", 0);
    s->per_batch = optbool(L, idx, "per_batch", 0);
    LPS_LCHECK(L, lps_schedule_check(s));
}

/* schedule_lr(schedule, base_lr, t) -> lr at (fractional) epoch t, 0-based */
static int l_schedule_lr(lua_State *L)
{
    lps_schedule s;
    checkschedule(L, 1, &s);
    lua_pushnumber(L, lps_schedule_lr(&s, luaL_checknumber(L, 2), luaL_checknumber(L, 3)));
    return 1;
}

/* ------------------------------------------------------------- training */

typedef struct {
    lua_State *L;
    int fn;      /* stack index of the Lua callback */
    int failed;  /* the callback raised: its error is on the stack top */
} progress_ctx;

static int progress_cb(const lps_progress *p, void *ud)
{
    progress_ctx *c = ud;
    lua_State *L = c->L;
    if (!lua_checkstack(L, 4)) return lps_fail(LPS_ENOMEM, "train: Lua stack overflow"), 1;
    lua_pushvalue(L, c->fn);
    lua_createtable(L, 0, 10);
#define I(k) (lua_pushinteger(L, (lua_Integer)p->k), lua_setfield(L, -2, #k))
#define N(k) (lua_pushnumber(L, p->k), lua_setfield(L, -2, #k))
    I(epoch); I(epochs); I(step); I(steps); I(samples);
    N(loss); N(accuracy); N(seconds); N(lr);
    lua_pushboolean(L, p->done);
    lua_setfield(L, -2, "done");
    if (!isnan(p->val_accuracy)) {
        N(val_loss); N(val_accuracy);
    }
#undef I
#undef N
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        c->failed = 1; /* leave the error value on the stack */
        return 1;
    }
    int stop = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1);
    return stop;
}

static void push_stats(lua_State *L, const lps_epoch_stats *s, int epochs)
{
    lua_createtable(L, epochs, 0);
    for (int e = 0; e < epochs; e++) {
        lua_createtable(L, 0, 7);
        lua_pushinteger(L, e + 1);
        lua_setfield(L, -2, "epoch");
#define N(k) (lua_pushnumber(L, s[e].k), lua_setfield(L, -2, #k))
        N(loss); N(accuracy); N(seconds); N(lr);
        if (!isnan(s[e].val_accuracy)) {
            N(val_loss); N(val_accuracy);
        }
#undef N
        lua_rawseti(L, -2, e + 1);
    }
}

/* train(model, x, y, optimizer, opts[, progress]) -> list of epoch stats.
 * opts: epochs, batch_size, shuffle, drop_last, generator, schedule,
 * val_x, val_y, eval_batch, progress_interval. */
static int l_train(lua_State *L)
{
    lps_layer *m = lps_lua_checkmodule(L, 1);
    lps_tensor *x = lps_lua_checktensor(L, 2);
    lps_optim *opt = checkoptim(L, 4);
    luaL_checktype(L, 5, LUA_TTABLE);
    int64_t classes = model_classes(L, m, x, "train");
    int32_t *y = lps_lua_checklabels32(L, 3, x->shape[0], classes, "train");
    lps_train_opts o;
    memset(&o, 0, sizeof o);
    lua_Integer epochs = (lua_Integer)optnum(L, 5, "epochs", 1);
    lua_Integer bs = (lua_Integer)optnum(L, 5, "batch_size", 32);
    if (epochs < 0 || epochs > 1000000) return luaL_error(L, "train: epochs must be 0..1e6");
    if (bs < 1) return luaL_error(L, "train: batch_size must be >= 1, got %d", (int)bs);
    o.epochs = (int)epochs;
    o.batch_size = bs;
    o.shuffle = optbool(L, 5, "shuffle", 1);
    o.drop_last = optbool(L, 5, "drop_last", 0);
    lua_getfield(L, 5, "generator");
    int gen = lua_gettop(L);
    o.rng = lps_lua_optrng(L, lua_isnil(L, gen) ? 0 : gen);
    o.optim = opt;
    lps_schedule sched;
    lua_getfield(L, 5, "schedule");
    if (!lua_isnil(L, -1)) {
        checkschedule(L, lua_gettop(L), &sched);
        o.schedule = &sched;
    }
    lua_getfield(L, 5, "val_x");
    if (!lua_isnil(L, -1)) {
        o.val_x = lps_lua_checktensor(L, lua_gettop(L));
        model_classes(L, m, o.val_x, "train (validation)");
        lua_getfield(L, 5, "val_y");
        o.val_y = lps_lua_checklabels32(L, -1, o.val_x->shape[0], classes, "train (validation)");
    }
    o.eval_batch = (int64_t)optnum(L, 5, "eval_batch", 256);
    o.progress_interval = optnum(L, 5, "progress_interval", 0.25);
    progress_ctx ctx = {L, 0, 0};
    if (!lua_isnoneornil(L, 6)) {
        luaL_checktype(L, 6, LUA_TFUNCTION);
        ctx.fn = 6;
        o.progress = progress_cb;
        o.progress_ud = &ctx;
    }
    lps_epoch_stats *stats = lua_newuserdatauv(L, sizeof *stats * (size_t)(o.epochs + 1), 0);
    o.stats = stats;
    lps_layer_set_training(m, 1);
    /* The progress callback may close the Lua objects: hold our own
     * references for the duration (nothing below may raise before release). */
    optim_ud *ou = luaL_checkudata(L, 4, LPS_OPTIM_MT);
    lps_layer_ref(m);
    x = lps_tensor_reshape(x, x->ndim, x->shape);
    lps_tensor *vx = o.val_x ? lps_tensor_reshape(o.val_x, o.val_x->ndim, o.val_x->shape) : NULL;
    lps_status s = LPS_ENOMEM;
    if (x && (vx || !o.val_x)) {
        o.val_x = vx;
        ou->busy = 1;
        s = lps_train(m, x, y, &o);
        ou->busy = 0;
    }
    lps_tensor_free(x);
    lps_tensor_free(vx);
    lps_layer_free(m);
    if (ctx.failed) return lua_error(L); /* the callback's own error */
    LPS_LCHECK(L, s);
    push_stats(L, stats, o.epochs);
    return 1;
}

/* evaluate(model, x, y[, batch]) -> accuracy, loss */
static int l_evaluate(lua_State *L)
{
    lps_layer *m = lps_lua_checkmodule(L, 1);
    lps_tensor *x = lps_lua_checktensor(L, 2);
    int64_t classes = model_classes(L, m, x, "evaluate");
    int32_t *y = lps_lua_checklabels32(L, 3, x->shape[0], classes, "evaluate");
    lua_Integer batch = luaL_optinteger(L, 4, 256);
    luaL_argcheck(L, batch >= 1, 4, "batch must be >= 1");
    double loss, acc;
    LPS_LCHECK(L, lps_evaluate(m, x, y, batch, &loss, &acc));
    lua_pushnumber(L, acc);
    lua_pushnumber(L, loss);
    return 2;
}

static const luaL_Reg omethods[] = {
    {"step", o_step}, {"lr", o_lr}, {"reset", o_reset}, {"steps", o_steps},
    {"config", o_config}, {"close", o_gc}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"optimizer", l_optimizer}, {"schedule_lr", l_schedule_lr}, {"train", l_train},
    {"evaluate", l_evaluate}, {NULL, NULL}};

void lps_lua_open_train(lua_State *L)
{
    luaL_newmetatable(L, LPS_OPTIM_MT);
    luaL_newlib(L, omethods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, o_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, o_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, o_gc);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
}
