#!/usr/bin/env lua5.4
-- The relation prior (lualps/bench/relation_prior.lua) on a validation
-- split that no protocol tests: the *training* tasks of split (b), in
-- --folds folds. For each fold, the prior is fitted on the other folds'
-- tasks and read on the fold's; template matching (unlearned, needs no
-- fit) gives the task similarity. Prints, per fold and on average, the
-- Kendall tau with the transfer gain of the similarity, of the prior, and
-- of z(similarity) + w z(prior) for each --weights w (the protocols use
-- w = 1), over the fold's task pairs and per target.
--   lua5.4 scripts/relation_prior_validation.lua --set build/modelset_hetero.lpsm
package.path = "./?.lua;./?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local argparse = require "argparse"
local lps = require "lualps"
local B = require "lualps.bench.set"
local RP = require "lualps.bench.relation_prior"

local p = argparse("relation_prior_validation.lua", "The relation prior, cross-fitted over the training tasks")
p:option("--set", "model set (with its .splits.json and .transfer.json)", "build/modelset_hetero.lpsm")
p:option("--folds", "folds of the training tasks", "3"):convert(math.tointeger)
p:option("--weights", "weights of the prior's z-scores, comma-separated", "0.5,1,2")
p:option("--seed", "seed of the folds", "1"):convert(math.tointeger)
local args = p:parse()
local weights = {}
for w in args.weights:gmatch("[^,]+") do weights[#weights + 1] = tonumber(w) end

local S = B.load(args.set)
if not (S.transfer and S.transfer.gain) then error("no transfer gains beside " .. args.set, 0) end
local gain = S.transfer.gain
local train = {}
for k, t in ipairs(S.splits.retrieval.train_tasks) do train[k] = t end
local g = lps.generator(args.seed)
for i = #train, 2, -1 do local j = g:random(i); train[i], train[j] = train[j], train[i] end
local tm = lps.benchmark.methods.template_matching()

local function tau(x, y)
  local a, b = {}, {}
  for i = 1, #x do if x[i] == x[i] then a[#a + 1], b[#b + 1] = x[i], y[i] end end
  return #a >= 3 and lps.eval.kendall_tau(a, b) or 0 / 0
end

-- the mean template-matching score between two tasks' models (not a model with itself)
local function task_similarity(tasks)
  local in_fold, ids = {}, {}
  for _, t in ipairs(tasks) do in_fold[t] = true end
  for i = 1, S.n do if in_fold[S.meta[i].task] then ids[#ids + 1] = i end end
  local models = {}
  for k, i in ipairs(ids) do models[k] = S.models[i] end
  local M = tm:similarity(models, models)
  local sum, cnt = {}, {}
  for _, s in ipairs(tasks) do
    sum[s], cnt[s] = {}, {}
    for _, t in ipairs(tasks) do sum[s][t], cnt[s][t] = 0, 0 end
  end
  for a, i in ipairs(ids) do
    for b, j in ipairs(ids) do
      local v = M:get(a, b)
      if a ~= b and v == v and v > -math.huge then
        local s, t = S.meta[i].task, S.meta[j].task
        sum[s][t], cnt[s][t] = sum[s][t] + v, cnt[s][t] + 1
      end
    end
  end
  for _, s in ipairs(tasks) do for _, t in ipairs(tasks) do sum[s][t] = sum[s][t] / math.max(cnt[s][t], 1) end end
  return sum
end

local names = {"similarity", "prior"}
for _, w in ipairs(weights) do names[#names + 1] = ("z + %g z(prior)"):format(w) end
local total = {pairs = {}, per_target = {}}
print(("%d training tasks in %d folds; template matching's task similarity"):format(#train, args.folds))
for f = 1, args.folds do
  local fold, rest = {}, {}
  for k, t in ipairs(train) do table.insert((k - 1) % args.folds + 1 == f and fold or rest, t) end
  table.sort(fold)
  local prior = RP.fit(S, rest)
  local tsim = task_similarity(fold)
  local a, q, y = {}, {}, {}
  for i, s in ipairs(fold) do
    for j = i + 1, #fold do
      local t = fold[j]
      a[#a + 1] = (tsim[s][t] + tsim[t][s]) / 2
      q[#q + 1] = (prior.r[s] + prior.c[t] + prior.r[t] + prior.c[s]) / 2
      y[#y + 1] = (gain[s][t] + gain[t][s]) / 2
    end
  end
  local row = {tau(a, y), tau(q, y)}
  for _, w in ipairs(weights) do
    local za, zq, m = RP.z(a), RP.z(q), {}
    for k = 1, #za do m[k] = za[k] + w * zq[k] end
    row[#row + 1] = tau(m, y)
  end
  local per = {}
  for k = 1, #names do per[k] = 0 end
  for _, t in ipairs(fold) do
    local x, r, gt = {}, {}, {}
    for _, s in ipairs(fold) do if s ~= t then x[#x + 1], r[#r + 1], gt[#gt + 1] = tsim[t][s], prior.r[s], gain[s][t] end end
    local vals = {tau(x, gt), tau(r, gt)}
    for _, w in ipairs(weights) do
      local zx, zr, m = RP.z(x), RP.z(r), {}
      for k = 1, #zx do m[k] = zx[k] + w * zr[k] end
      vals[#vals + 1] = tau(m, gt)
    end
    for k = 1, #names do per[k] = per[k] + vals[k] / #fold end
  end
  for k = 1, #names do
    total.pairs[k] = (total.pairs[k] or 0) + row[k] / args.folds
    total.per_target[k] = (total.per_target[k] or 0) + per[k] / args.folds
  end
  print(("fold %d (%d tasks, prior fitted on %d):"):format(f, #fold, #rest))
  for k, n in ipairs(names) do print(("  %-20s tau %.3f   per target %.3f"):format(n, row[k], per[k])) end
end
print("mean over folds:")
for k, n in ipairs(names) do print(("  %-20s tau %.3f   per target %.3f"):format(n, total.pairs[k], total.per_target[k])) end
