-- lualps.bench.relation_prior: the two-way additive fit of the gains
-- (exact on additive matrices, the normal equations on others), the
-- ceilings of a task similarity (split-half, task-oracle, per-task
-- effects, difficulty) on hand-made matrices, the coherence scores by hand
-- and the relation protocol's tau with them.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local RP = require "lualps.bench.relation_prior"
local B = require "lualps.bench.benchmark"

TestRelationPrior = {}

local function additive(mu, r, c, diag)
  local g = {}
  for s = 1, #r do
    g[s] = {}
    for t = 1, #c do g[s][t] = s == t and diag or mu + r[s] + c[t] end
  end
  return g
end

function TestRelationPrior:test_effects_recover_an_additive_matrix()
  -- centred effects; the diagonal (a task onto itself) never enters
  local r, c = {0.3, -0.1, -0.2, 0.0}, {-0.05, 0.15, 0.1, -0.2}
  local mu, er, ec = RP.effects(additive(0.02, r, c, 99), {1, 2, 3, 4})
  lu.assertAlmostEquals(mu, 0.02, 1e-10)
  for t = 1, 4 do
    lu.assertAlmostEquals(er[t], r[t], 1e-10)
    lu.assertAlmostEquals(ec[t], c[t], 1e-10)
  end
  -- a subset of tasks: the fit over their pairs only
  local _, sr = RP.effects(additive(0, r, c, 0), {1, 2, 4})
  lu.assertAlmostEquals(sr[1] - sr[2], r[1] - r[2], 1e-10)
  lu.assertNil(sr[3])
  T.assert_error_contains("2 tasks (need 3)", RP.effects, {{0, 1}, {1, 0}}, {1, 2})
  local bad = additive(0, r, c, 0)
  bad[2][3] = 0 / 0 -- printed "nan" or "-nan" by the C library
  local ok, err = pcall(RP.effects, bad, {1, 2, 3, 4})
  lu.assertFalse(ok)
  lu.assertStrContains(err, "relation_prior.effects: gain[2][3] is ")
  lu.assertStrContains(err, "nan (need a finite number)")
  T.assert_error_contains("gain[1][5] is nil", RP.effects, additive(0, r, c, 0), {1, 2, 5})
end

function TestRelationPrior:test_effects_solve_the_normal_equations()
  -- any matrix: the residuals of each source's row and each target's
  -- column (off the diagonal) sum to 0, and so do all of them
  local g = {{0, 0.3, -0.1, 0.2, 0.05}, {0.1, 0, 0.4, -0.3, 0.2}, {0.25, -0.2, 0, 0.1, 0.0},
             {-0.1, 0.05, 0.3, 0, 0.15}, {0.2, 0.1, -0.25, 0.35, 0}}
  local tasks = {1, 2, 3, 4, 5}
  local mu, r, c = RP.effects(g, tasks)
  local total = 0
  for _, s in ipairs(tasks) do
    local row, col = 0, 0
    for _, t in ipairs(tasks) do
      if s ~= t then
        row = row + g[s][t] - mu - r[s] - c[t]
        col = col + g[t][s] - mu - r[t] - c[s]
        total = total + g[s][t] - mu - r[s] - c[t]
      end
    end
    lu.assertAlmostEquals(row, 0, 1e-9)
    lu.assertAlmostEquals(col, 0, 1e-9)
  end
  lu.assertAlmostEquals(total, 0, 1e-9)
end

function TestRelationPrior:test_ceilings_on_hand_made_halves_and_tasks()
  -- eight tasks, 1..4 training and 5..8 unseen; the gains follow the
  -- shared-class fraction (plus a small source term)
  local info = {
    {classes = {1, 2}, domain = "a", source = "x"}, {classes = {2, 3}, domain = "a", source = "x"},
    {classes = {1, 3}, domain = "b", source = "x"}, {classes = {1, 2, 3}, domain = "b", source = "x"},
    {classes = {4, 5}, domain = "a", source = "x"}, {classes = {1, 4}, domain = "a", source = "x"},
    {classes = {2, 5}, domain = "b", source = "x"}, {classes = {3, 4, 5}, domain = "b", source = "x"},
  }
  local function shared(s, t)
    local n = 0
    for _, x in ipairs(info[s].classes) do for _, y in ipairs(info[t].classes) do if x == y then n = n + 1 end end end
    return n / math.max(#info[s].classes, #info[t].classes)
  end
  local gain, h1, h2, h3 = {}, {}, {}, {}
  for s = 1, 8 do
    gain[s], h1[s], h2[s], h3[s] = {}, {}, {}, {}
    for t = 1, 8 do
      gain[s][t] = s == t and 0 or shared(s, t) + 0.01 * s -- the source term keeps pairs apart
      h1[s][t], h2[s][t], h3[s][t] = gain[s][t], gain[s][t], -gain[s][t]
    end
  end
  local c = RP.ceilings({gain = gain, gain_halves = {h1, h2}}, info, {5, 6, 7, 8}, {1, 2, 3, 4})
  lu.assertAlmostEquals(c.split_half_tau, 1, 1e-12)
  lu.assertAlmostEquals(c.split_half_tau_per_target, 1, 1e-12)
  -- the oracle ranks the unseen pairs as the gain does, up to the small source term
  lu.assertTrue(c.task_oracle_tau > 0.6, "task oracle tau " .. c.task_oracle_tau)
  local flipped = RP.ceilings({gain = gain, gain_halves = {h1, h3}}, info, {5, 6, 7, 8}, {1, 2, 3, 4})
  lu.assertAlmostEquals(flipped.split_half_tau, -1, 1e-12)
  lu.assertAlmostEquals(flipped.split_half_tau_per_target, -1, 1e-12)
  -- no halves, no training tasks: only what can be computed
  local bare = RP.ceilings({gain = gain}, info, {5, 6, 7, 8})
  lu.assertNil(bare.split_half_tau)
  lu.assertNil(bare.task_oracle_tau)
  -- per target, each target's column of sources: halves that agree there
  -- (h2 = h1 times the target's own positive factor) but whose rows rank
  -- otherwise
  local a, b = {}, {}
  for s = 1, 8 do
    a[s], b[s] = {}, {}
    for t = 1, 8 do a[s][t], b[s][t] = s, s * t end
  end
  local cols = RP.ceilings({gain = gain, gain_halves = {a, b}}, info, {5, 6, 7, 8}, {1, 2, 3, 4})
  lu.assertAlmostEquals(cols.split_half_tau_per_target, 1, 1e-12)
  T.assert_error_contains("no task_info (classes) for task 9", RP.ceilings, {gain = gain}, info, {5, 6, 9})
end

function TestRelationPrior:test_controls_report_the_ceilings_of_a_set()
  -- eight tasks as above through lps.controls: the mean recorded accuracy
  -- per task (a record without one is passed over), NaN left out
  local info, gain, meta = {}, {}, {}
  for t = 1, 8 do info[t] = {classes = {t, t + 1}, domain = t % 2 == 0 and "a" or "b", source = "x"} end
  local acc = {0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.75, 0.65}
  for s = 1, 8 do
    gain[s] = {}
    for t = 1, 8 do gain[s][t] = s == t and 0 or (2 - acc[s] - acc[t]) end
  end
  for t = 1, 8 do
    meta[#meta + 1] = {task = t, test_accuracy = acc[t] + 0.01}
    meta[#meta + 1] = {task = t, test_accuracy = acc[t] - 0.01}
    meta[#meta + 1] = {task = t} -- no recorded accuracy
  end
  local S = {n = #meta, meta = meta, transfer = {gain = gain},
    splits = {tasks = info, retrieval = {unseen_tasks = {5, 6, 7, 8}, train_tasks = {1, 2, 3, 4}}}}
  local c = lps.controls.relation_ceilings({}, S)
  lu.assertAlmostEquals(c.tau_difficulty, 1, 1e-12) -- the gain is the pair's difficulty exactly
  lu.assertAlmostEquals(c.tau_effects_oracle, 1, 1e-12)
  lu.assertNil(c.tau_split_half) -- no halves
  lu.assertAlmostEquals(c.tau_task_oracle, -- the training tasks passed through
    RP.ceilings(S.transfer, info, {5, 6, 7, 8}, {1, 2, 3, 4}).task_oracle_tau, 1e-12)
  T.assert_error_contains("the transfer has no gain matrix", RP.ceilings, {}, info, {5, 6, 7, 8})
  local md = lps.controls.markdown(setmetatable(c, {__index = {reliability = {split_half_spearman = 0.5,
    per_target_split_half_spearman = 0.4}}}))
  lu.assertStrContains(md, "| tau_difficulty | 1.000 |")
  lu.assertStrContains(md, "| tau_split_half | – |")
end

function TestRelationPrior:test_per_task_ceilings_on_an_additive_matrix()
  -- gains made of per-task effects only: the effects oracle ranks every
  -- pair right, and so does a difficulty whose sum is the pair's gain
  -- negated (harder tasks gain more)
  local r, c = {0.3, -0.1, 0.05, -0.2, 0.12}, {0.02, 0.1, -0.07, 0.0, -0.04}
  local gain = additive(0.1, r, c, 0)
  local info = {}
  for t = 1, 5 do info[t] = {classes = {t}, domain = "a", source = "x"} end
  local difficulty = {}
  for t = 1, 5 do difficulty[t] = -(r[t] + c[t]) end
  local out = RP.ceilings({gain = gain}, info, {1, 2, 3, 4, 5}, nil, difficulty)
  lu.assertAlmostEquals(out.effects_oracle_tau, 1, 1e-12)
  lu.assertAlmostEquals(out.difficulty_tau, 1, 1e-12)
  for t = 1, 5 do difficulty[t] = -difficulty[t] end
  lu.assertAlmostEquals(RP.ceilings({gain = gain}, info, {1, 2, 3, 4, 5}, nil, difficulty).difficulty_tau, -1, 1e-12)
  lu.assertNil(RP.ceilings({gain = gain}, info, {1, 2, 3, 4, 5}).difficulty_tau)
end

function TestRelationPrior:test_z_scores_skip_what_is_not_finite()
  local z = RP.z({1, 2, 3, 0 / 0})
  lu.assertAlmostEquals(z[1], -math.sqrt(1.5), 1e-12)
  lu.assertAlmostEquals(z[2], 0, 1e-12)
  lu.assertTrue(z[4] ~= z[4])
  lu.assertEquals(RP.z({5, 5, 5}), {0, 0, 0})
  local s = RP.zsum({1, 2, 3}, {3, 2, 1})
  for k = 1, 3 do lu.assertAlmostEquals(s[k], 0, 1e-12) end
end

function TestRelationPrior:test_coherence_scores_by_hand()
  -- three tasks: pairs (1, 2), (1, 3), (2, 3); symmetrized similarity
  -- 0.5, 0.2, 0.3; coherence terms -(0.9 + 0.6), -(0.9 + 0.3), -(0.6 + 0.3)
  local tsim = {{0.9, 0.4, 0.2}, {0.6, 0.6, 0.1}, {0.2, 0.5, 0.3}}
  local got = RP.coherence_scores(tsim, {1, 2, 3})
  local za, zp = RP.z({0.5, 0.2, 0.3}), RP.z({-1.5, -1.2, -0.9})
  for k = 1, 3 do lu.assertAlmostEquals(got[k], za[k] + zp[k], 1e-12) end
  -- a task without coherence (one model: NaN) leaves its pairs out, and
  -- both terms are z-scored over the pairs left (four tasks: three left)
  local t4 = {{0.9, 0.4, 0.2, 0.3}, {0.6, 0.6, 0.1, 0.7}, {0.2, 0.5, 0.3, 0.1}, {0.3, 0.7, 0.1, 0 / 0}}
  local some = RP.coherence_scores(t4, {1, 2, 3, 4})
  lu.assertEquals(#some, 6)
  for _, k in ipairs{3, 5, 6} do lu.assertTrue(some[k] ~= some[k], "pair " .. k) end
  local left = RP.coherence_scores(tsim, {1, 2, 3})
  for n, k in ipairs{1, 2, 4} do lu.assertAlmostEquals(some[k], left[n], 1e-12) end
end

function TestRelationPrior:test_relation_protocol_ranks_incoherent_pairs_first()
  -- four unseen tasks, two or three models each; the models of tasks 3 and 4 agree
  -- less with each other (hard tasks), and the gain is largest between them
  local gain = {{0, 0.05, 0.1, 0.12}, {0.04, 0, 0.11, 0.13}, {0.09, 0.1, 0, 0.3}, {0.12, 0.14, 0.28, 0}}
  local tasks = {}
  for t = 1, 4 do tasks[t] = {classes = {t}, domain = "a"} end
  -- (task 1 has three models: its coherence is over its 6 ordered pairs, never a model with itself)
  local meta, ids, byid, models = {}, {}, {}, {}
  for i, t in ipairs{1, 1, 1, 2, 2, 3, 3, 4, 4} do
    meta[i], ids[i], models[i] = {task = t}, "m" .. i, {}
    byid[ids[i]] = i
  end
  local S = {splits = {tasks = tasks, retrieval = {unseen_tasks = {1, 2, 3, 4}}}, transfer = {gain = gain},
    meta = meta, byid = byid, models = models}
  local coherence = {0.9, 0.8, 0.3, 0.2}
  local between = {{0, 0.4, 0.1, 0.2}, {0.4, 0, 0.3, 0.1}, {0.1, 0.3, 0, 0.2}, {0.2, 0.1, 0.2, 0}}
  local M = {}
  for i = 1, 9 do
    M[i] = {}
    for j = 1, 9 do
      local s, t = meta[i].task, meta[j].task
      M[i][j] = i == j and 1 or s == t and coherence[s] or between[s][t]
    end
  end
  local r, got = B.unseen_relations(S, {sim = function() return lps.tensor(M) end}, ids)
  for t = 1, 4 do lu.assertAlmostEquals(got[t][t], coherence[t], 1e-6) end
  -- by hand: the task similarity is `between` off the diagonal and the
  -- coherence on it; the protocol's tau is that of coherence_scores
  local tsim = {}
  for s = 1, 4 do
    tsim[s] = {}
    for t = 1, 4 do tsim[s][t] = s == t and coherence[s] or between[s][t] end
  end
  local g = {}
  for s = 1, 4 do for t = s + 1, 4 do g[#g + 1] = (gain[s][t] + gain[t][s]) / 2 end end
  lu.assertAlmostEquals(r.tau_transfer_coherence, lps.eval.kendall_tau(RP.coherence_scores(tsim, {1, 2, 3, 4}), g), 1e-12)
  -- here the similarity alone ranks the pairs badly; coherence puts (3, 4) first
  lu.assertTrue(r.tau_transfer_coherence > r.tau_transfer + 0.3,
    ("coherence %g, similarity %g"):format(r.tau_transfer_coherence, r.tau_transfer))
end

local code = lu.LuaUnit.run("-o", "tap")
T.cleanup()
os.exit(code, true)
