/* lua_safetensors.c - safetensors reading and writing for lualps/safetensors.lua.
 * The functions live in core._safetensors (the friendly API is the Lua module). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "lua/binding.h"

/* A parsed file as a userdata, so an error while building the result tables
 * still frees it (through __gc / __close). */
#define ST_MT "lualps.safetensors.reader"
#define BUF_MT "lualps.safetensors.buffer"

/* Errors carry no position: lualps/safetensors.lua re-raises them at the
 * caller's line. */
static int fail(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return lua_error(L);
}

static int raise_last(lua_State *L) { return fail(L, "%s", lps_errmsg()); }

static lps_safetensors **push_holder(lua_State *L)
{
    lps_safetensors **h = lua_newuserdatauv(L, sizeof *h, 0);
    *h = NULL;
    luaL_setmetatable(L, ST_MT);
    return h;
}

static int holder_gc(lua_State *L)
{
    lps_safetensors **h = luaL_checkudata(L, 1, ST_MT);
    lps_safetensors_free(*h);
    *h = NULL;
    return 0;
}

static void push_metadata(lua_State *L, const lps_safetensors *st)
{
    lua_createtable(L, 0, (int)st->n_meta);
    for (size_t i = 0; i < st->n_meta; i++) {
        lua_pushstring(L, st->meta_values[i]);
        lua_setfield(L, -2, st->meta_keys[i]);
    }
}

static void push_shape(lua_State *L, const lps_st_entry *e)
{
    lua_createtable(L, e->rank, 0);
    for (int d = 0; d < e->rank; d++) {
        lua_pushinteger(L, e->shape[d]);
        lua_rawseti(L, -2, d + 1);
    }
}

/* tensors (name -> tensor), metadata, names (header order). */
static int push_contents(lua_State *L, const lps_safetensors *st)
{
    lua_createtable(L, 0, (int)st->n);
    push_metadata(L, st);
    lua_createtable(L, (int)st->n, 0);
    for (size_t i = 0; i < st->n; i++) {
        lps_tensor *t = lps_safetensors_tensor(st, i);
        if (!t) raise_last(L);
        lps_lua_pushtensor(L, t);
        lua_setfield(L, -4, st->entries[i].name);
        lua_pushstring(L, st->entries[i].name);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 3;
}

/* entries ({name, dtype, shape, offsets = {begin, end}}, header order), metadata. */
static int push_header(lua_State *L, const lps_safetensors *st)
{
    lua_createtable(L, (int)st->n, 0);
    for (size_t i = 0; i < st->n; i++) {
        const lps_st_entry *e = &st->entries[i];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, e->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, lps_st_dtype_name(e->dtype));
        lua_setfield(L, -2, "dtype");
        push_shape(L, e);
        lua_setfield(L, -2, "shape");
        lua_createtable(L, 2, 0);
        lua_pushinteger(L, (lua_Integer)e->begin);
        lua_rawseti(L, -2, 1);
        lua_pushinteger(L, (lua_Integer)e->end);
        lua_rawseti(L, -2, 2);
        lua_setfield(L, -2, "offsets");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    push_metadata(L, st);
    lua_pushinteger(L, (lua_Integer)st->header_len);
    return 3;
}

static lps_safetensors *open_path(lua_State *L, int header_only)
{
    const char *path = luaL_checkstring(L, 1);
    lps_safetensors **h = push_holder(L);
    *h = header_only ? lps_safetensors_load_header(path) : lps_safetensors_load(path);
    if (!*h) raise_last(L);
    return *h;
}

static lps_safetensors *open_bytes(lua_State *L)
{
    size_t n;
    const char *b = luaL_checklstring(L, 1, &n);
    lps_safetensors **h = push_holder(L);
    *h = lps_safetensors_parse(b, n); /* b stays alive: it is argument 1 */
    if (!*h) raise_last(L);
    return *h;
}

static int l_read(lua_State *L) { return push_contents(L, open_path(L, 0)); }
static int l_decode(lua_State *L) { return push_contents(L, open_bytes(L)); }
static int l_header(lua_State *L) { return push_header(L, open_path(L, 1)); }
static int l_decode_header(lua_State *L) { return push_header(L, open_bytes(L)); }

/* Arguments names (array of strings), tensors (array), metadata (map string ->
 * string, may be nil), checked here; the Lua module normalizes user input. */
typedef struct {
    const char **names, **mk, **mv;
    const lps_tensor **tensors;
    size_t n, n_meta;
} inputs;

static inputs *check_inputs(lua_State *L, int first)
{
    luaL_checktype(L, first, LUA_TTABLE);
    luaL_checktype(L, first + 1, LUA_TTABLE);
    size_t n = (size_t)luaL_len(L, first);
    if ((size_t)luaL_len(L, first + 1) != n)
        fail(L, "safetensors: %d names but %d tensors", (int)n, (int)luaL_len(L, first + 1));
    size_t n_meta = 0;
    if (!lua_isnoneornil(L, first + 2)) {
        luaL_checktype(L, first + 2, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, first + 2)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                fail(L, "safetensors: metadata keys and values must be strings, got %s = %s",
                           luaL_typename(L, -2), luaL_typename(L, -1));
            n_meta++;
            lua_pop(L, 1);
        }
    }
    /* GC-owned scratch: freed with the userdata, whatever raises below. */
    size_t words = 2 * n + 2 * n_meta + 1;
    inputs *in = lua_newuserdatauv(L, sizeof *in + words * sizeof(void *), 0);
    void **w = (void **)(in + 1);
    in->names = (const char **)w;
    in->tensors = (const lps_tensor **)(w + n);
    in->mk = (const char **)(w + 2 * n);
    in->mv = (const char **)(w + 2 * n + n_meta);
    in->n = n;
    in->n_meta = n_meta;
    for (size_t i = 0; i < n; i++) {
        lua_geti(L, first, (lua_Integer)i + 1);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (lua_type(L, -1) != LUA_TSTRING)
            fail(L, "safetensors: name %d is a %s, expected a string", (int)i + 1,
                       luaL_typename(L, -1));
        if (strlen(s) != len) fail(L, "safetensors: name %d contains a NUL byte", (int)i + 1);
        in->names[i] = s; /* anchored by the names table, which the caller keeps */
        lua_pop(L, 1);
        lua_geti(L, first + 1, (lua_Integer)i + 1);
        lps_tensor *t = lps_lua_totensor(L, -1);
        if (!t) fail(L, "safetensors: '%s' is a %s, expected a tensor", s, luaL_typename(L, -1));
        in->tensors[i] = t;
        lua_pop(L, 1);
    }
    size_t k = 0;
    if (n_meta) {
        lua_pushnil(L);
        while (lua_next(L, first + 2)) {
            size_t kl, vl;
            const char *ks = lua_tolstring(L, -2, &kl), *vs = lua_tolstring(L, -1, &vl);
            if (strlen(ks) != kl || strlen(vs) != vl)
                fail(L, "safetensors: metadata '%s' contains a NUL byte", ks);
            in->mk[k] = ks;
            in->mv[k++] = vs;
            lua_pop(L, 1);
        }
    }
    return in;
}

static int l_write(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    inputs *in = check_inputs(L, 2);
    if (lps_safetensors_save(path, in->names, in->tensors, in->n, in->mk, in->mv, in->n_meta))
        raise_last(L);
    return 0;
}

static int buf_gc(lua_State *L)
{
    void **box = luaL_checkudata(L, 1, BUF_MT);
    free(*box);
    *box = NULL;
    return 0;
}

static int l_encode(lua_State *L)
{
    inputs *in = check_inputs(L, 1);
    uint8_t **box = lua_newuserdatauv(L, sizeof *box, 0); /* frees the buffer if a push raises */
    *box = NULL;
    luaL_setmetatable(L, BUF_MT);
    size_t len;
    if (lps_safetensors_encode(in->names, in->tensors, in->n, in->mk, in->mv, in->n_meta, box, &len))
        raise_last(L);
    lua_pushlstring(L, (const char *)*box, len);
    free(*box);
    *box = NULL;
    return 1;
}

static const luaL_Reg functions[] = {
    {"read", l_read}, {"decode", l_decode}, {"header", l_header},
    {"decode_header", l_decode_header}, {"write", l_write}, {"encode", l_encode},
    {NULL, NULL}};

void lps_lua_open_safetensors(lua_State *L)
{
    luaL_newmetatable(L, ST_MT);
    lua_pushcfunction(L, holder_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, holder_gc);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    luaL_newmetatable(L, BUF_MT);
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_setfuncs(L, functions, 0);
}
