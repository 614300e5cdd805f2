--- lualps.similarity: the second-order network of Learnable Parameter
-- Similarity. Its input is a trained MLP ({W1, b1, ..., WL, bL}, PyTorch
-- layout, ReLU between layers); its output an L2-normalized embedding whose
-- cosine is the similarity of two models.
--
-- Per model: chain normalization (removes ReLU rescaling), a shared encoder
-- embedding every hidden unit of layer 1 from its incoming weights, bias and
-- outgoing importance, deeper units from their incoming weights mapped
-- through the previous layer's unit embeddings (so the previous order does
-- not matter), then per layer second-order pooling weighted by importance,
-- concatenation, a learned projection and L2 normalization. All heavy work
-- is in C (lualps.core._lps, csrc/lps/: chainnorm.c, neuron.c, sopool.c,
-- metric_loss.c); this file wires the layers.
local lps = require "lualps"
local K = require("lualps.core")._lps

local M = {}

--- Options of lps.similarity.network and their defaults.
M.defaults = {
  input_dim = 784,    -- inputs of a model's first layer
  layers = 1,         -- hidden layers used (the first ones); 2 adds the second layer's units
                      -- (on ModelSet500 it lowered cross-optimizer top-1 and tau(overlap))
  width = 64,         -- unit embedding width d
  embed = 64,         -- embedding size e
  activation = "relu", -- unit encoder nonlinearity: "relu" | "tanh" | "linear"
  pool = "power",     -- "power" | "sqrtm" (second order), "plain" (unnormalized), "mean" (first order)
  pool_eps = 1e-4,    -- power: sqrt(|s| + eps); sqrtm: ridge eps I
  pool_iters = 5,     -- sqrtm: Newton-Schulz steps
  pool_weights = "importance", -- units' pooling weights: "importance" (outgoing norms) | "uniform"
  layer_norm = true,  -- L2-normalize each layer's pooled features before the projection
  chain_norm = true,  -- chain normalization of every input model
  classes = 0,        -- training tasks of the cross-entropy head (0: no head)
  cosine_head = true, -- classifier rows L2-normalized (cosine softmax)
  scale = 16,         -- logit scale of the classifier (embeddings have norm 1)
  seed = 1,           -- initialization
}

local function with_defaults(opts, defaults, what)
  opts = opts or {}
  if type(opts) ~= "table" then error(what .. ": options must be a table", 3) end
  for k in pairs(opts) do
    if defaults[k] == nil then error(("%s: unknown option '%s'"):format(what, tostring(k)), 3) end
  end
  local o = {}
  for k, v in pairs(defaults) do
    if opts[k] ~= nil then o[k] = opts[k] else o[k] = v end
  end
  return o
end

local function check_int(v, lo, name)
  if math.type(v) ~= "integer" or v < lo then
    error(("similarity.network: %s must be an integer >= %d, got %s"):format(name, lo, tostring(v)), 3)
  end
end

-- add(name, shape, std) creates a parameter of self (normal with sd std
-- from the seeded generator, or zeros when std is 0) and its gradient, in
-- the order of the calls.
local function param_adder(self, seed)
  local g = lps.generator(seed)
  return function(name, shape, std)
    local t = lps.zeros(table.unpack(shape))
    if std > 0 then
      local args = {table.unpack(shape)}
      args[#args + 1] = g
      t = lps.randn(table.unpack(args)):mul_(std)
    end
    self.names[#self.names + 1] = name
    self.P[name], self.G[name] = t, lps.zeros(table.unpack(shape))
  end
end

-- The projection of in_dim features to the embedding, and the classifier.
local function add_embedding_layers(add, in_dim, o)
  add("proj.weight", {o.embed, in_dim}, math.sqrt(1 / in_dim))
  add("proj.bias", {o.embed}, 0)
  if o.classes > 0 then
    add("head.weight", {o.classes, o.embed}, math.sqrt(1 / o.embed))
    add("head.bias", {o.classes}, 0)
  end
end

local Net = {}
Net.__index = Net

-- L2-normalize the n rows of width w of F (B x n*w) in place; returns the
-- norms. As in bilinear pooling: power normalization, then L2 per block, so
-- every pooled set enters the projection at the same scale.
local function block_norm(F, n, w)
  local norms, V = {}, F:reshape(n, w) -- shares F's memory
  for r = 1, n do
    norms[r] = math.max(V[r]:norm(), 1e-12)
    V[r]:div_(norms[r])
  end
  return norms
end

-- Backward of block_norm: f = v / |v|  =>  dv = (df - f (f . df)) / |v|, in dF.
local function block_norm_backward(F, dF, norms, n, w)
  local V, dV = F:reshape(n, w), dF:reshape(n, w)
  for r = 1, n do
    local f, g = V[r], dV[r]
    g:sub_(f * (f * g):sum()):div_(norms[r])
  end
end

local Arch = require "lualps.archnet"
local helpers = {param_adder = param_adder, add_embedding_layers = add_embedding_layers, check_int = check_int,
                 block_norm = block_norm, block_norm_backward = block_norm_backward}

--- A new, randomly initialized network. See M.defaults for the options.
-- With `families` ({"mlp", "cnn"}) it reads MLPs and CNNs of any depth into
-- one space (lualps.archnet; its options: lps.similarity.arch_defaults).
function M.network(opts)
  if type(opts) == "table" and opts.families ~= nil then return Arch.new(opts, helpers) end
  local o = with_defaults(opts, M.defaults, "similarity.network")
  check_int(o.input_dim, 1, "input_dim")
  check_int(o.layers, 1, "layers")
  check_int(o.width, 1, "width")
  check_int(o.embed, 1, "embed")
  check_int(o.classes, 0, "classes")
  check_int(o.seed, 0, "seed")
  if o.activation ~= "relu" and o.activation ~= "tanh" and o.activation ~= "linear" then
    error(("similarity.network: activation must be 'relu', 'tanh' or 'linear', got '%s'"):format(
      tostring(o.activation)), 2)
  end
  if o.pool_weights ~= "importance" and o.pool_weights ~= "uniform" then
    error(("similarity.network: pool_weights must be 'importance' or 'uniform', got '%s'"):format(
      tostring(o.pool_weights)), 2)
  end
  if type(o.chain_norm) ~= "boolean" or type(o.cosine_head) ~= "boolean" or type(o.layer_norm) ~= "boolean" then
    error("similarity.network: chain_norm, cosine_head and layer_norm must be booleans", 2)
  end
  if type(o.scale) ~= "number" or not (o.scale > 0 and o.scale < math.huge) then
    error("similarity.network: scale must be a finite number > 0", 2)
  end
  local pool = {mode = o.pool, eps = o.pool_eps, iters = o.pool_iters}
  local per_layer = K.sopool_size(o.width, pool) -- also checks the mode
  local self = setmetatable({opts = o, pool = pool, per_layer = per_layer,
                             feat_dim = per_layer * o.layers, names = {}, P = {}, G = {}}, Net)
  local add = param_adder(self, o.seed)
  local d = o.width
  for l = 1, o.layers do
    local fan = (l == 1 and o.input_dim or d) + 2
    -- Kaiming-normal: unit features are scaled to entries of order 1
    add(("enc%d.weight"):format(l), {d, fan}, math.sqrt(2 / fan))
    add(("enc%d.bias"):format(l), {d}, 0)
  end
  add_embedding_layers(add, self.feat_dim, o)
  return self
end

function Net:__tostring()
  local n = 0
  for _, name in ipairs(self.names) do n = n + self.P[name]:numel() end
  local o = self.opts
  return ("lualps.similarity network (input %d, %d hidden layer%s, width %d, embedding %d, "
    .. "%s pooling, chain norm %s, %d classes, %d parameters)"):format(o.input_dim, o.layers,
    o.layers == 1 and "" or "s", o.width, o.embed, o.pool, o.chain_norm and "on" or "off",
    o.classes, n)
end

--- The options that rebuild this network (with load_named for the weights).
function Net:spec()
  local s = {}
  for k, v in pairs(self.opts) do s[k] = v end
  return s
end

--- Two lists sharing memory with the network: parameters and their gradients.
function Net:parameters()
  local p, g = {}, {}
  for i, name in ipairs(self.names) do p[i], g[i] = self.P[name], self.G[name] end
  return p, g
end

--- name -> parameter tensor, and the names in order.
function Net:named_parameters()
  local t = {}
  for _, name in ipairs(self.names) do t[name] = self.P[name] end
  return t, {table.unpack(self.names)}
end

--- Copy weights saved from named_parameters (names and shapes must match).
function Net:load_named(tbl)
  if type(tbl) ~= "table" then error("load_named: expected a table of name -> tensor", 2) end
  for name in pairs(tbl) do
    if not self.P[name] then error(("load_named: unknown parameter '%s'"):format(tostring(name)), 2) end
  end
  for _, name in ipairs(self.names) do
    local src = tbl[name]
    if not lps.is_tensor(src) then error(("load_named: parameter '%s' is missing"):format(name), 2) end
    local want, got = self.P[name]:shape(), src:shape()
    if table.concat(want, "x") ~= table.concat(got, "x") then
      error(("load_named: parameter '%s' has shape (%s), expected (%s)"):format(name,
        table.concat(got, "x"), table.concat(want, "x")), 2)
    end
    local sum = src:sum() -- in double: NaN or infinite only if an entry is
    if sum ~= sum or sum == math.huge or sum == -math.huge then
      error(("load_named: parameter '%s' has a non-finite entry"):format(name), 2)
    end
  end
  for _, name in ipairs(self.names) do self.P[name]:copy(tbl[name]) end
  return self
end

function Net:zero_grad()
  for _, name in ipairs(self.names) do self.G[name]:zero_() end
end

--- Data-only preprocessing of one model (chain normalization, unit
-- features, importances); the result can be cached and passed to forward.
function Net:prepare(model)
  local o, L = self.opts, self.opts.layers
  if type(model) ~= "table" then error("similarity: a model is a list {W1, b1, W2, b2, ...}", 2) end
  if model.lps_prepared then
    if model.layers ~= L or model.chain_norm ~= o.chain_norm or model.input_dim ~= o.input_dim then
      error("similarity: this model was prepared by a network with other options", 2)
    end
    return model
  end
  local need = 2 * (L + 1)
  if #model < need or #model % 2 ~= 0 then
    error(("similarity: a model needs at least %d layers ({W1, b1, ..., W%d, b%d}) for %d hidden layer%s, got %d entries")
      :format(L + 1, L + 1, L + 1, L, L == 1 and "" or "s", #model), 2)
  end
  -- Layer L+1 is normalized too when it is hidden, so that the importance
  -- of layer L's units (W_{L+1}'s column norms) is free of its rescaling.
  local m = {}
  for i = 1, math.min(#model, need + 2) do
    if not lps.is_tensor(model[i]) then
      error(("similarity: entry %d of the model is a %s, expected a tensor"):format(i, type(model[i])), 2)
    end
    m[i] = model[i]:clone()
  end
  if m[1]:dim() ~= 2 or m[1]:size(2) ~= o.input_dim then
    error(("similarity: the first weight should be (h x %d), got (%s)"):format(o.input_dim,
      table.concat(m[1]:shape(), "x")), 2)
  end
  -- chain_normalize_ also checks every shape and that all weights are finite
  if o.chain_norm then K.chain_normalize_(m) else K.chain_normalize_(m, math.huge) end
  local p = {lps_prepared = true, layers = L, chain_norm = o.chain_norm, input_dim = o.input_dim,
             bias = {}, imp = {}, W = {}}
  for l = 1, L do
    local W, b = m[2 * l - 1], m[2 * l]
    -- Scaled so that a normalized row's entries, and the bias, are of order 1.
    local s = math.sqrt(W:size(2) + 1)
    if l == 1 then p.U1 = W:mul_(s) else p.W[l] = W end
    p.bias[l] = b:mul_(s)
    p.imp[l] = K.column_norms(m[2 * l + 1])
  end
  return p
end

--- A chain-normalized copy of a model {W1, b1, ..., WL, bL} (same function;
-- every hidden unit's incoming weights and bias have norm 1).
function M.chain_normalize(model)
  if type(model) ~= "table" then error("chain_normalize: a model is a list {W1, b1, W2, b2, ...}", 2) end
  local m = {}
  for i, t in ipairs(model) do
    if not lps.is_tensor(t) then
      error(("chain_normalize: entry %d of the model is a %s, expected a tensor"):format(i, type(t)), 2)
    end
    m[i] = t:clone()
  end
  return K.chain_normalize_(m)
end

-- Pooling weights of layer l's units of a prepared model (sopool scales
-- them to sum 1): their importances, or all equal.
function Net:pool_weights(p, l)
  if self.opts.pool_weights == "importance" then return p.imp[l] end
  p.uniform = p.uniform or {}
  p.uniform[l] = p.uniform[l] or lps.ones(p.imp[l]:numel())
  return p.uniform[l]
end

--- Embeddings (B x embed) of a list of models (raw or prepared); keeps what
-- backward needs.
function Net:forward(models)
  if type(models) ~= "table" or #models < 1 then
    error("similarity: forward needs a non-empty list of models", 2)
  end
  local L, P = self.opts.layers, self.P
  local B, fd, pl = #models, self.feat_dim, self.per_layer
  local F = lps.zeros(B, fd)
  local items = {}
  for i = 1, B do
    local p = self:prepare(models[i])
    local Z, U = {}, {}
    for l = 1, L do
      U[l] = l == 1 and p.U1 or lps.matmul(p.W[l], Z[l - 1])
      Z[l] = K.neuron_forward(U[l], p.bias[l], p.imp[l], P["enc" .. l .. ".weight"],
        P["enc" .. l .. ".bias"], self.opts.activation)
      K.sopool_forward(Z[l], self:pool_weights(p, l), self.pool, F, (i - 1) * fd + (l - 1) * pl + 1)
    end
    items[i] = {p = p, Z = Z, U = U}
  end
  local norms = self.opts.layer_norm and block_norm(F, B * L, pl) or nil -- (model, layer) blocks
  local Y, Upre = K.embed_forward(F, P["proj.weight"], P["proj.bias"])
  self.cache = {F = F, U = Upre, items = items, norms = norms}
  return Y
end

--- Accumulate parameter gradients for dL/dY (B x embed) of the last forward.
function Net:backward(dY)
  local c = self.cache
  if not c then error("similarity: backward without a forward", 2) end
  local L, P, G = self.opts.layers, self.P, self.G
  local fd, pl = self.feat_dim, self.per_layer
  local dF = K.embed_backward(dY, c.U, c.F, P["proj.weight"], G["proj.weight"], G["proj.bias"], true)
  if c.norms then block_norm_backward(c.F, dF, c.norms, #c.items * L, pl) end
  for i, it in ipairs(c.items) do
    local carry
    for l = L, 1, -1 do
      local dZ = K.sopool_backward(dF, it.Z[l], self:pool_weights(it.p, l), self.pool,
        (i - 1) * fd + (l - 1) * pl + 1)
      if carry then dZ:add_(carry) end
      local en = "enc" .. l
      local dU = K.neuron_backward(dZ, it.Z[l], it.U[l], it.p.bias[l], it.p.imp[l],
        P[en .. ".weight"], G[en .. ".weight"], G[en .. ".bias"], l > 1, self.opts.activation)
      if l > 1 then carry = lps.matmul(it.p.W[l], dU, true, false) end
    end
  end
  self.cache = nil
end

--- Embeddings of many models, batch by batch, keeping nothing for backward.
function Net:embed(models, batch)
  batch = batch or 64
  local n = #models
  local out = lps.zeros(n, self.opts.embed)
  for s = 1, n, batch do
    local chunk = {}
    for i = s, math.min(n, s + batch - 1) do chunk[#chunk + 1] = models[i] end
    out:rows(s, s + #chunk - 1):copy(self:forward(chunk))
  end
  self.cache = nil
  return out
end

--- Options of Net:loss and their defaults.
M.loss_defaults = {
  loss = "both",        -- "xent" (needs classes > 0), "triplet", or "both"
  triplet_weight = 1,   -- weight of the triplet term in "both"
  margin = 0.2,         -- triplet margin
  metric = "cosine",    -- triplet distance: "cosine" or "euclidean"
  relations = false,    -- a (classes x classes) tensor of target cosines between the models of
                        -- two tasks: adds relation_weight * mean (cosine - target)^2 over pairs
  relation_weight = 1,
}

--- Loss of embeddings Y for 1-based labels; accumulates the head's
-- gradients and returns loss, dL/dY and {xent=, triplet=, correct=, active=}.
function Net:loss(Y, labels, opts)
  local o = with_defaults(opts, M.loss_defaults, "similarity.loss")
  local stats = {}
  local total, dY = 0, nil
  if o.loss == "xent" or o.loss == "both" then
    if self.opts.classes < 1 then error("similarity.loss: cross-entropy needs a network with classes > 0", 2) end
    local l, d, correct = K.xent(Y, labels, self.P["head.weight"], self.P["head.bias"],
      {scale = self.opts.scale, cosine = self.opts.cosine_head}, self.G["head.weight"], self.G["head.bias"])
    total, dY, stats.xent, stats.correct = l, d, l, correct
  end
  if o.loss == "triplet" or o.loss == "both" then
    local l, d, valid, active = K.triplet(Y, labels, {margin = o.margin, metric = o.metric})
    local w = o.loss == "both" and o.triplet_weight or 1
    total = total + w * l
    if dY then dY:add_(d, w) else dY = d:mul_(w) end
    stats.triplet, stats.valid, stats.active = l, valid, active
  end
  if not dY then error(("similarity.loss: unknown loss '%s'"):format(tostring(o.loss)), 2) end
  if o.relations and Y:size(1) >= 2 then -- a batch of one has no pair
    local l, d = K.pair_regression(Y, labels, o.relations)
    total = total + o.relation_weight * l
    dY:add_(d, o.relation_weight)
    stats.relation = l
  end
  return total, dY, stats
end

--- Options of train_network and their defaults.
M.train_defaults = {
  epochs = 30,
  batch_size = 32,      -- models per step
  per_task = 4,         -- with a triplet loss, batches are built of groups of this many models of one task
  lr = 1e-3,
  weight_decay = 0,
  loss = "both", triplet_weight = 1, margin = 0.2, metric = "cosine", -- see M.loss_defaults
  relations = false, relation_weight = 1, -- see M.loss_defaults
  seed = 1,             -- batch order
  schedule = "constant", -- or "cosine": lr annealed to 0 over the epochs (needs opt:lr)
  unit_keep = 0.125,    -- fraction of its first-layer units a model keeps at each step (a random
                        -- subset, at least one unit; augments the unit sets); 1 = all units.
                        -- Similarity networks only (feature heads ignore it)
  optimizer = false,    -- an object with :step(params, grads); default lps.optim.adam{lr, weight_decay}
  progress = false,     -- function(info) after every epoch (epoch, epochs, loss, accuracy,
                        -- seconds); returning false stops training. true: the
                        -- lps.util.epoch_progress bar; a table: the bar with those
                        -- util.progress options
}

-- A prepared model restricted to a random subset of `keep` of its first-layer
-- units (rows of U1, bias and importance, columns of W2): the same kind of
-- set, as a narrower model would give.
local function keep_units(p, keep, g)
  local h = p.U1:size(1)
  local perm = {}
  for i = 1, h do perm[i] = i end
  for i = h, 2, -1 do
    local j = g:random(i)
    perm[i], perm[j] = perm[j], perm[i]
  end
  local idx = {table.unpack(perm, 1, math.max(1, math.floor(h * keep + 0.5)))}
  table.sort(idx)
  local q = {lps_prepared = true, layers = p.layers, chain_norm = p.chain_norm, input_dim = p.input_dim,
             U1 = p.U1:index_rows(idx), bias = {p.bias[1]:index_rows(idx)}, imp = {p.imp[1]:index_rows(idx)},
             W = {}}
  for l = 2, p.layers do q.W[l], q.bias[l], q.imp[l] = p.W[l], p.bias[l], p.imp[l] end
  if p.layers >= 2 then q.W[2] = p.W[2]:t():index_rows(idx):t() end
  return q
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
  local o = with_defaults(opts, M.train_defaults, "similarity.train_network")
  local mt = getmetatable(net)
  if mt ~= Net and mt ~= M.Head and mt ~= Arch then
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
  local t0 = lps.now()
  local prepared = {}
  for i, m in ipairs(models) do prepared[i] = net:prepare(m) end
  local opt = o.optimizer
  if not opt then
    opt = lps.optim.adam{lr = o.lr, weight_decay = o.weight_decay}
  end
  local params, grads = net:parameters()
  local loss_opts = {loss = o.loss, triplet_weight = o.triplet_weight, margin = o.margin, metric = o.metric,
    relations = o.relations, relation_weight = o.relation_weight}
  local g = lps.generator(o.seed)
  local report = {epochs = {}}
  local per_task = o.loss == "xent" and 1 or o.per_task
  if o.schedule ~= "constant" and o.schedule ~= "cosine" then
    error(("train_network: schedule must be 'constant' or 'cosine', got '%s'"):format(tostring(o.schedule)), 2)
  end
  if type(o.unit_keep) ~= "number" or not (o.unit_keep > 0 and o.unit_keep <= 1) then
    error(("train_network: unit_keep must be a number in (0, 1], got %s"):format(tostring(o.unit_keep)), 2)
  end
  local keep = mt ~= M.Head and o.unit_keep or 1 -- a feature head has no units
  local progress, display = o.progress, nil
  if progress == true or type(progress) == "table" then
    local popts = {label = "lps"}
    if progress ~= true then for k, v in pairs(progress) do popts[k] = v end end
    progress, display = require("lualps.util").epoch_progress(popts)
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
                                 accuracy = rec.accuracy, seconds = lps.now() - t0} == false then
      break
    end
  end
  report.seconds = lps.now() - t0
  return report
end

Net.keep_units = function(_, p, keep, g) return keep_units(p, keep, g) end
M.arch_defaults = Arch.defaults
for _, name in ipairs{"loss", "parameters", "named_parameters", "load_named", "zero_grad", "spec", "embed"} do
  Arch[name] = Net[name]
end

------------------------------------------------------------------ feature heads

-- A learned head on fixed per-model features (the baselines' "stats + head"
-- and the Gram map): the same projection, L2 normalization, classifier and
-- losses as LPS, over a feature vector instead of the unit sets. Trains
-- with train_network like a network; a "model" is a 1-D feature tensor.
local Head = {}
Head.__index = Head
M.Head = Head
for _, name in ipairs{"loss", "parameters", "named_parameters", "load_named", "zero_grad", "spec"} do
  Head[name] = Net[name]
end

--- lps.similarity.feature_head{in_dim=, embed=64, classes=0, cosine_head=true, scale=16, seed=1}
function M.feature_head(opts)
  opts = opts or {}
  local o = {in_dim = opts.in_dim, embed = opts.embed or 64, classes = opts.classes or 0,
    cosine_head = opts.cosine_head ~= false, scale = opts.scale or 16, seed = opts.seed or 1}
  check_int(o.in_dim, 1, "in_dim")
  check_int(o.embed, 1, "embed")
  check_int(o.classes, 0, "classes")
  local self = setmetatable({opts = o, names = {}, P = {}, G = {}}, Head)
  add_embedding_layers(param_adder(self, o.seed), o.in_dim, o)
  return self
end

function Head:__tostring()
  return ("lualps.similarity feature head (%d features -> %d, %d classes)"):format(self.opts.in_dim,
    self.opts.embed, self.opts.classes)
end

function Head:prepare(x)
  if not lps.is_tensor(x) or x:numel() ~= self.opts.in_dim then
    error(("feature head: expected a feature vector of %d values"):format(self.opts.in_dim), 2)
  end
  return x
end

function Head:forward(rows)
  local F = lps.zeros(#rows, self.opts.in_dim)
  for i, x in ipairs(rows) do F[i]:copy(self:prepare(x)) end
  local Y, U = K.embed_forward(F, self.P["proj.weight"], self.P["proj.bias"])
  self.cache = {F = F, U = U}
  return Y
end

function Head:backward(dY)
  local c = self.cache
  if not c then error("feature head: backward without a forward", 2) end
  K.embed_backward(dY, c.U, c.F, self.P["proj.weight"], self.G["proj.weight"], self.G["proj.bias"], false)
  self.cache = nil
end

Head.embed = Net.embed

------------------------------------------------------------------ models and sets

--- The weight list {W1, b1, ..., WL, bL} of a model given as such a list, as
-- an lps.nn module (named_parameters), or as the two results of ms:tensors(i)
-- (a map name -> tensor and the names in stored order).
function M.weights(model, names)
  local tm = type(model)
  if tm ~= "table" and tm ~= "userdata" then
    error("similarity: expected a model (a list of tensors, an lps.nn module or ms:tensors(i)), got " .. tm, 2)
  end
  if tm == "table" and lps.is_tensor(model[1]) then return model end
  if tm == "table" and type(names) == "table" then
    local list = {}
    for k, name in ipairs(names) do
      list[k] = model[name]
      if not lps.is_tensor(list[k]) then error(("similarity: tensor '%s' is missing"):format(tostring(name)), 2) end
    end
    return list
  end
  if tm == "table" and next(model) ~= nil and #model == 0 then
    -- a map name -> tensor in PyTorch naming ("0.weight", "fc2.bias", ...):
    -- order by layer number, weight before bias
    local keys = {}
    for name, t in pairs(model) do
      local n = type(name) == "string" and tonumber(name:match("^%a*(%d+)%.")) or nil
      local kind = type(name) == "string" and name:match("%.(%a+)$")
      if not n or (kind ~= "weight" and kind ~= "bias") or not lps.is_tensor(t) then
        error(("similarity: cannot order tensor '%s' (expected names like 0.weight, 0.bias)"):format(tostring(name)), 2)
      end
      keys[#keys + 1] = {name = name, n = n, b = kind == "bias" and 1 or 0}
    end
    table.sort(keys, function(x, y) if x.n ~= y.n then return x.n < y.n end return x.b < y.b end)
    local list = {}
    for k, e in ipairs(keys) do list[k] = model[e.name] end
    return list
  end
  local okf, np = pcall(function() return model.named_parameters end)
  if okf and np then
    local list = {}
    for k, nt in ipairs(model:named_parameters()) do list[k] = nt.tensor end
    if #list > 0 then
      list.spec = model:spec() -- strides, padding and pooling: what a CNN's function needs
      list.family = list[1]:dim() == 4 and "cnn" or "mlp"
      list.module = model
      return list
    end
  end
  error("similarity: expected a model (a list of tensors, an lps.nn module or ms:tensors(i))", 2)
end

--- Record i of an open set as a model for the network: its weight list,
-- with the `spec` and `family` of its metadata (what reading a CNN's
-- function needs).
function M.record(set, i)
  local w = M.weights(set:tensors(i))
  local meta = set:meta(i)
  w.spec, w.family = meta.spec, meta.family
  return w
end

-- Open a set given by path; returns it and whether we opened it.
local function as_set(ms)
  if type(ms) == "string" then return lps.modelset.open(ms), true end
  return ms, false
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

local Sim = {}
Sim.__index = Sim

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
  local set, own = as_set(ms)
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
  if tr_opts.progress == nil then tr_opts.progress = lps.isatty(2) end
  local report = M.train_network(net, models, labels, tr_opts)
  return setmetatable({net = net, classes = classes, label = label_field, report = report,
    n_train = #models, cache = setmetatable({}, {__mode = "k"})}, Sim)
end

--- Wrap a network (trained elsewhere) as a similarity object.
function M.wrap(net, classes)
  return setmetatable({net = net, classes = classes or {}, label = "task",
    cache = setmetatable({}, {__mode = "k"})}, Sim)
end

function Sim:__tostring()
  return ("lualps.similarity (%s; trained on %s models of %d %ss)"):format(tostring(self.net):match("%((.*)%)") or "",
    tostring(self.n_train or "?"), #self.classes, self.label)
end

--- Embedding (1-D, unit norm) of one model.
function Sim:embed(model)
  local e = self.net:embed({M.weights(model)})
  return e:reshape(e:size(2))
end

--- Embeddings (N x e) of every model of a set (a set or a path), streamed
-- from the store in batches: memory holds one batch of models, not the set.
-- opts: batch (64), progress (a util.progress option table, or false).
function Sim:embed_set(ms, opts)
  opts = opts or {}
  local set, own = as_set(ms)
  local n, batch = #set, opts.batch or 64
  local out = lps.zeros(n, self.net.opts.embed)
  local prog = opts.progress and require("lualps.util").progress(n, opts.progress)
  for s = 1, n, batch do
    local chunk = {}
    for i = s, math.min(n, s + batch - 1) do chunk[#chunk + 1] = M.record(set, i) end
    out:rows(s, s + #chunk - 1):copy(self.net:embed(chunk, batch))
    if prog then prog:update(s + #chunk - 1) end
  end
  if prog then prog:finish() end
  if own then set:close() end
  return out
end

--- Cosine similarity of two models (embeddings have unit norm).
function Sim:similarity(a, b)
  local ea, eb = self:embed(a), self:embed(b)
  return (ea * eb):sum()
end

-- Embeddings of a set, computed once per open set object.
function Sim:set_embeddings(ms)
  local e = self.cache[ms]
  if not e or e:size(1) ~= #ms then
    e = self:embed_set(ms)
    self.cache[ms] = e
  end
  return e
end

--- The k models of set `ms` most similar to `query`: a model, a record
-- number of ms (itself excluded), or an embedding. Returns a list of
-- {index=, score=, meta=} best first. The set's embeddings are computed on
-- the first query and cached for later ones.
function Sim:nearest(ms, query, k)
  k = k or 5
  if math.type(k) ~= "integer" or k < 1 then error("nearest: k must be a positive integer", 2) end
  local set = ms
  if type(ms) == "string" then error("nearest: open the set first (lps.modelset.open)", 2) end
  local E = self:set_embeddings(set)
  local q, self_index
  if math.type(query) == "integer" then
    if query < 1 or query > #set then error(("nearest: record %d out of range 1..%d"):format(query, #set), 2) end
    self_index = query
    q = E[query]:clone()
  elseif lps.is_tensor(query) and query:dim() == 1 then
    q = query
  else
    q = self:embed(query)
  end
  local want = math.min(#set, k + (self_index and 1 or 0))
  local idx, scores = lps.eval.topk(E, q, want)
  local out = setmetatable({}, {__tostring = function(list)
    local lines = {("%4s %6s  %-16s %-8s %8s"):format("rank", "#", "id", "task", "cosine")}
    for r, x in ipairs(list) do
      lines[#lines + 1] = ("%4d %6d  %-16s %-8s %8.4f"):format(r, x.index, tostring(x.meta.id),
        tostring(x.meta.task), x.score)
    end
    return table.concat(lines, "\n")
  end})
  for j = 1, #idx do
    local i = math.tointeger(idx[j])
    if i ~= self_index and #out < k then
      out[#out + 1] = {index = i, score = scores[j], meta = set:meta(i)}
    end
  end
  return out
end

local FORMAT = "lualps.similarity"

--- Save to a small file (a one-record model set: checksummed like any set).
function Sim:save(path, opts)
  local named = self.net:named_parameters()
  local out = lps.modelset.create(path, {overwrite = opts == nil or opts.overwrite ~= false})
  local ok, err = pcall(function()
    out:append_tensors(named, {kind = FORMAT, version = 1, spec = self.net:spec(),
      classes = self.classes, label = self.label, n_train = self.n_train})
  end)
  out:close()
  if not ok then error(err, 2) end
end

--- Load a similarity saved with sim:save(path); the file is checked like a
-- model set (checksums, sizes) and its weights like load_named (names, shapes,
-- finite values).
function M.load(path)
  local ms <close> = lps.modelset.open(path)
  if #ms ~= 1 then error(("similarity.load: %s holds %d records, not one saved similarity"):format(path, #ms), 2) end
  local meta = ms:meta(1)
  if meta.kind ~= FORMAT then
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
  net:load_named((ms:tensors(1)))
  local sim = M.wrap(net, meta.classes)
  sim.label, sim.n_train = meta.label, meta.n_train
  return sim
end

return M
