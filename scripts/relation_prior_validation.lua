#!/usr/bin/env lua5.4
-- The relation scores of lualps/bench/relation_prior.lua on a validation
-- split that no protocol tests: the *training* tasks of split (b) (the
-- relation protocols read the unseen ones), their MLPs and CNNs as the
-- protocol reads them. Template matching (unlearned, no fit) gives the
-- task similarity and each task's coherence (its models' mean score among
-- themselves, never a model with itself). Prints the Kendall tau with the
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
local protocols = require "lualps.bench.protocols"
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
local gain, ret = S.transfer.gain, S.splits.retrieval
-- the models the relation protocol reads: the MLPs and CNNs of split (b),
-- its training models for the training tasks, queries and gallery for the unseen ones
local tasks, ids = args.split == "train" and ret.train_tasks or ret.unseen_tasks, {}
if args.split == "train" then
  for _, id in ipairs(ret.train) do ids[#ids + 1] = id end
else
  for _, list in ipairs{ret.query, ret.gallery} do for _, id in ipairs(list) do ids[#ids + 1] = id end end
end
local acc, n = {}, {}
for _, id in ipairs(ids) do
  local m = S.meta[S.byid[id]]
  acc[m.task], n[m.task] = (acc[m.task] or 0) + m.test_accuracy, (n[m.task] or 0) + 1
end
for t, k in pairs(n) do acc[t] = acc[t] / k end

-- template matching's task similarity, as the protocol forms it
local view = B.view(S, lps.benchmark.methods.template_matching())
local tsim = protocols.task_similarity(S, view, ids, #S.splits.tasks)
local tau = RP.tau
local sim, coh, diff, g = {}, {}, {}, {}
for i, s in ipairs(tasks) do
  for j = i + 1, #tasks do
    local t = tasks[j]
    sim[#sim + 1], coh[#coh + 1] = (tsim[s][t] + tsim[t][s]) / 2, -(tsim[s][s] + tsim[t][t])
    diff[#diff + 1], g[#g + 1] = -(acc[s] + acc[t]), (gain[s][t] + gain[t][s]) / 2
  end
end
local coh_t, acc_t = {}, {}
for k, t in ipairs(tasks) do coh_t[k], acc_t[k] = tsim[t][t], acc[t] end
print(("%s tasks: %d (%d pairs, %d MLPs and CNNs); template matching; coherence against mean test accuracy over tasks: tau %.3f")
  :format(args.split, #tasks, #g, #ids, tau(coh_t, acc_t)))
print(("  %-30s %.3f"):format("similarity", tau(sim, g)))
print(("  %-30s %.3f"):format("coherence term alone", tau(coh, g)))
for _, w in ipairs(weights) do
  local zs, zc, m = RP.z(sim), RP.z(coh), {}
  for k = 1, #zs do m[k] = zs[k] + w * zc[k] end
  local note = w == 1 and (" (relation_prior.coherence_scores: %.3f)"):format(tau(RP.coherence_scores(tsim, tasks), g)) or ""
  print(("  %-30s %.3f%s"):format(("z(sim) + %g z(coherence)"):format(w), tau(m, g), note))
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
