/* lua_modelset.c - the low-level ModelSet file object (lualps.ModelSetFile)
 * and verify/repair; lualps/modelset.lua builds the user API on top
 * (JSON, models, iteration). Indices are 1-based here. */
#include <string.h>

#include "lua/binding.h"

#define MSET_MT "lualps.ModelSetFile"

typedef struct { lps_mset *ms; } mset_ud;

static const char *const codec_names[] = {"plain", "shuffle", "bf16", NULL};

static lps_mset *checkset(lua_State *L, int idx)
{
    mset_ud *u = luaL_checkudata(L, idx, MSET_MT);
    if (!u->ms) luaL_argerror(L, idx, "modelset has been closed");
    return u->ms;
}

static mset_ud *new_ud(lua_State *L)
{
    mset_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->ms = NULL;
    luaL_setmetatable(L, MSET_MT);
    return u;
}

static lps_codec check_codec(lua_State *L, int idx)
{
    return (lps_codec)(luaL_checkoption(L, idx, NULL, codec_names) + 1);
}

static const char *codec_name(int c)
{
    return c >= 1 && c <= 3 ? codec_names[c - 1] : "?";
}

/* opts table at idx -> lps_mset_opts (unknown keys are refused, so typos show) */
static void read_opts(lua_State *L, int idx, lps_mset_opts *o, int for_append)
{
    lps_mset_opts_default(o);
    if (for_append) o->codec = 0;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (strcmp(k, "codec") == 0)
            o->codec = check_codec(L, -1);
        else if (strcmp(k, "level") == 0)
            o->level = (int)luaL_checkinteger(L, -1);
        else if (strcmp(k, "sync") == 0)
            o->sync = lua_toboolean(L, -1);
        else if (strcmp(k, "overwrite") == 0)
            o->overwrite = lua_toboolean(L, -1);
        else
            luaL_error(L, "modelset: unknown option '%s' (codec, level, sync, overwrite)", k);
        lua_pop(L, 1);
    }
}

static int l_create(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lps_mset_opts o;
    read_opts(L, 2, &o, 0);
    mset_ud *u = new_ud(L);
    LPS_LCHECK(L, lps_mset_create(&u->ms, path, &o));
    return 1;
}

static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    static const char *const modes[] = {"r", "a", NULL};
    int append = luaL_checkoption(L, 2, "r", modes);
    lps_mset_opts o;
    read_opts(L, 3, &o, 1);
    mset_ud *u = new_ud(L);
    LPS_LCHECK(L, lps_mset_open(&u->ms, path, append, lua_isnoneornil(L, 3) ? NULL : &o));
    return 1;
}

static int l_open_string(lua_State *L)
{
    size_t n;
    luaL_checklstring(L, 1, &n);
    mset_ud *u = new_ud(L);
    /* the image must outlive the set: keep the string in the registry under u */
    lua_pushvalue(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, u);
    LPS_LCHECK(L, lps_mset_open_mem(&u->ms, lua_tostring(L, 1), n));
    return 1;
}

static int64_t check_record(lua_State *L, lps_mset *ms, int idx)
{
    lua_Integer i = luaL_checkinteger(L, idx);
    if (i < 1 || i > lps_mset_count(ms))
        luaL_error(L, "%s: record %d out of range 1..%d", lps_mset_path(ms), (int)i,
                   (int)lps_mset_count(ms));
    return (int64_t)i - 1;
}

static int m_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lps_mset_count(checkset(L, 1)));
    return 1;
}

/* meta(i) -> the record's metadata JSON; meta(i, key, ...) -> the raw
 * JSON text of each top-level key (nil where absent) */
static int m_meta(lua_State *L)
{
    lps_mset *ms = checkset(L, 1);
    int64_t r = check_record(L, ms, 2);
    int nk = lua_gettop(L) - 2;
    const char *keys[8];
    if (nk > 8) luaL_argerror(L, 11, "at most 8 keys");
    for (int k = 0; k < nk; k++) keys[k] = luaL_checkstring(L, k + 3);
    lps_mset_record rec;
    LPS_LCHECK(L, lps_mset_read(ms, r, LPS_MSET_META, &rec));
    if (nk == 0) {
        lua_pushlstring(L, rec.meta, rec.meta_len);
        lps_mset_record_clear(&rec);
        return 1;
    }
    size_t off[8], len[8];
    lps_status s = lps_json_members(rec.meta, rec.meta_len, (size_t)nk, keys, off, len);
    if (s) {
        lps_mset_record_clear(&rec);
        return luaL_error(L, "%s: record %d: metadata: %s", lps_mset_path(ms), (int)r + 1, lps_errmsg());
    }
    luaL_checkstack(L, nk, "meta keys");
    for (int k = 0; k < nk; k++) {
        if (len[k]) lua_pushlstring(L, rec.meta + off[k], len[k]);
        else lua_pushnil(L);
    }
    lps_mset_record_clear(&rec);
    return nk;
}

static void push_codecs(lua_State *L, uint32_t mask)
{
    lua_newtable(L);
    int n = 0;
    for (int c = 1; c <= 3; c++)
        if (mask & (1u << (c - 1))) {
            lua_pushstring(L, codec_name(c));
            lua_rawseti(L, -2, ++n);
        }
}

static int m_info(lua_State *L)
{
    lps_mset *ms = checkset(L, 1);
    lps_mset_info in;
    LPS_LCHECK(L, lps_mset_record_info(ms, check_record(L, ms, 2), &in));
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)in.offset);
    lua_setfield(L, -2, "offset");
    lua_pushinteger(L, (lua_Integer)in.length);
    lua_setfield(L, -2, "bytes");
    lua_pushinteger(L, (lua_Integer)in.decoded_bytes);
    lua_setfield(L, -2, "decoded_bytes");
    lua_pushinteger(L, (lua_Integer)in.meta_len);
    lua_setfield(L, -2, "meta_bytes");
    lua_pushinteger(L, (lua_Integer)in.ntensors);
    lua_setfield(L, -2, "ntensors");
    push_codecs(L, in.codecs);
    lua_setfield(L, -2, "codecs");
    return 1;
}

/* Array of {name, shape, codec, offset, stored_bytes, crc[, tensor]}. */
static int read_tensors(lua_State *L, int what)
{
    lps_mset *ms = checkset(L, 1);
    int64_t i = check_record(L, ms, 2);
    lps_mset_record rec;
    lua_createtable(L, 0, 0); /* before the read: no Lua error while rec is held */
    LPS_LCHECK(L, lps_mset_read(ms, i, what, &rec));
    for (int k = 0; k < rec.ntensors; k++) {
        lps_mset_tensor *d = &rec.tensors[k];
        lua_createtable(L, 0, 7);
        lua_pushstring(L, d->name);
        lua_setfield(L, -2, "name");
        lua_createtable(L, d->ndim, 0);
        for (int j = 0; j < d->ndim; j++) {
            lua_pushinteger(L, (lua_Integer)d->shape[j]);
            lua_rawseti(L, -2, j + 1);
        }
        lua_setfield(L, -2, "shape");
        lua_pushstring(L, codec_name(d->codec));
        lua_setfield(L, -2, "codec");
        lua_pushinteger(L, (lua_Integer)d->offset);
        lua_setfield(L, -2, "offset");
        lua_pushinteger(L, (lua_Integer)d->stored_bytes);
        lua_setfield(L, -2, "stored_bytes");
        lua_pushinteger(L, (lua_Integer)d->crc);
        lua_setfield(L, -2, "crc");
        if (d->tensor) {
            lps_lua_pushtensor(L, d->tensor);
            d->tensor = NULL; /* Lua owns it now */
            lua_setfield(L, -2, "tensor");
        }
        lua_rawseti(L, -2, k + 1);
    }
    lps_mset_record_clear(&rec);
    return 1;
}

static int m_tensors(lua_State *L) { return read_tensors(L, LPS_MSET_DATA); }
static int m_table(lua_State *L) { return read_tensors(L, LPS_MSET_TABLE); }

/* f:append(json, {{name=, tensor=, codec=}, ...}) -> 1-based index */
static int m_append(lua_State *L)
{
    lps_mset *ms = checkset(L, 1);
    size_t mlen;
    const char *meta = luaL_checklstring(L, 2, &mlen);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 3);
    luaL_argcheck(L, n >= 0 && n <= LPS_MSET_MAX_TENSORS, 3, "too many tensors");
    /* scratch owned by Lua, so an error below leaks nothing */
    lps_mset_input *in = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *in, 0);
    /* raw access only: every string and tensor used below stays anchored in
     * the tables of argument 3 (no metamethod can hand out a temporary) */
    for (lua_Integer k = 1; k <= n; k++) {
        lua_rawgeti(L, 3, k);
        if (!lua_istable(L, -1)) luaL_error(L, "modelset append: entry %d is not a table", (int)k);
        lua_pushliteral(L, "name");
        lua_rawget(L, -2);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "modelset append: entry %d has no string name", (int)k);
        in[k - 1].name = lua_tostring(L, -1);
        lua_pushliteral(L, "tensor");
        lua_rawget(L, -3);
        in[k - 1].tensor = lps_lua_totensor(L, -1);
        if (!in[k - 1].tensor)
            luaL_error(L, "modelset append: '%s' is not a live tensor", in[k - 1].name);
        lua_pushliteral(L, "codec");
        lua_rawget(L, -4);
        in[k - 1].codec = lua_isnil(L, -1) ? 0 : check_codec(L, -1);
        lua_pop(L, 4);
    }
    int64_t index;
    LPS_LCHECK(L, lps_mset_append(ms, meta, mlen, in, (int)n, &index));
    lua_pushinteger(L, (lua_Integer)index + 1);
    return 1;
}

static int m_copy_from(lua_State *L)
{
    lps_mset *dst = checkset(L, 1), *src = checkset(L, 2);
    int64_t index;
    LPS_LCHECK(L, lps_mset_copy(dst, src, check_record(L, src, 3), &index));
    lua_pushinteger(L, (lua_Integer)index + 1);
    return 1;
}

static int m_flush(lua_State *L)
{
    LPS_LCHECK(L, lps_mset_flush(checkset(L, 1)));
    return 0;
}

static int m_close(lua_State *L)
{
    mset_ud *u = luaL_checkudata(L, 1, MSET_MT);
    lps_mset *ms = u->ms;
    u->ms = NULL;
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, u); /* a memory image, if any */
    if (ms) LPS_LCHECK(L, lps_mset_close(ms));
    return 0;
}

static int m_gc(lua_State *L)
{
    mset_ud *u = luaL_checkudata(L, 1, MSET_MT);
    if (u->ms) lps_mset_close(u->ms); /* errors cannot be raised from __gc */
    u->ms = NULL;
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, u);
    return 0;
}

static int m_state(lua_State *L)
{
    lps_mset *ms = checkset(L, 1);
    lua_createtable(L, 0, 6);
    lua_pushstring(L, lps_mset_path(ms));
    lua_setfield(L, -2, "path");
    lua_pushinteger(L, (lua_Integer)lps_mset_count(ms));
    lua_setfield(L, -2, "count");
    lua_pushstring(L, codec_name(lps_mset_default_codec(ms)));
    lua_setfield(L, -2, "codec");
    lua_pushstring(L, lps_mset_writable(ms) ? "a" : "r");
    lua_setfield(L, -2, "mode");
    lua_pushboolean(L, lps_mset_indexed(ms));
    lua_setfield(L, -2, "indexed");
    lua_pushinteger(L, (lua_Integer)lps_mset_tail_bytes(ms));
    lua_setfield(L, -2, "tail_bytes");
    return 1;
}

static int m_tostring(lua_State *L)
{
    mset_ud *u = luaL_checkudata(L, 1, MSET_MT);
    if (!u->ms) lua_pushliteral(L, "lualps.ModelSetFile (closed)");
    else
        lua_pushfstring(L, "lualps.ModelSetFile %s (%d records, %s, %s)", lps_mset_path(u->ms),
                        (int)lps_mset_count(u->ms), codec_name(lps_mset_default_codec(u->ms)),
                        lps_mset_writable(u->ms) ? "append" : "read-only");
    return 1;
}

static void push_report(lua_State *L, const lps_mset_report *r)
{
    lua_createtable(L, 0, 8);
    lua_pushboolean(L, r->nproblems == 0);
    lua_setfield(L, -2, "ok");
    lua_pushinteger(L, (lua_Integer)r->records);
    lua_setfield(L, -2, "records");
    lua_pushboolean(L, r->indexed);
    lua_setfield(L, -2, "indexed");
    lua_pushinteger(L, (lua_Integer)r->tail_bytes);
    lua_setfield(L, -2, "tail_bytes");
    lua_pushboolean(L, r->truncated);
    lua_setfield(L, -2, "truncated");
    lua_pushboolean(L, r->rewrote);
    lua_setfield(L, -2, "rewrote");
    if (r->backup[0]) {
        lua_pushstring(L, r->backup);
        lua_setfield(L, -2, "backup");
    }
    int kept = r->nproblems < 1000 ? r->nproblems : 1000;
    lua_createtable(L, kept, 0);
    for (int k = 0; k < kept; k++) {
        const lps_mset_problem *p = &r->problems[k];
        lua_createtable(L, 0, 3);
        if (p->record >= 0) {
            lua_pushinteger(L, (lua_Integer)p->record + 1);
            lua_setfield(L, -2, "record");
        }
        lua_pushinteger(L, (lua_Integer)p->offset);
        lua_setfield(L, -2, "offset");
        lua_pushstring(L, p->msg);
        lua_setfield(L, -2, "message");
        lua_rawseti(L, -2, k + 1);
    }
    lua_setfield(L, -2, "problems");
    lua_pushinteger(L, r->nproblems);
    lua_setfield(L, -2, "nproblems");
}

static int check_report(lua_State *L, lps_status (*f)(const char *, lps_mset_report *))
{
    const char *path = luaL_checkstring(L, 1);
    lps_mset_report r;
    lps_status s = f(path, &r);
    if (s) {
        lps_mset_report_free(&r);
        return lps_lua_raise(L);
    }
    push_report(L, &r); /* only allocation errors can raise here */
    lps_mset_report_free(&r);
    return 1;
}

static int l_verify(lua_State *L) { return check_report(L, lps_mset_verify); }
static int l_repair(lua_State *L) { return check_report(L, lps_mset_repair); }

static int l_verify_string(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lps_mset_report r;
    if (lps_mset_verify_mem(s, n, &r)) {
        lps_mset_report_free(&r);
        return lps_lua_raise(L);
    }
    push_report(L, &r);
    lps_mset_report_free(&r);
    return 1;
}

/* crc32c(s[, portable]) -> the format's checksum of s (for tests and tools) */
static int l_crc32c(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_pushinteger(L, (lua_Integer)(lua_toboolean(L, 2) ? lps_crc32c_portable(s, n)
                                                         : lps_crc32c(s, n)));
    return 1;
}

static const luaL_Reg methods[] = {
    {"meta", m_meta}, {"info", m_info}, {"tensors", m_tensors}, {"table", m_table},
    {"append", m_append}, {"copy_from", m_copy_from}, {"flush", m_flush}, {"close", m_close},
    {"state", m_state}, {"count", m_len}, {NULL, NULL}};

static const luaL_Reg metamethods[] = {
    {"__len", m_len}, {"__gc", m_gc}, {"__close", m_close}, {"__tostring", m_tostring},
    {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"create", l_create}, {"open", l_open}, {"open_string", l_open_string},
    {"verify", l_verify}, {"verify_string", l_verify_string}, {"repair", l_repair},
    {"crc32c", l_crc32c},
    {NULL, NULL}};

void lps_lua_open_modelset(lua_State *L)
{
    luaL_newmetatable(L, MSET_MT);
    luaL_setfuncs(L, metamethods, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    /* private: lualps/modelset.lua is the public face */
    luaL_setfuncs(L, functions, 0);
}
