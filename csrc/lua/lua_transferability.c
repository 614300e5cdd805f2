/* lua_transferability.c - Lua binding of the transferability estimators
 * (csrc/eval/transferability.c), as the table `_estimators` of
 * lualps.core, wrapped by lualps/estimators.lua (which turns tensors or
 * tables of 1-based labels into the integer arrays taken here). */
#include "lua/binding.h"

/* Labels at idx (1..classes, classes at cidx) through the one checker. */
static int64_t *labels(lua_State *L, int idx, int cidx, int64_t n, int64_t *classes, const char *op)
{
    lua_Integer c = luaL_checkinteger(L, cidx);
    if (c < 1 || c > (1 << 24)) luaL_error(L, "%s: class count %I out of range 1..2^24", op, (LUAI_UACINT)c);
    *classes = (int64_t)c;
    return lps_lua_checklabels(L, idx, n, c, op, "labels", NULL);
}

/* The first argument's tensor and the labels (2) with their class count (3). */
static const lps_tensor *inputs(lua_State *L, int64_t **y, int64_t *classes, const char *op)
{
    const lps_tensor *x = lps_lua_checktensor(L, 1);
    *y = labels(L, 2, 3, x->shape[0], classes, op);
    return x;
}

static void push_list(lua_State *L, const double *v, int64_t n)
{
    lua_createtable(L, (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        lua_pushnumber(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

/* logme(F, labels, classes, exact) -> score, {evidence...}, {alpha...}, {beta...} */
static int l_logme(lua_State *L)
{
    int64_t *y, classes;
    const lps_tensor *f = inputs(L, &y, &classes, "logme");
    double score, *per = lua_newuserdatauv(L, 3 * (size_t)classes * sizeof *per, 0);
    LPS_LCHECK(L, lps_logme(&score, per, per + classes, per + 2 * classes, f, y, classes, lua_toboolean(L, 4)));
    lua_pushnumber(L, score);
    for (int k = 0; k < 3; k++) push_list(L, per + k * classes, classes);
    return 4;
}

/* leep(theta, labels, classes) -> score */
static int l_leep(lua_State *L)
{
    int64_t *y, classes;
    const lps_tensor *theta = inputs(L, &y, &classes, "leep");
    double score;
    LPS_LCHECK(L, lps_leep(&score, theta, y, classes));
    lua_pushnumber(L, score);
    return 1;
}

/* knn(F, labels, classes, k) -> leave-one-out accuracy */
static int l_knn(lua_State *L)
{
    int64_t *y, classes;
    const lps_tensor *f = inputs(L, &y, &classes, "knn");
    double acc;
    LPS_LCHECK(L, lps_knn_loo(&acc, f, y, classes, (int64_t)luaL_checkinteger(L, 4)));
    lua_pushnumber(L, acc);
    return 1;
}

/* ridge(F, labels, classes, rho) -> accuracy, {mse, rho, lambda, rank,
 * grid_mse}, loo (n x classes tensor of the leave-one-out predictions) */
static int l_ridge(lua_State *L)
{
    int64_t *y, classes;
    const lps_tensor *f = inputs(L, &y, &classes, "linear_probe");
    double rho = luaL_checknumber(L, 4);
    int64_t n = f->shape[0], shape[2] = {n, classes};
    double *loo = lua_newuserdatauv(L, (size_t)(n * classes) * sizeof *loo, 0);
    lps_ridge_result r;
    LPS_LCHECK(L, lps_ridge_loo(&r, loo, f, y, classes, rho));
    lua_pushnumber(L, r.accuracy);
    lua_createtable(L, 0, 5);
    lua_pushnumber(L, r.mse);
    lua_setfield(L, -2, "mse");
    lua_pushnumber(L, r.rho);
    lua_setfield(L, -2, "rho");
    lua_pushnumber(L, r.lambda);
    lua_setfield(L, -2, "lambda");
    lua_pushinteger(L, (lua_Integer)r.rank);
    lua_setfield(L, -2, "rank");
    if (rho == 0.0) {
        push_list(L, r.grid_press, LPS_RIDGE_GRID);
        lua_setfield(L, -2, "grid_mse");
    }
    lps_tensor *t = lps_lua_emptytensor(L, 2, shape);
    for (int64_t i = 0; i < n * classes; i++) t->data[i] = (float)loo[i];
    return 3;
}

/* softmax(logits) -> row-wise probabilities */
static int l_softmax(lua_State *L)
{
    const lps_tensor *z = lps_lua_checktensor(L, 1);
    if (z->ndim != 2)
        return luaL_error(L, "softmax: logits must be a 2-D (samples x classes) tensor");
    lps_tensor *p = lps_lua_emptytensor(L, 2, z->shape);
    LPS_LCHECK(L, lps_softmax_rows(p, z));
    return 1;
}

static const luaL_Reg functions[] = {{"logme", l_logme}, {"leep", l_leep}, {"knn", l_knn},
                                     {"ridge", l_ridge}, {"softmax", l_softmax}, {NULL, NULL}};

void lps_lua_open_transferability(lua_State *L)
{
    luaL_setfuncs(L, functions, 0);
}
