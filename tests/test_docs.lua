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

-- The README's evaluation of a new similarity, at most 10 lines, run on a
-- small set built by the recipes (synthetic images).
function TestDocs:test_readme_evaluation_runs()
  local f = assert(io.open("README.md"))
  local readme = f:read("a")
  f:close()
  local code = readme:match("## Evaluating a new similarity in ten lines.-```lua\n(.-)```")
  lu.assertNotNil(code, "the README's evaluation example")
  local n = select(2, code:gsub("\n", ""))
  lu.assertTrue(n <= 10, "the example has " .. n .. " lines")
  lu.assertStrContains(code, "build/modelset500.lpsm")
  local dir = os.tmpname(); os.remove(dir)
  local data = T.fake_fashion_mnist(dir .. "/data", 400, 200)
  local set = dir .. "/set.lpsm"
  local ok, out = T.sh(("lua5.4 recipes/modelset500.lua --tasks 4 --per-task 5 --epochs 1 --quiet --data %s --out %s")
    :format(data, set))
  lu.assertTrue(ok, out)
  ok, out = T.sh(("lua5.4 recipes/transfer_matrix.lua --quiet --sources 1 --seeds 1 --images 40 --epochs 1 "
    .. "--batch 8 --data %s --set %s"):format(data, set))
  lu.assertTrue(ok, out)
  local g = assert(io.open(dir .. "/eval.lua", "w"))
  g:write('package.path = "./?.lua;./?/init.lua;" .. package.path\n', (code:gsub("build/modelset500%.lpsm", set)))
  g:close()
  ok, out = T.sh("lua5.4 " .. dir .. "/eval.lua")
  os.execute("rm -rf " .. dir)
  lu.assertTrue(ok, out)
  local top1, map, tau = out:match("top%-1 ([%d%.]+)  unseen%-task mAP ([%d%.]+)  tau%(transfer%) (%S+)")
  lu.assertNotNil(top1, out)
  for _, v in ipairs{top1, map} do lu.assertTrue(tonumber(v) >= 0 and tonumber(v) <= 1, out) end
  -- NaN when the tiny synthetic transfer matrix is constant
  lu.assertTrue(tau == "nan" or tau == "-nan" or math.abs(tonumber(tau)) <= 1, out)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
