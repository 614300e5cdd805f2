-- Probe matching (lualps.similarity.probe, lps.benchmark.methods.probe_matching):
-- the dreams (in [0, 1], each read by its own model as its class), the
-- score against a brute-force assignment over its softmax block, the
-- invariances of a function-based score (output classes, hidden units), a
-- ResNet (batch norm, residual blocks) read like any model, NaN models, the
-- hybrid's anchor and bad options.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local probe = require "lualps.similarity.probe"
local nn = lps.nn

local permute_classes, perms = T.permute_classes, T.all_perms

-- The directed score by brute force: reader r's softmax on dreamer d's dreams
-- (kd x kr), the best one-to-one assignment's sum over max(kd, kr).
local function brute(r, d, opts)
  local X = probe.dreams(d, opts)
  local rm, release = require("lualps.similarity.templates").function_of(r)
  if rm:named_parameters()[1].tensor:dim() == 4 then X = X:reshape(X:size(1), 1, 28, 28) end -- a CNN reads images
  local P = lps.estimators.softmax(rm:forward(X) * (1 / (opts and opts.temperature or 1))):totable()
  release()
  local n = opts and opts.starts or 1 -- the mean over each class's n dreams
  if n > 1 then
    local Q = {}
    for c = 1, #P // n do
      Q[c] = {}
      for j = 1, #P[1] do
        local sum = 0
        for t = 1, n do sum = sum + P[(c - 1) * n + t][j] end
        Q[c][j] = sum / n
      end
    end
    P = Q
  end
  local kd, kr = #P, #P[1]
  local small, large, best = math.min(kd, kr), math.max(kd, kr), -math.huge
  for _, p in ipairs(perms(large)) do
    local s = 0
    for i = 1, small do s = s + (kd <= kr and P[i][p[i]] or P[p[i]][i]) end
    best = math.max(best, s)
  end
  return best / large
end

TestProbe = {}

function TestProbe:test_dreams_are_images_their_model_reads_as_their_class()
  local g = lps.generator(4)
  local m = T.random_mlp(g, {784, 32, 5})
  local X = probe.dreams(m)
  lu.assertEquals(X:shape(), {5, 784})
  lu.assertTrue(X:min() >= 0 and X:max() <= 1, ("pixels in [%g, %g]"):format(X:min(), X:max()))
  local net = nn.mlp{784, 32, 5, generator = lps.generator(1)}
  for i, t in ipairs((net:parameters())) do t:copy(m[i]) end
  local y = net:forward(X)
  for c = 1, 5 do lu.assertEquals(math.tointeger(y[c]:argmax()), c, "dream " .. c) end
  -- the same model dreams the same images (fixed start and noise)
  lu.assertEquals(probe.dreams(m):totable(), X:totable())
  -- more steps climb further: the class's margin over the mean logit grows
  local function margin(Z)
    local out, s = net:forward(Z), 0
    for c = 1, 5 do s = s + out:get(c, c) - out[c]:mean() end
    return s
  end
  lu.assertTrue(margin(probe.dreams(m, {steps = 40})) > margin(probe.dreams(m, {steps = 5})))
end

function TestProbe:test_several_starts_average_the_reads_of_a_class()
  local g = lps.generator(9)
  local a, b = T.random_mlp(g, {784, 16, 4}), T.random_mlp(g, {784, 12, 3})
  local o1, o3 = {steps = 6}, {steps = 6, starts = 3}
  -- 3 dreams a class, class-major; the first start is the one-start dream
  local X1, X3 = probe.dreams(a, o1), probe.dreams(a, o3)
  lu.assertEquals(X3:shape(), {12, 784})
  for c = 1, 4 do lu.assertTrue(lps.allclose(X3[(c - 1) * 3 + 1], X1[c], 0, 1e-5), "class " .. c) end
  lu.assertFalse(lps.allclose(X3[1], X3[2], 0, 1e-3)) -- other starts dream otherwise
  -- the directed score: the best assignment of b's softmax averaged over
  -- each class's three dreams of a (a 4 x 3 block)
  local rm, release = require("lualps.similarity.templates").function_of(b)
  local P = lps.estimators.softmax(rm:forward(X3)):totable()
  release()
  local Q = {}
  for c = 1, 4 do
    Q[c] = {}
    for j = 1, 3 do Q[c][j] = (P[3 * c - 2][j] + P[3 * c - 1][j] + P[3 * c][j]) / 3 end
  end
  local best = -math.huge
  for _, p in ipairs(perms(4)) do best = math.max(best, Q[p[1]][1] + Q[p[2]][2] + Q[p[3]][3]) end
  lu.assertAlmostEquals(probe.matcher(o3).directed({b}, {a}):get(1, 1), best / 4, 1e-5)
  -- class permutations still score as the model itself
  local pa = permute_classes(a, {2, 4, 1, 3})
  local S = probe.matcher(o3).scores({a}, {pa, a})
  lu.assertAlmostEquals(S:get(1, 1), S:get(1, 2), 1e-5)
  -- dreamers of 3 and 4 classes in one bank (a new reader: nothing
  -- remembered): each block at its offset, averaged over its own dreams
  local r = T.random_mlp(g, {784, 10, 5})
  local both = probe.matcher(o3).directed({r}, {b, a})
  lu.assertAlmostEquals(both:get(1, 1), brute(r, b, o3), 1e-5)
  lu.assertAlmostEquals(both:get(1, 2), brute(r, a, o3), 1e-5)
  -- a softer reader (temperature 4): the same dreams, the block of softmax(logits / 4)
  local o4 = {steps = 6, starts = 3, temperature = 4}
  local soft = probe.matcher(o4).directed({r}, {b, a})
  lu.assertAlmostEquals(soft:get(1, 2), brute(r, a, o4), 1e-5)
  lu.assertNotAlmostEquals(soft:get(1, 2), both:get(1, 2), 1e-4)
  T.assert_error_contains("temperature must be a positive number, got 0", probe.matcher, {temperature = 0})
  T.assert_error_contains("starts must be a positive integer, got 0", probe.matcher, {starts = 0})
end

function TestProbe:test_smoothed_steps_blur_the_gradient_before_normalizing()
  -- a linear model's input gradient is the same everywhere: W_c - mean_j W_j
  -- for class c; one step from a noiseless grey start is, by hand,
  -- clamp(0.1 + lr * B(g) / rms(B(g))) with B two passes of the separable
  -- [1 2 1] / 4 blur, zeros outside the 28 x 28 image
  local g = lps.generator(12)
  local m = T.random_mlp(g, {784, 3})
  local W = m[1]:totable()
  local function blur(img)
    local out = {}
    local function at(t, r, c) return (r >= 1 and r <= 28 and c >= 1 and c <= 28) and t[(r - 1) * 28 + c] or 0 end
    local tmp = {}
    for r = 1, 28 do
      for c = 1, 28 do tmp[(r - 1) * 28 + c] = (at(img, r, c - 1) + 2 * at(img, r, c) + at(img, r, c + 1)) / 4 end
    end
    for r = 1, 28 do
      for c = 1, 28 do out[(r - 1) * 28 + c] = (at(tmp, r - 1, c) + 2 * at(tmp, r, c) + at(tmp, r + 1, c)) / 4 end
    end
    return out
  end
  local opts = {steps = 1, noise = 0, lr = 0.3, smooth = 2}
  local X = probe.dreams(m, opts):totable()
  for c = 1, 3 do
    local grad = {}
    for i = 1, 784 do grad[i] = W[c][i] - (W[1][i] + W[2][i] + W[3][i]) / 3 end
    grad = blur(blur(grad))
    local ss = 0
    for i = 1, 784 do ss = ss + grad[i] ^ 2 end
    local rms = math.sqrt(ss / 784)
    local worst = 0
    for i = 1, 784 do
      local want = math.min(1, math.max(0, 0.1 + 0.3 * grad[i] / rms))
      worst = math.max(worst, math.abs(X[c][i] - want))
    end
    lu.assertTrue(worst < 1e-5, ("class %d: dream differs from the hand-computed step by %g"):format(c, worst))
  end
  -- unsmoothed dreams differ; smoothing is part of a matcher's options
  lu.assertFalse(lps.allclose(probe.dreams(m, {steps = 1, noise = 0, lr = 0.3}), probe.dreams(m, opts), 0, 1e-3))
  lu.assertNotIs(probe.matcher{smooth = 1}, probe.matcher{smooth = 0})
  T.assert_error_contains("smooth must be an integer >= 0, got -1", probe.matcher, {smooth = -1})
  T.assert_error_contains("input_shape must be one square channel (1 x s x s) to smooth or jitter the steps", probe.matcher,
    {smooth = 1, input_shape = {3, 28, 28}})
end

function TestProbe:test_jittered_steps_take_the_gradient_at_a_shifted_dream()
  -- a linear model's gradient is the same at any input, so jitter only
  -- moves it: the step is the constant gradient moved back by the shift
  -- (dy, dx) drawn first from generator 1907, zeros where it came from
  -- outside the image, then normalized to unit RMS
  local m = T.random_mlp(lps.generator(13), {784, 3})
  local W = m[1]:totable()
  local jg = lps.generator(1907)
  local dy, dx = jg:random(5) - 3, jg:random(5) - 3
  lu.assertFalse(dy == 0 and dx == 0, "seed 1907's first shift moves the image")
  local X = probe.dreams(m, {steps = 1, noise = 0, lr = 0.3, jitter = 2}):totable()
  for c = 1, 3 do
    local grad, ss = {}, 0
    for r = 1, 28 do
      for col = 1, 28 do
        local rr, cc, v = r + dy, col + dx, 0 -- the gradient at pixel (rr, cc) of the shifted dream
        if rr >= 1 and rr <= 28 and cc >= 1 and cc <= 28 then
          local i = (rr - 1) * 28 + cc
          v = W[c][i] - (W[1][i] + W[2][i] + W[3][i]) / 3
        end
        grad[(r - 1) * 28 + col], ss = v, ss + v * v
      end
    end
    local rms, worst = math.sqrt(ss / 784), 0
    for i = 1, 784 do
      worst = math.max(worst, math.abs(X[c][i] - math.min(1, math.max(0, 0.1 + 0.3 * grad[i] / rms))))
    end
    lu.assertTrue(worst < 1e-5, ("class %d: dream differs from the hand-computed step by %g"):format(c, worst))
  end
  T.assert_error_contains("jitter must be an integer >= 0, got 1.5", probe.matcher, {jitter = 1.5})
end

function TestProbe:test_directed_score_is_the_best_assignment_of_the_softmax_block()
  local g = lps.generator(6)
  local r = T.random_mlp(g, {784, 16, 4})
  local dreamers = {T.random_mlp(g, {784, 12, 3}), T.random_mlp(g, {784, 20, 6}), T.random_mlp(g, {784, 8, 4})}
  local pm = probe.matcher{steps = 7} -- its own options: nothing remembered from other tests
  local D = pm.directed({r}, dreamers) -- one bank of 13 dreams: the offsets must hold
  for j, d in ipairs(dreamers) do
    lu.assertAlmostEquals(D:get(1, j), brute(r, d, {steps = 7}), 1e-6)
  end
  -- the probe options reach the dreams: 7 steps dream otherwise than 30
  lu.assertNotEquals(probe.dreams(dreamers[1], {steps = 7}):totable(), probe.dreams(dreamers[1]):totable())
  lu.assertAlmostEquals(pm.directed({r}, {dreamers[2]}):get(1, 1), D:get(1, 2), 0) -- remembered
  -- the symmetric score is the mean of both directions
  local S = pm.scores({r}, dreamers)
  local back = pm.directed(dreamers, {r})
  for j = 1, 3 do lu.assertAlmostEquals(S:get(1, j), (D:get(1, j) + back:get(j, 1)) / 2, 1e-7) end
end

function TestProbe:test_permuted_classes_and_hidden_units_score_one()
  local g = lps.generator(11)
  local a = T.random_mlp(g, {784, 20, 12, 3})
  local p1, p2 = lps.data.randperm(20, g), lps.data.randperm(12, g)
  local hidden = {a[1]:index_rows(p1), a[2]:index_rows(p1), a[3]:index_rows(p2):t():index_rows(p1):t():clone(),
                  a[4]:index_rows(p2), a[5]:t():index_rows(p2):t():clone(), a[6]:clone()}
  local wide = T.random_mlp(g, {784, 16, 12}) -- 12 classes: the linear assignment
  local cnn = T.small_cnn_record(g)
  local pm = lps.benchmark.methods.probe_matching()
  local models = {a, wide, cnn}
  local S = pm:similarity(models, {permute_classes(a, {3, 1, 2}), permute_classes(wide, lps.data.randperm(12, g)),
    permute_classes(cnn, {2, 4, 3, 1})})
  -- a model against itself scores 1 when it reads each of its dreams as its
  -- class with confidence: the 3-class MLP does; some dreams of the random
  -- 12-class MLP and CNN stay closer to other classes. A copy with its
  -- classes permuted scores what the model itself does.
  local self = pm:similarity(models, models)
  for i = 1, 3 do lu.assertAlmostEquals(S:get(i, i), self:get(i, i), 1e-5) end
  lu.assertAlmostEquals(self:get(1, 1), 1, 1e-5)
  lu.assertAlmostEquals(pm:similarity({a}, {hidden}):get(1, 1), 1, 1e-5)
  -- the same dreams, up to rounding, whatever the order of the hidden units
  lu.assertTrue(lps.allclose(probe.dreams(a), probe.dreams(hidden), 0, 1e-4))
  -- different functions score less (so the ones above measure something), the same both ways
  lu.assertTrue(S:get(1, 3) < 0.9, "an MLP against a CNN: " .. S:get(1, 3))
  lu.assertAlmostEquals(S:get(1, 3), S:get(3, 1), 1e-6)
end

-- A small ResNet (batch norm, residual blocks, global average pooling) with
-- random weights and running statistics.
local function resnet(s, classes)
  local function conv(cin, cout, k, stride)
    return {type = "conv2d", ["in"] = cin, out = cout, kernel = k, stride = stride or 1, padding = k // 2, bias = false}
  end
  local function bn(c) return {type = "batchnorm2d", features = c} end
  local RELU = {type = "relu"}
  local arch = {{type = "input", shape = {1, 28, 28}}, conv(1, 4, 3), bn(4), RELU,
    {type = "residual", body = {conv(4, 4, 3), bn(4), RELU, conv(4, 4, 3), bn(4)}, shortcut = {}}, RELU,
    {type = "adaptive_avgpool2d", output = 1}, {type = "flatten"}, {type = "linear", ["in"] = 4, out = classes}}
  local g = lps.generator(s)
  local m = T.randomize_state(nn.from_arch(arch, g), g):eval()
  local ps = m:named_parameters()
  ps[#ps - 1].tensor:mul_(30) -- a confident head: outputs far from uniform
  return m
end

function TestProbe:test_resnets_are_read_through_their_function()
  local a, b = resnet(1, 3), resnet(2, 3)
  local pm = lps.benchmark.methods.probe_matching()
  local ra, rb = lps.similarity.weights(a), lps.similarity.weights(b)
  local perm = lps.similarity.weights(a)
  local W, bias = a:named_parameters()[#a:named_parameters() - 1].tensor, a:named_parameters()[#a:named_parameters()].tensor
  perm[#perm - 1], perm[#perm] = W:index_rows({2, 3, 1}), bias:index_rows({2, 3, 1})
  local S = pm:similarity({ra}, {ra, rb, perm})
  lu.assertTrue(S:get(1, 1) > 0.3 and S:get(1, 1) <= 1 + 1e-6, "itself: " .. S:get(1, 1))
  lu.assertAlmostEquals(S:get(1, 3), S:get(1, 1), 1e-5) -- its classes permuted
  lu.assertTrue(S:get(1, 2) == S:get(1, 2) and S:get(1, 2) < S:get(1, 1), "another ResNet: " .. S:get(1, 2))
  -- the user's module is given back as it was: training mode, gradients on
  a:train()
  lps.similarity.probe.dreams(ra)
  lu.assertTrue(a:is_training())
end

-- adapt_bn (the default): a reader with batch norm reads each dreamer's
-- dreams as one batch normalized by their own statistics (AdaBN); readers
-- without batch norm read as before, to the bit.
function TestProbe:test_batch_norm_readers_adapt_to_each_dreamers_dreams()
  local g = lps.generator(31)
  local rm = resnet(3, 3)
  local r = lps.similarity.weights(rm)
  local dreamers = {T.random_mlp(g, {784, 12, 3}), T.random_mlp(g, {784, 20, 4}), T.random_mlp(g, {784, 8, 2})}
  local adapt, fixed = probe.matcher{steps = 5, blur_bn = 0}, probe.matcher{steps = 5, adapt_bn = false, blur_bn = 0}
  local A, F = adapt.directed({r}, dreamers), fixed.directed({r}, dreamers)
  for j, d in ipairs(dreamers) do
    local X = probe.dreams(d, {steps = 5})
    rm:batch_stats() -- the reader on these dreams alone, by their statistics
    local Y = rm:forward(X:reshape(X:size(1), 1, 28, 28))
    local P = lps.estimators.softmax(Y):totable()
    rm:batch_stats(false)
    lu.assertTrue(lps.allclose(probe.outputs(r, X, {{0, X:size(1)}}, {blur_bn = 0}), Y, 0, 0)) -- probe.outputs reads so
    lu.assertFalse(lps.allclose(probe.outputs(r, X, {{0, X:size(1)}}, {adapt_bn = false, blur_bn = 0}), Y, 0, 1e-4))
    lu.assertAlmostEquals(A:get(1, j), require("lualps.similarity.match").block_score(P, 0, 0, #P, #P[1]), 1e-6)
    lu.assertAlmostEquals(F:get(1, j), brute(r, d, {steps = 5, blur_bn = 0}), 1e-6) -- off: the running statistics
  end
  lu.assertNotEquals(A:totable(), F:totable())
  -- an MLP reader: the same bits either way
  local mlp = T.random_mlp(g, {784, 10, 3})
  lu.assertEquals(adapt.directed({mlp}, dreamers):totable(), fixed.directed({mlp}, dreamers):totable())
end

-- blur_bn (default 1): a reader with batch norm reads the dreams blurred
-- (lps.data.domain "blur") that many times; readers without it read them
-- as they are, to the bit.
function TestProbe:test_batch_norm_readers_read_blurred_dreams()
  local g = lps.generator(33)
  local rm = resnet(5, 3)
  local r = lps.similarity.weights(rm)
  local d = T.random_mlp(g, {784, 12, 3})
  local X = probe.dreams(d, {steps = 5})
  local blocks = {{0, X:size(1)}}
  for _, passes in ipairs{1, 2} do
    local B = X
    for _ = 1, passes do B = lps.data.domain(B, "blur") end
    lu.assertFalse(lps.allclose(B, X, 0, 1e-3)) -- the blur changes the dreams
    rm:batch_stats()
    local Y = rm:forward(B:reshape(B:size(1), 1, 28, 28))
    rm:batch_stats(false)
    lu.assertTrue(lps.allclose(probe.outputs(r, X, blocks, {blur_bn = passes}), Y, 0, 0), passes .. " passes")
  end
  lu.assertTrue(lps.allclose(probe.outputs(r, X, blocks), probe.outputs(r, X, blocks, {blur_bn = 1}), 0, 0)) -- the default
  lu.assertFalse(lps.allclose(probe.outputs(r, X, blocks), probe.outputs(r, X, blocks, {blur_bn = 0}), 0, 1e-4))
  -- the matcher scores what probe.outputs reads
  local on, off = probe.matcher{steps = 5}, probe.matcher{steps = 5, blur_bn = 0}
  local block = require("lualps.similarity.match").block_score
  for m, o in pairs{[on] = {blur_bn = 1}, [off] = {blur_bn = 0}} do
    local P = lps.estimators.softmax(probe.outputs(r, X, blocks, o)):totable()
    lu.assertAlmostEquals(m.directed({r}, {d}):get(1, 1), block(P, 0, 0, #P, #P[1]), 1e-6)
  end
  -- an MLP reader and an MLP dreamer reading the ResNet's dreams: the same bits either way
  local mlp = T.random_mlp(g, {784, 10, 3})
  lu.assertEquals(on.directed({mlp, d}, {d, r}):totable(), off.directed({mlp, d}, {d, r}):totable())
  T.assert_error_contains("blur_bn must be an integer >= 0, got 0.5", probe.matcher, {blur_bn = 0.5})
  -- colour dreams are read as they are: the blur is only for one square channel
  local cm = lps.nn.from_arch({{type = "input", shape = {3, 8, 8}}, {type = "conv2d", ["in"] = 3, out = 4, kernel = 3, padding = 1},
    {type = "batchnorm2d", features = 4}, {type = "relu"}, {type = "flatten"}, {type = "linear", ["in"] = 256, out = 3}}, g)
  local C3 = lps.rand(6, 192, g)
  local rgb = {input_shape = {3, 8, 8}}
  local with, without = probe.outputs({module = cm}, C3, {{0, 6}}, rgb), probe.outputs({module = cm}, C3, {{0, 6}},
    {input_shape = {3, 8, 8}, blur_bn = 0})
  lu.assertTrue(lps.allclose(with, without, 0, 0))
  lu.assertEquals(with:shape(), {6, 3})
end

-- One square channel (1 x s x s): smooth and jitter need s >= 2 (refused
-- otherwise), blur_bn blurs for s >= 3 and reads other shapes as they are.
function TestProbe:test_the_square_channel_bounds()
  local msg = "input_shape must be one square channel (1 x s x s) to smooth or jitter the steps"
  for _, sh in ipairs{{1, 1, 1}, {1, 2, 3}, {2, 2, 2}, {4, 4}} do
    T.assert_error_contains(msg, probe.matcher, {smooth = 1, input_shape = sh})
    T.assert_error_contains(msg, probe.matcher, {jitter = 1, input_shape = sh})
  end
  lu.assertTrue(pcall(probe.matcher, {smooth = 1, jitter = 1, input_shape = {1, 2, 2}}))
  local g = lps.generator(34)
  for s, blurred in pairs{[2] = false, [3] = true, [4] = true} do
    local m = lps.nn.from_arch({{type = "input", shape = {1, s, s}}, {type = "conv2d", ["in"] = 1, out = 2, kernel = 1},
      {type = "batchnorm2d", features = 2}, {type = "relu"}, {type = "flatten"},
      {type = "linear", ["in"] = 2 * s * s, out = 3}}, g)
    local X, sh = lps.rand(4, s * s, g), {input_shape = {1, s, s}}
    local on = probe.outputs({module = m}, X, {{0, 4}}, sh)
    local off = probe.outputs({module = m}, X, {{0, 4}}, {input_shape = {1, s, s}, blur_bn = 0})
    lu.assertEquals(not lps.allclose(on, off, 0, 0), blurred, s .. " x " .. s)
  end
end

-- stat_prior: a batch norm model's dreams also descend its layers' KL from
-- their running statistics; no effect on a model without batch norm, and
-- the model is left without it.
function TestProbe:test_stat_prior_changes_only_batch_norm_dreams()
  local g = lps.generator(32)
  local rm = resnet(4, 3)
  local r, mlp = lps.similarity.weights(rm), T.random_mlp(g, {784, 12, 3})
  local plain = probe.dreams(r, {steps = 5})
  local prior = probe.dreams(r, {steps = 5, stat_prior = 1})
  lu.assertFalse(lps.allclose(plain, prior, 0, 1e-4))
  lu.assertEquals(probe.dreams(r, {steps = 5}):totable(), plain:totable()) -- the prior was turned off again
  lu.assertEquals(probe.dreams(mlp, {steps = 5, stat_prior = 1}):totable(), probe.dreams(mlp, {steps = 5}):totable())
  -- the dreams climb their logits but descend the prior: the first batch
  -- norm layer's statistics over them come nearer its running ones
  local function kl(X)
    local first = lps.nn.from_arch({{type = "input", shape = {1, 28, 28}}, rm:arch()[1]}, false)
    first:parameters()[1]:copy(rm:parameters()[1])
    local Y = first:forward(X:reshape(X:size(1), 1, 28, 28))
    local bufs = rm:named_buffers()
    local mean, var = bufs[1].tensor:totable(), bufs[2].tensor:totable()
    local total, T4 = 0, Y:totable()
    for c = 1, Y:size(2) do
      local n, mu, sq = 0, 0, 0
      for _, img in ipairs(T4) do for _, row in ipairs(img[c]) do for _, v in ipairs(row) do
        n, mu = n + 1, mu + v
      end end end
      mu = mu / n
      for _, img in ipairs(T4) do for _, row in ipairs(img[c]) do for _, v in ipairs(row) do
        sq = sq + (v - mu) ^ 2
      end end end
      local s2 = sq / n + 1e-5
      local r2 = var[c] + 1e-5
      total = total + 0.5 * (s2 / r2 + (mu - mean[c]) ^ 2 / r2 - 1 - math.log(s2 / r2))
    end
    return total
  end
  lu.assertTrue(kl(prior) < kl(plain), ("KL %g with the prior, %g without"):format(kl(prior), kl(plain)))
  -- a user's module comes back with its own settings
  rm:batch_stats():stat_prior(0.25)
  probe.dreams({module = rm}, {steps = 2, stat_prior = 1})
  probe.matcher{steps = 2}.directed({{module = rm}}, {mlp})
  lu.assertTrue(rm:uses_batch_stats())
  lu.assertEquals(rm:stat_prior_weight(), 0.25)
  rm:batch_stats(false):stat_prior(0)
end

function TestProbe:test_nan_models_are_not_comparable()
  local g = lps.generator(2)
  local a, b = T.random_mlp(g, {784, 8, 3}), T.random_mlp(g, {784, 8, 3})
  local bad = {a[1]:clone(), a[2]:clone(), a[3]:clone(), a[4]:clone()}
  bad[1]:set(1, 1, 0 / 0)
  local S = lps.benchmark.methods.probe_matching():similarity({a, bad}, {b, bad})
  lu.assertTrue(S:get(1, 1) == S:get(1, 1))
  for _, ij in ipairs{{1, 2}, {2, 1}, {2, 2}} do
    local v = S:get(ij[1], ij[2])
    lu.assertTrue(v ~= v, ("(%d, %d) %s"):format(ij[1], ij[2], v))
  end
end

function TestProbe:test_half_probe_is_the_mean_with_template_matching()
  local g = lps.generator(9)
  local ms = {T.random_mlp(g, {784, 12, 3}), T.random_mlp(g, {784, 12, 4}), T.random_mlp(g, {784, 10, 3})}
  local half = lps.benchmark.methods.probe_matching{probe = 0.5}:similarity(ms, ms)
  local tm = lps.benchmark.methods.template_matching():similarity(ms, ms)
  local pr = lps.benchmark.methods.probe_matching():similarity(ms, ms)
  lu.assertTrue(lps.allclose(half, (tm + pr) * 0.5, 0, 1e-6))
  -- directed: only a reads b's dreams (the symmetric score is the mean of both directions)
  local D = lps.benchmark.methods.probe_matching{directed = true}:similarity(ms, ms)
  lu.assertEquals(D:totable(), probe.matcher().directed(ms, ms):totable())
  lu.assertTrue(lps.allclose(pr, (D + D:t()) * 0.5, 0, 1e-6))
  -- probe 0: template matching's bits
  lu.assertEquals(lps.benchmark.methods.probe_matching{probe = 0}:similarity(ms, ms):totable(), tm:totable())
end

function TestProbe:test_bad_options_are_refused()
  T.assert_error_contains("steps must be a positive integer, got 0", probe.matcher, {steps = 0})
  T.assert_error_contains("lr must be a positive number", probe.dreams, {}, {lr = -1})
  T.assert_error_contains("start must be a number in [0, 1]", probe.matcher, {start = 2})
  T.assert_error_contains("input_shape must be a list of positive integers", probe.matcher, {input_shape = {1, 0}})
  T.assert_error_contains("unknown option 'stepz'", probe.matcher, {stepz = 3})
  T.assert_error_contains("adapt_bn must be a boolean, got 1", probe.matcher, {adapt_bn = 1})
  T.assert_error_contains("stat_prior must be a number >= 0, got -1", probe.dreams, {}, {stat_prior = -1})
  T.assert_error_contains("probe must be a number in [0, 1], got 2", lps.benchmark.methods.probe_matching, {probe = 2})
  T.assert_error_contains("unknown option 'prob'", lps.benchmark.methods.probe_matching, {prob = 1})
end

-- Something else than a model: errors naming the operation (the Lua API
-- fuzzer found "attempt to index a nil value (field 'integer index')" from
-- templates.lua for a table without tensors, "attempt to get length" from
-- probe.lua for a matcher's lists)
function TestProbe:test_bad_models_are_refused()
  local templates = require "lualps.similarity.templates"
  local m = T.random_mlp(lps.generator(1), {4, 3, 2})
  local o = {input_shape = {4}, steps = 2}
  local want = "expected a model (a weight list {W1, b1, ...} or {module = m}, an lps.nn module), got "
  T.assert_error_contains("probe.dreams: " .. want .. "a table without either", probe.dreams, {}, o)
  T.assert_error_contains("probe.dreams: " .. want .. "number", probe.dreams, 3, o)
  T.assert_error_contains("probe.has_batch_norm: " .. want .. "a table without either", probe.has_batch_norm, {module = 2})
  T.assert_error_contains("probe.outputs: " .. want .. "nil", probe.outputs, nil, lps.zeros(2, 4))
  T.assert_error_contains("probe.outputs: X must be an n x d tensor of dreams, got table", probe.outputs, m, {})
  T.assert_error_contains("function_of: " .. want .. "string", templates.function_of, "m")
  local pm = probe.matcher(o)
  T.assert_error_contains("probe matching: readers and dreamers must be lists of models, got table and nil", pm.directed,
    {m})
  T.assert_error_contains("probe matching: " .. want .. "boolean", pm.scores, {m}, {true})
  lu.assertEquals(pm.scores({m}, {m}):shape(), {1, 1})
  local net = lps.similarity.network{families = {"mlp", "cnn"}, input_dim = 16, input_shape = {1, 4, 4}, width = 4,
    embed = 3}
  T.assert_error_contains("templates: " .. want .. "a table without either", net.templates, net, {module = "x"})
  -- a module with batch norm, its blocks checked before they are read
  local bn = {module = lps.nn.from_arch({{type = "linear", ["in"] = 4, out = 3}, {type = "batchnorm1d", features = 3},
    {type = "relu"}, {type = "linear", ["in"] = 3, out = 2}})}
  T.assert_error_contains("probe.outputs: blocks must be a list of {first row - 1, rows} pairs within X's rows",
    probe.outputs, bn, lps.zeros(2, 4), {{0, 3}}, o)
  lu.assertEquals(probe.outputs(bn, lps.rand(2, 4), {{0, 2}}, o):shape(), {2, 2})
  -- a weight list with a `module` that is not one, or holes among its weights
  T.assert_error_contains("probe.has_batch_norm: " .. want .. "a table without either", probe.has_batch_norm,
    {lps.zeros(3, 4), lps.zeros(3), module = 3})
  T.assert_error_contains("similarity: a weight list without an arch holds 2-D weights {W1, b1, W2, b2, ...}; entry 3 "
    .. "is string", templates.function_of, {lps.zeros(3, 4), lps.zeros(3), "W", lps.zeros(2)})
  T.assert_error_contains("entry 1 is 3", templates.function_of, {lps.zeros(3), lps.zeros(3)})
  -- buffers that are not a list ("attempt to get length of a number value" from probe.lua)
  T.assert_error_contains("probe.has_batch_norm: the model's buffers must be a list of tensors, got number",
    probe.has_batch_norm, {lps.zeros(3, 4), lps.zeros(3), buffers = 2})
  lu.assertFalse(probe.has_batch_norm({lps.zeros(3, 4), lps.zeros(3), buffers = {}}))
  -- {x, module = m}: the module's first parameter tells images from vectors, not x ("attempt to call a nil
  -- value (method 'dim')"), and a module without parameters is named
  local tnet = lps.similarity.network{families = {"mlp", "cnn"}, input_dim = 16, input_shape = {1, 4, 4}, width = 4,
    embed = 3, template_pool = 2, noise = 2}
  lu.assertEquals(tnet:templates({5, module = lps.nn.mlp{16, 3, 2}}):size(1), 2)
  T.assert_error_contains("templates: the model's module has no parameters", tnet.templates, tnet,
    {module = lps.nn.sequential{lps.nn.relu()}})
  local hy = lps.similarity.hybrid.new(tnet, lps.similarity.hybrid_state({tm_pool = 2}, lps.zeros(2, 3), {0.5, 0.1, 0.9}))
  T.assert_error_contains("hybrid: similarity needs two lists of models, got table and string", hy.similarity, hy, {}, "b")
  T.assert_error_contains("hybrid: describe needs a list of models, got number", hy.describe, hy, 1)
end

local code = lu.LuaUnit.run("-o", "tap")
T.cleanup()
os.exit(code, true)
