#!/usr/bin/env lua5.4
-- Dream options of probe matching, compared on a validation split that no
-- protocol of ModelSet-Hetero 2 tests: the *training* tasks of the
-- retrieval split (b). Queries are those tasks' ResNets (the held-out
-- family's stand-in) and one MLP and one CNN per task; the gallery is the
-- next --per-family MLPs and CNNs of each task. Each query reads the
-- gallery's dreams (probe_matching{directed = true}; --direction rev: the
-- gallery reads the query's, both: their mean; --tm w mixes in template
-- matching as the hybrid's anchor does); rank-1 and mAP by task.
-- --rules reads the ResNets' logits on the gallery's dreams under other
-- rules than the softmax block (each gallery model's dreams one batch when
-- the first variant adapts batch norm, as the probe reads them), and sorts
-- their rank-1 misses. The calibrated rules take away what a reader
-- answers to every gallery dream (its mean per class): none reads better
-- than the softmax block (rank-1 0.478; pmi 0.467, softmax - mean 0.456,
-- logits z 0.433): a 2-class ResNet's confidence on any dream is not a
-- per-class bias.
--   lua5.4 scripts/probe_validation.lua --set build/modelset_hetero.lpsm \
--     --variant base= --variant lr05=lr:0.05 --variant soft=temperature:4,steps:40
-- (--variant smooth1=smooth:1 --variant jitter1=jitter:1: smoothing and jitter, no gain beyond noise;
--  --variant fixed=adapt_bn:false: ResNets reading by their running statistics, rank-1 0.344 against 0.478;
--  --direction rev --variant sp01=stat_prior:0.1: DeepInversion's prior on the ResNets' dreams, 0.178 against 0.144;
--  --residual: the hybrid's learned term on the ResNets, rank-1 0.389, 0.356, 0.422 over three seeds against its anchor's
--  0.478, hence bn_residual = false (among themselves, leave-one-out: 0.233, 0.222, 0.233 with it, 0.233 without); --hubs: the ResNets' wrong rank-1 picks are mostly CNNs (34 of 47), and
--  calibrating by other tasks' ResNets lifts rank-1 by 0.06-0.09 at 2-4 gallery models per task and family)
package.path = "./?.lua;./?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local argparse = require "argparse"
local lps = require "lualps"
local B = require "lualps.bench.set"
local protocols = require "lualps.bench.protocols"

local p = argparse("probe_validation.lua", "Dream options of probe matching on the training tasks' models")
p:option("--set", "model set (with its .splits.json)", "build/modelset_hetero.lpsm")
p:option("--per-family", "gallery models per training task and family", "2"):convert(math.tointeger)
p:option("--variant", "NAME=key:value,... (dream options; repeatable)"):count("*")
p:option("--direction", "fwd: the query reads the gallery's dreams; rev: the gallery reads the query's; both: their mean", "fwd")
  :choices{"fwd", "rev", "both"}
p:option("--tm", "weight of template matching mixed into each score, (1 - w) probe + w TM (the hybrid's anchor)", "0")
  :convert(tonumber)
p:flag("--resnet-pairs", "also: the ResNet queries among themselves (leave-one-out), the anchor of two batch-norm models "
  .. "(1 - q) TM + q (both directions' mean) at several q (the hybrid's probe_bn_both)")
p:flag("--rules", "also: the ResNet queries under other reading rules of the first variant's dreams, and their misses")
p:flag("--residual", "also: the hybrid (lps_hybrid of recipes/eval_hetero.lua, fitted on the retrieval split's training "
  .. "models, seeds 1-3) on the ResNet queries, with the learned term for batch-norm models (bn_residual) and without")
p:flag("--hubs", "also: the ResNet queries' rank-1 picks by the gallery model's family and class count, and each "
  .. "score calibrated by reference readers (the ResNets of the other tasks: score - lambda x their mean)")
local args = p:parse()

local function parse_variant(text)
  local name, rest = text:match("^([%w_]+)=(.*)$")
  if not name then error("--variant: expected NAME=key:value,..., got " .. text, 0) end
  local opts = {}
  for k, v in rest:gmatch("([%w_]+):([^,]+)") do
    if v == "true" or v == "false" then opts[k] = v == "true" else opts[k] = math.tointeger(tonumber(v)) or tonumber(v) or v end
  end
  return name, opts
end
local variants = {}
for _, v in ipairs(#args.variant > 0 and args.variant or {"base="}) do
  local name, opts = parse_variant(v)
  variants[#variants + 1] = {name = name, opts = opts}
end

local S = B.load(args.set)
local train_task = {}
for _, t in ipairs(S.splits.retrieval.train_tasks) do train_task[t] = true end
local per = {}
for i = 1, S.n do
  local m = S.meta[i]
  if train_task[m.task] then
    per[m.task] = per[m.task] or {mlp = {}, cnn = {}, resnet = {}}
    if per[m.task][m.family] then table.insert(per[m.task][m.family], m.id) end
  end
end
local resnets, others, gallery = {}, {}, {} -- model ids
for t = 1, #S.splits.tasks do
  local f = per[t]
  if f then
    for _, id in ipairs(f.resnet) do resnets[#resnets + 1] = id end
    for _, fam in ipairs{"mlp", "cnn"} do
      others[#others + 1] = f[fam][1]
      for j = 2, 1 + args.per_family do gallery[#gallery + 1] = f[fam][j] end
    end
  end
end

local rmodels, rlabels = B.gather(S, resnets)
local gmodels, glabels = B.gather(S, gallery)

print(("validation: %d training tasks; %d ResNet and %d MLP/CNN queries; gallery %d MLPs and CNNs")
  :format(#S.splits.retrieval.train_tasks, #resnets, #others, #gallery))
print(("%-14s %10s %10s %10s %10s %8s"):format("variant", "resnet r1", "resnet map", "mlpcnn r1", "mlpcnn map", "seconds"))
for _, v in ipairs(variants) do
  local t0 = lps.now()
  local pm = lps.similarity.probe.matcher(v.opts)
  -- as the protocols see a method: NaN (not comparable) ranks last
  local sim = ({fwd = function(a, b) return pm.directed(a, b) end,
               rev = function(a, b) return pm.directed(b, a):t() end,
               both = function(a, b) return pm.scores(a, b) end})[args.direction]
  local tm = args.tm > 0 and lps.benchmark.methods.template_matching()
  local view = B.view(S, {name = v.name, similarity = function(_, a, b)
    if args.tm == 1 then return tm:similarity(a, b) end
    local P = sim(a, b)
    return tm and P * (1 - args.tm) + tm:similarity(a, b) * args.tm or P
  end})
  local r, o = protocols.retrieval(S, view, resnets, gallery), protocols.retrieval(S, view, others, gallery)
  print(("%-14s %10.3f %10.3f %10.3f %10.3f %8.1f"):format(v.name, r.rank1, r.map, o.rank1, o.map, lps.now() - t0))
end

if args.resnet_pairs then
  local tm = lps.benchmark.methods.template_matching():similarity(rmodels, rmodels)
  local D = lps.similarity.probe.matcher(variants[1].opts).directed(rmodels, rmodels)
  local P = (D + D:t()) * 0.5
  print(("\nResNets among themselves (%s's dreams, leave-one-out by task)"):format(variants[1].name))
  print(("%-8s %8s %8s"):format("q", "rank-1", "mAP"))
  for _, q in ipairs{0, 0.25, 0.5, 0.75, 1} do
    local r = lps.eval.retrieval(q == 0 and tm or P * q + tm * (1 - q), rlabels, rlabels, {exclude_self = true})
    print(("%-8.2f %8.3f %8.3f"):format(q, r.rank1, r.map))
  end
end

if args.residual then
  -- The network trained on these tasks' MLPs and CNNs (the gallery is in
  -- its training set; the ResNets never are): where the learned term helps
  -- anywhere off its training distribution, it helps here.
  local method = lps.benchmark.methods.lps{name = "lps_hybrid", families = {"mlp", "cnn"}, relations = "transfer",
                                          epochs = 30, hybrid = true}
  print("\nthe hybrid on the ResNet queries (fitted on the retrieval split's training models)")
  print(("%-6s %6s %16s %16s %16s %18s"):format("seed", "w", "ResNet gates > 0", "with residual", "without (anchor)",
    "ResNets among them"))
  for seed = 1, 3 do
    local f = B.fitted(S, method, S.splits.retrieval.train, seed, "retrieval")
    local out = {}
    for k, on in ipairs{true, false} do
      local st = {}
      for key, v in pairs(f.hybrid) do st[key] = v end
      st.bn_residual = on
      local hy = lps.similarity.hybrid.new(f.net, st, function(ms) return f.net:embed(ms) end)
      local r = lps.eval.retrieval(hy:similarity(rmodels, gmodels), rlabels, glabels)
      local rr = lps.eval.retrieval(hy:similarity(rmodels, rmodels), rlabels, rlabels, {exclude_self = true})
      out[k] = ("%.3f / %.3f"):format(r.rank1, r.map)
      out[k + 2] = ("%.3f"):format(rr.rank1)
      if on then
        local open = 0
        for _, d in ipairs(hy:describe(rmodels)) do if d.g > 0 then open = open + 1 end end
        out.open = open
      end
    end
    print(("%-6d %6.2f %9d of %3d %16s %16s %11s, %s"):format(seed, f.hybrid.w, out.open, #resnets, out[1], out[2],
      out[3], out[4]))
  end
end

if args.hubs then
  -- Which gallery models the ResNets pick at rank-1 (the first variant's
  -- dreams, as the hybrid reads them: the ResNet reads), and how much a
  -- gallery model's general readability by ResNets (the mean score the
  -- ResNets of the tasks outside the training tasks give its dreams: no
  -- label of theirs is used) explains the misses.
  local pm = lps.similarity.probe.matcher(variants[1].opts)
  local Q = pm.directed(rmodels, gmodels)
  local function meta_of(id) return S.meta[S.byid[id]] end
  local groups, keys = {}, {}
  local function key_of(j)
    local m = meta_of(gallery[j])
    return ("%s, %d classes"):format(m.family, #S.splits.tasks[m.task].classes)
  end
  for j = 1, #gallery do
    local k = key_of(j)
    if not groups[k] then groups[k] = {n = 0, picks = 0, wrong = 0}; keys[#keys + 1] = k end
    groups[k].n = groups[k].n + 1
  end
  for i = 1, #resnets do
    local top
    for j = 1, #gallery do if not top or Q:get(i, j) > Q:get(i, top) then top = j end end
    local g = groups[key_of(top)]
    g.picks = g.picks + 1
    if meta_of(gallery[top]).task ~= meta_of(resnets[i]).task then g.wrong = g.wrong + 1 end
  end
  table.sort(keys)
  print(("\nResNet queries' rank-1 picks by gallery model (%s's dreams)"):format(variants[1].name))
  print(("%-18s %8s %8s %8s"):format("gallery models", "count", "picked", "wrongly"))
  for _, k in ipairs(keys) do
    print(("%-18s %8d %8d %8d"):format(k, groups[k].n, groups[k].picks, groups[k].wrong))
  end
  local refs = {}
  for i = 1, S.n do
    local m = S.meta[i]
    if m.family == "resnet" and not train_task[m.task] then refs[#refs + 1] = m.id end
  end
  local F = pm.directed((B.gather(S, refs)), gmodels)
  local mean = F:mean(1) -- one per gallery model
  print(("\ncalibrated by %d reference ResNets of other tasks: score - lambda x their mean score of the gallery model")
    :format(#refs))
  print(("%-8s %8s %8s"):format("lambda", "rank-1", "mAP"))
  for _, lam in ipairs{0, 0.25, 0.5, 0.75, 1, 1.5} do
    local C = Q:clone()
    for i = 1, #resnets do C[i]:add_(mean * -lam) end
    local r = lps.eval.retrieval(C, rlabels, glabels)
    print(("%-8.2f %8.3f %8.3f"):format(lam, r.rank1, r.map))
  end
end

if not args.rules then return end
-- Each ResNet's logits on every gallery dream (the first variant's), scored
-- per gallery model by a reading rule: the block of kd dreams x kr classes.
local core = lps.core
local probe = lps.similarity.probe
local match = require "lualps.similarity.match"
local X, off, kk = match.stack(probe.dreams_of(variants[1].opts), gmodels)
-- as the probe reads them (probe.outputs: each gallery model's dreams one
-- batch by their statistics when the variant adapts batch norm)
local blocks = {}
for j = 1, #gallery do blocks[j] = {off[j], kk[j]} end
local L = {}
for qi, model in ipairs(rmodels) do L[qi] = probe.outputs(model, X, blocks, variants[1].opts):totable() end
local function softmax_rows(Z, T)
  local out = {}
  for r, z in ipairs(Z) do
    local mx, sum, o = -math.huge, 0, {}
    for _, v in ipairs(z) do mx = math.max(mx, v / T) end
    for j, v in ipairs(z) do o[j] = math.exp(v / T - mx); sum = sum + o[j] end
    for j = 1, #o do o[j] = o[j] / sum end
    out[r] = o
  end
  return out
end
local function lse(z)
  local mx, sum = -math.huge, 0
  for _, v in ipairs(z) do mx = math.max(mx, v) end
  for _, v in ipairs(z) do sum = sum + math.exp(v - mx) end
  return mx + math.log(sum)
end
local function block(P) return match.block_score(P, 0, 0, #P, #P[1]) end
-- A reader's mean (over every gallery dream) of f(row) per class: what it
-- answers to dreams in general, which the calibrated rules take away.
local function reader_mean(Lq, f)
  local mean = {}
  for _, z in ipairs(Lq) do
    local v = f(z)
    for c, x in ipairs(v) do mean[c] = (mean[c] or 0) + x / #Lq end
  end
  return mean
end
local function softmax1(z) return softmax_rows({z}, 1)[1] end
local function identity(z) return z end
local rules = {
  {"softmax", function(Z) return block(softmax_rows(Z, 1)) end},
  {"softmax T=4", function(Z) return block(softmax_rows(Z, 4)) end},
  {"logits", function(Z) return block(Z) end},
  {"centred logits", function(Z)
    local C = {}
    for r, z in ipairs(Z) do
      local mean = 0
      for _, v in ipairs(z) do mean = mean + v / #z end
      C[r] = {}
      for j, v in ipairs(z) do C[r][j] = v - mean end
    end
    return block(C)
  end},
  {"energy", function(Z) local e = 0 for _, z in ipairs(Z) do e = e + lse(z) / #Z end return e end},
  {"log-probabilities", function(Z)
    local P = softmax_rows(Z, 1)
    for _, row in ipairs(P) do for j = 1, #row do row[j] = math.log(math.max(row[j], 1e-12)) end end
    return block(P)
  end},
  -- calibrated by the reader's answers to every gallery dream (ctx)
  {"pmi", function(Z, ctx)
    local P = softmax_rows(Z, 1)
    for _, row in ipairs(P) do
      for j = 1, #row do row[j] = math.log(math.max(row[j], 1e-12)) - math.log(math.max(ctx.mean_p[j], 1e-12)) end
    end
    return block(P)
  end},
  {"softmax - mean", function(Z, ctx)
    local P = softmax_rows(Z, 1)
    for _, row in ipairs(P) do for j = 1, #row do row[j] = row[j] - ctx.mean_p[j] end end
    return block(P)
  end},
  {"logits - mean", function(Z, ctx)
    local C = {}
    for r, z in ipairs(Z) do C[r] = {}; for j, v in ipairs(z) do C[r][j] = v - ctx.mean_z[j] end end
    return block(C)
  end},
  {"logits z", function(Z, ctx)
    local C = {}
    for r, z in ipairs(Z) do
      C[r] = {}
      for j, v in ipairs(z) do C[r][j] = (v - ctx.mean_z[j]) / math.max(ctx.sd_z[j], 1e-6) end
    end
    return block(C)
  end},
}
local tasks = S.splits.tasks
print(("\nreading rules (%s's dreams), ResNet queries; rank-1 misses: the same classes in another domain, other classes (in another domain)")
  :format(variants[1].name))
print(("%-18s %8s %8s %8s %8s   %s"):format("rule", "rank-1", "mAP", "same cl", "other cl", "rank-1 by class count"))
for _, rule in ipairs(rules) do
  local sc, same, other, other_dom, byk = core.zeros(#resnets, #gallery), 0, 0, 0, {}
  for qi = 1, #resnets do
    local top -- the first best gallery model, as retrieval ranks ties
    local ctx = {mean_p = reader_mean(L[qi], softmax1), mean_z = reader_mean(L[qi], identity)}
    local sq = reader_mean(L[qi], function(z) local o = {} for c, v in ipairs(z) do o[c] = v * v end return o end)
    ctx.sd_z = {}
    for c, m in ipairs(ctx.mean_z) do ctx.sd_z[c] = math.sqrt(math.max(sq[c] - m * m, 0)) end
    for j = 1, #gallery do
      local Z = {}
      for r = 1, kk[j] do Z[r] = L[qi][off[j] + r] end
      sc:set(qi, j, rule[2](Z, ctx))
      if not top or sc:get(qi, j) > sc:get(qi, top) then top = j end
    end
    local tq, tg = tasks[rlabels[qi]], tasks[glabels[top]]
    local k = #tq.classes
    byk[k] = byk[k] or {0, 0}
    byk[k][2] = byk[k][2] + 1
    if tg.id == tq.id then byk[k][1] = byk[k][1] + 1
    elseif tg.subset == tq.subset then same = same + 1
    else other = other + 1; if tg.domain ~= tq.domain then other_dom = other_dom + 1 end end
  end
  local r = lps.eval.retrieval(sc, rlabels, glabels)
  local ks = {}
  for k = 1, 10 do if byk[k] then ks[#ks + 1] = ("%d classes %d/%d"):format(k, byk[k][1], byk[k][2]) end end
  print(("%-18s %8.3f %8.3f %8d %5d (%d)   %s"):format(rule[1], r.rank1, r.map, same, other, other_dom,
    table.concat(ks, ", ")))
end
