--- lualps.similarity: Learnable Parameter Similarity, the second-order
-- networks and the similarity API. A second-order network's input is a
-- trained model's weights; its output an L2-normalized embedding whose
-- cosine is the similarity of two models.
--   lps.similarity.network{...}              an MLP network (mlpnet.lua), or with
--                                            `families` any architecture (archnet.lua)
--   lps.similarity.feature_head{...}         a head on fixed features (head.lua)
--   lps.similarity.train_network(net, ...)   training (train.lua)
--   lps.similarity.train(set, split, opts)   all of it from a model set: a similarity
--                                            object (sim.lua: embed, nearest, save)
-- The networks share their parameters, losses and batched embedding
-- (base.lua); the models they read are weight lists (models.lua).
local core = require "lualps.core"
local modelset = require "lualps.modelset"
local base = require "lualps.similarity.base"
local mlpnet = require "lualps.similarity.mlpnet"
local archnet = require "lualps.similarity.archnet"
local head = require "lualps.similarity.head"
local train = require "lualps.similarity.train"
local models = require "lualps.similarity.models"
local sim = require "lualps.similarity.sim"
local hybrid = require "lualps.similarity.hybrid"
local prior = require "lualps.similarity.prior"

local M = {}

--- Options of an MLP network (lps.similarity.network) and their defaults:
-- see lualps/similarity/mlpnet.lua.
M.defaults = mlpnet.defaults
--- Options of an any-architecture network (lps.similarity.network with
-- `families`) and their defaults: see lualps/similarity/archnet.lua.
M.arch_defaults = archnet.defaults
--- Options of net:loss and of train_network, and their defaults.
M.loss_defaults = base.loss_defaults
M.train_defaults = train.train_defaults

M.train_network = train.train_network
M.feature_head = head.feature_head
M.Head = head.Head
M.chain_normalize = mlpnet.chain_normalize
M.weights = models.weights
--- The hybrid of template matching and LPS (lualps/similarity/hybrid.lua):
-- its options and defaults, fit, and new(net, state).
M.hybrid = hybrid
--- Probe matching (lualps/similarity/probe.lua): each model's class dreams,
-- read by the other; the hybrid's second unlearned anchor.
M.probe = require "lualps.similarity.probe"
M.record = models.record
--- The transferability prior (lualps/similarity/prior.lua): targets, fit,
-- predict; a saved model's sim:transferability and sim:select.
M.prior = prior

--- A new, randomly initialized network. See M.defaults for the options.
-- With `families` ({"mlp", "cnn"}) it reads MLPs and CNNs of any depth into
-- one space (lualps.similarity.archnet; its options: lps.similarity.arch_defaults).
function M.network(opts)
  if type(opts) == "table" and opts.families ~= nil then return archnet.new(opts) end
  return mlpnet.new(opts)
end

-- Record numbers of a split given as record numbers or as model ids.
local function records(ms, split)
  if type(split) ~= "table" then error("similarity: a split is a list of model ids or record numbers", 3) end
  local list = split.train or split
  local byid
  local out = {}
  for k, v in ipairs(list) do
    if math.type(v) == "integer" then
      if v < 1 or v > #ms then error(("similarity: record %d out of range 1..%d"):format(v, #ms), 3) end
      out[k] = v
    else
      if not byid then
        byid = {}
        for i = 1, #ms do byid[ms:meta(i).id] = i end
      end
      out[k] = byid[v] or error(("similarity: model id '%s' is not in the set"):format(tostring(v)), 3)
    end
  end
  if #out == 0 then error("similarity: the split is empty", 3) end
  return out
end

local train_keys = {}
for k in pairs(M.train_defaults) do train_keys[k] = true end

--- Train LPS on the models of `split` (a list of model ids or record
-- numbers, or {train = ...}) of the set `ms` (a set or a path), with the
-- metadata field opts.label ("task") as the class. Options are those of
-- lps.similarity.network and lps.similarity.train_network together
-- (`classes` is set from the data); progress defaults to the epoch bar
-- (lps.util.epoch_progress) on a terminal. Returns a similarity object.
function M.train(ms, split, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error(("similarity.train: opts must be a table, got %s"):format(type(opts)), 2) end
  local set, own = sim.as_set(ms, "similarity.train")
  local label_field = opts.label or "task"
  local net_opts, tr_opts = {}, {}
  for k, v in pairs(opts) do
    if k == "label" then -- handled above
    elseif train_keys[k] then tr_opts[k] = v
    elseif M.defaults[k] ~= nil and k ~= "classes" then net_opts[k] = v
    else error(("similarity.train: unknown option '%s'"):format(tostring(k)), 2) end
  end
  local recs = records(set, split)
  local models, raw_labels, classes, index = {}, {}, {}, {}
  for k, i in ipairs(recs) do
    local meta = set:meta(i)
    local y = meta[label_field]
    if y == nil then error(("similarity.train: record %d has no '%s' field"):format(i, label_field), 2) end
    if not index[y] then classes[#classes + 1] = y; index[y] = true end
    raw_labels[k] = y
    models[k] = M.record(set, i)
  end
  table.sort(classes, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) < type(b)
  end)
  for c, y in ipairs(classes) do index[y] = c end
  local labels = {}
  for k, y in ipairs(raw_labels) do labels[k] = index[y] end
  if own then set:close() end
  local loss = tr_opts.loss or M.train_defaults.loss
  net_opts.classes = loss == "triplet" and 0 or #classes
  local net = M.network(net_opts)
  if tr_opts.progress == nil then tr_opts.progress = core.isatty(2) end
  local report = M.train_network(net, models, labels, tr_opts)
  return sim.new{net = net, classes = classes, label = label_field, report = report, n_train = #models}
end

--- Wrap a network (trained elsewhere) as a similarity object; with a
-- hybrid state (lualps.similarity.hybrid: {w, lo, hi, gate, tm_pool, tm_templates, probe, probe_directed, probe_gate,
-- probe_bn, probe_bn_both, bn_residual, dreams, mu})
-- its similarity and nearest give the hybrid score; with a transferability
-- prior (lualps.similarity.prior.fit's) its transferability and select use it.
function M.wrap(net, classes, hybrid_state, prior_state)
  if not base.is_network(net) then
    error(("similarity.wrap: expected a network (lps.similarity.network), got %s"):format(type(net)), 2)
  end
  if classes ~= nil and type(classes) ~= "table" then
    error(("similarity.wrap: classes must be a list, got %s"):format(type(classes)), 2)
  end
  if hybrid_state ~= nil and type(hybrid_state) ~= "table" then
    error(("similarity.wrap: the hybrid state must be a table, got %s"):format(type(hybrid_state)), 2)
  end
  if prior_state ~= nil then prior.check(prior_state, "similarity.wrap: prior") end
  return sim.new{net = net, classes = classes or {}, label = "task", hybrid = hybrid_state, prior = prior_state}
end

--- The hybrid state of a saved file: its metadata h (the `hybrid` table),
-- prototypes mu and params par = (w, lo, hi), with the defaults that keep
-- older files scoring as they were saved.
function M.hybrid_state(h, mu, par)
  if type(h) ~= "table" or not (type(par) == "table" or core.is_tensor(par)) then
    error(("similarity.hybrid_state: expected the hybrid metadata (a table), the prototypes and (w, lo, hi), got %s, "
      .. "%s and %s"):format(type(h), core.is_tensor(mu) and "a tensor" or type(mu), core.is_tensor(par) and "a tensor"
      or type(par)), 2)
  end
  local state = {mu = mu, w = par[1], lo = par[2], hi = par[3], gate = h.gate ~= false,
    tm_pool = h.tm_pool, tm_templates = h.tm_templates or "network", -- older files: the network's
    probe = h.probe or 0, -- and no probe matching
    probe_directed = h.probe_directed == true, probe_gate = h.probe_gate == true,
    probe_bn = h.probe_bn or 0, -- older files: batch-norm pairs as any other
    probe_bn_both = h.probe_bn_both or h.probe_bn or 0, -- files of 4b711d8: probe_bn
    bn_residual = h.bn_residual ~= false, -- files saved before it: the learned term for every model
    -- files saved before the dreams were: fitted with the step of then, 0.05
    dreams = h.dreams or ((h.probe or 0) > 0 and {lr = 0.05} or nil)}
  -- files saved before adapt_bn was: their readers used the running statistics
  if state.dreams and state.dreams.adapt_bn == nil then state.dreams.adapt_bn = false end
  -- and before blur_bn was: their batch-norm readers read the dreams unblurred
  if state.dreams and state.dreams.blur_bn == nil then state.dreams.blur_bn = 0 end
  return state
end

--- Load a similarity saved with sim:save(path); the file is checked like a
-- model set (checksums, sizes) and its weights like load_named (names, shapes,
-- finite values).
function M.load(path)
  local ms <close> = modelset.open(path)
  if #ms ~= 1 then error(("similarity.load: %s holds %d records, not one saved similarity"):format(path, #ms), 2) end
  local meta = ms:meta(1)
  if meta.kind ~= sim.FORMAT then
    error(("similarity.load: %s is not a saved similarity (kind %s)"):format(path, tostring(meta.kind)), 2)
  end
  if meta.version ~= 1 then
    error(("similarity.load: %s has version %s; this lualps reads version 1"):format(path, tostring(meta.version)), 2)
  end
  local spec = meta.spec
  -- options added later: a file saved without them was trained without them
  if spec.families ~= nil and spec.template_extras == nil then spec.template_extras = false end
  if spec.families == nil then
    if spec.pool_weights == nil then spec.pool_weights = "importance" end
    if spec.layer_norm == nil then spec.layer_norm = false end
  end
  local net = M.network(spec)
  local named = ms:tensors(1)
  local state
  if type(meta.hybrid) == "table" then
    local mu, par = named["hybrid.prototypes"], named["hybrid.params"]
    if not (core.is_tensor(mu) and core.is_tensor(par) and par:numel() == 3) then
      error(("similarity.load: %s is a hybrid without its prototypes and (w, lo, hi)"):format(path), 2)
    end
    state = M.hybrid_state(meta.hybrid, mu, par)
    named["hybrid.prototypes"], named["hybrid.params"] = nil, nil
  end
  local pstate
  if meta.prior ~= nil then
    if type(meta.prior) ~= "table" then error(("similarity.load: %s has a malformed prior entry"):format(path), 2) end
    pstate = prior.from_saved(named, meta.prior, path)
  end
  if meta.prior == nil and named["prior.w"] ~= nil then -- tensors without their metadata: a damaged file
    error(("similarity.load: %s has prior tensors but no prior metadata"):format(path), 2)
  end
  net:load_named(named)
  local out = M.wrap(net, meta.classes, state, pstate)
  out.label, out.n_train = meta.label, meta.n_train
  return out
end

return M
