--- lualps.optim: optimizers (PyTorch's update rules) and learning-rate schedules.
--   local opt = lps.optim.adam{lr = 1e-3}
--   opt:step(params, grads)            -- or pass it to lps.train
--   lps.train(model, data, {optimizer = opt, schedule = lps.optim.cosine{t_max = 10}})
local util = require "lualps.util"
local C = require("lualps.core")._nn

local optim = {}

--- Options of optim.sgd and their defaults.
optim.sgd_defaults = {lr = 0.01, momentum = 0, dampening = 0, nesterov = false, weight_decay = 0}

--- SGD (torch.optim.SGD); opts: optim.sgd_defaults.
function optim.sgd(opts)
  local o = util.options(opts, optim.sgd_defaults, "sgd")
  return C.optimizer{kind = "sgd", lr = o.lr, momentum = o.momentum, dampening = o.dampening,
    nesterov = o.nesterov, weight_decay = o.weight_decay}
end

--- Options of optim.adam and their defaults.
optim.adam_defaults = {
  lr = 1e-3,
  betas = {0.9, 0.999},
  eps = 1e-8,
  weight_decay = 0,   -- added to the gradient
  decoupled = false,  -- true applies AdamW's decay to the weights
}
--- Options of optim.adamw and their defaults: adam's with decoupled weight
-- decay, 0.01.
optim.adamw_defaults = util.options({weight_decay = 0.01, decoupled = true}, optim.adam_defaults, "adamw")

local function adam(o, what)
  local betas = o.betas
  if type(betas) ~= "table" or #betas ~= 2 then error(what .. ": betas should be {beta1, beta2}", 2) end -- (a tail call)
  return C.optimizer{kind = "adam", lr = o.lr, beta1 = betas[1], beta2 = betas[2], eps = o.eps,
    weight_decay = o.weight_decay, decoupled = o.decoupled}
end

--- Adam (torch.optim.Adam); opts: optim.adam_defaults.
function optim.adam(opts) return adam(util.options(opts, optim.adam_defaults, "adam"), "adam") end
--- AdamW (torch.optim.AdamW): adam with decoupled weight decay; opts: optim.adamw_defaults.
function optim.adamw(opts) return adam(util.options(opts, optim.adamw_defaults, "adamw"), "adamw") end

local Schedule = {}
Schedule.__index = Schedule

--- sched:lr(base_lr, t): the learning rate at epoch t (0-based, may be fractional).
function Schedule:lr(base, t) return C.schedule_lr(self, base, t) end

function Schedule:__tostring()
  if self.kind == "step" then
    return ("StepLR(step_size=%g, gamma=%g%s)"):format(self.step_size, self.gamma,
      self.per_batch and ", per_batch" or "")
  end
  return ("CosineAnnealingLR(t_max=%g, eta_min=%g%s)"):format(self.t_max, self.eta_min,
    self.per_batch and ", per_batch" or "")
end

local function schedule(s)
  setmetatable(s, Schedule)
  C.schedule_lr(s, 1, 0) -- validates
  return s
end

--- Options of optim.step_lr and their defaults.
optim.step_lr_defaults = {
  step_size = 1,      -- epochs between decays
  gamma = 0.1,        -- the factor of each decay
  per_batch = false,  -- true moves the schedule along within epochs too
}

--- Multiply the rate by gamma every step_size epochs (torch StepLR); opts:
-- optim.step_lr_defaults.
function optim.step_lr(opts)
  local o = util.options(opts, optim.step_lr_defaults, "step_lr")
  return schedule{kind = "step", step_size = o.step_size, gamma = o.gamma, per_batch = o.per_batch}
end

--- Options of optim.cosine and their defaults; t_max (epochs) is required.
optim.cosine_defaults = {
  eta_min = 0,        -- the rate reached at t_max
  per_batch = false,  -- true moves the schedule along within epochs too
}

--- Cosine annealing from the base rate to eta_min over t_max epochs (torch
-- CosineAnnealingLR; constant at eta_min after t_max); opts:
-- optim.cosine_defaults and t_max.
function optim.cosine(opts)
  local o = util.options(opts, optim.cosine_defaults, "cosine", {"t_max"})
  if not o.t_max then error("cosine: t_max (epochs) is required", 2) end
  return schedule{kind = "cosine", t_max = o.t_max, eta_min = o.eta_min, per_batch = o.per_batch}
end

return optim
