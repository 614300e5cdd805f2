-- adaptive_avgpool2d: PyTorch's adaptive windows (window i of n inputs and m
-- outputs covers floor(i n / m) .. ceil((i + 1) n / m) - 1), output 1 being
-- global average pooling: windows by hand, a reference implementation of the
-- formula, finite differences, threads, the arch, errors. Agreement with
-- PyTorch: tests/test_layers_torch.lua.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn
local st = lps.safetensors

local function counting(h, w)
  local rows = {}
  for r = 1, h do
    rows[r] = {}
    for c = 1, w do rows[r][c] = (r - 1) * w + c - 1 end
  end
  return lps.tensor{{rows}}
end

local function assert_near(a, b, tol, what)
  local diff = (a - b):abs():max()
  lu.assertTrue(diff <= tol, ("%s: max abs diff %.3g"):format(what, diff))
end

TestAdaptiveAvgPool2d = {}

function TestAdaptiveAvgPool2d:test_global_average()
  local x = lps.randn(3, 4, 5, 7, lps.generator(1))
  local y = nn.adaptive_avgpool2d(1):forward(x)
  lu.assertEquals(y:shape(), {3, 4, 1, 1})
  assert_near(y:reshape(12), x:reshape(12, 35):mean(2), 1e-6, "global mean")
  -- backward: every input gets its plane's gradient over the plane's size
  local gy = lps.randn(3, 4, 1, 1, lps.generator(2))
  local gx = nn.adaptive_avgpool2d(1):backward(x, gy)
  for b = 1, 3 do
    for c = 1, 4 do
      lu.assertAlmostEquals(gx[b][c][5][7], gy[b][c][1][1] / 35, 1e-7)
      lu.assertAlmostEquals(gx[b][c][1][1], gy[b][c][1][1] / 35, 1e-7)
    end
  end
end

function TestAdaptiveAvgPool2d:test_global_backward_bits()
  -- global pooling's backward writes each plane in one pass: the bits of the
  -- general windows' loop (avgpool2d's 5 x 5 window on 5 x 6, its first five
  -- columns), a gradient of -0 giving +0 as 0 + g does there
  local gy = lps.randn(2, 3, 1, 1, lps.generator(4))
  gy[1][2][1][1] = -0.0
  local gx = nn.adaptive_avgpool2d(1):backward(lps.randn(2, 3, 5, 5, lps.generator(3)), gy)
  local gen = nn.avgpool2d(5):backward(lps.randn(2, 3, 5, 6, lps.generator(3)), gy)
  lu.assertEquals(1 / gx[1][2][3][4], math.huge, "+0 for a gradient of -0")
  for b = 1, 2 do
    for c = 1, 3 do
      for r = 1, 5 do
        for q = 1, 5 do
          lu.assertEquals(string.pack("<f", gx[b][c][r][q]), string.pack("<f", gen[b][c][r][q]))
        end
      end
    end
  end
end

function TestAdaptiveAvgPool2d:test_windows_by_hand()
  -- 5 -> 3: windows [0, 2), [1, 4), [3, 5) (overlapping, sizes 2, 3, 2);
  -- 7 -> 3: [0, 3), [2, 5), [4, 7). x[r][c] = 7 r + c, so a window's mean is
  -- 7 (mean row) + (mean column).
  local y = nn.adaptive_avgpool2d(3):forward(counting(5, 7))
  local rows, cols = {0.5, 2, 3.5}, {1, 3, 5}
  for i = 1, 3 do
    for j = 1, 3 do lu.assertAlmostEquals(y[1][1][i][j], 7 * rows[i] + cols[j], 1e-5) end
  end
  -- 3 -> 5 (more outputs than inputs, as PyTorch allows): windows [0, 1),
  -- [0, 2), [1, 2), [1, 3), [2, 3), so means of one or two neighbours
  y = nn.adaptive_avgpool2d(5):forward(counting(3, 3))
  lu.assertEquals(y[1][1][1]:totable(), {0, 0.5, 1, 1.5, 2})
  lu.assertEquals(y[1][1][2]:totable(), {1.5, 2, 2.5, 3, 3.5})
  lu.assertEquals(y[1][1][5]:totable(), {6, 6.5, 7, 7.5, 8})
  -- a divisible size is plain average pooling: 4x6 -> 2x2 in 2x3 windows
  y = nn.adaptive_avgpool2d(2):forward(counting(4, 6))
  lu.assertEquals(y:totable(), {{{{(0 + 1 + 2 + 6 + 7 + 8) / 6, (3 + 4 + 5 + 9 + 10 + 11) / 6},
    {(12 + 13 + 14 + 18 + 19 + 20) / 6, (15 + 16 + 17 + 21 + 22 + 23) / 6}}}})
  -- the largest output, 1024, on 2x2: rows 0..511 read input row 0, 512..1023 row 1
  y = nn.adaptive_avgpool2d(1024):forward(lps.tensor{{{{1, 2}, {3, 4}}}})
  lu.assertEquals(y:shape(), {1, 1, 1024, 1024})
  lu.assertEquals({y[1][1][1][1], y[1][1][512][512], y[1][1][512][513], y[1][1][513][1], y[1][1][1024][1024]},
    {1, 1, 2, 3, 4})
  lu.assertEquals(y:sum(), 512 * 512 * 10)
end

function TestAdaptiveAvgPool2d:test_backward_by_hand()
  -- 5x5 -> 3x3 with unit gradients: input (r, c) gets a[r] a[c], a = the sum
  -- over the windows covering it of 1 / window size: {1/2, 1/2 + 1/3, 1/3, 1/3 + 1/2, 1/2}
  local a = {1 / 2, 5 / 6, 1 / 3, 5 / 6, 1 / 2}
  local m = nn.adaptive_avgpool2d(3)
  local x = counting(5, 5)
  m:forward(x)
  local gx = m:backward(x, lps.ones(1, 1, 3, 3))
  for r = 1, 5 do
    for c = 1, 5 do lu.assertAlmostEquals(gx[1][1][r][c], a[r] * a[c], 1e-6) end
  end
end

-- The formula in plain Lua (doubles).
local function reference(x, out)
  local n, ch, h, w = table.unpack(x:shape())
  local X, Y = x:totable(), {}
  for b = 1, n do
    Y[b] = {}
    for c = 1, ch do
      Y[b][c] = {}
      for i = 0, out - 1 do
        Y[b][c][i + 1] = {}
        local r0, r1 = i * h // out, -((-(i + 1) * h) // out)
        for j = 0, out - 1 do
          local c0, c1 = j * w // out, -((-(j + 1) * w) // out)
          local s = 0
          for r = r0, r1 - 1 do for k = c0, c1 - 1 do s = s + X[b][c][r + 1][k + 1] end end
          Y[b][c][i + 1][j + 1] = s / ((r1 - r0) * (c1 - c0))
        end
      end
    end
  end
  return lps.tensor(Y)
end

function TestAdaptiveAvgPool2d:test_matches_the_formula()
  local g = lps.generator(3)
  -- height, width, output: divisible or not, overlapping windows, more outputs than inputs
  local cases = {{1, 1, 1}, {7, 7, 1}, {7, 7, 2}, {7, 5, 3}, {6, 9, 4}, {3, 8, 6}, {2, 3, 7}, {5, 5, 5}, {9, 4, 2}}
  for _, c in ipairs(cases) do
    local h, w, out = table.unpack(c)
    local x = lps.randn(2, 3, h, w, g)
    assert_near(nn.adaptive_avgpool2d(out):forward(x), reference(x, out), 1e-5,
      ("%dx%d -> %d"):format(h, w, out))
  end
end

function TestAdaptiveAvgPool2d:test_gradcheck()
  local g = lps.generator(4)
  for _, c in ipairs{{1, 5, 6}, {3, 5, 7}, {4, 3, 3}} do
    local out, h, w = table.unpack(c)
    local m, x = nn.adaptive_avgpool2d(out), lps.randn(2, 2, h, w, g)
    local R = lps.randn(m:forward(x):shape(), g)
    T.assert_grad_close(m:backward(x, R), T.numgrad(function() return (m:forward(x) * R):sum() end, x), 1e-2,
      ("adaptive_avgpool2d %d on %dx%d"):format(out, h, w))
  end
  -- a small network ending in global pooling and a head: every parameter (tanh: no kinks)
  local net = nn.sequential{nn.conv2d(2, 3, 3, {padding = 1, generator = g}), nn.tanh(), nn.adaptive_avgpool2d(1),
    nn.flatten(), nn.linear(3, 2, g)}
  local x, R = lps.randn(2, 2, 5, 5, g), lps.randn(2, 2, g)
  T.check_parameter_gradients(net, function() net:forward(x); net:backward(x, R) end,
    function() return (net:forward(x) * R):sum() end)
end

function TestAdaptiveAvgPool2d:test_threads_give_the_same_bits()
  T.assert_threads_same_bits(nn.adaptive_avgpool2d(3), lps.randn(64, 16, 16, 16, lps.generator(5)),
    lps.randn(64, 16, 3, 3, lps.generator(6)))
end

function TestAdaptiveAvgPool2d:test_arch_round_trip()
  local g = lps.generator(7)
  local m = nn.sequential{nn.conv2d(1, 4, 3, {generator = g}), nn.relu(), nn.adaptive_avgpool2d(1), nn.flatten(),
    nn.linear(4, 2, g)}
  local list, json = m:arch()
  lu.assertEquals(list[3], {type = "adaptive_avgpool2d", output = 1})
  lu.assertStrContains(json, '{"type":"adaptive_avgpool2d","output":1},{"type":"flatten"}')
  lu.assertEquals(select(2, st.check_arch(json)), json)
  -- without an input entry the sizes after it are known: any image size fits the head
  local _, _, shapes = st.check_arch(json)
  lu.assertEquals(shapes[3], {4, 1, 1})
  lu.assertEquals(shapes[4], {4})
  local m2 = nn.from_arch(json):load_named(m:state_dict())
  for _, side in ipairs{3, 8, 13} do
    local x = lps.randn(2, 1, side, side, g)
    lu.assertEquals(m2:forward(x):totable(), m:forward(x):totable())
  end
  lu.assertEquals(tostring(m[3]), "AdaptiveAvgPool2d(output_size=1)")
  lu.assertEquals(T.names(m:named_parameters()), {"0.weight", "0.bias", "4.weight", "4.bias"})
end

function TestAdaptiveAvgPool2d:test_errors()
  local cases = {
    {'[{"type":"adaptive_avgpool2d","output":0}]', 'layer 1 (adaptive_avgpool2d): "output" is 0, expected 1..1024'},
    {'[{"type":"adaptive_avgpool2d","output":1025}]', '"output" is 1025, expected 1..1024'},
    {'[{"type":"adaptive_avgpool2d"}]', '"output" is missing'},
    {'[{"type":"adaptive_avgpool2d","output_size":1}]',
      'unknown key "output_size" (an adaptive_avgpool2d takes output)'},
    {'[{"type":"adaptive_avgpool2d","output":[2,2]}]', '"output" must be an integer, got an array'},
    {'[{"type":"linear","in":3,"out":2},{"type":"adaptive_avgpool2d","output":1}]',
      "layer 2 (adaptive_avgpool2d): needs (channels x height x width) but layer 1 (linear) gives (2) features"},
    {'[{"type":"input","shape":[2,5,5]},{"type":"adaptive_avgpool2d","output":2},{"type":"flatten"},' ..
      '{"type":"linear","in":4,"out":2}]', 'layer 3 (linear): "in" is 4 but layer 2 (flatten) gives 8 features'},
  }
  for _, c in ipairs(cases) do T.assert_error_contains(c[2], st.check_arch, c[1]) end
  T.assert_error_contains('adaptive_avgpool2d: "output" is 0, expected 1..1024', nn.adaptive_avgpool2d, 0)
  local m = nn.adaptive_avgpool2d(2)
  T.assert_error_contains("adaptive_avgpool2d: needs a non-empty input but its input (1x1x0x3) gives (1x0x3)",
    m.forward, m, lps.zeros(1, 1, 0, 3))
end

function TestAdaptiveAvgPool2d:test_weight_space_methods_see_through_it()
  local g = lps.generator(8)
  T.assert_weight_space_reads(nn.sequential{nn.conv2d(1, 3, 3, {padding = 1, generator = g}), nn.relu(),
    nn.adaptive_avgpool2d(2), nn.flatten(), nn.linear(12, 2, g)}, {{2, 3, 1}}, lps.rand(4, 64, g))
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
