--- lualps.similarity.base: what every second-order network shares (the
-- MLP network of lualps.similarity.mlpnet, the any-architecture network of
-- lualps.similarity.archnet, the feature head of lualps.similarity.head):
-- parameters kept by name with their gradients, the projection to the
-- embedding and the classifier, batched embedding, the losses. Each
-- network class inherits these methods (M.class) and adds prepare,
-- forward, backward and __tostring.
local core = require "lualps.core"
local util = require "lualps.util"
local K = core._lps

local M = {}

-- The methods every network inherits.
local Base = {}
Base.__index = Base

-- A new network class: its instances find Base's methods through it.
function M.class()
  local c = setmetatable({}, Base)
  c.__index = c
  return c
end

-- Whether x is a network or head of one of these classes.
function M.is_network(x)
  local mt = getmetatable(x)
  return type(mt) == "table" and getmetatable(mt) == Base
end

-- v must be an integer >= lo (name: the option).
function M.check_int(v, lo, name)
  if math.type(v) ~= "integer" or v < lo then
    error(("similarity.network: %s must be an integer >= %d, got %s"):format(name, lo, tostring(v)), 3)
  end
end

-- add(name, shape, std) creates a parameter of self (normal with sd std
-- from the seeded generator, or zeros when std is 0) and its gradient, in
-- the order of the calls.
function M.param_adder(self, seed)
  local g = core.generator(seed)
  return function(name, shape, std)
    local t = core.zeros(table.unpack(shape))
    if std > 0 then
      local args = {table.unpack(shape)}
      args[#args + 1] = g
      t = core.randn(table.unpack(args)):mul_(std)
    end
    self.names[#self.names + 1] = name
    self.P[name], self.G[name] = t, core.zeros(table.unpack(shape))
  end
end

-- The projection of in_dim features to the embedding, and the classifier.
function M.add_embedding_layers(add, in_dim, o)
  add("proj.weight", {o.embed, in_dim}, math.sqrt(1 / in_dim))
  add("proj.bias", {o.embed}, 0)
  if o.classes > 0 then
    add("head.weight", {o.classes, o.embed}, math.sqrt(1 / o.embed))
    add("head.bias", {o.classes}, 0)
  end
end

-- L2-normalize the n rows of width w of F (B x n*w) in place; returns the
-- norms. As in bilinear pooling: power normalization, then L2 per block, so
-- every pooled set enters the projection at the same scale.
function M.block_norm(F, n, w)
  local norms, V = {}, F:reshape(n, w) -- shares F's memory
  for r = 1, n do
    norms[r] = math.max(V[r]:norm(), 1e-12)
    V[r]:div_(norms[r])
  end
  return norms
end

-- Backward of block_norm: f = v / |v|  =>  dv = (df - f (f . df)) / |v|, in dF.
function M.block_norm_backward(F, dF, norms, n, w)
  local V, dV = F:reshape(n, w), dF:reshape(n, w)
  for r = 1, n do
    local f, g = V[r], dV[r]
    g:sub_(f * (f * g):sum()):div_(norms[r])
  end
end

--- The options that rebuild this network (with load_named for the weights).
function Base:spec()
  local s = {}
  for k, v in pairs(self.opts) do s[k] = v end
  return s
end

--- Two lists sharing memory with the network: parameters and their gradients.
function Base:parameters()
  local p, g = {}, {}
  for i, name in ipairs(self.names) do p[i], g[i] = self.P[name], self.G[name] end
  return p, g
end

--- name -> parameter tensor, and the names in order.
function Base:named_parameters()
  local t = {}
  for _, name in ipairs(self.names) do t[name] = self.P[name] end
  return t, {table.unpack(self.names)}
end

--- Copy weights saved from named_parameters (names and shapes must match).
function Base:load_named(tbl)
  if type(tbl) ~= "table" then error("load_named: expected a table of name -> tensor", 2) end
  for name in pairs(tbl) do
    if not self.P[name] then error(("load_named: unknown parameter '%s'"):format(tostring(name)), 2) end
  end
  for _, name in ipairs(self.names) do
    local src = tbl[name]
    if not core.is_tensor(src) then error(("load_named: parameter '%s' is missing"):format(name), 2) end
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

function Base:zero_grad()
  for _, name in ipairs(self.names) do self.G[name]:zero_() end
end

--- Embeddings of many models, batch by batch, keeping nothing for backward.
function Base:embed(models, batch)
  if type(models) ~= "table" then error(("similarity: embed needs a list of models, got %s"):format(type(models)), 2) end
  batch = batch or 64
  if math.type(batch) ~= "integer" or batch < 1 then
    error(("similarity: embed's batch must be a positive integer, got %s"):format(tostring(batch)), 2)
  end
  local n = #models
  local out = core.zeros(n, self.opts.embed)
  for s = 1, n, batch do
    local chunk = {}
    for i = s, math.min(n, s + batch - 1) do chunk[#chunk + 1] = models[i] end
    out:rows(s, s + #chunk - 1):copy(self:forward(chunk))
  end
  self.cache = nil
  return out
end

--- Options of Base:loss and their defaults.
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
function Base:loss(Y, labels, opts)
  local o = util.options(opts, M.loss_defaults, "similarity.loss")
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

return M
