/* lua_sys.c - threads, the wall clock and terminals. */
#include <time.h>
#include <unistd.h>

#include "lua/binding.h"

static int l_set_num_threads(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 1024, 1, "thread count must be 1..1024");
    lps_set_num_threads((int)n);
    return 0;
}

/* release_threads(): end the worker threads now (they start again on next use). */
static int l_release_threads(lua_State *L)
{
    (void)L;
    lps_threads_release();
    return 0;
}

/* set_conv_kernels([name]): force the convolutions' products ("unfused8",
 * "fma8", "wide16"; nil or "auto": the core's best); returns the kernels now
 * in use. */
static int l_set_conv_kernels(lua_State *L)
{
    if (lps_set_conv_kernels(luaL_optstring(L, 1, NULL)) != LPS_OK) return lps_lua_raise(L);
    lua_pushstring(L, lps_conv_kernels());
    return 1;
}

/* _set_conv_fold_direct(on): see lps_set_conv_fold_direct (for tests). */
static int l_set_conv_fold_direct(lua_State *L)
{
    lps_set_conv_fold_direct(lua_toboolean(L, 1));
    return 0;
}

/* The state's closing: the worker threads end, the cached float blocks go back to malloc. */
static int l_state_closes(lua_State *L)
{
    (void)L;
    lps_threads_release();
    lps_floats_cache_clear();
    return 0;
}

/* cached_memory() -> blocks, bytes: the freed float blocks (64 KiB and
 * more) the core keeps for reuse (lps_floats_cached). */
static int l_cached_memory(lua_State *L)
{
    int blocks;
    size_t bytes;
    lps_floats_cached(&blocks, &bytes);
    lua_pushinteger(L, blocks);
    lua_pushinteger(L, (lua_Integer)bytes);
    return 2;
}

/* release_memory() -> blocks, bytes: hand the kept blocks back to malloc
 * now (lps_floats_cache_clear); what was kept. */
static int l_release_memory(lua_State *L)
{
    l_cached_memory(L);
    lps_floats_cache_clear();
    return 2;
}

static int l_get_num_threads(lua_State *L)
{
    lua_pushinteger(L, lps_get_num_threads());
    return 1;
}

/* Monotonic wall-clock seconds: os.clock() is CPU time, which sums over
 * BLAS threads and so cannot time a parallel matmul. */
static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
    return 1;
}

/* isatty(fd): progress bars draw only on terminals. */
static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 2)));
    return 1;
}

/* build_info() -> {version, blas_kernel, blas_config, conv_kernels,
 * threads}: what a figure depends on besides the code and the seed. */
static int l_build_info(lua_State *L)
{
    lua_createtable(L, 0, 5);
    lua_pushliteral(L, LPS_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, lps_blas_kernel());
    lua_setfield(L, -2, "blas_kernel");
    lua_pushstring(L, lps_blas_config());
    lua_setfield(L, -2, "blas_config");
    lua_pushstring(L, lps_conv_kernels());
    lua_setfield(L, -2, "conv_kernels");
    lua_pushinteger(L, lps_get_num_threads());
    lua_setfield(L, -2, "threads");
    return 1;
}

static const luaL_Reg functions[] = {
    {"build_info", l_build_info},
    {"set_num_threads", l_set_num_threads}, {"get_num_threads", l_get_num_threads},
    {"release_threads", l_release_threads}, {"set_conv_kernels", l_set_conv_kernels},
    {"_set_conv_fold_direct", l_set_conv_fold_direct}, {"cached_memory", l_cached_memory}, {"release_memory", l_release_memory},
    {"now", l_now}, {"isatty", l_isatty}, {NULL, NULL}};

void lps_lua_open_sys(lua_State *L)
{
    /* a registry sentinel: when the state closes, the worker threads end
     * and the cached float blocks are freed */
    lua_newuserdatauv(L, 0, 0);
    lua_newtable(L);
    lua_pushcfunction(L, l_state_closes);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_setfuncs(L, functions, 0);
}
