-- avgpool2d: window means (stride defaults to the kernel, no padding) on
-- hand-computed values, finite differences, threads, the arch, errors.
-- Agreement with PyTorch: tests/test_layers_torch.lua.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn
local st = lps.safetensors

-- x[1][1] = {{v0, v0 + 1, ...}, ...}: a plane counting up row by row.
local function counting(h, w, v0)
  local rows = {}
  for r = 1, h do
    rows[r] = {}
    for c = 1, w do rows[r][c] = (v0 or 0) + (r - 1) * w + c - 1 end
  end
  return lps.tensor{{rows}}
end

-- d/dx of sum(m(x) * R) against central differences.
local function input_gradcheck(m, x, what)
  local R = lps.randn(m:forward(x):shape(), lps.generator(99))
  local gx = m:backward(x, R)
  T.assert_grad_close(gx, T.numgrad(function() return (m:forward(x) * R):sum() end, x), 1e-2, what)
end

TestAvgPool2d = {}

function TestAvgPool2d:test_forward_hand_computed()
  -- 1..16 in 2x2 windows: (1+2+5+6)/4, (3+4+7+8)/4, ...
  local y = nn.avgpool2d(2):forward(counting(4, 4, 1))
  lu.assertEquals(y:totable(), {{{{3.5, 5.5}, {11.5, 13.5}}}})
  -- overlapping 3x3 windows at stride 1: the mean of a window is its centre
  lu.assertEquals(nn.avgpool2d(3, {stride = 1}):forward(counting(4, 4, 1)):totable(), {{{{6, 7}, {10, 11}}}})
  -- stride 3 > kernel 2 on 5x5 (0..24): windows at rows/columns 0-1 and 3-4
  lu.assertEquals(nn.avgpool2d(2, {stride = 3}):forward(counting(5, 5)):totable(),
    {{{{(0 + 1 + 5 + 6) / 4, (3 + 4 + 8 + 9) / 4}, {(15 + 16 + 20 + 21) / 4, (18 + 19 + 23 + 24) / 4}}}})
  -- an odd size drops the last row and column, as PyTorch (floor)
  lu.assertEquals(nn.avgpool2d(2):forward(counting(5, 5)):shape(), {1, 1, 2, 2})
  -- channels and samples are pooled each on their own
  local x = lps.randn(3, 2, 4, 6, lps.generator(1))
  local y2 = nn.avgpool2d(2):forward(x)
  for b = 1, 3 do
    for c = 1, 2 do
      for i = 1, 2 do
        for j = 1, 3 do
          local p = x[b][c]
          local s = p[2 * i - 1][2 * j - 1] + p[2 * i - 1][2 * j] + p[2 * i][2 * j - 1] + p[2 * i][2 * j]
          lu.assertAlmostEquals(y2[b][c][i][j], s / 4, 1e-6)
        end
      end
    end
  end
end

function TestAvgPool2d:test_backward_hand_computed()
  -- each input gets the output gradient over the window size, once per window covering it
  local gx = nn.avgpool2d(2):backward(counting(4, 4), lps.tensor{{{{1, 2}, {3, 4}}}})
  lu.assertEquals(gx:totable(),
    {{{{0.25, 0.25, 0.5, 0.5}, {0.25, 0.25, 0.5, 0.5}, {0.75, 0.75, 1, 1}, {0.75, 0.75, 1, 1}}}})
  local m = nn.avgpool2d(3, {stride = 1})
  m:forward(counting(4, 4))
  gx = m:backward(counting(4, 4), lps.ones(1, 1, 2, 2))
  local c, e, i = 1 / 9, 2 / 9, 4 / 9 -- corners in one window, edges in two, the centre in four
  local want = {{c, e, e, c}, {e, i, i, e}, {e, i, i, e}, {c, e, e, c}}
  for r = 1, 4 do for k = 1, 4 do lu.assertAlmostEquals(gx[1][1][r][k], want[r][k], 1e-7) end end
  -- inputs outside every window (5x5, kernel 2) get zero
  m = nn.avgpool2d(2)
  m:forward(counting(5, 5))
  gx = m:backward(counting(5, 5), lps.ones(1, 1, 2, 2))
  for k = 1, 5 do
    lu.assertEquals(gx[1][1][5][k], 0)
    lu.assertEquals(gx[1][1][k][5], 0)
  end
  lu.assertEquals(gx:sum(), 4)
end

function TestAvgPool2d:test_gradcheck()
  local g = lps.generator(2)
  input_gradcheck(nn.avgpool2d(2), lps.randn(2, 3, 6, 5, g), "avgpool2d k2")
  input_gradcheck(nn.avgpool2d(3, {stride = 2}), lps.randn(2, 2, 7, 8, g), "avgpool2d k3 s2 (overlapping)")
  input_gradcheck(nn.avgpool2d(2, {stride = 3}), lps.randn(1, 2, 8, 7, g), "avgpool2d k2 s3 (gaps)")
  -- in a network with parameters before it
  local net = nn.sequential{nn.conv2d(2, 3, 3, {padding = 1, generator = g}), nn.avgpool2d(2), nn.flatten(),
    nn.linear(12, 2, g)}
  local x, R = lps.randn(2, 2, 4, 4, g), lps.randn(2, 2, g)
  local function f() return (net:forward(x) * R):sum() end
  T.check_parameter_gradients(net, function() net:forward(x); net:backward(x, R) end, f)
  input_gradcheck(net, x, "conv2d + avgpool2d")
end

function TestAvgPool2d:test_threads_give_the_same_bits()
  -- planes are split over threads: each is computed the same way either way
  local x = lps.randn(64, 16, 16, 16, lps.generator(3)) -- 2^18 values: the threaded size
  T.assert_threads_same_bits(nn.avgpool2d(3, {stride = 2}), x, lps.randn(64, 16, 7, 7, lps.generator(4)))
end

function TestAvgPool2d:test_arch_round_trip()
  local g = lps.generator(5)
  local m = nn.sequential{nn.conv2d(1, 2, 3, {generator = g}), nn.avgpool2d(2), nn.avgpool2d(2, {stride = 1}),
    nn.flatten(), nn.linear(18, 3, g)}
  local list, json = m:arch()
  lu.assertEquals(list[2], {type = "avgpool2d", kernel = 2, stride = 2}) -- the stride filled from the kernel
  lu.assertEquals(list[3], {type = "avgpool2d", kernel = 2, stride = 1})
  lu.assertStrContains(json, '{"type":"avgpool2d","kernel":2,"stride":2},{"type":"avgpool2d","kernel":2,"stride":1}')
  lu.assertEquals(select(2, st.check_arch(json)), json)
  local m2 = nn.from_arch(json)
  lu.assertEquals(select(2, m2:arch()), json)
  m2:load_named(m:state_dict())
  local x = lps.randn(2, 1, 10, 10, g)
  lu.assertEquals(m2:forward(x):totable(), m:forward(x):totable())
  lu.assertEquals(tostring(m[2]), "AvgPool2d(kernel_size=2, stride=2, padding=0)")
  -- 10 -conv3-> 8 -pool2-> 4 -pool2,s1-> 3
  local _, _, shapes = st.check_arch({{type = "input", shape = {1, 10, 10}}, table.unpack(list)})
  lu.assertEquals(shapes[3], {2, 4, 4})
  lu.assertEquals(shapes[4], {2, 3, 3})
  -- no parameters of its own: state_dict names skip its position
  lu.assertEquals(T.names(m:named_parameters()), {"0.weight", "0.bias", "4.weight", "4.bias"})
end

function TestAvgPool2d:test_errors()
  local cases = {
    {'[{"type":"input","shape":[1,3,3]},{"type":"avgpool2d","kernel":4}]',
      "arch: layer 1 (avgpool2d): kernel 4 is larger than its input: the input gives (1x3x3)"},
    {'[{"type":"avgpool2d","kernel":2,"padding":1}]',
      'layer 1 (avgpool2d): unknown key "padding" (an avgpool2d takes kernel, stride)'},
    {'[{"type":"avgpool2d"}]', 'layer 1 (avgpool2d): "kernel" is missing'},
    {'[{"type":"avgpool2d","kernel":0}]', '"kernel" is 0, expected 1..1024'},
    {'[{"type":"avgpool2d","kernel":2,"stride":1.5}]', '"stride" must be an integer, got 1.5'},
    {'[{"type":"linear","in":3,"out":2},{"type":"avgpool2d","kernel":2}]',
      "layer 2 (avgpool2d): needs (channels x height x width) but layer 1 (linear) gives (2) features"},
  }
  for _, c in ipairs(cases) do T.assert_error_contains(c[2], st.check_arch, c[1]) end
  T.assert_error_contains('avgpool2d: "kernel" is missing', nn.avgpool2d)
  T.assert_error_contains('an avgpool2d has no field "padding"', nn.avgpool2d, 2, {padding = 1})
  local m = nn.avgpool2d(4)
  T.assert_error_contains("avgpool2d: kernel 4 is larger than its input: its input (1x1x3x3) gives (1x3x3)",
    m.forward, m, lps.zeros(1, 1, 3, 3))
  T.assert_error_contains("avgpool2d: needs (channels x height x width) but its input (2x6) gives (6) features",
    m.forward, m, lps.zeros(2, 6))
end

function TestAvgPool2d:test_weight_space_methods_see_through_it()
  -- a positive scale of a conv channel passes through the mean of its windows:
  -- the weight-space baselines accept the layer between two weight layers
  local g = lps.generator(6)
  T.assert_weight_space_reads(nn.sequential{nn.conv2d(1, 3, 3, {padding = 1, generator = g}), nn.relu(),
    nn.avgpool2d(2), nn.flatten(), nn.linear(3 * 4 * 4, 2, g)}, {{3, 1, 2}}, lps.rand(4, 64, g))
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
