--- lualps.similarity.prior: the transferability prior, how well a model
-- fine-tunes on a new task whatever the task, predicted from its weights
-- alone (issue 19: the family and the recipe decide much of the regret a
-- task similarity leaves). A saved LPS model carries one
-- (sim:transferability, sim:select); lps.selection.prior is the same fit.
--
-- The target of a model m of task s, from a fine-tuning matrix ft (ft[id][t]:
-- m's accuracy on task t once fine-tuned) over the fit's tasks T:
--   p(m) = mean over t in T, t ~= s, of ft[m][t] - c(t),
-- c(t) = the mean of ft[.][t] over the fit's models of other tasks than t.
-- The predictor: ridge regression (lps.eval.ridge_fit, rho) of p on the
-- models' `stats` features (lps.eval: the first, the last hidden and the
-- output layer's weight statistics; any MLP or CNN), standardized over the
-- fit's models.
local core = require "lualps.core"
local util = require "lualps.util"
local eval = require "lualps.eval"

local P = {}

P.rho = 1e-3 -- the ridge of lps.selection.prior (README: regret 0.036 alone)

-- A value as float32: what a saved tensor gives back, so a loaded prior
-- predicts the same bits.
local function f32(x) return core.tensor({x})[1] end

-- The number of stats features (lps.eval: the same for every model).
local width
local function stats_width()
  width = width or eval.features("stats", {core.ones(2, 2), core.ones(2), core.ones(2, 2), core.ones(2)}):numel()
  return width
end

local finite = util.finite

local function check_list(x, what, level)
  if type(x) ~= "table" then error(("%s must be a list, got %s"):format(what, type(x)), level + 1) end
end

-- Task labels 1..n: each a value a table can be keyed by (not nil, not NaN).
local function check_tasks(tasks, n, what, level)
  for k = 1, n do
    local t = tasks[k]
    if t == nil or t ~= t then error(("%s: task label %d is %s"):format(what, k, tostring(t)), level + 1) end
  end
end

local function finite_sum(F) return finite(F:sum()) end

-- A model's stats features (a 1-D tensor), or nil when it has none (a
-- ResNet) or they are not finite.
local function stats_of(m)
  local ok, f = pcall(eval.features, "stats", m)
  if ok and finite_sum(f) then return f end
end

-- Rows of stats features stacked (n x f).
local function stack(rows)
  local X = core.zeros(#rows, stats_width())
  for r, f in ipairs(rows) do X[r]:copy(f) end
  return X
end

--- The targets p (see the header) of models with ids `ids` and tasks
-- `tasks` (lists of one entry per model) from the fine-tuning matrix ft,
-- over the target tasks `targets` (a list). Raises, naming the model and the
-- task, when an accuracy is missing or not finite.
function P.targets(ids, tasks, ft, targets)
  check_list(ids, "prior.targets: ids", 2)
  check_list(tasks, "prior.targets: tasks", 2)
  check_list(targets, "prior.targets: targets", 2)
  if type(ft) ~= "table" then error("prior.targets: no fine-tuning matrix", 2) end
  if #ids ~= #tasks then error(("prior.targets: %d ids and %d tasks"):format(#ids, #tasks), 2) end
  local function acc(id, t)
    local row = ft[id]
    local a = type(row) == "table" and row[t] or nil
    if type(a) ~= "number" then
      error(("prior: no fine-tuned accuracy of model %s on task %s"):format(tostring(id), tostring(t)), 3)
    end
    if not finite(a) then
      error(("prior: the fine-tuned accuracy of model %s on task %s is %s (need a finite number)")
        :format(tostring(id), tostring(t), tostring(a)), 3)
    end
    return a
  end
  local colmean = {}
  for _, t in ipairs(targets) do
    local sum, n = 0, 0
    for k, id in ipairs(ids) do
      if tasks[k] ~= t then sum, n = sum + acc(id, t), n + 1 end
    end
    colmean[t] = n > 0 and sum / n or 0
  end
  local y = {}
  for k, id in ipairs(ids) do
    local sum, n = 0, 0
    for _, t in ipairs(targets) do
      if t ~= tasks[k] then sum, n = sum + acc(id, t) - colmean[t], n + 1 end
    end
    y[k] = n > 0 and sum / n or 0
  end
  return y
end

--- The stats features of a list of models (n x f), unstandardized; raises
-- when a value is not finite (NaN or infinite weights).
function P.features(models)
  local F = eval.feature_matrix("stats", models)
  if not finite_sum(F) then
    error("prior: a model's stats features are not finite (NaN or infinite weights)", 2)
  end
  return F
end

-- A ridge fit's predictions for the rows of F (lps.eval.ridge_fit's center,
-- w, ymean), each row's sum in double precision: a model's prior does not
-- depend on the models it is predicted with.
local function apply(fit, F)
  local X, c, w = F:totable(), fit.center:totable(), fit.w:reshape(-1):totable()
  local out = {}
  for i, row in ipairs(X) do
    local sum = 0
    for j, x in ipairs(row) do sum = sum + (x - c[j]) * w[j] end
    out[i] = sum + fit.ymean
  end
  return out
end

-- P.fit's checks of its targets y, task labels and rho for n models
-- (errors at `level` above the caller of check_fit).
local function check_fit(y, tasks, rho, n, level)
  level = level + 1
  check_list(y, "prior.fit: targets", level)
  check_list(tasks, "prior.fit: tasks", level)
  if not (finite(rho) and rho > 0) then
    error(("prior.fit: rho must be a positive number, got %s"):format(tostring(rho)), level)
  end
  for k, v in ipairs(y) do
    if not finite(v) then error(("prior.fit: target %d is %s (need a finite number)"):format(k, tostring(v)), level) end
  end
  if n ~= #y or n ~= #tasks then
    error(("prior.fit: %d models, %d targets and %d task labels"):format(n, #y, #tasks), level)
  end
  check_tasks(tasks, n, "prior.fit", level)
end

-- P.fit on the unstandardized stats features X (n x f) of its models,
-- checked (check_fit); errors at `level` above the caller.
local function fit_features(X, y, tasks, rho, level)
  local n = X:size(1)
  local by_task, order = {}, {}
  for k, t in ipairs(tasks) do
    if not by_task[t] then by_task[t], order[#order + 1] = {}, t end
    table.insert(by_task[t], k)
  end
  if #order < 2 then error(("prior.fit: models of %d task(s) (need 2)"):format(#order), level + 1) end
  local _, mean, sd = eval.standardize(X)
  local fit = eval.ridge_fit(X, y, rho)
  local state = {mean = mean, sd = sd, center = fit.center, w = fit.w, ymean = f32(fit.ymean), rho = rho, n = n}
  if not (finite_sum(fit.w) and finite(state.ymean)) then -- float32 overflow: no prior rather than a NaN one
    error("prior.fit: the ridge fit is not finite (targets or features too large for float32)", level + 1)
  end
  local oof = {}
  for _, t in ipairs(order) do
    local keep, yk = {}, {}
    for k = 1, n do if tasks[k] ~= t then keep[#keep + 1], yk[#yk + 1] = k, y[k] end end
    local pk = apply(eval.ridge_fit(X:index_rows(keep), yk, rho), X:index_rows(by_task[t]))
    for i, k in ipairs(by_task[t]) do oof[k] = pk[i] end
  end
  return state, oof
end

--- Fit the prior on models (weight lists) with targets y and task labels
-- `tasks` (one per model; at least two tasks). Returns the prior (a table:
-- mean, sd (f values, the standardization), center, w, ymean (the ridge), rho,
-- n) and the out-of-task predictions of the fit's own models (a list: each
-- from the fit on the other tasks' models, standardized as the whole), the
-- values a benchmark may use for them without predicting a model the fit
-- has seen. opts: rho (default P.rho).
function P.fit(models, y, tasks, opts)
  if opts ~= nil and type(opts) ~= "table" then error(("prior.fit: opts must be a table, got %s"):format(type(opts)), 2) end
  local rho = opts and opts.rho or P.rho
  check_list(models, "prior.fit: models", 2)
  check_fit(y, tasks, rho, #models, 2)
  return fit_features(P.features(models), y, tasks, rho, 2)
end

--- Fit a prior on the models of a zoo with fine-tuning results: models,
-- ids and tasks (one entry each; ft[id][t]: the accuracy of model id
-- fine-tuned on task t) and the target tasks (default: every task of
-- `tasks`, sorted). The rows are the models with a result (a finite
-- number) on every target but their own task and finite stats features;
-- the others are left out
-- (a model without results is no training row). Returns the prior, the
-- out-of-task predictions by id (prior.fit's), and the number of rows; nil
-- when the rows cover fewer than two tasks. opts: rho.
function P.fit_zoo(models, ids, tasks, ft, targets, opts)
  check_list(models, "prior.fit_zoo: models", 2)
  check_list(ids, "prior.fit_zoo: ids", 2)
  check_list(tasks, "prior.fit_zoo: tasks", 2)
  if type(ft) ~= "table" then error("prior.fit_zoo: no fine-tuning matrix", 2) end
  if opts ~= nil and type(opts) ~= "table" then error(("prior.fit_zoo: opts must be a table, got %s"):format(type(opts)), 2) end
  if #ids ~= #models or #tasks ~= #models then
    error(("prior.fit_zoo: %d models, %d ids and %d tasks"):format(#models, #ids, #tasks), 2)
  end
  check_tasks(tasks, #models, "prior.fit_zoo", 2)
  if targets == nil then
    local listed = {}
    targets = {}
    for _, t in ipairs(tasks) do
      if not listed[t] then listed[t] = true; targets[#targets + 1] = t end
    end
    table.sort(targets)
  end
  check_list(targets, "prior.fit_zoo: targets", 2)
  local feats, rtasks, rids, counted, ntasks = {}, {}, {}, {}, 0
  for k, m in ipairs(models) do
    local row, f = ids[k] ~= nil and ft[ids[k]], nil
    local usable = type(row) == "table"
    if usable then
      for _, t in ipairs(targets) do
        if t ~= tasks[k] and not finite(row[t]) then usable = false break end
      end
    end
    if usable then
      f = stats_of(m)
      usable = f ~= nil
    end
    if usable then
      local n = #feats + 1
      feats[n], rtasks[n], rids[n] = f, tasks[k], ids[k]
      if not counted[tasks[k]] then counted[tasks[k]] = true; ntasks = ntasks + 1 end
    end
  end
  if ntasks < 2 then return nil end
  local X = stack(feats) -- the rows' features, read once
  local y, rho = P.targets(rids, rtasks, ft, targets), opts and opts.rho or P.rho
  check_fit(y, rtasks, rho, #feats, 2)
  local state, oof = fit_features(X, y, rtasks, rho, 2)
  local by_id = {}
  for k, id in ipairs(rids) do by_id[id] = oof[k] end
  return state, by_id, #feats
end

--- Check a prior's fields (a loaded or hand-made one); raises naming `what`.
function P.check(state, what)
  what = type(what) == "string" and what or "prior"
  if type(state) ~= "table" then error(what .. ": not a table", 3) end
  for _, k in ipairs{"mean", "sd", "center"} do
    if not (core.is_tensor(state[k]) and state[k]:dim() == 1) then
      error(("%s: %s must be a 1-D tensor (one value per feature)"):format(what, k), 3)
    end
  end
  if not (core.is_tensor(state.w) and state.w:dim() == 2 and state.w:size(2) == 1) then
    error(("%s: w must be a f x 1 tensor (the ridge's weights)"):format(what), 3)
  end
  local f = stats_width()
  for _, k in ipairs{"mean", "sd", "center", "w"} do
    if state[k]:size(1) ~= f then
      error(("%s: mean, sd, center and w must have %d features (the stats features), got %d in %s"):format(what, f,
        state[k]:size(1), k), 3)
    end
  end
  for _, k in ipairs{"mean", "center", "w"} do
    if not finite_sum(state[k]) then error(("%s: %s has a non-finite value"):format(what, k), 3) end
  end
  if not (state.sd:min() > 0 and finite_sum(state.sd)) then error(what .. ": sd must be positive and finite", 3) end
  if not finite(state.ymean) then error(what .. ": ymean must be a finite number", 3) end
  -- a saved prior keeps rho (prior.params): without it the file would not load
  if not (finite(state.rho) and state.rho > 0) then
    error(("%s: rho must be a positive number (the ridge's), got %s"):format(what, tostring(state.rho)), 3)
  end
end

--- The prior of each model of a list (a Lua list of numbers; NaN for a
-- model without stats features, e.g. a ResNet, or with non-finite weights).
function P.predict(state, models)
  if type(state) ~= "table" or not core.is_tensor(state.w) then error("prior.predict: not a prior (prior.fit's)", 2) end
  P.check(state, "prior.predict") -- a prior without mean and sd standardized by the models' own
  check_list(models, "prior.predict: models", 2)
  -- each model's features read once, those without (a ResNet, NaN weights) left NaN
  local rows, at, out = {}, {}, {}
  for k, m in ipairs(models) do
    out[k] = 0 / 0
    local f = stats_of(m)
    if f then rows[#rows + 1], at[#rows + 1] = f, k end
  end
  if #rows == 0 then return out end
  local F = stack(rows)
  eval.standardize(F, state.mean, state.sd)
  for r, v in ipairs(apply(state, F)) do out[at[r]] = v end
  return out
end

--- Scores plus the prior: z(scores) + z(prior) over one query's candidates
-- (Lua lists of one value each).
-- z over the finite values; a score of +inf stays first, NaN and -inf
-- last (as lps.selection.rank takes them); a NaN prior counts 0 (the
-- candidates' mean), a constant list z-scores to 0.
function P.combine(scores, prior)
  check_list(scores, "prior.combine: scores", 2)
  check_list(prior, "prior.combine: prior", 2)
  if #scores ~= #prior then
    error(("prior.combine: %d scores and %d prior values"):format(#scores, #prior), 2)
  end
  for k = 1, #scores do
    if type(scores[k]) ~= "number" then error(("prior.combine: score %d is a %s (need a number)"):format(k, type(scores[k])), 2) end
    if type(prior[k]) ~= "number" then error(("prior.combine: prior value %d is a %s (need a number)"):format(k, type(prior[k])), 2) end
  end
  local function z(list, nonfinite)
    local m, v, n = 0, 0, 0
    for _, x in ipairs(list) do if finite(x) then m, n = m + x, n + 1 end end
    m = n > 0 and m / n or 0
    for _, x in ipairs(list) do if finite(x) then v = v + (x - m) ^ 2 end end
    local sd = n > 0 and math.sqrt(v / n) or 0
    local out = {}
    for k, x in ipairs(list) do
      if finite(x) then out[k] = sd > 0 and (x - m) / sd or 0
      elseif x == math.huge then out[k] = nonfinite and math.huge or 0
      else out[k] = nonfinite and -math.huge or 0 end
    end
    return out
  end
  local a, b, out = z(scores, true), z(prior, false), {}
  for k = 1, #a do out[k] = a[k] + b[k] end
  return out
end

--- Tensors and metadata of a prior for a saved file (named tensors
-- prior.mean, prior.sd, prior.center, prior.w, prior.params = {ymean, rho});
-- P.from_saved reads them back. Raises (P.check) on a prior that P.from_saved
-- would refuse: no file is written that cannot be read back.
function P.to_saved(state, named)
  P.check(state, "save: prior")
  named["prior.mean"], named["prior.sd"], named["prior.center"], named["prior.w"] =
    state.mean, state.sd, state.center, state.w
  named["prior.params"] = core.tensor({state.ymean, state.rho})
  return {features = "stats", n = state.n}
end

--- The prior of a saved file's tensors (named; its entries are removed) and
-- metadata meta (the file's `prior` table), or raises naming the file.
function P.from_saved(named, meta, path)
  local state = {mean = named["prior.mean"], sd = named["prior.sd"], center = named["prior.center"], w = named["prior.w"],
                 n = meta.n}
  local par = named["prior.params"]
  if meta.features ~= "stats" then
    error(("similarity.load: %s has a prior on features '%s' (this lualps reads 'stats')"):format(path, tostring(meta.features)), 3)
  end
  if not (core.is_tensor(par) and par:numel() == 2) then
    error(("similarity.load: %s has a prior without its parameters (ymean, rho)"):format(path), 3)
  end
  if meta.n ~= nil and not (type(meta.n) == "number" and math.tointeger(meta.n)) then
    error(("similarity.load: %s has a prior whose model count is %s (need an integer)"):format(path, tostring(meta.n)), 3)
  end
  state.n = meta.n and math.tointeger(meta.n)
  state.ymean, state.rho = par[1], par[2]
  P.check(state, "similarity.load: " .. path .. "'s prior")
  for _, k in ipairs{"mean", "sd", "center", "w", "params"} do named["prior." .. k] = nil end
  return state
end

return P
