-- Second-order (LPS) layers: known answers and finite-difference gradients
-- of chain normalization, the unit encoder, pooling, the embedding head,
-- the losses and the whole network.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local K = lps._lps
local sim = lps.similarity

local g = lps.generator(7)

-- A random MLP {W1, b1, ...} with the given sizes (PyTorch layout).
local function mlp(sizes, gen, sd)
  local m = {}
  for l = 2, #sizes do
    m[#m + 1] = lps.randn(sizes[l], sizes[l - 1], gen):mul_(sd or 0.5)
    m[#m + 1] = lps.randn(sizes[l], gen):mul_(sd or 0.5)
  end
  return m
end

local run, clone_model = T.mlp_forward, T.clone_list

-- sum(out * R) for a fixed random R: a scalar whose gradient is R through
-- the layer, so every output takes part in the check.
local function dot(a, b) return (a * b):sum() end

TestChainNorm = {}

function TestChainNorm:test_same_function()
  local m = mlp({10, 6, 5, 2}, g)
  local X = lps.randn(20, 10, g)
  local before = run(m, X)
  local n = K.chain_normalize_(clone_model(m))
  lu.assertTrue(lps.allclose(run(n, X), before, 1e-5, 1e-5))
  -- hidden units have unit incoming norm (weights and bias together)
  for l = 1, 2 do
    local W, b = n[2 * l - 1], n[2 * l]
    for j = 1, W:size(1) do
      local ss = W[j]:norm() ^ 2 + b[j] ^ 2
      lu.assertAlmostEquals(ss, 1, 1e-5)
    end
  end
  -- the output layer's rows are not normalized (it has no ReLU after it)
  lu.assertNotAlmostEquals(n[5][1]:norm() ^ 2 + n[6][1] ^ 2, 1, 1e-3)
end

function TestChainNorm:test_copy_from_lua()
  local m = mlp({10, 6, 5, 2}, g)
  local X = lps.randn(8, 10, g)
  local n = sim.chain_normalize(m)
  lu.assertTrue(lps.allclose(run(n, X), run(m, X), 1e-5, 1e-5))
  lu.assertNotAlmostEquals(m[1][1]:norm() ^ 2 + m[2][1] ^ 2, 1, 1e-3) -- the original is unchanged
  lu.assertAlmostEquals(n[1][1]:norm() ^ 2 + n[2][1] ^ 2, 1, 1e-5)
  T.assert_error_contains("expected a tensor", sim.chain_normalize, {m[1], 2})
end

function TestChainNorm:test_known_answer()
  -- one hidden unit: incoming (3, 4), bias 0 -> norm 5; outgoing 2 -> 10
  local m = {lps.tensor{{3, 4}}, lps.tensor{0}, lps.tensor{{2}}, lps.tensor{1}}
  K.chain_normalize_(m)
  lu.assertTrue(lps.allclose(m[1], lps.tensor{{0.6, 0.8}}, 1e-6))
  lu.assertEquals(m[3]:totable(), {{10}})
  lu.assertEquals(m[4]:totable(), {1})
end

-- Rescale unit j of hidden layer l by a (incoming) and 1/a (outgoing).
local function rescale(m, l, j, a)
  local W, b, Wn = m[2 * l - 1], m[2 * l], m[2 * l + 1]
  W[j]:mul_(a)
  b[j] = b[j] * a
  for r = 1, Wn:size(1) do Wn:set(r, j, Wn:get(r, j) / a) end
end

function TestChainNorm:test_rescaling_gives_identical_weights()
  local m = mlp({10, 6, 5, 2}, g)
  local ref = K.chain_normalize_(clone_model(m))
  -- a power of two: every step is exact, so the weights are bit-identical
  local r = clone_model(m)
  rescale(r, 1, 2, 4)
  rescale(r, 2, 5, 0.125)
  K.chain_normalize_(r)
  for i = 1, #m do lu.assertEquals(r[i]:totable(), ref[i]:totable()) end
  -- any a > 0: identical up to float rounding
  local s = clone_model(m)
  rescale(s, 1, 3, 3.7)
  rescale(s, 1, 6, 0.31)
  rescale(s, 2, 1, 12.5)
  K.chain_normalize_(s)
  for i = 1, #m do lu.assertTrue(lps.allclose(s[i], ref[i], 1e-5, 1e-6), "tensor " .. i) end
end

function TestChainNorm:test_dead_unit_and_errors()
  local m = mlp({4, 3, 2}, g)
  m[1][2]:zero_()
  m[2][2] = 0
  local col = {m[3]:get(1, 2), m[3]:get(2, 2)}
  K.chain_normalize_(m)
  lu.assertEquals({m[3]:get(1, 2), m[3]:get(2, 2)}, col) -- zero unit left alone
  T.assert_error_contains("does not take the", K.chain_normalize_,
    {lps.zeros(3, 4), lps.zeros(3), lps.zeros(2, 5), lps.zeros(2)})
  T.assert_error_contains("bias 1", K.chain_normalize_, {lps.zeros(3, 4), lps.zeros(2)})
  T.assert_error_contains("expected a tensor", K.chain_normalize_, {lps.zeros(3, 4), "x"})
  T.assert_error_contains("list {W1, b1", K.chain_normalize_, {lps.zeros(3, 4)})
  local bad = mlp({4, 3, 2}, g)
  bad[3]:set(1, 1, 0 / 0)
  T.assert_error_contains("non-finite", K.chain_normalize_, bad)
  T.assert_error_contains("eps", K.chain_normalize_, mlp({4, 3, 2}, g), -1)
end

function TestChainNorm:test_column_norms()
  lu.assertEquals(K.column_norms(lps.tensor{{3, 0, 1}, {4, 2, 0}}):totable(), {5, 2, 1})
  T.assert_error_contains("2-D", K.column_norms, lps.zeros(3))
end

TestNeuron = {}

function TestNeuron:test_known_answer()
  -- two units, k = 1: z = relu(A[1] u + A[2] b + A[3] imp + a)
  local U, b, imp = lps.tensor{{1}, {2}}, lps.tensor{1, -1}, lps.tensor{0.5, 2}
  local A, a = lps.tensor{{1, 2, 4}, {-1, 0, 1}}, lps.tensor{0, 1}
  local Z = K.neuron_forward(U, b, imp, A, a)
  lu.assertEquals(Z:totable(), {{5, 0.5}, {8, 1}})
  T.assert_error_contains("columns", K.neuron_forward, U, b, imp, lps.zeros(2, 2), a)
  T.assert_error_contains("one entry per unit", K.neuron_forward, U, lps.zeros(3), imp, A, a)
end

function TestNeuron:test_gradients()
  local h, k, d = 6, 5, 4
  for _, act in ipairs{"relu", "tanh", "linear"} do
    local U, b, imp = lps.randn(h, k, g), lps.randn(h, g), lps.rand(h, g)
    local A, a = lps.randn(d, k + 2, g), lps.randn(d, g)
    local R = lps.randn(h, d, g)
    local f = function() return dot(K.neuron_forward(U, b, imp, A, a, act), R) end
    local Z = K.neuron_forward(U, b, imp, A, a, act)
    local dA, da = lps.zeros(d, k + 2), lps.zeros(d)
    local dU = K.neuron_backward(R, Z, U, b, imp, A, dA, da, true, act)
    T.assert_grad_close(dU, T.numgrad(f, U), 1e-2, "dU " .. act)
    T.assert_grad_close(dA, T.numgrad(f, A), 1e-2, "dA " .. act)
    T.assert_grad_close(da, T.numgrad(f, a), 1e-2, "da " .. act)
    -- parameter gradients accumulate; dU can be skipped
    lu.assertNil(K.neuron_backward(R, Z, U, b, imp, A, dA, da, false, act))
    T.assert_grad_close(dA, T.numgrad(f, A) * 2, 1e-2, "dA accumulated " .. act)
  end
  local z = lps.zeros(1, 1)
  T.assert_error_contains("invalid option 'sigmoid'", K.neuron_forward, lps.zeros(1, 1), lps.zeros(1),
    lps.zeros(1), lps.zeros(1, 3), lps.zeros(1), "sigmoid")
  T.assert_error_contains("should match", K.neuron_backward, lps.zeros(2, 1), z, z, lps.zeros(1),
    lps.zeros(1), lps.zeros(1, 3), lps.zeros(1, 3), lps.zeros(1))
end

TestPool = {}

local modes = {"power", "sqrtm", "plain", "mean"}

function TestPool:test_known_answers()
  local Z = lps.tensor{{1, 2}, {3, 0}}
  local w = lps.tensor{1, 3} -- scaled to 1/4, 3/4
  -- S = 1/4 [1 2; 2 4] + 3/4 [9 0; 0 0] = [7 0.5; 0.5 1]
  local plain = K.sopool_forward(Z, w, {mode = "plain"})
  lu.assertTrue(lps.allclose(plain, lps.tensor{7, 0.5, 1}, 1e-6))
  local mean = K.sopool_forward(Z, w, {mode = "mean"})
  lu.assertTrue(lps.allclose(mean, lps.tensor{2.5, 0.5}, 1e-6))
  local pw = K.sopool_forward(Z, w, {mode = "power", eps = 1e-4})
  local e = math.sqrt(1e-4)
  lu.assertTrue(lps.allclose(pw, lps.tensor{math.sqrt(7 + 1e-4) - e, math.sqrt(0.5 + 1e-4) - e,
    math.sqrt(1 + 1e-4) - e}, 1e-5))
  -- all-zero weights mean uniform weights
  lu.assertTrue(lps.allclose(K.sopool_forward(Z, lps.zeros(2), {mode = "mean"}), lps.tensor{2, 1}, 1e-6))
  lu.assertEquals(K.sopool_size(4, {mode = "power"}), 10)
  lu.assertEquals(K.sopool_size(4, {mode = "mean"}), 4)
end

function TestPool:test_sqrtm_is_a_square_root()
  -- a well-conditioned S: many Newton-Schulz steps give sqrt(S + eps I)
  local Z = lps.randn(12, 3, g)
  local w = lps.rand(12, g)
  local eps = 1e-3
  local tri = K.sopool_forward(Z, w, {mode = "sqrtm", eps = eps, iters = 40})
  local S = K.sopool_forward(Z, w, {mode = "plain"})
  local function full(v)
    local M, n = lps.zeros(3, 3), 0
    for i = 1, 3 do for j = i, 3 do n = n + 1; M:set(i, j, v[n]); M:set(j, i, v[n]) end end
    return M
  end
  local R = full(tri)
  local want = full(S) + lps.tensor{{eps, 0, 0}, {0, eps, 0}, {0, 0, eps}}
  lu.assertTrue(lps.allclose(lps.matmul(R, R), want, 1e-3, 1e-4))
end

function TestPool:test_gradients_every_mode()
  local h, d = 7, 4
  local w = lps.rand(h, g)
  for _, mode in ipairs(modes) do
    local o = {mode = mode, eps = 0.05, iters = 4}
    local Z = lps.randn(h, d, g)
    local n = K.sopool_size(d, o)
    -- written at an offset inside a larger buffer, as the network does
    local R = lps.randn(n + 3, g)
    local f = function()
      local out = lps.zeros(n + 3)
      K.sopool_forward(Z, w, o, out, 3)
      return dot(out, R)
    end
    local dZ = K.sopool_backward(R, Z, w, o, 3)
    T.assert_grad_close(dZ, T.numgrad(f, Z), 1e-2, "dZ " .. mode)
  end
end

function TestPool:test_errors()
  local Z, w = lps.randn(3, 2, g), lps.rand(3, g)
  T.assert_error_contains("invalid option", K.sopool_forward, Z, w, {mode = "max"})
  T.assert_error_contains("one entry per unit", K.sopool_forward, Z, lps.rand(2, g))
  T.assert_error_contains("do not fit", K.sopool_forward, Z, w, nil, lps.zeros(2))
  T.assert_error_contains("do not fit", K.sopool_forward, Z, w, nil, lps.zeros(10), 9)
  T.assert_error_contains(">= 0", K.sopool_forward, Z, lps.tensor{1, -1, 1})
  T.assert_error_contains("at least one unit", K.sopool_forward, lps.zeros(0, 2), lps.zeros(0))
  -- embeddings of width 0 (memset of a NULL work matrix: UBSan; the Lua API fuzzer)
  for _, mode in ipairs{"power", "plain", "mean", "sqrtm"} do
    T.assert_error_contains("sopool_backward: unit embeddings must be 2-D with at least one unit and one feature, got (3x0)",
      K.sopool_backward, lps.zeros(4), lps.zeros(3, 0), w, {mode = mode})
    T.assert_error_contains("sopool_forward: unit embeddings must be 2-D with at least one unit and one feature, got (3x0)",
      K.sopool_forward, lps.zeros(3, 0), w, {mode = mode})
  end
  T.assert_error_contains("iterations", K.sopool_forward, Z, w, {mode = "sqrtm", iters = 0})
  T.assert_error_contains("eps", K.sopool_forward, Z, w, {mode = "power", eps = 0})
end

TestEmbedHead = {}

function TestEmbedHead:test_unit_rows_and_gradients()
  local B, n, e = 5, 7, 3
  local F, P, p = lps.randn(B, n, g), lps.randn(e, n, g), lps.randn(e, g)
  local Y = K.embed_forward(F, P, p)
  for b = 1, B do lu.assertAlmostEquals(Y[b]:norm(), 1, 1e-6) end
  local R = lps.randn(B, e, g)
  local f = function() return dot((K.embed_forward(F, P, p)), R) end
  local _, U = K.embed_forward(F, P, p)
  local dP, dp = lps.zeros(e, n), lps.zeros(e)
  local dF = K.embed_backward(R, U, F, P, dP, dp)
  T.assert_grad_close(dF, T.numgrad(f, F), 1e-2, "dF")
  T.assert_grad_close(dP, T.numgrad(f, P), 1e-2, "dP")
  T.assert_grad_close(dp, T.numgrad(f, p), 1e-2, "dp")
  T.assert_error_contains("do not fit", K.embed_forward, F, lps.zeros(e, n + 1), p)
end

TestLosses = {}

function TestLosses:test_xent_known_answer()
  -- logits = 2 * (y . c_t): y = (1, 0), classes (1, 0), (0, 1) -> logits 2, 0
  local Y, C = lps.tensor{{1, 0}}, lps.tensor{{1, 0}, {0, 1}}
  local loss, dY, correct = K.xent(Y, {1}, C, nil, {scale = 2})
  lu.assertAlmostEquals(loss, math.log(1 + math.exp(-2)), 1e-6)
  lu.assertEquals(correct, 1)
  -- dL/dlogit_2 = softmax_2 = 1/(1 + e^2); dY = 2 * (p - onehot) C
  local p2 = 1 / (1 + math.exp(2))
  lu.assertTrue(lps.allclose(dY, lps.tensor{{-2 * p2, 2 * p2}}, 1e-5))
  local l2, _, c2 = K.xent(Y, {2}, C, lps.tensor{0, 0}, {scale = 2})
  lu.assertAlmostEquals(l2, 2 + math.log(1 + math.exp(-2)), 1e-6)
  lu.assertEquals(c2, 0)
  T.assert_error_contains("out of range 1..2", K.xent, Y, {3}, C)
  T.assert_error_contains("1 labels for 2", K.xent, lps.zeros(2, 2), {1}, C)
  T.assert_error_contains("labels entry 1 is 1.5, not a class number", K.xent, Y, {1.5}, C)
end

function TestLosses:test_xent_gradients()
  local B, e, Tn = 6, 4, 3
  local labels = {1, 2, 3, 1, 2, 2}
  for _, cosine in ipairs{false, true} do
    local Y, C, c = lps.randn(B, e, g), lps.randn(Tn, e, g), lps.randn(Tn, g)
    local o = {scale = 3, cosine = cosine}
    local f = function() return (K.xent(Y, labels, C, c, o)) end
    local dC, dc = lps.zeros(Tn, e), lps.zeros(Tn)
    local _, dY = K.xent(Y, labels, C, c, o, dC, dc)
    local what = cosine and " (cosine)" or ""
    T.assert_grad_close(dY, T.numgrad(f, Y), 1e-2, "dY" .. what)
    T.assert_grad_close(dC, T.numgrad(f, C), 1e-2, "dC" .. what)
    T.assert_grad_close(dc, T.numgrad(f, c), 1e-2, "dc" .. what)
  end
end

function TestLosses:test_triplet_known_answer()
  -- 1-D embeddings on a line, euclidean: anchor 0 of class 1 has its
  -- positive at 1 and negatives at 0.5 and 3 -> hinge 0.2 + 1 - 0.5 = 0.7
  local Y = lps.tensor{{0}, {1}, {0.5}, {3}}
  local loss, dY, valid, active = K.triplet(Y, {1, 1, 2, 2}, {margin = 0.2, metric = "euclidean"})
  -- anchors: 1: 0.2+1-0.5 = 0.7; 2: 0.2+1-0.5 = 0.7; 3: d(3,4)=2.5, d(3,1)=0.5 -> 2.2;
  -- 4: positive 2.5, hardest negative d(4,2)=2 -> 0.7
  lu.assertEquals(valid, 4)
  lu.assertEquals(active, 4)
  lu.assertAlmostEquals(loss, (0.7 + 0.7 + 2.2 + 0.7) / 4, 1e-5)
  lu.assertEquals(dY:shape(), {4, 1})
  -- no valid anchor: zero loss
  local l0, _, v0 = K.triplet(lps.randn(3, 2, g), {1, 2, 3})
  lu.assertEquals(l0, 0)
  lu.assertEquals(v0, 0)
  T.assert_error_contains("margin", K.triplet, Y, {1, 1, 2, 2}, {margin = -1})
  T.assert_error_contains("invalid option", K.triplet, Y, {1, 1, 2, 2}, {metric = "l1"})
end

function TestLosses:test_triplet_gradients()
  local labels = {1, 1, 2, 2, 3, 3, 1}
  for _, metric in ipairs{"cosine", "euclidean"} do
    local Y = lps.randn(7, 3, g)
    local o = {margin = 1.5, metric = metric}
    local f = function() return (K.triplet(Y, labels, o)) end
    local _, dY, _, active = K.triplet(Y, labels, o)
    lu.assertTrue(active > 0)
    T.assert_grad_close(dY, T.numgrad(f, Y, 1e-3), 1e-2, "dY " .. metric)
  end
end

TestNetwork = {}

local function small_net(opts)
  local o = {input_dim = 10, width = 4, embed = 3, classes = 3, seed = 3, layers = 2}
  for k, v in pairs(opts or {}) do o[k] = v end
  return sim.network(o)
end

-- Gradient of a loss of the whole network w.r.t. every parameter.
local function check_network(net, models, labels, loss_opts, what)
  if loss_opts.loss ~= "xent" then -- the triplet term must take part
    local _, _, st = net:loss(net:forward(models), labels, loss_opts)
    lu.assertTrue(st.active > 0, what .. ": no active triplet")
  end
  local f = function()
    local Y = net:forward(models)
    return (net:loss(Y, labels, loss_opts))
  end
  T.check_parameter_gradients(net, function()
    local _, dY = net:loss(net:forward(models), labels, loss_opts)
    net:backward(dY)
  end, f, {eps = 1e-3, what = what .. " "})
end

function TestNetwork:test_gradients_of_the_whole_network()
  local models = {mlp({10, 6, 5, 2}, g), mlp({10, 4, 7, 2}, g), mlp({10, 5, 3, 2}, g),
                  mlp({10, 6, 5, 2}, g)}
  local labels = {1, 2, 3, 1}
  check_network(small_net(), models, labels, {loss = "xent"}, "xent")
  check_network(small_net{pool = "sqrtm", cosine_head = false}, models, labels,
    {loss = "both", margin = 1}, "both/sqrtm")
  check_network(small_net{pool = "mean", layers = 1, activation = "tanh"}, models, labels,
    {loss = "xent"}, "mean/1 layer/tanh")
  check_network(small_net{layers = 3, activation = "linear", pool = "plain"},
    {mlp({10, 6, 5, 4, 2}, g), mlp({10, 3, 4, 5, 2}, g), mlp({10, 4, 4, 4, 2}, g),
     mlp({10, 5, 3, 3, 2}, g)}, {1, 2, 1, 2}, {loss = "triplet", margin = 3,
    metric = "euclidean"}, "3 layers/triplet")
  check_network(small_net{layer_norm = true}, models, labels, {loss = "both", margin = 1},
    "both/layer norm")
  check_network(small_net{layer_norm = true, pool_weights = "uniform", pool = "sqrtm"}, models,
    labels, {loss = "xent"}, "xent/layer norm/uniform/sqrtm")
end

function TestNetwork:test_layer_norm_and_uniform_weights()
  local m = mlp({10, 6, 5, 2}, g)
  -- layer_norm: each layer's pooled block of the features has norm 1
  local net = small_net{layer_norm = true}
  net:forward({m, mlp({10, 4, 7, 2}, g)})
  local V = net.cache.F:reshape(4, net.per_layer)
  for r = 1, 4 do lu.assertAlmostEquals(V[r]:norm(), 1, 1e-5) end
  -- uniform weights: equal to importances that happen to be all equal
  local a, b = small_net{pool_weights = "uniform"}, small_net()
  local p = b:prepare(m)
  p.imp[1]:fill_(0.7)
  p.imp[2]:fill_(0.7)
  local q = a:prepare(m)
  q.imp[1]:fill_(0.7) -- importance is also an encoder input: the same in both
  q.imp[2]:fill_(0.7)
  lu.assertTrue(lps.allclose(a:forward({q}), b:forward({p}), 1e-6, 1e-7))
  lu.assertFalse(lps.allclose(a:forward({m}), b:forward({m}), 1e-4, 1e-4))
  T.assert_error_contains("pool_weights must be", sim.network, {pool_weights = "size"})
  T.assert_error_contains("layer_norm must be booleans", sim.network, {layer_norm = 1})
end

function TestNetwork:test_api()
  local net = small_net()
  lu.assertStrContains(tostring(net), "2 hidden layers")
  local params, grads = net:parameters()
  lu.assertEquals(#params, #grads)
  lu.assertEquals(#params, 8) -- 2 encoders, projection, head: weight and bias each
  local named, order = net:named_parameters()
  lu.assertEquals(order[1], "enc1.weight")
  lu.assertEquals(named["enc1.weight"]:shape(), {4, 12})
  lu.assertEquals(named["proj.weight"]:shape(), {3, 20})
  -- same spec, same seed: the same network; another seed differs until the
  -- weights are loaded
  local models = {mlp({10, 6, 5, 2}, g), mlp({10, 3, 3, 2}, g)}
  lu.assertTrue(lps.allclose(sim.network(net:spec()):embed(models), net:embed(models), 0, 0))
  local spec = net:spec()
  spec.seed = 99
  local other = sim.network(spec)
  lu.assertFalse(lps.allclose(other:embed(models), net:embed(models), 1e-3, 1e-3))
  other:load_named(named)
  lu.assertTrue(lps.allclose(other:embed(models), net:embed(models), 0, 0))
  -- forward keeps a batch's embeddings in order
  local Y = net:forward(models)
  lu.assertTrue(lps.allclose(Y[2], net:embed({models[2]})[1], 1e-6, 1e-7))
  T.assert_error_contains("unknown option 'widht'", sim.network, {widht = 3})
  T.assert_error_contains("invalid option", sim.network, {pool = "max"})
  T.assert_error_contains("activation must be", sim.network, {activation = "gelu"})
  T.assert_error_contains("scale must be", sim.network, {scale = 0})
  T.assert_error_contains("width must be an integer >= 1", sim.network, {width = 0})
  T.assert_error_contains("non-finite", function()
    local bad = {}
    for k, v in pairs(named) do bad[k] = v:clone() end
    bad["proj.bias"][1] = 0 / 0
    sim.network(net:spec()):load_named(bad)
  end)
  T.assert_error_contains("at least 3 layers", function() net:forward({mlp({10, 4}, g)}) end)
  T.assert_error_contains("first weight should be (h x 10)", function() net:forward({mlp({9, 4, 4, 2}, g)}) end)
  T.assert_error_contains("parameter 'enc2.bias' is missing", function()
    local t = {}
    for k, v in pairs(named) do if k ~= "enc2.bias" then t[k] = v end end
    other:load_named(t)
  end)
  T.assert_error_contains("has shape (4x12), expected (4x13)", function()
    sim.network{input_dim = 11, width = 4, embed = 3, classes = 3, layers = 2}:load_named(named)
  end)
  local p = small_net{chain_norm = false}:prepare(models[1])
  T.assert_error_contains("prepared by a network with other options", function() net:forward({p}) end)
  T.assert_error_contains("backward without a forward", function() net:backward(lps.zeros(1, 3)) end)
  T.assert_error_contains("classes > 0", function()
    local n2 = small_net{classes = 0}
    n2:loss(n2:forward(models), {1, 2}, {loss = "xent"})
  end)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
