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
if not a.jobs or a.jobs < 1 then fail("--jobs must be an integer >= 1") end
local e1, e2 = a.epochs:match("^(%d+)%-(%d+)$")
if not e1 then e1 = a.epochs:match("^(%d+)$"); e2 = e1 end
e1, e2 = tonumber(e1), tonumber(e2)
if not e1 or e1 < 1 or e2 < e1 then fail("--epochs must be N or A-B with 1 <= A <= B, got " .. a.epochs) end
local shard_i, shard_n
if a.shard then
  local ok, i, n = pcall(zoo.parse_shard, a.shard)
  if not ok then fail(i) end
  shard_i, shard_n = i, n
  if a.jobs > 1 then fail("--shard and --jobs do not go together") end
end
local dir = a.out:match("^(.*)/[^/]*$")
if dir and not os.rename(dir, dir) then -- renaming to itself succeeds iff it exists
  fail(("the output directory %s does not exist"):format(dir))
end
local data_dir = a.data or os.getenv("LUALPS_DATA") or lps.data.default_dir
for _, f in ipairs{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                   "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} do
  if not zoo.file_exists(data_dir .. "/" .. f) then
    fail(("no Fashion-MNIST in %s (missing %s); install dataset-fashion-mnist or pass --data")
      :format(data_dir, f))
  end
end

local tasks = {}
for i = 1, a.tasks do
  local t = TABLE.tasks[i]
  tasks[i] = {id = i, classes = t.classes,
    name = TABLE.class_names[t.classes[1]] .. " vs " .. TABLE.class_names[t.classes[2]]}
end
local cfg = {tasks = tasks, master_seed = a.seed, per_task = a.per_task, epochs = {e1, e2}}
local plan = zoo.plan(cfg)
local fp = plan[1].fingerprint

-- An existing file of another configuration is refused before training.
if zoo.file_exists(a.out) then
  local ok, err = pcall(function() local ms = zoo.open_for_build(a.out, fp) ms:close() end)
  if not ok then fail(err) end
end

local t0 = lps.now()
local progress = not a.quiet and {label = a.shard and ("shard " .. a.shard) or "modelset",
  unit = "models"} or false
if a.jobs > 1 then
  -- Shards of the plan in parallel processes (one BLAS thread each: two
  -- threads in each of two processes would oversubscribe the cores).
  local shard_paths, args = {}, {}
  for i = 1, a.jobs do shard_paths[i] = ("%s.shard-%d-of-%d"):format(a.out, i, a.jobs) end
  args = {"--seed", a.seed, "--tasks", a.tasks, "--per-task", a.per_task, "--epochs", a.epochs,
          "--data", "'" .. data_dir .. "'"}
  if a.quiet then args[#args + 1] = "--quiet" end
  local cmd = ("%s %s %s --shard {}/%d --out '%s.shard-{}-of-%d'"):format(
    "lua5.4", arg[0], table.concat(args, " "), a.jobs, a.out, a.jobs)
  if not a.quiet then
    io.stderr:write(("modelset: %d models in %d shards (%s)\n"):format(#plan, a.jobs, a.out))
  end
  zoo.run_shards(cmd, a.jobs)
  zoo.collect_shards(a.out, shard_paths, fp)
else
  local part = shard_i and zoo.shard(plan, shard_i, shard_n) or plan
  local s = zoo.build(part, a.out, {tasks = tasks, data_dir = data_dir, progress = progress})
  if a.shard then os.exit(0) end
  if s.stored_before > 0 and not a.quiet then
    io.stderr:write(("modelset: %d models were already stored, built %d\n"):format(s.stored_before, s.built))
  end
end
local seconds = lps.now() - t0

-- The standard splits, fixed by the master seed.
local splits = zoo.splits(cfg)
splits.tasks = tasks
local splits_path = a.splits or (a.out .. ".splits.json")
util.write_file(splits_path, cjson.encode(splits))

-- Report: per-task accuracy.
local ms <close> = lps.modelset.open(a.out)
local per = zoo.accuracy_summary(ms)
print(("%-4s %-24s %4s %7s %7s %7s %9s"):format("task", "classes", "n", "min", "median", "max", "retrained"))
local all_min, n_retrained = 1, 0
for t = 1, #tasks do
  local s = per[t]
  if s then
    print(("%-4d %-24s %4d %7.4f %7.4f %7.4f %9d"):format(t, tasks[t].name, s.n, s.min, s.median, s.max, s.retrained))
    all_min = math.min(all_min, s.min)
    n_retrained = n_retrained + s.retrained
  end
end
print(cjson.encode{set = a.out, models = #ms, expected = #plan, seconds = seconds, jobs = a.jobs,
  min_test_accuracy = all_min, retrained = n_retrained, splits = splits_path, fingerprint = fp})
if #ms ~= #plan then os.exit(1) end
