-- The relation prior (lualps.bench.relation_prior): the two-way additive
-- fit of the gains (exact on additive matrices, the normal equations on
-- others), the ceilings of a task similarity (split-half and task-oracle
-- tau) on hand-made matrices, the prior predicted from weights for tasks
-- it never saw (and blind to their gains), and the relation protocol's
-- tau with the prior.
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
  -- five tasks; the training tasks 1..3 and unseen 4..5 would be too few
  -- for a tau, so six tasks: gains follow the shared-class fraction exactly
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

-- A set of MLPs: tasks 1..6, three models each, whose weights are scaled
-- by task t's factor; the gains' source and target effects are that
-- factor (tasks 5 and 6 are unseen).
local function scaled_set(unseen_gain)
  local factor = {0.5, 1.0, 1.5, 2.0, 0.7, 1.8}
  local g = lps.generator(3)
  local S = {n = 0, models = {}, meta = {}, splits = {retrieval = {train_tasks = {1, 2, 3, 4}, unseen_tasks = {5, 6}}}}
  for t = 1, 6 do
    for _ = 1, 3 do
      local m = T.random_mlp(g, {20, 8, 3})
      for _, w in ipairs(m) do w:mul_(factor[t]) end
      S.n = S.n + 1
      S.models[S.n], S.meta[S.n] = m, {task = t}
    end
  end
  local gain = {}
  for s = 1, 6 do
    gain[s] = {}
    for t = 1, 6 do gain[s][t] = s == t and 0 or 0.1 * factor[s] + 0.05 * factor[t] end
  end
  gain[5][6], gain[6][5] = unseen_gain, unseen_gain
  S.transfer = {gain = gain}
  return S
end

function TestRelationPrior:test_prior_predicts_unseen_tasks_from_weights_alone()
  local S = scaled_set(0)
  local p = RP.prior(S)
  -- task 6's models are scaled more than task 5's: larger effects, as in
  -- training; only the tasks not trained on get a prior
  lu.assertTrue(p.r[6] > p.r[5], ("source effects %g, %g"):format(p.r[5], p.r[6]))
  lu.assertTrue(p.c[6] > p.c[5], ("target effects %g, %g"):format(p.c[5], p.c[6]))
  lu.assertNil(p.r[1])
  lu.assertIs(RP.prior(S), p) -- cached
  -- the unseen tasks' own gains never enter
  local q = RP.prior(scaled_set(5))
  lu.assertEquals({q.r[5], q.r[6], q.c[5], q.c[6]}, {p.r[5], p.r[6], p.c[5], p.c[6]})
  -- without gains or training tasks: no prior
  lu.assertNil(RP.prior({n = 0, models = {}, meta = {}, splits = {retrieval = {train_tasks = {1, 2}}}, transfer = {}}))
end

function TestRelationPrior:test_relation_protocol_adds_the_prior_as_z_scores()
  -- four unseen tasks, one model each
  local gain = {{0, 0.1, 0.25, 0.3}, {0.05, 0, 0.12, 0.2}, {0.2, 0.33, 0, 0.1}, {0.15, 0.22, 0.37, 0}}
  local sim = {{1, 0.4, 0.1, 0.9}, {0.4, 1, 0.7, 0.2}, {0.1, 0.7, 1, 0.5}, {0.9, 0.2, 0.5, 1}}
  local tasks = {}
  for t = 1, 4 do tasks[t] = {classes = {t}, domain = "a"} end
  local function fake(prior)
    return {splits = {tasks = tasks, retrieval = {unseen_tasks = {1, 2, 3, 4}}}, transfer = {gain = gain},
      meta = {{task = 1}, {task = 2}, {task = 3}, {task = 4}}, byid = {a = 1, b = 2, c = 3, d = 4},
      models = {{}, {}, {}, {}}, relation_prior = prior}
  end
  local ids = {"a", "b", "c", "d"}
  local view = {sim = function() return lps.tensor(sim) end}
  -- a constant prior adds nothing
  local flat = {r = {0, 0, 0, 0}, c = {0, 0, 0, 0}}
  local r = B.unseen_relations(fake(flat), view, ids)
  lu.assertAlmostEquals(r.tau_transfer_prior, r.tau_transfer, 1e-12)
  lu.assertAlmostEquals(r.tau_transfer_per_target_prior, r.tau_transfer_per_target, 1e-12)
  -- a constant similarity leaves the prior's own ranking: pair prior
  -- (r_s + c_t + r_t + c_s) / 2 against the symmetrized gain, by hand
  local prior = {r = {0.4, 0.1, 0.3, 0.2}, c = {0, 0, 0, 0}}
  local const = {sim = function() return lps.full(4, 4, 0.5) end}
  local p = B.unseen_relations(fake(prior), const, ids)
  local x, y = {}, {}
  for s = 1, 4 do
    for t = s + 1, 4 do x[#x + 1], y[#y + 1] = (prior.r[s] + prior.r[t]) / 2, (gain[s][t] + gain[t][s]) / 2 end
  end
  lu.assertAlmostEquals(p.tau_transfer_prior, lps.eval.kendall_tau(x, y), 1e-12)
  -- per target: sources ranked by their source effect alone
  local per = 0
  for t = 1, 4 do
    local a, b = {}, {}
    for s = 1, 4 do if s ~= t then a[#a + 1], b[#b + 1] = prior.r[s], gain[s][t] end end
    per = per + lps.eval.kendall_tau(a, b) / 4
  end
  lu.assertAlmostEquals(p.tau_transfer_per_target_prior, per, 1e-12)
  -- no prior: no such keys
  local none = B.unseen_relations(fake(false), view, ids)
  lu.assertNil(none.tau_transfer_prior)
end

local code = lu.LuaUnit.run("-o", "tap")
T.cleanup()
os.exit(code, true)
