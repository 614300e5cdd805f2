--- lualps.bench.transfer (lps.transfer): the task-to-task transfer ground truth of a model set.
-- For an ordered pair (source task S, target task T): fine-tune models of S,
-- head replaced, on a small budget of T's images; train the same
-- architecture from scratch on the same budget; the gain is the difference
-- of T's test accuracy. Computed per target task (a column of the matrix),
-- so processes can share the targets and their columns merge.
local core = require "lualps.core"
local cjson = require "cjson"
local util = require "lualps.util"
local nn = require "lualps.nn"
local optim = require "lualps.optim"
local data = require "lualps.data"

local M = {}

--- Options of the fine-tuning protocol and their defaults.
M.defaults = {
  sources = 3,     -- source models per task (the first ones in id order)
  seeds = 5,       -- budget draws and head initialisations per pair
  images = 32,     -- training images of the target task
  epochs = 5,      -- epochs over those images
  batch = 16,      -- batch size
  lr = 1e-3,       -- Adam learning rate
  arch = {784, 64, 64, 2}, -- the scratch model (and the sources' architecture)
}

--- opts over `defaults` (M.defaults when nil; util.options). A `progress`
-- function is taken out and returned second.
function M.options(opts, defaults)
  local out = util.options(opts, defaults or M.defaults, "transfer", {"progress"})
  local progress = out.progress
  out.progress = nil
  return out, progress
end
local options = M.options

--- The protocol as recorded beside the matrix.
function M.protocol(o)
  o = options(o)
  return {
    budget_images = o.images, epochs = o.epochs, batch_size = o.batch,
    steps = o.epochs * ((o.images + o.batch - 1) // o.batch), optimizer = "adam", lr = o.lr,
    sources_per_task = o.sources, seeds = o.seeds,
    source_models = "the first models of each source task in the set's order",
    head = "the source model's last linear layer is replaced by the scratch model's initial one",
    gain = "mean fine-tuned test accuracy on T minus mean from-scratch test accuracy, same budget",
    test_set = "all of T's Fashion-MNIST test images",
  }
end

--- Shared classes of every pair of tasks (tasks[i].classes lists).
function M.overlap(tasks)
  local out = {}
  for s = 1, #tasks do
    out[s] = {}
    for t = 1, #tasks do
      local n = 0
      for _, a in ipairs(tasks[s].classes) do
        for _, b in ipairs(tasks[t].classes) do if a == b then n = n + 1 end end
      end
      out[s][t] = n
    end
  end
  return out
end

--- Records of each task of a set, in id order: by_task[t] = { {i =, id =}, ... }.
function M.models_by_task(ms)
  local by_task = {}
  for i = 1, #ms do
    local meta = ms:meta(i)
    local list = by_task[meta.task] or {}
    by_task[meta.task] = list
    list[#list + 1] = {i = i, id = meta.id}
  end
  for _, list in pairs(by_task) do table.sort(list, function(x, y) return x.id < y.id end) end
  return by_task
end

--- The columns of `targets` (task numbers) of the transfer matrix over the
-- set ms (an open set) with `ntasks` tasks; `task_data(t)` gives {x, y, xt, yt}
-- of task t (lps.zoo.task_data_loader). opts: M.defaults plus progress (a
-- function(done, total, text)). Returns {gain, finetune_accuracy,
-- scratch_accuracy} with cjson.null outside the targets.
function M.columns(ms, ntasks, targets, task_data, opts)
  local o, progress = options(opts)
  local by_task = M.models_by_task(ms)
  for t = 1, ntasks do
    local n = by_task[t] and #by_task[t] or 0
    if n < o.sources then error(("transfer: task %d has %d models, fewer than sources = %d"):format(t, n, o.sources), 2) end
  end
  local function fit(model, x, y, g)
    nn.train(model, {x = x, y = y}, {optimizer = optim.adam{lr = o.lr}, epochs = o.epochs,
      batch_size = o.batch, generator = g, progress = false})
  end
  local gain, ft_acc, scratch = {}, {}, {}
  for s = 1, ntasks do
    gain[s], ft_acc[s], scratch[s] = {}, {}, cjson.null
    for t = 1, ntasks do gain[s][t], ft_acc[s][t] = cjson.null, cjson.null end
  end
  local total, done = #targets * o.seeds * (1 + ntasks * o.sources), 0
  for _, t in ipairs(targets) do
    local td = task_data(t)
    local test = {x = td.xt, y = td.yt}
    local sc_sum, ft_sum = 0, {}
    for seed = 1, o.seeds do
      local g = core.generator(1000003 * t + seed)
      local bx, by = data.fraction(td.x, td.y, math.min(1, o.images / td.x:size(1)), g)
      local scratch_model = nn.mlp(table.move(o.arch, 1, #o.arch, 1, {generator = g}))
      local head = {}
      local named = scratch_model:named_parameters()
      for k = #named - 1, #named do head[named[k].name] = named[k].tensor:clone() end
      local data_seed = 7777 * t + seed
      fit(scratch_model, bx, by, core.generator(data_seed))
      sc_sum = sc_sum + nn.evaluate(scratch_model, test)
      done = done + 1
      for s = 1, ntasks do
        for k = 1, o.sources do
          local model = ms:get(by_task[s][k].i)
          local own = model:state_dict()
          for name, w in pairs(head) do own[name]:copy(w) end
          fit(model, bx, by, core.generator(data_seed))
          ft_sum[s] = (ft_sum[s] or 0) + nn.evaluate(model, test)
          done = done + 1
        end
      end
      if progress then progress(done, total, ("target %d seed %d"):format(t, seed)) end
    end
    scratch[t] = sc_sum / o.seeds
    for s = 1, ntasks do
      ft_acc[s][t] = ft_sum[s] / (o.seeds * o.sources)
      gain[s][t] = ft_acc[s][t] - scratch[t]
    end
  end
  return {gain = gain, finetune_accuracy = ft_acc, scratch_accuracy = scratch}
end

--- Merge results of disjoint target sets (each from M.columns, decoded
-- JSON or not): the first holding a target's column gives it.
function M.merge(parts)
  local out
  for _, part in ipairs(parts) do
    if not out then out = part
    else
      for t = 1, #part.scratch_accuracy do
        if part.scratch_accuracy[t] ~= cjson.null then
          out.scratch_accuracy[t] = part.scratch_accuracy[t]
          for s = 1, #part.gain do
            out.gain[s][t] = part.gain[s][t]
            out.finetune_accuracy[s][t] = part.finetune_accuracy[s][t]
          end
        end
      end
    end
  end
  return out
end

--- Range of the gains and their means on the diagonal, over pairs sharing
-- a class and over disjoint pairs; and the gains as CSV text.
function M.summary(r)
  local lo, hi, diag, shared, other, csv = math.huge, -math.huge, {}, {}, {}, {}
  local n = #r.gain
  for s = 1, n do
    local row = {}
    for t = 1, n do
      local v = r.gain[s][t]
      row[t] = string.format("%.4f", v)
      lo, hi = math.min(lo, v), math.max(hi, v)
      local bucket = s == t and diag or (r.overlap[s][t] > 0 and shared or other)
      bucket[#bucket + 1] = v
    end
    csv[s] = table.concat(row, ",")
  end
  local function mean(t) local x = 0 for _, v in ipairs(t) do x = x + v end return #t > 0 and x / #t or 0 end
  return {gain_min = lo, gain_max = hi, gain_same = mean(diag), gain_shared = mean(shared),
          gain_disjoint = mean(other)}, table.concat(csv, "\n") .. "\n"
end

return M
