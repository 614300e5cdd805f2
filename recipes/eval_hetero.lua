#!/usr/bin/env lua5.4
-- Evaluate LPS for every architecture against the baselines on ModelSet-Hetero
-- (lps.benchmark runs the protocols, lps.selection model selection), with the
-- controls and ablations. Writes OUT/lps_hetero_eval.json and .md,
-- OUT/lps_hetero.model and plots.
--   lua5.4 recipes/eval_hetero.lua --set build/modelset_hetero.lpsm --out results --jobs 2
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local parts = require "scripts.parts"
local B, eval, util = lps.benchmark, lps.eval, lps.util

local p = argparse("eval_hetero.lua", "Evaluate LPS and the baselines on ModelSet-Hetero.")
p:option("--set", "The model set (splits and pool transfer matrix beside it).", "build/modelset_hetero.lpsm")
p:option("--out", "Output directory.", "results")
p:option("--seeds", "Training seeds of learned methods (mean and sd over them).", "3"):convert(math.tointeger)
p:option("--epochs", "LPS training epochs.", "30"):convert(math.tointeger)
-- matching (6 min here, mAP 0.17 against chance 0.07) runs on request: --methods ...,matching
p:option("--methods", "Comma-separated methods.", "lps,lps_hybrid,raw,sorted,stats,gram,cka,template_matching,probe_matching,tm_and_probe,tm_and_probe_directed")
p:option("--probe", "Fashion-MNIST test images CKA probes with.", "128"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:option("--funnels", "Comma-separated methods whose top candidates LogME re-ranks.", "lps,lps_hybrid,template_matching,tm_and_probe,tm_and_probe_directed")
p:flag("--no-ablations", "Skip the ablations and controls.")
p:option("--ablations", "Comma-separated ablations, or all (the weight-unit ones add 6 min).", "default")
p:flag("--no-plots", "Skip the gnuplot figures.")
p:option("--jobs", "Processes, one BLAS thread each (results are bit-identical for a --jobs).", "1"):convert(math.tointeger)
p:option("--part", "Run part k/n of the jobs (--jobs starts them).", nil):hidden(true)
local a = p:parse()
local function fail(msg) io.stderr:write("eval_hetero: ", msg, "\n") os.exit(1) end
for _, k in ipairs{"seeds", "epochs", "probe", "jobs"} do if not a[k] or a[k] < 1 then fail("--" .. k .. " must be a positive integer") end end
if not lps.zoo.file_exists(a.set) then fail("no model set at " .. a.set .. " (build it with recipes/modelset_hetero.lua)") end
local ok, S = pcall(B.load, a.set); if not ok then fail(S) end
if not (S.transfer and S.transfer.protocol.kind == "pool") then fail("no pool transfer matrix beside the set (run recipes/transfer_matrix.lua)") end
assert(os.execute("mkdir -p '" .. a.out .. "'"))
local t_start = lps.now()
local tag = a.part and ("[" .. a.part .. "] ") or ""
local log = function(fmt, ...) io.stderr:write(os.date("%H:%M:%S "), tag, fmt:format(...), "\n") end
local eopts = {seeds = a.seeds, data = a.data}

-- LPS's defaults for sets of MLPs and CNNs, from the ablations below.
local LPS = {families = {"mlp", "cnn"}, relations = "transfer", epochs = a.epochs} -- archnet's defaults otherwise
local function lps_with(changes, name)
  local o = {name = name}
  for _, t in ipairs{LPS, changes or {}} do for k, v in pairs(t) do o[k] = v end end
  return B.methods.lps(o)
end
local make = {
  lps = function() return lps_with({}, "lps") end, -- and template matching plus its gated residual:
  lps_hybrid = function() return lps_with({hybrid = true}, "lps_hybrid") end, -- lualps/similarity/hybrid.lua
  -- on request: the hybrid anchored on tm_and_probe_directed, 3 seeds (the ablation hybrid_probe_directed has 1)
  lps_hybrid_directed = function()
    return lps_with({hybrid = {probe = 0.5, probe_directed = true}}, "lps_hybrid_directed") end,
  -- on request: the same with the probe weight gated by the query's typicality, 0.5 (1 - g)
  lps_hybrid_gated = function()
    return lps_with({hybrid = {probe = 0.5, probe_directed = true, probe_gate = true}}, "lps_hybrid_gated") end,
  raw = function() return B.methods.features("raw", {pairwise = true}) end,
  sorted = function() return B.methods.features("sorted", {pairwise = true}) end,
  stats = function() return B.methods.features("stats", {standardize = B.gather(S, S.splits.classification.train)}) end,
  gram = function() return B.methods.features("gram", {pairwise = true}) end,
  matching = function() return B.methods.matching{per_task = 2} end,
  cka = function() local xt = lps.data.fashion_mnist("test", a.data)
    return B.methods.cka(xt:rows(1, math.min(a.probe, xt:size(1))):clone()) end,
  template_matching = function() return B.methods.template_matching() end,
  probe_matching = function() return B.methods.probe_matching() end,
  -- the hybrid's unlearned anchor alone: what its learned residual must add to
  tm_and_probe = function() return B.methods.probe_matching{probe = 0.5, name = "tm_and_probe"} end,
  -- the same with only the query reading the gallery's dreams: the best unlearned selection by weights
  tm_and_probe_directed = function() return B.methods.probe_matching{probe = 0.5, directed = true, name = "tm_and_probe_directed"} end,
}
local metrics = {"top1", "map", "novel_map", "heldout_arch_rank1", "cross_family_rank1", "cross_source_map", "heldout_family_rank1",
  "mixed_rank1", "mixed_resnet_rank1", "tau_transfer", "tau_transfer_per_target", "tau_transfer_coherence", "selection_accuracy", "selection_regret", "accuracy_tau", "nuisance_map_family"}
local function show(name, r)
  local parts = {}
  for _, m in ipairs(metrics) do parts[#parts + 1] = r[m] == r[m] and r[m] and ("%s %.3f"):format(m, r[m]) or m .. " –" end
  log("%-20s %s", name, table.concat(parts, " "))
end
-- The jobs, run over --jobs processes (scripts/parts.lua; cost: seconds on the
-- last clean run). The estimators first: the funnels' methods re-rank by their scores.
local funnel_of, jobs = {}, {{name = "estimators", cost = 70, pinned = true}}
for m in a.funnels:gmatch("[^,]+") do funnel_of[m] = true end
local cost = {lps = 60, lps_hybrid = 135, lps_hybrid_directed = 180, lps_hybrid_gated = 180, raw = 20, sorted = 21, stats = 5, gram = 48, matching = 373, cka = 84,
  probe_matching = 150, tm_and_probe = 150, tm_and_probe_directed = 60}
for m in a.methods:gmatch("[^,]+") do
  if not make[m] then fail("unknown method " .. m) end
  jobs[#jobs + 1] = {name = m, cost = cost[m] or 10, pinned = funnel_of[m], method = true}
end
local n_classes, domains = lps.controls.unit_labels(S.splits.tasks) -- for unit supervision
local abl_list = { -- one seed each, unless `seeds` says
  {"no_conv_encoder", {families = {"mlp"}}, 12}, {"first_order_pooling", {pool = "mean"}, 12},
  {"no_relation_objective", {relations = false}, 19}, {"trained_on_mlps", {train_families = {"mlp"}}, 11},
  -- slow: weight units cost 100 s a fit; the templates are a function of the
  -- network, so chain normalization changes only the weight-unit slots
  {"weight_units_only", {slots = {"first", "last", "head"}}, 102, slow = true},
  {"no_chain_norm", {slots = {"first", "last", "head"}, chain_norm = false}, 106, slow = true},
  {"templates_and_units", {slots = {"templates", "first", "last", "head"}}, 130, slow = true},
  {"no_template_extras", {template_extras = false}, 29},
  {"unit_supervision", {unit_classes = n_classes, domains = domains}, 25}, -- an addition, not a removal
  {"hybrid_no_gate", {hybrid = {gate = false}}, 45}, -- lps_hybrid with g = 1
  {"hybrid_no_probe_bn", {hybrid = {probe_bn = 0, probe_bn_both = 0}}, 45}, -- batch-norm pairs on TM too
  {"hybrid_bn_residual", {hybrid = {bn_residual = true}}, 45}, -- the learned term for batch-norm models too
  {"hybrid_no_blur_bn", {hybrid = {dreams = {blur_bn = 0}}}, 45}, -- batch-norm readers read the dreams unblurred
  {"hybrid_probe", {hybrid = {probe = 0.5}}, 150}, -- anchored on template and probe matching (tm_and_probe)
  {"hybrid_probe_directed", {hybrid = {probe = 0.5, probe_directed = true}}, 60}, -- on tm_and_probe_directed
  -- additions: trained with the templates' scale jitter (train_network's template_aug), 3 seeds each
  {"template_aug", {template_aug = {scale = 2}}, 36, seeds = 3},
  {"hybrid_template_aug", {hybrid = true, template_aug = {scale = 2}}, 135, seeds = 3},
}
for _, v in ipairs(a.no_ablations and {} or abl_list) do
  if a.ablations == "all" or (a.ablations == "default" and not v.slow)
    or ("," .. a.ablations .. ","):find("," .. v[1] .. ",", 1, true) then
    jobs[#jobs + 1] = {name = "ablation " .. v[1], ablation = v[1], changes = v[2], cost = v[3], seeds = v.seeds}
  end
end
if not a.no_ablations then jobs[#jobs + 1] = {name = "controls", cost = 80} end
if a.jobs > 1 or a.part then lps.set_num_threads(1) end -- one BLAS thread per process
local out, locals = parts.run{jobs = jobs, n = a.jobs, part = a.part, argv = arg,
  path = function(k) return ("%s/.eval_hetero.part%d.lua"):format(a.out, k) end, run = function(j)
  local t0 = lps.now()
  if j.name == "estimators" then return {rows = {lps.selection.estimate(S, {data = a.data, log = log})}, t = lps.now() - t0} end
  if j.name == "controls" then return {controls = lps.controls.run(S, lps_with, a.data), t = lps.now() - t0} end
  local method = j.method and make[j.name]() or lps_with(j.changes, j.ablation)
  local r, d = B.evaluate(S, method, j.method and eopts or {seeds = j.seeds or 1, data = a.data})
  r.unseen_map = r.map
  show(j.ablation or j.name, r)
  return {r = r, fits = method.fits, t = lps.now() - t0}, d -- fits: lps_hybrid's w, lo, hi per split and seed
end}
if not out then os.exit(0) end -- a started part: its results are written
local est_rows, est_order = out.estimators.rows[1], out.estimators.rows[2]
local results, details, hybrid_fits, ablations, abl_order = {}, {}, {}, {}, {}
local timings, controls = {selection_estimators = out.estimators.t}, out.controls and out.controls.controls or {}
for _, j in ipairs(jobs) do
  local o = out[j.name]
  timings[j.ablation and "ablation_" .. j.ablation or j.name] = o.t
  if j.method then results[j.name], details[j.name], hybrid_fits[j.name] = o.r, locals[j.name], o.fits end
  if j.ablation then ablations[j.ablation], abl_order[#abl_order + 1] = o.r, j.ablation end
end
controls.reliability = S.transfer.reliability
lps.controls.relation_ceilings(controls, S)
lps.controls.from_results(controls, results)
local order = {"lps", "lps_hybrid", "lps_hybrid_directed", "lps_hybrid_gated", "raw", "sorted", "stats", "gram", "matching", "cka", "template_matching",
  "probe_matching", "tm_and_probe", "tm_and_probe_directed"}
local funnels = {}
for m in a.funnels:gmatch("[^,]+") do if results[m] then funnels[#funnels + 1] = m end end
local sel_order = lps.selection.add_rows(S, results, order, est_rows, est_order, funnels)

local protocol = B.describe(S)
for k, v in pairs{hybrid_fits = hybrid_fits, set = a.set, models = S.n, tasks = #S.splits.tasks, seeds = a.seeds, lps_options = LPS,
  transfer = S.transfer.protocol, seconds = timings, total_seconds = lps.now() - t_start,
  cka_probe = a.probe .. " Fashion-MNIST test images"} do protocol[k] = v end
local md = B.write_report(a.out, "lps_hetero_eval", {methods = results, ablations = ablations, protocol = protocol,
  order = order, ablation_order = abl_order, metrics = metrics, lead = "lps", title = "LPS on " .. a.set,
  extra = {controls = controls, selection_order = sel_order},
  sections = {lps.selection.markdown(results, sel_order, S.estimates.funnel_k), lps.controls.markdown(controls)},
  required = {"unseen_map", "novel_map", "heldout_arch_rank1", "cross_family_rank1", "cross_source_map",
    "heldout_family_rank1", "tau_transfer", "selection_accuracy", "selection_regret"},
  intro = ("%d models (MLPs, CNNs and ResNets), %d tasks; means ± sd over %d seeds of the learned methods. "
    .. "Generated by recipes/eval_hetero.lua."):format(S.n, #S.splits.tasks, a.seeds)})

-- A method's fit on the classification split (its details), saved as a
-- similarity file with the transferability prior of every pool model (sim:select).
local shipped_prior = lps.selection.shipped_prior(S)
local function save_model(d, path)
  local model = lps.similarity.wrap(d.fitted.net, d.fitted.classes, d.fitted.hybrid, shipped_prior)
  model.n_train = #S.splits.classification.train
  model:save(path)
end
-- the hybrid variants run on request, saved beside it for the held-out zoos
for _, name in ipairs{"lps_hybrid_directed", "lps_hybrid_gated"} do
  if details[name] then save_model(details[name], ("%s/%s.model"):format(a.out, name)) end
end
local saved = details.lps_hybrid or details.lps -- the hybrid when it ran: the REPL and CLI then score as it does
if saved then
  save_model(saved, a.out .. "/lps_hetero.model")
  if details.lps and not a.no_plots then
    local okp, err = B.figures(a.out, S, details.lps, "hetero_")
    if not okp then log("%s", err) end
  end
end
io.write(md, "\n")
print(("Results: %s/lps_hetero_eval.json, %s/lps_hetero_eval.md; model: %s/lps_hetero.model"):format(a.out, a.out, a.out))
print(("Evaluation took %s."):format(util.fmt_time(lps.now() - t_start)))
