#!/usr/bin/env lua5.4
-- ModelSet-Hetero 2: MLPs and CNNs over 64 multi-class tasks (16 class
-- subsets, 8 of Fashion-MNIST and 8 of rendered letters, in four image
-- domains: recipes/modelset_hetero_tasks.lua), 25 per task, and 2 residual
-- CNNs with batch norm per task (a family no split trains on): 1,728
-- models, each with its own architecture, optimizer (SGD with momentum,
-- Adam, AdamW), learning rate, batch size, epochs and data subset drawn
-- from (master seed, position). Resumable, shardable; writes the
-- evaluation splits (a) to (g) beside the set (lps.hetero.splits) and
-- prints the composition.
--
--   lua5.4 recipes/modelset_hetero.lua --out build/modelset_hetero.lpsm --jobs 2
--   lua5.4 recipes/modelset_hetero.lua --subsets 1,7,9,15 --domains identity,rot90 --per-task 8 --out /tmp/h.lpsm
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require "cjson"
local shards = require "scripts.shards"
local zoo, util, H = lps.zoo, lps.util, lps.hetero
local TABLE = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/modelset_hetero_tasks.lua")

local p = argparse("modelset_hetero.lua", "Build the ModelSet-Hetero benchmark (or a smaller one).")
p:option("--out", "Output model set.", "build/modelset_hetero.lpsm")
p:option("--seed", "Master seed.", tostring(H.defaults.master_seed)):convert(math.tointeger)
p:option("--subsets", "Class subsets of the task table to use (comma-separated numbers; default all).")
p:option("--domains", "Image domains to use (comma-separated; default " .. table.concat(TABLE.domains, ",") .. ").")
p:option("--per-task", "MLPs and CNNs per task (alternating).", tostring(H.defaults.per_task)):convert(math.tointeger)
p:option("--resnets", "Residual CNNs per task.", tostring(H.defaults.resnets)):convert(math.tointeger)
p:option("--letters-per-class", "Training images per letter (default the task table's, "
  .. TABLE.sources.glyphs.per_class .. ").")
p:option("--pool", "Transfer pool per task (reference architectures; a multiple of 4).", tostring(H.defaults.pool))
  :convert(math.tointeger)
p:option("--max-samples", "Training images x epochs of a CNN at most.", tostring(H.defaults.cnn_max_samples))
  :convert(math.tointeger)
p:option("--max-test", "Test images per task that measure accuracy.", "2000"):convert(math.tointeger)
p:option("--shard", "Build only shard i of n (i/n), into --out.")
p:option("--jobs", "Build with N processes at once (GNU parallel) and merge.", "1"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:flag("--quiet", "No progress lines.")
local a = p:parse()
local function fail(msg) io.stderr:write("modelset_hetero: ", msg, "\n") os.exit(1) end

-- Everything is checked before any training starts.
local function list(text, all, what)
  if not text then return all end
  local out, known = {}, {}
  for _, v in ipairs(all) do known[tostring(v)] = v end
  for w in text:gmatch("[^,]+") do
    if known[w] == nil then fail(("--%s: unknown %s '%s' (%s)"):format(what, what:sub(1, -2), w, table.concat(all, ","))) end
    out[#out + 1] = known[w]
  end
  return out
end
local ids = {}
for s = 1, #TABLE.subsets do ids[s] = s end
local T = {}
for k, v in pairs(TABLE) do T[k] = v end
T.subsets, T.domains = {}, list(a.domains, TABLE.domains, "domains")
for _, s in ipairs(list(a.subsets, ids, "subsets")) do T.subsets[#T.subsets + 1] = TABLE.subsets[s] end
if not a.seed then fail("--seed must be an integer") end
if not a.pool or a.pool < 4 or a.pool % 4 ~= 0 then fail("--pool must be a multiple of 4") end
if not a.per_task or a.per_task < a.pool then fail("--per-task must be an integer >= --pool") end
if not a.resnets or a.resnets < 0 then fail("--resnets must be an integer >= 0") end
if a.letters_per_class then
  local n = math.tointeger(tonumber(a.letters_per_class))
  if not n or n < 1 or n > 10000 then fail("--letters-per-class must be an integer 1..10000") end
  T.sources = {fashion_mnist = TABLE.sources.fashion_mnist, glyphs = {}}
  for k, v in pairs(TABLE.sources.glyphs) do T.sources.glyphs[k] = v end
  T.sources.glyphs.per_class = n
end
if not a.max_samples or a.max_samples < 1 then fail("--max-samples must be a positive integer") end
if not a.max_test or a.max_test < 1 then fail("--max-test must be a positive integer") end
if #T.subsets * #T.domains < 4 then fail("at least 4 tasks are needed (subsets x domains)") end
local ok, data_dir = pcall(shards.check_args, a)
if not ok then fail(data_dir) end

local cfg = {master_seed = a.seed, per_task = a.per_task, resnets = a.resnets, pool = a.pool,
  cnn_max_samples = a.max_samples}
local plan, tasks = H.plan(T, cfg)
local seconds
ok, seconds = pcall(shards.build, a, arg, plan, {tasks = tasks, data_dir = data_dir, max_test = a.max_test})
if not ok then fail(seconds) end
if a.shard then os.exit(0) end -- the merge writes the splits

local splits = H.splits(T, plan, tasks, cfg)
local ms <close> = lps.modelset.open(a.out)
local meta = {}
for i = 1, #ms do local m = ms:meta(i); meta[m.id] = m end
local problems = H.check_splits(splits, meta)
if #problems > 0 then fail("the splits are not clean:\n  " .. table.concat(problems, "\n  ")) end
util.write_file(a.out .. ".splits.json", cjson.encode(splits))

local all_min, n_retrained = zoo.print_accuracy(ms, tasks)
local composition = H.composition(ms)
print(H.composition_report(composition))
print(cjson.encode{set = a.out, models = #ms, expected = #plan, seconds = seconds, jobs = a.jobs,
  composition = composition, min_test_accuracy = all_min, retrained = n_retrained,
  splits = a.out .. ".splits.json", fingerprint = plan[1].fingerprint})
if #ms ~= #plan then os.exit(1) end
