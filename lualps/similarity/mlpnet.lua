--- lualps.similarity.mlpnet: the second-order network of Learnable
-- Parameter Similarity for MLPs. Its input is a trained MLP ({W1, b1, ...,
-- WL, bL}, PyTorch layout, ReLU between layers); its output an
-- L2-normalized embedding whose cosine is the similarity of two models.
--
-- Per model: chain normalization (removes ReLU rescaling), a shared encoder
-- embedding every hidden unit of layer 1 from its incoming weights, bias and
-- outgoing importance, deeper units from their incoming weights mapped
-- through the previous layer's unit embeddings (so the previous order does
-- not matter), then per layer second-order pooling weighted by importance,
-- concatenation, a learned projection and L2 normalization. All heavy work
-- is in C (lualps.core._lps, csrc/lps/: chainnorm.c, neuron.c, sopool.c,
-- metric_loss.c); this file wires the layers.
local core = require "lualps.core"
local util = require "lualps.util"
local data = require "lualps.data"
local base = require "lualps.similarity.base"
local models = require "lualps.similarity.models"
local K = core._lps

local M = {}

--- Options of lps.similarity.network (without `families`) and their defaults.
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

local Net = base.class()
M.Net = Net

-- A new, randomly initialized MLP network (lps.similarity.network
-- without `families`). See M.defaults for the options.
function M.new(opts)
  local o = util.options(opts, M.defaults, "similarity.network")
  base.check_int(o.input_dim, 1, "input_dim")
  base.check_int(o.layers, 1, "layers")
  base.check_int(o.width, 1, "width")
  base.check_int(o.embed, 1, "embed")
  base.check_int(o.classes, 0, "classes")
  base.check_int(o.seed, 0, "seed")
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
  local add = base.param_adder(self, o.seed)
  local d = o.width
  for l = 1, o.layers do
    local fan = (l == 1 and o.input_dim or d) + 2
    -- Kaiming-normal: unit features are scaled to entries of order 1
    add(("enc%d.weight"):format(l), {d, fan}, math.sqrt(2 / fan))
    add(("enc%d.bias"):format(l), {d}, 0)
  end
  base.add_embedding_layers(add, self.feat_dim, o)
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
  local ok, err = pcall(models.check_weight_space, model, "an MLP network (it reads weights)")
  if not ok then error(err, 2) end
  local need = 2 * (L + 1)
  if #model < need or #model % 2 ~= 0 then
    error(("similarity: a model needs at least %d layers ({W1, b1, ..., W%d, b%d}) for %d hidden layer%s, got %d entries")
      :format(L + 1, L + 1, L + 1, L, L == 1 and "" or "s", #model), 2)
  end
  -- Layer L+1 is normalized too when it is hidden, so that the importance
  -- of layer L's units (W_{L+1}'s column norms) is free of its rescaling.
  local m = {}
  for i = 1, math.min(#model, need + 2) do
    if not core.is_tensor(model[i]) then
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
    if not core.is_tensor(t) then
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
  p.uniform[l] = p.uniform[l] or core.ones(p.imp[l]:numel())
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
  local F = core.zeros(B, fd)
  local items = {}
  for i = 1, B do
    local p = self:prepare(models[i])
    local Z, U = {}, {}
    for l = 1, L do
      U[l] = l == 1 and p.U1 or core.matmul(p.W[l], Z[l - 1])
      Z[l] = K.neuron_forward(U[l], p.bias[l], p.imp[l], P["enc" .. l .. ".weight"],
        P["enc" .. l .. ".bias"], self.opts.activation)
      K.sopool_forward(Z[l], self:pool_weights(p, l), self.pool, F, (i - 1) * fd + (l - 1) * pl + 1)
    end
    items[i] = {p = p, Z = Z, U = U}
  end
  local norms = self.opts.layer_norm and base.block_norm(F, B * L, pl) or nil -- (model, layer) blocks
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
  if c.norms then base.block_norm_backward(c.F, dF, c.norms, #c.items * L, pl) end
  for i, it in ipairs(c.items) do
    local carry
    for l = L, 1, -1 do
      local dZ = K.sopool_backward(dF, it.Z[l], self:pool_weights(it.p, l), self.pool,
        (i - 1) * fd + (l - 1) * pl + 1)
      if carry then dZ:add_(carry) end
      local en = "enc" .. l
      local dU = K.neuron_backward(dZ, it.Z[l], it.U[l], it.p.bias[l], it.p.imp[l],
        P[en .. ".weight"], G[en .. ".weight"], G[en .. ".bias"], l > 1, self.opts.activation)
      if l > 1 then carry = core.matmul(it.p.W[l], dU, true, false) end
    end
  end
  self.cache = nil
end

-- A prepared model restricted to a random subset of `keep` of its first-layer
-- units (rows of U1, bias and importance, columns of W2): the same kind of
-- set, as a narrower model would give.
function Net:keep_units(p, keep, g)
  local h = p.U1:size(1)
  local idx = {table.unpack(data.randperm(h, g), 1, math.max(1, math.floor(h * keep + 0.5)))}
  table.sort(idx)
  local q = {lps_prepared = true, layers = p.layers, chain_norm = p.chain_norm, input_dim = p.input_dim,
             U1 = p.U1:index_rows(idx), bias = {p.bias[1]:index_rows(idx)}, imp = {p.imp[1]:index_rows(idx)},
             W = {}}
  for l = 2, p.layers do q.W[l], q.bias[l], q.imp[l] = p.W[l], p.bias[l], p.imp[l] end
  if p.layers >= 2 then q.W[2] = p.W[2]:t():index_rows(idx):t() end
  return q
end

return M
