-- The LuaRocks install: `luarocks make --tree DIR` then require from elsewhere.
local lu = require "luaunit"
local T = require "tests.helpers"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

TestRock = {}

function TestRock:test_install_and_require_elsewhere()
  if T.scale == "small" then lu.skip("the rock install is checked by the plain run") end
  local tree = os.tmpname(); os.remove(tree)
  local work = os.tmpname(); os.remove(work)
  assert(os.execute("mkdir -p " .. tree .. " " .. work))
  local ok, out = sh("luarocks --lua-version 5.4 make --tree " .. tree ..
    " rockspec/lualps-scm-1.rockspec")
  lu.assertTrue(ok, out)
  local script = [[
    local lps = require "lualps"
    local where = package.searchpath("lualps.core", package.cpath)
    assert(where:find(os.getenv("TREE"), 1, true), "core.so found at " .. where)
    assert(lps.matmul(lps.tensor{{1, 2}}, lps.tensor{{3}, {4}}):get(1, 1) == 11)
    -- every folder of the package is installed: a module of each, from the tree
    for _, m in ipairs{"lualps.nn", "lualps.similarity", "lualps.similarity.archnet", "lualps.bench.zoo"} do
      local path = assert(package.searchpath(m, package.path))
      assert(path:find(os.getenv("TREE"), 1, true), m .. " found at " .. path)
    end
    assert(tostring(lps.similarity.network{families = {"mlp", "cnn"}}):find("families mlp%+cnn"))
    assert(#lps.benchmark.methods.features("raw").name == 3)
    io.write("rock ok")
  ]]
  local f = assert(io.open(work .. "/check.lua", "w")); f:write(script); f:close()
  local ok2, out2 = sh(string.format(
    'cd %s && eval "$(luarocks --lua-version 5.4 --tree %s path)" && TREE=%s lua5.4 check.lua && %s/bin/lualps --help',
    work, tree, tree, tree))
  os.execute("rm -rf " .. tree .. " " .. work)
  lu.assertTrue(ok2, out2)
  lu.assertStrContains(out2, "rock ok")
  lu.assertStrContains(out2, "Usage: lualps") -- the installed command
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
