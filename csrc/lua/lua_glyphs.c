/* lua_glyphs.c - the letter renderer (csrc/data/) for lualps/data.lua: a
 * handle owning the loaded faces, and the face table. */
#include "lua/binding.h"

#define GLYPHS_MT "lualps.Glyphs"

typedef struct {
    lps_glyphs *g; /* NULL once collected */
} glyphs_ud;

static lps_glyphs *checkglyphs(lua_State *L, int idx)
{
    glyphs_ud *u = luaL_checkudata(L, idx, GLYPHS_MT);
    if (!u->g) luaL_error(L, "glyphs: the font handle is closed");
    return u->g;
}

/* open([root]) -> handle with every face loaded (root prefixes the paths) */
static int l_open(lua_State *L)
{
    const char *root = luaL_optstring(L, 1, NULL);
    glyphs_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->g = NULL;
    luaL_setmetatable(L, GLYPHS_MT);
    LPS_LCHECK(L, lps_glyphs_open(&u->g, root));
    return 1;
}

static int g_gc(lua_State *L)
{
    glyphs_ud *u = luaL_checkudata(L, 1, GLYPHS_MT);
    lps_glyphs_free(u->g);
    u->g = NULL;
    return 0;
}

/* h:render(y, seed) -> N x 784: image i of class y[i] (1-based: 1..52 letters, 53..62 digits) */
static int g_render(lua_State *L)
{
    lps_glyphs *g = checkglyphs(L, 1);
    lps_tensor *yt = lps_lua_checktensor(L, 2);
    lua_Integer seed = luaL_checkinteger(L, 3);
    int32_t *y = lps_lua_checklabels32(L, 2, yt->numel, LPS_GLYPH_ALL, "glyphs");
    int64_t shape[2] = {yt->numel, LPS_GLYPH_SIDE * LPS_GLYPH_SIDE};
    lps_tensor *x = lps_lua_emptytensor(L, 2, shape);
    LPS_LCHECK(L, lps_glyphs_render(g, x, y, (uint64_t)seed));
    return 1;
}

static double field(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    int ok;
    double v = lua_tonumberx(L, -1, &ok);
    if (!ok) luaL_error(L, "glyph: %s must be a number, got a %s", k, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

/* h:render_one(class, {face, size, angle, dx, dy, stroke, ink, noise}[, gen])
 * -> 784 floats; class and face 1-based, every field required */
static int g_render_one(lua_State *L)
{
    lps_glyphs *g = checkglyphs(L, 1);
    lua_Integer cls = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    lps_glyph_params p;
    lua_getfield(L, 3, "face");
    int ok;
    lua_Integer face = lua_tointegerx(L, -1, &ok);
    if (!ok) return luaL_error(L, "glyph: face must be an integer 1..%d", lps_glyph_nfaces());
    lua_pop(L, 1);
    p.face = face < 1 || face > lps_glyph_nfaces() ? -1 : (int)face - 1;
    if (p.face < 0) return luaL_error(L, "glyph: face %I out of range 1..%d", face, lps_glyph_nfaces());
    p.size = field(L, 3, "size");
    p.angle = field(L, 3, "angle");
    p.dx = field(L, 3, "dx");
    p.dy = field(L, 3, "dy");
    p.stroke = field(L, 3, "stroke");
    p.ink = field(L, 3, "ink");
    p.noise = field(L, 3, "noise");
    if (cls < 1 || cls > LPS_GLYPH_ALL)
        return luaL_error(L, "glyph: class %I out of range 1..%d", cls, LPS_GLYPH_ALL);
    lps_rng *r = lps_lua_optrng(L, lua_isnoneornil(L, 4) ? 0 : 4);
    int64_t n = LPS_GLYPH_SIDE * LPS_GLYPH_SIDE;
    lps_tensor *x = lps_lua_emptytensor(L, 1, &n);
    LPS_LCHECK(L, lps_glyph_render(g, (int)cls - 1, &p, r, x->data));
    return 1;
}

/* draw([gen]) -> {face (1-based), size, angle, dx, dy, stroke, ink, noise} */
static int l_draw(lua_State *L)
{
    lps_glyph_params p;
    lps_glyph_draw(lps_lua_optrng(L, lua_isnoneornil(L, 1) ? 0 : 1), &p);
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, p.face + 1);
    lua_setfield(L, -2, "face");
    const struct { const char *k; double v; } f[] = {
        {"size", p.size}, {"angle", p.angle}, {"dx", p.dx}, {"dy", p.dy},
        {"stroke", p.stroke}, {"ink", p.ink}, {"noise", p.noise}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        lua_pushnumber(L, f[i].v);
        lua_setfield(L, -2, f[i].k);
    }
    return 1;
}

static const luaL_Reg methods[] = {{"render", g_render}, {"render_one", g_render_one}, {NULL, NULL}};

/* faces: {{name, style, path, package}, ...} in face order */
static void push_faces(lua_State *L)
{
    lua_createtable(L, lps_glyph_nfaces(), 0);
    for (int i = 0; i < lps_glyph_nfaces(); i++) {
        const lps_glyph_face *f = lps_glyph_face_info(i);
        lua_createtable(L, 0, 4);
        lua_pushstring(L, f->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, f->style);
        lua_setfield(L, -2, "style");
        lua_pushstring(L, f->path);
        lua_setfield(L, -2, "path");
        lua_pushstring(L, f->package);
        lua_setfield(L, -2, "package");
        lua_rawseti(L, -2, i + 1);
    }
}

void lps_lua_open_glyphs(lua_State *L)
{
    luaL_newmetatable(L, GLYPHS_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, g_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    lua_pushcfunction(L, l_draw);
    lua_setfield(L, -2, "draw");
    push_faces(L);
    lua_setfield(L, -2, "faces");
}
