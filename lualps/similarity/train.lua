--- lualps.similarity.train: training a second-order network (or a
-- feature head) on models with task labels: batches built per task for the
-- triplet term, random unit subsets, the optimizer and the schedule.
local core = require "lualps.core"
local optim = require "lualps.optim"
local util = require "lualps.util"
local base = require "lualps.similarity.base"
local archnet = require "lualps.similarity.archnet"

local M = {}

--- Options of train_network and their defaults.
M.train_defaults = {
  epochs = 30,
  batch_size = 32,      -- models per step
  per_task = 4,         -- with a triplet loss, batches are built of groups of this many models of one task
  lr = 1e-3,
  weight_decay = 0,
  loss = "both", triplet_weight = 1, margin = 0.2, metric = "cosine", -- see lps.similarity.loss_defaults
  relations = false, relation_weight = 1, -- see lps.similarity.loss_defaults
  seed = 1,             -- batch order
  schedule = "constant", -- or "cosine": lr annealed to 0 over the epochs (needs opt:lr)
  unit_keep = 0.125,    -- fraction of its first-layer units a model keeps at each step (a random
                        -- subset, at least one unit; augments the unit sets); 1 = all units.
                        -- Similarity networks only (feature heads ignore it)
  template_aug = false, -- false, or strengths {noise =, blur =, scale =, mix =} (numbers >= 0; 0 or
                        -- absent: off) of random transforms of each batch model's class templates at
                        -- every step (archnet's augment_templates: additive noise, binomial blur or
                        -- sharpening, logit and norm scale, mixing with another model of its task),
                        -- drawn from a generator of their own seeded from `seed` (batch order and
                        -- unit_keep draw as without; off: the same bits as before it). {scale = 2}
                        -- jitters the logits' and class norms' scale (e^(2z)), as other recipes spread
                        -- them: the learned embedding reads unseen tasks, new classes, other recipes and
                        -- PyTorch models far better, but the hybrid built on it loses transfer ranking
                        -- (tau per target 0.475 to 0.460), so it is off by default (docs/FINDINGS.md,
                        -- "Template augmentation"). Applies to networks with the templates slot: set as
                        -- a default (here), others skip it; given to another network, it raises
  optimizer = false,    -- an object with :step(params, grads); default lps.optim.adam{lr, weight_decay}
  progress = false,     -- function(info) after every epoch (epoch, epochs, loss, accuracy,
                        -- seconds); returning false stops training. true: the
                        -- lps.util.epoch_progress bar; a table: the bar with those
                        -- util.progress options
}

-- Check train_network's template_aug option for net: false/nil (off) or a
-- table of strengths (numbers >= 0) keyed by archnet's template_aug_keys.
-- Returns the table, or nil when every strength is 0 (off: nothing is
-- drawn). A default (not `given`) applies only where there are templates to
-- transform; given with a strength > 0, it raises for other networks.
-- Raises at the caller's caller.
local function check_template_aug(aug, net, given)
  if aug == false or aug == nil then return nil end
  local templates = net.augment_templates and net.has_slot and net:has_slot("templates")
  if not given and not templates then return nil end
  if type(aug) ~= "table" then
    error(("train_network: template_aug must be false or a table of strengths, got %s"):format(tostring(aug)), 3)
  end
  local keys = archnet.template_aug_keys
  local on = false
  for k, v in pairs(aug) do
    if not keys[k] then
      local names = {}
      for n in pairs(keys) do names[#names + 1] = n end
      table.sort(names)
      error(("train_network: unknown template_aug transform '%s' (%s)"):format(tostring(k), table.concat(names, ", ")), 3)
    end
    if type(v) ~= "number" or not (v >= 0 and v < math.huge) then
      error(("train_network: template_aug.%s must be a finite number >= 0, got %s"):format(k, tostring(v)), 3)
    end
    on = on or v > 0
  end
  if not on then return nil end
  if not templates then
    error("train_network: template_aug needs a network with the templates slot (lps.similarity.network with families)", 3)
  end
  return aug
end

-- One epoch's batches as lists of indices. With per_task > 1, each task's
-- models are shuffled and cut into groups of per_task, and the groups are
-- shuffled and packed into batches, so batch-hard triplets find positives.
local function epoch_batches(labels, bs, per_task, g)
  local function shuffle(v)
    for i = #v, 2, -1 do
      local j = g:random(i)
      v[i], v[j] = v[j], v[i]
    end
    return v
  end
  local groups = {}
  if per_task <= 1 then
    for i = 1, #labels do groups[i] = {i} end
  else
    local by, order = {}, {}
    for i, y in ipairs(labels) do
      if not by[y] then by[y] = {}; order[#order + 1] = y end
      table.insert(by[y], i)
    end
    for _, y in ipairs(order) do
      local idx = shuffle(by[y])
      for s = 1, #idx, per_task do
        groups[#groups + 1] = {table.unpack(idx, s, math.min(#idx, s + per_task - 1))}
      end
    end
  end
  shuffle(groups)
  local batches, cur = {}, {}
  for _, grp in ipairs(groups) do
    if #cur > 0 and #cur + #grp > bs then batches[#batches + 1] = cur; cur = {} end
    for _, i in ipairs(grp) do cur[#cur + 1] = i end
  end
  if #cur > 0 then batches[#batches + 1] = cur end
  return batches
end

--- Train net on models with 1-based task labels. Returns a report
-- {epochs = {{loss=, accuracy=}, ...}, seconds=}; accuracy is the training
-- cross-entropy head's (nil with a triplet-only loss).
function M.train_network(net, models, labels, opts)
  local o = util.options(opts, M.train_defaults, "similarity.train_network")
  if not base.is_network(net) then
    error("train_network: the first argument must be a similarity network or feature head", 2)
  end
  if type(models) ~= "table" or type(labels) ~= "table" or #models ~= #labels or #models < 1 then
    error("train_network: need non-empty lists of models and labels of the same length", 2)
  end
  for i, y in ipairs(labels) do
    if math.type(y) ~= "integer" or y < 1 or (o.loss ~= "triplet" and y > net.opts.classes) then
      error(("train_network: label %d is %s, expected an integer 1..%d"):format(i, tostring(y),
        net.opts.classes), 2)
    end
  end
  for _, k in ipairs{"epochs", "batch_size", "per_task"} do
    if math.type(o[k]) ~= "integer" or o[k] < (k == "epochs" and 0 or 1) then
      error(("train_network: %s must be an integer >= %d, got %s"):format(k, k == "epochs" and 0 or 1, tostring(o[k])), 2)
    end
  end
  if math.type(o.seed) ~= "integer" then error(("train_network: seed must be an integer, got %s"):format(tostring(o.seed)), 2) end
  local pt = type(o.progress)
  if not (pt == "boolean" or pt == "table" or pt == "function") then
    error(("train_network: progress must be a boolean, a table of bar options or a function, got %s"):format(pt), 2)
  end
  if o.optimizer and not (type(o.optimizer) == "table" or type(o.optimizer) == "userdata") then
    error(("train_network: optimizer must be an object with :step(params, grads), got %s"):format(type(o.optimizer)), 2)
  end
  -- before any model is prepared
  local aug = check_template_aug(o.template_aug, net, type(opts) == "table" and opts.template_aug ~= nil)
  local t0 = core.now()
  local prepared = {}
  for i, m in ipairs(models) do prepared[i] = net:prepare(m) end
  local opt = o.optimizer
  if not opt then
    opt = optim.adam{lr = o.lr, weight_decay = o.weight_decay}
  end
  local params, grads = net:parameters()
  local loss_opts = {loss = o.loss, triplet_weight = o.triplet_weight, margin = o.margin, metric = o.metric,
    relations = o.relations, relation_weight = o.relation_weight}
  local g = core.generator(o.seed)
  local report = {epochs = {}}
  local per_task = o.loss == "xent" and 1 or o.per_task
  if o.schedule ~= "constant" and o.schedule ~= "cosine" then
    error(("train_network: schedule must be 'constant' or 'cosine', got '%s'"):format(tostring(o.schedule)), 2)
  end
  if type(o.unit_keep) ~= "number" or not (o.unit_keep > 0 and o.unit_keep <= 1) then
    error(("train_network: unit_keep must be a number in (0, 1], got %s"):format(tostring(o.unit_keep)), 2)
  end
  local keep = net.keep_units and o.unit_keep or 1 -- a feature head has no units to keep
  local ag, by_label -- the augmentation's own generator; each label's model indices (mix partners)
  if aug then
    ag = core.generator(7919 * o.seed + 104723)
    if (aug.mix or 0) > 0 then
      by_label = {}
      for i, y in ipairs(labels) do
        by_label[y] = by_label[y] or {}
        table.insert(by_label[y], i)
      end
    end
  end
  local progress, display = o.progress, nil
  if progress == true or type(progress) == "table" then
    progress, display = util.epoch_progress(progress ~= true and progress or nil, "lps")
  end
  local _ <close> = display -- ends the bar's line however training ends
  for epoch = 1, o.epochs do
    if o.schedule == "cosine" then opt:lr(o.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / o.epochs))) end
    local sum, correct, n = 0, 0, 0
    for _, idx in ipairs(epoch_batches(labels, o.batch_size, per_task, g)) do
      local ms, ys = {}, {}
      for k, i in ipairs(idx) do
        ms[k], ys[k] = prepared[i], labels[i]
        if keep < 1 then ms[k] = net:keep_units(ms[k], keep, g) end
        if aug then
          local partner
          if by_label then
            local same = by_label[labels[i]]
            if #same > 1 then
              local j = same[ag:random(#same - 1)]
              if j == i then j = same[#same] end -- a uniform draw among the others
              partner = prepared[j]
            end
          end
          ms[k] = net:augment_templates(ms[k], aug, ag, partner)
        end
      end
      net:zero_grad()
      net.training_units = true -- auxiliary unit losses (archnet), only while training
      local Y = net:forward(ms)
      net.training_units = nil
      local loss, dY, st = net:loss(Y, ys, loss_opts)
      if net.aux_loss then loss = loss + net.aux_loss end
      if loss ~= loss or loss == math.huge then
        error(("train_network: the loss is not finite at epoch %d"):format(epoch), 2)
      end
      net:backward(dY)
      opt:step(params, grads)
      sum, n = sum + loss * #idx, n + #idx
      correct = correct + (st.correct or 0)
    end
    local rec = {loss = sum / n, accuracy = o.loss ~= "triplet" and correct / n or nil}
    report.epochs[epoch] = rec
    if progress and progress{epoch = epoch, epochs = o.epochs, loss = rec.loss,
                                 accuracy = rec.accuracy, seconds = core.now() - t0} == false then
      break
    end
  end
  report.seconds = core.now() - t0
  return report
end

return M
