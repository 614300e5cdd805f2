-- Baselines: linear assignment, model permutation and forward, the feature
-- baselines (raw, sorted, stats, gram), weight matching and CKA.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local E = lps.eval

local mlp = T.random_mlp

local function random_perm(g, n) return lps.data.randperm(n, g) end

local function planted(g, m)
  local perms = {}
  for l = 1, #m / 2 - 1 do perms[l] = random_perm(g, m[2 * l - 1]:size(1)) end
  return perms
end

-- All permutations of 1..n (Heap's algorithm), calling f(p) for each.
local function each_perm(n, f)
  local p = {}
  for i = 1, n do p[i] = i end
  local c = {}
  for i = 1, n do c[i] = 1 end
  f(p)
  local i = 1
  while i <= n do
    if c[i] < i then
      if i % 2 == 1 then p[1], p[i] = p[i], p[1] else p[c[i]], p[i] = p[i], p[c[i]] end
      f(p)
      c[i] = c[i] + 1
      i = 1
    else
      c[i] = 1
      i = i + 1
    end
  end
end

local function max_abs_diff(a, b) return (a - b):abs():max() end

TestAssign = {}

function TestAssign:test_matches_brute_force_square()
  local g = lps.generator(11)
  for n = 1, 6 do
    for trial = 1, 3 do
      local c = lps.randn(n, n, g)
      for _, maximize in ipairs({false, true}) do
        local best
        each_perm(n, function(p)
          local s = 0
          for i = 1, n do s = s + c:get(i, p[i]) end
          if not best or (maximize and s > best) or (not maximize and s < best) then best = s end
        end)
        local as, total = E.assign(c, maximize)
        local s, seen = 0, {}
        for i = 1, n do
          lu.assertNil(seen[as[i]])
          seen[as[i]] = true
          s = s + c:get(i, as[i])
        end
        lu.assertAlmostEquals(s, best, 1e-5, string.format("n=%d trial=%d", n, trial))
        lu.assertAlmostEquals(total, s, 1e-9)
      end
    end
  end
end

function TestAssign:test_square_agrees_with_padded()
  -- square problems start from a column reduction; a spare column of huge
  -- cost sends the same problem down the plain path: same optimum
  local g = lps.generator(13)
  for _, n in ipairs({8, 30}) do
    local c = lps.randn(n, n, g)
    local padded = lps.full(n, n + 1, 1e6)
    for i = 1, n do for j = 1, n do padded:set(i, j, c:get(i, j)) end end
    local _, total = E.assign(c)
    local as2, total2 = E.assign(padded)
    lu.assertAlmostEquals(total, total2, 1e-6)
    local neg = lps.full(n, n + 1, -1e6)
    for i = 1, n do for j = 1, n do neg:set(i, j, c:get(i, j)) end end
    lu.assertAlmostEquals(select(2, E.assign(c, true)), select(2, E.assign(neg, true)), 1e-6)
    for i = 1, n do lu.assertTrue(as2[i] <= n) end
  end
end

function TestAssign:test_rectangular()
  local g = lps.generator(12)
  -- 3 rows, 5 columns: best injective map, by enumerating column choices
  local c = lps.randn(3, 5, g)
  local best = math.huge
  for a = 1, 5 do for b = 1, 5 do for d = 1, 5 do
    if a ~= b and b ~= d and a ~= d then
      best = math.min(best, c:get(1, a) + c:get(2, b) + c:get(3, d))
    end
  end end end
  local as, total = E.assign(c)
  lu.assertAlmostEquals(total, best, 1e-5)
  -- transposed (5 rows, 3 columns): same optimum, two rows left out
  local as2, total2 = E.assign(c:t())
  lu.assertAlmostEquals(total2, best, 1e-5)
  local zeros = 0
  for i = 1, 5 do if as2[i] == 0 then zeros = zeros + 1 else lu.assertEquals(as[as2[i]], i) end end
  lu.assertEquals(zeros, 2)
end

function TestAssign:test_known_answer_and_ties()
  -- rows pick 2, 1, 3: 1 + 2 + 2 = 5 (hand-checked against all 6 orders)
  local as, total = E.assign(lps.tensor{{4, 1, 3}, {2, 0, 5}, {3, 2, 2}})
  lu.assertEquals(as, {2, 1, 3})
  lu.assertEquals(total, 5)
  -- all costs equal: any permutation is optimal; the result is one
  local as2 = E.assign(lps.ones(4, 4))
  table.sort(as2)
  lu.assertEquals(as2, {1, 2, 3, 4})
end

function TestAssign:test_bad_input()
  T.assert_error_contains("assign: cost (1,2) is not finite", E.assign, lps.tensor{{1, 0 / 0}, {1, 1}})
  T.assert_error_contains("assign: needs a 2-D", E.assign, lps.zeros(3))
end

TestModel = {}

function TestModel:test_forward_by_hand()
  -- W1 = {{2, 1}, {1, 3}}, b1 = {0, 1}, x = (1, -1):
  -- h = relu(2-1+0, 1-3+1) = (1, 0); y = W2 h + b2 = 5*1 + 7*0 + 1 = 6
  local m = {lps.tensor{{2, 1}, {1, 3}}, lps.tensor{0, 1}, lps.tensor{{5, 7}}, lps.tensor{1}}
  local y = E.forward(m, lps.tensor{{1, -1}, {0, 0}})
  -- second row: h = relu(0, 1) = (0, 1), y = 7 + 1 = 8
  lu.assertEquals(y:totable(), {{6}, {8}})
  lu.assertEquals(E.hidden(m, lps.tensor{{1, -1}})[1]:totable(), {{1, 0}})
end

function TestModel:test_permuted_model_same_function()
  local g = lps.generator(21)
  for _, widths in ipairs({{12, 7, 3}, {12, 7, 5, 3}, {9, 4, 6, 5, 2}}) do
    local m = mlp(g, widths)
    local perms = planted(g, m)
    local p = E.permute(m, perms)
    local x = lps.randn(6, widths[1], g)
    lu.assertTrue(max_abs_diff(E.forward(m, x), E.forward(p, x)) < 1e-4)
    -- the parameters did move (unless a permutation is the identity)
    lu.assertTrue(max_abs_diff(m[1], p[1]) > 0)
    -- permute rows by hand for layer 1: row i of the result is row perms[1][i]
    for i = 1, widths[2] do
      lu.assertEquals(p[1][i]:totable(), m[1][perms[1][i]]:totable())
    end
  end
end

function TestModel:test_bad_models()
  local g = lps.generator(22)
  local m = mlp(g, {5, 4, 3})
  T.assert_error_contains("features: a model must hold W1, b1, W2, b2", E.features, "raw", {m[1], m[2]})
  T.assert_error_contains("even number", E.features, "raw", {m[1], m[2], m[3]})
  T.assert_error_contains("entry 2 is a string, expected a tensor", E.features, "raw",
    {m[1], "x", m[3], m[4]})
  T.assert_error_contains("b1 (3) does not match W1 (4x5)", E.features, "raw",
    {m[1], lps.zeros(3), m[3], m[4]})
  T.assert_error_contains("W2 (3x3) does not take the 4 outputs of W1", E.features, "raw",
    {m[1], m[2], lps.zeros(3, 3), m[4]})
  local bad = m[3]:clone()
  bad:set(1, 1, 0 / 0)
  T.assert_error_contains("raw: W2 has a non-finite value", E.features, "raw", {m[1], m[2], bad, m[4]})
  T.assert_error_contains("forward: input (2x4) should be N x 5", E.forward, m, lps.zeros(2, 4))
  T.assert_error_contains("permute: expected 1 permutations", E.permute, m, {})
  T.assert_error_contains("permute: permutation 1 entry 2 (9) out of range 1..4", E.permute, m,
    {{1, 9, 2, 3}})
  T.assert_error_contains("not a permutation", E.permute, m, {{1, 1, 2, 3}})
  T.assert_error_contains("invalid option 'nope'", E.features, "nope", m)
end

TestFeatures = {}

function TestFeatures:test_raw_is_flat_parameters()
  local m = {lps.tensor{{1, 2}, {3, 4}}, lps.tensor{5, 6}, lps.tensor{{7, 8}}, lps.tensor{9}}
  lu.assertEquals(E.features("raw", m):totable(), {1, 2, 3, 4, 5, 6, 7, 8, 9})
end

function TestFeatures:test_sorted_by_hand_and_invariant()
  -- unit norms^2: unit 1 = 1+0+0 = 1, unit 2 = 9+16+0 = 25, unit 3 = 4+0+1 = 5:
  -- order 2, 3, 1; W2's columns follow
  local m = {lps.tensor{{1, 0}, {3, 4}, {2, 0}}, lps.tensor{0, 0, 1},
             lps.tensor{{10, 20, 30}}, lps.tensor{7}}
  lu.assertEquals(E.sort_perm(m), {{2, 3, 1}})
  lu.assertEquals(E.features("sorted", m):totable(), {3, 4, 2, 0, 1, 0, 0, 1, 0, 20, 30, 10, 7})
  local g = lps.generator(31)
  local a = mlp(g, {10, 6, 5, 2})
  local b = E.permute(a, planted(g, a))
  lu.assertTrue(max_abs_diff(E.features("sorted", a), E.features("sorted", b)) == 0)
  lu.assertAlmostEquals(E.similarity("sorted", a, b), 1, 1e-6)
  lu.assertTrue(E.similarity("raw", a, b) < 0.9)
end

function TestFeatures:test_stats_by_hand()
  -- W1 = 1..4: mean 2.5, variance 1.25, quantiles 1, 1.75, 2.5, 3.25, 4
  -- b1 = {1, 3}: 2, 1, 1, 1.5, 2, 2.5, 3; W2 = {-1, 1}: 0, 1, -1, -.5, 0, .5, 1
  -- b2 = {5}: 5, 0, 5, 5, 5, 5, 5
  local m = {lps.tensor{{1, 2}, {3, 4}}, lps.tensor{1, 3}, lps.tensor{{-1, 1}}, lps.tensor{5}}
  -- slots: first layer, last hidden layer (here the same), head
  local f = E.features("stats", m):totable()
  local want = {2.5, 1.25, 1, 1.75, 2.5, 3.25, 4, 2, 1, 1, 1.5, 2, 2.5, 3,
                2.5, 1.25, 1, 1.75, 2.5, 3.25, 4, 2, 1, 1, 1.5, 2, 2.5, 3,
                0, 1, -1, -0.5, 0, 0.5, 1, 5, 0, 5, 5, 5, 5, 5}
  lu.assertEquals(#f, 42)
  for i = 1, #want do lu.assertAlmostEquals(f[i], want[i], 1e-6, "stat " .. i) end
  -- invariant to unit permutations
  local g = lps.generator(32)
  local a = mlp(g, {8, 5, 4, 3})
  lu.assertTrue(max_abs_diff(E.features("stats", a), E.features("stats", E.permute(a, planted(g, a)))) < 1e-6)
end

function TestFeatures:test_stats_quantiles_equal_a_full_sort()
  -- the order statistics are selected, not sorted: compare with a sort, on
  -- sizes around the selection's cut-offs and with many ties
  local g = lps.generator(35)
  local function f32(x) return (string.unpack("f", string.pack("f", x))) end
  for _, n in ipairs{1, 2, 3, 5, 15, 16, 17, 40, 1001, 5000} do
    for _, ties in ipairs{false, true} do
      local rows = {}
      for i = 1, n do rows[i] = {ties and g:random(-3, 3) or g:uniform() - 0.5} end
      local w = lps.tensor(rows)
      local f = E.features("stats", {w, lps.zeros(n), lps.zeros(1, n), lps.zeros(1)}):totable()
      local v = w:reshape(n):totable()
      table.sort(v)
      for j, q in ipairs{0, 0.25, 0.5, 0.75, 1} do
        local pos = q * (n - 1)
        local lo = math.floor(pos)
        local want = lo >= n - 1 and v[n] or v[lo + 1] + (pos - lo) * (v[lo + 2] - v[lo + 1])
        lu.assertEquals(f[2 + j], f32(want), ("n=%d ties=%s q=%g"):format(n, tostring(ties), q))
      end
    end
  end
end

function TestFeatures:test_stats_standardized_cosine()
  local g = lps.generator(33)
  local ms = {mlp(g, {6, 4, 2}), mlp(g, {6, 4, 2}), mlp(g, {6, 4, 2})}
  -- by hand: standardize the stacked features, then cosine
  local F = E.feature_matrix("stats", ms)
  local Z = F:clone()
  local _, mean, sd = E.standardize(Z)
  for j = 1, F:size(2) do
    local s, ss = 0, 0
    for i = 1, 3 do s = s + F:get(i, j) end
    for i = 1, 3 do ss = ss + (F:get(i, j) - s / 3) ^ 2 end
    lu.assertAlmostEquals(mean:get(j), s / 3, 1e-5)
    lu.assertAlmostEquals(sd:get(j), math.sqrt(ss / 3), 1e-5)
  end
  local S = E.similarity_matrix("stats", {ms[1]}, {ms[2], ms[3]})
  local C = E.cosine_matrix(Z, Z)
  lu.assertAlmostEquals(S:get(1, 1), C:get(1, 2), 1e-5)
  lu.assertAlmostEquals(S:get(1, 2), C:get(1, 3), 1e-5)
  -- given mean and sd are used as they are
  local S2 = E.similarity_matrix("stats", {ms[1]}, {ms[2]}, {mean = mean, sd = sd})
  lu.assertAlmostEquals(S2:get(1, 1), C:get(1, 2), 1e-5)
end

function TestFeatures:test_gram_by_hand()
  -- rows normalized: (0.6, 0.8), (1, 0); G = {{1.36, 0.48}, {0.48, 0.64}};
  -- upper triangle with off-diagonal * sqrt 2
  local m = {lps.tensor{{3, 4}, {2, 0}}, lps.tensor{1, 1}, lps.tensor{{1, 1}}, lps.tensor{0}}
  local f = E.features("gram", m, {pool = 1}):totable()
  lu.assertAlmostEquals(f[1], 1.36, 1e-6)
  lu.assertAlmostEquals(f[2], 0.48 * math.sqrt(2), 1e-6)
  lu.assertAlmostEquals(f[3], 0.64, 1e-6)
end

function TestFeatures:test_gram_pooled_matches_lua()
  -- 4x4 "images", pool 2: W1 rows normalized, then 2x2 pixel blocks averaged
  local g = lps.generator(34)
  local m = mlp(g, {16, 3, 2})
  local w = m[1]
  local P = {}
  for i = 1, 3 do
    local nrm = 0
    for c = 1, 16 do nrm = nrm + w:get(i, c) ^ 2 end
    nrm = math.sqrt(nrm)
    P[i] = {0, 0, 0, 0}
    for r = 0, 3 do for c = 0, 3 do
      local q = (r // 2) * 2 + c // 2 + 1
      P[i][q] = P[i][q] + w:get(i, r * 4 + c + 1) / nrm / 4
    end end
  end
  local want = {}
  for a = 1, 4 do for b = a, 4 do
    local s = 0
    for i = 1, 3 do s = s + P[i][a] * P[i][b] end
    want[#want + 1] = a == b and s or s * math.sqrt(2)
  end end
  local f = E.features("gram", m, {pool = 2}):totable()
  lu.assertEquals(#f, 10)
  for i = 1, 10 do lu.assertAlmostEquals(f[i], want[i], 1e-5) end
  -- default pool is 2; invariant to permuting and positively rescaling units
  local b = E.permute(m, {{3, 1, 2}})
  local b1 = b[1]:clone()
  for c = 1, 16 do b1:set(2, c, b1:get(2, c) * 2.5) end
  b[1] = b1
  lu.assertTrue(max_abs_diff(E.features("gram", b), E.features("gram", m)) < 1e-5)
  T.assert_error_contains("gram: pooling by 3 needs a square input of side divisible by 3",
    E.features, "gram", m, {pool = 3})
end

TestMatching = {}

function TestMatching:test_planted_permutation_recovered()
  local g = lps.generator(41)
  for _, widths in ipairs({{20, 8, 3}, {20, 10, 7, 3}, {12, 6, 9, 5, 2}}) do
    local a = mlp(g, widths)
    local perms = planted(g, a)
    local b = E.permute(a, perms)
    -- aligning a to b gives back the planted permutation exactly
    local p, sim = E.weight_matching(b, a)
    lu.assertEquals(p, perms)
    lu.assertAlmostEquals(sim, 1, 1e-6)
    -- and the other way the inverse, in a random layer order too
    local q, sim2 = E.weight_matching(a, b, {generator = lps.generator(5)})
    local back = E.permute(b, q)
    for i = 1, #a do lu.assertTrue(max_abs_diff(back[i], a[i]) == 0) end
    lu.assertAlmostEquals(sim2, 1, 1e-6)
    lu.assertAlmostEquals(E.similarity("matching", a, b), 1, 1e-6)
  end
end

function TestMatching:test_noisy_copy_scores_above_raw()
  local g = lps.generator(42)
  local a = mlp(g, {30, 12, 10, 3})
  local b = E.permute(a, planted(g, a))
  for i = 1, #b do b[i]:add_(lps.randn(table.unpack(b[i]:shape())) * 0.3) end
  local raw, match = E.similarity("raw", a, b), E.similarity("matching", a, b)
  lu.assertTrue(match > 0.9, "matching " .. match)
  lu.assertTrue(raw < 0.5, "raw " .. raw)
  -- never below no alignment at all
  for _ = 1, 5 do
    local c, d = mlp(g, {30, 12, 10, 3}), mlp(g, {30, 12, 10, 3})
    lu.assertTrue(E.similarity("matching", c, d) >= E.similarity("raw", c, d) - 1e-6)
  end
end

function TestMatching:test_matrix_and_errors()
  local g = lps.generator(43)
  local a, b, c = mlp(g, {6, 4, 2}), mlp(g, {6, 4, 2}), mlp(g, {6, 5, 2})
  local S = E.similarity_matrix("matching", {a, b}, {b, a})
  lu.assertEquals(S:shape(), {2, 2})
  lu.assertAlmostEquals(S:get(1, 2), 1, 1e-6)
  lu.assertAlmostEquals(S:get(2, 1), 1, 1e-6)
  lu.assertAlmostEquals(S:get(1, 1), S:get(2, 2), 1e-5) -- symmetric in value
  T.assert_error_contains("matching: W1 is (4x6) in one model and (5x6) in the other",
    E.weight_matching, a, c)
  T.assert_error_contains("max_iter must be >= 1", E.weight_matching, a, b, {max_iter = 0})
end

TestCKA = {}

function TestCKA:test_by_hand()
  -- X = (1,2,3,4)', Y = {{1,0},{0,0},{0,1},{1,1}}: centred x'x = 5,
  -- Y'X = (0, 2), ||Y'Y||_F = sqrt 2: CKA = 4 / (5 sqrt 2)
  local x = lps.tensor{{1}, {2}, {3}, {4}}
  local y = lps.tensor{{1, 0}, {0, 0}, {0, 1}, {1, 1}}
  lu.assertAlmostEquals(E.linear_cka(x, y), 4 / (5 * math.sqrt(2)), 1e-6)
  lu.assertAlmostEquals(E.linear_cka(y, x), 4 / (5 * math.sqrt(2)), 1e-6)
  -- invariant to isotropic scaling and to a shift
  lu.assertAlmostEquals(E.linear_cka(x * 3 + 7, y * 0.5),
    4 / (5 * math.sqrt(2)), 1e-6)
  lu.assertAlmostEquals(E.linear_cka(y, y), 1, 1e-6)
  -- a constant side has no structure: 0
  lu.assertEquals(E.linear_cka(lps.ones(4, 1), y), 0)
end

function TestCKA:test_models()
  local g = lps.generator(51)
  local a = mlp(g, {10, 8, 6, 3})
  local probe = lps.randn(40, 10, g)
  local b = E.permute(a, planted(g, a))
  local c = mlp(g, {10, 5, 7, 3}) -- other widths are fine
  local S = E.similarity_matrix("cka", {a}, {a, b, c}, {probe = probe})
  lu.assertAlmostEquals(S:get(1, 1), 1, 1e-5)
  lu.assertAlmostEquals(S:get(1, 2), 1, 1e-5)
  lu.assertTrue(S:get(1, 3) < 0.99)
  -- the mean over the hidden layers of linear_cka on their activations
  local ha, hc = E.hidden(a, probe), E.hidden(c, probe)
  local want = (E.linear_cka(ha[1], hc[1]) + E.linear_cka(ha[2], hc[2])) / 2
  lu.assertAlmostEquals(S:get(1, 3), want, 1e-5)
  T.assert_error_contains("cka needs opts.probe", E.similarity_matrix, "cka", {a}, {b})
  T.assert_error_contains("hidden_acts: input (40x9) should be N x 10", E.similarity_matrix,
    "cka", {a}, {b}, {probe = lps.zeros(40, 9)})
  T.assert_error_contains("cka: the probe batch must be N x d with N >= 2, got (1x10)",
    E.similarity_matrix, "cka", {a}, {b}, {probe = lps.zeros(1, 10)})
  T.assert_error_contains("cka: model 1 of the second set: b2 (5) does not match W2 (6x8)", E.similarity_matrix, "cka", {a},
    {{a[1], a[2], a[3], lps.zeros(5), a[5], a[6]}}, {probe = probe})
  T.assert_error_contains("cka: needs N x p and N x q", E.linear_cka, lps.zeros(3, 1), lps.zeros(4, 1))
  T.assert_error_contains("cka: non-finite value in the first matrix at row 2", E.linear_cka,
    lps.tensor{{1}, {0 / 0}}, lps.tensor{{1}, {2}})
end

-- a with an identity layer (n x n, zero bias) inserted after hidden layer
-- `after`: ReLU(I h) = h for h >= 0, so its hidden activations repeat one.
local function with_identity(a, after)
  local n = a[2 * after - 1]:size(1)
  local I = lps.zeros(n, n)
  for i = 1, n do I:set(i, i, 1) end
  local m = {}
  for k = 1, 2 * after do m[k] = a[k] end
  m[#m + 1], m[#m + 2] = I, lps.zeros(n)
  for k = 2 * after + 1, #a do m[#m + 1] = a[k] end
  return m
end

function TestCKA:test_different_depths_by_relative_depth()
  local g = lps.generator(52)
  local probe = lps.randn(30, 10, g)
  local a = mlp(g, {10, 8, 6, 3})        -- 2 hidden layers
  local d3 = mlp(g, {10, 7, 5, 4, 3})    -- 3
  local d1 = mlp(g, {10, 9, 3})          -- 1
  local ha, h3, h1 = E.hidden(a, probe), E.hidden(d3, probe), E.hidden(d1, probe)
  local c = E.linear_cka
  -- layer l of L covers ((l-1)/L, l/L]: 2 vs 3 overlap 1/3, 1/6, 1/6, 1/3
  local want_a3 = c(ha[1], h3[1]) / 3 + c(ha[1], h3[2]) / 6 + c(ha[2], h3[2]) / 6 + c(ha[2], h3[3]) / 3
  local want_a1 = (c(ha[1], h1[1]) + c(ha[2], h1[1])) / 2
  local models = {a, d3, d1}
  local S = E.similarity_matrix("cka", models, models, {probe = probe})
  lu.assertAlmostEquals(S:get(1, 2), want_a3, 1e-6)
  lu.assertAlmostEquals(S:get(2, 1), want_a3, 1e-6)
  lu.assertAlmostEquals(S:get(1, 3), want_a1, 1e-6)
  lu.assertAlmostEquals(E.cka_layers(ha, h3), want_a3, 1e-6)
  for i = 1, 3 do lu.assertAlmostEquals(S:get(i, i), 1, 1e-5) end
  -- the feature path gives the same values as dot products; a slot per
  -- piece of the depth cut at 0, 1/3, 1/2, 2/3, 1 (4 slots of N^2)
  local F = E.cka_features(models, probe)
  lu.assertEquals(F:shape(), {3, 4 * 30 * 30})
  lu.assertTrue(lps.allclose(lps.matmul(F, F, false, true), S, 1e-4, 1e-5))
  -- features laid out for given depths compare across calls
  local fa = E.cka_features({a}, probe, {depths = {1, 2, 3}})
  local f3 = E.cka_features({d3}, probe, {depths = {1, 2, 3}})
  lu.assertAlmostEquals(lps.matmul(fa, f3, false, true):get(1, 1), want_a3, 1e-5)
  T.assert_error_contains("a model has 3 layers, not among opts.depths", E.cka_features, {d3},
    probe, {depths = {2}})
end

function TestCKA:test_identity_layer_by_hand()
  -- b repeats a's first (or last) hidden layer: its layers are h1 h1 h2 (or
  -- h1 h2 h2) against a's h1 h2, so the overlaps give 1/3 + 1/6 + 1/3 of
  -- CKA 1 and 1/6 of CKA(h1, h2): 5/6 + c/6
  local g = lps.generator(53)
  local probe = lps.randn(25, 10, g)
  local a = mlp(g, {10, 8, 6, 3})
  local h = E.hidden(a, probe)
  local want = 5 / 6 + E.linear_cka(h[1], h[2]) / 6
  lu.assertTrue(want < 0.99)
  for _, after in ipairs{1, 2} do
    local b = with_identity(a, after)
    lu.assertTrue(lps.allclose(E.forward(b, probe), E.forward(a, probe), 1e-5, 1e-5))
    lu.assertAlmostEquals(E.similarity("cka", a, b, {probe = probe}), want, 1e-5)
    local F = E.cka_features({a, b}, probe)
    lu.assertAlmostEquals(lps.matmul(F, F, false, true):get(1, 2), want, 1e-5)
  end
end

function TestCKA:test_layer_list_errors()
  local x, y = lps.randn(6, 3), lps.randn(6, 2)
  T.assert_error_contains("cka_layers: the second model must hold 1 to 100000 tensors, got 0",
    E.cka_layers, {x}, {})
  T.assert_error_contains("cka_layers: layer 2 of the second model is (5x2); every layer must be 6 x p",
    E.cka_layers, {x}, {y, lps.randn(5, 2)})
  T.assert_error_contains("cka_layers: the first model entry 1 is a number", E.cka_layers, {1}, {y})
  T.assert_error_contains("cka_layers: layer 1 of the second model has a non-finite value at row 2",
    E.cka_layers, {x}, {lps.tensor{{1}, {0 / 0}, {1}, {2}, {3}, {4}}})
  T.assert_error_contains("model 2 layer 1 has 5 rows; every layer needs the same N >= 2 (6)",
    E.cka_layer_features, {{x}, {lps.randn(5, 2)}})
  T.assert_error_contains("model 1 layer 1 has non-finite activations", E.cka_layer_features,
    {{lps.tensor{{1}, {1 / 0}}}})
  T.assert_error_contains("cka_features: the probe must be an N x d tensor with N >= 2",
    E.cka_features, {mlp(lps.generator(1), {3, 2, 2})}, lps.zeros(1, 3))
  T.assert_error_contains("cka_features: needs a non-empty list of models", E.cka_features, {}, x)
end

TestSimilarity = {}

function TestSimilarity:test_every_method_shapes_and_self()
  local g = lps.generator(61)
  local A = {mlp(g, {16, 6, 4, 2}), mlp(g, {16, 6, 4, 2})}
  local B = {mlp(g, {16, 6, 4, 2}), A[1], mlp(g, {16, 6, 4, 2})}
  local opts = {probe = lps.randn(20, 16, g), pool = 2}
  -- one pair alone cannot standardize stats: give both sets' mean and sd
  local _
  _, opts.mean, opts.sd = E.standardize(E.feature_matrix("stats", {A[1], A[2], B[1], B[2], B[3]}))
  for _, method in ipairs(E.methods) do
    local S = E.similarity_matrix(method, A, B, opts)
    lu.assertEquals(S:shape(), {2, 3}, method)
    lu.assertAlmostEquals(S:get(1, 2), 1, 1e-5, method .. " self-similarity")
    lu.assertAlmostEquals(E.similarity(method, A[2], B[3], opts), S:get(2, 3), 1e-5, method)
  end
  T.assert_error_contains("unknown method 'nope'", E.similarity_matrix, "nope", A, B)
  T.assert_error_contains("feature_matrix: model 2 gives", E.feature_matrix, "raw",
    {A[1], mlp(g, {16, 5, 4, 2})})
end

TestCKAFeatures = {}

function TestCKAFeatures:test_dot_products_are_cka()
  local g = lps.generator(21)
  local models = {}
  for k = 1, 4 do
    models[k] = {lps.randn(7, 12, g), lps.randn(7, g), lps.randn(5, 7, g), lps.randn(5, g),
                 lps.randn(2, 5, g), lps.randn(2, g)}
  end
  local probe = lps.randn(9, 12, g)
  local F = lps.eval.cka_features(models, probe)
  lu.assertEquals(F:shape(), {4, 2 * 81})
  local via = lps.matmul(F, F, false, true)
  local direct = lps.eval.similarity_matrix("cka", models, models, {probe = probe})
  lu.assertTrue(lps.allclose(via, direct, 1e-4, 1e-5))
  lu.assertAlmostEquals(via:get(2, 2), 1, 1e-5)
  -- one depth L: layer l in slot l as K / (||K|| sqrt L), exactly as before
  -- depths could differ (the ModelSet500 table keeps its values)
  for i, m in ipairs(models) do
    for l, X in ipairs(E.hidden(m, probe)) do
      local Xc = X - X:mean(1)
      local K = lps.matmul(Xc, Xc, false, true)
      K:mul_(1 / (K:norm() * math.sqrt(2)))
      lu.assertEquals(F[i]:rows((l - 1) * 81 + 1, l * 81):totable(), K:reshape(81):totable())
    end
  end
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
