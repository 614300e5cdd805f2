#!/usr/bin/env lua5.4
-- The relation scores of lualps/bench/relation_prior.lua on a validation
-- split that no protocol tests: the *training* tasks of split (b) (the
-- relation protocols read the unseen ones). Template matching (unlearned,
-- no fit) gives the task similarity and each task's coherence (its
-- models' mean score among themselves). Prints the Kendall tau with the
-- transfer gain over the tasks' unordered pairs of: the similarity, the
-- coherence term alone, z(similarity) + w z(-(coh_s + coh_t)) for each
-- --weights w (the protocols use w = 1), and, for comparison, the tasks'
-- recorded difficulty (mean test accuracy: data, not weights); per target
-- (sources ranked by similarity, + w z(-coh_source)) too.
--   lua5.4 scripts/relation_prior_validation.lua --set build/modelset_hetero.lpsm [--split unseen]
package.path = "./?.lua;./?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local argparse = require "argparse"
local lps = require "lualps"
local B = require "lualps.bench.set"
local RP = require "lualps.bench.relation_prior"

local p = argparse("relation_prior_validation.lua", "Relation scores with task coherence on the training tasks")
p:option("--set", "model set (with its .splits.json and .transfer.json)", "build/modelset_hetero.lpsm")
p:option("--weights", "weights of the coherence term, comma-separated", "0.5,1,2")
p:option("--split", "train (validation) or unseen (the protocols' tasks: read only)", "train")
  :choices{"train", "unseen"}
local args = p:parse()
local weights = {}
for w in args.weights:gmatch("[^,]+") do weights[#weights + 1] = tonumber(w) end

local S = B.load(args.set)
if not (S.transfer and S.transfer.gain) then error("no transfer gains beside " .. args.set, 0) end
local gain = S.transfer.gain
local tasks = S.splits.retrieval[args.split == "train" and "train_tasks" or "unseen_tasks"]
local in_split, ids, acc, n = {}, {}, {}, {}
for _, t in ipairs(tasks) do in_split[t] = true end
for i = 1, S.n do
  local m = S.meta[i]
  if in_split[m.task] then
    ids[#ids + 1] = i
    acc[m.task], n[m.task] = (acc[m.task] or 0) + m.test_accuracy, (n[m.task] or 0) + 1
  end
end
for t, k in pairs(n) do acc[t] = acc[t] / k end

-- template matching's task similarity (a model never with itself; pairs it cannot compare left out)
local models = {}
for k, i in ipairs(ids) do models[k] = S.models[i] end
local M = lps.benchmark.methods.template_matching():similarity(models, models)
local tsim, cnt = {}, {}
for _, s in ipairs(tasks) do
  tsim[s], cnt[s] = {}, {}
  for _, t in ipairs(tasks) do tsim[s][t], cnt[s][t] = 0, 0 end
end
for a, i in ipairs(ids) do
  for b, j in ipairs(ids) do
    local v = M:get(a, b)
    if a ~= b and v == v and v > -math.huge then
      local s, t = S.meta[i].task, S.meta[j].task
      tsim[s][t], cnt[s][t] = tsim[s][t] + v, cnt[s][t] + 1
    end
  end
end
for _, s in ipairs(tasks) do
  for _, t in ipairs(tasks) do tsim[s][t] = cnt[s][t] > 0 and tsim[s][t] / cnt[s][t] or 0 / 0 end
end

-- Kendall tau over the pairs where x is finite (NaN with fewer than 3)
local function tau(x, y)
  local a, b = {}, {}
  for i = 1, #x do if x[i] == x[i] and math.abs(x[i]) < math.huge then a[#a + 1], b[#b + 1] = x[i], y[i] end end
  return #a >= 3 and lps.eval.kendall_tau(a, b) or 0 / 0
end
local sim, coh, diff, g = {}, {}, {}, {}
for i, s in ipairs(tasks) do
  for j = i + 1, #tasks do
    local t = tasks[j]
    sim[#sim + 1], coh[#coh + 1] = (tsim[s][t] + tsim[t][s]) / 2, -(tsim[s][s] + tsim[t][t])
    diff[#diff + 1], g[#g + 1] = -(acc[s] + acc[t]), (gain[s][t] + gain[t][s]) / 2
  end
end
local coh_acc = {}
for k, t in ipairs(tasks) do coh_acc[k] = tsim[t][t] end
local accs = {}
for k, t in ipairs(tasks) do accs[k] = acc[t] end
print(("%s tasks: %d (%d pairs); template matching; coherence against mean test accuracy over tasks: tau %.3f")
  :format(args.split, #tasks, #g, tau(coh_acc, accs)))
print(("  %-30s %.3f"):format("similarity", tau(sim, g)))
print(("  %-30s %.3f"):format("coherence term alone", tau(coh, g)))
for _, w in ipairs(weights) do
  local zs, zc, m = RP.z(sim), RP.z(coh), {}
  for k = 1, #zs do m[k] = zs[k] + w * zc[k] end
  print(("  %-30s %.3f"):format(("z(sim) + %g z(coherence)"):format(w), tau(m, g)))
end
print(("  %-30s %.3f"):format("recorded difficulty (data)", tau(diff, g)))
-- per target: the target's row, sources ranked by similarity (+ w z(-coh_source))
for _, w in ipairs{0, table.unpack(weights)} do
  local per, n_per = 0, 0
  for _, t in ipairs(tasks) do
    local x, c, y = {}, {}, {}
    for _, s in ipairs(tasks) do if s ~= t then x[#x + 1], c[#c + 1], y[#y + 1] = tsim[t][s], -tsim[s][s], gain[s][t] end end
    local zx, zc = RP.z(x), RP.z(c)
    for k = 1, #zx do zx[k] = zx[k] + w * zc[k] end
    local v = tau(zx, y)
    if v == v then per, n_per = per + v, n_per + 1 end
  end
  print(("  per target, %-18s %.3f"):format(("+ %g z(coherence)"):format(w), per / math.max(n_per, 1)))
end
