/* lua_arch.c - architectures between Lua and C: a Lua list of entry tables
 * is written as JSON and parsed by the one arch parser (csrc/nn/arch.c), so
 * a list and its JSON text are checked the same way; an arch is pushed back
 * as a list of tables. Also the registry's layer types, for lualps/nn.lua. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/binding.h"

#define ARCH_MT "lualps.arch"

typedef struct {
    lps_arch *arch;
    char *json;
} arch_box;

static int arch_gc(lua_State *L)
{
    arch_box *b = luaL_checkudata(L, 1, ARCH_MT);
    lps_arch_free(b->arch);
    free(b->json);
    b->arch = NULL;
    b->json = NULL;
    return 0;
}

lps_arch **lps_lua_newarchbox(lua_State *L)
{
    arch_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    memset(box, 0, sizeof *box);
    luaL_setmetatable(L, ARCH_MT);
    return &box->arch;
}

/* ---------------------------------------------------- a Lua list as JSON */

/* Growable text in a userdata whose __gc frees it, so a Lua error midway
 * cannot leak it (luaL_Buffer cannot be used: values are pushed above it). */
#define TEXT_MT "lualps.arch.text"
typedef struct {
    char *p;
    size_t n, cap;
} text;

static int text_gc(lua_State *L)
{
    text *t = luaL_checkudata(L, 1, TEXT_MT);
    free(t->p);
    t->p = NULL;
    return 0;
}

static void add(lua_State *L, text *t, const char *s, size_t n)
{
    if (t->n + n + 1 > t->cap) {
        size_t cap = (t->cap + n + 1) * 2;
        char *p = realloc(t->p, cap);
        if (!p) luaL_error(L, "arch: out of memory");
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = '\0';
}

static void adds(lua_State *L, text *t, const char *s) { add(L, t, s, strlen(s)); }

static void put_string(lua_State *L, text *t, const char *s, size_t n)
{
    adds(L, t, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            add(L, t, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            adds(L, t, esc);
        } else {
            add(L, t, (const char *)&c, 1);
        }
    }
    adds(L, t, "\"");
}

/* "op: " or "" when op is empty (lualps/arch.lua raises plain "arch: ..."). */
static const char *pre(lua_State *L, const char *op)
{
    return op && *op ? lua_pushfstring(L, "%s: ", op) : "";
}

/* The value at the top of the stack as JSON into t; pops it. */
static void put_value(lua_State *L, text *t, const char *op, int depth)
{
    char num[40];
    int ty = lua_type(L, -1);
    if (depth > 64) luaL_error(L, "%sarch: nested more than 64 deep", pre(L, op));
    if (ty == LUA_TNUMBER) {
        if (lua_isinteger(L, -1)) {
            snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, -1));
        } else {
            double v = lua_tonumber(L, -1);
            if (!isfinite(v)) luaL_error(L, "%sarch: a number is not finite (%f)", pre(L, op), v);
            snprintf(num, sizeof num, "%.17g", v);
        }
        adds(L, t, num);
    } else if (ty == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        put_string(L, t, s, n);
    } else if (ty == LUA_TBOOLEAN) {
        adds(L, t, lua_toboolean(L, -1) ? "true" : "false");
    } else if (ty == LUA_TTABLE) {
        lua_Integer n = luaL_len(L, -1);
        int is_list = n > 0;
        if (!is_list) { /* empty (a list), or an object */
            lua_pushnil(L);
            is_list = !lua_next(L, -2);
            if (!is_list) lua_pop(L, 2);
        }
        adds(L, t, is_list ? "[" : "{");
        if (is_list) {
            for (lua_Integer i = 1; i <= n; i++) {
                if (i > 1) adds(L, t, ",");
                lua_geti(L, -1, i);
                put_value(L, t, op, depth + 1);
            }
        } else {
            int first = 1;
            lua_pushnil(L);
            while (lua_next(L, -2)) {
                if (lua_type(L, -2) != LUA_TSTRING)
                    luaL_error(L, "%sarch: not a list of plain tables (a %s key)", pre(L, op),
                               luaL_typename(L, -2));
                if (!first) adds(L, t, ",");
                first = 0;
                size_t kn;
                const char *k = lua_tolstring(L, -2, &kn);
                put_string(L, t, k, kn);
                adds(L, t, ":");
                put_value(L, t, op, depth + 1); /* pops the value, keeps the key */
            }
        }
        adds(L, t, is_list ? "]" : "}");
    } else {
        luaL_error(L, "%sarch: not a list of plain tables (a %s)", pre(L, op), luaL_typename(L, -1));
    }
    lua_pop(L, 1);
}

lps_arch *lps_lua_checkarch(lua_State *L, int idx, const char *op)
{
    idx = lua_absindex(L, idx);
    lps_arch **box = lps_lua_newarchbox(L);
    size_t n;
    const char *src;
    text *t = NULL;
    if (lua_type(L, idx) == LUA_TSTRING) {
        src = lua_tolstring(L, idx, &n);
    } else if (lua_type(L, idx) == LUA_TTABLE) {
        if (luaL_len(L, idx) == 0) luaL_error(L, "%sarch: the list has no layers", pre(L, op));
        t = lua_newuserdatauv(L, sizeof *t, 0);
        memset(t, 0, sizeof *t);
        luaL_setmetatable(L, TEXT_MT);
        lua_pushvalue(L, idx);
        put_value(L, t, op, 0);
        src = t->p;
        n = t->n;
    } else {
        luaL_error(L, "%sarch: expected a list of layer tables or its JSON text, got %s", pre(L, op),
                   luaL_typename(L, idx));
        return NULL;
    }
    lps_status s = lps_arch_parse(box, src, n);
    if (t) lua_pop(L, 1); /* the text (freed by its __gc); the box stays */
    if (s) luaL_error(L, "%s%s", pre(L, op), lps_errmsg());
    return *box;
}

/* ---------------------------------------------------- an arch as Lua tables */

static void push_sizes(lua_State *L, int rank, const int64_t *d)
{
    lua_createtable(L, rank, 0);
    for (int i = 0; i < rank; i++) {
        lua_pushinteger(L, (lua_Integer)d[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

/* The metatable marking an empty branch list as a list (lualps/json.lua
 * writes it as [], not {}): the text of a stored arch parses again. */
#define LIST_MT "lualps.list"

static void push_list(lua_State *L, const lps_arch *a, int top)
{
    int input = top && a->in_rank > 0;
    lua_createtable(L, (int)a->n + input, 0);
    if (a->n + (size_t)input == 0) luaL_setmetatable(L, LIST_MT);
    if (input) {
        lua_createtable(L, 0, 2);
        lua_pushliteral(L, "input");
        lua_setfield(L, -2, "type");
        push_sizes(L, a->in_rank, a->in_shape);
        lua_setfield(L, -2, "shape");
        lua_rawseti(L, -2, 1);
    }
    for (size_t i = 0; i < a->n; i++) {
        const lps_arch_entry *e = &a->entries[i];
        const lps_field *f = lps_layer_type_fields(e->type);
        lua_createtable(L, 0, 8);
        lua_pushstring(L, lps_layer_type_name(e->type));
        lua_setfield(L, -2, "type");
        for (int k = 0; f && f[k].key; k++) {
            if (f[k].quiet && e->v[k] == f[k].def) continue;
            if (f[k].kind == LPS_FIELD_BOOL) lua_pushboolean(L, e->v[k] != 0);
            else if (f[k].kind == LPS_FIELD_INT) lua_pushinteger(L, (lua_Integer)e->v[k]);
            else lua_pushnumber(L, e->v[k]);
            lua_setfield(L, -2, f[k].key);
        }
        if (lps_layer_type_branches(e->type)) {
            static const lps_arch empty = {0, NULL, 0, {0, 0, 0}};
            push_list(L, e->body ? e->body : &empty, 0);
            lua_setfield(L, -2, "body");
            push_list(L, e->shortcut ? e->shortcut : &empty, 0);
            lua_setfield(L, -2, "shortcut");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1 + input);
    }
}

void lps_lua_pusharch(lua_State *L, const lps_arch *a) { push_list(L, a, 1); }

/* arch_parse(list or JSON) -> list (defaults filled), canonical JSON, shapes
 * (shapes[k]: sizes after list entry k without the batch, -1 where only the
 * input shape would tell, {} when not even the rank is known). */
static int l_arch_parse(lua_State *L)
{
    const char *op = luaL_optstring(L, 2, "");
    lps_arch *a = lps_lua_checkarch(L, 1, op);
    lps_lua_pusharch(L, a);
    char *json;
    size_t jl;
    LPS_LCHECK(L, lps_arch_to_json(a, &json, &jl));
    lua_pushlstring(L, json, jl);
    free(json);
    int input = a->in_rank > 0;
    lua_createtable(L, (int)a->n + input, 0);
    if (input) {
        push_sizes(L, a->in_rank, a->in_shape);
        lua_rawseti(L, -2, 1);
    }
    for (size_t i = 0; i < a->n; i++) {
        push_sizes(L, a->entries[i].rank, a->entries[i].shape);
        lua_rawseti(L, -2, (lua_Integer)i + 1 + input);
    }
    return 3;
}

/* layer_types() -> {{name =, fields = {{key =, kind = "int"|"real"|"bool",
 * lo =, hi =, default = (nil when required)}, ...}, branches = bool}, ...} */
static int l_layer_types(lua_State *L)
{
    static const char *const kinds[] = {"int", "real", "bool"};
    lua_newtable(L);
    for (int i = 0; lps_layer_type_at(i); i++) {
        const lps_layer_type *t = lps_layer_type_at(i);
        const lps_field *f = lps_layer_type_fields(t);
        lua_createtable(L, 0, 3);
        lua_pushstring(L, lps_layer_type_name(t));
        lua_setfield(L, -2, "name");
        lua_pushboolean(L, lps_layer_type_branches(t));
        lua_setfield(L, -2, "branches");
        lua_newtable(L);
        for (int k = 0; f && f[k].key; k++) {
            lua_createtable(L, 0, 5);
            lua_pushstring(L, f[k].key);
            lua_setfield(L, -2, "key");
            lua_pushstring(L, kinds[f[k].kind]);
            lua_setfield(L, -2, "kind");
            lua_pushnumber(L, f[k].lo);
            lua_setfield(L, -2, "lo");
            lua_pushnumber(L, f[k].hi);
            lua_setfield(L, -2, "hi");
            if (f[k].def == LPS_DEF_FIRST) {
                lua_pushstring(L, f[0].key);
                lua_setfield(L, -2, "default_from");
            } else if (f[k].def != LPS_REQUIRED) {
                if (f[k].kind == LPS_FIELD_BOOL) lua_pushboolean(L, f[k].def != 0);
                else if (f[k].kind == LPS_FIELD_INT) lua_pushinteger(L, (lua_Integer)f[k].def);
                else lua_pushnumber(L, f[k].def);
                lua_setfield(L, -2, "default");
            }
            lua_rawseti(L, -2, k + 1);
        }
        lua_setfield(L, -2, "fields");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static const luaL_Reg functions[] = {
    {"arch_parse", l_arch_parse}, {"layer_types", l_layer_types}, {NULL, NULL}};

void lps_lua_open_arch(lua_State *L)
{
    luaL_newmetatable(L, ARCH_MT);
    lua_pushcfunction(L, arch_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, TEXT_MT);
    lua_pushcfunction(L, text_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, LIST_MT); /* {__name = "lualps.list"} */
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
}
