#!/usr/bin/env lua5.4
-- ModelSet500: 500 MLPs (784-64-64-2) over 20 binary Fashion-MNIST tasks,
-- 25 per task, each with its own seed, optimizer, learning rate, batch size,
-- epochs and 80% of its task's training images. Resumable, shardable.
--
--   lua5.4 recipes/modelset500.lua --out build/modelset500.lpsm --jobs 2
--   lua5.4 recipes/modelset500.lua --tasks 4 --per-task 5 --epochs 1 --out /tmp/small.lpsm
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require "cjson"
local shards = require "scripts.shards"
local zoo, util = lps.zoo, lps.util
local TABLE = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/modelset500_tasks.lua")

local p = argparse("modelset500.lua", "Build the ModelSet500 benchmark (or a smaller one).")
p:option("--out", "Output model set.", "build/modelset500.lpsm")
p:option("--seed", "Master seed.", "500"):convert(math.tointeger)
p:option("--tasks", "Use the first N tasks of the table.", "20"):convert(math.tointeger)
p:option("--per-task", "Models per task.", "25"):convert(math.tointeger)
p:option("--epochs", "Epochs: a range A-B drawn per model, or one number.", "2-5")
p:option("--shard", "Build only shard i of n (i/n), into --out.")
p:option("--jobs", "Build with N processes at once (GNU parallel) and merge.", "1"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:option("--splits", "Where to write the standard splits (default: OUT.splits.json).")
p:flag("--quiet", "No progress lines.")
local a = p:parse()

local function fail(msg) io.stderr:write("modelset500: ", msg, "\n") os.exit(1) end

-- Everything is checked before any training starts.
if not a.seed then fail("--seed must be an integer") end
if not a.tasks or a.tasks < 1 or a.tasks > #TABLE.tasks then
  fail(("--tasks must be 1..%d"):format(#TABLE.tasks))
end
if not a.per_task or a.per_task < 2 then fail("--per-task must be an integer >= 2") end
local e1, e2 = a.epochs:match("^(%d+)%-(%d+)$")
if not e1 then e1 = a.epochs:match("^(%d+)$"); e2 = e1 end
e1, e2 = tonumber(e1), tonumber(e2)
if not e1 or e1 < 1 or e2 < e1 then fail("--epochs must be N or A-B with 1 <= A <= B, got " .. a.epochs) end
local ok, data_dir = pcall(shards.check_args, a)
if not ok then fail(data_dir) end

local tasks = {}
for i = 1, a.tasks do
  local t = TABLE.tasks[i]
  tasks[i] = {id = i, classes = t.classes,
    name = TABLE.class_names[t.classes[1]] .. " vs " .. TABLE.class_names[t.classes[2]]}
end
local cfg = {tasks = tasks, master_seed = a.seed, per_task = a.per_task, epochs = {e1, e2}}
local plan = zoo.plan(cfg)
local seconds
ok, seconds = pcall(shards.build, a, arg, plan, {tasks = tasks, data_dir = data_dir})
if not ok then fail(seconds) end
if a.shard then os.exit(0) end -- the merge writes the splits

-- The standard splits, fixed by the master seed.
local splits = zoo.splits(cfg)
splits.tasks = tasks
local splits_path = a.splits or (a.out .. ".splits.json")
util.write_file(splits_path, cjson.encode(splits))

-- Report: per-task accuracy.
local ms <close> = lps.modelset.open(a.out)
local all_min, n_retrained = zoo.print_accuracy(ms, tasks)
print(cjson.encode{set = a.out, models = #ms, expected = #plan, seconds = seconds, jobs = a.jobs,
  min_test_accuracy = all_min, retrained = n_retrained, splits = splits_path, fingerprint = plan[1].fingerprint})
if #ms ~= #plan then os.exit(1) end
