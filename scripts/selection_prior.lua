#!/usr/bin/env lua5.4
-- Prototype (issue 19, selection): how much of model-selection regret a
-- per-model transferability prior removes, alone and added to a method's
-- similarity (lps, lps_hybrid, template matching). On ModelSet-Hetero's
-- retrieval split, with lps.selection's candidates and probes: every prior
-- is learned from the training tasks' targets only (ret.train_tasks) and
-- evaluated on the unseen targets (ret.unseen_tasks).
--   centered accuracy c[id][t] = finetune[id][t] - mean over t's candidates
--   measured prior  p[id] = mean over training targets t ~= task(id) of
--                   c[id][t] (needs each zoo model fine-tuned on them)
--   group prior     mean of p over the training tasks' pool models of the
--                   candidate's family x optimizer, or family alone
--   ridge prior     ridge regression of p on the LPS embedding (fitted on
--                   ret.train per seed), trained on the training tasks' pool
--                   models and predicted for every candidate;
--                   family_ridge: the family's mean plus a ridge of the rest;
--                   stats_ridge: the same ridge on the weight-statistics
--                   baseline's features (seed-free)
-- Also the bounds: the task oracle (lps.selection.task_oracle), the least
-- regret of any score constant within a source task, and within a source
-- task and family. Combined score: z(similarity) + w z(prior), z-scored over
-- each target's candidates, for w in {0, 1/4, 1/2, 1, 2, 4, inf} (w = 0
-- reproduces lps.selection's selection_regret). Regret of tied top scores:
-- their mean. Prints mean ± sd [per seed]; writes --out as JSON.
--   lua5.4 scripts/selection_prior.lua [--set build/modelset_hetero.lpsm] [--seeds 3] [--methods lps,lps_hybrid,template_matching]
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require "cjson"
local core, eval = lps.core, lps.eval
local B, sel = lps.benchmark, lps.selection
local sets = require "lualps.bench.set"

local p = argparse("selection_prior", "Selection regret with a per-model transferability prior")
p:option("--set", "model set", "build/modelset_hetero.lpsm")
p:option("--seeds", "LPS seeds", "3"):convert(math.tointeger)
p:option("--methods", "weight methods", "lps,lps_hybrid,template_matching")
p:option("--alpha", "ridge strength (times trace / dim)", "1e-3"):convert(tonumber)
p:option("--out", "JSON of the numbers", "selection_prior.json")
p:option("--data", "Fashion-MNIST directory")
local a = p:parse()
lps.set_num_threads(1)
local function log(fmt, ...) io.stderr:write(os.date("%H:%M:%S "), fmt:format(...), "\n") end

local S = B.load(a.set)
local ret = S.splits.retrieval
local ft = S.transfer.finetune
local train_t, unseen = ret.train_tasks, ret.unseen_tasks
local is_train = {}
for _, t in ipairs(train_t) do is_train[t] = true end
local pool = {}
for i = 1, S.n do if S.meta[i].in_pool then pool[#pool + 1] = S.meta[i].id end end
local function meta(id) return S.meta[S.byid[id]] end

-- centered accuracies and the measured prior (training targets only)
local colmean = {}
for t = 1, #S.splits.tasks do
  local s, n = 0, 0
  for _, id in ipairs(pool) do if meta(id).task ~= t then s, n = s + ft[id][t], n + 1 end end
  colmean[t] = s / n
end
local prior = {}
for _, id in ipairs(pool) do
  local s, n = 0, 0
  for _, t in ipairs(train_t) do
    if t ~= meta(id).task then s, n = s + ft[id][t] - colmean[t], n + 1 end
  end
  prior[id] = s / n
end
-- the same on the unseen targets (to check how well a prior transfers)
local prior_unseen = {}
for _, id in ipairs(pool) do
  local s, n = 0, 0
  for _, t in ipairs(unseen) do if t ~= meta(id).task then s, n = s + ft[id][t] - colmean[t], n + 1 end end
  prior_unseen[id] = s / n
end
local function group_prior(key)
  local s, n = {}, {}
  for _, id in ipairs(pool) do
    local m = meta(id)
    if is_train[m.task] then local k = key(m); s[k], n[k] = (s[k] or 0) + prior[id], (n[k] or 0) + 1 end
  end
  local out = {}
  for _, id in ipairs(pool) do local k = key(meta(id)); out[id] = s[k] and s[k] / n[k] or 0 end
  return out, s, n
end
local fam_opt, gs, gn = group_prior(function(m) return m.family .. "/" .. m.optimizer end)
local fam_only = group_prior(function(m) return m.family end)

-- Regret of scores (higher better) with ties at the top averaged; tau.
local function regret(scores, acc)
  local top, best, mean = -math.huge, -math.huge, 0
  for k, x in ipairs(scores) do if x > top then top = x end; best = math.max(best, acc[k]); mean = mean + acc[k] / #acc end
  local s, n = 0, 0
  for k, x in ipairs(scores) do if x == top then s, n = s + acc[k], n + 1 end end
  return best - s / n, best - mean
end
local function zs(list)
  local m, v = 0, 0
  for _, x in ipairs(list) do m = m + x / #list end
  for _, x in ipairs(list) do v = v + (x - m) ^ 2 / #list end
  local sd = math.sqrt(v)
  local out = {}
  for k, x in ipairs(list) do out[k] = sd > 0 and (x - m) / sd or 0 end
  return out
end

local results = {}
local function mean_over_targets(score_of) -- score_of(t, ids) -> scores
  local s, r = 0, 0
  for _, t in ipairs(unseen) do
    local ids, acc = sel.candidates(S, t)
    local g, rr = regret(score_of(t, ids), acc)
    s, r = s + g / #unseen, r + rr / #unseen
  end
  return s, r
end
local function from(pr) return function(_, ids) local o = {} for k, id in ipairs(ids) do o[k] = pr[id] end return o end end
results.random = select(2, mean_over_targets(from(prior)))
results.prior_measured = mean_over_targets(from(prior))
results.prior_family_optimizer = mean_over_targets(from(fam_opt))
results.prior_family = mean_over_targets(from(fam_only))
results.prior_measured_on_unseen_targets_oracle = mean_over_targets(from(prior_unseen))
-- oracles
do
  local to, tp = 0, 0
  for _, t in ipairs(unseen) do
    local ids, acc = sel.candidates(S, t)
    local o = sel.task_oracle(S, t, ids, acc)
    to = to + o.regret / #unseen
    -- the oracle's source task, then the measured prior within it
    local sc = {}
    for k, id in ipairs(ids) do sc[k] = meta(id).task == o.source and prior[id] or -math.huge end
    tp = tp + regret(sc, acc) / #unseen
  end
  results.task_oracle, results.task_oracle_plus_prior = to, tp
  -- the least regret of any score constant within a source task (a pure
  -- task similarity): the source task whose candidates' mean accuracy is highest
  local lb, lbf = 0, 0
  for _, t in ipairs(unseen) do
    local ids, acc = sel.candidates(S, t)
    local best, sum, cnt, fs, fc = -math.huge, {}, {}, {}, {}
    for k, id in ipairs(ids) do
      local m = meta(id)
      best = math.max(best, acc[k])
      sum[m.task], cnt[m.task] = (sum[m.task] or 0) + acc[k], (cnt[m.task] or 0) + 1
      local key = m.task .. m.family
      fs[key], fc[key] = (fs[key] or 0) + acc[k], (fc[key] or 0) + 1
    end
    local top, topf = -math.huge, -math.huge
    for s, v in pairs(sum) do top = math.max(top, v / cnt[s]) end
    for s, v in pairs(fs) do topf = math.max(topf, v / fc[s]) end
    lb, lbf = lb + (best - top) / #unseen, lbf + (best - topf) / #unseen
  end
  results.best_task_bound, results.best_task_and_family_bound = lb, lbf
end
local groups = {}
for k in pairs(gs) do groups[#groups + 1] = ("%s %.4f (n %d)"):format(k, gs[k] / gn[k], gn[k]) end
table.sort(groups)
results.groups = groups
do -- how well the measured prior on training targets predicts it on unseen targets
  local x, y = {}, {}
  for _, id in ipairs(pool) do x[#x + 1], y[#y + 1] = prior[id], prior_unseen[id] end
  results.prior_train_vs_unseen_tau = eval.kendall_tau(x, y)
end
for k, v in pairs(results) do if type(v) == "number" then log("%-40s %.4f", k, v) end end
for _, g in ipairs(groups) do log("group %s", g) end

-- ridge of y on rows of X (n x e), predictions for Xt
local function ridge(X, y, Xt, alpha) return eval.ridge_predict(X, y, Xt, alpha) end

local LPS = {families = {"mlp", "cnn"}, relations = "transfer", epochs = 30}
local function lps_with(changes, name)
  local o = {name = name}
  for _, t in ipairs{LPS, changes or {}} do for k, v in pairs(t) do o[k] = v end end
  return B.methods.lps(o)
end
local make = {
  lps = function() return lps_with({}, "lps") end,
  lps_hybrid = function() return lps_with({hybrid = true}, "lps_hybrid") end,
  template_matching = function() return B.methods.template_matching() end,
}
-- a prior from weight statistics (the stats baseline's features, which do
-- read the family), the same ridge: learned from weights, seed-free
local sprior = {}
do
  local st = B.methods.features("stats", {standardize = B.gather(S, S.splits.classification.train)})
  local vs = sets.view(S, st)
  local ytr, tp = {}, {}
  for _, id in ipairs(pool) do if is_train[meta(id).task] then tp[#tp + 1], ytr[#ytr + 1] = id, prior[id] end end
  local pred = ridge(vs.features(tp), ytr, vs.features(pool), a.alpha)
  for k, id in ipairs(pool) do sprior[id] = pred[k] end
  local xs, ys = {}, {}
  for _, id in ipairs(pool) do if not is_train[meta(id).task] then xs[#xs + 1], ys[#ys + 1] = sprior[id], prior[id] end end
  results.stats_ridge_tau_unseen_pool = eval.kendall_tau(xs, ys)
  results.prior_stats_ridge = mean_over_targets(from(sprior))
  log("stats ridge prior: tau on unseen tasks' pool models %.3f, regret alone %.4f", results.stats_ridge_tau_unseen_pool,
    results.prior_stats_ridge)
end
local W = {0, 0.25, 0.5, 1, 2, 4, math.huge}
local probes = a.seeds > 0 and sel.probes(S, a.data)
local per_seed = {}
local train_pool, unseen_pool = {}, {}
for _, id in ipairs(pool) do
  if is_train[meta(id).task] then train_pool[#train_pool + 1] = id else unseen_pool[#unseen_pool + 1] = id end
end
local function fresh(w) local c = {} for k, v in pairs(w) do c[k] = v end return c end
for seed = 1, a.seeds do
  local t0 = lps.now()
  local vl = sets.view(S, sets.fitted(S, make.lps(), ret.train, seed, "retrieval"))
  log("seed %d: lps fitted (%.0f s)", seed, lps.now() - t0)
  -- ridge prior from the LPS embedding
  local ytr = {}
  for k, id in ipairs(train_pool) do ytr[k] = prior[id] end
  local pred = ridge(vl.features(train_pool), ytr, vl.features(pool), a.alpha)
  local rprior = {}
  for k, id in ipairs(pool) do rprior[id] = pred[k] end
  -- the family's mean plus a ridge of the residual (the embedding is meant to be family-blind)
  local yres = {}
  for k, id in ipairs(train_pool) do yres[k] = prior[id] - fam_only[id] end
  local pres = ridge(vl.features(train_pool), yres, vl.features(pool), a.alpha)
  local fprior = {}
  for k, id in ipairs(pool) do fprior[id] = fam_only[id] + pres[k] end
  local xs, ys = {}, {}
  for _, id in ipairs(unseen_pool) do xs[#xs + 1], ys[#ys + 1] = rprior[id], prior[id] end
  local r = {ridge_tau_unseen_pool = eval.kendall_tau(xs, ys)}
  r.prior_ridge = mean_over_targets(from(rprior))
  r.prior_family_plus_ridge = mean_over_targets(from(fprior))
  do
    local x2 = {}
    for _, id in ipairs(unseen_pool) do x2[#x2 + 1] = fprior[id] end
    r.family_plus_ridge_tau_unseen_pool = eval.kendall_tau(x2, ys)
  end
  log("seed %d: ridge prior tau on unseen tasks' pool models %.3f, regret alone %.4f", seed, r.ridge_tau_unseen_pool, r.prior_ridge)
  for m in a.methods:gmatch("[^,]+") do
    local v = m == "lps" and vl or (m == "template_matching" and sets.view(S, make[m]())
      or sets.view(S, sets.fitted(S, make[m](), ret.train, seed, "retrieval")))
    local f = v.fitted
    local sims = {} -- sims[t][fam] = list over candidates
    for _, t in ipairs(unseen) do
      local ids = sel.candidates(S, t)
      sims[t] = {}
      for _, fam in ipairs{"mlp", "cnn"} do
        local q = fresh(probes[t][fam])
        local out
        if f.embed and v.features then
          local e = f:embed({q})
          e:div_(math.max(e:norm(), 1e-12))
          out = core.matmul(e, v.features(ids), false, true)
        else
          local models = {}
          for k, id in ipairs(ids) do models[k] = S.models[S.byid[id]] end
          out = f:similarity({q}, models)
        end
        local l = out:reshape(-1):totable()
        for k, x in ipairs(l) do if x ~= x then l[k] = -1e9 end end
        sims[t][fam] = l
      end
    end
    for name, pr in pairs{ridge = rprior, family_ridge = fprior, stats_ridge = sprior, family = fam_only,
                         family_optimizer = fam_opt, measured = prior} do
      for _, w in ipairs(W) do
        local s = 0
        for _, t in ipairs(unseen) do
          local ids, acc = sel.candidates(S, t)
          local pz = {}
          for k, id in ipairs(ids) do pz[k] = pr[id] end
          pz = zs(pz)
          for _, fam in ipairs{"mlp", "cnn"} do
            local sz, sc = zs(sims[t][fam]), {}
            for k = 1, #ids do sc[k] = w == math.huge and pz[k] or sz[k] + w * pz[k] end
            s = s + regret(sc, acc) / (2 * #unseen)
          end
        end
        r[("%s+%s w=%s"):format(m, name, w == math.huge and "inf" or tostring(w))] = s
      end
    end
    log("seed %d %s: alone %.4f, +ridge(w=1) %.4f, +family_optimizer(w=1) %.4f, +measured(w=1) %.4f", seed, m,
      r[m .. "+ridge w=0"], r[m .. "+ridge w=1"], r[m .. "+family_optimizer w=1"], r[m .. "+measured w=1"])
  end
  per_seed[seed] = r
  log("seed %d done (%.0f s)", seed, lps.now() - t0)
end
results.per_seed = per_seed
results.summary = a.seeds > 0 and B.mean_std(per_seed) or {}
local keys = {}
for k in pairs(results.summary) do if not k:match("_std$") then keys[#keys + 1] = k end end
table.sort(keys)
for _, k in ipairs(keys) do
  local vals = {}
  for s = 1, a.seeds do vals[s] = ("%.4f"):format(per_seed[s][k]) end
  print(("%-45s %.4f ± %.4f  [%s]"):format(k, results.summary[k], results.summary[k .. "_std"], table.concat(vals, " ")))
end
local f = assert(io.open(a.out, "w"))
f:write(cjson.encode(results))
f:close()
