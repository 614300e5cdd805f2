-- Baselines on CNNs and on sets mixing MLPs and CNNs (ModelSet-Hetero):
-- forward, permutations of conv channels, every method's invariances and
-- known answers, NaN where a method cannot compare, MLP values unchanged.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local E = lps.eval

local mlp = T.random_mlp

-- A CNN on side x side one-channel images: convs = {{out, k, stride, pool}},
-- padding k // 2, then flatten, hidden linear layers of widths fc (none by
-- default) and a linear head. Returns the model list (with .arch and
-- .family) and the lps.nn module holding the same weights.
local function cnn(g, side, convs, classes, fc)
  local layers, cin, s = {}, 1, side
  for _, c in ipairs(convs) do
    local out, k, stride, pool = c[1], c[2], c[3] or 1, c[4]
    layers[#layers + 1] = {type = "conv2d", ["in"] = cin, out = out, kernel = k,
                           stride = stride, padding = k // 2}
    layers[#layers + 1] = {type = "relu"}
    s = (s + 2 * (k // 2) - k) // stride + 1
    if pool then
      layers[#layers + 1] = {type = "maxpool2d", kernel = pool, stride = pool}
      s = s // pool
    end
    cin = out
  end
  layers[#layers + 1] = {type = "flatten"}
  local nin = cin * s * s
  for _, w in ipairs(fc or {}) do
    layers[#layers + 1] = {type = "linear", ["in"] = nin, out = w}
    layers[#layers + 1] = {type = "relu"}
    nin = w
  end
  layers[#layers + 1] = {type = "linear", ["in"] = nin, out = classes}
  local net = lps.nn.from_arch(layers, g)
  local m = {}
  for i, t in ipairs(lps.similarity.weights(net)) do m[i] = t:clone() end
  m.arch, m.family = layers, "cnn"
  return m, net
end

local function cnn2(g) return (cnn(g, 8, {{4, 3, 2}, {5, 3, 1, 2}}, 3)) end       -- 4x4, then 2x2 maps
local function cnn3(g) return (cnn(g, 8, {{3, 5, 1, 2}, {4, 3, 2}, {6, 3}}, 3)) end -- 4x4, 2x2, 2x2
local function cnn_fc(g) return (cnn(g, 8, {{4, 3, 2}, {5, 3, 1, 2}}, 3, {7})) end -- a hidden linear layer

local function with_arch(m, a)
  local c = {}
  for i, t in ipairs(m) do c[i] = t end
  c.arch, c.family = a, m.family
  return c
end

local function planted(g, m)
  local perms = {}
  for l = 1, #m / 2 - 1 do perms[l] = lps.data.randperm(m[2 * l - 1]:size(1), g) end
  return perms
end

local function is_nan(x) return x ~= x end
local function max_abs_diff(a, b) return (a - b):abs():max() end

TestCNNModel = {}

function TestCNNModel:test_forward_matches_nn_module()
  local g = lps.generator(101)
  local x = lps.rand(5, 64, g)
  for k, convs in ipairs{{{4, 3, 2}, {5, 3, 1, 2}}, {{3, 5, 1, 2}, {4, 3, 2}, {6, 3}}, {{4, 3, 2}, {5, 3, 1, 2}}} do
    local m, net = cnn(g, 8, convs, 3, k == 3 and {7} or nil)
    local want = net:forward(x:reshape(5, 1, 8, 8))
    lu.assertTrue(max_abs_diff(E.forward(m, x), want) < 1e-6)
    -- hidden layers: post-ReLU, post-pooling maps flattened channel-major
    local h = E.hidden(m, x)
    lu.assertEquals(#h, #m / 2 - 1)
    local last = h[#h]
    lu.assertEquals(last:size(2), m[#m - 1]:size(2))
    local y = lps.matmul(last, m[#m - 1], false, true) + m[#m]:reshape(1, m[#m]:numel())
    lu.assertTrue(max_abs_diff(y, want) < 1e-5)
    lu.assertTrue(last:min() >= 0)
  end
end

function TestCNNModel:test_hidden_by_hand()
  -- 2x2 image (1, -2; 3, 0.5), 1x1 conv with 2 channels (w 2, -1; b 0, 1),
  -- ReLU, 2x2 max-pooling: channel 1 max(2, 0, 6, 1) = 6, channel 2
  -- max(0, 3, 0, 0.5) = 3; head (1, 10) + 0.5: 6 + 30 + 0.5
  local arch = {
    {type = "conv2d", ["in"] = 1, out = 2, kernel = 1},
    {type = "relu"}, {type = "maxpool2d", kernel = 2}, {type = "flatten"},
    {type = "linear", ["in"] = 2, out = 1}}
  local m = {lps.tensor{2, -1}:reshape(2, 1, 1, 1), lps.tensor{0, 1}, lps.tensor{{1, 10}}, lps.tensor{0.5}}
  m.arch = arch
  local x = lps.tensor{{1, -2, 3, 0.5}}
  lu.assertEquals(E.hidden(m, x)[1]:totable(), {{6, 3}})
  lu.assertEquals(E.forward(m, x):totable(), {{36.5}})
end

function TestCNNModel:test_permuted_channels_same_function()
  local g = lps.generator(102)
  local x = lps.rand(6, 64, g)
  for _, make in ipairs{cnn2, cnn3, cnn_fc} do
    local m = make(g)
    local perms = planted(g, m)
    local p = with_arch(E.permute(m, perms), m.arch)
    lu.assertTrue(max_abs_diff(E.forward(m, x), E.forward(p, x)) < 1e-5)
    lu.assertTrue(max_abs_diff(m[1], p[1]) > 0)
    -- by hand: output channel i of conv 1 is channel perms[1][i]; conv 2's
    -- input channel c is perms[1][c]
    for i = 1, m[1]:size(1) do
      lu.assertEquals(p[1][i]:totable(), m[1][perms[1][i]]:totable())
      lu.assertEquals(p[2]:get(i), m[2]:get(perms[1][i]))
    end
    for o = 1, m[3]:size(1) do
      for c = 1, m[3]:size(2) do
        lu.assertEquals(p[3][o][c]:totable(), m[3][perms[2][o]][perms[1][c]]:totable())
      end
    end
  end
  -- the linear head after flatten takes the channel's block of h*w columns
  local m = cnn2(g)
  local perms = planted(g, m)
  local p = E.permute(m, perms)
  local hw = m[5]:size(2) // 5
  for c = 1, 5 do
    for t = 1, hw do
      lu.assertEquals(p[5]:get(1, (c - 1) * hw + t), m[5]:get(1, (perms[2][c] - 1) * hw + t))
    end
  end
end

function TestCNNModel:test_bad_models()
  local g = lps.generator(103)
  local m = cnn2(g)
  local plain = {m[1], m[2], m[3], m[4], m[5], m[6]}
  T.assert_error_contains("is a CNN (W1 (4x1x3x3)) without its .arch", E.features, "raw", plain)
  local bad = with_arch(m, {
    {type = "conv2d", ["in"] = 1, out = 4, kernel = 3}, {type = "tanh"}})
  T.assert_error_contains("layer 2 (tanh) is not read by the weight-space methods", E.features, "raw", bad)
  local arch = {}
  for i, l in ipairs(m.arch) do arch[i] = l end
  arch[1] = {type = "conv2d", ["in"] = 1, out = 4, kernel = 5, stride = 2, padding = 1}
  T.assert_error_contains("W1 (4x1x3x3) does not fit layer 1 (conv2d) of the architecture, which takes (4x1x5x5)",
    E.features, "raw", with_arch(m, arch))
  local nan = with_arch(m, m.arch)
  nan[3] = m[3]:clone()
  nan[3]:reshape(nan[3]:numel())[7] = 0 / 0
  T.assert_error_contains("feature_matrix: model 2: W2 has a non-finite value at flat index 7",
    E.feature_matrix, "stats", {m, nan})
  T.assert_error_contains("hidden_acts: inputs of 50 values are not 1 square channels",
    E.forward, m, lps.zeros(2, 50))
  T.assert_error_contains("hidden_acts: on 12x12 inputs: linear(20 -> 3): \"in\" is 20 but its input (1x45) gives 45",
    E.forward, m, lps.zeros(2, 144))
end

TestCNNFeatures = {}

function TestCNNFeatures:test_sorted_channels_by_norm()
  local g = lps.generator(111)
  for _, make in ipairs{cnn3, cnn_fc} do
    local m = make(g)
    local perms = E.sort_perm(m)
    for l = 1, 2 do
      local W, b = m[2 * l - 1], m[2 * l]
      local norms = {}
      for i = 1, W:size(1) do norms[i] = (W[i] * W[i]):sum() + b:get(i) ^ 2 end
      for i = 2, #perms[l] do lu.assertTrue(norms[perms[l][i - 1]] >= norms[perms[l][i]]) end
    end
    -- sorted = raw of the permuted model; invariant to planted permutations
    local raw_p = E.features("raw", with_arch(E.permute(m, perms), m.arch))
    lu.assertEquals(E.features("sorted", m):totable(), raw_p:totable())
    local b = with_arch(E.permute(m, planted(g, m)), m.arch)
    lu.assertTrue(max_abs_diff(E.features("sorted", m), E.features("sorted", b)) == 0)
    lu.assertAlmostEquals(E.similarity("sorted", m, b), 1, 1e-6)
    lu.assertTrue(E.similarity("raw", m, b) < 0.99)
  end
end

function TestCNNFeatures:test_stats_fixed_length_slots()
  local g = lps.generator(112)
  local models = {mlp(g, {64, 9, 3}), mlp(g, {64, 9, 7, 3}), mlp(g, {64, 9, 8, 7, 3}), cnn2(g), cnn3(g)}
  local F = E.feature_matrix("stats", models)
  lu.assertEquals(F:shape(), {5, 42})
  -- slots: first layer, last hidden layer, head (W then b each)
  local function stats_of(t)
    return E.features("stats", {t, lps.zeros(1), lps.zeros(1, 1), lps.zeros(1)}):rows(1, 7)
  end
  for i, m in ipairs(models) do
    local L = #m // 2
    local want = {m[1], m[2], m[2 * L - 3], m[2 * L - 2], m[2 * L - 1], m[2 * L]}
    for s, t in ipairs(want) do
      local flat = t:reshape(1, t:numel())
      lu.assertEquals(F[i]:rows(7 * s - 6, 7 * s):totable(), stats_of(flat):totable(), "model " .. i .. " slot " .. s)
    end
  end
  -- by hand, one hidden layer: W1 = 1..4 (mean 2.5, var 1.25, quantiles 1,
  -- 1.75, 2.5, 3.25, 4) fills slots 1 and 2
  local one = {lps.tensor{{1, 2}, {3, 4}}, lps.tensor{1, 3}, lps.tensor{{-1, 1}}, lps.tensor{5}}
  local f = E.features("stats", one):totable()
  local w1 = {2.5, 1.25, 1, 1.75, 2.5, 3.25, 4}
  for k = 1, 7 do
    lu.assertAlmostEquals(f[k], w1[k], 1e-6)
    lu.assertAlmostEquals(f[14 + k], w1[k], 1e-6)
  end
  -- invariant to channel permutations; comparable across families
  local c = models[5]
  local p = with_arch(E.permute(c, planted(g, c)), c.arch)
  lu.assertEquals(E.features("stats", c):totable(), E.features("stats", p):totable())
  local S = E.similarity_matrix("stats", models, {p, c})
  lu.assertAlmostEquals(S:get(5, 1), 1, 1e-5)
  for i = 1, 5 do lu.assertFalse(is_nan(S:get(i, 2))) end
end

function TestCNNFeatures:test_gram_by_hand()
  -- two 3x3 kernels (norms 3 and 4), centred in 5x5 and scaled to unit norm
  local arch = {
    {type = "conv2d", ["in"] = 1, out = 2, kernel = 3, padding = 1},
    {type = "relu"}, {type = "flatten"}, {type = "linear", ["in"] = 2 * 16, out = 2}}
  local K = lps.zeros(2, 1, 3, 3)
  local k1 = {{1, 2, 0}, {0, 0, 0}, {0, 0, 2}} -- norm 3
  for a = 1, 3 do for b = 1, 3 do K:set(1, 1, a, b, k1[a][b]); K:set(2, 1, a, b, a == 2 and b == 2 and -4 or 0) end end
  local m = {K, lps.zeros(2), lps.zeros(2, 32), lps.zeros(2)}
  m.arch = arch
  -- rows of the 2 x 25 matrix: tap (a+1, b+1) of the 5x5 grid
  local rows = {{}, {}}
  for t = 1, 25 do rows[1][t], rows[2][t] = 0, 0 end
  for a = 1, 3 do for b = 1, 3 do rows[1][a * 5 + b + 1] = k1[a][b] / 3 end end
  rows[2][13] = -1
  local want = {}
  for i = 1, 25 do for j = i, 25 do
    local s = rows[1][i] * rows[1][j] + rows[2][i] * rows[2][j]
    want[#want + 1] = i == j and s or s * math.sqrt(2)
  end end
  local f = E.features("gram", m):totable()
  lu.assertEquals(#f, 325)
  for i = 1, 325 do lu.assertAlmostEquals(f[i], want[i], 1e-6) end
  -- a 5x5 kernel takes the whole grid; an even kernel has no centre
  local g = lps.generator(113)
  local c3 = cnn3(g)
  lu.assertEquals(E.features("gram", c3):numel(), 325)
  local even = cnn(g, 8, {{3, 4, 2}, {4, 3}}, 2)
  T.assert_error_contains("gram: the first conv2d's 4x4 kernels (W1 (3x1x4x4)) do not centre in 5x5",
    E.features, "gram", even)
  -- invariant to permuting and positively rescaling channels
  local p = with_arch(E.permute(c3, planted(g, c3)), c3.arch)
  p[1] = p[1]:clone()
  p[1][2]:mul_(3)
  lu.assertTrue(max_abs_diff(E.features("gram", c3), E.features("gram", p)) < 1e-5)
end

TestCNNMatching = {}

function TestCNNMatching:test_planted_channels_recovered()
  local g = lps.generator(121)
  for _, make in ipairs{cnn2, cnn3, cnn_fc} do
    local a = make(g)
    local perms = planted(g, a)
    local b = with_arch(E.permute(a, perms), a.arch)
    local p, sim = E.weight_matching(b, a)
    lu.assertEquals(p, perms)
    lu.assertAlmostEquals(sim, 1, 1e-6)
    local back = E.permute(b, select(1, E.weight_matching(a, b, {generator = lps.generator(3)})))
    for i = 1, #a do lu.assertTrue(max_abs_diff(back[i], a[i]) == 0) end
    lu.assertAlmostEquals(E.similarity("matching", a, b), 1, 1e-6)
  end
end

function TestCNNMatching:test_noisy_copy_and_never_below_raw()
  local g = lps.generator(122)
  local a = cnn(g, 8, {{8, 3, 2}, {10, 3, 1, 2}}, 3)
  local b = with_arch(E.permute(a, planted(g, a)), a.arch)
  for i = 1, #b do b[i]:add_(lps.randn(table.unpack(b[i]:shape())) * (0.3 * a[i]:abs():mean())) end
  local raw, match = E.similarity("raw", a, b), E.similarity("matching", a, b)
  lu.assertTrue(match > 0.9, "matching " .. match)
  lu.assertTrue(raw < 0.5, "raw " .. raw)
  for _ = 1, 3 do
    local c, d = cnn2(g), cnn2(g)
    lu.assertTrue(E.similarity("matching", c, d) >= E.similarity("raw", c, d) - 1e-6)
  end
end

TestMixed = {}

function TestMixed:test_nan_across_architectures()
  local g = lps.generator(131)
  local m1, m2, m3 = mlp(g, {64, 10, 3}), mlp(g, {64, 10, 3}), mlp(g, {64, 12, 3})
  local c1, c2, d1 = cnn2(g), cnn2(g), cnn3(g)
  -- same weight shapes, other pooling: another architecture too
  local arch = {}
  for i, l in ipairs(c1.arch) do arch[i] = l end
  arch[1] = {type = "conv2d", ["in"] = 1, out = 4, kernel = 3, stride = 1, padding = 1}
  table.insert(arch, 3, {type = "maxpool2d", kernel = 2})
  local c1p = with_arch(c1, arch)
  local x = lps.rand(2, 64, g)
  lu.assertTrue(max_abs_diff(E.forward(c1p, x), E.forward(c1, x)) > 0)
  local A, B = {m1, c1, m3, d1}, {c2, m2, c1p, d1, m1}
  for _, method in ipairs{"raw", "sorted", "matching"} do
    local S = E.similarity_matrix(method, A, B)
    lu.assertEquals(S:shape(), {4, 5})
    for i = 1, 4 do
      for j = 1, 5 do
        local same = (i == 1 and (j == 2 or j == 5)) or (i == 2 and j == 1) or (i == 4 and j == 4)
        lu.assertEquals(not is_nan(S:get(i, j)), same, ("%s (%d, %d)"):format(method, i, j))
      end
    end
    -- each comparable pair as on its own
    lu.assertAlmostEquals(S:get(1, 2), E.similarity(method, m1, m2), 1e-6)
    lu.assertAlmostEquals(S:get(2, 1), E.similarity(method, c1, c2), 1e-6)
    lu.assertAlmostEquals(S:get(4, 4), 1, 1e-6)
    lu.assertAlmostEquals(S:get(1, 5), 1, 1e-6)
  end
  -- gram: NaN only between an MLP and a CNN
  local G = E.similarity_matrix("gram", A, B)
  for i = 1, 4 do
    for j = 1, 5 do
      lu.assertEquals(is_nan(G:get(i, j)), (i % 2 == 1) ~= (j == 2 or j == 5), ("gram (%d, %d)"):format(i, j))
    end
  end
  lu.assertAlmostEquals(G:get(2, 3), E.similarity("gram", c1, c1p), 1e-6)
  lu.assertAlmostEquals(G:get(3, 2), E.similarity("gram", m3, m2), 1e-6)
  -- one architecture needed by the feature matrices of raw / sorted, one family by gram's
  T.assert_error_contains("feature_matrix: model 2 and model 1 differ in architecture", E.feature_matrix,
    "raw", {c1, c1p})
  T.assert_error_contains("feature_matrix: model 2 gives", E.feature_matrix, "sorted", {m1, c1})
  T.assert_error_contains("model 2 and model 1 are of different families", E.feature_matrix,
    "gram", {m1, c1, m2}, {pool = 4})
  T.assert_error_contains("one model is a CNN and the other an MLP", E.weight_matching, m1, c1)
end

function TestMixed:test_self_similarity_every_method()
  local g = lps.generator(132)
  local c, d = cnn3(g), cnn2(g)
  local opts = {probe = lps.rand(20, 64, g)}
  local _
  _, opts.mean, opts.sd = E.standardize(E.feature_matrix("stats", {c, d, mlp(g, {64, 5, 2})}))
  for _, method in ipairs(E.methods) do
    local S = E.similarity_matrix(method, {c, d}, {d, c}, opts)
    lu.assertAlmostEquals(S:get(1, 2), 1, 1e-5, method)
    lu.assertAlmostEquals(S:get(2, 1), 1, 1e-5, method)
  end
end

TestMixedCKA = {}

function TestMixedCKA:test_both_paths_agree_across_families()
  local g = lps.generator(141)
  local probe = lps.rand(24, 64, g)
  local models = {mlp(g, {64, 10, 3}), mlp(g, {64, 12, 9, 3}), cnn2(g), cnn3(g), mlp(g, {64, 8, 7, 6, 3})}
  local S = E.similarity_matrix("cka", models, models, {probe = probe})
  local F = E.cka_features(models, probe)
  lu.assertTrue(lps.allclose(lps.matmul(F, F, false, true), S, 1e-4, 1e-5))
  for i = 1, 5 do lu.assertAlmostEquals(S:get(i, i), 1, 1e-5) end
  -- by hand: the MLP (1 hidden layer) against the 3-layer CNN covers each
  -- CNN layer with its one layer: the mean of three linear CKAs
  local h1, h4 = E.hidden(models[1], probe), E.hidden(models[4], probe)
  local want = (E.linear_cka(h1[1], h4[1]) + E.linear_cka(h1[1], h4[2]) + E.linear_cka(h1[1], h4[3])) / 3
  lu.assertAlmostEquals(S:get(1, 4), want, 1e-5)
  lu.assertAlmostEquals(E.cka_layers(h1, h4), want, 1e-5)
  -- conv layers wider than the probe batch (64 > 24 columns) go through Grams
  lu.assertTrue(h4[1]:size(2) > 24)
  lu.assertAlmostEquals(S:get(3, 4), E.cka_layers(E.hidden(models[3], probe), h4), 1e-5)
end

function TestMixedCKA:test_permuted_channels_unchanged()
  local g = lps.generator(142)
  local probe = lps.rand(16, 64, g)
  local c = cnn3(g)
  local p = with_arch(E.permute(c, planted(g, c)), c.arch)
  lu.assertAlmostEquals(E.similarity("cka", c, p, {probe = probe}), 1, 1e-5)
  local F = E.cka_features({c, p}, probe)
  lu.assertTrue(max_abs_diff(F[1], F[2]) < 1e-5)
  T.assert_error_contains("cka: model 1 of the second set: hidden_acts: inputs of 10 values", E.similarity_matrix,
    "cka", {mlp(g, {10, 3, 2})}, {c}, {probe = lps.rand(4, 10, g)})
end

TestMLPUnchanged = {}

-- Values printed by the code before CNNs were supported (same seed, same
-- models): the MLP path must give them still. stats is pure C (exact); the
-- others go through BLAS, whose last bits may vary by machine.
function TestMLPUnchanged:test_values_of_the_old_code()
  local g = lps.generator(2024)
  local a, b, c = mlp(g, {16, 6, 5, 3}), mlp(g, {16, 6, 5, 3}), mlp(g, {16, 7, 3})
  local probe = lps.randn(12, 16, g)
  local stats = {0x1.c8dfd4p-6, 0x1.c6bp-1, -0x1.492d74p+1, -0x1.262802p-1, 0x1.8d066cp-5, 0x1.329e38p-1,
    0x1.e8bc88p+0, -0x1.5f6fc2p-3, 0x1.09907cp+1, -0x1.3e8ddcp+1, -0x1.35fd54p+0, 0x1.ddae4p-4,
    0x1.2586a8p+0, 0x1.63acf2p+0, 0x1.dba0cp-4, 0x1.a3cc42p-1, -0x1.21906p+1, -0x1.bb65ap-2, 0x1.5d78cp-2,
    0x1.77aee8p-1, 0x1.7f3ba2p+0, -0x1.30b30cp-1, 0x1.4d26c4p+0, -0x1.287b96p+1, -0x1.869de6p+0,
    -0x1.38d6a6p-4, 0x1.b37958p-3, 0x1.75e764p-1, -0x1.c1090ap-4, 0x1.96ce9cp-1, -0x1.073934p+1,
    -0x1.9d7dfcp-2, 0x1.ac6b5ap-3, 0x1.ff9af4p-2, 0x1.433918p+0, 0x1.f75e1cp-3, 0x1.20b77cp+0,
    -0x1.667672p-1, -0x1.fbb9f4p-2, -0x1.2a8702p-2, 0x1.6ffe84p-1, 0x1.baa044p+0}
  lu.assertEquals(E.features("stats", a):totable(), stats)
  lu.assertAlmostEquals(E.similarity("matching", a, b), 0x1.d666ap-3, 1e-6)
  lu.assertAlmostEquals(E.similarity("raw", a, b), 0x1.ed7dbap-4, 1e-6)
  local S = E.similarity_matrix("cka", {a, c}, {b, c}, {probe = probe})
  local want = {0x1.82ca1p-3, 0x1.3a764cp-2, 0x1.303d92p-2, 1}
  for k, v in ipairs(want) do lu.assertAlmostEquals(S:reshape(4)[k], v, 1e-6) end
  -- the sorted features are a reordering of the raw ones, for an MLP as before
  local sorted, raw = E.features("sorted", a), E.features("raw", E.permute(a, E.sort_perm(a)))
  lu.assertEquals(sorted:totable(), raw:totable())
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
