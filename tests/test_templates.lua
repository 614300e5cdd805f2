-- The class templates in one C call (csrc/lua/lua_templates.c, called by
-- lualps/similarity/templates.lua) against the Lua steps it replaced,
-- kept here as the reference: the same bits for MLPs with and without an
-- arch, CNNs with pooling, batch norm (buffers) and one class, a module
-- given as {module = m}, with and without the extra columns; and its
-- errors for weights that do not fit the arch.
local lu = require "luaunit"
local helpers = require "tests.helpers"
local lps = require "lualps"
local core = require "lualps.core"
local templates = require "lualps.similarity.templates"
local nn = lps.nn

local g = lps.generator(5)

-- The Lua compute of templates.lua before the C call (a7c99c6).
local function reference(self, model)
  local o = self.opts
  local m, release = templates.function_of(model)
  local side = o.input_shape[#o.input_shape]
  local tpool = nn.layer("avgpool2d", {kernel = o.template_pool})
  local R, P = #o.noise_ranges, o.noise
  local x = self.noise_x
  local first = model[1] or m:named_parameters()[1].tensor
  if first:dim() == 4 then x = x:reshape(R * P, table.unpack(o.input_shape)) end
  local k = m:output_shape{1, table.unpack(x:shape(), 2)}[2]
  local kb = math.max(k - 1, 1)
  local gy = core.full(kb * R * P, k, -1 / k)
  for c = 1, kb do
    for q = (c - 1) * R * P + 1, c * R * P do gy:set(q, c, 1 - 1 / k) end
  end
  local logits, gx = m:input_gradients(x, gy, P)
  if k > 1 then
    local d_in = gx:numel() // (kb * R)
    local all = core.zeros(k * R, d_in)
    all:rows(1, kb * R):copy(gx)
    all:rows(kb * R + 1, k * R):copy(gx:reshape(kb, R * d_in):sum(1)):mul_(-1)
    gx = all
  end
  release()
  local T = tpool:forward(gx:reshape(k * R, 1, side, side)):reshape(k, R * self.seg)
  local norms = (T * T):sum(2):sqrt()
  local nmax = math.max(norms:max(), 1e-12)
  for c = 1, k do T[c]:div_(math.max(norms[c], 1e-12)) end
  local mean_logit = logits:mean(1)
  mean_logit:sub_(mean_logit:mean())
  if o.template_extras then
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
  return T, norms:div_(nmax), mean_logit
end

local function weights(m)
  local w = {}
  for i, e in ipairs(m:named_parameters()) do w[i] = e.tensor end
  local b = {}
  for i, e in ipairs(m:named_buffers()) do b[i] = e.tensor end
  if #b > 0 then w.buffers = b end
  w.arch = m:arch()
  return w
end

local function models()
  local cnn = nn.sequential{nn.conv2d(1, 4, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2),
    nn.conv2d(4, 5, 5, {stride = 2, padding = 2, generator = g}), nn.relu(), nn.flatten(), nn.linear(5 * 7 * 7, 4, g)}
  local bn = nn.from_arch({{type = "conv2d", ["in"] = 1, out = 6, kernel = 5, stride = 2, padding = 2},
    {type = "batchnorm2d", features = 6}, {type = "relu"}, {type = "flatten"}, {type = "linear", ["in"] = 6 * 14 * 14,
    out = 3}}, g)
  -- running statistics other than 0 and 1
  for _, e in ipairs(bn:named_buffers()) do
    if e.tensor:numel() > 1 then e.tensor:copy(lps.rand(e.tensor:numel(), g):add_(0.5)) end
  end
  local one = nn.sequential{nn.conv2d(1, 3, 3, {stride = 2, padding = 1, generator = g}), nn.relu(), nn.flatten(),
    nn.linear(3 * 14 * 14, 1, g)}
  local mlp = nn.mlp{784, 12, 7, 5, generator = g}
  local plain = {} -- an MLP's weight list without an arch
  for i, e in ipairs(mlp:named_parameters()) do plain[i] = e.tensor:clone() end
  return {cnn = cnn, bn = bn, one = one, mlp = mlp}, plain
end

TestTemplatesC = {}

function TestTemplatesC:test_same_bits_as_the_lua_steps()
  local mods, plain = models()
  for _, extras in ipairs{true, false} do
    local net = lps.similarity.network{families = {"mlp", "cnn"}, noise = 3, template_pool = 4,
      template_extras = extras, noise_ranges = {{0, 0.3}, {0.6, 1}, {0.2, 0.5}}}
    net:templates(plain) -- draws net.noise_x
    local cases = {plain = plain}
    for name, m in pairs(mods) do
      cases[name] = weights(m)
      cases[name .. " (module)"] = {module = m}
    end
    -- with the checked arch's JSON, as similarity.record gives it
    local w = weights(mods.cnn)
    local _, json = lps.arch.check(w.arch)
    w.arch_checked = {arch = w.arch, json = json}
    cases["cnn (json)"] = w
    for name, model in pairs(cases) do
      local T, n, l = net:templates(model)
      local T0, n0, l0 = reference(net, model)
      local what = ("%s, extras %s"):format(name, tostring(extras))
      helpers.assert_same_bits(T, T0, what .. ": templates")
      helpers.assert_same_bits(n, n0, what .. ": norms")
      helpers.assert_same_bits(l, l0, what .. ": logits")
    end
  end
  -- a user's module gets its own flags back
  lu.assertTrue(mods.cnn:is_training())
end

-- The templates and a weight list's function (templates.function_of, as
-- probe matching reads it) copy the weights by one C call: the same checks.
function TestTemplatesC:test_weights_that_do_not_fit()
  local net = lps.similarity.network{families = {"cnn"}, noise = 2}
  local mods = models()
  local function refused(msg, w)
    lu.assertErrorMsgContains(msg, net.templates, net, w)
    lu.assertErrorMsgContains(msg, templates.function_of, w)
  end
  local w = weights(mods.cnn)
  w[#w] = nil
  refused("the model's arch has 6 parameter tensors, the model 5", w)
  w = weights(mods.cnn)
  w[2] = lps.zeros(3)
  refused("parameter tensor 2 (3) does not fit its arch's (4)", w)
  w = weights(mods.cnn)
  w[1] = lps.zeros(2, 2)
  refused("parameter tensor 1 (2x2) does not fit its arch's (4x1x3x3)", w)
  w = weights(mods.bn)
  w.buffers[1] = lps.zeros(2)
  refused("buffer tensor 1 (2) does not fit its arch's (6)", w)
  w = weights(mods.bn)
  w.buffers = nil
  refused("the model's arch has 2 buffer tensors, the model 0", w)
end

-- A user's module that the call refuses gets its flags back; the call's
-- own checks name what is wrong instead of reading past what it was given.
function TestTemplatesC:test_refusals()
  local net = lps.similarity.network{families = {"mlp"}, noise = 2}
  local m = nn.mlp{100, 5, 3, generator = g} -- it takes 100 features, the templates give 784
  lu.assertTrue(m:is_training())
  lu.assertFalse(pcall(net.templates, net, {module = m}))
  lu.assertTrue(m:is_training())
  local K = core._lps
  local pool = nn.layer("avgpool2d", {kernel = 2})
  local lin = nn.layer("linear", {["in"] = 4, out = 3})
  lin:freeze()
  lin:evaluate()
  local x = lps.rand(4, 4, g)
  lu.assertErrorMsgContains("the inputs must be side x side images", K.class_templates, lin, nil, nil, x, 1, pool, false,
    4294967296)
  lu.assertErrorMsgContains("x has no rows", K.class_templates, lin, nil, nil, lps.zeros(0, 4), 1, pool, false, 2)
  lu.assertErrorMsgContains("P must divide x's rows", K.class_templates, lin, nil, nil, x, 3, pool, false, 2)
  local relu = nn.relu()
  relu:freeze()
  relu:evaluate()
  lu.assertErrorMsgContains("must give 4 x k class scores, got 1 dims", K.class_templates, relu, nil, nil,
    lps.rand(4, g), 1, pool, false, 1)
  local open = nn.layer("linear", {["in"] = 4, out = 3}) -- not frozen: it would take parameter gradients
  lu.assertErrorMsgContains("the module must be frozen and in evaluation mode", K.class_templates, open, nil, nil, x, 1,
    pool, false, 2)
end

-- The modules' activations and workspaces come from blocks the core keeps
-- for reuse (csrc/core/tensor.c): templates from blocks that held NaN are
-- the same bits as from fresh ones (nothing reads a block before writing it).
function TestTemplatesC:test_reused_blocks_hold_no_state()
  local mods = models()
  local net = lps.similarity.network{families = {"mlp", "cnn"}, noise = 3}
  local function poison()
    core.release_memory()
    local held, n = {}, 16384 -- 64 KiB up to about 4 MiB, 1.3 times apart
    while n < 2 ^ 20 do
      held[#held + 1] = core.full(n, 0 / 0)
      n = math.floor(n * 1.3)
    end
    held = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    lu.assertTrue(core.cached_memory() >= 15)
  end
  for name, m in pairs(mods) do
    local w = weights(m)
    core.release_memory()
    local T0, n0, l0 = net:templates(w)
    poison()
    local T, n, l = net:templates(w)
    helpers.assert_same_bits(T, T0, name .. ": templates")
    helpers.assert_same_bits(n, n0, name .. ": norms")
    helpers.assert_same_bits(l, l0, name .. ": logits")
  end
  core.release_memory()
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
