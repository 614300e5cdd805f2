-- batchnorm1d and batchnorm2d: hand-computed batch and running statistics,
-- finite differences in train and eval mode, threads, the arch, names,
-- errors, and agreement with PyTorch (scripts/torch_interop.py).
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn

local function close(a, b, tol, what)
  lu.assertEquals(#a, #b, what)
  for i = 1, #a do
    if type(a[i]) == "table" then close(a[i], b[i], tol, what)
    else lu.assertAlmostEquals(a[i], b[i], tol, what) end
  end
end

local function set(m, name, values)
  for _, list in ipairs{m:named_parameters(), m:named_buffers()} do
    for _, e in ipairs(list) do if e.name == name then e.tensor:copy(lps.tensor(values)); return end end
  end
  error("no tensor " .. name)
end

local function get(m, name) return m:state_dict()[name]:totable() end

local randomize = T.randomize_state

TestBatchNormForward = {}

-- Channel 0 {1, 3, 5}: mean 3, biased variance 8/3, unbiased 4; channel 1
-- {10, 10, 16}: mean 12, biased 8, unbiased 12. eps 0 keeps values exact.
function TestBatchNormForward:test_1d_train_hand_computed()
  local m = nn.batchnorm1d(2, {eps = 0})
  set(m, "weight", {2, 1})
  set(m, "bias", {0.5, -1})
  local x = lps.tensor{{1, 10}, {3, 10}, {5, 16}}
  local s0, s1 = math.sqrt(8 / 3), math.sqrt(8)
  close(m:forward(x):totable(), {{2 * -2 / s0 + 0.5, -2 / s1 - 1}, {0.5, -2 / s1 - 1},
    {2 * 2 / s0 + 0.5, 4 / s1 - 1}}, 1e-5, "train-mode output")
  -- running statistics: 0.9 old + 0.1 batch (the variance unbiased)
  close(get(m, "running_mean"), {0.3, 1.2}, 1e-6, "running_mean")
  close(get(m, "running_var"), {0.9 + 0.4, 0.9 + 1.2}, 1e-6, "running_var")
  -- m:backward recomputes the forward as a replay: the statistics stay
  m:backward(x, lps.ones(3, 2))
  close(get(m, "running_mean"), {0.3, 1.2}, 1e-6, "running_mean after backward")
  m:forward(x)
  close(get(m, "running_mean"), {0.3 * 0.9 + 0.3, 1.2 * 0.9 + 1.2}, 1e-6, "second update")
  -- eval mode: the running statistics normalize, nothing moves
  m:eval()
  local rm, rv = get(m, "running_mean"), get(m, "running_var")
  local y = m:forward(x):totable()
  for i, row in ipairs{{1, 10}, {3, 10}, {5, 16}} do
    lu.assertAlmostEquals(y[i][1], (row[1] - rm[1]) / math.sqrt(rv[1]) * 2 + 0.5, 1e-5)
    lu.assertAlmostEquals(y[i][2], (row[2] - rm[2]) / math.sqrt(rv[2]) - 1, 1e-5)
  end
  close(get(m, "running_mean"), rm, 0, "eval forward moves nothing")
end

function TestBatchNormForward:test_momentum_and_eps()
  local x = lps.tensor{{1, 10}, {3, 10}, {5, 16}}
  local m = nn.batchnorm1d(2, {momentum = 1})
  m:forward(x)
  close(get(m, "running_mean"), {3, 12}, 1e-6, "momentum 1: the batch's")
  close(get(m, "running_var"), {4, 12}, 1e-6, "momentum 1: unbiased")
  m = nn.batchnorm1d(2, {momentum = 0, eps = 0.5})
  local y = m:forward(x):totable()
  close(get(m, "running_var"), {1, 1}, 0, "momentum 0: unchanged")
  lu.assertAlmostEquals(y[1][1], -2 / math.sqrt(8 / 3 + 0.5), 1e-6)
end

-- (batch x features x length): statistics over the batch and the length.
-- Channel 0 {1, 3 | 5, 7}: mean 4, biased 5, unbiased 20/3; channel 1 all 2.
function TestBatchNormForward:test_1d_three_dims()
  local m = nn.batchnorm1d(2, {eps = 0, momentum = 1})
  local x = lps.tensor{{{1, 3}, {2, 2}}, {{5, 7}, {2, 2}}}
  local y = m:forward(x)
  lu.assertEquals(y:shape(), {2, 2, 2})
  local r = 1 / math.sqrt(5)
  close(y:totable()[1][1], {-3 * r, -r}, 1e-6, "sample 1")
  close(y:totable()[2][1], {r, 3 * r}, 1e-6, "sample 2")
  close(get(m, "running_mean"), {4, 2}, 1e-6, "mean")
  close(get(m, "running_var"), {20 / 3, 0}, 1e-6, "unbiased variance")
end

-- Channel 0 of (2 x 2 x 1 x 2): {0, 2 | 4, 6}: mean 3, biased 5; channel 1
-- {1, 1 | 1, 5}: mean 2, biased 3.
function TestBatchNormForward:test_2d_hand_computed()
  local m = nn.batchnorm2d(2, {eps = 0})
  set(m, "bias", {1, 0})
  local x = lps.tensor{{{{0, 2}}, {{1, 1}}}, {{{4, 6}}, {{1, 5}}}}
  local y = m:forward(x):totable()
  local a, b = 1 / math.sqrt(5), 1 / math.sqrt(3)
  close(y, {{{{1 - 3 * a, 1 - a}}, {{-b, -b}}}, {{{1 + a, 1 + 3 * a}}, {{-b, 3 * b}}}}, 1e-6, "bn2d")
  close(get(m, "running_mean"), {0.3, 0.2}, 1e-6, "running_mean")
  close(get(m, "running_var"), {0.9 + 0.1 * 20 / 3, 0.9 + 0.1 * 4}, 1e-6, "running_var")
end

-- Defaults as PyTorch: weight ones, bias zeros, running mean zeros, variance ones.
function TestBatchNormForward:test_init_and_printing()
  local m = nn.batchnorm2d(3)
  lu.assertEquals(get(m, "weight"), {1, 1, 1})
  lu.assertEquals(get(m, "bias"), {0, 0, 0})
  lu.assertEquals(get(m, "running_mean"), {0, 0, 0})
  lu.assertEquals(get(m, "running_var"), {1, 1, 1})
  lu.assertEquals(tostring(m), "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)")
  lu.assertEquals(tostring(nn.batchnorm1d(4, {eps = 1e-3, momentum = 1})),
    "BatchNorm1d(4, eps=0.001, momentum=1.0, affine=True, track_running_stats=True)")
  lu.assertEquals(m:num_parameters(), 6)
end

-- A batch of one value per channel has no variance: PyTorch raises, so do we;
-- one sample of a 2x2 image is four values, and eval mode takes anything.
function TestBatchNormForward:test_batch_of_one()
  local m = nn.batchnorm1d(3)
  T.assert_error_contains("batchnorm1d: train mode needs more than one value per channel, got input (1x3)",
    m.forward, m, lps.ones(1, 3))
  m:eval()
  lu.assertEquals(m:forward(lps.ones(1, 3)):shape(), {1, 3})
  local m2 = nn.batchnorm2d(2)
  T.assert_error_contains("batchnorm2d: train mode needs more than one value per channel",
    m2.forward, m2, lps.ones(1, 2, 1, 1))
  lu.assertEquals(m2:forward(lps.randn(1, 2, 2, 2, lps.generator(1))):shape(), {1, 2, 2, 2})
  -- an empty batch changes nothing
  local m3 = nn.batchnorm1d(3)
  lu.assertEquals(m3:forward(lps.zeros(0, 3)):shape(), {0, 3})
  lu.assertEquals(get(m3, "running_var"), {1, 1, 1})
end

TestBatchNormBackward = {}

-- Train mode: sum(y) = n sum(bias) whatever x is, so d sum(y)/dx = 0,
-- d/dweight = sum(xhat) = 0, d/dbias = n. Eval mode: gx = gy w / sqrt(var + eps).
function TestBatchNormBackward:test_hand_computed()
  local m = nn.batchnorm1d(2)
  set(m, "weight", {2, -3})
  local x = lps.tensor{{1, 10}, {3, 10}, {5, 16}}
  local gx = m:backward(x, lps.ones(3, 2))
  lu.assertTrue(gx:abs():max() < 1e-5, "train: sum of outputs does not depend on x")
  local _, grads = m:parameters()
  close(grads[1]:totable(), {0, 0}, 1e-5, "dweight")
  close(grads[2]:totable(), {3, 3}, 0, "dbias")
  m:zero_grad()
  m:eval()
  set(m, "running_var", {3, 0.25})
  gx = m:backward(x, lps.tensor{{1, 1}, {2, 0}, {0, -1}})
  close(gx:totable(), {{2 / math.sqrt(3 + 1e-5), -3 / math.sqrt(0.25 + 1e-5)}, {4 / math.sqrt(3 + 1e-5), 0},
    {0, 3 / math.sqrt(0.25 + 1e-5)}}, 1e-5, "eval gx")
end

-- Finite differences of every parameter and the input, in both modes, in a
-- model (the batch statistics couple the samples through the tanh).
local function check_model(m, x, what, g)
  local y = m:forward(x)
  local R = lps.randn(y:shape(), g)
  local function f() return (m:forward(x) * R):sum() end
  local function backward() m:backward(x, R) end
  T.check_parameter_gradients(m, backward, f, {eps = 1e-2, tol = 2e-2, what = what .. " "})
  m:zero_grad()
  T.assert_grad_close(m:backward(x, R), T.numgrad(f, x, 1e-2), 2e-2, what .. " input")
end

function TestBatchNormBackward:test_finite_differences()
  local g = lps.generator(3)
  local m1 = randomize(nn.sequential{nn.linear(4, 3, g), nn.batchnorm1d(3), nn.tanh(), nn.linear(3, 2, g)}, g)
  local x1 = lps.randn(5, 4, g)
  local m2 = randomize(nn.sequential{nn.conv2d(2, 3, 3, {padding = 1, generator = g}), nn.batchnorm2d(3),
    nn.tanh(), nn.flatten(), nn.linear(27, 2, g)}, g)
  local x2 = lps.randn(3, 2, 3, 3, g)
  local m3 = randomize(nn.sequential{nn.batchnorm1d(2), nn.tanh()}, g)
  local x3 = lps.randn(3, 2, 4, g)
  for _, c in ipairs{{m1, x1, "bn1d"}, {m2, x2, "bn2d"}, {m3, x3, "bn1d (BxCxL)"}} do
    c[1]:train()
    check_model(c[1], c[2], c[3] .. " train", g)
    c[1]:eval()
    check_model(c[1], c[2], c[3] .. " eval", g)
  end
end

-- Frozen: the input gradient alone, the same as unfrozen.
function TestBatchNormBackward:test_frozen()
  local g = lps.generator(4)
  local m = randomize(nn.batchnorm2d(3), g)
  local x, gy = lps.randn(4, 3, 2, 2, g), lps.randn(4, 3, 2, 2, g)
  local want = m:backward(x, gy)
  m:zero_grad()
  m:freeze()
  lu.assertTrue(lps.allclose(m:backward(x, gy), want, 0, 0))
  local _, grads = m:parameters()
  lu.assertEquals(grads[1]:abs():max(), 0)
end

-- Channels are split over threads, each summed in one fixed order: any
-- thread count gives the same bits.
function TestBatchNormBackward:test_threads_bit_identical()
  local g = lps.generator(5)
  local x, gy = lps.randn(64, 16, 8, 8, g), lps.randn(64, 16, 8, 8, g)
  local function run(threads)
    lps.set_num_threads(threads)
    local m = randomize(nn.batchnorm2d(16), lps.generator(6))
    local y = m:forward(x)
    local gx = m:backward(x, gy)
    local _, grads = m:parameters()
    return {y, gx, grads[1], grads[2], m:state_dict().running_mean, m:state_dict().running_var}
  end
  local before = lps.get_num_threads()
  local a, b = run(1), run(2)
  -- eval mode with batch statistics, and the dream prior's input gradient
  local function run_eval(threads)
    lps.set_num_threads(threads)
    local m = randomize(nn.batchnorm2d(16), lps.generator(6)):eval():batch_stats()
    local y, gx = m:forward(x), m:backward(x, gy)
    m:batch_stats(false):freeze():stat_prior(0.7)
    local _, px = m:input_gradients(x, gy)
    return {y, gx, px}
  end
  local c, d = run_eval(1), run_eval(2)
  lps.set_num_threads(before)
  for i = 1, #a do lu.assertTrue(lps.allclose(a[i], b[i], 0, 0), "tensor " .. i) end
  for i = 1, #c do lu.assertTrue(lps.allclose(c[i], d[i], 0, 0), "eval tensor " .. i) end
end

-- batch_stats (AdaBN): eval mode normalized by the batch's statistics, as
-- train mode is, its running statistics untouched; backward through them.
TestBatchNormBatchStats = {}

function TestBatchNormBatchStats:test_forward_is_train_modes_and_leaves_the_running_statistics()
  local g = lps.generator(21)
  local m = randomize(nn.sequential{nn.conv2d(2, 3, 3, {padding = 1, generator = g}), nn.batchnorm2d(3), nn.relu()}, g)
  local x = lps.randn(4, 2, 5, 5, g)
  m:eval()
  local running = m:forward(x)
  local state = {}
  for k, v in pairs(m:state_dict()) do state[k] = v:clone() end
  m:batch_stats()
  local y = m:forward(x)
  for k, v in pairs(m:state_dict()) do lu.assertTrue(lps.allclose(v, state[k], 0, 0), k .. " moved") end
  lu.assertFalse(lps.allclose(y, running, 0, 1e-3), "the batch's statistics are not the running ones")
  m:batch_stats(false)
  lu.assertTrue(lps.allclose(m:forward(x), running, 0, 0), "off again: the running statistics")
  m:train()
  lu.assertTrue(lps.allclose(y, m:forward(x), 0, 0), "train mode's output, to the bit")
  -- one value per channel has no batch statistics
  local one = nn.batchnorm1d(2):eval():batch_stats()
  T.assert_error_contains("batchnorm1d: batch_stats needs more than one value per channel", one.forward, one,
    lps.randn(1, 2, g))
end

function TestBatchNormBatchStats:test_finite_differences()
  local g = lps.generator(22)
  local m = randomize(nn.sequential{nn.conv2d(2, 3, 3, {padding = 1, generator = g}), nn.batchnorm2d(3),
    nn.tanh(), nn.flatten(), nn.linear(27, 2, g)}, g)
  m:eval():batch_stats()
  check_model(m, lps.randn(3, 2, 3, 3, g), "bn2d batch_stats", g)
  -- the fused relu path and a residual block (its add fused into the batch norm), frozen too
  local function conv(cin, cout) return {type = "conv2d", ["in"] = cin, out = cout, kernel = 3, padding = 1, bias = false} end
  local arch = {{type = "input", shape = {2, 3, 3}}, conv(2, 3), {type = "batchnorm2d", features = 3}, {type = "relu"},
    {type = "residual", body = {conv(3, 3), {type = "batchnorm2d", features = 3}, {type = "relu"}, conv(3, 3),
      {type = "batchnorm2d", features = 3}}, shortcut = {}}, {type = "relu"}, {type = "flatten"},
    {type = "linear", ["in"] = 27, out = 2}}
  local r = randomize(nn.from_arch(arch, g), g)
  local x, R = lps.randn(3, 2, 3, 3, g), lps.randn(3, 2, g)
  -- train mode's backward (its gradients checked above and in test_layers_residual), to the bit
  r:train()
  r:zero_grad()
  local train_gx = r:backward(x, R)
  local _, train_grads = r:parameters()
  local saved = {}
  for i, t in ipairs(train_grads) do saved[i] = t:clone() end
  r:eval():batch_stats()
  r:zero_grad()
  local want = r:backward(x, R)
  lu.assertTrue(lps.allclose(want, train_gx, 0, 0), "residual: train mode's input gradient")
  local _, grads = r:parameters()
  for i, t in ipairs(grads) do lu.assertTrue(lps.allclose(t, saved[i], 0, 0), "residual: parameter gradient " .. i) end
  r:freeze()
  local _, gx = r:input_gradients(x, R)
  lu.assertTrue(lps.allclose(gx, want, 0, 1e-6), "frozen: the same input gradient")
  lu.assertTrue(r:uses_batch_stats())
  lu.assertFalse(r:batch_stats(false):uses_batch_stats())
end

-- Evaluation inside lps.train runs by the running statistics whatever
-- batch_stats says, and gives the flag back.
function TestBatchNormBatchStats:test_training_evaluates_by_running_statistics()
  local g = lps.generator(26)
  local function model()
    return randomize(nn.sequential{nn.linear(4, 3, lps.generator(27)), nn.batchnorm1d(3), nn.relu(),
      nn.linear(3, 2, lps.generator(28))}, lps.generator(29))
  end
  local x, y = lps.randn(16, 4, g), {1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2}
  local function run(flag)
    local m = model():batch_stats(flag)
    local r = lps.train(m, {x = x, y = y}, {optimizer = lps.optim.sgd{lr = 0.1}, epochs = 2, batch_size = 4,
      generator = lps.generator(1), validation = {x = x, y = y}})
    return r, m
  end
  local plain = run(false)
  local with, m2 = run(true)
  lu.assertTrue(plain.val_loss == plain.val_loss)
  lu.assertEquals(with.val_loss, plain.val_loss)
  lu.assertEquals(with.loss, plain.loss)
  lu.assertTrue(m2:uses_batch_stats())
end

-- stat_prior (the dream prior): eval-mode backward adds the gradient of
-- w * b * (the mean over channels of KL(N(m, v) || N(rm, rv))), the batch's
-- biased statistics against the running ones, both variances + eps.
TestBatchNormStatPrior = {}

local function kl_prior(x, rm, rv, w, eps)
  local X, b, C = x:totable(), x:size(1), x:size(2)
  local L = 0
  for c = 1, C do
    local vals = {}
    for i = 1, b do
      local v = X[i][c]
      if type(v) == "table" then
        for _, r in ipairs(v) do for _, q in ipairs(r) do vals[#vals + 1] = q end end
      else vals[#vals + 1] = v end
    end
    local mu, var = 0, 0
    for _, q in ipairs(vals) do mu = mu + q / #vals end
    for _, q in ipairs(vals) do var = var + (q - mu) ^ 2 / #vals end
    local v, r = var + eps, rv[c] + eps
    L = L + 0.5 * (v / r + (mu - rm[c]) ^ 2 / r - 1 - math.log(v / r))
  end
  return w * b * L / C
end

function TestBatchNormStatPrior:test_finite_differences()
  local g = lps.generator(23)
  for _, act in ipairs{"tanh", "relu"} do -- relu: batch norm's fused backward_relu
    local m = randomize(nn.sequential{nn.batchnorm2d(3), nn[act](), nn.flatten(), nn.linear(12, 2, g)}, g)
    m:eval():freeze():stat_prior(2.5)
    local rm, rv = get(m, "0.running_mean"), get(m, "0.running_var")
    local x = lps.randn(4, 3, 2, 2, g):mul_(1.5)
    local R = lps.randn(4, 2, g)
    local function f() return (m:forward(x) * R):sum() + kl_prior(x, rm, rv, 2.5, 1e-5) end
    local _, gx = m:input_gradients(x, R)
    T.assert_grad_close(gx, T.numgrad(f, x, 1e-2), 2e-2, act .. " input")
    -- 0 turns it off: the plain eval-mode gradient
    m:stat_prior(0)
    local _, plain = m:input_gradients(x, R)
    lu.assertTrue(lps.allclose(plain, m:backward(x, R), 0, 0))
    lu.assertFalse(lps.allclose(plain, gx, 0, 1e-3))
  end
  local m = nn.batchnorm1d(2)
  T.assert_error_contains("a finite weight expected", m.stat_prior, m, math.huge)
  T.assert_error_contains("a finite weight expected", m.stat_prior, m, 0 / 0)
  lu.assertEquals(m:stat_prior(-0.5):stat_prior_weight(), -0.5) -- negative: for gradient ascent
end

-- Gradient descent on the prior alone draws a batch's statistics to the
-- running ones (the KL falls); the same weight negated climbs it.
function TestBatchNormStatPrior:test_descent_lowers_the_kl()
  local g = lps.generator(24)
  local m = randomize(nn.batchnorm2d(3), g):eval():freeze()
  local rm, rv = get(m, "running_mean"), get(m, "running_var")
  local x0 = lps.randn(4, 3, 3, 3, g):mul_(3):add_(2)
  local function after(w)
    m:stat_prior(w)
    local x = x0:clone()
    for _ = 1, 20 do
      local _, gx = m:input_gradients(x, lps.zeros(4, 3, 3, 3))
      x:add_(gx:mul_(-0.1))
    end
    return kl_prior(x, rm, rv, 1, 1e-5)
  end
  local start = kl_prior(x0, rm, rv, 1, 1e-5)
  lu.assertTrue(after(1) < 0.9 * start, "descent " .. after(1) .. " from " .. start)
  lu.assertTrue(after(-1) > start, "ascent " .. after(-1) .. " from " .. start)
end

-- Batch statistics on: the prior is not added (it is a prior of the running
-- statistics); a frozen module's input gradient is the unfrozen one.
function TestBatchNormStatPrior:test_off_with_batch_stats()
  local g = lps.generator(25)
  local m = randomize(nn.sequential{nn.batchnorm2d(3), nn.relu()}, g):eval()
  local x, gy = lps.randn(4, 3, 2, 2, g), lps.randn(4, 3, 2, 2, g)
  m:batch_stats()
  local want = m:backward(x, gy)
  m:stat_prior(3):freeze()
  local _, gx = m:input_gradients(x, gy)
  lu.assertTrue(lps.allclose(gx, want, 0, 0))
end

TestBatchNormArch = {}

function TestBatchNormArch:test_round_trips_and_names()
  local g = lps.generator(7)
  local m = nn.sequential{nn.conv2d(1, 4, 3, {generator = g}), nn.batchnorm2d(4, {eps = 1e-3}), nn.relu(),
    nn.flatten(), nn.linear(16, 3, g), nn.batchnorm1d(3, {momentum = 0.25})}
  local list, json = m:arch()
  lu.assertEquals(list[2], {type = "batchnorm2d", features = 4, eps = 1e-3, momentum = 0.1})
  lu.assertEquals(list[6], {type = "batchnorm1d", features = 3, eps = 1e-5, momentum = 0.25})
  lu.assertStrContains(json, '{"type":"batchnorm2d","features":4,"eps":0.001,"momentum":0.1}')
  lu.assertEquals(T.names(m:named_buffers()), {"1.running_mean", "1.running_var", "5.running_mean", "5.running_var"})
  lu.assertEquals(T.names(m:named_parameters()), {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias",
    "5.weight", "5.bias"})
  T.assert_arch_rebuilds(m, lps.randn(2, 1, 4, 4, g), g)
  -- clone keeps the buffers
  lu.assertTrue(lps.allclose(m:clone():state_dict()["5.running_var"], m:state_dict()["5.running_var"], 0, 0))
  -- the generic constructor: values in field order, or by name
  lu.assertEquals(nn.layer("batchnorm1d", {features = 5}):arch()[1].features, 5)
  lu.assertEquals(nn.batchnorm2d(6, 0.01, 0.5):arch()[1], {type = "batchnorm2d", features = 6, eps = 0.01, momentum = 0.5})
end

function TestBatchNormArch:test_errors()
  T.assert_error_contains('unknown key "foo" (a batchnorm2d takes features, eps, momentum)', nn.from_arch,
    '[{"type":"batchnorm2d","features":8,"foo":1}]')
  T.assert_error_contains('layer 1 (batchnorm1d): "features" is missing', nn.from_arch, '[{"type":"batchnorm1d"}]')
  T.assert_error_contains('batchnorm2d: "features" is missing', nn.layer, "batchnorm2d", {eps = 0.1})
  T.assert_error_contains('a batchnorm1d has no field "affine"', nn.batchnorm1d, 3, {affine = false})
  T.assert_error_contains('"momentum" is 2, expected 0..1', nn.from_arch,
    '[{"type":"batchnorm1d","features":3,"momentum":2}]')
  T.assert_error_contains('"eps" must be a number, got a string', nn.from_arch,
    '[{"type":"batchnorm1d","features":3,"eps":"small"}]')
  T.assert_error_contains('layer 2 (batchnorm2d): "features" is 4 but layer 1 (conv2d) gives 8 channels',
    nn.from_arch, '[{"type":"conv2d","in":1,"out":8,"kernel":3},{"type":"batchnorm2d","features":4}]')
  T.assert_error_contains('layer 2 (batchnorm2d): needs (channels x height x width) but layer 1 (linear) gives (8) features',
    nn.from_arch, '[{"type":"linear","in":3,"out":8},{"type":"batchnorm2d","features":8}]')
  T.assert_error_contains('layer 3 (batchnorm1d): needs (features) or (features x length) per sample but layer 2 (relu) gives (8x26x26)',
    nn.from_arch, '[{"type":"input","shape":[1,28,28]},{"type":"conv2d","in":1,"out":8,"kernel":3},{"type":"relu"},{"type":"batchnorm1d","features":8}]')
  -- bad inputs
  local bn1, bn2 = nn.batchnorm1d(3), nn.batchnorm2d(3)
  T.assert_error_contains('batchnorm1d: "features" is 3 but its input (4x5) gives 5 features', bn1.forward, bn1, lps.zeros(4, 5))
  T.assert_error_contains("batchnorm1d: needs (features) or (features x length)", bn1.forward, bn1, lps.zeros(4, 3, 2, 2))
  T.assert_error_contains("batchnorm2d: needs (channels x height x width) but its input (4x3) gives (3) features",
    bn2.forward, bn2, lps.zeros(4, 3))
  T.assert_error_contains('batchnorm2d: "features" is 3 but its input (2x4x2x2) gives 4 channels',
    bn2.forward, bn2, lps.zeros(2, 4, 2, 2))
  -- buffers of the wrong shape
  local m = nn.sequential{nn.linear(2, 3), nn.batchnorm1d(3)}
  local sd = {}
  for k, v in pairs(m:state_dict()) do sd[k] = v:clone() end
  sd["1.running_var"] = lps.ones(4)
  T.assert_error_contains("load_named: layer 2 (batchnorm1d): buffer '1.running_var' has shape (4), expected (3)",
    m.load_named, m, sd)
  sd["1.running_var"] = nil
  T.assert_error_contains("load_named: layer 2 (batchnorm1d): buffer '1.running_var' is missing", m.load_named, m, sd)
end

TestBatchNormTrain = {}

-- lps.train in train mode: the running statistics move, the same every run.
function TestBatchNormTrain:test_train_deterministic()
  local g = lps.generator(8)
  local x, y = lps.randn(64, 6, g), {}
  for i = 1, 64 do y[i] = i % 3 + 1 end
  local state = T.assert_train_repeatable('[{"type":"linear","in":6,"out":8},{"type":"batchnorm1d","features":8},' ..
    '{"type":"relu"},{"type":"linear","in":8,"out":3}]', {x = x, y = y, epochs = 2, batch_size = 16,
    optimizer = function() return lps.optim.sgd{lr = 0.1} end})
  lu.assertTrue(state["1.running_mean"]:abs():max() > 0, "the running mean moved")
end

-- lps.evaluate and validation run in eval mode: the running statistics
-- normalize and stay, and each layer's mode comes back.
function TestBatchNormTrain:test_evaluate_in_eval_mode()
  local g = lps.generator(11)
  local m = randomize(nn.sequential{nn.linear(4, 3, g), nn.batchnorm1d(3), nn.linear(3, 2, g)}, g)
  m[3]:eval()
  local x, y = lps.randn(10, 4, g), {1, 2, 1, 2, 1, 2, 1, 2, 1, 2}
  local before = m:state_dict()["1.running_mean"]:clone()
  local acc, loss = lps.evaluate(m, {x = x, y = y})
  lu.assertTrue(lps.allclose(m:state_dict()["1.running_mean"], before, 0, 0), "running statistics unchanged")
  lu.assertTrue(m[1]:is_training() and m[2]:is_training() and not m[3]:is_training(), "modes restored")
  m:eval()
  local acc2, loss2 = lps.evaluate(m, {x = x, y = y})
  lu.assertEquals(acc, acc2)
  lu.assertEquals(loss, loss2)
  lu.assertAlmostEquals(loss, nn.cross_entropy():forward(m:forward(x), y), 1e-6)
  m:train()
  local report = lps.train(m, {x = x, y = y}, {optimizer = lps.optim.sgd{lr = 0}, batch_size = 5,
    shuffle = false, validation = {x = x, y = y}, progress = false})
  m:eval()
  lu.assertAlmostEquals(report.val_loss, nn.cross_entropy():forward(m:forward(x), y), 1e-6)
end

TestBatchNormTorch = {}

-- The same modules in PyTorch: eval-mode outputs, one train-mode forward's
-- outputs and running statistics, and four SGD steps in train mode.
function TestBatchNormTorch:test_agrees_with_pytorch()
  local g = lps.generator(12)
  local cnn = randomize(nn.sequential{nn.conv2d(1, 3, 3, {padding = 1, generator = g}), nn.batchnorm2d(3),
    nn.relu(), nn.flatten(), nn.linear(48, 5, g), nn.batchnorm1d(5, {eps = 1e-3, momentum = 0.3}),
    nn.linear(5, 3, g)}, g)
  local seq = randomize(nn.sequential{nn.batchnorm1d(3), nn.tanh()}, g)
  local fx, fy = lps.randn(32, 1, 4, 4, g), {}
  for i = 1, 32 do fy[i] = i % 3 + 1 end
  T.assert_torch_agrees{
    {name = "cnn with batchnorm2d and batchnorm1d", model = cnn, x = lps.randn(6, 1, 4, 4, g), train = true,
      fit = {x = fx, y = fy, lr = 0.1, batch_size = 8, steps = 4}},
    {name = "batchnorm1d on (batch x features x length)", model = seq, x = lps.randn(4, 3, 5, g), train = true}}
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
