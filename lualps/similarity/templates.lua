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

local M = {}

-- A module computing the model's function: the model itself, or one built
-- from its arch (or, without one, an MLP of its shapes) with its parameters
-- and buffers.
local function module_of(model)
  if model.module then return model.module, false end
  local list = model.arch
  if not list and model[1]:dim() == 4 then
    error("similarity: a CNN's function needs its arch (strides, padding, pooling): give the lps.nn module, "
      .. "or a weight list with an `arch` field", 4)
  end
  if not list then
    list = {}
    for l = 1, #model // 2 do
      local W = model[2 * l - 1]
      list[#list + 1] = {type = "linear", ["in"] = W:size(2), out = W:size(1)}
      if l < #model // 2 then list[#list + 1] = {type = "relu"} end
    end
  end
  -- zeros: the model's weights are copied in; from the checked arch's JSON
  -- when similarity.record gave it for this arch (a text parses faster)
  local checked = model.arch_checked
  local m = nn.from_arch(checked and model.arch and checked.arch == model.arch and checked.json or list, false)
  local function fill(dst, tensors, what)
    if #dst ~= #tensors then
      error(("similarity: the model's arch has %d %s tensors, the model %d"):format(#dst, what, #tensors), 5)
    end
    for i, t in ipairs(dst) do
      if t:numel() ~= tensors[i]:numel() then
        error(("similarity: %s tensor %d (%s) does not fit its arch's %s"):format(what, i,
          table.concat(tensors[i]:shape(), "x"), table.concat(t:shape(), "x")), 5)
      end
      t:copy(tensors[i])
    end
  end
  fill((m:parameters()), model, "parameter") -- the order of named_parameters, without the names
  local buffers = {}
  for i, e in ipairs(m:named_buffers()) do buffers[i] = e.tensor end
  fill(buffers, model.buffers or {}, "buffer")
  return m, true
end

--- The module computing a model's function, frozen in evaluation mode
-- (batch norm by its running statistics, no dropout: the function a user
-- runs), and a function that gives it back: a module built here has its
-- layers' C workspaces freed, a user's module its training state restored.
function M.function_of(model)
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
-- logits.
function M.compute(self, model)
  local o = self.opts
  local m, release = M.function_of(model) -- input gradients only
  local side = o.input_shape[#o.input_shape]
  self.tpool = self.tpool or nn.layer("avgpool2d", {kernel = o.template_pool}) -- q x q block means
  local R, P, d = #o.noise_ranges, o.noise, o.input_dim
  if not self.noise_x then -- the R ranges' noise images, one batch
    self.noise_x = core.zeros(R * P, d)
    for r, range in ipairs(o.noise_ranges) do
      self.noise_x:rows((r - 1) * P + 1, r * P):copy(
        core.rand(P, d, core.generator(1906 + r)):mul_(range[2] - range[1]):add_(range[1]))
    end
  end
  local x = self.noise_x
  local first = model[1] or m:named_parameters()[1].tensor -- a weight list, or {module = m}
  if first:dim() == 4 then x = x:reshape(R * P, table.unpack(o.input_shape)) end -- images in
  local k = m:output_shape{1, table.unpack(x:shape(), 2)}[2] -- the classes: the output's width
  -- One forward, then a backward per class c of d(logit_c - mean logit),
  -- each range's P gradients averaged in C (a first conv or linear layer
  -- maps their mean, not each). The directions e_c - 1/k sum to zero, and
  -- so do their gradients: the last class's is minus the sum of the others'.
  local kb = math.max(k - 1, 1)
  self.gy_of = self.gy_of or {} -- by class count (read only by input_gradients)
  local gy = self.gy_of[k]
  if not gy then
    gy = core.full(kb * R * P, k, -1 / k)
    for c = 1, kb do
      for q = (c - 1) * R * P + 1, c * R * P do gy:set(q, c, 1 - 1 / k) end
    end
    self.gy_of[k] = gy
  end
  local logits, gx = m:input_gradients(x, gy, P) -- gx: (class, range) rows
  if k > 1 then
    local d_in = gx:numel() // (kb * R)
    local all = core.zeros(k * R, d_in)
    all:rows(1, kb * R):copy(gx)
    all:rows(kb * R + 1, k * R):copy(gx:reshape(kb, R * d_in):sum(1)):mul_(-1)
    gx = all
  end
  release()
  local T = self.tpool:forward(gx:reshape(k * R, 1, side, side)):reshape(k, R * self.seg)
  local norms = (T * T):sum(2):sqrt()
  local nmax = math.max(norms:max(), 1e-12)
  for c = 1, k do T[c]:div_(math.max(norms[c], 1e-12)) end
  local mean_logit = logits:mean(1)
  mean_logit:sub_(mean_logit:mean())
  if o.template_extras then -- columns after the template: one-hot class count, centred logit per range
    local w = R * self.seg
    local padded = core.zeros(k, w + 8 + R)
    for c = 1, k do padded[c]:rows(1, w):copy(T[c]) end
    T = padded
    for c = 1, k do T:set(c, w + math.min(k, 8), 1) end
    for r = 1, R do
      local lr = logits:rows((r - 1) * P + 1, r * P):mean(1)
      lr:sub_(lr:mean())
      for c = 1, k do T:set(c, w + 8 + r, lr[c]) end
    end
  end
  -- features: the template, its norm relative to the model's largest, the centred logit
  return T, norms:div_(nmax), mean_logit
end

return M
