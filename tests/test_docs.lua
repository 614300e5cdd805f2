-- The documentation stays in step with the code.
local lu = require "luaunit"
local T = require "tests.helpers"

TestDocs = {}

function TestDocs:test_api_reference_is_current()
  local ok, fresh = T.sh("lua5.4 scripts/gen_api.lua -")
  lu.assertTrue(ok, fresh)
  local f = assert(io.open("docs/API.md"))
  local stored = f:read("a")
  f:close()
  lu.assertTrue(fresh == stored, "docs/API.md is out of date: run `make docs`")
  lu.assertStrContains(stored, "### `lps.similarity.train(ms, split, opts)`")
end

function TestDocs:test_readme_states_the_commands()
  local f = assert(io.open("README.md"))
  local readme = f:read("a")
  f:close()
  for _, needle in ipairs{"make run", "make test", "docs/API.md", "docs/MODELSET_FORMAT.md",
                          "luarocks --lua-version 5.4 make"} do
    lu.assertStrContains(readme, needle)
  end
end

function TestDocs:test_readme_recipe_runs()
  if T.scale == "small" then lu.skip("trains six models on Fashion-MNIST; covered by the plain run") end
  local f = assert(io.open("README.md"))
  local readme = f:read("a")
  f:close()
  local code = readme:match("## A recipe in ten lines.-```lua\n(.-)```")
  lu.assertNotNil(code, "the README's recipe")
  local n = select(2, code:gsub("\n", ""))
  lu.assertTrue(n <= 12, "the recipe has " .. n .. " lines")
  local dir = os.tmpname(); os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local g = assert(io.open(dir .. "/recipe.lua", "w"))
  g:write('package.path = "' .. os.getenv("PWD") .. '/?.lua;' .. os.getenv("PWD") .. '/?/init.lua;" .. package.path\n')
  g:write('package.cpath = "' .. os.getenv("PWD") .. '/?.so;" .. package.cpath\n', code)
  g:close()
  local ok, out = T.sh("cd " .. dir .. " && lua5.4 recipe.lua")
  os.execute("rm -rf " .. dir)
  lu.assertTrue(ok, out)
  local score, id = out:match("^([%d%.%-e]+)%s+(m%d)")
  lu.assertNotNil(score, out)
  lu.assertTrue(tonumber(score) >= -1 and tonumber(score) <= 1 + 1e-6)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
