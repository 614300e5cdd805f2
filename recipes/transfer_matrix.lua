#!/usr/bin/env lua5.4
-- Transfer ground truth for a model set (lps.transfer): for every ordered
-- pair of tasks (S, T), fine-tune models of S on a small budget of T's images
-- and compare T's test accuracy with training from scratch on the same
-- budget. The gain matrix and the class-overlap matrix go beside the set.
-- The default budget (32 images, 10 steps) is small on purpose: with 256
-- images and ~50 steps scratch training already reaches 0.95-0.99 on these
-- binary tasks and the gains shrink to noise (range -0.07..0.02 measured).
--
--   lua5.4 recipes/transfer_matrix.lua --set build/modelset500.lpsm --jobs 2
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require "cjson"
local zoo, util, transfer = lps.zoo, lps.util, lps.transfer
local D = transfer.defaults

local p = argparse("transfer_matrix.lua", "Measure task-to-task transfer gains on a model set.")
p:option("--set", "The model set (with its .splits.json beside it).", "build/modelset500.lpsm")
p:option("--out", "Output JSON (default: SET.transfer.json; a .csv of the gains beside it).")
p:option("--sources", "Source models per task.", tostring(D.sources)):convert(math.tointeger)
p:option("--seeds", "Seeds (budget draws and head initialisations) per pair.", tostring(D.seeds)):convert(math.tointeger)
p:option("--images", "Training images of the target task.", tostring(D.images)):convert(math.tointeger)
p:option("--epochs", "Epochs over those images.", tostring(D.epochs)):convert(math.tointeger)
p:option("--batch", "Batch size.", tostring(D.batch)):convert(math.tointeger)
p:option("--lr", "Adam learning rate.", "0.001"):convert(tonumber)
p:option("--shard", "Compute only the target tasks of shard i/n, into --out.")
p:option("--jobs", "Processes at once (GNU parallel).", "1"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:flag("--quiet", "No progress lines.")
local a = p:parse()

local function fail(msg) io.stderr:write("transfer_matrix: ", msg, "\n") os.exit(1) end
for _, k in ipairs{"sources", "seeds", "images", "epochs", "batch", "jobs"} do
  if not a[k] or a[k] < 1 then fail(("--%s must be a positive integer"):format(k)) end
end
if not a.lr or a.lr <= 0 then fail("--lr must be a positive number") end
if not zoo.file_exists(a.set) then fail("no model set at " .. a.set) end
local splits_text = util.read_file(a.set .. ".splits.json")
if not splits_text then fail("no " .. a.set .. ".splits.json beside the set (built by recipes/modelset500.lua)") end
local tasks = cjson.decode(splits_text).tasks
local out = a.out or (a.set .. ".transfer.json")
local shard_i, shard_n = 1, 1
if a.shard then
  local ok, i, n = pcall(zoo.parse_shard, a.shard)
  if not ok then fail(i) end
  shard_i, shard_n = i, n
end
local opts = {sources = a.sources, seeds = a.seeds, images = a.images, epochs = a.epochs, batch = a.batch, lr = a.lr}

local NT = #tasks
if a.jobs > 1 and not a.shard then
  local parts = {}
  for i = 1, a.jobs do parts[i] = ("%s.shard-%d-of-%d"):format(out, i, a.jobs) end
  local args = {"--set", "'" .. a.set .. "'", "--sources", a.sources, "--seeds", a.seeds,
    "--images", a.images, "--epochs", a.epochs, "--batch", a.batch, "--lr", a.lr}
  if a.data then args[#args + 1] = "--data '" .. a.data .. "'" end
  if a.quiet then args[#args + 1] = "--quiet" end
  local t0 = lps.now()
  zoo.run_shards(("lua5.4 %s %s --shard {}/%d --out '%s.shard-{}-of-%d'"):format(
    arg[0], table.concat(args, " "), a.jobs, out, a.jobs), a.jobs)
  -- Each shard owns whole target columns.
  local decoded = {}
  for k, path in ipairs(parts) do decoded[k] = cjson.decode(assert(util.read_file(path))) end
  local result = transfer.merge(decoded)
  for _, path in ipairs(parts) do os.remove(path) end
  result.seconds = lps.now() - t0
  result.protocol.jobs = a.jobs
  util.write_file(out, cjson.encode(result))
else
  -- One process: the target tasks of this shard.
  local ms <close> = lps.modelset.open(a.set)
  lps.set_num_threads(1)
  local targets = {}
  for t = (shard_i - 1) * NT // shard_n + 1, shard_i * NT // shard_n do targets[#targets + 1] = t end
  local bar = not a.quiet and util.progress(#targets * a.seeds * (1 + NT * a.sources),
    {label = "transfer" .. (a.shard and (" " .. a.shard) or ""), unit = "runs"})
  if bar then opts.progress = function(done, _, text) bar:update(done, text) end end
  local t0 = lps.now()
  local ok, r = pcall(transfer.columns, ms, NT, targets, zoo.task_data_loader(tasks, a.data), opts)
  if not ok then fail(r) end
  if bar then bar:finish() end
  r.tasks, r.overlap, r.protocol, r.set, r.seconds = tasks, transfer.overlap(tasks), transfer.protocol(opts),
    a.set, lps.now() - t0
  r.layout = "gain[s][t]: source task s (row), target task t (column)"
  util.write_file(out, cjson.encode(r))
  if a.shard then os.exit(0) end
end

-- Report: the range of the gains and a CSV beside the JSON.
local r = cjson.decode(util.read_file(out))
local s, csv = transfer.summary(r)
util.write_file(out:gsub("%.json$", "") .. ".csv", csv)
print(("gain range [%.4f, %.4f]; mean gain: same task %.4f, sharing a class %.4f, disjoint %.4f")
  :format(s.gain_min, s.gain_max, s.gain_same, s.gain_shared, s.gain_disjoint))
s.out, s.seconds = out, r.seconds
print(cjson.encode(s))
