-- The second-order network for any architecture (lualps/similarity/archnet.lua,
-- csrc/lps/units.c): its preprocessing against hand-computed values,
-- finite-difference gradients of every parameter, and invariance to the
-- symmetries of CNNs and MLPs of several depths (channel permutations and
-- positive rescaling of ReLU units leave function and embedding unchanged).
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local K = require("lualps.core")._lps
local nn = lps.nn

local g = lps.generator(77)

-- The weights of an lps.nn module as a list (the module keeps them).
local function weights(m)
  local w = {}
  for i, e in ipairs(m:named_parameters()) do w[i] = e.tensor end
  return w
end

local function cnn3()
  return nn.sequential{nn.conv2d(1, 4, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2),
    nn.conv2d(4, 5, 5, {stride = 2, padding = 2, generator = g}), nn.relu(),
    nn.conv2d(5, 6, 3, {stride = 2, padding = 1, generator = g}), nn.relu(), nn.flatten(),
    nn.linear(6 * 4 * 4, 3, g)}
end
local function cnn2()
  return nn.sequential{nn.conv2d(1, 6, 5, {stride = 2, padding = 2, generator = g}), nn.relu(),
    nn.conv2d(6, 4, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2), nn.flatten(),
    nn.linear(4 * 7 * 7, 2, g)}
end

TestNetView = {}

function TestNetView:test_kernel_features_centre_small_kernels()
  local W = lps.arange(2 * 9):reshape(2, 1, 3, 3)
  local U = K.net_prepare({W, lps.zeros(2), lps.ones(1, 2), lps.zeros(1)}, false, 5).first
  lu.assertEquals(U:shape(), {2, 25})
  local row = U[1]:totable()
  -- a 3x3 kernel 0..8 inside a 5x5 window of zeros
  lu.assertEquals(row, {0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 5, 0, 0, 6, 7, 8, 0, 0, 0, 0, 0, 0})
  -- a template size no tensor holds (its square overflowed int64: UBSan; the Lua API fuzzer)
  for _, s in ipairs{math.mininteger, 0, 1 << 40} do
    T.assert_error_contains("net_prepare: template size " .. s .. " out of range for 1 input channels",
      K.net_prepare, {W, lps.zeros(2), lps.ones(1, 2), lps.zeros(1)}, false, s)
  end
end

function TestNetView:test_mixing_and_importance_by_hand()
  -- conv 2 -> 1 channel, 2x2 kernels (sums 10 and -2); then linear over 1 channel x 4 positions
  local W1 = lps.ones(2, 1, 3, 3)
  local W2 = lps.tensor{1, 2, 3, 4, -1, -1, 0, 0}:reshape(1, 2, 2, 2)
  local W3 = lps.tensor{{1, 2, 2, 4}, {0, 0, 3, 4}}
  local p = K.net_prepare({W1, lps.zeros(2), W2, lps.zeros(1), W3, lps.zeros(2)}, false, 3)
  lu.assertEquals(p.mix[2]:totable(), {{10, -2}})
  lu.assertEquals(p.mix[3]:totable(), {{9}, {7}})
  -- importance of conv-1 channels: norms of their input slices in W2: sqrt(30), sqrt(2)
  lu.assertAlmostEquals(p.imp[1][1], math.sqrt(30), 1e-6)
  lu.assertAlmostEquals(p.imp[1][2], math.sqrt(2), 1e-6)
  -- importance of the conv-2 channel: the norm of its 4 columns in W3
  lu.assertAlmostEquals(p.imp[2][1], math.sqrt(1 + 4 + 4 + 16 + 9 + 16), 1e-6)
end

function TestNetView:test_chain_norm_keeps_a_cnns_function()
  for _, make in ipairs{cnn3, cnn2} do
    local m = make()
    local x = lps.rand(3, 1, 28, 28, g)
    local before = m:forward(x)
    local w = weights(m) -- shares the module's memory: normalized in place
    K.chain_normalize_net_(w) -- the shapes tell the positions of the linear layer after the convs
    lu.assertTrue(lps.allclose(m:forward(x), before, 1e-4, 1e-5), "the function is unchanged")
    -- every hidden unit's (incoming weights, bias) has norm 1
    for l = 1, #w // 2 - 1 do
      local W, b = w[2 * l - 1], w[2 * l]
      local rows = W:reshape(W:size(1), W:numel() // W:size(1))
      for j = 1, W:size(1) do
        lu.assertAlmostEquals((rows[j] * rows[j]):sum() + b[j] ^ 2, 1, 1e-5)
      end
    end
  end
end

TestArchGradients = {}

-- Every parameter's gradient against central differences, on a batch with
-- an MLP and two CNNs, every slot, cross-entropy + triplet + relations.
function TestArchGradients:test_finite_differences()
  local net = lps.similarity.network{families = {"mlp", "cnn"}, input_dim = 12, width = 4, embed = 3,
    classes = 2, seed = 3, pool_eps = 1e-2, slots = {"first", "last", "head"}}
  local mlp = {}
  for _, sz in ipairs{{12, 5}, {5, 4}, {4, 2}} do
    mlp[#mlp + 1] = lps.randn(sz[2], sz[1], g):mul_(0.5)
    mlp[#mlp + 1] = lps.randn(sz[2], g):mul_(0.1)
  end
  local models = {mlp, weights(cnn2()), weights(cnn3())}
  local labels = {1, 2, 1}
  local rel = lps.tensor{{0.9, 0.1}, {0.1, 0.8}}
  local opts = {loss = "both", relations = rel, relation_weight = 0.5, margin = 0.5}
  local function f()
    local Y = net:forward(models)
    local l = net:loss(Y, labels, opts)
    net.cache = nil
    return l
  end
  T.check_parameter_gradients(net, function()
    local _, dY = net:loss(net:forward(models), labels, opts)
    net:backward(dY)
  end, f, {check = function(p) return p:numel() <= 400 or T.scale ~= "small" end})
end

-- The templates slot (and its unit supervision) against central differences:
-- an MLP and a CNN on 28x28 inputs, small encoder.
function TestArchGradients:test_templates_finite_differences()
  local net = lps.similarity.network{families = {"mlp", "cnn"}, width = 3, embed = 2, classes = 2, seed = 4,
    pool_eps = 1e-2, noise = 2, template_pool = 7, unit_classes = 10, domains = {"identity", "invert"}}
  local mlp = weights(nn.mlp{784, 6, 3, generator = g})
  local cnn = weights(cnn2())
  mlp.classes, mlp.domain = {0, 3, 5}, "invert"
  cnn.classes, cnn.domain = {1, 2}, "identity"
  cnn.arch = cnn2():arch()
  local models, labels = {mlp, cnn}, {1, 2}
  local function f()
    net.training_units = true
    local Y = net:forward(models)
    net.training_units = nil
    local l = net:loss(Y, labels, {loss = "xent"}) + net.aux_loss
    net.cache = nil
    return l
  end
  T.check_parameter_gradients(net, function()
    net.training_units = true
    local Y = net:forward(models)
    net.training_units = nil
    local _, dY = net:loss(Y, labels, {loss = "xent"})
    net:backward(dY)
  end, f)
end

-- template_extras by hand: a linear model with zero weights has constant
-- logits b on every noise image, so each template is zero and carries the
-- one-hot of its 3 classes and the centred logits (-2, -1, 3) per range.
function TestArchGradients:test_template_extras_by_hand()
  local net = lps.similarity.network{families = {"mlp"}, noise = 2, template_pool = 7,
    noise_ranges = {{0, 0.2}, {0.8, 1}}}
  local model = {lps.zeros(3, 784), lps.tensor{1, 2, 6}}
  local Tm = net:templates(model, "mlp")
  local w = 2 * 16 -- two ranges of 4x4 pooled templates
  lu.assertEquals(Tm:shape(), {3, w + 8 + 2})
  local centred = {-2, -1, 3}
  for c = 1, 3 do
    for j = 1, w do lu.assertEquals(Tm:get(c, j), 0) end
    for j = 1, 8 do lu.assertEquals(Tm:get(c, w + j), j == 3 and 1 or 0) end
    for r = 1, 2 do lu.assertAlmostEquals(Tm:get(c, w + 8 + r), centred[c], 1e-6) end
  end
  -- without extras: the templates alone
  local plain = lps.similarity.network{families = {"mlp"}, noise = 2, template_pool = 7, template_extras = false}
  lu.assertEquals(plain:templates(model, "mlp"):shape(), {3, w})
end

-- The templates by their definition: for each class c and noise range, the
-- mean over the range's images of d(logit_c - mean logit)/dx, taken here by
-- one plain backward per class and image, then pooled q x q and normalized.
-- (templates.lua averages in C, maps the means through the first layer and
-- takes the last class as minus the sum of the others.) Classes 1 to 4.
function TestArchGradients:test_templates_by_definition()
  local net = lps.similarity.network{families = {"mlp", "cnn"}, noise = 3, template_pool = 4, template_extras = false,
    noise_ranges = {{0, 0.3}, {0.6, 1}}}
  local models = {}
  for k = 1, 4 do
    local c = nn.sequential{nn.conv2d(1, 3, 5, {stride = 2, padding = 2, generator = g}), nn.relu(),
      nn.conv2d(3, 4, 3, {stride = 2, padding = 1, generator = g}), nn.relu(), nn.flatten(), nn.linear(4 * 7 * 7, k, g)}
    models[#models + 1] = c
    models[#models + 1] = nn.mlp{784, 9, k, generator = g}
  end
  for i, m in ipairs(models) do
    local w = weights(m)
    w.arch = m:arch()
    local T = net:templates(w)
    local k = T:size(1)
    local x = net.noise_x -- the 2 x 3 noise images the templates read
    local conv = w[1]:dim() == 4
    local want = lps.zeros(k, 2 * 49)
    for c = 1, k do
      for r = 1, 2 do
        local sum = lps.zeros(784)
        for p = 1, 3 do
          local xi = x:rows((r - 1) * 3 + p, (r - 1) * 3 + p)
          if conv then xi = xi:reshape(1, 1, 28, 28) end
          m:forward(xi)
          local gy = lps.full(1, k, -1 / k)
          gy:set(1, c, 1 - 1 / k)
          sum:add_(m:backward(xi, gy):reshape(784))
        end
        for a = 0, 6 do
          for b = 0, 6 do
            local s = 0
            for u = 0, 3 do for v = 0, 3 do s = s + sum:get((4 * a + u) * 28 + 4 * b + v + 1) end end
            want:set(c, (r - 1) * 49 + a * 7 + b + 1, s / 3 / 16)
          end
        end
      end
      local n = math.max(want[c]:norm(), 1e-12)
      want[c]:div_(n)
    end
    local diff = (T - want):abs():max()
    lu.assertTrue(diff < 2e-5, ("model %d (%d classes): max diff %g"):format(i, k, diff))
    if k == 1 then lu.assertEquals(T:abs():max(), 0) end -- one class: logit minus mean is 0
  end
end

-- A model given as {module = m} (what bench_hetero times) has the templates
-- of its weight list with its arch, bit for bit.
function TestArchGradients:test_templates_of_a_module_equal_its_weights()
  local net = lps.similarity.network{families = {"cnn"}, noise = 3}
  local m = cnn3()
  local w = weights(m)
  w.arch = m:arch()
  local a, b = net:templates({module = m}, "cnn"), net:templates(w, "cnn")
  lu.assertEquals(a:shape(), b:shape())
  lu.assertEquals((a - b):abs():max(), 0)
end

function TestArchGradients:test_pair_regression_by_hand_and_differences()
  local Y = lps.tensor{{1, 0}, {0, 1}, {0.6, 0.8}}
  local T2 = lps.tensor{{1, 0.5}, {0.5, 0}}
  -- pairs (1,2): 0 - 0.5; (1,3): 0.6 - 1; (2,3): 0.8 - 0.5 -> (0.25 + 0.16 + 0.09) / 3
  local loss, dY, n = K.pair_regression(Y, {1, 2, 1}, T2)
  lu.assertAlmostEquals(loss, 0.5 / 3, 1e-7)
  lu.assertEquals(n, 3)
  local function f() return (K.pair_regression(Y, {1, 2, 1}, T2)) end
  T.assert_grad_close(dY, T.numgrad(f, Y, 1e-3), 1e-3, "pair regression")
  -- NaN targets leave their pairs out
  local Tn = lps.tensor{{1, 0 / 0}, {0 / 0, 0}}
  local l2, _, n2 = K.pair_regression(Y, {1, 2, 1}, Tn)
  lu.assertEquals(n2, 1)
  lu.assertAlmostEquals(l2, 0.16, 1e-6)
  T.assert_error_contains("out of range", K.pair_regression, Y, {1, 3, 1}, T2)
end

TestArchInvariance = {}

-- Copies of a weight list.
local function copy(w)
  local c = {arch = w.arch}
  for i, t in ipairs(w) do c[i] = t:clone() end
  return c
end

-- Permute the units (rows / output channels) of layer l by perm and the
-- next layer's input slices to match; hw = positions per channel there.
local function permute(w, l, perm, hw)
  local r = copy(w)
  r[2 * l - 1] = w[2 * l - 1]:index_rows(perm)
  r[2 * l] = w[2 * l]:index_rows(perm)
  local nx = w[2 * l + 1]
  local rows, cols = nx:size(1), nx:numel() // nx:size(1)
  local s = cols // #perm -- weights from one unit to one output unit
  local src, dst = nx:reshape(rows, cols):totable(), {}
  for o = 1, rows do
    dst[o] = {}
    for j = 1, #perm do
      for q = 1, s do dst[o][(j - 1) * s + q] = src[o][(perm[j] - 1) * s + q] end
    end
  end
  r[2 * l + 1] = lps.tensor(dst):reshape(table.unpack(nx:shape()))
  return r
end

-- Scale unit j of layer l by a[j] in (weights, bias) and 1/a[j] out.
local function rescale(w, l, a)
  local r = copy(w)
  local W, b, nx = r[2 * l - 1], r[2 * l], r[2 * l + 1]
  local rows = W:size(1)
  local Wv = W:reshape(rows, W:numel() // rows)
  for j = 1, rows do Wv[j]:mul_(a[j]); b[j] = b[j] * a[j] end
  local orows = nx:size(1)
  local nv = nx:reshape(orows, nx:numel() // orows)
  local s = nv:size(2) // rows
  for o = 1, orows do
    for j = 1, rows do
      for q = 1, s do local k = (j - 1) * s + q; nv:set(o, k, nv:get(o, k) / a[j]) end
    end
  end
  return r
end

local function run_as(m, w, x)
  local c = m:clone()
  local cw = weights(c)
  for i, t in ipairs(w) do cw[i]:copy(t) end
  return c:forward(x)
end

function TestArchInvariance:test_cnn_and_mlp_symmetries()
  -- weight units and function templates alike
  local net = lps.similarity.network{families = {"mlp", "cnn"}, input_dim = 784, width = 16, embed = 8, seed = 5,
    slots = {"templates", "first", "last", "head"}}
  local x = lps.rand(4, 1, 28, 28, g)
  local cases = {}
  for _, make in ipairs{cnn3, cnn2} do
    local m = make()
    local w = weights(m)
    w.arch = m:arch()
    cases[#cases + 1] = {m = m, w = w, x = x}
  end
  local mlp = nn.mlp{784, 12, 9, 7, 3, generator = g}
  cases[#cases + 1] = {m = mlp, w = weights(mlp), x = x:reshape(4, 784)}
  for ci, c in ipairs(cases) do
    local w, nl = c.w, #c.w // 2
    local hw = {}
    for l = 1, nl do hw[l] = 1 end
    if w[1]:dim() == 4 then hw[nl] = w[2 * nl - 1]:size(2) // w[2 * nl - 3]:size(1) end
    local ref = net:embed({w})
    local out = c.m:forward(c.x)
    for l = 1, nl - 1 do
      local h = w[2 * l - 1]:size(1)
      local a = {}
      for j = 1, h do a[j] = math.exp(1.5 * g:normal()) end
      local variants = {permute(w, l, lps.data.randperm(h, g), hw[l + 1]), rescale(w, l, a),
                        rescale(permute(w, l, lps.data.randperm(h, g), hw[l + 1]), l, a)}
      local E = net:embed(variants)
      for vi, v in ipairs(variants) do
        lu.assertTrue(lps.allclose(run_as(c.m, v, c.x), out, 1e-4, 1e-5),
          ("model %d layer %d variant %d: the function changed"):format(ci, l, vi))
        local rc = (E[vi] - ref[1]):norm() / ref[1]:norm()
        lu.assertTrue(rc < 1e-5, ("model %d layer %d variant %d: embedding moved %.3g"):format(ci, l, vi, rc))
      end
    end
  end
end

function TestArchInvariance:test_bad_models_are_refused()
  local net = lps.similarity.network{families = {"cnn"}, slots = {"first", "templates"}}
  local mlp = weights(nn.mlp{784, 8, 2, generator = g})
  T.assert_error_contains("this network's weight units read cnn, not a mlp", net.embed, net, {mlp})
  local big = weights(nn.sequential{nn.conv2d(1, 2, 7, {generator = g}), nn.relu(), nn.flatten(),
    nn.linear(2 * 22 * 22, 2, g)})
  T.assert_error_contains("k <= 5", net.embed, net, {big})
  T.assert_error_contains("unknown family 'rnn'", lps.similarity.network, {families = {"rnn"}})
  T.assert_error_contains("unknown slot 'middle'", lps.similarity.network, {families = {"mlp"}, slots = {"middle"}})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
