--- lualps.similarity.templates: the "templates" slot of the
-- any-architecture network (lualps.similarity.archnet) and of template
-- matching (lps.benchmark.methods.template_matching).
--
-- The slot reads what the weights compute rather than how they
-- are laid out: for each output class c, the gradient of its logit (minus
-- the mean logit) with respect to the input, averaged over `noise` fixed
-- uniform-noise images (no data: the images are drawn from a seed), average
-- pooled template_pool x template_pool. Every architecture gives its
-- classes as templates in the same pixel space, so one shared encoder
-- reads MLPs and CNNs alike; a function of the network, it is exactly
-- invariant to permutations and rescalings (up to rounding).
local core = require "lualps.core"
local nn = require "lualps.nn"
local K = core._lps

local M = {}

-- (internal) Check that model is what these functions read: a weight list {W1, b1,
-- ...} (its first entry a tensor) or {module = m} (an lps.nn module); else
-- an error naming operation `what`, raised `level` calls above the caller
-- (default 1: the caller's caller).
function M.check_model(model, what, level)
  local mod = type(model) == "table" and model.module
  local ok = type(model) == "table" and (mod == nil or (type(mod) == "userdata"
    and (getmetatable(mod) or {}).__name == "lualps.Module")) and (core.is_tensor(model[1]) or mod ~= nil)
  if not ok then
    error(("%s: expected a model (a weight list {W1, b1, ...} or {module = m}, an lps.nn module), got %s")
      :format(what, type(model) == "table" and "a table without either" or type(model)), (level or 1) + 2)
  end
end

-- The arch a module of a weight list is built from: the checked arch's
-- JSON when similarity.record gave it for this arch (a text parses
-- faster), else its arch list, or, without one, an MLP of its shapes.
-- (level: of the error, for the caller's caller)
local function arch_of(model, level)
  local checked = model.arch_checked
  if checked and model.arch and checked.arch == model.arch then return checked.json end
  if model.arch then return model.arch end
  if model[1]:dim() == 4 then
    error("similarity: a CNN's function needs its arch (strides, padding, pooling): give the lps.nn module, "
      .. "or a weight list with an `arch` field", level + 1)
  end
  local list = {}
  for l = 1, #model // 2 do
    local W = model[2 * l - 1]
    if not (core.is_tensor(W) and W:dim() == 2) then
      error(("similarity: a weight list without an arch holds 2-D weights {W1, b1, W2, b2, ...}; entry %d is %s")
        :format(2 * l - 1, core.is_tensor(W) and table.concat(W:shape(), "x") or type(W)), level + 1)
    end
    list[#list + 1] = {type = "linear", ["in"] = W:size(2), out = W:size(1)}
    if l < #model // 2 then list[#list + 1] = {type = "relu"} end
  end
  return list
end

-- A module computing the model's function: the model itself, or one built
-- from its arch (arch_of) with its parameters and buffers, copied in by
-- the C call that copies them for class_templates (the same checks).
local function module_of(model)
  if model.module then return model.module, false end
  local m = nn.from_arch(arch_of(model, 3), false) -- zeros: the model's weights are copied in
  K.load_weights(m, model, model.buffers or {})
  return m, true
end

--- The module computing a model's function, frozen in evaluation mode
-- (batch norm by its running statistics, no dropout: the function a user
-- runs), and a function that gives it back: a module built here has its
-- layers' C workspaces freed, a user's module its training state restored.
function M.function_of(model)
  M.check_model(model, "function_of")
  local m, own = module_of(model)
  local was_training = m:is_training()
  local was_batch, was_prior = m:uses_batch_stats(), m:stat_prior_weight()
  m:freeze()
  m:evaluate()
  if was_batch then m:batch_stats(false) end -- the running statistics, whatever the user set
  if was_prior ~= 0 then m:stat_prior(0) end
  return m, function()
    if own then
      local function close(mod)
        for _, kid in ipairs(mod:children()) do close(kid) end
        mod:close()
      end
      close(m)
    else
      m:freeze(false)
      m:train(was_training)
      m:batch_stats(was_batch)
      m:stat_prior(was_prior)
    end
  end
end

-- The class templates of a model for network `self` (its options; it
-- caches the noise images and the pooling there): k x tdim rows (input
-- gradients of each class's logit minus the mean logit, averaged over the
-- noise images, pooled, L2-normalized), their norms and the mean centred
-- logits. One C call (csrc/lua/lua_templates.c) builds a weight list's
-- module, takes the gradients and pools: one forward, then a backward per
-- class c of d(logit_c - mean logit), each range's P gradients averaged
-- (a first conv or linear layer maps their mean, not each); the directions
-- e_c - 1/k sum to zero, and so do their gradients: the last class's is
-- minus the sum of the others'.
function M.compute(self, model)
  M.check_model(model, "templates") -- (net:templates' tail call: its caller's line)
  local o = self.opts
  self.tpool = self.tpool or nn.layer("avgpool2d", {kernel = o.template_pool}) -- q x q block means
  local R, P, d = #o.noise_ranges, o.noise, o.input_dim
  local side = o.input_shape[#o.input_shape]
  if not self.noise_x then -- the R ranges' noise images, one batch
    self.noise_x = core.zeros(R * P, d)
    for r, range in ipairs(o.noise_ranges) do
      self.noise_x:rows((r - 1) * P + 1, r * P):copy(
        core.rand(P, d, core.generator(1906 + r)):mul_(range[2] - range[1]):add_(range[1]))
    end
  end
  local first = core.is_tensor(model[1]) and model[1] -- a weight list, or {module = m}
  if not first then
    local p = model.module:named_parameters()[1]
    if not p then error("templates: the model's module has no parameters", 2) end
    first = p.tensor
  end
  local x = self.noise_x
  if first:dim() == 4 then -- images in
    self.noise_img = self.noise_img or x:reshape(R * P, table.unpack(o.input_shape))
    x = self.noise_img
  end
  local extras = o.template_extras -- columns after the template: one-hot class count, centred logit per range
  if not model.module then
    return K.class_templates(arch_of(model, 2), model, model.buffers or {}, x, P, self.tpool, extras, side)
  end
  local m, release = M.function_of(model) -- a user's module: its flags given back after, error or not
  local ok, T, norms, mean_logit = pcall(K.class_templates, m, nil, nil, x, P, self.tpool, extras, side)
  release()
  if not ok then error(T, 0) end
  -- features: the template, its norm relative to the model's largest, the centred logit
  return T, norms, mean_logit
end

return M
