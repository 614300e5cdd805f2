-- The hybrid of template matching and LPS (lps.similarity.hybrid): with no
-- weight or no gate it ranks as template matching does, the gate, the
-- choice of w, the inner validation on shuffled labels, the anchor (the
-- template-matching baseline's own scores, or half and half with probe
-- matching), and the save/load round trip
-- of a fitted hybrid.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local H = lps.similarity.hybrid
local probe = lps.similarity.probe
local match = require "lualps.similarity.match"

-- A small synthetic zoo: one-layer models whose class c has the template
-- dirs[c] + noise (the input gradient of a linear model's centred logit is
-- its weight row, centred): 12 tasks of 2 or 3 of 8 classes, 5 models each.
local function zoo(noise)
  local g = lps.generator(77)
  local dirs = {}
  for c = 0, 7 do dirs[c] = lps.randn(784, g) end
  local tasks = {{0, 1}, {2, 3}, {4, 5}, {6, 7}, {0, 2}, {1, 3}, {4, 6}, {5, 7}, {0, 4, 6}, {1, 5, 7}, {2, 6, 3}, {0, 3, 5}}
  local models, y = {}, {}
  for t, cls in ipairs(tasks) do
    for _ = 1, 5 do
      local W = lps.zeros(#cls, 784)
      for r, c in ipairs(cls) do W[r]:copy(dirs[c] + lps.randn(784, g) * noise) end
      models[#models + 1] = {W, lps.randn(#cls, g) * 0.1, classes = cls, family = "mlp"}
      y[#y + 1] = t
    end
  end
  return models, y
end

local NET = {families = {"mlp", "cnn"}, seed = 3}

-- Template matching as the benchmark computes it on the same noise (the
-- network's 2 ranges x 6 images), pooled 4x4 from the raw gradients.
local function reference_tm(models)
  local tm = lps.benchmark.methods.template_matching{pool = 4, noise = 6, noise_ranges = {{0, 0.2}, {0.8, 1}}}
  return tm:similarity(models, models)
end

-- The gallery order of each row of S (ties by index).
local function orders(S)
  local out = {}
  for i, row in ipairs(S:totable()) do
    local o = {}
    for j = 1, #row do o[j] = j end
    table.sort(o, function(a, b) if row[a] ~= row[b] then return row[a] > row[b] end return a < b end)
    out[i] = o
  end
  return out
end

-- Cosines of unit rows (E: embeddings, unit norm), a nested table.
local function core_cos(E)
  return lps.matmul(E, E, false, true):totable()
end

local function state(net, w, lo, hi, gate)
  return {w = w, lo = lo, hi = hi, gate = gate, tm_pool = 4, mu = lps.randn(3, net.opts.embed, lps.generator(5))}
end

TestHybrid = {}

function TestHybrid:test_no_weight_ranks_as_template_matching()
  local models = zoo(1.5)
  local net = lps.similarity.network(NET)
  local S = H.new(net, state(net, 0, 0, 1)):similarity(models, models)
  local R = reference_tm(models)
  lu.assertTrue(lps.allclose(S, R, 0, 1e-5))
  lu.assertEquals(orders(S), orders(R))
end

function TestHybrid:test_closed_gate_gives_template_matching_bits()
  local models = zoo(1.5)
  local net = lps.similarity.network(NET)
  local plain = H.new(net, state(net, 0, 0, 1)):similarity(models, models):totable()
  -- w 0.7, but every typicality (a cosine, at most 1) is below lo: g = 0
  local closed = H.new(net, state(net, 0.7, 2, 3)):similarity(models, models):totable()
  lu.assertEquals(closed, plain)
  -- an open gate does change the scores (so the two above measure something)
  local open = H.new(net, state(net, 0.7, 0, 1, false)):similarity(models, models):totable()
  lu.assertNotEquals(open, plain)
  lu.assertAlmostEquals(open[1][2], 0.3 * plain[1][2] + 0.7 * (function()
    local E = net:embed({models[1], models[2]})
    return (E[1] * E[2]):sum()
  end)(), 1e-6)
end

function TestHybrid:test_gate_in_unit_interval_and_monotone()
  lu.assertEquals(H.gate(0.1, 0.2, 0.6), 0)
  lu.assertEquals(H.gate(0.9, 0.2, 0.6), 1)
  lu.assertAlmostEquals(H.gate(0.5, 0.2, 0.6), 0.75, 1e-12)
  lu.assertEquals(H.gate(0 / 0, 0.2, 0.6), 0)
  local prev = -1
  for i = 0, 200 do
    local g = H.gate(-1 + i / 100, 0.2, 0.6)
    lu.assertTrue(g >= 0 and g <= 1)
    lu.assertTrue(g >= prev)
    prev = g
  end
  -- on models: gates follow the typicalities
  local models = zoo(1.5)
  local net = lps.similarity.network(NET)
  local mu = H.prototypes(net:embed(models), {1, 1, 1, 1, 1, 2, 2, 2, 2, 2})
  local d = H.new(net, {w = 0.5, lo = 0.3, hi = 0.9, tm_pool = 4, mu = mu}):describe(models)
  for i = 1, #d do
    lu.assertTrue(d[i].g >= 0 and d[i].g <= 1)
    for j = 1, #d do if d[i].tau < d[j].tau then lu.assertTrue(d[i].g <= d[j].g) end end
  end
end

function TestHybrid:test_quantile_is_numpys_linear()
  lu.assertAlmostEquals(H.quantile({4, 1, 3, 2}, 0.1), 1.3, 1e-12)
  lu.assertAlmostEquals(H.quantile({4, 1, 3, 2}, 0.9), 3.7, 1e-12)
  lu.assertEquals(H.quantile({5}, 0.5), 5)
end

function TestHybrid:test_choose_w_follows_the_better_term()
  -- 4 tasks x 3 models; TM scrambled by noise, a perfect learned term
  local labels, g = {}, {}
  for i = 1, 12 do labels[i], g[i] = (i - 1) // 3 + 1, 1 end
  local gen = lps.generator(9)
  local TM = lps.rand(12, 12, gen)
  local good, bad = lps.zeros(12, 12), lps.rand(12, 12, gen)
  for i = 1, 12 do for j = 1, 12 do good:set(i, j, labels[i] == labels[j] and 1 or 0) end end
  local grid = {0, 0.1, 0.5, 1}
  lu.assertTrue(H.choose_w(TM, good, g, labels, grid) > 0)
  local perfect_tm = good:clone()
  lu.assertEquals(H.choose_w(perfect_tm, bad, g, labels, grid), 0) -- ties go to the smaller w
  -- a closed gate leaves nothing to choose: every w scores as w = 0
  local closed = {}
  for i = 1, 12 do closed[i] = 0 end
  local w, maps = H.choose_w(TM, good, closed, labels, grid)
  lu.assertEquals(w, 0)
  for k = 2, #grid do lu.assertEquals(maps[k], maps[1]) end
  -- a model the network does not read (NaN cosines, gate 0 elsewhere but here 1): its
  -- NaN pairs rank last instead of making retrieval refuse the matrix
  local nan_cos = good:clone()
  for j = 1, 12 do nan_cos:set(12, j, 0 / 0); nan_cos:set(j, 12, 0 / 0) end
  local wn, mn = H.choose_w(TM, nan_cos, g, labels, grid)
  lu.assertTrue(wn > 0)
  for k = 1, #grid do lu.assertTrue(mn[k] == mn[k], "map at w = " .. grid[k]) end
end

function TestHybrid:test_holdout_picks_the_quarter_class()
  local models, y = zoo(1)
  -- class counts over the 12 tasks: 0:4, 1:3, 2:3, 3:4, 4:3, 5:4, 6:4, 7:3; a quarter of 12 is 3: class 1
  local c, held, keep = H.holdout(models, y, 0.25)
  lu.assertEquals(c, 1)
  lu.assertEquals(#held, 15)
  lu.assertEquals(#held + #keep, #models)
  T.assert_error_contains("needs each training model's task classes", H.holdout, {{lps.zeros(2, 784)}}, {1}, 0.25)
  -- 3 tasks: no class leaves 2 tasks on each side
  local m3, y3 = {}, {}
  for k = 1, 15 do m3[k], y3[k] = models[k], y[k] end
  lu.assertNil(H.holdout(m3, y3, 0.25))
end

function TestHybrid:test_too_few_tasks_fall_back_to_template_matching()
  local models, y = zoo(1)
  local m3, y3 = {}, {}
  for k = 1, 15 do m3[k], y3[k] = models[k], y[k] end
  local f = lps.benchmark.methods.lps{families = {"mlp", "cnn"}, epochs = 2, relations = false, hybrid = true}
    :fit(m3, y3, {seed = 1})
  lu.assertEquals(f.hybrid.w, 0)
  lu.assertNil(f.hybrid.held_class)
  -- the anchor is template matching itself (its own templates): the same bits
  local S = f:similarity(models, models)
  lu.assertEquals(f.hybrid.probe, 0)
  local R = lps.benchmark.methods.template_matching():similarity(models, models)
  lu.assertEquals(S:totable(), R:totable())
  -- the network's templates (the former anchor) score otherwise
  lu.assertNotEquals(reference_tm(models):totable(), R:totable())
end

local function fit(opts, models, y)
  local o = {families = {"mlp", "cnn"}, epochs = 3, relations = false, hybrid = true}
  for k, v in pairs(opts or {}) do o[k] = v end
  return lps.benchmark.methods.lps(o):fit(models, y, {seed = 1})
end

function TestHybrid:test_anchor_is_template_matching_on_new_data()
  -- a fitted hybrid whose validation chose w = 0 ranks any models, trained
  -- on or not, exactly as the template-matching baseline does
  -- (with probe 0, the default; with 0.5, as the tm_and_probe baseline)
  local models, y = zoo(2)
  local f = fit({hybrid = {w_grid = {0}, probe = 0}}, models, y)
  lu.assertEquals(f.hybrid.w, 0)
  lu.assertEquals(f.hybrid.tm_templates, "matching")
  local other = zoo(4) -- noisier models of the same classes: not those the network trained on
  local R = lps.benchmark.methods.template_matching():similarity(other, other):totable()
  lu.assertEquals(f:similarity(other, other):totable(), R)
  local h = fit({hybrid = {w_grid = {0}, probe = 0.5}}, models, y)
  lu.assertEquals(h:similarity(other, other):totable(),
    lps.benchmark.methods.probe_matching{probe = 0.5}:similarity(other, other):totable())
  -- its own dream options reach the anchor's probes, and are kept complete
  local h7 = fit({hybrid = {w_grid = {0}, probe = 0.5, dreams = {steps = 7}}}, models, y)
  lu.assertEquals(h7.hybrid.dreams, probe.settings{steps = 7})
  lu.assertEquals(h7:similarity(other, other):totable(),
    lps.benchmark.methods.probe_matching{probe = 0.5, dreams = {steps = 7}}:similarity(other, other):totable())
  -- directed: only the query (row) reads the stored models' dreams, as the
  -- tm_and_probe_directed baseline; a different score from the symmetric one
  local d = fit({hybrid = {w_grid = {0}, probe = 0.5, probe_directed = true}}, models, y)
  local D = d:similarity(other, other):totable()
  lu.assertEquals(D, lps.benchmark.methods.probe_matching{probe = 0.5, directed = true}:similarity(other, other):totable())
  lu.assertNotEquals(D, h:similarity(other, other):totable())
  T.assert_error_contains("probe_directed must be a boolean, got 1", fit, {hybrid = {probe_directed = 1}}, models, y)
  -- gated: query i mixes (1 - p_i) TM + p_i PM with p_i = 0.5 (1 - g_i), its own gate
  local q = fit({hybrid = {w_grid = {0}, probe = 0.5, probe_directed = true, probe_gate = true}}, models, y)
  local hy = lps.similarity.wrap(q.net, q.classes, q.hybrid).hy
  local qa = {} -- queries other than the gallery, in another order: the gates must be the queries'
  for i = #other, 1, -1 do qa[#qa + 1] = other[i] end
  local G = hy:similarity(qa, models)
  local TMo = lps.benchmark.methods.template_matching():similarity(qa, models)
  local PMo = probe.matcher().directed(qa, models)
  local distinct = {}
  for i, d in ipairs(hy:describe(qa)) do
    local p = 0.5 * (1 - d.g)
    distinct[("%.6f"):format(p)] = true
    for j = 1, #models do
      lu.assertAlmostEquals(G:get(i, j), (1 - p) * TMo:get(i, j) + p * PMo:get(i, j), 1e-6)
    end
  end
  lu.assertTrue(next(distinct, next(distinct)) ~= nil, "the gates differ between queries") -- the test is not vacuous
  T.assert_error_contains("probe_gate must be a boolean", fit, {hybrid = {probe_gate = "yes"}}, models, y)
  T.assert_error_contains("probe_gate needs gate = true", fit, {hybrid = {probe_gate = true, gate = false}}, models, y)
  -- weights of 0 leave template matching's rows alone; bad weight lists raise
  local pm = {directed = function(rows, b) return lps.full(#rows, #b, 0 / 0) end}
  local TM2 = lps.tensor{{1, 2}, {3, 4}}
  lu.assertEquals(H.anchor(TM2, pm, {"a", "b"}, {"x", "y"}, {0, 0}, true):totable(), {{1, 2}, {3, 4}})
  local half = H.anchor(TM2, pm, {"a", "b"}, {"x", "y"}, {0, 0.5}, true)
  lu.assertEquals(half[1]:totable(), {1, 2})
  lu.assertNotEquals(half:get(2, 1), half:get(2, 1)) -- NaN where the probes are
  T.assert_error_contains("need one probe weight per query (2), got 1", H.anchor, TM2, pm, {"a", "b"}, {"x", "y"}, {0.5}, true)
  T.assert_error_contains("probe weight 2 must be in [0, 1], got 2", H.anchor, TM2, pm, {"a", "b"}, {"x", "y"}, {0, 2}, true)
  -- "network" keeps the former anchor: the network's templates, re-pooled
  local g = fit({hybrid = {w_grid = {0}, tm_templates = "network", probe = 0}}, models, y)
  local N = g:similarity(other, other)
  lu.assertTrue(lps.allclose(N, reference_tm(other), 0, 1e-5))
  T.assert_error_contains("tm_templates must be", H.new, g.net, {w = 0, lo = 0, hi = 1, tm_pool = 4,
    mu = g.hybrid.mu, tm_templates = "pixels"})
end

-- Pairs with a batch-norm model: (1 - q) TM + q P, P the batch-norm model
-- reading the other's dreams (both ways averaged when both have it); other
-- pairs keep TM's bits. A fake matcher gives directed(r, d) = 10 r + d.
function TestHybrid:test_batch_norm_pairs_are_read_by_the_batch_norm_model()
  local id = {}
  local a, b = {{}, {}, {}}, {{}, {}}
  for i, m in ipairs(a) do id[m] = i end
  for j, m in ipairs(b) do id[m] = 10 + j end
  local pm = {directed = function(r, d)
    local out = lps.zeros(#r, #d)
    for i, x in ipairs(r) do for j, y in ipairs(d) do out:set(i, j, 10 * id[x] + id[y]) end end
    return out
  end}
  local TM = lps.tensor{{1, 2}, {3, 4}, {5, 6}}
  local q = 0.25
  local S = H.anchor_bn(TM, pm, a, b, {false, true, true}, {false, true}, q):totable()
  lu.assertEquals(S[1][1], 1) -- neither
  lu.assertAlmostEquals(S[1][2], 0.75 * 2 + 0.25 * (10 * 12 + 1), 1e-4) -- b2 reads a1
  lu.assertAlmostEquals(S[2][1], 0.75 * 3 + 0.25 * (10 * 2 + 11), 1e-4) -- a2 reads b1
  lu.assertAlmostEquals(S[3][2], 0.75 * 6 + 0.25 * ((10 * 3 + 12) + (10 * 12 + 3)) / 2, 1e-4) -- both
  -- both-batch-norm pairs with their own weight q2; q2 = 0 keeps TM there
  local S2 = H.anchor_bn(TM, pm, a, b, {false, true, true}, {false, true}, q, 0.5):totable()
  lu.assertAlmostEquals(S2[3][2], 0.5 * 6 + 0.5 * ((10 * 3 + 12) + (10 * 12 + 3)) / 2, 1e-4)
  lu.assertAlmostEquals(S2[2][1], S[2][1], 0)
  local S0 = H.anchor_bn(TM, pm, a, b, {false, true, true}, {false, true}, q, 0):totable()
  lu.assertEquals(S0[3][2], 6)
  lu.assertEquals(S0[2][2], 4)
  lu.assertAlmostEquals(S0[2][1], S[2][1], 0)
  lu.assertIs(H.anchor_bn(TM, pm, a, b, {false, false, false}, {false, false}, q), TM)
  lu.assertIs(H.anchor_bn(TM, pm, a, b, {true, true, true}, {true, true}, 0), TM)
  T.assert_error_contains("hybrid.anchor_bn: q must be a number in [0, 1], got 2", H.anchor_bn, TM, pm, a, b,
    {false, true, true}, {false, true}, 2)
  T.assert_error_contains("hybrid.anchor_bn: q2 must be a number in [0, 1], got -1", H.anchor_bn, TM, pm, a, b,
    {false, true, true}, {false, true}, q, -1)
  T.assert_error_contains("hybrid.anchor_bn: need one flag per model, 3 and 2, got 2 and 2", H.anchor_bn, TM, pm, a, b,
    {false, true}, {false, true}, q)
end

-- A ResNet query among MLPs: the fitted hybrid scores its pairs by its
-- reading of their dreams (probe_bn 1: the anchor is the probe's), the
-- MLP pairs as before; probe_bn 0 gives template matching's anchor back.
-- A small 3-class CNN with batch norm (a ResNet's stand-in), weights from
-- generator g, buffers (running statistics) from gb, in evaluation mode.
local function batch_norm_model(g, gb)
  local arch = {{type = "input", shape = {1, 28, 28}}, {type = "conv2d", ["in"] = 1, out = 4, kernel = 3, padding = 1},
    {type = "batchnorm2d", features = 4}, {type = "relu"}, {type = "adaptive_avgpool2d", output = 1},
    {type = "flatten"}, {type = "linear", ["in"] = 4, out = 3}}
  return lps.similarity.weights(T.randomize_state(lps.nn.from_arch(arch, g), gb):eval())
end

function TestHybrid:test_fitted_hybrid_reads_batch_norm_models_by_probe()
  local models, y = zoo(2)
  local f = fit({hybrid = {w_grid = {0}}}, models, y)
  lu.assertEquals(f.hybrid.probe_bn, 1)
  lu.assertEquals(f.hybrid.probe_bn_both, 0.5)
  local g = lps.generator(41)
  local rn = batch_norm_model(g, g)
  local gallery = {models[1], models[2], models[7]}
  local S = f:similarity({rn, models[1]}, gallery)
  local want = probe.matcher(f.hybrid.dreams).directed({rn}, gallery)
  for j = 1, 3 do lu.assertAlmostEquals(S:get(1, j), want:get(1, j), 1e-6) end
  local tm = lps.benchmark.methods.template_matching():similarity({models[1]}, gallery)
  lu.assertTrue(lps.allclose(S[2], tm[1], 0, 1e-6)) -- up to rounding: other rows stack with it
  local off = {}
  for k, v in pairs(f.hybrid) do off[k] = v end
  off.probe_bn, off.probe_bn_both = 0, 0
  local S0 = H.new(f.net, off):similarity({rn}, gallery)
  lu.assertEquals(S0:totable(), lps.benchmark.methods.template_matching():similarity({rn}, gallery):totable())
  T.assert_error_contains("hybrid: probe_bn must be a number in [0, 1], got 2", fit, {hybrid = {probe_bn = 2}}, models, y)
  T.assert_error_contains("hybrid: probe_bn_both must be a number in [0, 1], got 2", fit, {hybrid = {probe_bn_both = 2}},
    models, y)
  -- two batch-norm models: half template matching, half both directions' reading (probe_bn 0 leaves the
  -- pairs of one batch-norm model on TM's bits, and nothing reads for them)
  local rn2 = batch_norm_model(lps.generator(42), lps.generator(43))
  local half = {}
  for k, v in pairs(f.hybrid) do half[k] = v end
  half.probe_bn, half.probe_bn_both = 0, 0.5
  local reads, pm = 0, probe.matcher(f.hybrid.dreams)
  local hy = H.new(f.net, half)
  local real = hy.probes
  hy.probes = {directed = function(r, d) reads = reads + #r * #d return real.directed(r, d) end}
  local Sh = hy:similarity({rn, models[1]}, {rn2, models[2]})
  local tm2 = lps.benchmark.methods.template_matching():similarity({rn, models[1]}, {rn2, models[2]})
  local both = (pm.directed({rn}, {rn2}):get(1, 1) + pm.directed({rn2}, {rn}):get(1, 1)) / 2
  lu.assertAlmostEquals(Sh:get(1, 1), 0.5 * tm2:get(1, 1) + 0.5 * both, 1e-6)
  lu.assertAlmostEquals(Sh:get(1, 2), tm2:get(1, 2), 1e-6) -- one batch-norm model, weight 0: TM
  lu.assertAlmostEquals(Sh:get(2, 1), tm2:get(2, 1), 1e-6)
  lu.assertEquals(reads, 2) -- rn reads rn2 and rn2 reads rn, nothing else
  -- the fitted default: both weights saved, 1 and 0.5
  lu.assertEquals({f.hybrid.probe_bn, f.hybrid.probe_bn_both}, {1, 0.5})
end

-- A ranking on one scale per kind (H.group_z): each row z-scored within
-- the batch-norm models and within the others, a model against itself and
-- non-finite scores left out of the mean and sd, a group of one at z 0.
function TestHybrid:test_group_z_by_hand()
  local q, A, B, C, D, E, F = {}, {}, {}, {}, {}, {}, {}
  local S = lps.tensor{{0.9, 0.5, 0.2, 0.4, 0.9, 1.0, 0 / 0}, {0.3, 0.7, 0.1, -1 / 0, 0.5, 0.5, 0.8}}
  local b, bn = {A, B, C, D, E, q, F}, {true, true, false, false, false, false, false}
  local Z = H.group_z(S, {q, A}, b, bn)
  local function x(i, j) return S:get(i, j) end -- the float32 values
  -- row 1: batch-norm {A, B}: mean and sd of 0.9, 0.5; the others {C, D, E} (q is itself, F NaN)
  local m, sd = (x(1, 1) + x(1, 2)) / 2, math.abs(x(1, 1) - x(1, 2)) / 2
  lu.assertAlmostEquals(Z:get(1, 1), (x(1, 1) - m) / sd, 1e-5)
  lu.assertAlmostEquals(Z:get(1, 2), (x(1, 2) - m) / sd, 1e-5)
  m = (x(1, 3) + x(1, 4) + x(1, 5)) / 3
  sd = math.sqrt(((x(1, 3) - m) ^ 2 + (x(1, 4) - m) ^ 2 + (x(1, 5) - m) ^ 2) / 3)
  for j = 3, 6 do lu.assertAlmostEquals(Z:get(1, j), (x(1, j) - m) / sd, 1e-5) end
  lu.assertAlmostEquals(Z:get(1, 5), 1.3587, 1e-3) -- E: 0.9 of 0.2, 0.4, 0.9 (mean 0.5, sd 0.2944)
  lu.assertTrue(Z:get(1, 7) ~= Z:get(1, 7)) -- NaN stays NaN
  -- so E ranks above A (z 1), where the raw scores tie at 0.9
  lu.assertTrue(Z:get(1, 5) > Z:get(1, 1))
  -- row 2 (query A, itself at column 1): the batch-norm group is B alone: z 0; -inf stays
  lu.assertEquals(Z:get(2, 2), 0)
  lu.assertEquals(Z:get(2, 4), -math.huge)
  m = (x(2, 3) + x(2, 5) + x(2, 6) + x(2, 7)) / 4
  sd = math.sqrt(((x(2, 3) - m) ^ 2 + (x(2, 5) - m) ^ 2 + (x(2, 6) - m) ^ 2 + (x(2, 7) - m) ^ 2) / 4)
  lu.assertAlmostEquals(Z:get(2, 7), (x(2, 7) - m) / sd, 1e-5)
  -- equal scores in a group: z 0, not NaN
  local Z2 = H.group_z(lps.tensor{{0.4, 0.4, 0.1}}, {q}, {A, B, C}, {false, false, true})
  lu.assertEquals(Z2:totable(), {{0, 0, 0}})
  lu.assertEquals(S:get(1, 1), x(1, 1)) -- the caller's scores are left as they were
  T.assert_error_contains("hybrid.group_z: need one flag per gallery model, 3, got 2", H.group_z, lps.tensor{{1, 2, 3}},
    {q}, {A, B, C}, {true, false})
  T.assert_error_contains("hybrid.group_z: S must be a 1 x 3 tensor (|a| x |b|), got 2 x 3", H.group_z, lps.zeros(2, 3),
    {q}, {A, B, C}, {true, false, true})
  T.assert_error_contains("hybrid.group_z: b must be a list, got number", H.group_z, lps.zeros(1, 3), {q}, 3, {})
end

-- nearest over a set of MLPs and batch-norm models ranks by score, each
-- pair's hybrid similarity z-scored within its kind, and shows the
-- similarity beside it; over MLPs alone it ranks by the similarity itself.
function TestHybrid:test_nearest_ranks_a_mixed_set_within_each_kind()
  local models, y = zoo(2)
  local f = fit({hybrid = {w_grid = {0}}}, models, y)
  local sim = lps.similarity.wrap(f.net, f.classes, f.hybrid)
  local arch = {{type = "input", shape = {1, 28, 28}}, {type = "conv2d", ["in"] = 1, out = 4, kernel = 3, padding = 1},
    {type = "batchnorm2d", features = 4}, {type = "relu"}, {type = "adaptive_avgpool2d", output = 1},
    {type = "flatten"}, {type = "linear", ["in"] = 4, out = 3}}
  local path = T.tmpname(".lpsm")
  local out = lps.modelset.create(path, {overwrite = true})
  local mlps = {1, 2, 6, 7, 11} -- tasks 1, 1, 2, 2, 3
  for k, i in ipairs(mlps) do
    out:append_tensors({{name = "0.weight", tensor = models[i][1]}, {name = "0.bias", tensor = models[i][2]}},
      {id = "m" .. k, task = y[i]})
  end
  for s = 1, 3 do
    local g = lps.generator(40 + s)
    out:append(T.randomize_state(lps.nn.from_arch(arch, g), g):eval(), {id = "bn" .. s, task = 9})
  end
  out:close()
  local ms <close> = lps.modelset.open(path)
  local list = sim:set_models(ms) -- each record's weights, as nearest reads them
  for _, query in ipairs{1, 6} do -- an MLP, a batch-norm model
    local raw, kind = {}, {}
    for j = 1, #ms do
      if j ~= query then raw[j], kind[j] = sim:similarity(list[query], list[j]), j > #mlps end
    end
    local want = {}
    for _, bn in ipairs{true, false} do
      local n, m, ss = 0, 0, 0
      for j, v in pairs(raw) do if kind[j] == bn then n, m = n + 1, m + v end end
      m = m / n
      for j, v in pairs(raw) do if kind[j] == bn then ss = ss + (v - m) ^ 2 end end
      for j, v in pairs(raw) do if kind[j] == bn then want[j] = (v - m) / math.sqrt(ss / n) end end
    end
    local r = sim:nearest(ms, query, #ms - 1)
    lu.assertEquals(#r, #ms - 1)
    for k = 1, #r do
      lu.assertAlmostEquals(r[k].score, want[r[k].index], 1e-4)
      lu.assertAlmostEquals(r[k].similarity, raw[r[k].index], 1e-5)
      if k > 1 then lu.assertTrue(r[k - 1].score >= r[k].score) end
    end
    lu.assertStrContains(tostring(r), "score  similarity")
  end
  -- a first query's reading of the set, shown when asked (sim.progress; on a terminal by default):
  -- the records, then the templates of every model and the dreams a batch-norm query reads; the
  -- same list as without it, and nothing the second time (done once per open set)
  local lines = {}
  local stream = {write = function(_, ...) for _, x in ipairs{...} do lines[#lines + 1] = x end end, flush = function() end}
  local shown = lps.similarity.wrap(f.net, f.classes, f.hybrid)
  shown.progress = {tty = false, stream = stream, min = 1}
  local ms3 <close> = lps.modelset.open(path)
  local r3 = shown:nearest(ms3, 6, #ms3 - 1)
  local text = table.concat(lines)
  lu.assertStrContains(text, "nearest: reading the set's records (once): 8/8 models")
  lu.assertStrContains(text, "nearest: the set's templates and dreams (once): 15/15 steps") -- 7 others + 8 dreams
  local want = sim:nearest(ms, 6, #ms - 1)
  for k = 1, #want do lu.assertEquals({r3[k].index, r3[k].score}, {want[k].index, want[k].score}) end
  lines = {}
  shown:nearest(ms3, 1, 2)
  lu.assertEquals(lines, {}) -- an MLP query: every model described, no dream it needs is missing
  shown.progress = {tty = false, stream = stream} -- the default least: 64 units
  local ms4 <close> = lps.modelset.open(path)
  shown:nearest(ms4, 6, 2)
  lu.assertEquals(lines, {})
  shown.progress = {min = "x"}
  T.assert_error_contains("nearest: progress.min must be a number, got string", shown.nearest, shown,
    lps.modelset.open(path), 1, 2)
  -- the MLPs alone: the similarity itself, no second column
  local path2 = T.tmpname(".lpsm")
  local out2 = lps.modelset.create(path2, {overwrite = true})
  for k, i in ipairs(mlps) do
    out2:append_tensors({{name = "0.weight", tensor = models[i][1]}, {name = "0.bias", tensor = models[i][2]}},
      {id = "m" .. k, task = y[i]})
  end
  out2:close()
  local ms2 <close> = lps.modelset.open(path2)
  local r2 = sim:nearest(ms2, 1, 4)
  lu.assertNil(r2[1].similarity)
  local list2 = sim:set_models(ms2)
  lu.assertAlmostEquals(r2[1].score, sim:similarity(list2[1], list2[r2[1].index]), 1e-5)
  lu.assertFalse(tostring(r2):find("similarity", 1, true) ~= nil)
end

-- The learned term stays off where the anchor reads a model by probe (a
-- batch-norm model): its gate is 0 and its pairs keep the anchor's bits,
-- even with the typicality gate off and w > 0; bn_residual = true gives it
-- the learned term, (1 - w) anchor + w cos, as for any other model.
function TestHybrid:test_batch_norm_models_take_no_learned_term()
  local models, y = zoo(2)
  local f = fit({hybrid = {w_grid = {0.5}, gate = false}}, models, y)
  lu.assertEquals({f.hybrid.w, f.hybrid.bn_residual}, {0.5, false})
  local g = lps.generator(41)
  local rn = batch_norm_model(g, g)
  local gallery = {models[1], models[2], models[7]}
  local reading = probe.matcher(f.hybrid.dreams).directed({rn}, gallery)
  local S = f:similarity({rn, models[1]}, gallery)
  lu.assertEquals(S[1]:totable(), reading[1]:totable()) -- the anchor's bits
  local on = {}
  for k, v in pairs(f.hybrid) do on[k] = v end
  on.bn_residual = true
  local E = f.net:embed({rn, table.unpack(gallery)})
  local cos = core_cos(E)
  local S1 = H.new(f.net, on):similarity({rn, models[1]}, gallery)
  for j = 1, 3 do lu.assertAlmostEquals(S1:get(1, j), 0.5 * reading:get(1, j) + 0.5 * cos[1][j + 1], 1e-5) end
  lu.assertEquals(S1[2]:totable(), S[2]:totable()) -- models without batch norm: as before
  lu.assertNotEquals(S1[1]:totable(), S[1]:totable())
  on.bn_residual = nil -- a state without the field (in memory): the rule, as the default
  lu.assertEquals(H.new(f.net, on):similarity({rn, models[1]}, gallery):totable(), S:totable())
  T.assert_error_contains("hybrid: bn_residual must be a boolean, got 1", fit, {hybrid = {bn_residual = 1}}, models, y)
  -- saved and loaded: the flag round-trips; files saved before it give every model the learned term
  local path = T.tmpname(".model")
  lps.similarity.wrap(f.net, f.classes, f.hybrid):save(path)
  local back = lps.similarity.load(path)
  lu.assertFalse(back.hybrid.bn_residual)
  lu.assertStrContains(tostring(back), "batch norm read by probe (1.00; 0.50 both) without the learned term")
  lu.assertEquals(back.hy:similarity({rn}, gallery):totable(), S:rows(1, 1):totable())
  local state_of = lps.similarity.hybrid_state
  lu.assertTrue(state_of({}, lps.zeros(2, 3), lps.tensor{0.3, 0.4, 0.8}).bn_residual)
  lu.assertFalse(state_of({bn_residual = false}, lps.zeros(2, 3), lps.tensor{0.3, 0.4, 0.8}).bn_residual)
end

-- The inner validation chooses w with the gates the hybrid scores with:
-- batch-norm models among the held-out tasks (class 1: tasks 1, 6, 10) keep
-- the anchor at every w unless bn_residual; the fallback without a held-out
-- class carries the option too.
function TestHybrid:test_inner_validation_applies_the_batch_norm_rule()
  local models, y = zoo(2)
  local tasks = {[9] = {0, 4, 6}, [10] = {1, 5, 7}, [11] = {2, 6, 3}, [12] = {0, 3, 5}}
  for t = 9, 12 do
    for k = 1, 2 do
      local m = batch_norm_model(lps.generator(100 + 10 * t + k), lps.generator(200 + 10 * t + k))
      m.classes = tasks[t]
      models[#models + 1], y[#y + 1] = m, t
    end
  end
  local maps = {}
  for k, on in ipairs{false, true} do
    local f = fit({hybrid = {w_grid = {0, 0.5}, gate = false, bn_residual = on}}, models, y)
    lu.assertEquals({f.hybrid.held_class, f.hybrid.bn_residual}, {1, on})
    maps[k] = f.hybrid.maps
  end
  lu.assertEquals(maps[1][1], maps[2][1]) -- w 0: the anchor alone either way
  lu.assertNotEquals(maps[1][2], maps[2][2]) -- w 0.5: the batch-norm models' pairs differ
  local m3, y3 = {}, {}
  for k = 1, 15 do m3[k], y3[k] = models[k], y[k] end
  for _, on in ipairs{false, true} do
    local f = lps.benchmark.methods.lps{families = {"mlp", "cnn"}, epochs = 2, relations = false,
      hybrid = {bn_residual = on}}:fit(m3, y3, {seed = 1})
    lu.assertNil(f.hybrid.held_class)
    lu.assertEquals(f.hybrid.bn_residual, on)
  end
end

-- The batch-norm rule turns off the learned term and nothing else: with
-- probe_gate the anchor's probe weight of a query stays p (1 - its
-- typicality gate), so a batch-norm query's row is the anchor's of the same
-- state without the learned term (w 0, bn_residual), not one with p.
function TestHybrid:test_batch_norm_rule_leaves_the_probe_gated_anchor()
  local models, y = zoo(2)
  local f = fit({hybrid = {w_grid = {0.5}, probe = 0.5, probe_gate = true, probe_bn = 0.5}}, models, y)
  local function with(t)
    local s = {}
    for k, v in pairs(f.hybrid) do s[k] = v end
    for k, v in pairs(t) do s[k] = v end
    return s
  end
  local rn, rn2 = batch_norm_model(lps.generator(41), lps.generator(41)), batch_norm_model(lps.generator(42), lps.generator(43))
  local a, b = {rn, rn2}, {rn2, models[2], models[7]}
  -- lo 0, hi 0.5: the batch-norm queries are typical (typicality gate 1, probe weight 0 under probe_gate)
  local hy = H.new(f.net, with{lo = 0, hi = 0.5})
  local S = hy:similarity(a, b)
  local A = H.new(f.net, with{lo = 0, hi = 0.5, w = 0, bn_residual = true}):similarity(a, b)
  lu.assertEquals(S:totable(), A:totable())
  local d = hy:describe(a)
  lu.assertEquals({d[1].g, d[1].gt, d[2].g, d[2].gt}, {0, 1, 0, 1})
end

-- Where a pair's weight is 0 the hybrid is the anchor's bits even when the
-- network gives NaN (a model it does not read): NaN * 0 must not leak.
function TestHybrid:test_combine_keeps_the_anchor_where_the_weight_is_0()
  local TM = lps.tensor{{0.5, 0.2}, {0.1, 0.7}}
  local Cos = lps.tensor{{0 / 0, 0.1}, {0.3, 0 / 0}}
  local out = H.combine(TM, Cos, {0, 1}, {1, 0}, 0.5)
  lu.assertEquals(out:get(1, 1), TM:get(1, 1))
  lu.assertEquals(out:get(1, 2), TM:get(1, 2))
  lu.assertEquals(out:get(2, 2), TM:get(2, 2))
  lu.assertAlmostEquals(out:get(2, 1), 0.5 * 0.1 + 0.5 * 0.3, 1e-7)
  lu.assertTrue(Cos:get(1, 1) ~= Cos:get(1, 1)) -- the caller's tensor is left as it was
  local nan = H.combine(TM, Cos, {1, 1}, {1, 1}, 0.5) -- weight > 0 on a NaN cosine: not comparable
  lu.assertTrue(nan:get(1, 1) ~= nan:get(1, 1))
  -- a NaN row and a NaN column (models the network does not read) under gate 0
  local C3 = lps.tensor{{0 / 0, 0 / 0, 0 / 0}, {0 / 0, 0.2, 0.4}, {0 / 0, 0.6, 0.8}}
  local TM3 = lps.tensor{{0.1, 0.2, 0.3}, {0.4, 0.5, 0.6}, {0.7, 0.8, 0.9}}
  local out3 = H.combine(TM3, C3, {0, 1, 0.5}, {0, 1, 1}, 0.4)
  for i = 1, 3 do lu.assertEquals(out3:get(i, 1), TM3:get(i, 1)) end
  for j = 1, 3 do lu.assertEquals(out3:get(1, j), TM3:get(1, j)) end
  lu.assertAlmostEquals(out3:get(3, 3), 0.8 * 0.9 + 0.2 * 0.8, 1e-6)
  -- nonzero gates whose product underflows float32: W is 0 there, the anchor's bits
  local inf = H.combine(TM, lps.tensor{{1 / 0, 0.1}, {0.3, 0.2}}, {0, 1}, {1, 1}, 0.5) -- inf * 0 is NaN too
  lu.assertEquals(inf:get(1, 1), TM:get(1, 1))
  local tiny = H.combine(TM, Cos, {1e-30, 1}, {1e-30, 1}, 0.5)
  lu.assertEquals(tiny:get(1, 1), TM:get(1, 1))
  lu.assertTrue(tiny:get(2, 2) ~= tiny:get(2, 2))
end

-- nearest (and select) through a hybrid: a query whose every score is
-- NaN (NaN weights) is an error naming it, not a list of -inf scores; a
-- stored model with NaN weights ranks last and the others as before.
function TestHybrid:test_a_query_no_model_compares_with_is_an_error()
  local models, y = zoo(2)
  local f = fit({hybrid = {w_grid = {0.5}}}, models, y)
  local sim = lps.similarity.wrap(f.net, f.classes, f.hybrid)
  local path = T.tmpname(".lpsm")
  local out = lps.modelset.create(path, {overwrite = true})
  for i = 1, 6 do
    local W = models[i][1]:clone()
    if i == 3 then W:set(1, 1, 0 / 0) end
    out:append_tensors({{name = "0.weight", tensor = W}, {name = "0.bias", tensor = models[i][2]}},
      {id = "m" .. i, task = y[i]})
  end
  out:close()
  local ms <close> = lps.modelset.open(path)
  local ok, err = pcall(sim.nearest, sim, ms, 3, 2) -- select shares the scores, and the check
  lu.assertFalse(ok)
  lu.assertStrContains(err, "nearest: the query (record 3, id m3) compares with no model of the set")
  local r = sim:nearest(ms, 1, 5)
  lu.assertEquals(#r, 5)
  lu.assertEquals(r[5].index, 3) -- the NaN model: last
  lu.assertTrue(r[4].score > -math.huge)
end

function TestHybrid:test_shuffled_labels_choose_a_small_w()
  -- against template matching alone (the default anchor): probe matching
  -- reads these noisy one-layer models worse than their templates, and a
  -- network trained on shuffled labels still carries the templates (w 0.4
  -- with probe 0.5)
  local models, y = zoo(3)
  local f = fit({shuffle_labels = true}, models, y)
  lu.assertTrue(f.hybrid.w <= 0.2, "w " .. f.hybrid.w)
  lu.assertEquals(#f.hybrid.maps, #H.defaults.w_grid)
  T.assert_error_contains("unknown option 'gat'", lps.benchmark.methods.lps, {families = {"mlp"}, hybrid = {gat = false}})
end

function TestHybrid:test_save_load_round_trip_gives_the_same_bits()
  local models, y = zoo(2)
  local f = fit({hybrid = {w_grid = {0.5}, probe = 0.5, probe_directed = true, probe_gate = true}}, models, y) -- w > 0: the learned term counts
  lu.assertEquals(f.hybrid.w, 0.5)
  lu.assertTrue(f.hybrid.lo < f.hybrid.hi)
  local before = f:similarity(models, models):totable()
  local sim = lps.similarity.wrap(f.net, f.classes, f.hybrid)
  local path = T.tmpname(".model")
  sim:save(path)
  local back = lps.similarity.load(path)
  lu.assertStrContains(tostring(back), "hybrid with template matching and probe matching (0.50, directed, gated), "
    .. "batch norm read by probe (1.00; 0.50 both) without the learned term, w 0.50")
  lu.assertEquals(back.hybrid.probe_bn, 1)
  lu.assertEquals(back.hybrid.probe_bn_both, 0.5)
  lu.assertEquals(back.hybrid.probe, 0.5)
  lu.assertTrue(back.hybrid.probe_directed)
  lu.assertTrue(back.hybrid.probe_gate)
  lu.assertEquals(back.hybrid.dreams, probe.settings()) -- the dreams it was fitted with, complete
  lu.assertEquals(back.hybrid.w, f.hybrid.w)
  lu.assertEquals(back.hybrid.lo, f.hybrid.lo)
  lu.assertEquals(back.hybrid.hi, f.hybrid.hi)
  lu.assertEquals(back.hybrid.tm_templates, "matching")
  local after = back.hy:similarity(models, models):totable()
  lu.assertEquals(after, before)
  lu.assertEquals(back:similarity(models[1], models[7]), before[1][7])
  -- the plain cosine differs from it: the file carries the hybrid, not only the network
  local E = f.net:embed({models[1], models[7]})
  lu.assertNotEquals((E[1] * E[2]):sum(), before[1][7])
  -- what the held-out zoos read: the cosine ("lps"), then the hybrid score
  local methods = dofile("scripts/heldout_zoos.lua").model_methods(back)
  lu.assertEquals({methods[1].name, methods[2] and methods[2].name}, {"lps", "lps_hybrid"})
  lu.assertEquals(methods[2].similarity(models):totable(), before)
  -- a state from before tm_templates and probe (no fields) scores with the
  -- network's templates alone, saved and loaded alike
  local old = {}
  for k, v in pairs(f.hybrid) do old[k] = v end
  old.tm_templates, old.probe, old.probe_directed, old.probe_bn, old.probe_bn_both = nil, nil, nil, nil, nil
  local osim = lps.similarity.wrap(f.net, f.classes, old)
  local opath = T.tmpname(".model")
  osim:save(opath)
  local oback = lps.similarity.load(opath)
  lu.assertEquals(oback.hybrid.tm_templates, "network")
  lu.assertEquals(oback.hybrid.probe, 0)
  lu.assertEquals(oback.hybrid.probe_bn, 0)
  lu.assertEquals(oback.hybrid.probe_bn_both, 0)
  lu.assertFalse(oback.hybrid.probe_directed)
  lu.assertEquals(oback.hy:similarity(models, models):totable(), osim.hy:similarity(models, models):totable())
  lu.assertNotEquals(oback.hy:similarity(models, models):totable(), before)
  -- a file with probes saved before the dreams were: it dreams with the step of then
  local older = {}
  for k, v in pairs(f.hybrid) do older[k] = v end
  older.dreams = nil
  local dpath = T.tmpname(".model")
  lps.similarity.wrap(f.net, f.classes, older):save(dpath)
  local dback = lps.similarity.load(dpath)
  lu.assertEquals(dback.hybrid.dreams, {lr = 0.05, adapt_bn = false, blur_bn = 0})
  lu.assertNotEquals(dback.hy:similarity(models, models):totable(), before)
  -- a file saved before adapt_bn was: its readers keep the running statistics
  local nobn = {}
  for k, v in pairs(f.hybrid) do nobn[k] = v end
  nobn.dreams = probe.settings()
  nobn.dreams.adapt_bn = nil
  local npath = T.tmpname(".model")
  lps.similarity.wrap(f.net, f.classes, nobn):save(npath)
  lu.assertFalse(lps.similarity.load(npath).hybrid.dreams.adapt_bn)
  -- the metadata of older files (keys absent, as their writers left them)
  local state_of = lps.similarity.hybrid_state
  local mu, par = lps.zeros(2, 3), lps.tensor{0.3, 0.4, 0.8}
  local function keys(h) local st = state_of(h, mu, par) return {st.probe_bn, st.probe_bn_both} end
  lu.assertEquals(keys{}, {0, 0}) -- before batch-norm readers
  lu.assertEquals(keys{probe_bn = 1}, {1, 1}) -- 4b711d8: both pairs as probe_bn
  lu.assertEquals(keys{probe_bn = 1, probe_bn_both = 0.5}, {1, 0.5})
  lu.assertFalse(state_of({dreams = {lr = 0.025}}, mu, par).dreams.adapt_bn) -- before adapt_bn
  lu.assertTrue(state_of({dreams = {adapt_bn = true}}, mu, par).dreams.adapt_bn)
  -- before blur_bn: batch-norm readers read the dreams unblurred; a fit saves the default (1)
  lu.assertEquals(state_of({dreams = {lr = 0.025}}, mu, par).dreams.blur_bn, 0)
  lu.assertEquals(state_of({dreams = {blur_bn = 2}}, mu, par).dreams.blur_bn, 2)
  lu.assertEquals(f.hybrid.dreams.blur_bn, 1)
  lu.assertEquals(lps.similarity.load(npath).hybrid.dreams.blur_bn, 1)
end

local code = lu.LuaUnit.run("-o", "tap")
T.cleanup()
os.exit(code, true)
