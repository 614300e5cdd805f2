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
-- is in C (lualps.core._lps, csrc/chainnorm.c, neuron.c, sopool.c,
-- metric_loss.c); this file wires the layers.
local lps = require "lualps"
local K = require("lualps.core")._lps

local M = {}

--- Options of lps.similarity.network and their defaults.
M.defaults = {
  input_dim = 784,    -- inputs of a model's first layer
  layers = 2,         -- hidden layers used (the first ones); 1 = "without deeper layers"
  width = 64,         -- unit embedding width d
  embed = 64,         -- embedding size e
  activation = "relu", -- unit encoder nonlinearity: "relu" | "tanh" | "linear"
  pool = "power",     -- "power" | "sqrtm" (second order), "plain" (unnormalized), "mean" (first order)
  pool_eps = 1e-4,    -- power: sqrt(|s| + eps); sqrtm: ridge eps I
  pool_iters = 5,     -- sqrtm: Newton-Schulz steps
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

local Net = {}
Net.__index = Net

--- A new, randomly initialized network. See M.defaults for the options.
function M.network(opts)
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
  if type(o.chain_norm) ~= "boolean" or type(o.cosine_head) ~= "boolean" then
    error("similarity.network: chain_norm and cosine_head must be booleans", 2)
  end
  if type(o.scale) ~= "number" or not (o.scale > 0 and o.scale < math.huge) then
    error("similarity.network: scale must be a finite number > 0", 2)
  end
  local pool = {mode = o.pool, eps = o.pool_eps, iters = o.pool_iters}
  local per_layer = K.sopool_size(o.width, pool) -- also checks the mode
  local self = setmetatable({opts = o, pool = pool, per_layer = per_layer,
                             feat_dim = per_layer * o.layers, names = {}, P = {}, G = {}}, Net)
  local g = lps.generator(o.seed)
  local function add(name, shape, std)
    local t = lps.zeros(table.unpack(shape))
    if std > 0 then
      local args = {table.unpack(shape)}
      args[#args + 1] = g
      t = lps.randn(table.unpack(args)):mul_(std)
    end
    self.names[#self.names + 1] = name
    self.P[name] = t
    self.G[name] = lps.zeros(table.unpack(shape))
  end
  local d = o.width
  for l = 1, o.layers do
    local fan = (l == 1 and o.input_dim or d) + 2
    -- Kaiming-normal: unit features are scaled to entries of order 1
    add(("enc%d.weight"):format(l), {d, fan}, math.sqrt(2 / fan))
    add(("enc%d.bias"):format(l), {d}, 0)
  end
  add("proj.weight", {o.embed, self.feat_dim}, math.sqrt(1 / self.feat_dim))
  add("proj.bias", {o.embed}, 0)
  if o.classes > 0 then
    add("head.weight", {o.classes, o.embed}, math.sqrt(1 / o.embed))
    add("head.bias", {o.classes}, 0)
  end
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
      K.sopool_forward(Z[l], p.imp[l], self.pool, F, (i - 1) * fd + (l - 1) * pl + 1)
    end
    items[i] = {p = p, Z = Z, U = U}
  end
  local Y, Upre = K.embed_forward(F, P["proj.weight"], P["proj.bias"])
  self.cache = {F = F, U = Upre, items = items}
  return Y
end

--- Accumulate parameter gradients for dL/dY (B x embed) of the last forward.
function Net:backward(dY)
  local c = self.cache
  if not c then error("similarity: backward without a forward", 2) end
  local L, P, G = self.opts.layers, self.P, self.G
  local fd, pl = self.feat_dim, self.per_layer
  local dF = K.embed_backward(dY, c.U, c.F, P["proj.weight"], G["proj.weight"], G["proj.bias"], true)
  for i, it in ipairs(c.items) do
    local carry
    for l = L, 1, -1 do
      local dZ = K.sopool_backward(dF, it.Z[l], it.p.imp[l], self.pool, (i - 1) * fd + (l - 1) * pl + 1)
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
  seed = 1,             -- batch order
  schedule = "constant", -- or "cosine": lr annealed to 0 over the epochs (needs opt:lr)
  optimizer = false,    -- an object with :step(params, grads); default lps.optim.adam{lr, weight_decay}
  progress = false,     -- function(info) after every epoch (epoch, epochs, loss, accuracy,
                        -- seconds); returning false stops training
}

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
  if getmetatable(net) ~= Net then error("train_network: the first argument must be a similarity network", 2) end
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
  local loss_opts = {loss = o.loss, triplet_weight = o.triplet_weight, margin = o.margin, metric = o.metric}
  local g = lps.generator(o.seed)
  local report = {epochs = {}}
  local per_task = o.loss == "xent" and 1 or o.per_task
  if o.schedule ~= "constant" and o.schedule ~= "cosine" then
    error(("train_network: schedule must be 'constant' or 'cosine', got '%s'"):format(tostring(o.schedule)), 2)
  end
  for epoch = 1, o.epochs do
    if o.schedule == "cosine" then opt:lr(o.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / o.epochs))) end
    local sum, correct, n = 0, 0, 0
    for _, idx in ipairs(epoch_batches(labels, o.batch_size, per_task, g)) do
      local ms, ys = {}, {}
      for k, i in ipairs(idx) do ms[k], ys[k] = prepared[i], labels[i] end
      net:zero_grad()
      local Y = net:forward(ms)
      local loss, dY, st = net:loss(Y, ys, loss_opts)
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
    if o.progress and o.progress{epoch = epoch, epochs = o.epochs, loss = rec.loss,
                                 accuracy = rec.accuracy, seconds = lps.now() - t0} == false then
      break
    end
  end
  report.seconds = lps.now() - t0
  return report
end

return M
