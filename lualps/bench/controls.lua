--- lualps.bench.controls (lps.controls): what a method reaches without
-- reading what the weights say, beside the results of ModelSet-Hetero's
-- evaluation (recipes/eval_hetero.lua): methods that read no weights
-- (random embeddings, the class count alone), LPS and its hybrid with
-- shuffled labels, LPS untrained, the values the methods' results share;
-- and their table in the report.
local core = require "lualps.core"
local B = require "lualps.bench.benchmark"
local relation_prior = require "lualps.bench.relation_prior"

local M = {}

--- A method that reads no weights: each fit draws embeddings at random
-- (`dim` columns times `scale`, from a generator seeded by the fit's
-- seed), with a 1 in column slot(model) where slot names one: the models of
-- one slot come first, at random among them.
function M.drawn(name, dim, scale, slot)
  return {name = name, fit = function(_, _, _, ctx)
    return {embed = function(_, ms)
      local E = core.randn(#ms, dim, core.generator(7919 + ctx.seed)):mul_(scale)
      for i, m in ipairs(ms) do
        local c = slot and slot(m)
        if c then E:set(i, c, 1) end
      end
      return E
    end}
  end}
end

--- The class ids (their count: the largest id + 1) and the domains (in
-- order of first appearance) of a task list, for LPS's unit supervision.
function M.unit_labels(tasks)
  local n_classes, domains, seen = 0, {}, {}
  for _, t in ipairs(tasks) do
    for _, c in ipairs(t.classes) do n_classes = math.max(n_classes, math.tointeger(c) + 1) end
    if not seen[t.domain] then seen[t.domain], domains[#domains + 1] = true, t.domain end
  end
  return n_classes, domains
end

--- The controls of a loaded set S (lps.benchmark.load) with families and
-- domains: lps_with(changes, name) makes the LPS method of the evaluation
-- with those changes; data is the Fashion-MNIST directory (model
-- selection's probes). Returns a table of control values (maps, regrets).
-- Shuffled labels are not at chance for LPS: its input, the class
-- templates, already carries the task (template matching reads it
-- unlearned), so a network fitted to noise keeps some of that geometry;
-- compare them with `untrained_map` and template matching's map. The
-- hybrid's control asks the sharper question: fitted to noise, does its
-- gated residual leave template matching's score alone?
function M.run(S, lps_with, data)
  local c = {}
  local shuffled = B.evaluate(S, lps_with({shuffle_labels = true}, "shuffled_labels"), {seeds = 1, data = data})
  local untrained = B.evaluate(S, lps_with({epochs = 0}, "untrained"), {seeds = 1, data = data})
  c.untrained_map, c.untrained_cross_family_rank1 = untrained.map, untrained.cross_family_rank1
  local chance = B.evaluate(S, M.drawn("random", 64, 1), {seeds = 5, data = data})
  -- what the class count alone gives (a model's head says it, LPS's inputs carry it)
  local counted = B.evaluate(S, M.drawn("class_count", 64, 1e-3, function(m) return math.min(m[#m]:numel(), 64) end),
    {seeds = 5, data = data})
  c.class_count_map, c.class_count_novel_map = counted.map, counted.novel_map
  local shuffled_h = B.evaluate(S, lps_with({shuffle_labels = true, hybrid = true}, "shuffled_labels_hybrid"),
    {seeds = 1, data = data})
  c.shuffled_labels_hybrid_map, c.shuffled_labels_hybrid_novel_map = shuffled_h.map, shuffled_h.novel_map
  c.shuffled_labels_map, c.shuffled_labels_novel_map = shuffled.map, shuffled.novel_map
  c.chance_map, c.chance_map_std, c.chance_novel_map = chance.map, chance.map_std, chance.novel_map
  for _, k in ipairs{"optimizer", "family", "width"} do c["chance_nuisance_map_" .. k] = chance["nuisance_map_" .. k] end
  return c
end

--- Add to controls c what the methods' results (name -> metrics) carry:
-- the regrets of a random pick and of the task oracle (the same for every
-- method), LPS's nuisance maps and the stats baseline's accuracy_tau.
-- Returns c.
function M.from_results(c, results)
  for _, r in pairs(results) do
    c.random_regret = c.random_regret or r.random_regret
    c.task_oracle_regret = c.task_oracle_regret or r.task_oracle_regret
  end
  for _, k in ipairs{"optimizer", "family", "width"} do
    c["nuisance_map_" .. k] = results.lps and results.lps["nuisance_map_" .. k]
  end
  c.stats_accuracy_tau = results.stats and results.stats.accuracy_tau
  c.template_matching_map = results.template_matching and results.template_matching.map
  return c
end

--- Add to controls c the reference levels of a task similarity's tau with the
-- transfer gain on the unseen tasks of split (b) (relation_prior.ceilings):
-- tau_split_half, tau_split_half_per_target, tau_task_oracle,
-- tau_effects_oracle and tau_difficulty (with the models' recorded test
-- accuracies). Returns c.
function M.relation_ceilings(c, S)
  local ret = S.splits.retrieval
  if not (S.transfer and S.transfer.gain and ret and ret.unseen_tasks) then return c end
  local acc, n = {}, {} -- a task's mean recorded test accuracy
  for i = 1, S.n do
    local m = S.meta[i]
    if type(m.test_accuracy) == "number" then acc[m.task], n[m.task] = (acc[m.task] or 0) + m.test_accuracy, (n[m.task] or 0) + 1 end
  end
  for t, k in pairs(n) do acc[t] = acc[t] / k end
  local r = relation_prior.ceilings(S.transfer, S.splits.tasks, ret.unseen_tasks, ret.train_tasks, acc)
  local function finite(v) if v == v then return v end end -- NaN (too few pairs) is left out
  c.tau_split_half, c.tau_split_half_per_target, c.tau_task_oracle =
    finite(r.split_half_tau), finite(r.split_half_tau_per_target), finite(r.task_oracle_tau)
  c.tau_effects_oracle, c.tau_difficulty = finite(r.effects_oracle_tau), finite(r.difficulty_tau)
  return c
end

--- The controls c as a markdown section, with the transfer matrix's
-- reliability (c.reliability: its split-half Spearman correlations).
function M.markdown(c)
  local lines = {"\n## Controls\n", "| control | value |", "|---|---|"}
  local function f3(v) return v and ("%.3f"):format(v) or "–" end
  for _, k in ipairs{"shuffled_labels_map", "untrained_map", "chance_map", "class_count_map", "random_regret",
                     "task_oracle_regret", "stats_accuracy_tau", "shuffled_labels_hybrid_map",
                     "template_matching_map", "tau_split_half", "tau_split_half_per_target", "tau_task_oracle",
                     "tau_effects_oracle", "tau_difficulty"} do
    lines[#lines + 1] = ("| %s | %s |"):format(k, f3(c[k]))
  end
  for _, k in ipairs{"optimizer", "family", "width"} do
    lines[#lines + 1] = ("| nuisance_map_%s (chance) | %s (%s) |"):format(k, f3(c["nuisance_map_" .. k]),
      f3(c["chance_nuisance_map_" .. k]))
  end
  local r = c.reliability.split_half_spearman
  lines[#lines + 1] = ("| transfer reliability (split-half Spearman; per target; Spearman-Brown of the mean) | %.3f; %.3f; %.3f |")
    :format(r, c.reliability.per_target_split_half_spearman, 2 * r / (1 + r))
  return table.concat(lines, "\n")
end

return M
