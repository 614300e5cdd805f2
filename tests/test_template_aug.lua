-- train_network's template_aug (archnet's augment_templates): random
-- transforms of a batch model's class templates at every step. Each
-- transform does what its documentation says at a known generator, keeps
-- the shapes, the unit template block and the largest norm 1, and leaves
-- the prepared model unchanged; strength 0 (or false, or {}) trains to the
-- same bits as before; the same seed gives the same bits; bad values raise.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local sim = lps.similarity

-- One-layer models of 784 inputs: 6 tasks of 2 or 3 classes, 4 models each.
local function zoo()
  local g = lps.generator(41)
  local tasks = {{0, 1}, {2, 3}, {0, 2}, {1, 3}, {0, 1, 2}, {1, 2, 3}}
  local dirs = {}
  for c = 0, 3 do dirs[c] = lps.randn(784, g) end
  local models, y = {}, {}
  for t, cls in ipairs(tasks) do
    for _ = 1, 4 do
      local W = lps.zeros(#cls, 784)
      for r, c in ipairs(cls) do W[r]:copy(dirs[c] + lps.randn(784, g)) end
      models[#models + 1] = {W, lps.randn(#cls, g), family = "mlp"}
      y[#y + 1] = t
    end
  end
  return models, y
end

local NET = {families = {"mlp"}, template_pool = 7, noise = 2, width = 8, embed = 4, classes = 6, seed = 2}
local W = 2 * 16 -- the template block: two noise ranges of 4x4 pooled templates
local function f32(x) return lps.tensor({x})[1] end -- x rounded to float32

local function net_and_prepared(i)
  local net = sim.network(NET)
  local models = zoo()
  return net, net:prepare(models[i or 1]), models
end

-- The 3x3 binomial blur of a side x side image (a list), weights
-- renormalized inside the image (written out again here, as a reference).
local function blur(img, side)
  local k = {{1, 2, 1}, {2, 4, 2}, {1, 2, 1}}
  local out = {}
  for r = 1, side do
    for c = 1, side do
      local s, ws = 0, 0
      for dr = -1, 1 do for dc = -1, 1 do
        local rr, cc = r + dr, c + dc
        if rr >= 1 and rr <= side and cc >= 1 and cc <= side then
          s, ws = s + k[dr + 2][dc + 2] * img[(rr - 1) * side + cc], ws + k[dr + 2][dc + 2]
        end
      end end
      out[(r - 1) * side + c] = s / ws
    end
  end
  return out
end

local function unit(row)
  local s = 0
  for j = 1, W do s = s + row[j] ^ 2 end
  s = math.sqrt(s)
  for j = 1, W do row[j] = row[j] / s end
  return row
end

local function assert_rows_close(A, expected, tol, what)
  for c, row in ipairs(expected) do
    for j, v in ipairs(row) do lu.assertAlmostEquals(A:get(c, j), v, tol, ("%s [%d][%d]"):format(what, c, j)) end
  end
end

-- Shapes, the unit template block, the largest norm 1, the one-hot columns,
-- and the prepared model itself untouched, for every transform.
local function check_invariants(p, q)
  lu.assertEquals(q.T:shape(), p.T:shape())
  lu.assertEquals(q.tlogit:shape(), p.tlogit:shape())
  lu.assertEquals(q.tnorm:shape(), p.tnorm:shape())
  local mx = 0
  for c = 1, q.T:size(1) do
    local s = 0
    for j = 1, W do s = s + q.T:get(c, j) ^ 2 end
    lu.assertAlmostEquals(s, 1, 1e-5)
    for j = W + 1, W + 8 do lu.assertEquals(q.T:get(c, j), p.T:get(c, j)) end
    mx = math.max(mx, q.tnorm[c])
  end
  lu.assertAlmostEquals(mx, 1, 1e-6)
end

TestTemplateAug = {}

function TestTemplateAug:test_zero_strength_is_the_prepared_model()
  local net, p = net_and_prepared()
  lu.assertIs(net:augment_templates(p, {noise = 0, blur = 0, scale = 0, mix = 0}, lps.generator(1), p), p)
  lu.assertIs(net:augment_templates(p, {mix = 1}, lps.generator(1), nil), p) -- mix without a partner
end

function TestTemplateAug:test_blur_as_specified()
  local net, p = net_and_prepared()
  local before = p.T:clone()
  local q = net:augment_templates(p, {blur = 0.8}, lps.generator(11))
  check_invariants(p, q)
  T.assert_same_bits(p.T, before, "the prepared model's T")
  local a = (2 * lps.generator(11):uniform() - 1) * 0.8
  local expected = {}
  for c, row in ipairs(p.T:totable()) do
    local e = {}
    for r = 0, 1 do
      local img = {table.unpack(row, r * 16 + 1, r * 16 + 16)}
      local b = blur(img, 4)
      for j = 1, 16 do e[r * 16 + j] = img[j] + a * (b[j] - img[j]) end
    end
    expected[c] = unit(e)
  end
  assert_rows_close(q.T, expected, 1e-5, "blurred T")
  for c = 1, p.T:size(1) do
    lu.assertEquals(q.tlogit[c], p.tlogit[c])
    lu.assertEquals(q.tnorm[c], p.tnorm[c])
    for j = W + 9, W + 10 do lu.assertEquals(q.T:get(c, j), p.T:get(c, j)) end
  end
end

function TestTemplateAug:test_noise_as_specified()
  local net, p = net_and_prepared(2)
  local q = net:augment_templates(p, {noise = 0.7}, lps.generator(12))
  check_invariants(p, q)
  local g = lps.generator(12)
  local r = g:uniform() * 0.7 / math.sqrt(W)
  local expected = {}
  for c, row in ipairs(p.T:totable()) do
    local e = {}
    for j = 1, W do e[j] = row[j] + r * g:normal() end
    expected[c] = unit(e)
  end
  assert_rows_close(q.T, expected, 1e-5, "noisy T")
  for c = 1, p.T:size(1) do lu.assertEquals(q.tlogit[c], p.tlogit[c]) end
end

function TestTemplateAug:test_scale_as_specified()
  local net, p = net_and_prepared(17) -- a 3-class model
  local q = net:augment_templates(p, {scale = 0.5}, lps.generator(13))
  check_invariants(p, q)
  local g = lps.generator(13)
  local f = math.exp(0.5 * g:normal())
  local tn, mx = {}, 0
  for c = 1, p.T:size(1) do
    -- exact: each value scaled in double and rounded to float32 once
    lu.assertEquals(q.tlogit[c], f32(p.tlogit[c] * f))
    for j = W + 9, W + 10 do lu.assertEquals(q.T:get(c, j), f32(p.T:get(c, j) * f)) end
    for j = 1, W do lu.assertEquals(q.T:get(c, j), p.T:get(c, j)) end -- the template block as it was
    tn[c] = p.tnorm[c] * math.exp(0.5 * g:normal())
    mx = math.max(mx, tn[c])
  end
  for c = 1, p.T:size(1) do lu.assertEquals(q.tnorm[c], f32(tn[c] / mx)) end
end

function TestTemplateAug:test_mix_as_specified()
  local net, p, models = net_and_prepared(1)
  local b = net:prepare(models[2]) -- the same task
  local q = net:augment_templates(p, {mix = 0.5}, lps.generator(14), b)
  check_invariants(p, q)
  local lam = lps.generator(14):uniform() * 0.5
  local A, B = p.T:totable(), b.T:totable()
  local expected = {}
  for c = 1, #A do
    local e = {}
    for j = 1, W do e[j] = (1 - lam) * A[c][j] + lam * B[c][j] end
    expected[c] = unit(e)
    lu.assertAlmostEquals(q.tlogit[c], (1 - lam) * p.tlogit[c] + lam * b.tlogit[c], 1e-5)
  end
  assert_rows_close(q.T, expected, 1e-5, "mixed T")
  -- a partner of another shape (3 classes against 2) is skipped
  lu.assertIs(net:augment_templates(p, {mix = 0.5}, lps.generator(14), net:prepare(models[17])), p)
end

-- The parameters after training, one list of tensors.
local function train(opts)
  local net = sim.network(NET)
  local models, y = zoo()
  local o = {epochs = 2, batch_size = 8, seed = 3}
  for k, v in pairs(opts or {}) do o[k] = v end
  sim.train_network(net, models, y, o)
  return T.clone_list(net:parameters())
end

local function same(a, b)
  for i = 1, #a do
    if not lps.allclose(a[i], b[i], 0, 0) then return false end
  end
  return true
end

function TestTemplateAug:test_off_trains_to_the_same_bits()
  local base = train{template_aug = false}
  for _, aug in ipairs{{}, {noise = 0, blur = 0, scale = 0, mix = 0}} do
    local p = train{template_aug = aug}
    for i = 1, #base do T.assert_same_bits(p[i], base[i], "parameter " .. i) end
  end
end

function TestTemplateAug:test_default_is_off()
  lu.assertFalse(sim.train_defaults.template_aug)
  local a, b = train(), train{template_aug = false}
  for i = 1, #a do T.assert_same_bits(a[i], b[i], "parameter " .. i) end
end

function TestTemplateAug:test_on_is_seeded_and_changes_training()
  local base = train{template_aug = false}
  for _, aug in ipairs{{noise = 0.5}, {blur = 1}, {scale = 0.5}, {mix = 0.5}, {noise = 0.3, blur = 0.5, scale = 0.3, mix = 0.25}} do
    local a, b = train{template_aug = aug}, train{template_aug = aug}
    for i = 1, #a do T.assert_same_bits(a[i], b[i], "parameter " .. i) end
    lu.assertFalse(same(a, base), "template_aug changes the training")
  end
  lu.assertFalse(same(train{template_aug = {noise = 0.5}, seed = 3}, train{template_aug = {noise = 0.5}, seed = 4}))
end

function TestTemplateAug:test_bad_values_raise()
  local net = sim.network(NET)
  local models, y = zoo()
  local function err(aug, needle, n)
    local ok, e = pcall(sim.train_network, n or net, models, y, {epochs = 1, template_aug = aug})
    lu.assertFalse(ok)
    lu.assertStrContains(e, needle)
  end
  err(1, "template_aug must be false or a table of strengths, got 1")
  err(true, "template_aug must be false or a table of strengths")
  err({blurr = 1}, "unknown template_aug transform 'blurr' (blur, mix, noise, scale)")
  err({noise = -0.1}, "template_aug.noise must be a finite number >= 0, got -0.1")
  err({scale = 0 / 0}, "template_aug.scale must be a finite number >= 0")
  err({mix = math.huge}, "template_aug.mix must be a finite number >= 0")
  err({blur = "1"}, "template_aug.blur must be a finite number >= 0")
  -- a network without the templates slot's transforms (the MLP-only network)
  local plain = sim.network{input_dim = 784, classes = 6}
  err({noise = 0.5}, "template_aug needs a network with the templates slot", plain)
  -- weight-unit slots only
  local layered = sim.network{families = {"mlp"}, slots = {"first"}, classes = 6}
  local ms2 = {}
  local g = lps.generator(3)
  for i = 1, #models do ms2[i] = {lps.randn(5, 784, g), lps.randn(5, g), lps.randn(2, 5, g), lps.randn(2, g)} end
  local ok, e = pcall(sim.train_network, layered, ms2, y, {epochs = 1, template_aug = {noise = 0.5}})
  lu.assertFalse(ok)
  lu.assertStrContains(e, "template_aug needs a network with the templates slot")
end

function TestTemplateAug:test_default_skips_networks_without_templates()
  local models, y = zoo()
  local g = lps.generator(3)
  local ms2 = {}
  for i = 1, #models do ms2[i] = {lps.randn(5, 784, g), lps.randn(5, g), lps.randn(2, 5, g), lps.randn(2, g)} end
  local function fit(opts)
    local net = sim.network{families = {"mlp"}, slots = {"first"}, classes = 6, seed = 2}
    local o = {epochs = 1, batch_size = 8, seed = 3}
    for k, v in pairs(opts) do o[k] = v end
    sim.train_network(net, ms2, y, o)
    return net:parameters()
  end
  -- a default of {scale = 2} (set by a user for every network) does not apply here: no error, same bits
  local saved = sim.train_defaults.template_aug
  sim.train_defaults.template_aug = {scale = 2}
  local ok, a = pcall(fit, {})
  sim.train_defaults.template_aug = saved
  lu.assertTrue(ok, a)
  local b = fit{template_aug = false}
  for i = 1, #a do T.assert_same_bits(a[i], b[i], "parameter " .. i) end
end

function TestTemplateAug:test_a_default_applies_to_template_networks()
  local saved = sim.train_defaults.template_aug
  sim.train_defaults.template_aug = {scale = 2}
  local ok, a = pcall(train)
  sim.train_defaults.template_aug = saved
  lu.assertTrue(ok, a)
  local b = train{template_aug = {scale = 2}}
  for i = 1, #a do T.assert_same_bits(a[i], b[i], "parameter " .. i) end
  lu.assertFalse(same(a, train{template_aug = false}), "the default transformed the templates")
end

local code = lu.LuaUnit.run("-o", "tap")
T.cleanup()
os.exit(code, true)
