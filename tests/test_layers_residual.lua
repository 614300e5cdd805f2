-- residual: y = body(x) + shortcut(x) (an empty shortcut: the identity),
-- blocks nested; hand-computed values, finite differences with batch norm
-- inside in train and eval mode, the arch, PyTorch's names and printing,
-- errors naming the nested layer, and agreement with PyTorch.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn

local function linear_with(w, b)
  local m = nn.linear(#w[1], #w)
  local p = m:parameters()
  p[1]:copy(lps.tensor(w))
  p[2]:copy(lps.tensor(b))
  return m
end

local randomize = T.randomize_state

-- A downsampling block of a ResNet: conv-bn-relu-conv-bn against a strided
-- 1x1 conv and batch norm, then a block with the identity shortcut.
local BLOCKS = [[
[{"type":"input","shape":[2,6,6]},
 {"type":"conv2d","in":2,"out":3,"kernel":3,"padding":1},
 {"type":"residual","body":[{"type":"conv2d","in":3,"out":4,"kernel":3,"stride":2,"padding":1},
   {"type":"batchnorm2d","features":4},{"type":"relu"},
   {"type":"conv2d","in":4,"out":4,"kernel":3,"padding":1},{"type":"batchnorm2d","features":4}],
  "shortcut":[{"type":"conv2d","in":3,"out":4,"kernel":1,"stride":2},{"type":"batchnorm2d","features":4}]},
 {"type":"relu"},
 {"type":"residual","body":[{"type":"conv2d","in":4,"out":4,"kernel":3,"padding":1},{"type":"batchnorm2d","features":4}],
  "shortcut":[]},
 {"type":"flatten"},{"type":"linear","in":36,"out":3}]
]]

TestResidual = {}

-- y = W1 x + b1 + x, and with a linear shortcut W1 x + b1 + W2 x + b2;
-- gx = W1^T gy (+ gy or W2^T gy), dW1 = gy^T x.
function TestResidual:test_hand_computed()
  local body = linear_with({{1, 2}, {0, -1}}, {0.5, 0})
  local r = nn.residual{body = body}
  local x = lps.tensor{{1, 1}, {2, -1}}
  lu.assertEquals(r:forward(x):totable(), {{4.5, 0}, {2.5, 0}})
  local gx = r:backward(x, lps.tensor{{1, 0}, {0, 1}})
  lu.assertEquals(gx:totable(), {{2, 2}, {0, 0}})
  local _, grads = r:parameters()
  lu.assertEquals(grads[1]:totable(), {{1, 1}, {2, -1}})
  lu.assertEquals(grads[2]:totable(), {1, 1})
  local r2 = nn.residual{body = linear_with({{1, 2}, {0, -1}}, {0.5, 0}),
    shortcut = linear_with({{3, 0}, {1, 1}}, {0, -2})}
  lu.assertEquals(r2:forward(x):totable(), {{3.5 + 3, -1 + 0}, {0.5 + 6, 1 - 1}})
  lu.assertEquals(r2:backward(x, lps.tensor{{1, 0}, {0, 1}}):totable(), {{4, 2}, {1, 0}})
  -- nested: body = residual{linear} then relu: y = relu(W x + b + x) + x
  local inner = nn.residual{body = linear_with({{1, 2}, {0, -1}}, {0.5, 0})}
  local outer = nn.residual{body = {inner, nn.relu()}}
  lu.assertEquals(outer:forward(x):totable(), {{5.5, 1}, {4.5, -1}})
  lu.assertEquals(outer:backward(x, lps.ones(2, 2)):totable(), {{3, 3}, {3, 3}})
end

-- A body ending in batch norm adds the shortcut (and the ReLU after the
-- block) in that layer's own pass (forward_add): the same bits as the
-- branches run alone and added, in train and eval mode.
function TestResidual:test_batchnorm_adds_the_shortcut()
  local g = lps.generator(31)
  local conv, bn = nn.conv2d(3, 4, 3, {padding = 1, bias = false, generator = g}), nn.batchnorm2d(4)
  local sconv, sbn = nn.conv2d(3, 4, 1, {bias = false, generator = g}), nn.batchnorm2d(4)
  local r = nn.residual{body = {conv, bn}, shortcut = {sconv, sbn}}
  local m = nn.sequential{r, nn.relu()}
  randomize(m, g)
  local x = lps.randn(3, 3, 5, 7, g)
  for _, mode in ipairs{"train", "eval"} do
    if mode == "eval" then m:evaluate() end
    local y, yr = m:forward(x), r:forward(x)
    local a, c = conv:forward(x), sconv:forward(x)
    local sum = bn:forward(a) + sbn:forward(c)
    lu.assertTrue(lps.allclose(yr, sum, 0, 0), mode .. " block")
    lu.assertTrue(lps.allclose(y, nn.relu():forward(sum), 0, 0), mode .. " block + relu")
    local gy = lps.randn(3, 4, 5, 7, g)
    m:zero_grad()
    local gx = r:backward(x, gy)
    local _, grads = m:parameters()
    local saved = {}
    for i, t in ipairs(grads) do saved[i] = t:clone() end
    m:zero_grad()
    local gx1 = conv:backward(x, bn:backward(a, gy)) + sconv:backward(x, sbn:backward(c, gy))
    lu.assertTrue(lps.allclose(gx, gx1, 0, 0), mode .. " input gradient")
    for i, t in ipairs(grads) do lu.assertTrue(lps.allclose(saved[i], t, 0, 0), mode .. " gradient " .. i) end
  end
end

-- Finite differences of every parameter and the input, train and eval mode
-- (tanh for relu: no kinks within the differences' steps).
function TestResidual:test_finite_differences()
  local g = lps.generator(2)
  local m = randomize(nn.from_arch((BLOCKS:gsub('"relu"', '"tanh"')), g), g)
  local x = lps.randn(3, 2, 6, 6, g)
  local R = lps.randn(3, 3, g)
  for _, mode in ipairs{"train", "eval"} do
    m:train(mode == "train")
    local function f() return (m:forward(x) * R):sum() end
    T.check_parameter_gradients(m, function() m:backward(x, R) end, f, {what = mode .. " "})
    m:zero_grad()
    T.assert_grad_close(m:backward(x, R), T.numgrad(f, x, 1e-2), 2e-2, mode .. " input")
  end
end

function TestResidual:test_arch_names_printing()
  local g = lps.generator(3)
  local m = nn.from_arch(BLOCKS, g)
  local list, json = m:arch()
  lu.assertEquals(list[2].type, "residual")
  lu.assertEquals(#list[2].body, 5)
  lu.assertEquals(list[2].shortcut[1], {type = "conv2d", ["in"] = 3, out = 4, kernel = 1, stride = 2, padding = 0})
  lu.assertEquals(list[4].shortcut, {})
  lu.assertStrContains(json, '"shortcut":[]}')
  lu.assertEquals(T.names(m:named_parameters()), {"0.weight", "0.bias", "1.body.0.weight", "1.body.0.bias",
    "1.body.1.weight", "1.body.1.bias", "1.body.3.weight", "1.body.3.bias", "1.body.4.weight", "1.body.4.bias",
    "1.shortcut.0.weight", "1.shortcut.0.bias", "1.shortcut.1.weight", "1.shortcut.1.bias",
    "3.body.0.weight", "3.body.0.bias", "3.body.1.weight", "3.body.1.bias", "5.weight", "5.bias"})
  lu.assertEquals(T.names(m:named_buffers()), {"1.body.1.running_mean", "1.body.1.running_var",
    "1.body.4.running_mean", "1.body.4.running_var", "1.shortcut.1.running_mean", "1.shortcut.1.running_var",
    "3.body.1.running_mean", "3.body.1.running_var"})
  T.assert_arch_rebuilds(m, lps.randn(2, 2, 6, 6, g), g)
  -- PyTorch's printing of a module with nn.Sequential attributes body and shortcut
  local r = nn.residual{body = {{type = "linear", ["in"] = 2, out = 2}, {type = "relu"}}, shortcut = {}}
  lu.assertEquals(tostring(r), table.concat({"Residual(", "  (body): Sequential(",
    "    (0): Linear(in_features=2, out_features=2)", "    (1): ReLU()", "  )",
    "  (shortcut): Sequential()", ")"}, "\n"))
  lu.assertStrContains(tostring(m), "  (3): Residual(\n    (body): Sequential(\n      (0): Conv2d(4, 4, kernel_size=3")
  lu.assertEquals(#r, 2)
  lu.assertEquals(r[1]:type(), "sequential")
  lu.assertEquals(#r[2], 0)
end

-- Existing modules as branches are shared (as sequential{...} shares
-- them): a leaf becomes a Sequential of one, a list of modules a Sequential.
function TestResidual:test_shared_modules()
  local g = lps.generator(4)
  local lin, bn = nn.linear(3, 3, g), nn.batchnorm1d(3)
  local body = nn.sequential{bn, lin}
  local r = nn.residual{body = body, shortcut = nil}
  local x = lps.randn(4, 3, g)
  r:eval()
  local y = r:forward(x)
  lin:parameters()[2]:add_(1) -- through the shared module
  lu.assertTrue(lps.allclose(r:forward(x), y + 1, 1e-6, 1e-6))
  lu.assertEquals(T.names(r:named_parameters()), {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"})
  lu.assertEquals(r:named_buffers()[1].name, "body.0.running_mean")
  local leaf = nn.residual{body = nn.linear(3, 3, g), shortcut = {nn.linear(3, 3, g), nn.relu()}}
  lu.assertEquals(leaf:named_parameters()[1].name, "body.0.weight")
  lu.assertEquals(leaf:named_parameters()[3].name, "shortcut.0.weight")
  lu.assertEquals((leaf:arch())[1].shortcut, {{type = "linear", ["in"] = 3, out = 3}, {type = "relu"}})
  -- and in a model: its arch rebuilds it
  local m = nn.sequential{nn.linear(2, 3, g), r}
  lu.assertEquals(select(2, nn.from_arch((m:arch())):arch()), select(2, m:arch()))
end

function TestResidual:test_errors()
  T.assert_error_contains("from_arch: layer 2 (residual): its branches do not add: the body gives (5) but " ..
    "the shortcut (the identity) gives (4)", nn.from_arch,
    '[{"type":"linear","in":3,"out":4},{"type":"residual","body":[{"type":"linear","in":4,"out":5}],"shortcut":[]}]')
  T.assert_error_contains("layer 1 (residual): its branches do not add: the body gives (8x?x?) but the shortcut gives (4x?x?)",
    nn.from_arch, '[{"type":"residual","body":[{"type":"conv2d","in":4,"out":8,"kernel":3}],' ..
    '"shortcut":[{"type":"conv2d","in":4,"out":4,"kernel":1}]}]')
  -- nested layers are named by their path
  T.assert_error_contains('layer 2 (residual) body layer 1 (residual) shortcut layer 1 (linear): "in" is 5 but layer 1 (linear) gives 4 features',
    nn.from_arch, '[{"type":"linear","in":3,"out":4},{"type":"residual","body":[{"type":"residual",' ..
    '"body":[{"type":"relu"}],"shortcut":[{"type":"linear","in":5,"out":4}]}],"shortcut":[]}]')
  T.assert_error_contains('layer 1 (residual) body layer 2 (batchnorm2d): "features" is 3 but layer 1 (residual) body layer 1 (conv2d) gives 8 channels',
    nn.from_arch, '[{"type":"residual","body":[{"type":"conv2d","in":8,"out":8,"kernel":1},{"type":"batchnorm2d","features":3}]}]')
  T.assert_error_contains('layer 1 (residual): "body" is missing', nn.from_arch, '[{"type":"residual","shortcut":[]}]')
  T.assert_error_contains('residual: "body" is missing', nn.residual, {shortcut = {}})
  T.assert_error_contains('unknown key "branch" (a residual takes body, shortcut)', nn.from_arch,
    '[{"type":"residual","body":[],"branch":[]}]')
  T.assert_error_contains("layer 1 (residual) body expected a JSON array of layers, got a number", nn.from_arch,
    '[{"type":"residual","body":3}]')
  -- shapes only an input tells: checked at forward time
  local r = nn.residual{body = {{type = "conv2d", ["in"] = 2, out = 2, kernel = 3}}}
  T.assert_error_contains("residual: its branches do not add for input (1x2x5x5): the body gives (1x2x3x3) but the " ..
    "shortcut (the identity) gives (1x2x5x5)", r.forward, r, lps.zeros(1, 2, 5, 5))
  T.assert_error_contains("residual body: sequential layer 1: conv2d(2 -> 2): \"in\" is 2 but its input (1x3x5x5) gives 3 channels",
    r.forward, r, lps.zeros(1, 3, 5, 5))
  -- a module may appear once
  local lin = nn.linear(2, 2)
  T.assert_error_contains("residual: body and shortcut share a layer", nn.residual, {body = lin, shortcut = {lin}})
  T.assert_error_contains("residual body: entry 2 is a number, expected a module", nn.residual, {body = {lin, 3}})
  T.assert_error_contains("residual: body: arch: layer 1 is a nested Sequential", nn.residual,
    {body = nn.sequential{nn.sequential{nn.relu()}}})
  -- buffers of the wrong shape inside a block
  local m = nn.from_arch(BLOCKS)
  local sd = {}
  for k, v in pairs(m:state_dict()) do sd[k] = v end
  sd["1.shortcut.1.running_mean"] = lps.zeros(3)
  T.assert_error_contains("load_named: layer 2 (residual) shortcut layer 2 (batchnorm2d): "
    .. "buffer '1.shortcut.1.running_mean' has shape (3), expected (4)", m.load_named, m, sd)
end

-- Training a residual CNN with batch norm from a seed: the same bits every run.
function TestResidual:test_train_deterministic()
  local g = lps.generator(5)
  local x, y = lps.randn(24, 2, 6, 6, g), {}
  for i = 1, 24 do y[i] = i % 3 + 1 end
  local state = T.assert_train_repeatable(BLOCKS, {x = x, y = y, epochs = 2, batch_size = 8,
    optimizer = function() return lps.optim.sgd{lr = 0.05, momentum = 0.9} end})
  lu.assertTrue((state["1.shortcut.1.running_var"] - 1):abs():max() > 0, "the running variance moved")
end

TestResidualTorch = {}

-- PyTorch's Residual module (scripts/torch_interop.py) built from the arch:
-- eval-mode outputs, a train-mode forward, and four SGD steps.
function TestResidualTorch:test_agrees_with_pytorch()
  local g = lps.generator(8)
  local m = randomize(nn.from_arch(BLOCKS, g), g)
  local nested = randomize(nn.from_arch('[{"type":"linear","in":4,"out":4},{"type":"residual","body":[' ..
    '{"type":"residual","body":[{"type":"linear","in":4,"out":4},{"type":"tanh"}],"shortcut":[]},' ..
    '{"type":"batchnorm1d","features":4},{"type":"dropout","p":0.2}],"shortcut":[{"type":"linear","in":4,"out":4}]}]', g), g)
  local fx, fy = lps.randn(32, 2, 6, 6, g), {}
  for i = 1, 32 do fy[i] = i % 3 + 1 end
  T.assert_torch_agrees{
    {name = "two residual blocks with batch norm", model = m, x = lps.randn(5, 2, 6, 6, g), train = true,
      fit = {x = fx, y = fy, lr = 0.05, batch_size = 8, steps = 4}},
    {name = "nested blocks with dropout", model = nested, x = lps.randn(6, 4, g), train = true}}
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
