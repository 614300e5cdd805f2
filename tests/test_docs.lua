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
  for _, needle in ipairs{"make run", "make test", "docs/API.md", "docs/MODELSET_FORMAT.md", "docs/FINDINGS.md",
                          "luarocks --lua-version 5.4 make"} do
    lu.assertStrContains(readme, needle)
  end
end

-- Every document the README points to exists, and every section of the
-- findings it names by title is there.
function TestDocs:test_readme_links_exist()
  local f = assert(io.open("README.md"))
  local readme = f:read("a")
  f:close()
  for path in readme:gmatch("%]%(([%w_/%.%-]+%.md)%)") do
    local g = io.open(path)
    lu.assertNotNil(g, "README links to a missing " .. path)
    if g then g:close() end
  end
  local g = assert(io.open("docs/FINDINGS.md"))
  local findings = g:read("a"):gsub("%s+", " ") -- titles may break across lines
  g:close()
  local n = 0
  for _, pattern in ipairs{'"([^"]+)",? in docs/FINDINGS%.md', '"([^"]+)", docs/FINDINGS%.md'} do
    for title in readme:gmatch(pattern) do
      lu.assertStrContains(findings, "**" .. title:gsub("%s+", " "), false)
      n = n + 1
    end
  end
  lu.assertTrue(n >= 3, "the README names sections of docs/FINDINGS.md") -- the patterns still match
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
  local other, same, id = out:match("^([%d%.%-e]+)%s+([%d%.%-e]+)%s+(m%d)")
  lu.assertNotNil(other, out)
  for _, v in ipairs{other, same} do lu.assertTrue(tonumber(v) >= -1 and tonumber(v) <= 1 + 1e-6, out) end
  -- model 3 is closer to its own task's model than to the other task's, and its nearest is of its task
  lu.assertTrue(tonumber(same) > tonumber(other), out)
  lu.assertTrue(id == "m1" or id == "m2", out)
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

-- The README's PyTorch import: its commands run as written (the checkpoint
-- trained briefer, the REPL on a small set with an untrained templates
-- network instead of ModelSet-Hetero and its LPS model), and the model
-- prints the lines the README shows.
function TestDocs:test_readme_pytorch_import_runs()
  local py = "/usr/bin/python3"
  local fh = io.open(py, "rb")
  if not fh then lu.skip("no " .. py) end
  fh:close()
  local f = assert(io.open("README.md"))
  local block = f:read("a"):match("## Importing a PyTorch ResNet%-style checkpoint.-```\n(%$ .-)```")
  f:close()
  lu.assertNotNil(block, "the README's session")
  local cmds, inputs, shown, after = {}, {}, {}, nil
  for line in block:gmatch("([^\n]*)\n") do
    if line:match("^%$ ") then cmds[#cmds + 1] = line:sub(3)
    elseif line:match("^> ") then inputs[#inputs + 1], after = line:sub(3), line:match("^> (%S+)")
    elseif after == "m" and not line:match("^%s*%.%.%.$") then shown[#shown + 1] = line end
  end
  lu.assertEquals(#cmds, 2)
  lu.assertEquals(shown[1], "Sequential(")
  lu.assertStrContains(cmds[1], "scripts/torch_interop.py --resnet build/resnet.safetensors")
  lu.assertStrContains(cmds[2], "scripts/lualps repl build/modelset_hetero.lpsm results/lps_hetero.model")
  local lps = require "lualps"
  local dir = os.tmpname(); os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local function here(c)
    return (c:gsub("build/resnet%.safetensors", dir .. "/resnet.safetensors")
      :gsub("build/modelset_hetero%.lpsm", dir .. "/set.lpsm"):gsub("results/lps_hetero%.model", dir .. "/sim.lps"))
  end
  local ok, out = T.sh(here(cmds[1]) .. " --epochs 1 --images 128")
  if out:find("No module named 'torch'", 1, true) then lu.skip("no torch for " .. py) end
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, here(block:match("\n([^\n]-test accuracy) ")))
  do -- a small set of MLPs and CNNs, and a similarity reading them
    local ms <close> = lps.modelset.create(dir .. "/set.lpsm")
    for s = 1, 6 do
      local g = lps.generator(s)
      ms:append(s % 2 == 0 and lps.nn.mlp{784, 8, 2, generator = g} or lps.nn.sequential{
        lps.nn.conv2d(1, 4, 5, {stride = 2, padding = 2, generator = g}), lps.nn.relu(), lps.nn.flatten(),
        lps.nn.linear(4 * 14 * 14, 2, g)}, {id = "m" .. s, task = s % 3 + 1})
    end
    lps.similarity.wrap(lps.similarity.network{families = {"mlp", "cnn"}, slots = {"templates"}, noise = 2})
      :save(dir .. "/sim.lps")
  end
  local script = dir .. "/session.lua"
  require("lualps.util").write_file(script, here(table.concat(inputs, "\n")) .. "\n")
  ok, out = T.sh(here(cmds[2]) .. " < " .. script)
  os.execute("rm -rf " .. dir)
  lu.assertTrue(ok, out)
  lu.assertNotStrContains(out, "stdin:")
  local pos = 1
  for _, line in ipairs(shown) do
    local at = out:find(line, pos, true)
    lu.assertNotNil(at, "the README's line " .. line .. " in:\n" .. out)
    pos = at + #line
  end
  lu.assertStrContains(out, "rank      #  id               task       cosine\n   1 ")
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
