--- lualps.similarity.head: a learned head on fixed per-model features (the
-- baselines' "stats + head" and the Gram map): the same projection, L2
-- normalization, classifier and losses as LPS (lualps.similarity.base),
-- over a feature vector instead of the unit sets. Trains with
-- train_network like a network; a "model" is a 1-D feature tensor.
local core = require "lualps.core"
local util = require "lualps.util"
local base = require "lualps.similarity.base"
local K = core._lps

local M = {}

local Head = base.class()
M.Head = Head

--- Options of lps.similarity.feature_head and their defaults; in_dim (the
-- number of features) is required.
M.defaults = {
  embed = 64,         -- embedding size
  classes = 0,        -- classes of the cross-entropy head (0: none)
  cosine_head = true, -- classifier rows L2-normalized (cosine softmax)
  scale = 16,         -- logit scale of the classifier
  seed = 1,           -- initialization
}

--- lps.similarity.feature_head{in_dim =, ...}: a new head; opts: M.defaults.
function M.feature_head(opts)
  local o = util.options(opts, M.defaults, "similarity.feature_head", {"in_dim"})
  base.check_int(o.in_dim, 1, "in_dim")
  base.check_int(o.embed, 1, "embed")
  base.check_int(o.classes, 0, "classes")
  local self = setmetatable({opts = o, names = {}, P = {}, G = {}}, Head)
  base.add_embedding_layers(base.param_adder(self, o.seed), o.in_dim, o)
  return self
end

function Head:__tostring()
  return ("lualps.similarity feature head (%d features -> %d, %d classes)"):format(self.opts.in_dim,
    self.opts.embed, self.opts.classes)
end

function Head:prepare(x)
  if not core.is_tensor(x) or x:numel() ~= self.opts.in_dim then
    error(("feature head: expected a feature vector of %d values"):format(self.opts.in_dim), 2)
  end
  return x
end

function Head:forward(rows)
  if type(rows) ~= "table" then error(("feature head: forward needs a list of feature vectors, got %s"):format(type(rows)), 2) end
  local F = core.zeros(#rows, self.opts.in_dim)
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

return M
