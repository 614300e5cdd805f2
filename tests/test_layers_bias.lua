-- conv2d and linear with "bias": false (PyTorch's bias=False): no bias
-- parameter, the same outputs and gradients as a zero bias on every kernel
-- path, finite differences, the arch (the key written only when false),
-- printing, errors; and conv2d geometries PyTorch accepts that the other
-- tests leave out (padding beyond the kernel, stride beyond it, 1x1
-- kernels with padding, a kernel as large as the padded input).
-- Agreement with PyTorch: tests/test_layers_torch.lua.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn
local st = lps.safetensors

local conv, linear = T.conv2d, T.linear

-- d/dx and d/dparams of sum(m(x) * R) against central differences.
local function gradcheck(m, x, what)
  local R = lps.randn(m:forward(x):shape(), lps.generator(99))
  local function f() return (m:forward(x) * R):sum() end
  local gx
  T.check_parameter_gradients(m, function() m:forward(x); gx = m:backward(x, R) end, f, {what = what .. " "})
  T.assert_grad_close(gx, T.numgrad(f, x), 1e-2, what .. " d/dinput")
end

TestNoBias = {}

function TestNoBias:test_parameters_and_names()
  local g = lps.generator(1)
  local m = nn.sequential{conv(1, 2, 3, {bias = false, generator = g}), nn.relu(), nn.flatten(),
    linear(8, 3, {bias = false, generator = g}), nn.relu(), linear(3, 2, {bias = true, generator = g})}
  lu.assertEquals(T.names(m:named_parameters()), {"0.weight", "3.weight", "5.weight", "5.bias"})
  local sd = m:state_dict()
  lu.assertNil(sd["0.bias"])
  lu.assertEquals(sd["0.weight"]:shape(), {2, 1, 3, 3})
  lu.assertEquals(#m:parameters(), 4)
  -- PyTorch's initialization: the weight alone, uniform in +-1/sqrt(fan_in)
  local w = nn.layer("linear", {["in"] = 400, out = 50, bias = false}):parameters()[1]
  lu.assertTrue(w:abs():max() <= 1 / 20)
  lu.assertTrue(w:abs():max() > 0.9 / 20)
  -- a bias is refused by name when loading
  T.assert_error_contains("unexpected parameter '0.bias'", m.load_named, m,
    {["0.weight"] = sd["0.weight"], ["0.bias"] = lps.zeros(2), ["3.weight"] = sd["3.weight"],
      ["5.weight"] = sd["5.weight"], ["5.bias"] = sd["5.bias"]})
end

function TestNoBias:test_same_as_a_zero_bias_on_every_path()
  -- bias=false runs the kernels of bias=true with zeros added: the same bits,
  -- forward and backward, on every convolution path and thread count
  local threads = lps.get_num_threads()
  local g = lps.generator(2)
  -- direct (cin k k <= 9), Winograd (3x3, stride 1, cin >= 4), im2col + GEMM,
  -- the 1x1 path without im2col; batch 32 on 16x16 is split over threads
  for _, c in ipairs{{1, 8, 3, 1, 1}, {4, 8, 3, 1, 1}, {3, 6, 5, 2, 2}, {6, 4, 1, 1, 0}} do
    local cin, cout, k, s, p = table.unpack(c)
    local what = ("conv2d(%d, %d, k=%d, s=%d, p=%d)"):format(cin, cout, k, s, p)
    local a = conv(cin, cout, k, {stride = s, padding = p, bias = false, generator = g})
    local b = conv(cin, cout, k, {stride = s, padding = p})
    b:parameters()[1]:copy(a:parameters()[1])
    b:parameters()[2]:zero_()
    local x = lps.randn(32, cin, 16, 16, g)
    local gy = lps.randn(a:forward(x):shape(), g)
    for _, nt in ipairs{1, 2} do
      lps.set_num_threads(nt)
      a:zero_grad()
      b:zero_grad()
      lu.assertTrue(lps.allclose(a:forward(x), b:forward(x), 0, 0), what .. " output, threads " .. nt)
      lu.assertTrue(lps.allclose(a:backward(x, gy), b:backward(x, gy), 0, 0), what .. " input gradient")
      local _, ga = a:parameters()
      local _, gb = b:parameters()
      lu.assertTrue(lps.allclose(ga[1], gb[1], 0, 0), what .. " weight gradient, threads " .. nt)
      -- the bias gradient of the other: the sum of the output gradient per channel
      local sums = gy:reshape(32, cout, gy:numel() // (32 * cout)):sum(3):sum(1)
      lu.assertTrue(lps.allclose(gb[2], sums, 1e-4, 1e-3), what .. " bias gradient")
    end
  end
  lps.set_num_threads(threads)
  local a, b = linear(5, 4, {bias = false, generator = g}), linear(5, 4, {bias = true, generator = g})
  b:parameters()[1]:copy(a:parameters()[1])
  b:parameters()[2]:zero_()
  local x, gy = lps.randn(7, 5, g), lps.randn(7, 4, g)
  lu.assertTrue(lps.allclose(a:forward(x), b:forward(x), 0, 0))
  lu.assertTrue(lps.allclose(a:backward(x, gy), b:backward(x, gy), 0, 0))
  lu.assertTrue(lps.allclose(a:parameters()[1], b:parameters()[1], 0, 0))
end

function TestNoBias:test_forward_hand_computed()
  local m = linear(2, 3, {bias = false})
  m:parameters()[1]:copy(lps.tensor{{1, 2}, {3, 4}, {5, 6}})
  lu.assertEquals(m:forward(lps.tensor{{1, -1}, {2, 0.5}}):totable(), {{-1, -1, -1}, {3, 8, 13}})
  local c = conv(1, 1, 2, {bias = false})
  c:parameters()[1]:copy(lps.tensor{{{{1, 1}, {1, 1}}}})
  lu.assertEquals(c:forward(lps.arange(9):reshape(1, 1, 3, 3) + 1):reshape(-1):totable(), {12, 16, 24, 28})
end

function TestNoBias:test_gradcheck()
  local g = lps.generator(3)
  for _, c in ipairs{{1, 3, 3, 1, 1, 6}, {4, 2, 3, 1, 1, 5}, {2, 3, 5, 2, 2, 7}, {3, 2, 1, 1, 0, 4}} do
    local cin, cout, k, s, p, hw = table.unpack(c)
    gradcheck(conv(cin, cout, k, {stride = s, padding = p, bias = false, generator = g}),
      lps.randn(2, cin, hw, hw, g), ("conv2d(%d, %d, k=%d) bias=false"):format(cin, cout, k))
  end
  gradcheck(nn.sequential{linear(4, 5, {bias = false, generator = g}), nn.tanh(),
    linear(5, 3, {bias = false, generator = g})}, lps.randn(3, 4, g),
    "linear bias=false")
end

function TestNoBias:test_arch_and_printing()
  local g = lps.generator(4)
  local m = nn.sequential{conv(1, 2, 3, {bias = false, generator = g}), conv(2, 2, 3, {padding = 1, generator = g}),
    nn.flatten(), linear(2, 2, {bias = false, generator = g}), linear(2, 2, {bias = true, generator = g})}
  local list, json = m:arch()
  -- false is written; true, the default, is not (older texts stay as they were)
  lu.assertEquals(list[1], {type = "conv2d", ["in"] = 1, out = 2, kernel = 3, stride = 1, padding = 0, bias = false})
  lu.assertEquals(list[2], {type = "conv2d", ["in"] = 2, out = 2, kernel = 3, stride = 1, padding = 1})
  lu.assertEquals(list[4], {type = "linear", ["in"] = 2, out = 2, bias = false})
  lu.assertEquals(list[5], {type = "linear", ["in"] = 2, out = 2})
  lu.assertEquals(json, '[{"type":"conv2d","in":1,"out":2,"kernel":3,"stride":1,"padding":0,"bias":false},' ..
    '{"type":"conv2d","in":2,"out":2,"kernel":3,"stride":1,"padding":1},{"type":"flatten"},' ..
    '{"type":"linear","in":2,"out":2,"bias":false},{"type":"linear","in":2,"out":2}]')
  lu.assertEquals(select(2, st.check_arch(json)), json)
  lu.assertEquals(select(2, st.check_arch('[{"type":"linear","in":2,"out":2,"bias":true}]')),
    '[{"type":"linear","in":2,"out":2}]')
  local m2 = nn.from_arch(json)
  lu.assertEquals(T.names(m2:named_parameters()), T.names(m:named_parameters()))
  m2:load_named(m:state_dict())
  local x = lps.randn(3, 1, 3, 3, g)
  lu.assertEquals(m2:forward(x):totable(), m:forward(x):totable())
  lu.assertEquals(tostring(m[1]), "Conv2d(1, 2, kernel_size=3, stride=1, padding=0, bias=False)")
  lu.assertEquals(tostring(m[2]), "Conv2d(2, 2, kernel_size=3, stride=1, padding=1)")
  lu.assertEquals(tostring(m[4]), "Linear(in_features=2, out_features=2, bias=False)")
  lu.assertEquals(tostring(m[5]), "Linear(in_features=2, out_features=2)")
  -- the constructors of the registry take it by name
  lu.assertEquals(T.names(nn.linear(3, 2):named_parameters()), {"weight", "bias"})
  local c = nn.layer("conv2d", {["in"] = 1, out = 1, kernel = 1, bias = false})
  lu.assertEquals(T.names(c:named_parameters()), {"weight"})
end

function TestNoBias:test_errors()
  T.assert_error_contains('layer 1 (linear): "bias" must be true or false, got 1', st.check_arch,
    '[{"type":"linear","in":2,"out":2,"bias":1}]')
  T.assert_error_contains('layer 1 (conv2d): "bias" must be true or false, got a string', st.check_arch,
    '[{"type":"conv2d","in":1,"out":2,"kernel":3,"bias":"false"}]')
  T.assert_error_contains('layer 1 (linear): "bias" appears twice', st.check_arch,
    '[{"type":"linear","in":2,"out":2,"bias":false,"bias":false}]')
  T.assert_error_contains('linear: "bias" must be true or false, got 2', nn.layer, "linear",
    {["in"] = 2, out = 2, bias = 2})
  T.assert_error_contains("linear: option bias must be a number or a boolean, got a string", nn.layer, "linear",
    {["in"] = 2, out = 2, bias = "no"})
  -- the weight-space methods read a weight and a bias per weight layer: they say which layer has none
  local g = lps.generator(6)
  local net = nn.sequential{conv(1, 2, 3, {bias = false, generator = g}), nn.relu(), nn.flatten(),
    linear(8, 3, {bias = false, generator = g}), nn.relu(), linear(3, 2, {generator = g})}
  local w = {}
  for i, e in ipairs(net:named_parameters()) do w[i] = e.tensor end
  w.arch = net:arch()
  T.assert_error_contains("sorted: layer 1 (conv2d) has no bias: the weight-space methods read a weight and a bias "
    .. "per weight layer", lps.eval.features, "sorted", w)
end

TestConvGeometry = {}

-- conv2d(1 -> 1) with every weight w and bias b.
local function flat_conv(k, s, p, w, b)
  local m = conv(1, 1, k, {stride = s, padding = p})
  local params = m:parameters()
  params[1]:fill_(w)
  params[2]:fill_(b)
  return m
end

function TestConvGeometry:test_hand_computed()
  local x = lps.arange(9):reshape(1, 1, 3, 3) + 1 -- 1..9
  -- 1x1 kernel, padding 2 (beyond the kernel): 7x7, the bias on the ring of zeros
  local y = flat_conv(1, 1, 2, 2, 0.5):forward(x)
  lu.assertEquals(y:shape(), {1, 1, 7, 7})
  lu.assertEquals(y[1][1][1]:totable(), {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5})
  lu.assertEquals(y[1][1][3]:totable(), {0.5, 0.5, 2.5, 4.5, 6.5, 0.5, 0.5})
  -- 1x1 kernel at stride 2 (beyond the kernel): every other input
  lu.assertEquals(flat_conv(1, 2, 0, 1, 0):forward(x):reshape(-1):totable(), {1, 3, 7, 9})
  -- 2x2 at stride 3 with padding 3 on 3x3: (3 + 6 - 2) // 3 + 1 = 3 outputs a side;
  -- windows start at padded rows 0, 3, 6: only the middle one meets the input
  -- (its rows 1..2 and columns 1..2 hold 1, 2, 4, 5)
  y = flat_conv(2, 3, 3, 1, 0):forward(x)
  lu.assertEquals(y:reshape(-1):totable(), {0, 0, 0, 0, 1 + 2 + 4 + 5, 0, 0, 0, 0})
  -- the kernel as large as the padded input: one output, the sum of all
  y = flat_conv(5, 1, 1, 1, 0):forward(x)
  lu.assertEquals(y:reshape(-1):totable(), {45})
  -- an input smaller than the kernel, made large enough by padding
  y = flat_conv(5, 4, 2, 1, 0):forward(lps.tensor{{{{7}}}})
  lu.assertEquals(y:reshape(-1):totable(), {7})
  -- 3x3 with padding 4 (beyond the kernel), 4 input channels (the Winograd path)
  local m = conv(4, 1, 3, {padding = 4})
  m:parameters()[1]:fill_(1)
  m:parameters()[2]:zero_()
  y = m:forward(lps.ones(1, 4, 2, 2))
  lu.assertEquals(y:shape(), {1, 1, 8, 8})
  lu.assertEquals(y:sum(), 4 * 4 * 9) -- every input value is in 9 windows
  -- output row 3 (1-based) meets one input row, row 4 both; columns alike
  lu.assertEquals(y[1][1][3]:totable(), {0, 0, 4, 8, 8, 4, 0, 0})
  lu.assertEquals(y[1][1][4]:totable(), {0, 0, 8, 16, 16, 8, 0, 0})
end

function TestConvGeometry:test_gradcheck()
  local g = lps.generator(5)
  -- cin, cout, k, stride, padding, h, w: each path with padding beyond the
  -- kernel or stride beyond it
  local cases = {{1, 2, 2, 5, 3, 4, 5}, {1, 2, 3, 4, 4, 3, 3}, {4, 2, 3, 1, 4, 3, 2}, {2, 2, 5, 7, 6, 4, 5},
    {2, 3, 1, 1, 2, 3, 3}, {2, 3, 1, 3, 0, 7, 5}, {2, 2, 7, 1, 1, 5, 5}, {1, 1, 5, 4, 2, 1, 1}}
  for _, c in ipairs(cases) do
    local cin, cout, k, s, p, h, w = table.unpack(c)
    local what = ("conv2d(%d, %d, k=%d, s=%d, p=%d) on %dx%d"):format(cin, cout, k, s, p, h, w)
    gradcheck(conv(cin, cout, k, {stride = s, padding = p, generator = g}), lps.randn(2, cin, h, w, g), what)
  end
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
