/* lua_data.c - IDX file readers for lualps/data.lua. */
#include "lua/nn_binding.h"

/* idx_images(path) -> N x (rows*cols) tensor in [0, 1] */
static int l_idx_images(lua_State *L)
{
    lps_lua_pushtensor(L, lps_idx_read_images(luaL_checkstring(L, 1)));
    return 1;
}

/* idx_labels(path) -> N tensor of the stored (0-based) classes */
static int l_idx_labels(lua_State *L)
{
    lps_lua_pushtensor(L, lps_idx_read_labels(luaL_checkstring(L, 1)));
    return 1;
}

static const luaL_Reg functions[] = {
    {"idx_images", l_idx_images}, {"idx_labels", l_idx_labels}, {NULL, NULL}};

void lps_lua_open_data(lua_State *L) { luaL_setfuncs(L, functions, 0); }
