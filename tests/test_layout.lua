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
-- call through the public header that no include line shows.
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

os.exit(lu.LuaUnit.run("-o", "tap"), true)
