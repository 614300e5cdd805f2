-- The layout of csrc/ is the architecture: one folder per subsystem, and a
-- folder may use only its own files and those of the layers below it.
--   0  core   tensors, BLAS products, random numbers, errors
--   1  io     safetensors and JSON
--   1  store  the ModelSet container and its codecs
--   1  data   image sources rendered in C (letters through FreeType)
--   2  nn     layers (one file per type, the registry, architectures),
--             losses, optimizers, training loop, image data
--   3  lps    the second-order (LPS) layers
--   3  eval   baselines, metrics, clustering, projections
--   4  lua    the Lua binding
-- Checked twice: on the #include lines of the sources, and on the symbols
-- the compiled objects (build/obj) take from each other, which catches a
-- call through the public header that no include line shows. The Lua
-- package's layers are checked below, on its require lines.
local lu = require "luaunit"
local T = require "tests.helpers"

local LAYER = {core = 0, io = 1, store = 1, data = 1, nn = 2, lps = 3, eval = 3, lua = 4}

local function lines_of(cmd)
  -- under test-asan the sanitizer preload must not reach find and nm
  if os.getenv("LD_PRELOAD") then cmd = "env -u LD_PRELOAD " .. cmd end
  local p = assert(io.popen(cmd))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- May code of folder `from` use folder `to`?
local function allowed(from, to)
  return from == to or LAYER[to] < LAYER[from]
end

TestLayout = {}

function TestLayout:test_every_source_is_in_a_subsystem_folder()
  for _, f in ipairs(lines_of("find csrc -type f -name '*.[ch]' | sort")) do
    local dir = f:match("^csrc/([^/]+)/[^/]+$")
    if f ~= "csrc/lualps.h" then
      lu.assertNotNil(dir, f .. " is not inside a subsystem folder of csrc/")
      lu.assertNotNil(LAYER[dir], f .. ": csrc/" .. tostring(dir) .. "/ is not a known subsystem")
    end
  end
end

function TestLayout:test_includes_point_down()
  local files = lines_of("find csrc -type f -name '*.[ch]' | sort")
  lu.assertTrue(#files > 30, "found " .. #files .. " sources")
  local bad = {}
  for _, f in ipairs(files) do
    local from = f:match("^csrc/([^/]+)/") or "api"
    local n = 0
    for line in io.lines(f) do
      n = n + 1
      local inc = line:match('^%s*#%s*include%s+"([^"]+)"')
      local sys = line:match("^%s*#%s*include%s+<([^>]+)>")
      if inc and inc ~= "lualps.h" then
        local to = inc:match("^([^/]+)/[^/]+$")
        if from == "api" then
          bad[#bad + 1] = ("%s:%d: the public header includes %s"):format(f, n, inc)
        elseif not to or not LAYER[to] then
          bad[#bad + 1] = ("%s:%d: include \"%s\" does not name a subsystem folder"):format(f, n, inc)
        elseif not allowed(from, to) then
          bad[#bad + 1] = ("%s:%d: %s (layer %d) includes %s (layer %d)"):format(f, n, from,
            LAYER[from], inc, LAYER[to])
        elseif not io.open("csrc/" .. inc) then
          bad[#bad + 1] = ("%s:%d: include \"%s\" does not exist"):format(f, n, inc)
        end
      elseif sys and (sys == "lua.h" or sys == "lauxlib.h" or sys == "lualib.h") and from ~= "lua" then
        bad[#bad + 1] = ("%s:%d: only csrc/lua/ may include <%s>"):format(f, n, sys)
      end
    end
  end
  lu.assertEquals(bad, {})
end

function TestLayout:test_the_rule_rejects_an_upward_include()
  -- the checker itself: an include from core into nn is refused
  lu.assertFalse(allowed("core", "nn"))
  lu.assertFalse(allowed("io", "nn"))
  lu.assertFalse(allowed("nn", "lps"))
  lu.assertFalse(allowed("eval", "lua"))
  lu.assertTrue(allowed("eval", "core"))
  lu.assertTrue(allowed("lua", "eval"))
end

function TestLayout:test_objects_call_down()
  if T.scale == "small" then lu.skip("the object files are those of the plain build") end
  if not os.execute("command -v nm >/dev/null 2>&1") then lu.skip("nm is not installed") end
  local objs = {}
  for _, o in ipairs(lines_of("find build/obj -name '*.o' 2>/dev/null | sort")) do
    -- objects of sources that no longer exist are stale, not the architecture
    local src = o:gsub("^build/obj/", "csrc/"):gsub("%.o$", ".c")
    local f = io.open(src)
    if f then f:close(); objs[#objs + 1] = o end
  end
  if #objs == 0 then lu.skip("no build/obj (run make lib)") end
  local owner = {}
  for _, o in ipairs(objs) do
    local dir = o:match("^build/obj/([^/]+)/")
    for _, l in ipairs(lines_of("nm -g --defined-only " .. o)) do
      local sym = l:match("%s[TDBRC]%s+(%S+)$")
      if sym then owner[sym] = dir end
    end
  end
  local bad, edges = {}, 0
  for _, o in ipairs(objs) do
    local dir = o:match("^build/obj/([^/]+)/")
    for _, l in ipairs(lines_of("nm -u " .. o)) do
      local sym = l:match("U%s+(%S+)$")
      local to = sym and owner[sym]
      if to and to ~= dir then
        edges = edges + 1
        if not allowed(dir, to) then
          bad[#bad + 1] = ("%s (%s) calls %s of %s"):format(o, dir, sym, to)
        end
      end
    end
  end
  lu.assertTrue(edges > 10, "expected calls between subsystems, found " .. edges)
  lu.assertEquals(bad, {})
end

-- ------------------------------------------------------------------ Lua
-- The Lua package (lualps/) is layered the same way: a module may require
-- modules of its own layer or of lower ones, never the facade "lualps"
-- (lualps/init.lua, for users, recipes, scripts and tests), and no module
-- may take part in a require cycle.
--   0  lualps.core                          the C binding (lualps/core.so)
--   1  util, json
--   2  nn, optim, data, arch
--   3  safetensors, modelset, eval
--   4  similarity and lualps/similarity/*   the second-order networks
--   5  lualps/bench/*                       the benchmark
-- Requires are read from the sources (comments and strings skipped): a
-- require of a literal name, `require "x"`, `require 'x'`, `require("x")`,
-- `require [[x]]`; a computed name is allowed in the facade only.
local FACADE = "lualps"
local LUA_LAYER = {["lualps.core"] = 0, ["lualps.util"] = 1, ["lualps.json"] = 1, ["lualps.nn"] = 2, ["lualps.optim"] = 2,
  ["lualps.data"] = 2, ["lualps.arch"] = 2, ["lualps.safetensors"] = 3, ["lualps.modelset"] = 3,
  ["lualps.eval"] = 3, ["lualps.estimators"] = 3, ["lualps.similarity"] = 4}
local LUA_FOLDER = {similarity = 4, bench = 5} -- every module of lualps/<folder>/
local LUA_EXTERNAL = {cjson = true} -- Debian's lua-cjson

local function lua_layer(name)
  if LUA_LAYER[name] then return LUA_LAYER[name] end
  local folder = name:match("^lualps%.([%w_]+)%.[%w_]+$")
  return folder and LUA_FOLDER[folder]
end

-- The module name of a file: lualps/x.lua -> lualps.x, lualps/x/init.lua -> lualps.x.
local function lua_module_name(path)
  return (path:gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", "."))
end

-- The requires of a Lua source: {name =, line =} for a literal name,
-- {line =} for a computed one. A small tokenizer skips comments and keeps
-- string literals whole, so neither a commented-out require nor one inside
-- a string counts.
local function lua_requires(src)
  local toks, i, n, line = {}, 1, #src, 1
  local function skip_to(j) -- advance to j, counting lines
    line = line + select(2, src:sub(i, j - 1):gsub("\n", ""))
    i = j
  end
  local function long_bracket(at) -- [==[ ... ]==] at `at`: its text and the index after it
    local eq = src:match("^%[(=*)%[", at)
    if not eq then return nil end
    local body = at + #eq + 2
    local close, e = src:find("]" .. eq .. "]", body, true)
    if not close then return src:sub(body), n + 1 end
    return src:sub(body, close - 1), e + 1
  end
  while i <= n do
    local c = src:sub(i, i)
    if c:match("%s") then
      skip_to(i + 1)
    elseif src:sub(i, i + 1) == "--" then
      local _, after = long_bracket(i + 2)
      skip_to(after or ((src:find("\n", i, true) or n) + 1))
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n and src:sub(j, j) ~= c and src:sub(j, j) ~= "\n" do
        j = j + (src:sub(j, j) == "\\" and 2 or 1)
      end
      toks[#toks + 1] = {kind = "string", value = src:sub(i + 1, j - 1), line = line}
      skip_to(j + 1)
    elseif c == "[" and src:match("^%[=*%[", i) then
      local text, after = long_bracket(i)
      toks[#toks + 1] = {kind = "string", value = text, line = line}
      skip_to(after)
    elseif c:match("[%w_]") then
      local w = src:match("^[%w_]+", i)
      toks[#toks + 1] = {kind = "name", value = w, line = line}
      skip_to(i + #w)
    else
      toks[#toks + 1] = {kind = "op", value = c, line = line}
      skip_to(i + 1)
    end
  end
  local out = {}
  for k, t in ipairs(toks) do
    local prev = toks[k - 1]
    if t.kind == "name" and t.value == "require" and not (prev and prev.kind == "op"
        and (prev.value == "." or prev.value == ":")) then
      local a, b, c = toks[k + 1], toks[k + 2], toks[k + 3]
      if a and a.kind == "string" then
        out[#out + 1] = {name = a.value, line = t.line}
      elseif a and a.value == "(" and b and b.kind == "string" and c and c.value == ")" then
        out[#out + 1] = {name = b.value, line = t.line}
      else
        out[#out + 1] = {line = t.line}
      end
    end
  end
  return out
end

-- Strongly connected components of a graph {node = {node, ...}} (Tarjan),
-- each a sorted list; nodes visited in name order, so the result is fixed.
local function components(graph)
  local nodes = {}
  for v in pairs(graph) do nodes[#nodes + 1] = v end
  table.sort(nodes)
  local index, low, on, stack, out, count = {}, {}, {}, {}, {}, 0
  local function visit(v)
    count = count + 1
    index[v], low[v] = count, count
    stack[#stack + 1], on[v] = v, true
    for _, w in ipairs(graph[v] or {}) do
      if not index[w] then
        visit(w)
        low[v] = math.min(low[v], low[w])
      elseif on[w] then
        low[v] = math.min(low[v], index[w])
      end
    end
    if low[v] == index[v] then
      local comp = {}
      repeat
        local w = table.remove(stack)
        on[w] = nil
        comp[#comp + 1] = w
      until w == v
      table.sort(comp)
      out[#out + 1] = comp
    end
  end
  for _, v in ipairs(nodes) do if not index[v] then visit(v) end end
  return out
end

-- The problems of a Lua package given as {module name = source}: upward
-- requires, requires of the facade, modules without a layer, unknown or
-- computed requires, and require cycles. A sorted list of messages, empty
-- when the layers hold.
local function check_lua(modules)
  local problems, graph = {}, {}
  local function bad(fmt, ...) problems[#problems + 1] = fmt:format(...) end
  for name, src in pairs(modules) do
    local from = lua_layer(name)
    if name ~= FACADE and not from then bad("%s: a module of no layer (add it to LUA_LAYER)", name) end
    graph[name] = {}
    for _, r in ipairs(lua_requires(src)) do
      local to = r.name and lua_layer(r.name)
      if not r.name then
        if name ~= FACADE then bad("%s:%d: a require of a computed name (only the facade may)", name, r.line) end
      elseif r.name == FACADE then
        bad("%s:%d: requires the facade \"lualps\" (require what it uses instead)", name, r.line)
      elseif LUA_EXTERNAL[r.name] then -- a dependency from Debian
      elseif not to or (r.name ~= "lualps.core" and not modules[r.name]) then
        bad("%s:%d: requires %s, an unknown module", name, r.line, r.name)
      else
        if name ~= FACADE and from and to > from then
          bad("%s:%d: %s (layer %d) requires %s (layer %d)", name, r.line, name, from, r.name, to)
        end
        table.insert(graph[name], r.name)
      end
    end
    table.sort(graph[name])
  end
  for _, comp in ipairs(components(graph)) do
    local v = comp[1]
    local self_loop = false
    for _, w in ipairs(graph[v] or {}) do self_loop = self_loop or w == v end
    if #comp > 1 or self_loop then bad("require cycle among %s", table.concat(comp, ", ")) end
  end
  table.sort(problems)
  return problems, graph
end

-- Every module of lualps/ by name, with its source.
local function lua_package()
  local modules = {}
  for _, f in ipairs(lines_of("find lualps -type f -name '*.lua' | sort")) do
    local h = assert(io.open(f))
    modules[lua_module_name(f)] = h:read("a")
    h:close()
  end
  return modules
end

function TestLayout:test_lua_modules_require_down_without_cycles()
  local modules = lua_package()
  local problems, graph = check_lua(modules)
  lu.assertEquals(problems, {})
  -- the check saw the package: its modules, folders and requires between them
  local n, edges = 0, 0
  for name in pairs(modules) do
    n = n + 1
    edges = edges + #graph[name]
  end
  lu.assertTrue(n >= 25, "found " .. n .. " modules")
  lu.assertTrue(edges >= 50, "found " .. edges .. " requires")
  lu.assertNotNil(modules["lualps.similarity.base"])
  lu.assertNotNil(modules["lualps.bench.zoo"])
  lu.assertEquals(lua_layer("lualps.bench.zoo"), 5)
  lu.assertEquals(lua_layer("lualps.similarity.archnet"), 4)
end

function TestLayout:test_lua_check_reports_planted_violations()
  -- a cycle within one layer
  lu.assertEquals(check_lua{["lualps.bench.a"] = 'local b = require "lualps.bench.b"',
    ["lualps.bench.b"] = "local x = 1\nlocal a = require('lualps.bench.a')"},
    {"require cycle among lualps.bench.a, lualps.bench.b"})
  lu.assertEquals(check_lua{["lualps.nn"] = 'return require("lualps.nn")'}, {"require cycle among lualps.nn"})
  -- an upward require, and the cycle it closes
  lu.assertEquals(check_lua{["lualps.util"] = "local nn = require [[lualps.nn]]",
    ["lualps.nn"] = 'local util = require "lualps.util"'},
    {"lualps.util:1: lualps.util (layer 1) requires lualps.nn (layer 2)",
     "require cycle among lualps.nn, lualps.util"})
  lu.assertEquals(check_lua{["lualps.eval"] = '\n\nlocal S = require("lualps.similarity")',
    ["lualps.similarity"] = "return {}"}, {"lualps.eval:3: lualps.eval (layer 3) requires lualps.similarity (layer 4)"})
  -- the facade, unknown modules, computed names, a file of no layer
  lu.assertEquals(check_lua{["lualps.bench.zoo"] = 'local lps = require "lualps"'},
    {'lualps.bench.zoo:1: requires the facade "lualps" (require what it uses instead)'})
  lu.assertEquals(check_lua{["lualps.nn"] = 'require "lualps.nosuch"; require "lpeg"'},
    {"lualps.nn:1: requires lpeg, an unknown module", "lualps.nn:1: requires lualps.nosuch, an unknown module"})
  lu.assertEquals(check_lua{["lualps.nn"] = "local m = require(name)", [FACADE] = "return require(name)"},
    {"lualps.nn:1: a require of a computed name (only the facade may)"})
  lu.assertEquals(check_lua{["lualps.extra"] = "return {}"}, {"lualps.extra: a module of no layer (add it to LUA_LAYER)"})
  -- comments and strings are not requires; the facade may require every layer
  lu.assertEquals(check_lua{["lualps.util"] = '-- require "lualps.nn"\n--[[ require "lualps.nn" ]]\n'
    .. 'local s = "require \\"lualps.nn\\""; local t = [[require "lualps.nn"]]',
    [FACADE] = 'local nn = require "lualps.nn"', ["lualps.nn"] = 'local c = require("lualps.core")._nn'}, {})
  lu.assertEquals(lua_module_name("lualps/similarity/init.lua"), "lualps.similarity")
  lu.assertEquals(lua_module_name("lualps/bench/zoo.lua"), "lualps.bench.zoo")
end

-- ------------------------------------------------------------------ binding
-- csrc/lua/ is shaped like Lua's own linit.c and lauxlib.c: lua_main.c
-- opens the sub-bindings, lua_aux.c holds what they share, and no file
-- calls a file that calls it back (read from the objects' symbols).
function TestLayout:test_binding_files_call_without_circles()
  if T.scale == "small" then lu.skip("the object files are those of the plain build") end
  if not os.execute("command -v nm >/dev/null 2>&1") then lu.skip("nm is not installed") end
  local objs = lines_of("find build/obj/lua -name '*.o' 2>/dev/null | sort")
  if #objs == 0 then lu.skip("no build/obj (run make lib)") end
  local owner, graph = {}, {}
  for _, o in ipairs(objs) do
    graph[o] = {}
    for _, l in ipairs(lines_of("nm -g --defined-only " .. o)) do
      local sym = l:match("%s[TDBRC]%s+(%S+)$")
      if sym then owner[sym] = o end
    end
  end
  local calls_main = {}
  for _, o in ipairs(objs) do
    local seen = {}
    for _, l in ipairs(lines_of("nm -u " .. o)) do
      local to = owner[l:match("U%s+(%S+)$") or ""]
      if to and to ~= o and not seen[to] then
        seen[to] = true
        table.insert(graph[o], to)
        if to:match("lua_main%.o$") then calls_main[#calls_main + 1] = o end
      end
    end
  end
  local circles = {}
  for _, c in ipairs(components(graph)) do
    if #c > 1 then circles[#circles + 1] = table.concat(c, ", ") end
  end
  lu.assertEquals(circles, {})
  lu.assertEquals(calls_main, {}) -- lua_main.c only opens
  lu.assertTrue(#graph["build/obj/lua/lua_main.o"] >= 10, "lua_main opens the sub-bindings")
  -- the check itself finds a planted circle
  local planted = components{a = {"b"}, b = {"c"}, c = {"a"}, d = {"a"}}
  local sizes = {}
  for _, c in ipairs(planted) do sizes[#sizes + 1] = #c end
  table.sort(sizes)
  lu.assertEquals(sizes, {1, 3})
end

-- A layer type is one file of csrc/nn/ and one registry entry: no other C
-- file names its type (issue 16: a new layer touches at most three files).
function TestLayout:test_a_layer_type_is_named_by_its_file_and_the_registry()
  local types, defined = {}, {}
  for _, f in ipairs(lines_of("grep -l 'const lps_layer_type lps_[a-z0-9_]*_type = ' csrc/nn/*.c")) do
    for line in io.lines(f) do
      local name = line:match("^const lps_layer_type (lps_[%w_]+_type) = ")
      if name then types[#types + 1] = name; defined[name] = f end
    end
  end
  lu.assertTrue(#types >= 15, "found " .. #types .. " layer types")
  local bad = {}
  for _, name in ipairs(types) do
    for _, f in ipairs(lines_of("grep -rlw " .. name .. " csrc")) do
      if f ~= defined[name] and f ~= "csrc/nn/registry.c" then bad[#bad + 1] = name .. " in " .. f end
    end
  end
  lu.assertEquals(bad, {})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
