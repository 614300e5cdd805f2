-- The model-selection protocol (lps.selection) on a hand-made set whose
-- answers are known: two unseen targets, a pool of four models on two other
-- tasks with measured fine-tuned accuracies, and probes given directly.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local sel = lps.selection

-- Tasks 1, 2 are the unseen targets; the pool holds models of tasks 3 and 4.
local acc = { -- finetune[id][t]
  p1 = {0.70, 0.60, 0, 0}, p2 = {0.90, 0.50, 0, 0}, p3 = {0.80, 0.95, 0, 0}, p4 = {0.60, 0.85, 0, 0},
}
local S = {n = 4, meta = {}, byid = {}, models = {}}
for i, id in ipairs{"p1", "p2", "p3", "p4"} do
  S.meta[i] = {id = id, task = i <= 2 and 3 or 4, in_pool = true, family = i % 2 == 1 and "mlp" or "cnn"}
  S.byid[id], S.models[i] = i, {name = id}
end
S.splits = {retrieval = {unseen_tasks = {1, 2}}}
S.transfer = {finetune = acc, protocol = {kind = "pool"}}
S.probes = {[1] = {mlp = {target = 1}, cnn = {target = 1}}, [2] = {mlp = {target = 2}, cnn = {target = 2}}}

-- A similarity method that scores candidates from a table per target.
local function method(pref)
  return {fitted = {similarity = function(_, q, cands)
    local out = lps.zeros(1, #cands)
    for j, c in ipairs(cands) do out:set(1, j, pref[q[1].target][c.name]) end
    return out
  end}}
end

TestSelection = {}

function TestSelection:test_oracle_has_no_regret()
  -- prefers the best model of each target: p2 (0.90) for target 1, p3 (0.95) for target 2
  local r = sel.evaluate(S, method{{p1 = 0, p2 = 1, p3 = 0.5, p4 = 0}, {p1 = 0, p2 = 0, p3 = 1, p4 = 0.5}})
  lu.assertAlmostEquals(r.selection_regret, 0, 1e-12)
  lu.assertAlmostEquals(r.selection_accuracy, (0.90 + 0.95) / 2, 1e-12)
  lu.assertAlmostEquals(r.oracle_accuracy, (0.90 + 0.95) / 2, 1e-12)
  -- random: best minus the mean of the four, per target
  lu.assertAlmostEquals(r.random_regret, ((0.90 - 0.75) + (0.95 - 0.725)) / 2, 1e-12)
end

function TestSelection:test_worst_pick_and_per_family()
  -- target 1 picks p4 (0.60: regret 0.30), target 2 picks p2 (0.50: regret 0.45)
  local r = sel.evaluate(S, method{{p1 = 0, p2 = 0, p3 = 0, p4 = 1}, {p1 = 0, p2 = 1, p3 = 0, p4 = 0}})
  lu.assertAlmostEquals(r.selection_regret, (0.30 + 0.45) / 2, 1e-12)
  lu.assertAlmostEquals(r.selection_regret_mlp, r.selection_regret, 1e-12)
  lu.assertAlmostEquals(r.selection_accuracy, (0.60 + 0.50) / 2, 1e-12)
end

function TestSelection:test_a_method_that_compares_nothing_picks_at_random()
  -- no comparable candidate (NaN): the expected regret of a random pick
  local r = sel.evaluate(S, method{{p1 = 0 / 0, p2 = 0 / 0, p3 = 0 / 0, p4 = 0 / 0},
                                   {p1 = 0 / 0, p2 = 0 / 0, p3 = 0 / 0, p4 = 0 / 0}})
  lu.assertAlmostEquals(r.selection_regret, r.random_regret, 1e-12)
end

function TestSelection:test_candidates_exclude_the_targets_own_task()
  -- a pool model of the target's own task is never a candidate
  S.meta[1].task = 1
  local r = sel.evaluate(S, method{{p1 = 9, p2 = 1, p3 = 0, p4 = 0}, {p1 = 9, p2 = 0, p3 = 1, p4 = 0}})
  S.meta[1].task = 3
  -- target 1 skips p1 and picks p2 (0.90); for target 2, p1 is a candidate and wins (0.60)
  lu.assertAlmostEquals(r.selection_accuracy, (0.90 + 0.60) / 2, 1e-12)
end

function TestSelection:test_task_oracle_regret()
  -- target 1: source 3 gains most (p1 0.70, p2 0.90: mean 0.80, best 0.90 -> 0.10);
  -- target 2: source 4 (p3 0.95, p4 0.85: mean 0.90, best 0.95 -> 0.05)
  S.transfer.gain = {{}, {}, {0.1, -0.1}, {0.0, 0.2}}
  local r = sel.evaluate(S, method{{p1 = 1, p2 = 0, p3 = 0, p4 = 0}, {p1 = 1, p2 = 0, p3 = 0, p4 = 0}})
  S.transfer.gain = nil
  lu.assertAlmostEquals(r.task_oracle_regret, (0.10 + 0.05) / 2, 1e-12)
  lu.assertNil(sel.evaluate(S, method{{p1 = 1, p2 = 0, p3 = 0, p4 = 0}, {p1 = 1, p2 = 0, p3 = 0, p4 = 0}})
    .task_oracle_regret) -- no gains, no oracle
end


-- The ranking metrics by hand. Scores 3, 1, -inf, 2, NaN (dense ranks 3, 1,
-- 0, 2, 0) against accuracies .8, .9, .5, .6, .7: of the 10 pairs, 6 agree,
-- 3 disagree and 1 is tied in the scores only: tau-b = 3 / sqrt(10 * 9).
function TestSelection:test_rank_by_hand()
  local r = sel.rank({3, 1, -math.huge, 2, 0 / 0}, {0.8, 0.9, 0.5, 0.6, 0.7})
  lu.assertEquals(r.pick, 1)
  lu.assertAlmostEquals(r.regret, 0.1, 1e-12)
  lu.assertAlmostEquals(r.random_regret, 0.9 - 0.7, 1e-12)
  lu.assertAlmostEquals(r.tau, 3 / math.sqrt(90), 1e-12)
  -- the order of the scores is all that counts
  lu.assertAlmostEquals(sel.rank({300, 1, -5, 2, -9}, {0.8, 0.9, 0.5, 0.6, 0.7}).tau, (6 - 4) / 10, 1e-12)
  -- nothing to choose by: a random pick's expectation, tau 0
  r = sel.rank({0 / 0, -math.huge, 0 / 0}, {0.3, 0.6, 0.9})
  lu.assertNil(r.pick)
  lu.assertAlmostEquals(r.accuracy, 0.6, 1e-12)
  lu.assertEquals(r.tau, 0)
  lu.assertEquals(sel.rank({1, 1, 1}, {0.3, 0.6, 0.9}).tau, 0)
  T.assert_error_contains("selection.rank: 2 scores for 3 accuracies", sel.rank, {1, 2}, {0.1, 0.2, 0.3})
end

-- The funnel keeps exactly the first ranking's top k, re-ranks them by the
-- second and leaves the rest in the first's order.
function TestSelection:test_funnel_reranks_exactly_the_top_k()
  -- the second ranking's favourites (4, 5, 6) are outside the top 3: never above
  local fs, top = sel.funnel({5, 4, 3, 2, 1, 0}, {0, 1, 2, 9, 9, 9}, 3)
  lu.assertEquals(top, {1, 2, 3})
  lu.assertTrue(fs[3] > fs[2] and fs[2] > fs[1] and fs[1] > fs[4] and fs[4] > fs[5] and fs[5] > fs[6])
  lu.assertEquals(sel.rank(fs, {0.1, 0.2, 0.3, 0.9, 0.9, 0.9}).pick, 3)
  -- ties at the cut: the earlier candidate; ties below it stay ties
  fs, top = sel.funnel({1, 2, 2, 0, 0}, {5, 0, 9, 9, 9}, 1)
  lu.assertEquals(top, {2})
  lu.assertTrue(fs[2] > fs[3] and fs[3] > fs[1] and fs[1] > fs[4])
  lu.assertEquals(fs[4], fs[5])
  -- -inf in the first ranking goes last, NaN in the second within the top k too
  fs, top = sel.funnel({-math.huge, 1, 2}, {9, 0 / 0, 1}, 2)
  lu.assertEquals(top, {3, 2})
  lu.assertTrue(fs[3] > fs[2] and fs[2] > fs[1])
  -- k beyond the candidates: the second ranking alone
  fs = sel.funnel({3, 2, 1}, {1, 3, 2}, 10)
  lu.assertTrue(fs[2] > fs[3] and fs[3] > fs[1])
  -- tau of the funnel's full ranking, by hand: c2, c1 (top 2 by the second), then c3, c4;
  -- accuracies .9, .6, .7, .5 in that order: 5 pairs agree, 1 disagrees
  fs = sel.funnel({4, 3, 2, 1}, {1, 2, 0, 0}, 2)
  local r = sel.rank(fs, {0.6, 0.9, 0.7, 0.5})
  lu.assertAlmostEquals(r.tau, 4 / 6, 1e-12)
  lu.assertEquals(r.regret, 0)
  for _, k in ipairs{0, 1.5, "3"} do
    T.assert_error_contains("selection.funnel: k must be a positive integer", sel.funnel, {1, 2}, {1, 2}, k)
  end
  T.assert_error_contains("selection.funnel: 2 and 1 scores", sel.funnel, {1, 2}, {1}, 1)
end

-- Funnels in evaluate, with LogME scores and costs given: target 1's
-- method order p4, p3, p1, p2 (alone: p4, regret .30), its top 2 re-ranked
-- by LogME pick p3 (.80: regret .10) although LogME's best (p2) is outside;
-- target 2: p2, p1, p4, p3, LogME picks p1 of p2, p1 (.60: regret .35).
function TestSelection:test_funnel_metrics_and_cost()
  local cost = {p1 = 1, p2 = 2, p3 = 3, p4 = 4}
  S.estimates = {funnel_by = {"logme"}, funnel_k = 2, scores = {
    [1] = {logme = {p1 = 0.5, p2 = 0.9, p3 = 0.4, p4 = 0.1}}, [2] = {logme = {p1 = 0.3, p2 = 0.2, p3 = 0.1, p4 = 0}}},
    cost = {[1] = {logme = cost}, [2] = {logme = cost}}}
  local r = sel.evaluate(S, method{{p1 = 2, p2 = 1, p3 = 3, p4 = 4}, {p1 = 3, p2 = 4, p3 = 1, p4 = 2}})
  S.estimates = nil
  lu.assertAlmostEquals(r.selection_regret, (0.30 + 0.45) / 2, 1e-12)
  lu.assertAlmostEquals(r.funnel_logme_selection_regret, (0.10 + 0.35) / 2, 1e-12)
  lu.assertAlmostEquals(r.funnel_logme_selection_accuracy, (0.80 + 0.60) / 2, 1e-12)
  -- the method's taus: 1 of 6 pairs agree on target 1, none on target 2
  lu.assertAlmostEquals(r.selection_tau, (-4 / 6 - 1) / 2, 1e-12)
  -- the funnels' rankings p3 p4 p1 p2 (2 of 6 agree) and p1 p2 p4 p3 (1 of 6)
  lu.assertAlmostEquals(r.funnel_logme_selection_tau, (-2 / 6 - 4 / 6) / 2, 1e-12)
  -- cost: the method's, plus LogME's of the top 2 over the 4 candidates: (4 + 3) / 4 and (2 + 1) / 4
  lu.assertTrue(r.selection_ms_per_candidate > 0)
  lu.assertAlmostEquals(r.funnel_logme_selection_ms_per_candidate - r.selection_ms_per_candidate, (7 / 4 + 3 / 4) / 2, 1e-9)
  lu.assertTrue(r.selection_index_ms_per_candidate >= 0)
  lu.assertNil(r.selection_probe_ms_per_candidate) -- the probes were given, not trained here
end

-- The estimators on hand-made candidates: small MLPs of known outputs on
-- a given budget; each candidate's scores are the estimators' on its
-- features of exactly those images, and the rows follow from them.
function TestSelection:test_estimate_scores_the_budget_through_each_candidate()
  local g = lps.generator(5)
  local E = lps.estimators
  local C = {n = 4, meta = {}, byid = {}, models = {}, splits = S.splits, transfer = {finetune = acc}}
  for i, id in ipairs{"p1", "p2", "p3", "p4"} do
    C.meta[i] = {id = id, task = i <= 2 and 3 or 4, in_pool = true}
    C.byid[id], C.models[i] = i, lps.similarity.weights(lps.nn.mlp{6, 8, 5, i + 1, generator = g})
  end
  local y = {}
  for k = 1, 12 do y[k] = (k - 1) % 3 + 1 end
  C.budgets = {[1] = {x = lps.randn(12, 6, g), y = lps.tensor(y)}, [2] = {x = lps.randn(12, 6, g), y = lps.tensor(y)}}
  local rows, order = sel.estimate(C, {estimators = {"logme", "leep", "knn"}, funnel_by = {"logme"}, funnel_k = 1})
  lu.assertEquals(order, {"logme", "leep", "knn", "random"}) -- no gains: no task oracle
  local want = {logme = 0, leep = 0, knn = 0}
  for _, t in ipairs{1, 2} do
    local b = C.budgets[t]
    local direct, best = {}, 0
    for i, id in ipairs{"p1", "p2", "p3", "p4"} do
      local F, theta = E.outputs(C.models[i].module, b.x)
      direct[id] = {logme = E.logme(F, b.y), leep = E.leep(theta, b.y), knn = E.knn(F, b.y)}
      best = math.max(best, acc[id][t])
      for name, v in pairs(direct[id]) do lu.assertEquals(C.estimates.scores[t][name][id], v, name .. " " .. id) end
      lu.assertTrue(C.estimates.cost[t].logme[id] >= C.estimates.forward[t][id])
    end
    for name in pairs(want) do
      local pick
      for _, id in ipairs{"p1", "p2", "p3", "p4"} do
        if not pick or direct[id][name] > direct[pick][name] then pick = id end
      end
      want[name] = want[name] + (best - acc[pick][t]) / 2
    end
  end
  for name, v in pairs(want) do
    lu.assertAlmostEquals(rows[name].selection_regret, v, 1e-12, name)
    lu.assertTrue(rows[name].selection_ms_per_candidate >= rows[name].selection_forward_ms_per_candidate)
  end
  lu.assertAlmostEquals(rows.random.selection_regret, ((0.90 - 0.75) + (0.95 - 0.725)) / 2, 1e-12)
  lu.assertEquals(rows.random.selection_tau, 0)
  -- a candidate of the target's own task is not scored for it
  C.meta[1].task, C.estimates = 1, nil
  sel.estimate(C, {estimators = {"logme"}, funnel_by = {"logme"}})
  lu.assertNil(C.estimates.scores[1].logme.p1)
  lu.assertNotNil(C.estimates.scores[2].logme.p1)
end

function TestSelection:test_bad_options()
  local C = {n = 0, meta = {}, splits = S.splits, transfer = S.transfer, budgets = {}}
  for _, c in ipairs{
    {{bogus = 1}, "selection.estimate: unknown option 'bogus'"},
    {{estimators = {"logme", "nope"}}, "unknown estimator 'nope'"},
    {{estimators = {}}, "estimators must be a non-empty list"},
    {{estimators = {"leep"}}, "funnel_by 'logme' is not one of the estimators"},
    {{funnel_by = "logme"}, "funnel_by must be a list"},
    {{funnel_k = 0}, "funnel_k must be a positive integer, got 0"},
    {{funnel_k = 2.5}, "funnel_k must be a positive integer, got 2.5"},
  } do
    T.assert_error_contains(c[2], sel.estimate, C, c[1])
  end
  T.assert_error_contains("selection.add_rows: method 'lps' has no funnel results", sel.add_rows,
    {estimates = {funnel_by = {"logme"}}}, {lps = {selection_regret = 0.1}}, {"lps"}, {}, {}, {"lps"})
end

-- The selection table's rows: estimators and funnels (with their sd) after
-- the weight methods that have selection metrics, random and the oracle last.
function TestSelection:test_add_rows()
  local results = {lps = {selection_regret = 0.04, funnel_logme_selection_regret = 0.03,
    funnel_logme_selection_regret_std = 0.01, funnel_logme_exact_selection_tau = 0.5}, matching = {top1 = 0.1}}
  local est = {logme = {selection_regret = 0.07}, random = {selection_regret = 0.11}, task_oracle = {selection_regret = 0.03}}
  local order = sel.add_rows({estimates = {funnel_by = {"logme"}}}, results, {"lps", "matching"}, est,
    {"logme", "random", "task_oracle"}, {"lps"})
  lu.assertEquals(order, {"lps", "logme", "lps+logme", "random", "task_oracle"})
  lu.assertEquals(results["lps+logme"], {selection_regret = 0.03, selection_regret_std = 0.01})
  -- with prior results: the row lps+prior before the funnels
  results = {lps = {selection_regret = 0.04, prior_selection_regret = 0.02, prior_selection_regret_std = 0.005,
    funnel_logme_selection_regret = 0.03}}
  order = sel.add_rows({estimates = {funnel_by = {"logme"}}}, results, {"lps"}, est,
    {"logme", "random", "prior", "task_oracle"}, {"lps"})
  lu.assertEquals(order, {"lps", "logme", "prior", "lps+prior", "lps+logme", "random", "task_oracle"})
  lu.assertEquals(results["lps+prior"], {selection_regret = 0.02, selection_regret_std = 0.005})
  lu.assertEquals(results.logme.selection_regret, 0.07)
end

function TestSelection:test_ridge_predict_by_hand()
  -- y = 2x exactly: with a vanishing ridge the fit is y = 2x, so x = 4 predicts 8
  local X, Xt = lps.tensor{{1}, {2}, {3}}, lps.tensor{{4}, {0}}
  local p = lps.eval.ridge_predict(X, {2, 4, 6}, Xt, 1e-12)
  lu.assertAlmostEquals(p[1], 8, 1e-4)
  lu.assertAlmostEquals(p[2], 0, 1e-4)
  -- rho = 1: lambda = trace(Xc'Xc) / e = 2, slope = 4 / (2 + 2) = 1 around the means (2, 4)
  p = lps.eval.ridge_predict(X, {2, 4, 6}, Xt, 1)
  lu.assertAlmostEquals(p[1], 4 + (4 - 2) * 1, 1e-5)
  -- more features than samples: the dual solution, still exact on the samples
  -- (centred: Gram eigenvalue 3, lambda 1e-3, fitted values shrunk by 3 / 3.001 around the mean 1.5)
  local W = lps.tensor{{1, 0, 3}, {0, 1, 1}}
  p = lps.eval.ridge_predict(W, {1, 2}, W, 1e-3)
  lu.assertAlmostEquals(p[1], 1.5 - 0.5 * 3 / 3.001, 1e-5)
  lu.assertAlmostEquals(p[2], 1.5 + 0.5 * 3 / 3.001, 1e-5)
  lu.assertErrorMsgContains("ridge_predict: X is 2x3, y has 3 values", lps.eval.ridge_predict, W, {1, 2, 3}, W)
end

-- ridge_fit and ridge_apply name bad arguments: a NaN target or rho gave
-- NaN predictions, a w of the wrong shape m x 3 values for m rows.
function TestSelection:test_ridge_bad_input()
  local E, X = lps.eval, lps.tensor{{1, 0}, {2, 1}, {3, 5}}
  lu.assertErrorMsgContains("ridge_fit: y[2] is ", E.ridge_fit, X, {1, 0 / 0, 3})
  lu.assertErrorMsgContains("ridge_fit: y[3] is inf", E.ridge_fit, X, {1, 2, math.huge})
  lu.assertErrorMsgContains("ridge_fit: y[1] is a", E.ridge_fit, X, {"a", 2, 3})
  lu.assertErrorMsgContains("ridge_fit: y must be a list of 3 numbers, got nil", E.ridge_fit, X, nil)
  lu.assertErrorMsgContains("ridge_fit: rho must be a number >= 0, got -1", E.ridge_fit, X, {1, 2, 3}, -1)
  lu.assertErrorMsgContains("ridge_fit: rho must be a number >= 0", E.ridge_fit, X, {1, 2, 3}, 0 / 0)
  lu.assertErrorMsgContains("ridge_fit: X must be a non-empty n x e tensor, got nil", E.ridge_fit, nil, {1})
  lu.assertErrorMsgContains("ridge_fit: X must be a non-empty n x e tensor, got 3", E.ridge_fit, lps.ones(3), {1, 2, 3})
  lu.assertErrorMsgContains("ridge_fit: X must be a non-empty n x e tensor, got 0x2", E.ridge_fit, lps.zeros(0, 2), {})
  local bad = X:clone()
  bad:set(2, 2, 0 / 0)
  lu.assertErrorMsgContains("ridge_fit: X has a non-finite value", E.ridge_fit, bad, {1, 2, 3})
  local huge = X:clone()
  huge:set(1, 1, 3e20) -- finite, but its square overflows float32
  lu.assertErrorMsgContains("ridge_fit: X's values are too large for float32", E.ridge_fit, huge, {1, 2, 3})
  local fit = E.ridge_fit(X, {1, 2, 3}, 0) -- rho 0: the 1e-9 alone
  lu.assertEquals(#E.ridge_apply(fit, X), 3)
  lu.assertErrorMsgContains("ridge_apply: Xt must be an m x e tensor, got nil", E.ridge_apply, fit, nil)
  lu.assertErrorMsgContains("ridge_apply: not a ridge fit", E.ridge_apply, {}, X)
  lu.assertErrorMsgContains("ridge_apply: not a ridge fit", E.ridge_apply, {center = fit.center, w = lps.ones(2, 3), ymean = 0}, X)
  lu.assertErrorMsgContains("ridge_apply: not a ridge fit", E.ridge_apply, {center = fit.center, w = fit.w, ymean = 0 / 0}, X)
end

function TestSelection:test_zsum_by_hand()
  -- scores 1, 2, 3 (z: -1.2247, 0, 1.2247) plus prior 3, 2, 1 (the opposite): 0 each;
  -- a non-finite score stays last; a constant list adds nothing
  local z = sel.zsum({1, 2, 3}, {3, 2, 1})
  for k = 1, 3 do lu.assertAlmostEquals(z[k], 0, 1e-12) end
  z = sel.zsum({0 / 0, 1, 3}, {5, 5, 5})
  lu.assertEquals(z[1], -math.huge)
  lu.assertAlmostEquals(z[2], -1, 1e-12)
  lu.assertAlmostEquals(z[3], 1, 1e-12)
  -- +inf stays first whatever the prior (z over the finite 1, 3); a NaN prior counts 0
  z = sel.zsum({math.huge, 1, 3}, {-9, 0 / 0, 1})
  lu.assertEquals(z[1], math.huge)
  lu.assertAlmostEquals(z[2], -1 + 0, 1e-12)
  lu.assertAlmostEquals(z[3], 1 + 1, 1e-12) -- prior z over -9, 1: (1 - (-4)) / 5 = 1
end

-- A set for the prior: unseen targets 1, 2; training tasks 3, 4, 5 with
-- two pool models each, MLPs whose weights are scaled by s (the stats
-- features see it), and fine-tuned accuracies that grow with s on every
-- target: the prior must learn it from the training targets alone.
local function prior_set()
  local P = {n = 8, meta = {}, byid = {}, models = {}, transfer = {finetune = {}}}
  P.splits = {retrieval = {unseen_tasks = {1, 2}, train_tasks = {3, 4, 5}}}
  local g = lps.generator(7)
  local scale = {0.5, 1.5, 1.0, 2.0, 0.7, 1.2, 0.6, 1.8}
  for i = 1, 8 do
    local id = "m" .. i
    local task = i <= 6 and 3 + (i - 1) // 2 or (i == 7 and 1 or 2)
    local w = lps.similarity.weights(lps.nn.mlp{6, 8, 3, generator = g})
    for _, t in ipairs(w) do t:mul_(scale[i]) end
    P.meta[i] = {id = id, task = task, in_pool = true, family = "mlp"}
    P.byid[id], P.models[i] = i, w
    P.transfer.finetune[id] = {}
    for t = 1, 5 do P.transfer.finetune[id][t] = 0.5 + 0.2 * scale[i] + 0.01 * t end
  end
  return P
end

function TestSelection:test_prior_learns_from_training_targets_only()
  local P = prior_set()
  local prior = sel.prior(P)
  -- the models' order by scale, on the training tasks' models and the unseen ones
  local ids, s = {}, {}
  for i = 1, 8 do ids[i], s[i] = "m" .. i, P.models[i] end
  local x, y = {}, {}
  for i, id in ipairs(ids) do x[i], y[i] = prior[id], P.transfer.finetune[id][3] end
  lu.assertTrue(lps.eval.kendall_tau(x, y) > 0.7, "prior follows the transfer")
  -- nothing of the unseen targets enters: change them, the same prior
  local Q = prior_set()
  for _, row in pairs(Q.transfer.finetune) do row[1], row[2] = math.random(), math.random() end
  local q = sel.prior(Q)
  for _, id in ipairs(ids) do lu.assertEquals(q[id], prior[id]) end
  -- cached in the set
  lu.assertIs(sel.prior(P), prior)
  -- cross-fitted: a training task's model gets the fit on the other training tasks' models
  -- (measured prior: its mean centred accuracy over the training targets but its own task)
  local ft, tt = P.transfer.finetune, {3, 4, 5}
  local colmean = {}
  for _, t in ipairs(tt) do
    local sum, n = 0, 0
    for i = 1, 6 do if P.meta[i].task ~= t then sum, n = sum + ft["m" .. i][t], n + 1 end end
    colmean[t] = sum / n
  end
  local X, y = {}, {}
  for i = 3, 6 do -- the models of tasks 4 and 5
    local sum, n = 0, 0
    for _, t in ipairs(tt) do if t ~= P.meta[i].task then sum, n = sum + ft["m" .. i][t] - colmean[t], n + 1 end end
    X[#X + 1], y[#y + 1] = P.models[i], sum / n
  end
  local F = lps.eval.feature_matrix("stats", {P.models[1], P.models[2], P.models[3], P.models[4], P.models[5], P.models[6]})
  local _, mean, sd = lps.eval.standardize(F)
  local Fo = lps.eval.feature_matrix("stats", X)
  lps.eval.standardize(Fo, mean, sd)
  local Fq = lps.eval.feature_matrix("stats", {P.models[1]})
  lps.eval.standardize(Fq, mean, sd)
  lu.assertAlmostEquals(prior.m1, lps.eval.ridge_predict(Fo, y, Fq, sel.prior_rho)[1], 1e-6)
  -- one training task with pool models is not enough
  local Q1 = prior_set()
  Q1.splits.retrieval.train_tasks = {3}
  lu.assertFalse(sel.has_prior(Q1))
  lu.assertErrorMsgContains("pool models of 1 training task(s) (need 2)", sel.prior, Q1)
end

-- The prior reads each pool model's stats features once: the training
-- tasks' models by the fit (their values its out-of-task predictions), the
-- others by the prediction; the values are those of predicting every pool
-- model and then putting the out-of-task ones over the training models'.
function TestSelection:test_the_prior_reads_each_models_features_once()
  local P = prior_set()
  local eval, reads = require "lualps.eval", {}
  local features, matrix = eval.features, eval.feature_matrix
  eval.features = function(method, m, ...)
    reads[m] = (reads[m] or 0) + 1
    return features(method, m, ...)
  end
  eval.feature_matrix = function(method, models, ...)
    for _, m in ipairs(models) do reads[m] = (reads[m] or 0) + 1 end
    return matrix(method, models, ...)
  end
  local ok, prior = pcall(sel.prior, P)
  eval.features, eval.feature_matrix = features, matrix
  lu.assertTrue(ok, prior)
  for i = 1, P.n do lu.assertEquals(reads[P.models[i]], 1, P.meta[i].id) end
  local SP = lps.similarity.prior
  local ids, tasks, models = {}, {}, {}
  for i = 1, 6 do ids[i], tasks[i], models[i] = P.meta[i].id, P.meta[i].task, P.models[i] end
  local state, oof = SP.fit(models, SP.targets(ids, tasks, P.transfer.finetune, {3, 4, 5}), tasks, {rho = sel.prior_rho})
  local want = {}
  for i, v in ipairs(SP.predict(state, P.models)) do want[P.meta[i].id] = v end
  for k, id in ipairs(ids) do want[id] = oof[k] end
  lu.assertEquals(prior, want)
end

function TestSelection:test_evaluate_with_the_prior()
  -- a similarity that ranks every candidate the same (0): the prior alone decides,
  -- so method+prior picks the candidate the prior ranks first
  local P = prior_set()
  P.probes = {[1] = {mlp = {target = 1}, cnn = {target = 1}}, [2] = {mlp = {target = 2}, cnn = {target = 2}}}
  local flat = {fitted = {similarity = function(_, _, cands) return lps.zeros(1, #cands) end}}
  local r = sel.evaluate(P, flat)
  local prior = sel.prior(P)
  local want = 0
  for _, t in ipairs{1, 2} do
    local ids, acc = sel.candidates(P, t)
    local best, pick, top = -math.huge, nil, -math.huge
    for k, id in ipairs(ids) do
      best = math.max(best, acc[k])
      if prior[id] > top then pick, top = k, prior[id] end
    end
    want = want + (best - acc[pick]) / 2
  end
  lu.assertAlmostEquals(r.prior_selection_regret, want, 1e-12)
  lu.assertAlmostEquals(want, 0.02, 1e-12) -- m8 (0.87 of m4's 0.91) on target 1, m4 on target 2
  -- the flat similarity alone takes the first candidate, m1: 0.30 below the best on both
  lu.assertAlmostEquals(r.selection_regret, 0.30, 1e-12)
end

function TestSelection:test_a_method_with_its_own_prior_adds_it_out_of_task()
  -- a flat similarity: the prior alone decides. The method's own prior
  -- ranks m4 first by its out-of-task values and m1 first by its fit's
  -- predictions; the benchmark's prior picks m8 on target 1 and m4 on
  -- target 2. Only its out-of-task values for the models it saw give
  -- regret 0 (its fit's: 0.30; the benchmark's: 0.02)
  local P = prior_set()
  P.probes = {[1] = {mlp = {target = 1}, cnn = {target = 1}}, [2] = {mlp = {target = 2}, cnn = {target = 2}}}
  local oof = {m1 = 0, m2 = 0, m3 = 0, m4 = 10, m5 = 0, m6 = 0}
  local asked = 0
  local f = {similarity = function(_, _, cands) return lps.zeros(1, #cands) end, out_of_task = oof,
    transferability = function(_, ms)
      asked = asked + 1
      local out = {}
      for k, m in ipairs(ms) do out[k] = m == P.models[1] and 10 or 0 end
      return out
    end}
  local r = sel.evaluate(P, {fitted = f})
  lu.assertEquals(asked, 1) -- once, for the pool: part of the index
  lu.assertAlmostEquals(r.prior_selection_regret, 0, 1e-12)
  lu.assertAlmostEquals(r.selection_regret, 0.30, 1e-12) -- selection_*: the similarity alone
  f.out_of_task = nil -- the fit's own predictions for every model
  lu.assertAlmostEquals(sel.evaluate(P, {fitted = f}).prior_selection_regret, 0.30, 1e-12)
  local bench = sel.evaluate(P, {fitted = {similarity = f.similarity}})
  lu.assertAlmostEquals(bench.prior_selection_regret, 0.02, 1e-12)
  -- the table's row method+prior
  local results = {lps = r}
  local order = sel.add_rows({estimates = {funnel_by = {}}}, results, {"lps"}, {}, {}, {"lps"})
  lu.assertEquals(order, {"lps", "lps+prior"})
  lu.assertAlmostEquals(results["lps+prior"].selection_regret, 0, 1e-12)
  lu.assertEquals(results["lps+prior"].selection_index_ms_per_candidate, r.prior_selection_index_ms_per_candidate)
end

function TestSelection:test_an_lps_fit_brings_the_benchmark_prior_by_id()
  -- an LPS method fitted as lps.benchmark fits it (S.labelled: other tables
  -- holding the same tensors), with train_families dropping two models
  -- from the network's training: its own prior is the benchmark's fit of
  -- the same models (out of task for those it saw, by id), and selection
  -- with it (`<method>+prior`) ranks as with the benchmark's prior
  local sets = require "lualps.bench.set"
  local P = prior_set()
  P.labelled = {}
  for i = 1, P.n do
    local lw = {family = (i == 3 or i == 4) and "cnn" or "mlp"}
    for k, t in ipairs(P.models[i]) do lw[k] = t end
    P.labelled[i] = lw
  end
  local probe = {}
  for k = 1, 2 do
    local w = {}
    for j, t in ipairs(P.models[6 + k]) do w[j] = t:clone():mul_(1.1) end
    probe[k] = w
  end
  P.probes = {[1] = {mlp = probe[1], cnn = probe[2]}, [2] = {mlp = probe[2], cnn = probe[1]}}
  local method = lps.benchmark.methods.lps{input_dim = 6, width = 8, embed = 8, epochs = 1, train_families = {"mlp"}}
  local train = {"m1", "m2", "m3", "m4", "m5", "m6"}
  local f = sets.fitted(P, method, train, 1, "retrieval")
  local bench = sel.prior(P)
  for _, id in ipairs(train) do lu.assertAlmostEquals(f.out_of_task[id], bench[id], 1e-6) end
  local fresh = f:transferability({P.models[7], P.models[8]})
  lu.assertAlmostEquals(fresh[1], bench.m7, 1e-6)
  lu.assertAlmostEquals(fresh[2], bench.m8, 1e-6)
  local r = sel.evaluate(P, sets.view(P, f))
  local plain = sel.evaluate(P, sets.view(P, {embed = f.embed, metric = "dot"}))
  lu.assertEquals(r.selection_regret, plain.selection_regret) -- selection_*: the similarity alone
  lu.assertAlmostEquals(r.prior_selection_regret, plain.prior_selection_regret, 1e-12)
  lu.assertTrue(r.prior_selection_index_ms_per_candidate > r.selection_index_ms_per_candidate)
  lu.assertTrue(plain.prior_selection_index_ms_per_candidate > plain.selection_index_ms_per_candidate)
  lu.assertEquals(r.prior_selection_probe_ms_per_candidate, r.selection_probe_ms_per_candidate)
  -- a matrix of one training task's models: no prior, and the fit goes on
  local ft1 = {m1 = P.transfer.finetune.m1, m2 = P.transfer.finetune.m2}
  local f1 = method:fit({P.models[1], P.models[2], P.models[3]}, {3, 3, 4}, {seed = 1, ids = {"m1", "m2", "m3"},
    transfer = {finetune = ft1}})
  lu.assertNil(f1.prior)
  -- a model without a result on some training task is not a row of the fit
  local ft2 = {}
  for id, row in pairs(P.transfer.finetune) do ft2[id] = {table.unpack(row)} end
  ft2.m2[4] = nil
  local f2 = method:fit({P.models[1], P.models[2], P.models[3], P.models[5]}, {3, 3, 4, 5},
    {seed = 1, ids = {"m1", "m2", "m3", "m5"}, transfer = {finetune = ft2}})
  lu.assertEquals(f2.prior.n, 3)
  lu.assertNil(f2.out_of_task.m2)
  T.assert_error_contains("prior must be a boolean, got no", lps.benchmark.methods.lps, {prior = "no"})
end

-- The budget the estimators see is the one both probes trained on: the
-- images and labels lps.transfer_pool.probe draws for the target (half 1,
-- first draw), the same for an MLP and a CNN.
function TestSelection:test_budgets_are_the_probes_images()
  local dir = os.tmpname(); os.remove(dir)
  local data = T.fake_fashion_mnist(dir, 200, 60)
  local mlp = {{type = "linear", ["in"] = 784, out = 8}, {type = "relu"}, {type = "linear", ["in"] = 8, out = 3}}
  local cnn = {{type = "conv2d", ["in"] = 1, out = 2, kernel = 3, stride = 2, padding = 1}, {type = "relu"},
    {type = "flatten"}, {type = "linear", ["in"] = 392, out = 3}}
  local tasks = {{classes = {0, 1}}, {classes = {2, 3, 4}}}
  local o = {images = 20, epochs = 1, batch = 10, lr = 1e-3, test_images = 20}
  local P = {n = 2, meta = {{id = "a", task = 2, in_pool = true, family = "mlp", arch = mlp},
    {id = "b", task = 2, in_pool = true, family = "cnn", arch = cnn}},
    splits = {tasks = tasks, retrieval = {unseen_tasks = {1}}},
    transfer = {protocol = {budget_images = o.images, epochs = o.epochs, batch_size = o.batch, lr = o.lr,
                            test_images = o.test_images}}}
  sel.probes(P, data)
  local td = lps.zoo.task_data_loader(tasks, data)(1)
  local b = P.budgets[1]
  lu.assertEquals(b.x:size(1), 20)
  for fam, a in pairs{mlp = mlp, cnn = cnn} do
    local _, _, _, budget = lps.transfer_pool.probe(a, 1, 2, 1, 1, td, o)
    lu.assertEquals(budget.x:reshape(budget.x:size(1), -1):totable(), b.x:totable(), fam)
    lu.assertEquals(budget.y:totable(), b.y:totable(), fam)
    lu.assertTrue(P.probe_ms[1][fam] > 0)
  end
  os.execute("rm -rf '" .. dir .. "'")
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
