--- lualps.bench.selection (lps.selection): the model-selection protocol, the question LPS exists
-- for: which stored model should I fine-tune for a new task? On each unseen
-- target task (split b), the candidates are the transfer pool's models of
-- the other tasks, and the truth is each one's accuracy on the target once
-- fine-tuned (lps.transfer_pool: finetune[id][t]). A method ranks the
-- candidates; its top one is "fine-tuned". Regret = the best candidate's
-- accuracy minus the chosen one's (a random pick's: the best minus the
-- mean); tau = Kendall tau-b between the method's ranking and the
-- accuracies. Two kinds of method rank them:
--   weight methods (lps.benchmark's): the query is a probe model trained on
--     the target's budget of images, compared with the candidates' weights;
--   data-based estimators (lps.estimators: LogME, LEEP, k-NN, a linear
--     probe): each candidate's outputs on the same budget images, scored
--     against their labels (M.estimate).
-- A funnel `<method>+logme` re-ranks a weight method's top k by LogME
-- (`+logme_exact`: by the exact evidence).
local core = require "lualps.core"
local util = require "lualps.util"
local arch = require "lualps.arch"
local eval = require "lualps.eval"
local estimators = require "lualps.estimators"
local modelset = require "lualps.modelset"
local similarity = require "lualps.similarity"
local zoo = require "lualps.bench.zoo"
local report = require "lualps.bench.report"
local TP = require "lualps.bench.transfer_pool"

local M = {}

local function ms_since(t0) return (core.now() - t0) * 1000 end

--- The probes of a loaded set S (lps.benchmark.load): probes[t][family] =
-- weight list of the from-scratch reference model of that family trained
-- on target t's budget (lps.transfer_pool.probe, half 1, first draw, the
-- transfer protocol's budget), for every unseen task t of split (b).
-- Also S.budgets[t] = {x = n x 784 images, y = labels 1..k}: the images
-- and labels both probes trained on (one draw for both families), what the
-- estimators see; and S.probe_ms[t][family], each probe's training time.
-- Cached in S.
function M.probes(S, data_dir)
  if S.probes then return S.probes end
  local p = S.transfer.protocol
  local o = {images = p.budget_images, epochs = p.epochs, batch = p.batch_size, lr = p.lr, test_images = p.test_images}
  local ref = {}
  for i = 1, S.n do
    local m = S.meta[i]
    if m.in_pool then ref[m.family] = ref[m.family] or arch.of_meta(m) end
  end
  local loader = zoo.task_data_loader(S.splits.tasks, data_dir)
  local probes, budgets, probe_ms = {}, {}, {}
  for _, t in ipairs(S.splits.retrieval.unseen_tasks) do
    probes[t], probe_ms[t] = {}, {}
    local td = loader(t)
    for _, fam in ipairs{"mlp", "cnn"} do
      local t0 = core.now()
      local model, _, _, budget = TP.probe(ref[fam], t, #S.splits.tasks[t].classes, 1, 1, td, o)
      probe_ms[t][fam] = ms_since(t0)
      local w = similarity.weights(model)
      w.family, w.module = fam, nil -- a weight list (with its arch), as the set's models
      probes[t][fam] = w
      if fam == "mlp" then budgets[t] = {x = budget.x, y = budget.y} end
    end
  end
  S.probes, S.budgets, S.probe_ms = probes, budgets, probe_ms
  return probes
end

--- The candidates of target t: the ids of the pool models of the other
-- tasks, in set order, and their fine-tuned accuracies on t.
function M.candidates(S, t)
  local ft, ids, acc = S.transfer.finetune, {}, {}
  for i = 1, S.n do
    local m = S.meta[i]
    if m.in_pool and m.task ~= t then ids[#ids + 1], acc[#ids + 1] = m.id, ft[m.id][t] end
  end
  return ids, acc
end

--- The transferability prior (lualps.similarity.prior: how well each pool
-- model fine-tunes on a target whatever the target, predicted from its
-- weight statistics) learned on the training targets of the retrieval
-- split only: fitted on the pool models of the training tasks with
-- targets over the training tasks (M.prior_rho). Every value is a
-- prediction for a model the fit has not seen: a training task's models get
-- the fit on the other training tasks' models (cross-fitting), the other
-- pool models the fit on all of them. No unseen target enters; it is the
-- fit an LPS method makes of the same models (lps.benchmark.methods.lps).
-- Returns (and caches in S.prior, with the rho it used) a table id ->
-- prior. M.has_prior(S): whether the set has what it needs (the fine-tuning
-- matrix and at least two training tasks with pool models).
M.prior_rho = similarity.prior.rho
local function prior_tasks(S)
  local is_train, train, all, tasks = {}, {}, {}, {}
  for _, t in ipairs(S.splits.retrieval.train_tasks or {}) do is_train[t] = true end
  for i = 1, S.n do
    local m = S.meta[i]
    if m.in_pool then
      all[#all + 1] = i
      if is_train[m.task] then
        train[#train + 1] = i
        if not tasks[m.task] then tasks[m.task], tasks[#tasks + 1] = true, m.task end
      end
    end
  end
  return train, all, #tasks
end
function M.has_prior(S)
  if not S.transfer.finetune then return false end
  local _, _, ntasks = prior_tasks(S)
  return ntasks >= 2
end
function M.prior(S)
  if S.prior and S.prior_rho == M.prior_rho then return S.prior end
  local ft = S.transfer.finetune
  if not ft then error("selection.prior: the set has no fine-tuning matrix (S.transfer.finetune)", 2) end
  local train, all, ntasks = prior_tasks(S)
  if ntasks < 2 then error(("selection.prior: pool models of %d training task(s) (need 2)"):format(ntasks), 2) end
  local ids, tasks, models = {}, {}, {}
  for k, i in ipairs(train) do ids[k], tasks[k], models[k] = S.meta[i].id, S.meta[i].task, S.models[i] end
  local y = similarity.prior.targets(ids, tasks, ft, S.splits.retrieval.train_tasks)
  local state, oof = similarity.prior.fit(models, y, tasks, {rho = M.prior_rho})
  -- a training task's models: the fit on the other training tasks' models
  local prior, fitted = {}, {}
  for k, id in ipairs(ids) do prior[id], fitted[train[k]] = oof[k], true end
  -- the models of no training task: the fit on every training model (their
  -- features read here, the training models' once by the fit)
  local list, at = {}, {}
  for _, i in ipairs(all) do
    if not fitted[i] then
      local n = #list + 1
      list[n], at[n] = S.models[i], i
    end
  end
  local t0 = core.now()
  for k, v in ipairs(similarity.prior.predict(state, list)) do prior[S.meta[at[k]].id] = v end
  -- the prior of a pool model (a prediction's cost; each model's does not depend on the others): part of a
  -- method+prior's index
  S.prior_ms = ms_since(t0) / math.max(#list, 1)
  S.prior, S.prior_rho = prior, M.prior_rho
  return prior
end

--- The prior a model file ships (recipes/eval_hetero.lua saves it with
-- the model): lualps.similarity.prior.fit_zoo on every pool model of the
-- set, targets over every task with pool models (all the fine-tuning
-- results there are: the benchmark's figures are those of the retrieval
-- split's fit, M.prior, which sees no unseen target). nil without a
-- fine-tuning matrix or with fewer than two tasks of usable rows.
function M.shipped_prior(S)
  local ft = S.transfer and S.transfer.finetune
  if not ft then return nil end
  local ids, tasks, models = {}, {}, {}
  for i = 1, S.n do
    local m = S.meta[i]
    if m.in_pool then
      local n = #ids + 1
      ids[n], tasks[n], models[n] = m.id, m.task, S.models[i]
    end
  end
  return (similarity.prior.fit_zoo(models, ids, tasks, ft, nil, {rho = M.prior_rho}))
end

-- Scores plus the prior over one target's candidates (lualps.similarity.prior.combine).
local zsum = similarity.prior.combine
M.zsum = zsum

-- Dense ranks of scores (1 = the lowest finite score; -inf and NaN rank 0,
-- tied), and the largest rank.
local function dense_ranks(scores)
  local vals, seen = {}, {}
  for _, x in ipairs(scores) do
    if x == x and x > -math.huge and not seen[x] then seen[x] = true; vals[#vals + 1] = x end
  end
  table.sort(vals)
  local rank_of = {}
  for r, x in ipairs(vals) do rank_of[x] = r end
  local out = {}
  for k, x in ipairs(scores) do out[k] = rank_of[x] or 0 end
  return out, #vals
end

--- One ranking's result: scores (higher = better; -inf and NaN rank last)
-- of the candidates with fine-tuned accuracies acc. Returns {pick (the
-- first best score; nil when no score is finite), accuracy (the pick's, or
-- the mean when there is none: a random pick's expectation), regret
-- (best accuracy minus it), random_regret (best minus mean), best, tau
-- (Kendall tau-b of scores and acc; 0 when either is constant, a random
-- ranking's expectation)}.
function M.rank(scores, acc)
  if #scores ~= #acc or #acc < 1 then
    error(("selection.rank: %d scores for %d accuracies"):format(#scores, #acc), 2)
  end
  local best, mean, pick, top = -math.huge, 0, nil, -math.huge
  for k, a in ipairs(acc) do
    best, mean = math.max(best, a), mean + a / #acc
    local x = scores[k]
    if x == x and x > top then pick, top = k, x end
  end
  local chosen = pick and acc[pick] or mean
  local tau = #acc >= 2 and eval.kendall_tau(dense_ranks(scores), acc) or 0 / 0
  return {pick = pick, accuracy = chosen, regret = best - chosen, random_regret = best - mean, best = best,
          tau = tau == tau and tau or 0}
end

--- The funnel of two rankings: the k candidates `first` scores best (ties:
-- the earlier candidate), ranked among themselves by `second`, above the
-- rest ranked by `first` (ties kept in both). Returns the funnel's scores
-- (dense ranks) and the list of the k candidates, best by `first` first.
function M.funnel(first, second, k)
  if #first ~= #second then error(("selection.funnel: %d and %d scores"):format(#first, #second), 2) end
  if math.type(k) ~= "integer" or k < 1 then
    error(("selection.funnel: k must be a positive integer, got %s"):format(tostring(k)), 2)
  end
  local r1, top_rank = dense_ranks(first)
  local order = {}
  for c = 1, #first do order[c] = c end
  table.sort(order, function(a, b) if r1[a] ~= r1[b] then return r1[a] > r1[b] end return a < b end)
  local top, sub = {}, {}
  for n = 1, math.min(k, #order) do top[n], sub[n] = order[n], second[order[n]] end
  local r2 = dense_ranks(sub)
  local out = {table.unpack(r1)}
  for n, c in ipairs(top) do out[c] = top_rank + 1 + r2[n] end
  return out, top
end

-- A shallow copy of a weight list: the same tensors in a new table, which
-- no method has seen (what a method remembers of a model is keyed by it).
local function fresh(w)
  local c = {}
  for k, v in pairs(w) do c[k] = v end
  return c
end

-- Scores of the candidates (ids) for one query model under view v.
local function scores(S, v, query, ids)
  local f = v.fitted
  local out
  if f.embed and v.features then
    local q = f:embed({query})
    if f.metric ~= "dot" then q:div_(math.max(q:norm(), 1e-12)) end
    out = core.matmul(q, v.features(ids), false, true)
  else
    local models = {}
    for k, id in ipairs(ids) do models[k] = S.models[S.byid[id]] end
    out = f:similarity({query}, models)
  end
  local list = out:reshape(-1):totable()
  for k, x in ipairs(list) do if x ~= x then list[k] = -math.huge end end
  return list
end

-- Milliseconds per candidate of what view v computes of the candidates
-- (ids) before any query, its index: an embedding method's embeddings; a
-- pairwise method's first comparison of fresh candidates beyond a second
-- one (what it remembers of them: template matching's templates; about 0
-- for one that remembers nothing).
local function index_ms(S, v, ids, query)
  local models = {}
  for k, id in ipairs(ids) do models[k] = fresh(S.models[S.byid[id]]) end
  local f = v.fitted
  local t0 = core.now()
  if f.embed and v.features then
    f:embed(models)
    return ms_since(t0) / #ids
  end
  f:similarity({fresh(query)}, models)
  local cold = ms_since(t0)
  t0 = core.now()
  f:similarity({fresh(query)}, models)
  return math.max(0, cold - ms_since(t0)) / #ids
end

-- The pool models of every target's candidates.
local function pool_ids(S)
  local ids = {}
  for i = 1, S.n do if S.meta[i].in_pool then ids[#ids + 1] = S.meta[i].id end end
  return ids
end

-- The prior values of the pool models (id -> value) by a fitted method's
-- own prior (an LPS fit's: lualps.similarity.prior): out_of_task[id] for a
-- model the fit saw (its prediction by the fit on the other tasks' models),
-- transferability(models) for the others; and the milliseconds per pool
-- model transferability took.
local function own_prior(S, f)
  local ids, models = pool_ids(S), {}
  for k, id in ipairs(ids) do models[k] = S.models[S.byid[id]] end
  local t0 = core.now()
  local values = f:transferability(models)
  local out = {prior = {}, ms = ms_since(t0) / math.max(#ids, 1)}
  local seen = f.out_of_task or {}
  for k, id in ipairs(ids) do
    if seen[id] ~= nil then out.prior[id] = seen[id] else out.prior[id] = values[k] end
  end
  return out
end

--- Model-selection metrics of view v (a fitted method as lps.benchmark
-- sees it, trained without the unseen tasks): means over unseen targets
-- and both probe families of selection_accuracy (the chosen model's
-- accuracy), selection_regret, selection_tau, random_regret,
-- oracle_accuracy, task_oracle_regret (with the set's gain matrix: a model
-- at random of the source task whose measured gain on the target is
-- highest), selection_regret_mlp / _cnn per probe family;
-- selection_ms_per_candidate (the query's embedding or comparison and the
-- comparisons, measured, over the candidates), selection_index_ms_per_candidate
-- (the method's index of the pool models, built once), selection_probe_ms_per_candidate
-- (training the probe, over the candidates); with the set's fine-tuning
-- matrix, the same with the similarity plus the prior (M.prior, M.zsum) as
-- prior_selection_accuracy, _regret, _tau, _ms_per_candidate; a method
-- with its own prior (a fitted LPS method's transferability and
-- out_of_task: the ranking sim:select applies) with that prior instead;
-- prior_selection_index_ms_per_candidate (the index plus the prior of every
-- pool model) and _probe_ms_per_candidate.
-- selection_* is the similarity alone for every method. A method that compares no
-- candidate with a probe picks at random (its expected regret). When
-- M.estimate has scored the candidates (S.estimates), also the funnels:
-- for each estimator E of S.estimates.funnel_by, the method's top k
-- (S.estimates.funnel_k) re-ranked by E, the rest after them in the
-- method's order (M.funnel), as funnel_E_selection_accuracy, _regret, _tau
-- and _ms_per_candidate (the method's cost plus the measured forward
-- passes and scores of E of the k, over all candidates).
function M.evaluate(S, v, opts)
  local probes = M.probes(S, opts and opts.data)
  local gain, est = S.transfer.gain, S.estimates
  -- a method with its own transferability prior (an LPS fit's) adds that
  -- one; the others the bench's (the same fit on the same models)
  local own = v.fitted.transferability and own_prior(S, v.fitted)
  local prior = own and own.prior or (M.has_prior(S) and M.prior(S))
  local sum = {selection_accuracy = 0, selection_regret = 0, selection_tau = 0, random_regret = 0, oracle_accuracy = 0,
               selection_regret_mlp = 0, selection_regret_cnn = 0, task_oracle_regret = gain and 0 or nil,
               selection_ms_per_candidate = 0, selection_probe_ms_per_candidate = S.probe_ms and 0 or nil}
  for _, name in ipairs(est and est.funnel_by or {}) do
    for _, k in ipairs{"accuracy", "regret", "tau", "ms_per_candidate"} do sum[("funnel_%s_selection_%s"):format(name, k)] = 0 end
  end
  if prior then
    for _, k in ipairs{"accuracy", "regret", "tau", "ms_per_candidate"} do sum["prior_selection_" .. k] = 0 end
  end
  local n, nf = 0, {mlp = 0, cnn = 0}
  local pool = pool_ids(S)
  local first = probes[S.splits.retrieval.unseen_tasks[1]].mlp
  local index = index_ms(S, v, pool, first)
  scores(S, v, fresh(first), pool) -- the index of the candidates themselves, before any query is timed
  for _, t in ipairs(S.splits.retrieval.unseen_tasks) do
    local ids, acc = M.candidates(S, t)
    local oracle = gain and M.task_oracle(S, t, ids, acc)
    for _, fam in ipairs{"mlp", "cnn"} do
      local query = fresh(probes[t][fam])
      local t0 = core.now()
      local sc = scores(S, v, query, ids)
      local ms = ms_since(t0) / #ids
      local r = M.rank(sc, acc)
      sum.selection_accuracy = sum.selection_accuracy + r.accuracy
      sum.selection_regret = sum.selection_regret + r.regret
      sum.selection_tau = sum.selection_tau + r.tau
      sum.random_regret = sum.random_regret + r.random_regret
      if oracle then sum.task_oracle_regret = sum.task_oracle_regret + oracle.regret end
      sum.oracle_accuracy = sum.oracle_accuracy + r.best
      sum["selection_regret_" .. fam] = sum["selection_regret_" .. fam] + r.regret
      sum.selection_ms_per_candidate = sum.selection_ms_per_candidate + ms
      if S.probe_ms then sum.selection_probe_ms_per_candidate = sum.selection_probe_ms_per_candidate + S.probe_ms[t][fam] / #ids end
      for _, name in ipairs(est and est.funnel_by or {}) do
        local second, cost = {}, est.cost[t][name]
        for k, id in ipairs(ids) do second[k] = est.scores[t][name][id] end
        local fs, top = M.funnel(sc, second, est.funnel_k)
        local fr, extra = M.rank(fs, acc), 0
        for _, k in ipairs(top) do extra = extra + cost[ids[k]] end
        local key = "funnel_" .. name .. "_selection_"
        for k, x in pairs{accuracy = fr.accuracy, regret = fr.regret, tau = fr.tau, ms_per_candidate = ms + extra / #ids} do
          sum[key .. k] = sum[key .. k] + x
        end
      end
      if prior then
        local ps = {}
        for k, id in ipairs(ids) do ps[k] = prior[id] end
        t0 = core.now()
        local z = zsum(sc, ps)
        local pms = ms + ms_since(t0) / #ids
        local pr = M.rank(z, acc)
        for k, x in pairs{accuracy = pr.accuracy, regret = pr.regret, tau = pr.tau, ms_per_candidate = pms} do
          sum["prior_selection_" .. k] = sum["prior_selection_" .. k] + x
        end
      end
      n, nf[fam] = n + 1, nf[fam] + 1
    end
  end
  local out = {selection_index_ms_per_candidate = index,
               prior_selection_index_ms_per_candidate = prior and index + (own and own.ms or S.prior_ms) or nil}
  for k, x in pairs(sum) do
    local fam = k:match("_(%a+)$")
    out[k] = x / ((fam == "mlp" or fam == "cnn") and nf[fam] or n)
  end
  if prior then out.prior_selection_probe_ms_per_candidate = out.selection_probe_ms_per_candidate end
  return out
end

--- The task oracle on target t (candidates ids, accuracies acc; needs the
-- set's gain matrix): a candidate at random of the source task whose
-- measured gain on t is highest (ties: the smaller task). Returns {source,
-- accuracy (its candidates' mean), regret, tau (of the ranking by the
-- source's gain)}.
function M.task_oracle(S, t, ids, acc)
  local gain = S.transfer.gain
  local src, top, sum_a, cnt, by_gain = nil, -math.huge, {}, {}, {}
  for k, id in ipairs(ids) do
    local s = S.meta[S.byid[id]].task
    if gain[s][t] > top or (gain[s][t] == top and s < src) then src, top = s, gain[s][t] end
    sum_a[s], cnt[s], by_gain[k] = (sum_a[s] or 0) + acc[k], (cnt[s] or 0) + 1, gain[s][t]
  end
  local r = M.rank(by_gain, acc)
  local mean = sum_a[src] / cnt[src]
  return {source = src, accuracy = mean, regret = r.best - mean, tau = r.tau, best = r.best}
end

------------------------------------------------------------------ data-based estimators

--- The estimators of the selection table: each scores one candidate from
-- its penultimate features F and softmax theta on the budget images with
-- labels y (lps.estimators; higher is better). `logme` is the reference
-- LogME (what thuml/LogME's LogME.py gives), `logme_exact` the exact
-- evidence (see lps.estimators.logme).
M.estimators = {
  logme = function(F, _, y) return (estimators.logme(F, y)) end,
  logme_exact = function(F, _, y) return (estimators.logme(F, y, {exact = true})) end,
  leep = function(_, theta, y) return (estimators.leep(theta, y)) end,
  knn = function(F, _, y) return (estimators.knn(F, y)) end,
  linear_probe = function(F, _, y) return (estimators.linear_probe(F, y)) end,
}

--- Options of lps.selection.estimate and their defaults; also data (the
-- Fashion-MNIST directory of the probes' budgets) and log (function(fmt,
-- ...) for progress lines; default none).
M.estimate_defaults = {
  estimators = {"logme", "logme_exact", "leep", "knn", "linear_probe"}, -- names of M.estimators, the rows
  funnel_by = {"logme", "logme_exact"}, -- the estimators that re-rank a weight method's top candidates, one funnel each
  funnel_k = 10,        -- how many top candidates of the weight method it re-ranks
}

-- Candidate i's module for a forward pass: the module of its weight list,
-- or record i of the set's file (open lazily; closed by the caller).
local function module_of(S, i, file)
  local w = S.models[i]
  if w.module then return w.module, false end
  file.ms = file.ms or modelset.open(S.path)
  return file.ms:get(i), true
end

--- Score every candidate of every unseen target with the data-based
-- estimators on the target's budget (S.budgets: the images and labels the
-- probes train on; M.probes makes them). Each pool model's forward pass
-- (lps.estimators.outputs) and each score are timed. Keeps S.estimates =
-- {scores[t][name][id], cost[t][name][id] (ms: the forward pass plus the
-- score), funnel_by, funnel_k} for M.evaluate's funnels, and returns the
-- rows of the selection table (name -> {selection_accuracy,
-- selection_regret, selection_tau, selection_ms_per_candidate,
-- selection_forward_ms_per_candidate, random_regret, oracle_accuracy}, means
-- over the unseen targets), with `random`, `prior` (M.prior alone, with the set's fine-tuning matrix) and, with the set's gains,
-- `task_oracle`, and their order.
function M.estimate(S, opts)
  local o = util.options(opts, M.estimate_defaults, "selection.estimate", {"data", "log"})
  if type(o.estimators) ~= "table" or #o.estimators == 0 then
    error("selection.estimate: estimators must be a non-empty list of names", 2)
  end
  local listed = {}
  for _, name in ipairs(o.estimators) do
    if not M.estimators[name] then
      error(("selection.estimate: unknown estimator '%s' (logme, logme_exact, leep, knn, linear_probe)"):format(tostring(name)), 2)
    end
    listed[name] = true
  end
  if type(o.funnel_by) ~= "table" then error("selection.estimate: funnel_by must be a list of estimator names", 2) end
  for _, name in ipairs(o.funnel_by) do
    if not listed[name] then error(("selection.estimate: funnel_by '%s' is not one of the estimators"):format(tostring(name)), 2) end
  end
  if math.type(o.funnel_k) ~= "integer" or o.funnel_k < 1 then
    error(("selection.estimate: funnel_k must be a positive integer, got %s"):format(tostring(o.funnel_k)), 2)
  end
  if not S.budgets then M.probes(S, o.data) end
  if not S.budgets then error("selection.estimate: the set has no budgets (S.budgets) for its targets", 2) end
  local targets = S.splits.retrieval.unseen_tasks
  local est = {scores = {}, cost = {}, forward = {}, funnel_by = o.funnel_by, funnel_k = o.funnel_k}
  for _, t in ipairs(targets) do
    est.scores[t], est.cost[t], est.forward[t] = {}, {}, {}
    for _, name in ipairs(o.estimators) do est.scores[t][name], est.cost[t][name] = {}, {} end
  end
  local file, done, total = {}, 0, #pool_ids(S)
  for i = 1, S.n do
    local m = S.meta[i]
    if m.in_pool then
      local model, own = module_of(S, i, file)
      for _, t in ipairs(targets) do
        if m.task ~= t then
          local b = S.budgets[t]
          local t0 = core.now()
          local F, theta = estimators.outputs(model, b.x)
          local fwd = ms_since(t0)
          est.forward[t][m.id] = fwd
          for _, name in ipairs(o.estimators) do
            t0 = core.now()
            est.scores[t][name][m.id] = M.estimators[name](F, theta, b.y)
            est.cost[t][name][m.id] = fwd + ms_since(t0)
          end
          F:close(); theta:close() -- C memory the collector hardly sees
        end
      end
      if own then -- a decoded record: its layers' workspaces are C memory
        for _, kid in ipairs(model:children()) do kid:close() end
        model:close()
      end
      done = done + 1
      if o.log and (done % 64 == 0 or done == total) then o.log("selection estimators: %d/%d pool models", done, total) end
    end
  end
  if file.ms then file.ms:close() end
  S.estimates = est
  return M.estimator_rows(S, o.estimators)
end

--- The rows of the selection table from S.estimates (M.estimate), for the
-- estimators `names`, plus `random` and, with the set's gains,
-- `task_oracle`; and their order.
function M.estimator_rows(S, names)
  local est, rows, order = S.estimates, {}, {}
  local targets = S.splits.retrieval.unseen_tasks
  local function add(name, r, more)
    local row = rows[name]
    if not row then row = {}; rows[name], order[#order + 1] = row, name end
    local fields = {selection_accuracy = r.accuracy, selection_regret = r.regret, selection_tau = r.tau}
    for k, v in pairs(more or {}) do fields[k] = v end
    for k, v in pairs(fields) do row[k] = (row[k] or 0) + v / #targets end
  end
  for _, t in ipairs(targets) do
    local ids, acc = M.candidates(S, t)
    for _, name in ipairs(names) do
      local sc, ms, fwd = {}, 0, 0
      for k, id in ipairs(ids) do
        sc[k], ms, fwd = est.scores[t][name][id], ms + est.cost[t][name][id] / #ids, fwd + est.forward[t][id] / #ids
      end
      local r = M.rank(sc, acc)
      add(name, r, {random_regret = r.random_regret, oracle_accuracy = r.best, selection_ms_per_candidate = ms,
                    selection_forward_ms_per_candidate = fwd})
    end
    local none = {}
    for k = 1, #ids do none[k] = 0 / 0 end
    add("random", M.rank(none, acc))
    if M.has_prior(S) then
      local prior, ps = M.prior(S), {}
      for k, id in ipairs(ids) do ps[k] = prior[id] end
      add("prior", M.rank(ps, acc))
    end
    if S.transfer.gain then add("task_oracle", M.task_oracle(S, t, ids, acc)) end
  end
  return rows, order
end

--- Complete the selection table in results (name -> metrics): the rows
-- of M.estimate (est_rows, est_order) and, for each weight method of
-- `funnels` and each estimator of S.estimates.funnel_by, the row
-- `<method>+<estimator>` (its funnel_<estimator>_* metrics, with their
-- *_std, as selection_* ones), and the row `<method>+prior` (its prior_*
-- metrics: the similarity plus M.prior, or the method's own prior). Returns
-- the table's order: the weight methods of `order` with selection metrics, the estimators (and
-- `prior` alone), the methods plus the prior, the funnels, random and
-- task_oracle.
function M.add_rows(S, results, order, est_rows, est_order, funnels)
  local out, tail = {}, {}
  local function copy_row(m, prefix, name)
    local row = {}
    for k, v in pairs(results[m]) do
      local key = k:match("^" .. prefix .. "(selection_.*)$")
      if key then row[key] = v end
    end
    results[name], out[#out + 1] = row, name
  end
  for _, name in ipairs(order) do if results[name] and results[name].selection_regret then out[#out + 1] = name end end
  for _, name in ipairs(est_order) do
    results[name] = est_rows[name]
    if name == "random" or name == "task_oracle" then tail[#tail + 1] = name else out[#out + 1] = name end
  end
  for _, m in ipairs(funnels) do
    if results[m] and results[m].prior_selection_regret then copy_row(m, "prior_", m .. "+prior") end
  end
  for _, by in ipairs(S.estimates.funnel_by) do
    for _, m in ipairs(funnels) do
      local r = results[m]
      if not (r and r["funnel_" .. by .. "_selection_regret"]) then
        error(("selection.add_rows: method '%s' has no funnel results (run selection.estimate first)"):format(tostring(m)), 2)
      end
      copy_row(m, "funnel_" .. by .. "_", m .. "+" .. by)
    end
  end
  return table.move(tail, 1, #tail, #out + 1, out)
end

--- The columns of the selection table.
M.columns = {"selection_accuracy", "selection_regret", "selection_tau", "selection_ms_per_candidate",
             "selection_index_ms_per_candidate", "selection_probe_ms_per_candidate"}

--- The selection table as a markdown section (rows of results in order;
-- funnels of the top k).
function M.markdown(results, order, k)
  return "\n## Model selection\n\nOn each unseen target, the pool models of the other tasks are the candidates; "
    .. "regret = the best candidate's fine-tuned accuracy minus the pick's, tau = Kendall tau-b of the ranking with "
    .. "the fine-tuned accuracies (means over targets). Weight methods compare a probe model trained on the "
    .. "target's budget with the candidates; the estimators score each candidate's outputs on the same budget "
    .. "images (`logme`: the reference LogME, as thuml/LogME computes it, `logme_exact`: the exact evidence); "
    .. "`<method>+logme` re-ranks the method's top " .. k .. " by LogME (`+logme_exact`: by the exact evidence), "
    .. "the rest after them in the method's order; `prior`: a per-model transferability prior predicted from the "
    .. "candidate's weight statistics by a ridge regression fitted on the training targets' fine-tuning results "
    .. "(lps.selection.prior), alone and added to a method's similarity as `<method>+prior` (z-scores over the "
    .. "candidates); `lps+prior` and `lps_hybrid+prior` add LPS's own prior, the same fit made by LPS's training "
    .. "on its training models (lualps.similarity.prior; what a saved model's sim:select ranks by). "
    .. "Milliseconds per candidate: a query's measured cost (estimators: the forward pass "
    .. "and the score), the weight index built beforehand, and training the probe, apart.\n\n"
    .. report.markdown(results, order, M.columns)
end

return M
