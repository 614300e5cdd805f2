-- Evaluation metrics: retrieval (CMC, mAP), classification, k-means,
-- NMI/AMI, rank correlations, projections and the top-k query.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local E = lps.eval

TestRetrieval = {}

-- gallery labels 1, 2, 1, 2
-- query 1 (label 1): sims .9 .8 .1 .5 -> order g1+ g2 g4 g3+: AP = (1/1 + 2/4)/2 = .75
-- query 2 (label 2): sims .5 .5 .9 .1 -> g3, then the tie g1 before g2 (lower
-- index first), g4: relevant at ranks 3 and 4: AP = (1/3 + 2/4)/2 = 5/12
local S = {{0.9, 0.8, 0.1, 0.5}, {0.5, 0.5, 0.9, 0.1}}

function TestRetrieval:test_by_hand_with_tie()
  local r = E.retrieval(lps.tensor(S), {1, 2}, {1, 2, 1, 2}, {ks = {1, 2, 3}})
  lu.assertEquals(r.cmc, {0.5, 0.5, 1.0}) -- tie the other way would give rank-2 = 1
  lu.assertAlmostEquals(r.map, (0.75 + 5 / 12) / 2, 1e-12)
  lu.assertEquals(#r.ap, 2) -- each query's AP (paired comparisons of methods)
  lu.assertAlmostEquals(r.ap[1], 0.75, 1e-12)
  lu.assertAlmostEquals(r.ap[2], 5 / 12, 1e-12)
  lu.assertEquals(r.queries, 2)
  lu.assertEquals(r.rank1, 0.5)
  lu.assertEquals(r.rank3, 1.0)
  -- default ranks: those of 1, 5, 10 within the gallery
  lu.assertEquals(E.retrieval(lps.tensor(S), {1, 2}, {1, 2, 1, 2}).ks, {1})
end

function TestRetrieval:test_skips_queries_without_relevant_items()
  local r = E.retrieval(lps.tensor{{0.9, 0.8, 0.1, 0.5}, {1, 1, 1, 1}}, {1, 7}, {1, 2, 1, 2},
    {ks = {1}})
  lu.assertEquals(r.queries, 1)
  lu.assertEquals(r.map, 0.75)
  lu.assertEquals(r.ap[1], 0.75)
  lu.assertNotEquals(r.ap[2], r.ap[2]) -- skipped: NaN, so the list keeps one entry per query
  T.assert_error_contains("retrieval: no query has a gallery item with its label", E.retrieval,
    lps.tensor{{1, 2}}, {3}, {1, 2}, {ks = {1}})
end

function TestRetrieval:test_exclude_self()
  -- a set against itself: labels 1 1 2; item 1's nearest other is item 3 (.7)
  local sim = lps.tensor{{1, 0.2, 0.7}, {0.2, 1, 0.1}, {0.7, 0.1, 1}}
  local r = E.retrieval(sim, {1, 1, 2}, {1, 1, 2}, {ks = {1, 2}, exclude_self = true})
  -- item 1: ranks 3, 2(+) -> first hit 2, AP 1/2; item 2: 1(+) -> AP 1;
  -- item 3: no other item with label 2 -> skipped
  lu.assertEquals(r.queries, 2)
  lu.assertEquals(r.cmc, {0.5, 1})
  lu.assertEquals(r.map, 0.75)
  lu.assertEquals({r.ap[1], r.ap[2]}, {0.5, 1})
end

function TestRetrieval:test_bad_input()
  local sim = lps.tensor(S)
  T.assert_error_contains("retrieval: rank k = 5 out of range 1..4", E.retrieval, sim, {1, 2},
    {1, 2, 1, 2}, {ks = {5}})
  T.assert_error_contains("rank k = 0", E.retrieval, sim, {1, 2}, {1, 2, 1, 2}, {ks = {0}})
  T.assert_error_contains("retrieval: 3 query labels for 2 similarity rows", E.retrieval, sim,
    {1, 2, 3}, {1, 2, 1, 2})
  T.assert_error_contains("retrieval: 2 gallery labels", E.retrieval, sim, {1, 2}, {1, 2})
  T.assert_error_contains("entry 2 is 2.5, not a whole number", E.retrieval, sim, {1, 2.5}, {1, 2, 1, 2})
  local bad = sim:clone()
  bad:set(2, 3, 0 / 0)
  T.assert_error_contains("retrieval: similarity (2,3) is NaN", E.retrieval, bad, {1, 2}, {1, 2, 1, 2})
  T.assert_error_contains("retrieval: empty query or gallery", E.retrieval, lps.zeros(0, 4), {},
    {1, 2, 1, 2}, {ks = {1}})
  T.assert_error_contains("exclude_self needs a square", E.retrieval, sim, {1, 2}, {1, 2, 1, 2},
    {ks = {1}, exclude_self = true})
end

TestClassify = {}

function TestClassify:test_knn_and_centroid()
  local sim = lps.tensor(S)
  local gl = {1, 2, 1, 2}
  local acc, pred = E.classify(sim, gl, {1, 2})
  lu.assertEquals(pred, {1, 1}) -- query 2's nearest is g3 (label 1)
  lu.assertEquals(acc, 0.5)
  -- k = 3: query 1 sees g1, g2, g4 -> labels 1, 2, 2 -> 2; query 2 sees g3, g1, g2 -> 1
  lu.assertEquals(select(2, E.classify(sim, gl, nil, {k = 3})), {2, 1})
  -- k = 2 vote tie: query 1 sees g1 (.9, label 1) and g2 (.8, label 2): larger sum wins
  lu.assertEquals(select(2, E.classify(sim, gl, nil, {k = 2})), {1, 1})
  -- centroid: query 1 means: label 1 (.9+.1)/2 = .5, label 2 (.8+.5)/2 = .65 -> 2
  -- query 2: label 1 (.5+.9)/2 = .7, label 2 (.5+.1)/2 = .3 -> 1
  lu.assertEquals(select(2, E.classify(sim, gl, nil, {rule = "centroid"})), {2, 1})
  -- equal means: the smaller label
  lu.assertEquals(select(2, E.classify(lps.tensor{{1, 1}}, {5, 3}, nil, {rule = "centroid"})), {3})
  T.assert_error_contains("knn: k = 5 out of range 1..4", E.classify, sim, gl, nil, {k = 5})
  T.assert_error_contains("rule must be", E.classify, sim, gl, nil, {rule = "x"})
end

TestMutualInfo = {}

function TestMutualInfo:test_scikit_learn_doc_examples()
  lu.assertEquals(E.ami({0, 0, 1, 1}, {0, 0, 1, 1}), 1.0)
  lu.assertEquals(E.ami({0, 0, 1, 1}, {1, 1, 0, 0}), 1.0)
  lu.assertEquals(E.ami({0, 0, 0, 0}, {0, 1, 2, 3}), 0.0)
  lu.assertEquals(E.nmi({0, 0, 1, 1}, {0, 0, 1, 1}), 1.0)
  lu.assertEquals(E.nmi({0, 0, 1, 1}, {1, 1, 0, 0}), 1.0)
  lu.assertEquals(E.nmi({0, 0, 0, 0}, {0, 1, 2, 3}), 0.0)
  -- neither labeling splits the data: a perfect match by convention
  lu.assertEquals(E.nmi({3, 3, 3}, {1, 1, 1}), 1.0)
  lu.assertEquals(E.ami({3, 3, 3}, {1, 1, 1}), 1.0)
end

function TestMutualInfo:test_nmi_by_hand()
  -- contingency {{2, 0}, {1, 1}}, n = 4
  local mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
  local ha = math.log(2)
  local hb = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  lu.assertAlmostEquals(E.nmi({0, 0, 1, 1}, {0, 0, 0, 1}), mi / ((ha + hb) / 2), 1e-12)
  -- independent labelings share nothing
  lu.assertEquals(E.nmi({0, 0, 1, 1}, {0, 1, 0, 1}), 0.0)
end

-- Mutual information of two label arrays, straight from the definition.
local function mi(a, b)
  local n, ca, cb, cab = #a, {}, {}, {}
  for i = 1, n do
    ca[a[i]] = (ca[a[i]] or 0) + 1
    cb[b[i]] = (cb[b[i]] or 0) + 1
    cab[a[i] * 1000 + b[i]] = (cab[a[i] * 1000 + b[i]] or 0) + 1
  end
  local s = 0
  for k, c in pairs(cab) do s = s + c / n * math.log(c * n / (ca[k // 1000] * cb[k % 1000])) end
  return s
end

local function entropy(a)
  local c, h = {}, 0
  for _, v in ipairs(a) do c[v] = (c[v] or 0) + 1 end
  for _, v in pairs(c) do h = h - v / #a * math.log(v / #a) end
  return h
end

-- E[MI] by averaging over every permutation of b: the permutation model itself.
local function brute_emi(a, b)
  local n, p, total, count = #b, {}, 0, 0
  for i = 1, n do p[i] = i end
  local function rec(k)
    if k > n then
      local bb = {}
      for i = 1, n do bb[i] = b[p[i]] end
      total, count = total + mi(a, bb), count + 1
      return
    end
    for i = k, n do
      p[k], p[i] = p[i], p[k]
      rec(k + 1)
      p[k], p[i] = p[i], p[k]
    end
  end
  rec(1)
  return total / count
end

function TestMutualInfo:test_ami_against_permutation_average()
  local cases = {
    {{0, 0, 0, 1, 1, 1}, {0, 0, 1, 1, 2, 2}}, -- scikit-learn user guide labels
    {{0, 0, 1, 1, 2, 2}, {0, 1, 1, 2, 2, 2}},
    {{1, 1, 1, 1, 2, 3, 3}, {5, 5, 6, 6, 6, 6, 7}},
    {{0, 1, 0, 1, 0}, {0, 0, 1, 1, 1}},
  }
  if T.scale == "small" then cases[3] = nil end -- 7! permutations: keep ASan quick
  for _, c in ipairs(cases) do
    local a, b = c[1], c[2]
    local emi = brute_emi(a, b)
    lu.assertAlmostEquals(E.emi(a, b), emi, 1e-12)
    local want = (mi(a, b) - emi) / ((entropy(a) + entropy(b)) / 2 - emi)
    lu.assertAlmostEquals(E.ami(a, b), want, 1e-12)
    lu.assertAlmostEquals(E.ami(b, a), want, 1e-12) -- symmetric
  end
  -- the user-guide labels: 0.29879 with the arithmetic mean (0.22504 was the
  -- old 'max' default); checked by the permutation average above
  lu.assertAlmostEquals(E.ami({0, 0, 0, 1, 1, 1}, {0, 0, 1, 1, 2, 2}), 0.2987924581708901, 1e-12)
end

function TestMutualInfo:test_bad_input()
  T.assert_error_contains("nmi: labelings have 2 and 3 entries", E.nmi, {1, 2}, {1, 2, 3})
  T.assert_error_contains("ami: the labelings are empty", E.ami, {}, {})
  T.assert_error_contains("nmi: second labeling entry 1 is not a number", E.nmi, {1}, {"a"})
  -- labels may come as a tensor of whole numbers
  lu.assertEquals(E.nmi(lps.tensor{1, 1, 2}, {4, 4, 5}), 1.0)
  T.assert_error_contains("not a whole number", E.nmi, lps.tensor{1.5, 1}, {1, 1})
end

TestRankCorrelation = {}

function TestRankCorrelation:test_kendall_tau_b()
  -- x = 12 2 1 12 2, y = 1 4 7 1 0: of the 10 pairs 2 concordant, 6 discordant,
  -- 1 tied in x only, 1 tied in both: (2 - 6) / sqrt(8 * 9)
  local t = E.kendall_tau({12, 2, 1, 12, 2}, {1, 4, 7, 1, 0})
  lu.assertAlmostEquals(t, -4 / math.sqrt(72), 1e-12)
  lu.assertAlmostEquals(t, -0.47140452079103173, 1e-12) -- SciPy's documented value
  lu.assertEquals(E.kendall_tau({1, 2, 3}, {10, 20, 30}), 1)
  lu.assertEquals(E.kendall_tau({1, 2, 3}, {3, 2, 1}), -1)
  -- ties in both: x = 1 1 2 2, y = 1 2 2 3: pairs (1,3) (1,4) (2,4) concordant,
  -- (1,2) tied x only, (3,4) tied x only, (2,3) tied y only: 3 / sqrt(4 * 5)
  lu.assertAlmostEquals(E.kendall_tau({1, 1, 2, 2}, {1, 2, 2, 3}), 3 / math.sqrt(20), 1e-12)
  local t0 = E.kendall_tau({1, 1, 1}, {1, 2, 3})
  lu.assertTrue(t0 ~= t0, "NaN for a constant vector")
end

function TestRankCorrelation:test_spearman()
  -- ranks of y = 5 6 7 8 7: 1 2 3.5 5 3.5; centred products 8, sums of
  -- squares 10 and 9.5: 8 / sqrt(95) (SciPy's documented 0.8207826816681233)
  local r = E.spearman({1, 2, 3, 4, 5}, {5, 6, 7, 8, 7})
  lu.assertAlmostEquals(r, 8 / math.sqrt(95), 1e-12)
  lu.assertAlmostEquals(E.spearman({1, 2, 3}, {30, 20, 10}), -1, 1e-12)
  lu.assertAlmostEquals(E.spearman(lps.tensor{3, 1, 2}, lps.tensor{30, 10, 20}), 1, 1e-12)
  local r0 = E.spearman({1, 2, 3}, {4, 4, 4})
  lu.assertTrue(r0 ~= r0, "NaN for a constant vector")
end

function TestRankCorrelation:test_bad_input()
  T.assert_error_contains("kendall_tau: x has 2 entries, y has 3", E.kendall_tau, {1, 2}, {1, 2, 3})
  T.assert_error_contains("spearman: needs at least 2 pairs", E.spearman, {1}, {1})
  T.assert_error_contains("spearman: pair 2 is not finite", E.spearman, {1, 0 / 0}, {1, 2})
end

TestKMeans = {}

function TestKMeans:test_by_hand()
  -- 0, 1 and 10, 11: centres 0.5 and 10.5, inertia 4 * 0.25
  local x = lps.tensor{{0}, {10}, {1}, {11}}
  local as, c, inertia = E.kmeans(x, 2, {generator = lps.generator(1)})
  lu.assertEquals(inertia, 1)
  lu.assertEquals(as[1], as[3])
  lu.assertEquals(as[2], as[4])
  lu.assertNotEquals(as[1], as[2])
  lu.assertEquals(c:get(as[1], 1), 0.5)
  lu.assertEquals(c:get(as[2], 1), 10.5)
end

function TestKMeans:test_blobs_deterministic()
  local g = lps.generator(7)
  local n, k = 60, 4
  local x, truth = lps.randn(n, 5, g) * 0.1, {}
  for i = 1, n do
    truth[i] = (i - 1) % k
    x:set(i, truth[i] + 1, x:get(i, truth[i] + 1) + 5)
  end
  local a1, _, in1 = E.kmeans(x, k, {generator = lps.generator(3)})
  local a2, _, in2 = E.kmeans(x, k, {generator = lps.generator(3)})
  lu.assertEquals(a1, a2)
  lu.assertEquals(in1, in2)
  lu.assertEquals(E.nmi(a1, truth), 1.0)
  lu.assertEquals(E.ami(a1, truth), 1.0)
  -- k = n: every point its own cluster, inertia 0 (duplicates included)
  local _, _, zero = E.kmeans(lps.tensor{{1}, {1}, {2}}, 3)
  lu.assertEquals(zero, 0)
end

function TestKMeans:test_bad_input()
  T.assert_error_contains("kmeans: k = 5 out of range 1..4", E.kmeans, lps.zeros(4, 2), 5)
  T.assert_error_contains("kmeans: k = 0", E.kmeans, lps.zeros(4, 2), 0)
  local bad = lps.zeros(3, 2)
  bad:set(2, 1, 1 / 0)
  T.assert_error_contains("kmeans: point 2 has a non-finite coordinate", E.kmeans, bad, 2)
  T.assert_error_contains("restarts and max_iter must be >= 1", E.kmeans, lps.zeros(3, 2), 2,
    {restarts = 0})
end

TestProjection = {}

function TestProjection:test_symeig()
  local w, v = E.symeig(lps.tensor{{2, 1}, {1, 2}})
  lu.assertAlmostEquals(w:get(1), 1, 1e-6)
  lu.assertAlmostEquals(w:get(2), 3, 1e-6)
  lu.assertAlmostEquals(v:get(1, 2), math.sqrt(0.5), 1e-6)
  lu.assertAlmostEquals(v:get(2, 2), math.sqrt(0.5), 1e-6)
  -- random symmetric: A V = V diag(w), V'V = I, w increasing
  local g = lps.generator(5)
  local b = lps.randn(7, 7, g)
  local a = b + b:t()
  w, v = E.symeig(a)
  local av, vw = a:matmul(v), v:clone()
  for j = 1, 7 do for i = 1, 7 do vw:set(i, j, v:get(i, j) * w:get(j)) end end
  lu.assertTrue((av - vw):abs():max() < 1e-4)
  local vtv = v:t():matmul(v)
  for i = 1, 7 do for j = 1, 7 do
    lu.assertAlmostEquals(vtv:get(i, j), i == j and 1 or 0, 1e-5)
  end end
  for j = 2, 7 do lu.assertTrue(w:get(j) >= w:get(j - 1)) end
end

function TestProjection:test_pca_by_hand()
  -- var along y: (4+4)/3, along x: (1+1)/3; scores are the coordinates
  local x = lps.tensor{{1, 0}, {-1, 0}, {0, 2}, {0, -2}}
  local p, var = E.pca(x)
  lu.assertAlmostEquals(var[1], 8 / 3, 1e-12)
  lu.assertAlmostEquals(var[2], 2 / 3, 1e-12)
  local want = {{0, 1}, {0, -1}, {2, 0}, {-2, 0}}
  for i = 1, 4 do for j = 1, 2 do lu.assertAlmostEquals(p:get(i, j), want[i][j], 1e-6) end end
end

function TestProjection:test_pca_wide_matches_gram()
  -- n < d: the scores reproduce the centred Gram matrix when k = n - 1
  local g = lps.generator(8)
  local x = lps.randn(4, 9, g)
  local p = E.pca(x, 3)
  local xc = x:clone()
  for j = 1, 9 do
    local s = 0
    for i = 1, 4 do s = s + x:get(i, j) end
    for i = 1, 4 do xc:set(i, j, x:get(i, j) - s / 4) end
  end
  local diff = (xc:matmul(xc:t()) - p:matmul(p:t())):abs():max()
  lu.assertTrue(diff < 1e-4, "gram mismatch " .. diff)
  T.assert_error_contains("pca: k = 5 out of range 1..4", E.pca, x, 5)
end

function TestProjection:test_mds_recovers_distances()
  -- similarity = inner products of 2-D points: MDS gives them back up to rotation
  local pts = lps.tensor{{0, 0}, {3, 0}, {0, 4}, {1, 1}, {-2, 1}}
  local sim = pts:matmul(pts:t())
  local y = E.mds(sim, 2)
  for i = 1, 5 do for j = 1, 5 do
    local d0 = math.sqrt((pts:get(i, 1) - pts:get(j, 1)) ^ 2 + (pts:get(i, 2) - pts:get(j, 2)) ^ 2)
    local d1 = math.sqrt((y:get(i, 1) - y:get(j, 1)) ^ 2 + (y:get(i, 2) - y:get(j, 2)) ^ 2)
    lu.assertAlmostEquals(d1, d0, 1e-4)
  end end
  T.assert_error_contains("mds: needs a square", E.mds, lps.zeros(2, 3))
  T.assert_error_contains("mds: similarity (1,2) is not finite", E.mds, lps.tensor{{1, 0 / 0}, {0, 1}})
end

TestTopK = {}

function TestTopK:test_matches_full_sort()
  local g = lps.generator(9)
  local n, e = 300, 8
  local emb = lps.randn(n, e, g)
  -- rows 50 and 60 tie exactly: the lower index must come first
  for j = 1, e do emb:set(60, j, emb:get(50, j)) end
  local q = emb[50]:clone()
  local scores, order = emb:matmul(q:reshape(e, 1)), {}
  for i = 1, n do order[i] = i end
  table.sort(order, function(a, b)
    local sa, sb = scores:get(a, 1), scores:get(b, 1)
    if sa ~= sb then return sa > sb end
    return a < b
  end)
  for _, k in ipairs({1, 2, 7, n}) do
    local idx, sc = E.topk(emb, q, k)
    lu.assertEquals(#idx, k)
    for i = 1, k do
      lu.assertEquals(idx[i], order[i])
      lu.assertAlmostEquals(sc[i], scores:get(order[i], 1), 1e-4)
    end
  end
  -- the exact tie sits side by side, lower index first
  local idx = E.topk(emb, q, n)
  for i = 1, n do if idx[i] == 50 then lu.assertEquals(idx[i + 1], 60) end end
end

function TestTopK:test_across_blocks()
  -- rows are scored in blocks of 2048: winners in every block, and k spanning them
  local g = lps.generator(10)
  local n = 5000
  local emb = lps.randn(n, 4, g)
  local q = lps.tensor{0.5, -1, 0.25, 2}
  local s = emb:matmul(q:reshape(4, 1))
  local order = {}
  for i = 1, n do order[i] = i end
  table.sort(order, function(a, b)
    local sa, sb = s:get(a, 1), s:get(b, 1)
    if sa ~= sb then return sa > sb end
    return a < b
  end)
  local idx = E.topk(emb, q, 40)
  for i = 1, 40 do lu.assertEquals(idx[i], order[i]) end
end

function TestTopK:test_bad_input()
  local emb = lps.ones(5, 3)
  T.assert_error_contains("topk: k = 6 out of range 1..5", E.topk, emb, lps.ones(3), 6)
  T.assert_error_contains("topk: k = 0", E.topk, emb, lps.ones(3), 0)
  T.assert_error_contains("topk: embeddings (5x3) should be N x 4", E.topk, emb, lps.ones(4), 1)
  T.assert_error_contains("topk: query entry 2 is not finite", E.topk, emb, lps.tensor{1, 0 / 0, 1}, 1)
  local bad = emb:clone()
  bad:set(4, 2, 0 / 0)
  T.assert_error_contains("topk: embedding row 4 gives a non-finite score", E.topk, bad, lps.ones(3), 1)
end

TestPairedBootstrap = {}

function TestPairedBootstrap:test_by_hand()
  -- two tasks of two queries: a beats b by 1 on task 1, ties on task 2;
  -- resampling whole tasks gives means 1, 0.5 or 0 (each task drawn twice: 1/4)
  local r = E.paired_bootstrap({1, 1, 0, 0}, {0, 0, 0, 0}, {1, 1, 2, 2}, {reps = 400})
  lu.assertEquals(r.delta, 0.5)
  lu.assertEquals({r.better, r.worse, r.ties, r.n}, {2, 0, 2, 4})
  lu.assertEquals({r.lo, r.hi}, {0, 1})
  -- a query pair with a NaN is left out; equal scores: a zero-width interval
  local same = E.paired_bootstrap({0.2, 0 / 0, 0.7}, {0.2, 0.5, 0.7}, {1, 2, 3})
  lu.assertEquals({same.delta, same.lo, same.hi, same.n, same.ties}, {0, 0, 0, 2, 2})
  -- the same seed, the same interval
  local a, b, g = {}, {}, {}
  local gen = lps.generator(3)
  for i = 1, 60 do a[i], b[i], g[i] = gen:uniform(), gen:uniform(), (i - 1) // 5 + 1 end
  local r1, r2 = E.paired_bootstrap(a, b, g), E.paired_bootstrap(a, b, g)
  lu.assertEquals({r1.lo, r1.hi}, {r2.lo, r2.hi})
  lu.assertTrue(r1.lo <= r1.delta and r1.delta <= r1.hi)
end

function TestPairedBootstrap:test_bad_input()
  T.assert_error_contains("paired_bootstrap: 2, 1 and 2 entries", E.paired_bootstrap, {1, 2}, {1}, {1, 1})
  T.assert_error_contains("no query has both scores", E.paired_bootstrap, {0 / 0}, {1}, {1})
  T.assert_error_contains("level must be in (0, 1)", E.paired_bootstrap, {1}, {1}, {1}, {level = 1})
  T.assert_error_contains("reps must be a positive integer", E.paired_bootstrap, {1}, {1}, {1}, {reps = 0.5})
  T.assert_error_contains("b must be a list, got nil", E.paired_bootstrap, {1}, nil, {1})
  T.assert_error_contains("query 2's scores must be numbers, got number and string", E.paired_bootstrap,
    {1, 2}, {1, "x"}, {1, 1})
  T.assert_error_contains("query 1 has no group (NaN)", E.paired_bootstrap, {1}, {1}, {0 / 0})
  T.assert_error_contains("level must be in (0, 1), got high", E.paired_bootstrap, {1}, {1}, {1}, {level = "high"})
  T.assert_error_contains("seed must be an integer, got 1.5", E.paired_bootstrap, {1}, {1}, {1}, {seed = 1.5})
end

-- A sim or a regression's data of the wrong type: errors naming the
-- operation (the Lua API fuzzer found "attempt to call a nil value (method
-- 'size')" from inside eval.lua)
TestBadArguments = {}

function TestBadArguments:test_retrieval_and_ridge_predict_name_themselves()
  T.assert_error_contains("retrieval: sim must be a queries x gallery tensor, got table", E.retrieval, {{1}}, {1}, {1})
  T.assert_error_contains("retrieval: sim must be a queries x gallery tensor, got 3", E.retrieval, lps.zeros(3), {1}, {1})
  local X = lps.randn(4, 2, lps.generator(1))
  T.assert_error_contains("ridge_predict: expected X (an n x e tensor), y (a list of n numbers) and Xt", E.ridge_predict,
    X, lps.generator(1), X)
  T.assert_error_contains("got a tensor, table and nil", E.ridge_predict, X, {1, 2, 3, 4})
  T.assert_error_contains("got number, table and a tensor", E.ridge_predict, 3, {1, 2, 3, 4}, X)
end

-- cka_layer_features with holes in its lists or bad depths (a list {nil, X}
-- raised "attempt to perform arithmetic on a nil value (local 'np')", a
-- string as depths "bad argument #1 to 'for iterator'"; the Lua API fuzzer)
function TestBadArguments:test_cka_layer_features_checks_every_entry()
  local X = lps.randn(4, 3, lps.generator(1))
  local holed = {}
  holed[2] = X
  T.assert_error_contains("cka_layer_features: model 1 must be a non-empty list", E.cka_layer_features, {{}})
  if #holed == 2 then -- (the border Lua gives such a table)
    T.assert_error_contains("cka_layer_features: model 1 layer 1 must be a 2-D N x p tensor", E.cka_layer_features, {holed})
  end
  T.assert_error_contains("cka_layer_features: model 1 layer 2 must be a 2-D N x p tensor", E.cka_layer_features,
    {{X, 5}})
  T.assert_error_contains("cka_layer_features: opts.depths must be a non-empty list of positive integers",
    E.cka_layer_features, {{X}}, {depths = "2"})
  T.assert_error_contains("opts.depths must be", E.cka_layer_features, {{X}}, {depths = {1.5}})
  lu.assertEquals(E.cka_layer_features({{X}}, {depths = {1, 2}}):shape(), {1, 2 * 16}) -- slots (0, 1/2], (1/2, 1]
end

-- classify's qlabels must be a list (a coroutine raised "attempt to get
-- length of a thread value"; the Lua API fuzzer)
function TestBadArguments:test_classify_checks_qlabels()
  local sim = lps.tensor{{0.9, 0.1}, {0.2, 0.8}}
  T.assert_error_contains("classify: qlabels must be a list of labels, got number", E.classify, sim, {1, 2}, 5)
  lu.assertEquals(E.classify(sim, {1, 2}, {1, 2}), 1)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
