-- Transferability estimators (lps.estimators): LogME against a numpy
-- transcription of the reference and against the Gaussian evidence it
-- defines, LEEP by hand, leave-one-out k-NN by hand, the ridge probe's
-- closed-form leave-one-out against refitting, invariances, the forward
-- helper, and the errors.
local lu = require "luaunit"
local lps = require "lualps"
local cjson = require "cjson"
local T = require "tests.helpers"
local E = lps.estimators

local function labels_for(n, classes, g)
  local y = {}
  for i = 1, n do y[i] = g:random(classes) end
  y[1], y[2] = 1, classes -- every run has two classes at least
  return y
end

-- Row i of F (and label i) moved to position perm[i].
local function permute_rows(F, y, perm)
  local P, py = lps.zeros(F:size(1), F:size(2)), {}
  for i, p in ipairs(perm) do
    P[p]:copy(F[i])
    py[p] = y[i]
  end
  return P, py
end

local random_perm = lps.data.randperm

-- n x d Gaussian features whose column y_i is raised by shift in row i:
-- classes a probe can tell apart. Returns F, y.
local function separable(n, d, classes, shift, g)
  local F, y = lps.randn(n, d, g), labels_for(n, classes, g)
  for i = 1, n do F:set(i, y[i], F:get(i, y[i]) + shift) end
  return F, y
end

-- log det and solution of a small symmetric positive definite system, by
-- Gaussian elimination in Lua doubles.
local function logdet_solve(A, b)
  local n, M = #A, {}
  for i = 1, n do
    M[i] = table.move(A[i], 1, n, 1, {})
    M[i][n + 1] = b[i]
  end
  local ld = 0
  for c = 1, n do
    ld = ld + math.log(M[c][c])
    for r = c + 1, n do
      local f = M[r][c] / M[c][c]
      for j = c, n + 1 do M[r][j] = M[r][j] - f * M[c][j] end
    end
  end
  local x = {}
  for r = n, 1, -1 do
    local s = M[r][n + 1]
    for j = r + 1, n do s = s - M[r][j] * x[j] end
    x[r] = s / M[r][r]
  end
  return ld, x
end

-- The evidence LogME maximizes, straight from its definition: log N(y; 0,
-- I/beta + F F'/alpha) / n (y ~ F w + noise, w ~ N(0, I/alpha), noise ~ N(0, I/beta)).
local function log_marginal(F, y, alpha, beta)
  local n, d, C = #F, #F[1], {}
  for i = 1, n do
    C[i] = {}
    for j = 1, n do
      local s = 0
      for k = 1, d do s = s + F[i][k] * F[j][k] end
      C[i][j] = s / alpha + (i == j and 1 / beta or 0)
    end
  end
  local ld, x = logdet_solve(C, y)
  local q = 0
  for i = 1, n do q = q + y[i] * x[i] end
  return (-n / 2 * math.log(2 * math.pi) - ld / 2 - q / 2) / n
end

------------------------------------------------------------------ LogME

TestLogME = {}

function TestLogME:test_matches_the_numpy_reference()
  local ok = T.sh("/usr/bin/python3 -c 'import numpy'")
  if not ok then lu.skip("no /usr/bin/python3 with numpy (Debian python3-numpy)") end
  local g = lps.generator(7)
  -- n > D and n <= D, ReLU features with dead units (zero columns), an
  -- absent class in the middle (labels 1 and 3 only), the pool's widths
  local shapes = {{40, 12, 3}, {20, 50, 4}, {128, 64, 5}, {128, 784, 3}, {30, 30, 2}, {25, 6, 3}}
  local cases, mine = {}, {}
  for s, sh in ipairs(shapes) do
    local n, d, c = sh[1], sh[2], sh[3]
    local F = lps.randn(n, d, g):relu()
    for i = 1, n do F:set(i, 2, 0); F:set(i, d - 1, 0) end
    local y = labels_for(n, c, g)
    if s == #shapes then for i = 1, n do y[i] = y[i] == 2 and 3 or y[i] end end
    local y0 = {}
    for i = 1, n do y0[i] = y[i] - 1 end
    local theta = E.softmax(lps.randn(n, 7, g) * 3)
    cases[s] = {f = F:totable(), y = y0, theta = theta:totable()}
    local score, info = E.logme(F, y)
    mine[s] = {score = score, evidence = info.evidence, alpha = info.alpha, leep = E.leep(theta, y)}
  end
  local path = T.tmpname(".json")
  local f = assert(io.open(path, "w"))
  f:write(cjson.encode({cases = cases}))
  f:close()
  local ran, out = T.sh("/usr/bin/python3 scripts/logme_reference.py check < " .. path)
  T.cleanup()
  lu.assertTrue(ran, out)
  local ref = cjson.decode(out)
  for s, m in ipairs(mine) do
    local what = ("case %d (%dx%d)"):format(s, shapes[s][1], shapes[s][2])
    lu.assertEquals(#m.evidence, #ref.evidence[s], what)
    -- where the reference's cut at 1e-10 dropped null directions of F'F
    -- (rounding decides it), each of them adds log(alpha) / (2n) to its evidence
    local n, d = shapes[s][1], shapes[s][2]
    local dropped = n > d and d - ref.kept[s] or 0
    local mean = 0
    for c, e in ipairs(m.evidence) do
      local want = ref.evidence[s][c] - dropped * math.log(m.alpha[c]) / (2 * n)
      lu.assertAlmostEquals(e, want, 1e-9 * math.max(1, math.abs(e)), what .. " class " .. c)
      mean = mean + want / #m.evidence
    end
    lu.assertAlmostEquals(m.score, mean, 1e-9 * math.max(1, math.abs(mean)), what)
    if dropped == 0 then lu.assertAlmostEquals(m.score, ref.logme[s], 1e-9 * math.max(1, math.abs(m.score)), what) end
    lu.assertAlmostEquals(m.leep, ref.leep[s], 1e-12, what .. " leep")
  end
end

-- Tiny cases against the definition: the evidence reported for each class
-- is the Gaussian log marginal at the alpha, beta reported (within the
-- reference's stopping tolerance), and when n < D the reference's value
-- exceeds the true one by exactly (D - n) log(alpha) / (2n).
function TestLogME:test_tiny_cases_are_the_gaussian_evidence()
  local wide = {{1, 0.5, 0, 2, 1}, {0.2, 1, 1, 0, -1}, {-0.3, 0.4, 0.5, 0.5, 0.5}}
  local tall = {{1, 0.5}, {0.2, 1}, {-0.3, 0.4}, {0.9, -0.7}, {0.1, 0.1}}
  for _, F in ipairs{tall, wide} do
    local n, d = #F, #F[1]
    local y = {}
    for i = 1, n do y[i] = i % 2 + 1 end
    local ref, rinfo = E.logme(F, y)
    local exact, info = E.logme(F, y, {exact = true})
    local sum = 0
    for c = 1, 2 do
      local yc = {}
      for i = 1, n do yc[i] = y[i] == c and 1 or 0 end
      local a, b = info.alpha[c], info.beta[c]
      lu.assertTrue(a > 0 and b > 0)
      lu.assertAlmostEquals(info.evidence[c], log_marginal(F, yc, a, b), 1e-3)
      lu.assertEquals(rinfo.alpha[c], a) -- the flag changes the reported evidence only
      local extra = n < d and (d - n) * math.log(a) / (2 * n) or 0
      lu.assertAlmostEquals(rinfo.evidence[c] - info.evidence[c], extra, 1e-12)
      sum = sum + info.evidence[c]
    end
    lu.assertAlmostEquals(exact, sum / 2, 1e-15)
    if n > d then lu.assertEquals(ref, exact) end
  end
end

function TestLogME:test_invariant_to_sample_order_and_deterministic()
  local g = lps.generator(3)
  for _, d in ipairs{10, 60} do
    local F = lps.randn(40, d, g):relu()
    local y = labels_for(40, 3, g)
    local s = E.logme(F, y)
    lu.assertEquals(E.logme(F, y), s) -- the same bits again
    local P, py = permute_rows(F, y, random_perm(40, g))
    lu.assertAlmostEquals(E.logme(P, py), s, 1e-10 * math.abs(s))
    -- relabelling the classes permutes the per-class evidence only
    local swapped = {}
    for i, c in ipairs(y) do swapped[i] = 4 - c end
    local _, a = E.logme(F, y)
    local _, b = E.logme(F, swapped)
    for c = 1, 3 do lu.assertAlmostEquals(b.evidence[4 - c], a.evidence[c], 1e-12) end
  end
end

function TestLogME:test_features_that_fit_the_labels_score_higher()
  local g = lps.generator(5)
  local good, y = separable(60, 8, 3, 10, g) -- signal 10 over unit noise
  local noise = lps.randn(60, 8, g) * 10
  lu.assertTrue(E.logme(good, y) > E.logme(noise, y) + 0.1)
  lu.assertEquals(E.logme(lps.zeros(6, 3), {1, 2, 1, 2, 1, 2}), -math.huge)
end

------------------------------------------------------------------ LEEP

TestLEEP = {}

-- Four samples, two source classes, two target classes: P(y, z) =
-- {{.35, .15}, {.1, .4}}, P(z) = {.45, .55}, P(y=1|z) = {7/9, 3/11}; the
-- samples' sum_z P(y_i|z) theta_iz are 67/99, 57/99, 57/99, 67/99.
function TestLEEP:test_four_samples_by_hand()
  local theta = {{0.8, 0.2}, {0.6, 0.4}, {0.3, 0.7}, {0.1, 0.9}}
  local y = {1, 1, 2, 2}
  local want = (math.log(67 / 99) + math.log(57 / 99)) / 2
  lu.assertAlmostEquals(E.leep(theta, y), want, 1e-7)
  lu.assertAlmostEquals(E.leep(lps.tensor(theta), lps.tensor{1, 1, 2, 2}), want, 1e-7)
  -- a source class no sample gives mass to changes nothing, wherever it is
  lu.assertAlmostEquals(E.leep({{0, 0.8, 0.2}, {0, 0.6, 0.4}, {0, 0.3, 0.7}, {0, 0.1, 0.9}}, y), want, 1e-7)
  -- source classes permuted
  lu.assertAlmostEquals(E.leep({{0.2, 0.8}, {0.4, 0.6}, {0.7, 0.3}, {0.9, 0.1}}, y), want, 1e-7)
  -- an uninformative source: LEEP is the log-likelihood of the class frequencies
  lu.assertAlmostEquals(E.leep({{0.5, 0.5}, {0.5, 0.5}, {0.5, 0.5}, {0.5, 0.5}}, {1, 2, 2, 2}),
    (math.log(0.25) + 3 * math.log(0.75)) / 4, 1e-7)
end

function TestLEEP:test_invariant_to_source_class_and_sample_order()
  local g = lps.generator(11)
  local theta = E.softmax(lps.randn(50, 6, g) * 2)
  local y = labels_for(50, 4, g)
  local s = E.leep(theta, y)
  local cols = random_perm(6, g)
  local Pt = lps.zeros(50, 6)
  for i = 1, 50 do
    for j = 1, 6 do Pt:set(i, cols[j], theta:get(i, j)) end
  end
  lu.assertAlmostEquals(E.leep(Pt, y), s, 1e-12)
  local P, py = permute_rows(theta, y, random_perm(50, g))
  lu.assertAlmostEquals(E.leep(P, py), s, 1e-12)
  lu.assertTrue(s <= 0)
end

------------------------------------------------------------------ k-NN

TestKNN = {}

-- Unit vectors at angles 0, 10, 55 (class 1) and 80, 90 degrees (class 2),
-- scaled at will (cosine ignores it). 1-NN: 0<->10, 80<->90 right, 55's
-- nearest is 80: wrong, 4/5. 3-NN: 0 and 10 right (10|0, 55, 80), 55 gets
-- 80, 90, 10: wrong; 80 and 90 get 90|80, 55, 10: wrong; 2/5.
function TestKNN:test_leave_one_out_by_hand()
  local rows, y = {}, {1, 1, 1, 2, 2}
  for i, deg in ipairs{0, 10, 55, 80, 90} do
    local r = math.rad(deg)
    rows[i] = {i * math.cos(r), i * math.sin(r)}
  end
  lu.assertAlmostEquals(E.knn(rows, y), 0.8, 1e-15)
  lu.assertAlmostEquals(E.knn(rows, y, {k = 1}), 0.8, 1e-15)
  lu.assertAlmostEquals(E.knn(rows, y, {k = 3}), 0.4, 1e-15)
end

function TestKNN:test_invariant_to_sample_order()
  local g = lps.generator(13)
  local F, y = separable(60, 20, 3, 1.5, g)
  local P, py = permute_rows(F, y, random_perm(60, g))
  for _, k in ipairs{1, 5} do
    local a = E.knn(F, y, {k = k})
    lu.assertTrue(a > 0.5, "separable classes")
    lu.assertEquals(E.knn(P, py, {k = k}), a)
  end
end

------------------------------------------------------------ ridge probe

TestLinearProbe = {}

-- Refit without sample i (intercept unpenalized, ridge lambda on the
-- weights), in Lua doubles; returns the n x C predictions for the left-out samples.
local function refit_loo(F, y, classes, lambda)
  local n, d, out = #F, #F[1], {}
  for i = 1, n do
    local A, B = {}, {}
    for a = 1, d + 1 do
      A[a] = {}
      for b = 1, d + 1 do A[a][b] = (a == b and a > 1) and lambda or 0 end
      B[a] = {}
      for c = 1, classes do B[a][c] = 0 end
    end
    for r = 1, n do
      if r ~= i then
        local x = {1, table.unpack(F[r])}
        for a = 1, d + 1 do
          for b = 1, d + 1 do A[a][b] = A[a][b] + x[a] * x[b] end
          B[a][y[r]] = B[a][y[r]] + x[a]
        end
      end
    end
    out[i] = {}
    local xi = {1, table.unpack(F[i])}
    for c = 1, classes do
      local rhs = {}
      for a = 1, d + 1 do rhs[a] = B[a][c] end
      local _, w = logdet_solve(A, rhs)
      local p = 0
      for a = 1, d + 1 do p = p + w[a] * xi[a] end
      out[i][c] = p
    end
  end
  return out
end

function TestLinearProbe:test_closed_form_equals_refitting()
  local g = lps.generator(17)
  for _, sh in ipairs{{9, 3}, {7, 10}} do -- n > D, and n < D (the dual spectrum)
    local n, d = sh[1], sh[2]
    local F = lps.randn(n, d, g) + 0.5
    local y = labels_for(n, 3, g)
    local acc, info = E.linear_probe(F, y, {lambda = 0.5})
    lu.assertEquals(info.rho, 0.5)
    local loo = info.loo:totable()
    local want = refit_loo(F:totable(), y, 3, info.lambda)
    local right = 0
    for i = 1, n do
      local best = 1
      for c = 1, 3 do
        lu.assertAlmostEquals(loo[i][c], want[i][c], 1e-5 * math.max(1, math.abs(want[i][c])))
        if want[i][c] > want[i][best] then best = c end
      end
      right = right + (best == y[i] and 1 or 0)
    end
    lu.assertAlmostEquals(acc, right / n, 1e-15)
    -- lambda = rho * trace(Fc'Fc) / D
    local Fc = F - F:mean(1)
    lu.assertAlmostEquals(info.lambda, 0.5 * (Fc * Fc):sum() / d, 1e-4 * info.lambda)
  end
end

function TestLinearProbe:test_auto_lambda_is_the_grid_minimum()
  local g = lps.generator(19)
  local F, y = separable(50, 8, 3, 1, g)
  local acc, info = E.linear_probe(F, y)
  lu.assertEquals(#info.grid_mse, 13)
  local best = 1
  for k, m in ipairs(info.grid_mse) do if m < info.grid_mse[best] then best = k end end
  lu.assertAlmostEquals(info.rho, 10 ^ (-3 + 0.5 * (best - 1)), 1e-12 * info.rho)
  lu.assertAlmostEquals(info.mse, info.grid_mse[best], 1e-12)
  lu.assertEquals(info.rank, 8)
  lu.assertTrue(acc > 0.5)
  -- scaling the features changes lambda, nothing else
  local acc2, info2 = E.linear_probe(F * 10, y)
  lu.assertEquals(acc2, acc)
  lu.assertEquals(info2.rho, info.rho)
  lu.assertAlmostEquals(info2.lambda, 100 * info.lambda, 1e-4 * info2.lambda)
  -- and so does the order of the samples
  local P, py = permute_rows(F, y, random_perm(50, g))
  lu.assertEquals((E.linear_probe(P, py)), acc)
end

-- Constant features carry nothing: each left-out sample is predicted by
-- the class shares of the others. {1, 1, 1, 2, 2}: a class-1 sample sees
-- 2 and 2 (a tie: class 1, right), a class-2 sample 3 and 1 (wrong): 3/5.
function TestLinearProbe:test_constant_features_predict_the_other_samples_shares()
  local acc, info = E.linear_probe(lps.full(5, 4, 2.5), {1, 1, 1, 2, 2})
  lu.assertAlmostEquals(acc, 0.6, 1e-15)
  lu.assertEquals(info.rank, 0)
  lu.assertAlmostEquals(info.loo:get(1, 1), 0.5, 1e-7)
  lu.assertAlmostEquals(info.loo:get(4, 1), 0.75, 1e-7)
  lu.assertTrue(E.logme(lps.full(5, 4, 2.5), {1, 1, 1, 2, 2}) > -math.huge)
end

------------------------------------------------------- the forward pass

TestOutputs = {}

function TestOutputs:test_mlp_features_and_probabilities()
  local g = lps.generator(23)
  local model = lps.nn.mlp{784, 16, 8, 3, generator = g}
  local x = lps.rand(10, 784, g)
  local F, P = E.outputs(model, x, {batch = 4})
  local w = {}
  for i, p in ipairs(model:named_parameters()) do w[i] = p.tensor end
  local hidden = T.mlp_forward({w[1], w[2], w[3], w[4]}, x):relu()
  lu.assertTrue(lps.allclose(F, hidden, 1e-5, 1e-6))
  lu.assertTrue(lps.allclose(P, E.softmax(model:forward(x)), 1e-5, 1e-7))
  lu.assertTrue(lps.allclose(P:sum(2), lps.ones(10), 1e-5, 1e-6))
  lu.assertTrue(model:is_training(), "the model's mode is restored")
end

function TestOutputs:test_cnn_features_are_the_flattened_maps()
  local g = lps.generator(29)
  local model = lps.nn.from_arch({
    {type = "conv2d", ["in"] = 1, out = 4, kernel = 5, stride = 2, padding = 2}, {type = "relu"},
    {type = "conv2d", ["in"] = 4, out = 6, kernel = 3, stride = 2, padding = 1}, {type = "relu"},
    {type = "flatten"}, {type = "linear", ["in"] = 6 * 7 * 7, out = 4}}, g)
  local x = lps.rand(5, 784, g)
  local F, P = E.outputs(model, x)
  lu.assertEquals(F:shape(), {5, 294})
  lu.assertEquals(P:shape(), {5, 4})
  local kids, h = model:children(), x:reshape(5, 1, 28, 28)
  for k = 1, #kids - 1 do h = kids[k]:forward(h) end
  lu.assertTrue(lps.allclose(F, h, 1e-6, 1e-7))
  local F4 = E.outputs(model, x:reshape(5, 1, 28, 28)) -- images as they are
  lu.assertTrue(lps.allclose(F4, F, 0, 0))
end

------------------------------------------------------------------ errors

TestErrors = {}

function TestErrors:test_errors_name_the_estimator_and_the_value()
  local F = lps.randn(4, 3, lps.generator(1))
  local y = {1, 2, 1, 2}
  T.assert_error_contains("logme: features must be 2-D", E.logme, lps.zeros(4), y)
  T.assert_error_contains("logme: 3 labels for 4 samples", E.logme, F, {1, 2, 1})
  T.assert_error_contains("knn: label 2 is 0, not an integer >= 1", E.knn, F, {1, 0, 1, 2})
  T.assert_error_contains("label 3 is 1.5", E.linear_probe, F, {1, 2, 1.5, 2})
  T.assert_error_contains("logme: all 4 samples have the same label", E.logme, F, {2, 2, 2, 2})
  T.assert_error_contains("logme: needs at least 2 samples", E.logme, lps.randn(1, 3), {1})
  local bad = F:clone()
  bad:set(2, 3, 0 / 0)
  T.assert_error_contains("logme: features (2,3) is not finite", E.logme, bad, y)
  T.assert_error_contains("linear_probe: features (2,3) is not finite", E.linear_probe, bad, y)
  T.assert_error_contains("knn: features (2,3) is not finite", E.knn, bad, y)
  T.assert_error_contains("leep: source probability (1,1) = -1", E.leep, {{-1, 2}, {0.5, 0.5}, {1, 0}, {0, 1}}, y)
  T.assert_error_contains("leep: source probabilities of sample 2 sum to 0.6", E.leep,
    {{0.5, 0.5}, {0.3, 0.3}, {1, 0}, {0, 1}}, y)
  T.assert_error_contains("knn: k = 4 out of range 1..3", E.knn, F, y, {k = 4})
  T.assert_error_contains("knn: unknown option 'kk'", E.knn, F, y, {kk = 2})
  T.assert_error_contains("logme: unknown option", E.logme, F, y, {exact = true, alpha = 1})
  T.assert_error_contains("linear_probe: lambda must be", E.linear_probe, F, y, {lambda = 0})
  T.assert_error_contains("linear_probe: labels must be a table or a tensor", E.linear_probe, F, "1,2")
  T.assert_error_contains("outputs: model must be an lps.nn sequential", E.outputs, {}, F)
  T.assert_error_contains("outputs: the model's last layer must be linear", E.outputs,
    lps.nn.sequential{lps.nn.linear(3, 2), lps.nn.relu()}, F)
  T.assert_error_contains("softmax: logit (1,2) is not finite", E.softmax, {{1, math.huge}})
  -- the C functions directly: bad class counts and labels are errors, not crashes
  local C = lps.core._estimators
  T.assert_error_contains("logme: class count 0", C.logme, F, y, 0, false)
  T.assert_error_contains("leep: labels entry 3 is 5, not a class number 1..2", C.leep, F:abs(), {1, 2, 5, 1}, 2)
  T.assert_error_contains("linear_probe: lambda = -1 out of range", C.ridge, F, y, 2, -1)
  T.assert_error_contains("knn: class count 1099511627776", C.knn, F, y, 1 << 40, 1)
  T.assert_error_contains("logme: needs at least 2 classes", C.logme, F, {1, 1, 1, 1}, 1, false)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
