#!/usr/bin/env lua5.4
-- Transfer ground truth for a model set: for every ordered pair of tasks
-- (S, T), fine-tune models of S on a small budget of T's images and compare
-- T's test accuracy with training from scratch on the same budget. The gain
-- matrix and the class-overlap matrix are written beside the set.
-- The default budget (32 images, 10 steps) is small on purpose: with 256
-- images and ~50 steps scratch training already reaches 0.95-0.99 on these
-- binary tasks and the gains shrink to noise (range -0.07..0.02 measured).
--
--   lua5.4 recipes/transfer_matrix.lua --set build/modelset500.lpsm --jobs 2
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require "cjson"
local zoo, util = lps.zoo, lps.util

local p = argparse("transfer_matrix.lua", "Measure task-to-task transfer gains on a model set.")
p:option("--set", "The model set (with its .splits.json beside it).", "build/modelset500.lpsm")
p:option("--out", "Output JSON (default: SET.transfer.json; a .csv of the gains beside it).")
p:option("--sources", "Source models per task.", "3"):convert(math.tointeger)
p:option("--seeds", "Seeds (budget draws and head initialisations) per pair.", "5"):convert(math.tointeger)
p:option("--images", "Training images of the target task.", "32"):convert(math.tointeger)
p:option("--epochs", "Epochs over those images.", "5"):convert(math.tointeger)
p:option("--batch", "Batch size.", "16"):convert(math.tointeger)
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

local protocol = {
  budget_images = a.images, epochs = a.epochs, batch_size = a.batch,
  steps = a.epochs * ((a.images + a.batch - 1) // a.batch), optimizer = "adam", lr = a.lr,
  sources_per_task = a.sources, seeds = a.seeds,
  source_models = "the first models of each source task in the set's order",
  head = "the source model's last linear layer is replaced by the scratch model's initial one",
  gain = "mean fine-tuned test accuracy on T minus mean from-scratch test accuracy, same budget",
  test_set = "all of T's Fashion-MNIST test images",
}

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
  -- Combine the shards' rows (each shard owns whole target columns).
  local result
  for _, path in ipairs(parts) do
    local part = cjson.decode(assert(util.read_file(path)))
    if not result then result = part
    else
      for t = 1, NT do
        if part.scratch_accuracy[t] ~= cjson.null then
          result.scratch_accuracy[t] = part.scratch_accuracy[t]
          for s = 1, NT do
            result.gain[s][t] = part.gain[s][t]
            result.finetune_accuracy[s][t] = part.finetune_accuracy[s][t]
          end
        end
      end
    end
    os.remove(path)
  end
  result.seconds = lps.now() - t0
  result.protocol.jobs = a.jobs
  util.write_file(out, cjson.encode(result))
else
  -- One process: the target tasks of this shard.
  local ms <close> = lps.modelset.open(a.set)
  local by_task = {}
  for i = 1, #ms do
    local meta = ms:meta(i)
    local list = by_task[meta.task] or {}
    by_task[meta.task] = list
    list[#list + 1] = {i = i, id = meta.id}
  end
  for t = 1, NT do
    local list = by_task[t] or {}
    table.sort(list, function(x, y) return x.id < y.id end)
    if #list < a.sources then fail(("task %d has %d models, fewer than --sources %d"):format(t, #list, a.sources)) end
  end
  lps.set_num_threads(1)
  local loader = zoo.task_data_loader(tasks, a.data)
  local arch = {784, 64, 64, 2}
  local targets = {}
  for t = (shard_i - 1) * NT // shard_n + 1, shard_i * NT // shard_n do targets[#targets + 1] = t end
  local per_target = a.seeds * (1 + NT * a.sources)
  local prog = not a.quiet and util.progress(#targets * per_target,
    {label = "transfer" .. (a.shard and (" " .. a.shard) or ""), unit = "runs"})
  local done = 0

  local function fit(model, x, y, g)
    lps.nn.train(model, {x = x, y = y}, {optimizer = lps.optim.adam{lr = a.lr}, epochs = a.epochs,
      batch_size = a.batch, generator = g, progress = false})
  end

  local gain, ft_acc, scratch = {}, {}, {}
  for s = 1, NT do gain[s], ft_acc[s] = {}, {} end
  for t = 1, NT do scratch[t] = cjson.null end
  for s = 1, NT do for t = 1, NT do gain[s][t], ft_acc[s][t] = cjson.null, cjson.null end end

  local t0 = lps.now()
  for _, t in ipairs(targets) do
    local td = loader(t)
    local test = {x = td.xt, y = td.yt}
    local sc_sum, ft_sum = 0, {}
    for seed = 1, a.seeds do
      local g = lps.generator(1000003 * t + seed)
      local bx, by = lps.data.fraction(td.x, td.y, math.min(1, a.images / td.x:size(1)), g)
      local init = table.move(arch, 1, #arch, 1, {generator = g})
      local scratch_model = lps.nn.mlp(init)
      local head = {}
      local named = scratch_model:named_parameters()
      for k = #named - 1, #named do head[named[k].name] = named[k].tensor:clone() end
      local data_seed = 7777 * t + seed
      fit(scratch_model, bx, by, lps.generator(data_seed))
      sc_sum = sc_sum + lps.nn.evaluate(scratch_model, test)
      done = done + 1
      for s = 1, NT do
        for k = 1, a.sources do
          local model = ms:get(by_task[s][k].i)
          local own = {}
          for _, nt in ipairs(model:named_parameters()) do own[nt.name] = nt.tensor end
          for name, w in pairs(head) do own[name]:copy(w) end
          fit(model, bx, by, lps.generator(data_seed))
          ft_sum[s] = (ft_sum[s] or 0) + lps.nn.evaluate(model, test)
          done = done + 1
        end
      end
      if prog then prog:update(done, ("target %d seed %d"):format(t, seed)) end
    end
    scratch[t] = sc_sum / a.seeds
    for s = 1, NT do
      ft_acc[s][t] = ft_sum[s] / (a.seeds * a.sources)
      gain[s][t] = ft_acc[s][t] - scratch[t]
    end
  end
  if prog then prog:finish() end

  local overlap = {}
  for s = 1, NT do
    overlap[s] = {}
    for t = 1, NT do
      local n = 0
      for _, c in ipairs(tasks[s].classes) do
        if c == tasks[t].classes[1] or c == tasks[t].classes[2] then n = n + 1 end
      end
      overlap[s][t] = n
    end
  end
  util.write_file(out, cjson.encode{
    tasks = tasks, gain = gain, finetune_accuracy = ft_acc, scratch_accuracy = scratch,
    overlap = overlap, protocol = protocol, set = a.set, seconds = lps.now() - t0,
    layout = "gain[s][t]: source task s (row), target task t (column)",
  })
  if a.shard then os.exit(0) end
end

-- Report: the range of the gains and a CSV beside the JSON.
local r = cjson.decode(util.read_file(out))
local lo, hi, diag, shared, other = math.huge, -math.huge, {}, {}, {}
local csv = {}
for s = 1, NT do
  local row = {}
  for t = 1, NT do
    local v = r.gain[s][t]
    row[t] = string.format("%.4f", v)
    lo, hi = math.min(lo, v), math.max(hi, v)
    local bucket = s == t and diag or (r.overlap[s][t] > 0 and shared or other)
    bucket[#bucket + 1] = v
  end
  csv[s] = table.concat(row, ",")
end
util.write_file(out:gsub("%.json$", "") .. ".csv", table.concat(csv, "\n") .. "\n")
local function mean(t) local x = 0 for _, v in ipairs(t) do x = x + v end return #t > 0 and x / #t or 0 end
print(("gain range [%.4f, %.4f]; mean gain: same task %.4f, sharing a class %.4f, disjoint %.4f")
  :format(lo, hi, mean(diag), mean(shared), mean(other)))
print(cjson.encode{out = out, seconds = r.seconds, gain_min = lo, gain_max = hi,
  gain_same = mean(diag), gain_shared = mean(shared), gain_disjoint = mean(other)})
