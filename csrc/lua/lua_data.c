/* lua_data.c - IDX file readers and image domains for lualps/data.lua. */
#include "lua/binding.h"

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

/* image_domain(x, name) -> a new tensor of x's shape in that domain */
static int l_image_domain(lua_State *L)
{
    lps_tensor *x = lps_lua_checktensor(L, 1);
    const char *name = luaL_checkstring(L, 2);
    int d = lps_domain_from_name(name);
    if (d < 0) return luaL_argerror(L, 2, lua_pushfstring(L, "unknown domain '%s'", name));
    lps_tensor *out = lps_lua_emptytensor(L, x->ndim, x->shape);
    LPS_LCHECK(L, lps_image_domain(out, x, (lps_domain)d));
    return 1;
}

/* domain_names() -> the list of domain names, in enum order (the one table
 * of names is lps_domain_name's) */
static int l_domain_names(lua_State *L)
{
    lua_createtable(L, LPS_NDOMAINS, 0);
    for (int d = 0; d < LPS_NDOMAINS; d++) {
        lua_pushstring(L, lps_domain_name((lps_domain)d));
        lua_rawseti(L, -2, d + 1);
    }
    return 1;
}

static const luaL_Reg functions[] = {
    {"idx_images", l_idx_images}, {"idx_labels", l_idx_labels}, {"image_domain", l_image_domain},
    {"domain_names", l_domain_names},
    {NULL, NULL}};

void lps_lua_open_data(lua_State *L) { luaL_setfuncs(L, functions, 0); }
