-- Layers and loss: hand-computed outputs and finite-difference gradients
-- with respect to inputs and parameters.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn

-- Check m's backward against central differences of L = sum(m(x) * R) with
-- respect to x and every parameter. tol relative to the gradient's scale.
local function gradcheck(m, x, what, tol, eps)
  local y = m:forward(x)
  local R = lps.randn(y:shape(), lps.generator(99))
  local function L() return (m:forward(x) * R):sum() end
  m:zero_grad()
  local gx = m:backward(x, R)
  T.assert_grad_close(gx, T.numgrad(L, x, eps), tol, what .. " d/dinput")
  local params, grads = m:parameters()
  for i, p in ipairs(params) do
    local analytic = grads[i]:clone()
    T.assert_grad_close(analytic, T.numgrad(L, p, eps), tol, what .. " d/dparam " .. i)
  end
  return gx
end

-- Values spaced 0.05 apart in random order: no ties and no kinks within eps.
local function distinct(gen, ...)
  local t = lps.zeros(...)
  local flat = t:reshape(-1)
  local n = flat:numel()
  local p = lps.data.randperm(n, gen)
  for i = 1, n do flat[i] = (p[i] - n / 2 - 0.5) * 0.05 end
  return t
end

TestLinear = {}

function TestLinear:test_forward_hand_computed()
  local m = nn.linear(2, 3)
  local W, b = table.unpack((m:parameters()))
  W:copy(lps.tensor{{1, 2}, {3, 4}, {5, 6}})
  b:copy(lps.tensor{0.5, -1, 2})
  lu.assertEquals(m:forward(lps.tensor{{1, -1}, {0, 2}}):totable(), {{-0.5, -2, 1}, {4.5, 7, 14}})
  -- backward: dW = gy^T x, db = sum of gy rows, dx = gy W
  local gx = m:backward(lps.tensor{{1, -1}, {0, 2}}, lps.tensor{{1, 0, 0}, {0, 0, 1}})
  lu.assertEquals(gx:totable(), {{1, 2}, {5, 6}})
  local _, g = m:parameters()
  lu.assertEquals(g[1]:totable(), {{1, -1}, {0, 0}, {0, 2}})
  lu.assertEquals(g[2]:totable(), {1, 0, 1})
  -- gradients accumulate until zero_grad
  m:backward(lps.tensor{{1, -1}, {0, 2}}, lps.tensor{{1, 0, 0}, {0, 0, 1}})
  lu.assertEquals(g[2]:totable(), {2, 0, 2})
  m:zero_grad()
  lu.assertEquals(g[2]:totable(), {0, 0, 0})
end

function TestLinear:test_gradcheck()
  local g = lps.generator(1)
  gradcheck(nn.linear(5, 4, {generator = g}), lps.randn(3, 5, g), "linear")
end

function TestLinear:test_pytorch_init()
  -- kaiming_uniform(a = sqrt(5)) and the bias both give U(-1/sqrt(in), 1/sqrt(in))
  local m = nn.linear(400, 300, lps.generator(3))
  local W, b = table.unpack((m:parameters()))
  local bound = 1 / math.sqrt(400)
  lu.assertEquals(W:shape(), {300, 400})
  lu.assertTrue(W:abs():max() <= bound)
  lu.assertTrue(W:abs():max() > 0.99 * bound)
  lu.assertAlmostEquals(W:mean(), 0, 0.01 * bound)
  lu.assertAlmostEquals(W:norm() ^ 2 / W:numel(), bound ^ 2 / 3, 0.02 * bound ^ 2)
  lu.assertTrue(b:abs():max() <= bound)
  -- the same generator seed gives the same weights
  local m2 = nn.linear(400, 300, {generator = lps.generator(3)})
  lu.assertTrue(lps.allclose(m2:parameters()[1], W, 0, 0))
end

function TestLinear:test_errors()
  local m = nn.linear(3, 2)
  T.assert_error_contains('linear(3 -> 2): "in" is 3 but its input (4x5) gives 5 features', m.forward, m, lps.zeros(4, 5))
  T.assert_error_contains("put a flatten before it", m.forward, m, lps.zeros(4, 1, 3, 1))
  T.assert_error_contains("gradient (4x3) differs from output (4x2)", m.backward, m, lps.zeros(4, 3), lps.zeros(4, 3))
  T.assert_error_contains('linear: "in" is 0, expected 1..', nn.linear, 0, 2)
  T.assert_error_contains("Tensor expected", m.forward, m, {1, 2, 3})
end

TestActivations = {}

function TestActivations:test_relu()
  local m = nn.relu()
  local x = lps.tensor{{-1, 0, 2}}
  lu.assertEquals(m:forward(x):totable(), {{0, 0, 2}})
  -- subgradient 0 at 0, as PyTorch
  lu.assertEquals(m:backward(x, lps.tensor{{5, 6, 7}}):totable(), {{0, 0, 7}})
  gradcheck(m, distinct(lps.generator(2), 3, 4), "relu")
  lu.assertEquals(#m:parameters(), 0)
end

function TestActivations:test_tanh()
  local m = nn.tanh()
  local y = m:forward(lps.tensor{{0.5, -2}})
  lu.assertAlmostEquals(y:get(1, 1), math.tanh(0.5), 1e-7)
  lu.assertAlmostEquals(y:get(1, 2), math.tanh(-2), 1e-7)
  local g = m:backward(lps.tensor{{0.5, -2}}, lps.tensor{{1, 2}})
  lu.assertAlmostEquals(g:get(1, 1), 1 - math.tanh(0.5) ^ 2, 1e-6)
  lu.assertAlmostEquals(g:get(1, 2), 2 * (1 - math.tanh(-2) ^ 2), 1e-6)
  gradcheck(m, lps.randn(3, 2, 2, lps.generator(4)), "tanh")
end

function TestActivations:test_flatten()
  local m = nn.flatten()
  local x = lps.arange(24):reshape(2, 3, 2, 2)
  local y = m:forward(x)
  lu.assertEquals(y:shape(), {2, 12})
  lu.assertEquals(y[2]:totable()[1], 12)
  lu.assertEquals(m:backward(x, y):shape(), {2, 3, 2, 2})
  gradcheck(m, lps.randn(2, 3, 2, lps.generator(5)), "flatten")
  T.assert_error_contains("batch dimension", m.forward, m, lps.zeros(5))
end

TestConv = {}

local function conv_with(w, b, opts)
  local m = nn.conv2d(1, 1, 2, opts)
  local p = m:parameters()
  p[1]:copy(lps.tensor(w))
  p[2]:copy(lps.tensor{b})
  return m
end

function TestConv:test_forward_hand_computed()
  local x = lps.arange(9):reshape(1, 1, 3, 3) + 1 -- 1..9
  local m = conv_with({1, 1, 1, 1}, 0)
  lu.assertEquals(m:forward(x):reshape(-1):totable(), {12, 16, 24, 28})
  -- padding 1 and stride 2: windows at the corners of the padded 5x5
  m = conv_with({1, 1, 1, 1}, 0.5, {stride = 2, padding = 1})
  lu.assertEquals(m:forward(x):reshape(-1):totable(), {1.5, 5.5, 11.5, 28.5})
  -- cross-correlation, not convolution: the kernel is not flipped
  m = conv_with({1, 0, 0, 0}, 0)
  lu.assertEquals(m:forward(x):reshape(-1):totable(), {1, 2, 4, 5})
end

function TestConv:test_shapes()
  local m = nn.conv2d(3, 5, 3, {stride = 2, padding = 1})
  lu.assertEquals(m:forward(lps.zeros(2, 3, 7, 8)):shape(), {2, 5, 4, 4})
  lu.assertEquals(m:parameters()[1]:shape(), {5, 3, 3, 3})
  T.assert_error_contains('"in" is 3 but its input (2x4x7x7) gives 4 channels', m.forward, m, lps.zeros(2, 4, 7, 7))
  T.assert_error_contains("kernel 5 is larger than its input", nn.conv2d(1, 1, 5).forward, nn.conv2d(1, 1, 5), lps.zeros(1, 1, 3, 3))
  T.assert_error_contains("stride", nn.conv2d, 1, 1, 3, {stride = 0})
end

function TestConv:test_gradcheck()
  local g = lps.generator(6)
  gradcheck(nn.conv2d(2, 3, 3, {generator = g}), lps.randn(2, 2, 5, 5, g), "conv2d")
  gradcheck(nn.conv2d(2, 3, 3, {stride = 2, padding = 1, generator = g}), lps.randn(2, 2, 6, 5, g),
    "conv2d stride 2 padding 1")
  gradcheck(nn.conv2d(1, 2, 2, {stride = 3, padding = 2, generator = g}), lps.randn(1, 1, 5, 4, g),
    "conv2d stride 3 padding 2")
  -- each kernel path (conv.c's kernel_of): Winograd with padding 0, 1, 2 and
  -- odd sizes; direct at stride 2; im2col for 5x5 at strides 1 and 2
  for p = 0, 2 do
    gradcheck(nn.conv2d(4, 2, 3, {padding = p, generator = g}), lps.randn(2, 4, 5, 7, g),
      "conv2d Winograd padding " .. p)
  end
  -- rows of 8 tiles and more (the 8-wide transforms), odd and even widths
  for _, c in ipairs{{0, 19}, {1, 19}, {1, 16}} do
    gradcheck(nn.conv2d(4, 2, 3, {padding = c[1], generator = g}), lps.randn(1, 4, 3, c[2], g),
      ("conv2d Winograd padding %d width %d"):format(c[1], c[2]))
  end
  gradcheck(nn.conv2d(1, 3, 3, {stride = 2, padding = 1, generator = g}), lps.randn(2, 1, 7, 8, g),
    "conv2d direct stride 2")
  -- conv_gemm.c's vector paths: products 16 and more wide and deep, not
  -- multiples of 16 (the overlapping last block, the masked last vector)
  gradcheck(nn.conv2d(4, 9, 3, {padding = 1, generator = g}), lps.randn(1, 4, 9, 11, g),
    "conv2d Winograd 30 tiles")
  gradcheck(nn.conv2d(3, 10, 3, {stride = 2, padding = 1, generator = g}), lps.randn(1, 3, 11, 13, g),
    "conv2d im2col 42 outputs")
  gradcheck(nn.conv2d(17, 3, 1, {stride = 2, generator = g}), lps.randn(1, 17, 9, 11, g),
    "conv2d 1x1 stride 2, 30 outputs")
  gradcheck(nn.conv2d(2, 2, 5, {padding = 2, generator = g}), lps.randn(1, 2, 6, 7, g), "conv2d 5x5")
  gradcheck(nn.conv2d(2, 2, 5, {stride = 2, padding = 2, generator = g}), lps.randn(1, 2, 7, 8, g),
    "conv2d 5x5 stride 2")
  -- 1x1 at strides 2 and 3 (a ResNet shortcut: read in place, no split layout), odd sizes
  gradcheck(nn.conv2d(3, 2, 1, {stride = 2, generator = g}), lps.randn(2, 3, 7, 8, g), "conv2d 1x1 stride 2")
  gradcheck(nn.conv2d(2, 3, 1, {stride = 3, generator = g}), lps.randn(2, 2, 5, 7, g), "conv2d 1x1 stride 3")
end

function TestConv:test_batch_grouping()
  -- Samples go through the GEMMs in groups sized from the layer (here 1 and
  -- several per group); every sample must come out as if alone.
  local g = lps.generator(13)
  for _, spec in ipairs{{1, 2, 3, 9}, {16, 2, 5, 40}} do
    local cin, cout, k, hw = table.unpack(spec)
    local m = nn.conv2d(cin, cout, k, {padding = 1, generator = g})
    local x = lps.randn({3, cin, hw, hw}, g)
    local y = m:forward(x)
    local gy = lps.randn(y:shape(), g)
    m:zero_grad()
    local gx = m:backward(x, gy)
    local _, grads = m:parameters()
    local gw = grads[1]:clone()
    local sum = lps.zeros(table.unpack(gw:shape()))
    for i = 1, 3 do
      local xi = x:rows(i, i)
      lu.assertTrue(lps.allclose(m:forward(xi), y:rows(i, i), 1e-5, 1e-5), "output of sample " .. i)
      m:zero_grad()
      lu.assertTrue(lps.allclose(m:backward(xi, gy:rows(i, i)), gx:rows(i, i), 1e-5, 1e-5), "input gradient " .. i)
      sum:add_(grads[1])
    end
    lu.assertTrue(lps.allclose(sum, gw, 1e-5, 1e-4), "weight gradient")
  end
end

-- Plain-Lua convolution (doubles): y, and for gy the gradients gx, gw, gb.
local function conv_ref(x, w, b, s, p, gy)
  local X, W, Bv = x:totable(), w:totable(), b:totable()
  local n, cin, h, wd = table.unpack(x:shape())
  local cout, k = w:shape()[1], w:shape()[3]
  local oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
  local G = gy and gy:totable()
  local y, gx, gw, gb = {}, {}, {}, {}
  for co = 1, cout do
    gb[co] = 0
    gw[co] = {}
    for ci = 1, cin do
      gw[co][ci] = {}
      for i = 1, k do gw[co][ci][i] = {} for j = 1, k do gw[co][ci][i][j] = 0 end end
    end
  end
  for bi = 1, n do
    y[bi], gx[bi] = {}, {}
    for ci = 1, cin do
      gx[bi][ci] = {}
      for i = 1, h do gx[bi][ci][i] = {} for j = 1, wd do gx[bi][ci][i][j] = 0 end end
    end
    for co = 1, cout do
      y[bi][co] = {}
      for oi = 1, oh do
        y[bi][co][oi] = {}
        for oj = 1, ow do
          local acc, g = Bv[co], G and G[bi][co][oi][oj]
          if g then gb[co] = gb[co] + g end
          for ci = 1, cin do for ki = 1, k do for kj = 1, k do
            local ii, jj = (oi - 1) * s - p + ki, (oj - 1) * s - p + kj
            if ii >= 1 and ii <= h and jj >= 1 and jj <= wd then
              local xv, wv = X[bi][ci][ii][jj], W[co][ci][ki][kj]
              acc = acc + xv * wv
              if g then
                gx[bi][ci][ii][jj] = gx[bi][ci][ii][jj] + g * wv
                gw[co][ci][ki][kj] = gw[co][ci][ki][kj] + g * xv
              end
            end
          end end end
          y[bi][co][oi][oj] = acc
        end
      end
    end
  end
  return lps.tensor(y), lps.tensor(gx), lps.tensor(gw), lps.tensor(gb)
end

local function assert_close(a, b, what)
  local scale = math.max(1, b:abs():max())
  local diff = (a - b):abs():max()
  lu.assertTrue(diff <= 2e-5 * scale, ("%s: max abs diff %.3g (scale %.3g)"):format(what, diff, scale))
end

function TestConv:test_paths_match_reference()
  -- Every kernel path (see conv.c's kernel_of) against the plain definition:
  -- odd and even sizes, planes narrower and wider than one SIMD group,
  -- padding 0 to 3, strides 1 to 3, kernels 1 to 5.
  local g = lps.generator(21)
  local cases = {
    -- cin, cout, k, stride, padding, h, w
    -- Winograd (3x3, stride 1, 4 or more input channels)
    {4, 3, 3, 1, 0, 6, 5}, {4, 3, 3, 1, 2, 5, 6}, {5, 6, 3, 1, 1, 13, 17}, {4, 3, 3, 1, 3, 4, 4},
    {6, 5, 3, 1, 1, 16, 15}, {16, 8, 3, 1, 1, 14, 14}, {4, 5, 3, 1, 0, 10, 12}, {4, 2, 3, 1, 0, 4, 6},
    -- conv_gemm.c's 8-float kernels: 7 and 5 rows (blocks of 4 rows, pairs
    -- of columns cut short), 30 tiles (an overlapping last block, a masked last vector)
    {5, 7, 3, 1, 1, 9, 11},
    -- conv_gemm_fma.c: blocks of 3 rows of B cut to 1 (7 channels) and to
    -- 2 (5, above); 21 tiles (two overlapping blocks of 16 columns)
    {7, 5, 3, 1, 1, 9, 9}, {4, 3, 3, 1, 0, 16, 4},
    -- 21 tiles a row: two 8-wide blocks (a carry between them), the 4-wide
    -- and the scalar input-gradient paths
    {4, 3, 3, 1, 1, 6, 41},
    -- direct (at most 9 inputs per output)
    {1, 5, 3, 1, 1, 9, 8}, {1, 4, 3, 1, 1, 28, 28}, {1, 3, 3, 2, 1, 11, 12}, {1, 2, 3, 2, 0, 9, 9},
    {2, 2, 2, 1, 0, 5, 5}, {1, 3, 3, 3, 2, 10, 11},
    -- im2col + GEMM
    {3, 4, 3, 1, 1, 7, 9}, {2, 3, 3, 1, 0, 6, 5}, {1, 3, 5, 1, 2, 11, 10}, {1, 4, 5, 2, 2, 12, 13},
    {2, 3, 3, 2, 1, 9, 10}, {3, 2, 5, 1, 2, 8, 7}, {2, 3, 5, 2, 2, 9, 10}, {3, 4, 3, 2, 1, 9, 8},
    {3, 4, 3, 2, 0, 10, 9}, {2, 2, 4, 3, 1, 11, 12}, {1, 2, 1, 1, 0, 3, 3}, {8, 16, 5, 2, 2, 14, 14},
    {4, 3, 3, 2, 1, 12, 11}, {4, 3, 3, 2, 3, 10, 9}, {5, 2, 5, 2, 1, 13, 16}, {3, 2, 1, 2, 1, 7, 6},
    -- im2col + GEMM whose input gradient is a convolution of gy (stride 1,
    -- fewer outputs than inputs): padding 0 to k - 1, an even kernel, a
    -- plane too wide for the cache (BLAS), and padding past k - 1 (not taken)
    {6, 2, 5, 1, 0, 9, 11}, {8, 3, 5, 1, 4, 7, 6}, {4, 2, 4, 1, 1, 9, 9}, {5, 3, 5, 1, 2, 14, 14},
    {16, 8, 5, 1, 2, 28, 28}, {3, 2, 3, 1, 3, 6, 7},
  }
  -- every width of a product from 14 to 52 columns (the nn kernels' last
  -- block of 8, 16 or 24 columns, overlapping the one before): 1x1 kernels
  -- on one row (the product in place), and 3x3 at stride 2 (im2col, the
  -- weights packed once per call)
  for ow = 14, 52 do
    cases[#cases + 1] = {2, 5, 1, 1, 0, 1, ow}
    cases[#cases + 1] = {3, 6, 3, 2, 1, 2, 2 * ow}
  end
  -- every set of product kernels this core runs (lps.set_conv_kernels), not only its best
  local sets = {}
  for _, name in ipairs{"unfused8", "fma8", "wide16"} do
    if pcall(lps.set_conv_kernels, name) then sets[#sets + 1] = name end
  end
  lu.assertTrue(#sets >= 1 and sets[1] == "unfused8", "every core runs unfused8")
  for _, kernels in ipairs(sets) do
    lps.set_conv_kernels(kernels)
    for _, c in ipairs(cases) do
      local cin, cout, k, s, p, h, w = table.unpack(c)
      local what = ("[%s] conv2d(%d, %d, k=%d, s=%d, p=%d) on %dx%d"):format(kernels, cin, cout, k, s, p, h, w)
      local m = nn.conv2d(cin, cout, k, {stride = s, padding = p, generator = g})
      local x = lps.randn({3, cin, h, w}, g)
      local params, grads = m:parameters()
      local y = m:forward(x)
      local gy = lps.randn(y:shape(), g)
      local yr, gxr, gwr, gbr = conv_ref(x, params[1], params[2], s, p, gy)
      assert_close(y, yr, what .. " output")
      m:zero_grad()
      assert_close(m:backward(x, gy), gxr, what .. " input gradient")
      assert_close(grads[1], gwr, what .. " weight gradient")
      assert_close(grads[2], gbr, what .. " bias gradient")
    end
  end
  lps.set_conv_kernels("auto")
end

function TestConv:test_fold_direct_same_bits()
  -- the input gradient of im2col + GEMM layers at strides 1 and 2 folds its
  -- columns straight into the input's layout (col2im_direct); the same bits
  -- as col2im + conv_unsplit (lps._set_conv_fold_direct(false)), stride 3
  -- (which always takes that path) as a control. Kernels 1 to 7, every
  -- padding, odd and even planes narrower and wider than a vector, rows
  -- that end inside the sample's last vector; gradients with -0.0, zeros
  -- and infinities (NaN sums).
  local g = lps.generator(17)
  local cases = {}
  for _, k in ipairs{1, 2, 3, 4, 5, 7} do
    for s = 1, 3 do
      for p = 0, k - 1 do
        for _, hw in ipairs{{k + 1, k + 2}, {7, 7}, {9, 14}, {14, 14}, {13, 17}, {28, 28}, {6, 33}} do
          local h, w = hw[1], hw[2]
          if h + 2 * p >= k and w + 2 * p >= k then
            -- cin k k > 9 (not the direct kernel), cout >= cin (not the
            -- transposed backward), not Winograd (3x3 at stride 1 from 4 channels)
            local cin = k * k > 9 and 1 or (k == 3 and s == 1) and 2 or 3
            cases[#cases + 1] = {cin, cin + 1 + (k + s + p) % 3, k, s, p, h, w}
          end
        end
      end
    end
  end
  local inf = 1 / 0
  for _, c in ipairs(cases) do
    local cin, cout, k, s, p, h, w = table.unpack(c)
    local what = ("conv2d(%d, %d, k=%d, s=%d, p=%d) on %dx%d"):format(cin, cout, k, s, p, h, w)
    local m = nn.conv2d(cin, cout, k, {stride = s, padding = p, generator = g})
    local x = lps.randn({3, cin, h, w}, g)
    local y = m:forward(x)
    local gys = {lps.randn(y:shape(), g), lps.zeros(y:shape()):mul_(-1)}
    local gy3 = lps.randn(y:shape(), g)
    local flat = gy3:reshape(-1)
    for i = 1, flat:numel(), 5 do flat[i] = -0.0 end
    for i = 3, flat:numel(), 11 do flat[i] = 0.0 end
    gys[3] = gy3
    local gy4 = lps.randn(y:shape(), g)
    gy4:reshape(-1)[1] = inf
    gy4:reshape(-1)[gy4:numel()] = -inf
    gys[4] = gy4
    for v, gy in ipairs(gys) do
      local out = {}
      for _, direct in ipairs{true, false} do
        lps._set_conv_fold_direct(direct)
        m:zero_grad()
        out[#out + 1] = m:backward(x, gy):clone()
      end
      lps._set_conv_fold_direct(true)
      T.assert_same_bits(out[1], out[2], what .. ": the folded input gradient (gradient " .. v .. ")")
    end
    if s <= 2 then -- and the values: the hand-written reference, to rounding
      m:zero_grad()
      local params = m:parameters()
      local _, gxr = conv_ref(x, params[1], params[2], s, p, gys[1])
      assert_close(m:backward(x, gys[1]), gxr, what .. " input gradient")
    end
  end
  lu.assertTrue(#cases > 100)
end

function TestConv:test_kernel_sets()
  -- lps.set_conv_kernels switches the products: unfused and fused sums of a
  -- 16-channel Winograd layer differ in their last bits, and agree to rounding;
  -- "wide16" (where the core has it) gives unfused8's bits; bad names are errors
  local g = lps.generator(5)
  local m = nn.conv2d(16, 16, 3, {padding = 1, generator = g})
  local x = lps.randn({2, 16, 14, 14}, g)
  local function run(name)
    lps.set_conv_kernels(name)
    lu.assertEquals(lps.build_info().conv_kernels, name)
    return m:forward(x):clone()
  end
  local ok = pcall(run, "unfused8")
  lu.assertTrue(ok)
  local y0 = run("unfused8")
  if pcall(lps.set_conv_kernels, "fma8") then
    local y1 = run("fma8")
    lu.assertFalse(lps.allclose(y0, y1, 0, 0), "fused and unfused products give the same bits: no switch?")
    lu.assertTrue(lps.allclose(y0, y1, 1e-5, 1e-6))
  end
  if pcall(lps.set_conv_kernels, "wide16") then lu.assertTrue(lps.allclose(y0, run("wide16"), 0, 0)) end
  lps.set_conv_kernels()
  lu.assertErrorMsgContains("unknown kernels 'fast'", lps.set_conv_kernels, "fast")
  lu.assertNotEquals(lps.set_conv_kernels("auto"), nil)
end

function TestConv:test_threads_agree_and_repeat()
  -- Large enough batches are split over threads by samples, each thread
  -- adding its own share of the weight gradients, summed in thread order:
  -- close to one thread's result, and the same bits run after run.
  local threads = lps.get_num_threads()
  local g = lps.generator(31)
  -- direct, Winograd, im2col + GEMM
  for _, c in ipairs{{1, 32, 3, 1, 1, 28}, {8, 16, 3, 1, 1, 14}, {8, 16, 5, 2, 2, 14}} do
    local cin, cout, k, s, p, hw = table.unpack(c)
    local what = ("conv2d(%d, %d, k=%d, s=%d, p=%d)"):format(cin, cout, k, s, p)
    local m = nn.conv2d(cin, cout, k, {stride = s, padding = p, generator = g})
    local x = lps.randn({32, cin, hw, hw}, g)
    local gy = lps.randn(m:forward(x):shape(), g)
    local function run(nt)
      lps.set_num_threads(nt)
      m:zero_grad()
      local y = m:forward(x)
      local gx = m:backward(x, gy)
      local _, grads = m:parameters()
      return {y, gx, grads[1]:clone(), grads[2]:clone()}
    end
    local one, two, again = run(1), run(2), run(2)
    for i, name in ipairs{"output", "input gradient", "weight gradient", "bias gradient"} do
      -- sums in another order: float rounding, relative to the largest value
      local scale = math.max(1, one[i]:abs():max())
      lu.assertTrue((two[i] - one[i]):abs():max() <= 1e-5 * scale, what .. " " .. name .. ": 2 threads vs 1")
      lu.assertTrue(lps.allclose(two[i], again[i], 0, 0), what .. " " .. name .. ": 2 threads twice")
    end
  end
  lps.set_num_threads(threads)
end

TestPool = {}

function TestPool:test_forward_and_ties()
  local m = nn.maxpool2d(2)
  local x = lps.tensor{{{{1, 3, 5, 5}, {2, 0, 1, 5}}}} -- 1x1x2x4
  lu.assertEquals(m:forward(x):totable(), {{{{3, 5}}}})
  -- ties: the first maximum (row-major in the window) takes the gradient,
  -- as in PyTorch; the window's gradient is not lost or duplicated
  local g = m:backward(x, lps.tensor{{{{7, 9}}}})
  lu.assertEquals(g:totable(), {{{{0, 7, 9, 0}, {0, 0, 0, 0}}}})
  -- zeros of both signs tie too: the first one is the maximum, sign and all
  -- (a row of 4 windows, as the vector path takes them, and one alone)
  local z = m:forward(lps.tensor{{{{-0.0, 0.0, 0.0, -0.0, 1, 2, 3, 4}, {0.0, 0.0, -0.0, -0.0, 0, 0, 0, 0}}}})
  lu.assertEquals({1 / z:get(1, 1, 1, 1), 1 / z:get(1, 1, 1, 2)}, {-math.huge, math.huge})
  lu.assertEquals(1 / m:forward(lps.tensor{{{{-0.0, 0.0}, {0.0, 0.0}}}}):get(1, 1, 1, 1), -math.huge)
  local all = lps.full(1, 1, 3, 3, 2)
  local g2 = nn.maxpool2d(2, {stride = 1}):backward(all, lps.ones(1, 1, 2, 2))
  lu.assertEquals(g2:totable(), {{{{1, 1, 0}, {1, 1, 0}, {0, 0, 0}}}})
end

function TestPool:test_gradcheck()
  local g = lps.generator(7)
  gradcheck(nn.maxpool2d(2), distinct(g, 2, 3, 4, 6), "maxpool2d k2")
  gradcheck(nn.maxpool2d(3, {stride = 2}), distinct(g, 1, 2, 7, 5), "maxpool2d k3 s2 (overlapping)")
  gradcheck(nn.maxpool2d(2), distinct(g, 1, 2, 5, 17), "maxpool2d k2 wide")
  gradcheck(nn.maxpool2d(2), distinct(g, 2, 1, 7, 9), "maxpool2d k2 odd sizes")
  lu.assertEquals(nn.maxpool2d(2):forward(lps.zeros(1, 1, 5, 5)):shape(), {1, 1, 2, 2})
  T.assert_error_contains("kernel 3 is larger than its input: its input (1x1x2x9)", nn.maxpool2d(3).forward, nn.maxpool2d(3), lps.zeros(1, 1, 2, 9))
end

-- Plain-Lua max pooling (first maximum wins) for cross-checking the fast paths.
local function pool_ref(x, k, s, gy)
  local b, c, h, w = table.unpack(x:shape())
  local oh, ow = (h - k) // s + 1, (w - k) // s + 1
  local y, gx = lps.zeros(b, c, oh, ow), lps.zeros(b, c, h, w)
  for n = 1, b do for ch = 1, c do for i = 1, oh do for j = 1, ow do
    local bi, bj = (i - 1) * s + 1, (j - 1) * s + 1
    local m = x:get(n, ch, bi, bj)
    for di = 0, k - 1 do for dj = 0, k - 1 do
      local v = x:get(n, ch, (i - 1) * s + 1 + di, (j - 1) * s + 1 + dj)
      if v > m or (v ~= v and m == m) then m, bi, bj = v, (i - 1) * s + 1 + di, (j - 1) * s + 1 + dj end
    end end
    y:set(n, ch, i, j, m)
    gx:set(n, ch, bi, bj, gx:get(n, ch, bi, bj) + gy:get(n, ch, i, j))
  end end end end
  return y, gx
end

function TestPool:test_fast_path_matches_reference()
  -- wide and odd-sized planes (the 2x2 path works 4 windows at a time),
  -- values from a small set so ties are everywhere, and a NaN
  local g = lps.generator(12)
  for _, k in ipairs{2, 3} do
    local x = (lps.rand(2, 3, 7, 19, g) * 3):add_(-0.5)
    local flat = x:reshape(-1)
    for i = 1, flat:numel() do flat[i] = math.floor(flat[i]) end
    flat[40] = 0 / 0
    local m = nn.maxpool2d(k)
    local y = m:forward(x)
    local gy = lps.rand(y:shape(), g)
    local yr, gr = pool_ref(x, k, k, gy)
    local yt, yrt = y:reshape(-1), yr:reshape(-1)
    for i = 1, yt:numel() do
      local a, b = yt[i], yrt[i]
      lu.assertTrue(a == b or (a ~= a and b ~= b), "output " .. i)
    end
    lu.assertTrue(lps.allclose(m:backward(x, gy), gr, 0, 0), "k=" .. k .. " gradient")
  end
end

function TestPool:test_threads_give_the_same_values()
  -- large inputs are split over threads by planes (relu by ranges): every
  -- value is computed alone, so any thread count gives the same bits
  local threads = lps.get_num_threads()
  local g = lps.generator(19)
  local x = lps.randn(4, 16, 66, 64, g)
  for _, m in ipairs{nn.maxpool2d(2), nn.maxpool2d(3, {stride = 2}), nn.relu()} do
    local gy = lps.randn(m:forward(x):shape(), g)
    local res = {}
    for _, nt in ipairs{1, 2} do
      lps.set_num_threads(nt)
      res[nt] = {m:forward(x), m:backward(x, gy)}
    end
    lu.assertTrue(lps.allclose(res[1][1], res[2][1], 0, 0), m:type() .. " output")
    lu.assertTrue(lps.allclose(res[1][2], res[2][2], 0, 0), m:type() .. " gradient")
  end
  lps.set_num_threads(threads)
end

function TestPool:test_nan_wins()
  local x = lps.tensor{{{{1, 0 / 0}, {3, 2}}}}
  local y = nn.maxpool2d(2):forward(x):get(1, 1, 1, 1)
  lu.assertTrue(y ~= y)
end

TestSequential = {}

function TestSequential:test_gradcheck_mlp()
  local g = lps.generator(8)
  local m = nn.mlp{6, 5, 4, 3, generator = g, activation = "tanh"}
  gradcheck(m, lps.randn(4, 6, g), "mlp tanh")
  local r = nn.mlp{6, 5, 3, generator = g}
  gradcheck(r, lps.randn(4, 6, g), "mlp relu")
end

function TestSequential:test_gradcheck_cnn()
  local g = lps.generator(10)
  local m = nn.sequential{
    nn.conv2d(2, 3, 3, {padding = 1, generator = g}), nn.tanh(), nn.maxpool2d(2),
    nn.conv2d(3, 2, 2, {stride = 2, generator = g}), nn.flatten(), nn.linear(2, 3, g),
  }
  local x = distinct(g, 2, 2, 4, 4)
  -- Finite differences are only meaningful away from pooling ties: check
  -- that every window's winner leads the runner-up by far more than eps.
  local a = m[2]:forward(m[1]:forward(x))
  local gap = math.huge
  for b = 1, 2 do for c = 1, 3 do for i = 0, 1 do for j = 0, 1 do
    local v = {a:get(b, c, 2 * i + 1, 2 * j + 1), a:get(b, c, 2 * i + 1, 2 * j + 2),
               a:get(b, c, 2 * i + 2, 2 * j + 1), a:get(b, c, 2 * i + 2, 2 * j + 2)}
    table.sort(v)
    gap = math.min(gap, v[4] - v[3])
  end end end end
  lu.assertTrue(gap > 0.02, "pooling windows too close to a tie for finite differences")
  gradcheck(m, x, "cnn")
end

function TestSequential:test_relu_pool_pair_matches_layers()
  -- A sequential runs relu + max-pooling as one step (pool, then relu on the
  -- pooled values); it must give what the layers give one by one, ties,
  -- all-negative windows and a NaN included.
  local g = lps.generator(17)
  for _, k in ipairs{2, 3, -2} do -- -2: k = 2 with a NaN in the input
    local nan = k < 0
    k = math.abs(k)
    local conv, relu, pool = nn.conv2d(2, 3, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(k, {stride = 2})
    local m = nn.sequential{conv, relu, pool, nn.flatten()}
    local x = (lps.rand(2, 2, 7, 9, g) * 5):add_(-2.5)
    local flat = x:reshape(-1)
    for i = 1, flat:numel() do flat[i] = math.floor(flat[i]) end
    if nan then flat[30] = 0 / 0 end
    local y = m:forward(x)
    local gy = lps.randn(y:shape(), g)
    m:zero_grad()
    local gx = m:backward(x, gy)
    local _, grads = m:parameters()
    local gw, gb = grads[1]:clone(), grads[2]:clone()
    -- one by one
    local a = conv:forward(x)
    local r = relu:forward(a)
    local q = pool:forward(r)
    -- equal, or NaN in both
    local function same(u, v, what)
      local uf, vf = u:reshape(-1), v:reshape(-1)
      lu.assertEquals(uf:numel(), vf:numel(), what)
      for i = 1, uf:numel() do
        lu.assertTrue(uf[i] == vf[i] or (uf[i] ~= uf[i] and vf[i] ~= vf[i]), ("k=%d %s %d"):format(k, what, i))
      end
    end
    same(y, q, "output")
    m:zero_grad()
    local gx1 = conv:backward(x, relu:backward(a, pool:backward(r, gy:reshape(table.unpack(q:shape())))))
    same(gx, gx1, "input gradient")
    same(gw, grads[1], "weight gradient")
    same(gb, grads[2], "bias gradient")
  end
end

function TestSequential:test_relu_fused_layers_match_layers()
  -- A sequential runs batch norm + relu, and a residual block + relu, as one
  -- pass each (forward_relu, and batch norm's backward_relu); the same bits
  -- as the layers one by one, in train and in eval mode.
  local g = lps.generator(23)
  local conv, bn, relu = nn.conv2d(2, 4, 3, {padding = 1, bias = false, generator = g}), nn.batchnorm2d(4), nn.relu()
  local body = {nn.conv2d(4, 4, 3, {padding = 1, generator = g}), nn.batchnorm2d(4)}
  local res, relu2 = nn.residual{body = body}, nn.relu()
  local head = nn.linear(4 * 6 * 7, 3, g)
  local m = nn.sequential{conv, bn, relu, res, relu2, nn.flatten(), head}
  T.randomize_state(m, g)
  for _, mode in ipairs{"train", "eval"} do
    if mode == "eval" then m:evaluate() end
    local x = lps.randn(3, 2, 6, 7, g)
    local y = m:forward(x)
    local gy = lps.randn(y:shape(), g)
    m:zero_grad()
    local gx = m:backward(x, gy)
    local _, grads = m:parameters()
    local saved = {}
    for i, t in ipairs(grads) do saved[i] = t:clone() end
    -- one by one
    local a = conv:forward(x)
    local b = bn:forward(a)
    local r = relu:forward(b)
    local c = res:forward(r)
    local r2 = relu2:forward(c)
    local q = head:forward(r2:reshape(3, -1))
    lu.assertTrue(lps.allclose(y, q, 0, 0), mode .. " output")
    m:zero_grad()
    local g4 = relu2:backward(c, head:backward(r2:reshape(3, -1), gy):reshape(table.unpack(c:shape())))
    local gx1 = conv:backward(x, bn:backward(a, relu:backward(b, res:backward(r, g4))))
    lu.assertTrue(lps.allclose(gx, gx1, 0, 0), mode .. " input gradient")
    for i, t in ipairs(grads) do lu.assertTrue(lps.allclose(saved[i], t, 0, 0), mode .. " gradient " .. i) end
    -- the sequential's backward again, after the layers' own forwards of the same inputs
    m:zero_grad()
    lu.assertTrue(lps.allclose(m:backward(x, gy), gx, 0, 0), mode .. " input gradient again")
  end
  m:train()
end

function TestSequential:test_contract()
  local a, b = nn.linear(3, 4), nn.linear(4, 2)
  local m = nn.sequential{a, nn.relu(), b}
  lu.assertEquals(#m, 3)
  lu.assertTrue(rawequal(m[1], a))
  lu.assertEquals(m[2]:type(), "relu")
  -- parameters share memory with the modules
  local p, g = m:parameters()
  lu.assertEquals(#p, 4)
  lu.assertEquals(#g, 4)
  p[3]:fill_(0.25)
  lu.assertEquals(b:parameters()[1]:get(1, 1), 0.25)
  -- batches of any size, and backward after a forward of another input
  local x1, x2 = lps.randn(5, 3), lps.randn(2, 3)
  m:forward(x1)
  lu.assertEquals(m:backward(x2, lps.ones(2, 2)):shape(), {2, 3})
  lu.assertEquals(m:num_parameters(), 3 * 4 + 4 + 4 * 2 + 2)
  lu.assertTrue(m:is_training())
  m:evaluate()
  lu.assertFalse(a:is_training())
  m:train()
  lu.assertTrue(a:is_training())
  lu.assertStrContains(tostring(m), "(2): Linear(in_features=4, out_features=2)")
  T.assert_error_contains("appear only once", nn.sequential, {a, a})
  T.assert_error_contains("appear only once", nn.sequential, {nn.sequential{a}, a})
  T.assert_error_contains("expected a module", nn.sequential, {a, 3})
  T.assert_error_contains("at least one", nn.sequential, {})
end

function TestSequential:test_shape_error_names_layer()
  local m = nn.sequential{nn.linear(3, 5), nn.relu(), nn.linear(4, 2)}
  T.assert_error_contains('sequential layer 3: linear(4 -> 2): "in" is 4 but its input (1x5)', m.forward, m, lps.zeros(1, 3))
end

function TestSequential:test_close()
  local a = nn.linear(2, 2)
  local m = nn.sequential{a}
  a:close()
  -- the sequential keeps its own reference: it still works
  lu.assertEquals(m:forward(lps.zeros(1, 2)):shape(), {1, 2})
  T.assert_error_contains("closed", a.forward, a, lps.zeros(1, 2))
  lu.assertStrContains(tostring(a), "closed")
end

TestCrossEntropy = {}

function TestCrossEntropy:test_values()
  local ce = nn.cross_entropy()
  lu.assertAlmostEquals(ce:forward(lps.tensor{{0, 0}}, {1}), math.log(2), 1e-12)
  -- mean over the batch: log(1 + e) and log(1 + e^-1)
  local z = lps.tensor{{1, 2}, {1, 2}}
  lu.assertAlmostEquals(ce:forward(z, lps.tensor{1, 2}),
    (math.log(1 + math.exp(1)) + math.log(1 + math.exp(-1))) / 2, 1e-7)
  -- gradient: (softmax - onehot) / batch
  local g = ce:backward(z, {1, 2})
  local s = 1 / (1 + math.exp(-1))
  lu.assertAlmostEquals(g:get(1, 1), (1 - s - 1) / 2, 1e-7)
  lu.assertAlmostEquals(g:get(2, 2), (s - 1) / 2, 1e-7)
  lu.assertAlmostEquals(g:sum(), 0, 1e-7)
  lu.assertEquals(tostring(ce), "CrossEntropyLoss()")
end

function TestCrossEntropy:test_large_logits()
  local ce = nn.cross_entropy()
  local z = lps.tensor{{1000, 0, -1000}, {-5000, 5000, 0}}
  lu.assertAlmostEquals(ce:forward(z, {1, 2}), 0, 1e-12)
  lu.assertAlmostEquals(ce:forward(z, {2, 1}), (1000 + 10000) / 2, 1e-9)
  local g = ce:backward(z, {2, 1})
  lu.assertEquals(g:totable(), {{0.5, -0.5, 0}, {-0.5, 0.5, 0}})
  -- no NaN or infinity anywhere
  lu.assertTrue(g:abs():max() <= 0.5)
end

function TestCrossEntropy:test_gradcheck()
  local g = lps.generator(10)
  local z = lps.randn(4, 5, g) * 3
  local labels = {2, 5, 1, 3}
  local ce = nn.cross_entropy()
  local analytic = ce:backward(z, labels)
  T.assert_grad_close(analytic, T.numgrad(function() return ce:forward(z, labels) end, z), 1e-2, "cross_entropy")
end

function TestCrossEntropy:test_errors()
  local ce = nn.cross_entropy()
  T.assert_error_contains("labels entry 2 is 3, not a class number 1..2", ce.forward, ce, lps.zeros(2, 2), {1, 3})
  T.assert_error_contains("labels entry 1 is 0, not a class number 1..2", ce.forward, ce, lps.zeros(2, 2), lps.tensor{0, 1})
  T.assert_error_contains("labels entry 1 is 1.5", ce.forward, ce, lps.zeros(1, 2), {1.5})
  T.assert_error_contains("2 labels for 3 samples", ce.forward, ce, lps.zeros(3, 2), {1, 1})
  T.assert_error_contains("should be (batch x classes)", ce.forward, ce, lps.zeros(3), {1, 1, 1})
end

TestFrozen = {}

-- A frozen module's backward gives the same input gradient and leaves the
-- parameter gradients alone, for every conv kernel (direct: 3x3 on one
-- channel; Winograd: 3x3 stride 1 on 4+; im2col + GEMM: the rest) and linear.
function TestFrozen:test_input_gradient_only()
  local g = lps.generator(31)
  local m = nn.sequential{nn.conv2d(1, 4, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2),
    nn.conv2d(4, 6, 3, {padding = 1, generator = g}), nn.relu(),
    nn.conv2d(6, 5, 5, {stride = 2, padding = 2, generator = g}), nn.relu(), nn.flatten(),
    nn.linear(5 * 4 * 4, 3, g)}
  local x, gy = lps.randn(6, 1, 14, 14, g), lps.randn(6, 3, g)
  m:zero_grad()
  local gx = m:backward(x, gy)
  local _, grads = m:parameters()
  local want = {}
  for i, t in ipairs(grads) do want[i] = t:clone() end
  m:freeze()
  lu.assertEquals(m:backward(x, gy):totable(), gx:totable())
  for i, t in ipairs(grads) do lu.assertEquals(t:totable(), want[i]:totable(), "gradient " .. i) end
  m:freeze(false)
  m:backward(x, gy) -- unfrozen again: the gradients add up once more
  for i, t in ipairs(grads) do lu.assertTrue(lps.allclose(t, want[i] * 2, 1e-5, 1e-6), "gradient " .. i) end
end

-- input_gradients: one forward, then the input gradient of each stacked
-- block of output gradients, the same as one backward per block.
function TestFrozen:test_input_gradients_match_backward()
  local g = lps.generator(32)
  local m = nn.sequential{nn.conv2d(1, 3, 5, {stride = 2, padding = 2, generator = g}), nn.relu(),
    nn.conv2d(3, 4, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2), nn.flatten(),
    nn.linear(4 * 7 * 7, 3, g)}
  local x = lps.randn(5, 1, 28, 28, g)
  local gy = lps.randn(15, 3, g) -- three blocks of five rows
  local y, gx = m:input_gradients(x, gy)
  lu.assertTrue(lps.allclose(y, m:forward(x)))
  lu.assertEquals(gx:shape(), {15, 1, 28, 28})
  for b = 1, 3 do
    local want = m:backward(x, gy:rows(5 * b - 4, 5 * b))
    lu.assertTrue(lps.allclose(gx:rows(5 * b - 4, 5 * b), want, 1e-6, 1e-7), "block " .. b)
  end
  T.assert_error_contains("blocks of 5 rows", m.input_gradients, m, x, lps.zeros(7, 3))
end

-- input_gradients(x, gy, group): each block's gradients averaged over groups
-- of samples, the means of the per-sample ones; a frozen first conv or
-- linear layer maps the means instead (the same values up to rounding), a
-- first layer that cannot (unfrozen, or run fused with the next) averages
-- after.
function TestFrozen:test_input_gradients_group_means()
  local g = lps.generator(33)
  local function cnn()
    return nn.sequential{nn.conv2d(1, 3, 5, {stride = 2, padding = 2, generator = g}), nn.relu(),
      nn.conv2d(3, 4, 3, {stride = 2, padding = 1, generator = g}), nn.relu(), nn.flatten(),
      nn.linear(4 * 7 * 7, 3, g)}
  end
  local mlp = nn.sequential{nn.linear(20, 7, g), nn.relu(), nn.linear(7, 3, g)}
  local bn = nn.sequential{nn.batchnorm1d(20), nn.relu(), nn.linear(20, 3, g)} -- a fused pair first
  local cases = {{cnn(), lps.randn(6, 1, 28, 28, g), true}, {cnn(), lps.randn(6, 1, 28, 28, g), false},
    {mlp, lps.randn(6, 20, g), true}, {bn, lps.randn(6, 20, g), true}}
  for i, c in ipairs(cases) do
    local m, x, frozen = table.unpack(c)
    m:evaluate()
    m:freeze(frozen)
    local gy = lps.randn(12, 3, g) -- two blocks of six rows
    local _, each = m:input_gradients(x, gy)
    for _, group in ipairs{1, 2, 3, 6} do
      local y, gx = m:input_gradients(x, gy, group)
      lu.assertTrue(lps.allclose(y, m:forward(x), 0, 0))
      local d = x:numel() // 6
      local want = each:reshape(12 // group, group, d):mean(2)
      lu.assertEquals(gx:shape()[1], 12 // group)
      local diff = (gx:reshape(12 // group, d) - want):abs():max()
      lu.assertTrue(diff <= 1e-6 * math.max(1, want:abs():max()), ("case %d, group %d: %g"):format(i, group, diff))
    end
    lu.assertErrorMsgContains("group", m.input_gradients, m, x, gy, 4)
    lu.assertErrorMsgContains("group", m.input_gradients, m, x, gy, 0)
  end
  -- unfrozen: the parameter gradients are those of the per-sample backward
  local m, x = cases[2][1], cases[2][2]
  m:zero_grad()
  m:input_gradients(x, lps.ones(6, 3), 3)
  local _, grads = m:parameters()
  local got = grads[1]:clone()
  m:zero_grad()
  m:backward(x, lps.ones(6, 3))
  lu.assertTrue(lps.allclose(got, grads[1], 1e-6, 1e-7))
end

-- The fast path is taken: a frozen first linear layer maps the group's mean
-- output gradient (1e30 and -1e30: a mean of 0), where mapping each sample
-- (as an unfrozen one must) overflows to +inf and -inf, whose mean is NaN.
function TestFrozen:test_input_gradients_maps_the_means()
  local m = nn.sequential{nn.linear(1, 1), nn.linear(1, 1)}
  local p = m:parameters()
  p[1]:copy(lps.tensor{{1e10}}); p[2]:zero_(); p[3]:copy(lps.tensor{{1}}); p[4]:zero_()
  local x, gy = lps.ones(2, 1), lps.tensor{{1e30}, {-1e30}}
  m:freeze()
  local _, gx = m:input_gradients(x, gy, 2)
  lu.assertEquals(gx:totable(), {{0}})
  m:freeze(false)
  _, gx = m:input_gradients(x, gy, 2)
  lu.assertNaN(gx[1][1])
  T.assert_error_contains("has no samples", m.input_gradients, m, lps.zeros(0, 1), lps.zeros(0, 1))
end

function TestFrozen:test_output_shape()
  local g = lps.generator(34)
  local m = nn.sequential{nn.conv2d(1, 3, 5, {stride = 2, padding = 2, generator = g}), nn.relu(), nn.flatten(),
    nn.linear(3 * 14 * 14, 4, g)}
  lu.assertEquals(m:output_shape{7, 1, 28, 28}, {7, 4})
  lu.assertEquals(nn.relu():output_shape{2, 3}, {2, 3})
  T.assert_error_contains("channels", m.output_shape, m, {7, 2, 28, 28})
  lu.assertErrorMsgContains("sizes", m.output_shape, m, {7, -1})
  -- sizes no tensor has: refused before the shape flow's arithmetic
  -- overflowed (UBSan in conv2d's flow; found by the Lua API fuzzer)
  T.assert_error_contains("sequential: element count overflows (limit 2^40) at dimension 4", m.output_shape, m,
    {2, 1, 6, math.maxinteger})
  T.assert_error_contains("relu: element count overflows", nn.relu().output_shape, nn.relu(), {1 << 31, 1 << 31})
  -- and beside an empty batch, where the product alone stays 0
  T.assert_error_contains("sequential: element count overflows (limit 2^40) at dimension 4", m.output_shape, m,
    {0, 1, 6, math.maxinteger})
  T.assert_error_contains("zeros: element count overflows (limit 2^40) at dimension 2", lps.zeros, 0, math.maxinteger)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
