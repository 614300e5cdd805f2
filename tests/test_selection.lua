-- The model-selection protocol (lps.selection) on a hand-made set whose
-- answers are known: two unseen targets, a pool of four models on two other
-- tasks with measured fine-tuned accuracies, and probes given directly.
local lu = require "luaunit"
local lps = require "lualps"
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

os.exit(lu.LuaUnit.run("-o", "tap"), true)
