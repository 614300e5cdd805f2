#!/usr/bin/env lua5.4
-- Transfer ground truth for a model set: for every ordered pair of tasks
-- (S, T), fine-tune models of S on a small budget of T's images and compare
-- T's test accuracy with training from scratch on the same budget. Written
-- beside the set (SET.transfer.json and a .csv of the gains).
--  - ModelSet500 (lps.transfer): the first --sources models of each task,
--    --seeds budget draws. The budget (32 images, 10 steps) is small on
--    purpose: with 256 images scratch training already reaches 0.95-0.99 on
--    these binary tasks and the gains shrink to noise.
--  - Sets with a pool of reference models per task, as ModelSet-Hetero
--    (lps.transfer_pool): two disjoint halves of the pool, each with its own
--    budget draws, and the split-half reliability of the matrix; the
--    domain table (per source too) and issue 18's criterion on it.
--
--   lua5.4 recipes/transfer_matrix.lua --set build/modelset500.lpsm --jobs 2
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require "cjson"
local shards = require "scripts.shards"
local zoo, util, transfer, TP = lps.zoo, lps.util, lps.transfer, lps.transfer_pool

local p = argparse("transfer_matrix.lua", "Measure task-to-task transfer gains on a model set.")
p:option("--set", "The model set (with its .splits.json beside it).", "build/modelset500.lpsm")
p:option("--out", "Output JSON (default: SET.transfer.json; a .csv of the gains beside it).")
p:option("--sources", "Source models per task (ModelSet500; default 3).")
p:option("--seeds", "Budget draws and head initialisations per pair (ModelSet500; default 5).")
p:option("--repeats", "Budget draws per half the sources are fine-tuned on (pool protocol; default 2).")
p:option("--scratch-draws", "Budget draws per half of the from-scratch baseline (pool protocol; default 12, at least --repeats).")
p:option("--images", "Training images of the target task (default 32; pool protocol 128).")
p:option("--epochs", "Epochs over those images (default 5).")
p:option("--batch", "Batch size (default 16).")
p:option("--test-images", "Target test images per accuracy (pool protocol; default 1000).")
p:option("--finetune", "Pool protocol: 'head' (the new head on frozen features; default) or 'full'.")
p:option("--head-epochs", "Pool protocol, head fine-tuning: epochs (default 30).")
p:option("--head-lr", "Pool protocol, head fine-tuning: Adam learning rate (default 0.01).")
p:option("--lr", "Adam learning rate (default 0.001).")
p:option("--shard", "Compute only the target tasks of shard i/n, into --out.")
p:option("--jobs", "Processes at once (GNU parallel).", "1"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:flag("--quiet", "No progress lines.")
local a = p:parse()

local function fail(msg) io.stderr:write("transfer_matrix: ", msg, "\n") os.exit(1) end
if not zoo.file_exists(a.set) then fail("no model set at " .. a.set) end
local splits_text = util.read_file(a.set .. ".splits.json")
if not splits_text then fail("no " .. a.set .. ".splits.json beside the set (built by its recipe)") end
local tasks = cjson.decode(splits_text).tasks
local ms <close> = lps.modelset.open(a.set)
local pool = next(TP.pool_of(ms)) ~= nil
local opts, names = {}, pool and {"repeats", "scratch_draws", "images", "epochs", "batch", "test_images", "lr", "head_epochs", "head_lr"}
  or {"sources", "seeds", "images", "epochs", "batch", "lr"}
for _, k in ipairs(names) do
  if a[k] then
    local real = k == "lr" or k == "head_lr"
    opts[k] = tonumber(a[k])
    if not opts[k] or opts[k] <= 0 or (not real and math.type(opts[k]) ~= "integer") then
      fail(("--%s must be a positive %s"):format(k:gsub("_", "-"), real and "number" or "integer"))
    end
  end
end
if a.finetune then
  if not pool then fail("--finetune applies to sets with a transfer pool") end
  if a.finetune ~= "head" and a.finetune ~= "full" then fail("--finetune must be 'head' or 'full'") end
  opts.finetune = a.finetune
end
if not a.jobs or a.jobs < 1 then fail("--jobs must be a positive integer") end
local out = a.out or (a.set .. ".transfer.json")
local NT = #tasks

if a.jobs > 1 and not a.shard then
  -- this recipe again, one process per share of the target tasks
  local t0 = lps.now()
  local ok, err = pcall(shards.run, shards.command(arg, a.jobs, out), a.jobs)
  if not ok then fail(err) end
  local parts = {}
  for i, path in ipairs(shards.paths(out, a.jobs)) do
    parts[i] = cjson.decode(assert(util.read_file(path)))
    os.remove(path)
  end
  local r = pool and TP.result(ms, tasks, TP.merge(parts), opts) or transfer.merge(parts)
  r.seconds, r.set, r.protocol.jobs = lps.now() - t0, a.set, a.jobs
  util.write_file(out, cjson.encode(r))
else
  -- One process: the target tasks of this shard.
  local shard_i, shard_n = 1, 1
  if a.shard then
    local ok, i, n = pcall(zoo.parse_shard, a.shard)
    if not ok then fail(i) end
    shard_i, shard_n = i, n
  end
  lps.set_num_threads(1)
  local targets = {}
  for t = (shard_i - 1) * NT // shard_n + 1, shard_i * NT // shard_n do targets[#targets + 1] = t end
  local bar -- made at the first report, when the amount of work is known
  if not a.quiet then
    opts.progress = function(done, total, text)
      bar = bar or util.progress(total, {label = "transfer" .. (a.shard and (" " .. a.shard) or ""), unit = "runs"})
      bar:update(done, text)
    end
  end
  local t0 = lps.now()
  local data = zoo.task_data_loader(tasks, a.data)
  local ok, r = pcall(pool and TP.columns or transfer.columns, ms, pool and tasks or NT, targets, data, opts)
  if not ok then fail(r) end
  if bar then bar:finish() end
  opts.progress = nil
  -- through JSON as shards' columns go (14 digits), so one process and
  -- many give the same numbers
  if pool and not a.shard then r = TP.result(ms, tasks, TP.merge{cjson.decode(cjson.encode(r))}, opts)
  elseif not pool then
    r.tasks, r.overlap, r.protocol = tasks, transfer.overlap(tasks), transfer.protocol(opts)
    r.layout = "gain[s][t]: source task s (row), target task t (column)"
  end
  r.set, r.seconds = a.set, lps.now() - t0
  util.write_file(out, cjson.encode(r))
  if a.shard then os.exit(0) end
end

-- Report: what the gains are and a CSV beside the JSON.
local r = cjson.decode(util.read_file(out))
local s, csv = transfer.summary(r)
util.write_file(out:gsub("%.json$", "") .. ".csv", csv)
if pool then print(TP.report(r)) end
print(("gain range [%.4f, %.4f]; mean gain: same task %.4f, sharing a class %.4f, disjoint %.4f")
  :format(s.gain_min, s.gain_max, s.gain_same, s.gain_shared, s.gain_disjoint))
s.out, s.seconds, s.reliability, s.domain_criterion = out, r.seconds, r.reliability, r.domain_criterion
print(cjson.encode(s))
