/* lua_main.c - luaopen_lualps_core: opens every sub-binding, as Lua's
 * linit.c opens the standard libraries. Each adds its functions to the
 * module table itself (name NULL) or to one of its private sub-tables,
 * which the Lua modules of lualps/ wrap. */
#include "lua/binding.h"

static const struct {
    const char *table;
    void (*open)(lua_State *L);
} subs[] = {
    {NULL, lps_lua_open_sys},         {NULL, lps_lua_open_rng},
    {NULL, lps_lua_open_tensor},      {"_nn", lps_lua_open_arch},
    {"_nn", lps_lua_open_nn},         {"_nn", lps_lua_open_train},
    {"_nn", lps_lua_open_data},       {"_safetensors", lps_lua_open_safetensors},
    {"_modelset", lps_lua_open_modelset}, {"_lps", lps_lua_open_lps},
    {"_lps", lps_lua_open_templates},
    {"_eval", lps_lua_open_net},      {"_eval", lps_lua_open_metrics},
    {"_eval", lps_lua_open_project},   {"_glyphs", lps_lua_open_glyphs},
    {"_estimators", lps_lua_open_transferability},
};

int luaopen_lualps_core(lua_State *L)
{
    lua_newtable(L);
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        if (!subs[i].table) {
            subs[i].open(L);
            continue;
        }
        if (lua_getfield(L, -1, subs[i].table) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, subs[i].table);
        }
        subs[i].open(L);
        lua_pop(L, 1);
    }
    lua_pushliteral(L, LPS_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
