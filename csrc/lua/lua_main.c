/* lua_main.c - luaopen_lualps_core: generators, threads, and the module table. */
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lua/binding.h"

/* The module's default generator lives in the registry under this key. */
static const char DEFAULT_RNG_KEY = 0;
#define DEFAULT_SEED 0x5eedULL

static lps_rng *checkgen(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, LPS_GENERATOR_MT);
}

lps_rng *lps_lua_optrng(lua_State *L, int idx)
{
    if (idx > 0 && !lua_isnoneornil(L, idx)) return checkgen(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &DEFAULT_RNG_KEY);
    lps_rng *r = lua_touserdata(L, -1);
    lua_pop(L, 1); /* still referenced by the registry */
    return r;
}

static lps_rng *push_generator(lua_State *L, lua_Integer seed)
{
    lps_rng *r = lua_newuserdatauv(L, sizeof *r, 1);
    lps_rng_seed(r, (uint64_t)seed);
    lua_pushinteger(L, seed);
    lua_setiuservalue(L, -2, 1); /* remembered for tostring */
    luaL_setmetatable(L, LPS_GENERATOR_MT);
    return r;
}

static int l_generator(lua_State *L)
{
    push_generator(L, luaL_optinteger(L, 1, (lua_Integer)DEFAULT_SEED));
    return 1;
}

static int l_manual_seed(lua_State *L)
{
    lua_Integer seed = luaL_checkinteger(L, 1);
    lps_rng_seed(lps_lua_optrng(L, 0), (uint64_t)seed);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &DEFAULT_RNG_KEY);
    lua_pushinteger(L, seed);
    lua_setiuservalue(L, -2, 1);
    return 0;
}

static int l_default_generator(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &DEFAULT_RNG_KEY);
    return 1;
}

static int g_seed(lua_State *L)
{
    lps_rng *r = checkgen(L, 1);
    lua_Integer seed = luaL_checkinteger(L, 2);
    lps_rng_seed(r, (uint64_t)seed);
    lua_pushinteger(L, seed);
    lua_setiuservalue(L, 1, 1);
    lua_settop(L, 1);
    return 1;
}

static int g_uniform(lua_State *L)
{
    lua_pushnumber(L, lps_rng_uniform(checkgen(L, 1)));
    return 1;
}

static int g_normal(lua_State *L)
{
    lua_pushnumber(L, lps_rng_normal(checkgen(L, 1)));
    return 1;
}

/* g:random(n) -> integer in 1..n; g:random(m, n) -> m..n (like math.random). */
static int g_random(lua_State *L)
{
    lps_rng *r = checkgen(L, 1);
    lua_Integer lo = 1, hi;
    if (lua_isnoneornil(L, 3))
        hi = luaL_checkinteger(L, 2);
    else {
        lo = luaL_checkinteger(L, 2);
        hi = luaL_checkinteger(L, 3);
    }
    luaL_argcheck(L, lo <= hi, 2, "interval is empty");
    uint64_t span = (uint64_t)hi - (uint64_t)lo + 1;
    uint64_t x = span ? lps_rng_below(r, span) : lps_rng_next(r);
    lua_pushinteger(L, (lua_Integer)((uint64_t)lo + x));
    return 1;
}

/* g:state() -> a string of the 32 state bytes and the spare normal, so a
 * generator can be saved and restored exactly. */
static int g_state(lua_State *L)
{
    lps_rng *r = checkgen(L, 1);
    if (lua_isnoneornil(L, 2)) {
        lua_pushlstring(L, (const char *)r, sizeof *r);
        return 1;
    }
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    luaL_argcheck(L, n == sizeof *r, 2, "not a generator state");
    memcpy(r, s, sizeof *r);
    lua_settop(L, 1);
    return 1;
}

static int g_tostring(lua_State *L)
{
    checkgen(L, 1);
    lua_getiuservalue(L, 1, 1);
    lua_pushfstring(L, "lualps.Generator (xoshiro256**, seed %I)", (LUAI_UACINT)lua_tointeger(L, -1));
    return 1;
}

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

static const luaL_Reg gen_methods[] = {
    {"seed", g_seed}, {"uniform", g_uniform}, {"normal", g_normal},
    {"random", g_random}, {"state", g_state}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"generator", l_generator}, {"manual_seed", l_manual_seed},
    {"default_generator", l_default_generator}, {"set_num_threads", l_set_num_threads},
    {"get_num_threads", l_get_num_threads}, {"release_threads", l_release_threads}, {"now", l_now}, {"isatty", l_isatty}, {NULL, NULL}};

void lps_lua_open_generator(lua_State *L)
{
    luaL_newmetatable(L, LPS_GENERATOR_MT);
    luaL_newlib(L, gen_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, g_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    push_generator(L, (lua_Integer)DEFAULT_SEED);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &DEFAULT_RNG_KEY);
    luaL_setfuncs(L, functions, 0);
}

int luaopen_lualps_core(lua_State *L)
{
    /* a registry sentinel: when the state closes, the worker threads end */
    lua_newuserdatauv(L, 0, 0);
    lua_newtable(L);
    lua_pushcfunction(L, l_release_threads);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    lps_lua_open_generator(L);
    lps_lua_open_tensor(L);
    /* Each binding file adds its functions to the module table here. */
    lps_lua_open_safetensors(L);
    lps_lua_open_eval(L);
    lps_lua_open_nn(L);
    lps_lua_open_modelset(L);
    lps_lua_open_lps(L);
    lps_lua_open_transferability(L);
    lua_pushliteral(L, LPS_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
