--- lualps.optim: optimizers (PyTorch's update rules) and learning-rate schedules.
--   local opt = lps.optim.adam{lr = 1e-3}
--   opt:step(params, grads)            -- or pass it to lps.train
--   lps.train(model, data, {optimizer = opt, schedule = lps.optim.cosine{t_max = 10}})
local C = require("lualps.core")._nn

local optim = {}

local function check_keys(opts, allowed, what)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(what .. ": expected an option table", 3) end
  for k in pairs(opts) do
    if not allowed[k] then error(("%s: unknown option '%s'"):format(what, tostring(k)), 3) end
  end
  return opts
end

--- SGD: lr (0.01), momentum (0), dampening (0), nesterov (false), weight_decay (0).
function optim.sgd(opts)
  opts = check_keys(opts, {lr = 1, momentum = 1, dampening = 1, nesterov = 1, weight_decay = 1}, "sgd")
  return C.optimizer{kind = "sgd", lr = opts.lr or 0.01, momentum = opts.momentum or 0,
    dampening = opts.dampening or 0, nesterov = opts.nesterov or false,
    weight_decay = opts.weight_decay or 0}
end

local adam_keys = {lr = 1, betas = 1, eps = 1, weight_decay = 1, decoupled = 1}

local function adam(opts, decoupled, wd, what)
  opts = check_keys(opts, adam_keys, what)
  local betas = opts.betas or {0.9, 0.999}
  if type(betas) ~= "table" or #betas ~= 2 then error(what .. ": betas should be {beta1, beta2}", 3) end
  local dec = opts.decoupled
  if dec == nil then dec = decoupled end
  return C.optimizer{kind = "adam", lr = opts.lr or 1e-3, beta1 = betas[1], beta2 = betas[2],
    eps = opts.eps or 1e-8, weight_decay = opts.weight_decay or wd, decoupled = dec}
end

--- Adam: lr (1e-3), betas ({0.9, 0.999}), eps (1e-8), weight_decay (0, added to
-- the gradient), decoupled (false; true applies AdamW's decay to the weights).
function optim.adam(opts) return adam(opts, false, 0, "adam") end
--- AdamW: adam with decoupled weight decay, weight_decay 0.01 by default.
function optim.adamw(opts) return adam(opts, true, 0.01, "adamw") end

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

--- Multiply the rate by gamma (0.1) every step_size epochs (torch StepLR).
-- per_batch = true moves the schedule along within epochs too.
function optim.step_lr(opts)
  opts = check_keys(opts, {step_size = 1, gamma = 1, per_batch = 1}, "step_lr")
  return schedule{kind = "step", step_size = opts.step_size or 1, gamma = opts.gamma or 0.1,
    per_batch = opts.per_batch or false}
end

--- Cosine annealing from the base rate to eta_min (0) over t_max epochs
-- (torch CosineAnnealingLR; constant at eta_min after t_max).
function optim.cosine(opts)
  opts = check_keys(opts, {t_max = 1, eta_min = 1, per_batch = 1}, "cosine")
  if not opts.t_max then error("cosine: t_max (epochs) is required", 2) end
  return schedule{kind = "cosine", t_max = opts.t_max, eta_min = opts.eta_min or 0,
    per_batch = opts.per_batch or false}
end

return optim
