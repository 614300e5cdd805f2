#!/usr/bin/env lua5.4
-- The main job (`make run`): build ModelSet500 and ModelSet-Hetero and their
-- transfer matrices unless cached under build/ (a changed recipe or task
-- table rebuilds them), train LPS, evaluate it against the baselines on
-- both, print both tables and write the plots; then read the held-out
-- zoos (scripts/heldout_zoos.lua) with the ModelSet-Hetero model.
--   lua5.4 recipes/main.lua [--jobs 2] [--out results]
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local util, zoo = lps.util, lps.zoo

local p = argparse("main.lua", "Build ModelSet500 and ModelSet-Hetero, their transfer matrices, and evaluate LPS.")
p:option("--jobs", "Processes for the builds.", "2"):convert(math.tointeger)
p:option("--build", "Cache directory.", "build")
p:option("--out", "Results directory.", "results")
p:option("--eval-args", "Extra arguments for recipes/eval_lps.lua.", "")
p:option("--hetero-args", "Extra arguments for recipes/eval_hetero.lua.", "")
p:flag("--only500", "ModelSet500 only.")
local a = p:parse()
if not a.jobs or a.jobs < 1 then io.stderr:write("main: --jobs must be a positive integer\n") os.exit(1) end

-- The training code: a change to it changes the models, so the sets rebuild.
-- (ModelSet-Hetero's letters also come from the glyph renderer, csrc/data/.)
local function training_sources(more)
  local out = {}
  local p = assert(io.popen("ls csrc/nn/*.c csrc/nn/*.h csrc/core/*.c " .. (more or "") .. " 2>/dev/null"))
  for f in p:lines() do out[#out + 1] = f end
  p:close()
  return out
end

local function stamp_of(files)
  local parts = {}
  for _, f in ipairs(files) do parts[#parts + 1] = f .. "=" .. assert(util.read_file(f), "missing " .. f) end
  return zoo.fnv1a(table.concat(parts, "\0"))
end

local function run(cmd)
  io.stderr:write("+ ", cmd, "\n")
  local ok = os.execute(cmd)
  if not ok then io.stderr:write("main: failed: ", cmd, "\n") os.exit(1) end
end

-- A cached step: rebuilt when its inputs' stamp changed or its output is missing.
local function step(name, out, inputs, build)
  local stamp_file = out .. ".stamp"
  local want = stamp_of(inputs)
  local have = util.read_file(stamp_file)
  if zoo.file_exists(out) and have == want then
    io.stderr:write(("main: %s is up to date (%s)\n"):format(name, out))
    return
  end
  -- Built by another version of its recipe: start again. Without a stamp
  -- the last build was interrupted, and the recipe resumes it.
  if have then
    io.stderr:write(("main: %s changed since %s was built; rebuilding\n"):format(name, out))
    os.remove(out)
    os.remove(stamp_file)
  end
  build()
  util.write_file(stamp_file, want)
end

assert(os.execute("mkdir -p '" .. a.build .. "'"))
local t0 = lps.now()
local set = a.build .. "/modelset500.lpsm"
local function with_training(list, more)
  for _, f in ipairs(training_sources(more)) do list[#list + 1] = f end
  return list
end
step("modelset", set, with_training{"recipes/modelset500.lua", "recipes/modelset500_tasks.lua",
  "lualps/bench/zoo.lua"},
  function() run(("lua5.4 recipes/modelset500.lua --out '%s' --jobs %d"):format(set, a.jobs)) end)
local transfer = set .. ".transfer.json"
step("transfer matrix", transfer, {"recipes/transfer_matrix.lua", "lualps/bench/transfer.lua", set .. ".stamp"},
  function() run(("lua5.4 recipes/transfer_matrix.lua --set '%s' --jobs %d"):format(set, a.jobs)) end)
run(("lua5.4 recipes/eval_lps.lua --set '%s' --out '%s' %s"):format(set, a.out, a.eval_args))
if a.only500 then
  io.stderr:write(("main: done in %s\n"):format(util.fmt_time(lps.now() - t0)))
  os.exit(0)
end

-- ModelSet-Hetero 2: MLPs, CNNs and ResNets, multi-class tasks of
-- Fashion-MNIST and rendered letters in four image domains.
local het = a.build .. "/modelset_hetero.lpsm"
step("modelset-hetero", het, with_training({"recipes/modelset_hetero.lua", "recipes/modelset_hetero_tasks.lua",
  "lualps/bench/hetero.lua", "lualps/bench/zoo.lua", "lualps/data.lua"}, "csrc/data/*.c csrc/data/*.h"),
  function() run(("lua5.4 recipes/modelset_hetero.lua --out '%s' --jobs %d"):format(het, a.jobs)) end)
step("hetero transfer matrix", het .. ".transfer.json", {"recipes/transfer_matrix.lua", "lualps/bench/transfer_pool.lua",
  het .. ".stamp"}, function() run(("lua5.4 recipes/transfer_matrix.lua --set '%s' --jobs %d"):format(het, a.jobs)) end)
run(("lua5.4 recipes/eval_hetero.lua --set '%s' --out '%s' --jobs %d %s"):format(het, a.out, a.jobs, a.hetero_args))
-- Models from elsewhere: held-out zoos (PyTorch-trained, rendered digits,
-- another recipe; cached under BUILD/heldout, the PyTorch one skipped
-- without torch) read by the model just written and by template matching.
local het_model = a.out .. "/lps_hetero.model"
if zoo.file_exists(het_model) then
  run(("lua5.4 scripts/heldout_zoos.lua --model '%s' --build '%s/heldout' --out '%s' --jobs %d")
    :format(het_model, a.build, a.out, a.jobs))
else
  io.stderr:write(("main: no %s (LPS not evaluated): the held-out zoos are skipped\n"):format(het_model))
end
io.stderr:write(("main: done in %s\n"):format(util.fmt_time(lps.now() - t0)))
