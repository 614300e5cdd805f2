--- lualps.bench.relation_prior: what the transfer gain of a task pair owes
-- to the two tasks one at a time, and how far a task *similarity* can go.
-- On ModelSet-Hetero 2 most of the gain's ranking is per task: hard
-- targets gain from any pretrained features, easy ones from none. A task
-- similarity does not say how hard a task is, but a method's own scores
-- do: the models of a hard task agree less with each other (their mean
-- similarity, the diagonal of the task similarity, its coherence). The
-- relation protocols add it as z(similarity) - z(coherence_s +
-- coherence_t) (M.coherence_scores: tau_transfer_coherence), unlearned,
-- from weights alone. M.effects fits the per-task effects; M.ceilings
-- gives reference levels for a task similarity's tau: the split-half
-- agreement of the ground truth, what knowing each task's classes, domain
-- and source reaches, what per-task effects alone explain (levels, not
-- bounds: a similarity that reads pair interactions could pass the oracles,
-- and the mean of both halves is more reliable than either).
local core = require "lualps.core"
local eval = require "lualps.eval"

local M = {}

local function finite(x) return x == x and x > -math.huge and x < math.huge end

-- f(s, t) over the unordered pairs of tasks, in order.
local function pair_lists(tasks, f)
  local x = {}
  for i, s in ipairs(tasks) do
    for j = i + 1, #tasks do x[#x + 1] = f(s, tasks[j]) end
  end
  return x
end

M.rho = require("lualps.bench.selection").prior_rho -- the task oracle's ridge, as the selection prior's

--- The two-way additive fit of gain (a square nested table) over the
-- ordered pairs s ~= t of tasks (a list of task indices): mu, r (source
-- effects) and c (target effects), tables indexed by task, each centred
-- to mean 0, minimizing the sum of (gain[s][t] - mu - r[s] - c[t])^2.
-- Alternating exact updates; stops when no effect moves by 1e-12.
function M.effects(gain, tasks)
  if #tasks < 3 then error(("relation_prior.effects: %d tasks (need 3)"):format(#tasks), 2) end
  for _, s in ipairs(tasks) do
    for _, t in ipairs(tasks) do
      local v = s ~= t and gain[s] and gain[s][t]
      if s ~= t and not (type(v) == "number" and v == v and math.abs(v) < math.huge) then
        error(("relation_prior.effects: gain[%s][%s] is %s (need a finite number)"):format(s, t, tostring(v)), 2)
      end
    end
  end
  local moved = math.huge
  local r, c, mu = {}, {}, 0
  for _, t in ipairs(tasks) do r[t], c[t] = 0, 0 end
  for _ = 1, 10000 do
    if moved < 1e-12 then break end
    local sum, n = 0, 0
    moved = 0
    for _, s in ipairs(tasks) do
      for _, t in ipairs(tasks) do if s ~= t then sum, n = sum + gain[s][t] - r[s] - c[t], n + 1 end end
    end
    mu = sum / n
    for _, s in ipairs(tasks) do
      local a = 0
      for _, t in ipairs(tasks) do if s ~= t then a = a + gain[s][t] - mu - c[t] end end
      moved, r[s] = math.max(moved, math.abs(a / (#tasks - 1) - r[s])), a / (#tasks - 1)
    end
    for _, t in ipairs(tasks) do
      local a = 0
      for _, s in ipairs(tasks) do if s ~= t then a = a + gain[s][t] - mu - r[s] end end
      moved, c[t] = math.max(moved, math.abs(a / (#tasks - 1) - c[t])), a / (#tasks - 1)
    end
  end
  if moved >= 1e-12 then error("relation_prior.effects: no convergence in 10000 sweeps", 2) end
  -- each sweep keeps both sums at 0 from a zero start; centred again against rounding
  local mr, mc = 0, 0
  for _, t in ipairs(tasks) do mr, mc = mr + r[t] / #tasks, mc + c[t] / #tasks end
  for _, t in ipairs(tasks) do r[t], c[t] = r[t] - mr, c[t] - mc end
  return mu + mr + mc, r, c
end

--- z-scores of a list of numbers over its finite values (0 for a
-- constant list); a value that is not finite becomes NaN.
function M.z(list)
  local m, v, n = 0, 0, 0
  for _, x in ipairs(list) do if finite(x) then m, n = m + x, n + 1 end end
  m = n > 0 and m / n or 0
  for _, x in ipairs(list) do if finite(x) then v = v + (x - m) ^ 2 end end
  local sd, out = n > 0 and math.sqrt(v / n) or 0, {}
  for k, x in ipairs(list) do out[k] = not finite(x) and 0 / 0 or sd > 0 and (x - m) / sd or 0 end
  return out
end

--- z(a) + z(b), element by element (two lists of the same length).
function M.zsum(a, b)
  local za, zb = M.z(a), M.z(b)
  for k = 1, #za do za[k] = za[k] + zb[k] end
  return za
end

--- Relation scores of the unordered pairs of `tasks` (in order: (1, 2),
-- (1, 3), ..., (2, 3), ...) from a task similarity tsim (tsim[s][t]: the
-- mean score of s's models against t's; tsim[t][t]: among t's own models,
-- never a model with itself): z((tsim[s][t] + tsim[t][s]) / 2) +
-- z(-(tsim[s][s] + tsim[t][t])), both z-scored over the pairs where both
-- are finite (NaN elsewhere: a task with one model has no coherence). The
-- second term ranks pairs of incoherent (hard) tasks first.
function M.coherence_scores(tsim, tasks)
  local a = pair_lists(tasks, function(s, t) return (tsim[s][t] + tsim[t][s]) / 2 end)
  local p = pair_lists(tasks, function(s, t) return -(tsim[s][s] + tsim[t][t]) end)
  for k = 1, #a do if not (finite(a[k]) and finite(p[k])) then a[k], p[k] = 0 / 0, 0 / 0 end end
  return M.zsum(a, p)
end

--- Kendall tau-b of x against y over the pairs where both are finite; NaN
-- with fewer than 3 (as the relation protocols count).
function M.tau(x, y)
  local a, b = {}, {}
  for i = 1, #x do
    if finite(x[i]) and finite(y[i]) then a[#a + 1], b[#b + 1] = x[i], y[i] end
  end
  return #a >= 3 and eval.kendall_tau(a, b) or 0 / 0
end
local tau = M.tau

--- Reference levels of a task similarity's tau with the transfer gain over the
-- unordered pairs of `tasks` (split (b)'s unseen tasks), from the set's
-- transfer JSON (gain, gain_halves) and task list (classes, domain,
-- source):
--   split_half_tau: Kendall tau of one half's symmetrized gains with the
--     other's (how well one measurement predicts the other);
--   split_half_tau_per_target: the same per target, over its sources;
--   task_oracle_tau: a similarity that knows the tasks, linear in the
--     fraction of shared classes, same domain and same source, fitted to
--     the gains of the training tasks' pairs (train_tasks);
--   effects_oracle_tau: the tasks' own source and target effects (M.effects
--     fitted to these tasks' gains: an oracle), (r_s + c_t + r_t + c_s) / 2,
--     what per-task transferability alone explains;
--   difficulty_tau: minus the sum of the two tasks' accuracy[t] (when
--     given: the mean recorded test accuracy of a task's models, data and
--     not weights), as a score: easier tasks gain less from any source.
function M.ceilings(transfer, task_info, tasks, train_tasks, accuracy)
  if not (transfer and transfer.gain) then error("relation_prior.ceilings: the transfer has no gain matrix", 2) end
  for _, list in ipairs{tasks, train_tasks or {}} do
    for _, t in ipairs(list) do
      if not (task_info[t] and task_info[t].classes) then
        error(("relation_prior.ceilings: no task_info (classes) for task %s"):format(tostring(t)), 2)
      end
    end
  end
  local out = {}
  local gain = transfer.gain
  local g = pair_lists(tasks, function(s, t) return (gain[s][t] + gain[t][s]) / 2 end)
  local h = transfer.gain_halves
  if h and #h == 2 then
    local a = pair_lists(tasks, function(s, t) return (h[1][s][t] + h[1][t][s]) / 2 end)
    local b = pair_lists(tasks, function(s, t) return (h[2][s][t] + h[2][t][s]) / 2 end)
    out.split_half_tau = tau(a, b)
    local per, n = 0, 0
    for _, t in ipairs(tasks) do
      local x, y = {}, {}
      for _, s in ipairs(tasks) do if s ~= t then x[#x + 1], y[#y + 1] = h[1][s][t], h[2][s][t] end end
      local v = tau(x, y)
      if v == v then per, n = per + v, n + 1 end
    end
    out.split_half_tau_per_target = n > 0 and per / n or 0 / 0
  end
  local function feats(s, t)
    local shared, a, b = 0, task_info[s], task_info[t]
    for _, x in ipairs(a.classes) do for _, y in ipairs(b.classes) do if x == y then shared = shared + 1 end end end
    return {shared / math.max(#a.classes, #b.classes), a.domain == b.domain and 1 or 0,
            a.source == b.source and 1 or 0}
  end
  if train_tasks and #train_tasks >= 3 and #g >= 3 then
    local rows, y = {}, {}
    for i, s in ipairs(train_tasks) do
      for j = i + 1, #train_tasks do
        local t = train_tasks[j]
        rows[#rows + 1], y[#y + 1] = feats(s, t), (gain[s][t] + gain[t][s]) / 2
      end
    end
    local X = core.tensor(rows)
    local Xt = core.tensor(pair_lists(tasks, feats))
    local _, mean, sd = eval.standardize(X)
    eval.standardize(Xt, mean, sd)
    out.task_oracle_tau = tau(eval.ridge_predict(X, y, Xt, M.rho), g)
  end
  if #tasks >= 3 and #g >= 3 then
    local _, r, c = M.effects(gain, tasks)
    out.effects_oracle_tau = tau(pair_lists(tasks, function(s, t) return (r[s] + c[t] + r[t] + c[s]) / 2 end), g)
  end
  if accuracy then
    out.difficulty_tau = tau(pair_lists(tasks, function(s, t)
      return -((accuracy[s] or 0 / 0) + (accuracy[t] or 0 / 0)) end), g)
  end
  return out
end

return M
