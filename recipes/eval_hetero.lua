#!/usr/bin/env lua5.4
-- Evaluate LPS for every architecture against the baselines on
-- ModelSet-Hetero (lps.benchmark runs the protocols: held-out models,
-- unseen tasks, novel classes, held-out architectures, cross-family,
-- cross-source, held-out family, task relations on unseen tasks, model
-- selection), with the controls (shuffled
-- labels, chance, nuisance labels, accuracy prediction) and the ablations.
-- Writes OUT/lps_hetero_eval.json and .md, OUT/lps_hetero.model and plots.
--
--   lua5.4 recipes/eval_hetero.lua --set build/modelset_hetero.lpsm --out results
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local B, eval, util = lps.benchmark, lps.eval, lps.util

local p = argparse("eval_hetero.lua", "Evaluate LPS and the baselines on ModelSet-Hetero.")
p:option("--set", "The model set (splits and pool transfer matrix beside it).", "build/modelset_hetero.lpsm")
p:option("--out", "Output directory.", "results")
p:option("--seeds", "Training seeds of learned methods (mean and sd over them).", "3"):convert(math.tointeger)
p:option("--epochs", "LPS training epochs.", "30"):convert(math.tointeger)
-- matching (6 min here, mAP 0.17 against chance 0.07) runs on request: --methods ...,matching
p:option("--methods", "Comma-separated methods.", "lps,lps_hybrid,raw,sorted,stats,gram,cka,template_matching")
p:option("--probe", "Fashion-MNIST test images CKA probes with.", "128"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:option("--funnels", "Comma-separated methods whose top candidates LogME re-ranks.", "lps,lps_hybrid,template_matching")
p:flag("--no-ablations", "Skip the ablations and controls.")
p:option("--ablations", "Comma-separated ablations, or all (the weight-unit ones add 6 min).", "default")
p:flag("--no-plots", "Skip the gnuplot figures.")
local a = p:parse()
local function fail(msg) io.stderr:write("eval_hetero: ", msg, "\n") os.exit(1) end
for _, k in ipairs{"seeds", "epochs", "probe"} do if not a[k] or a[k] < 1 then fail("--" .. k .. " must be a positive integer") end end
if not lps.zoo.file_exists(a.set) then fail("no model set at " .. a.set .. " (build it with recipes/modelset_hetero.lua)") end
local ok, S = pcall(B.load, a.set)
if not ok then fail(S) end
if not (S.transfer and S.transfer.protocol.kind == "pool") then fail("no pool transfer matrix beside the set (run recipes/transfer_matrix.lua)") end
assert(os.execute("mkdir -p '" .. a.out .. "'"))
local t_start = lps.now()
local log = function(fmt, ...) io.stderr:write(os.date("%H:%M:%S "), fmt:format(...), "\n") end
local eopts = {seeds = a.seeds, data = a.data}

-- LPS's defaults for sets of MLPs and CNNs, from the ablations below.
local LPS = {families = {"mlp", "cnn"}, relations = "transfer", epochs = a.epochs} -- archnet's defaults otherwise
local function lps_with(changes, name)
  local o = {name = name}
  for k, v in pairs(LPS) do o[k] = v end
  for k, v in pairs(changes or {}) do o[k] = v end
  return B.methods.lps(o)
end
local make = {
  lps = function() return lps_with({}, "lps") end,
  -- template matching plus the gated learned residual (lualps/similarity/hybrid.lua)
  lps_hybrid = function() return lps_with({hybrid = true}, "lps_hybrid") end,
  raw = function() return B.methods.features("raw", {pairwise = true}) end,
  sorted = function() return B.methods.features("sorted", {pairwise = true}) end,
  stats = function() return B.methods.features("stats", {standardize = B.gather(S, S.splits.classification.train)}) end,
  gram = function() return B.methods.features("gram", {pairwise = true}) end,
  matching = function() return B.methods.matching{per_task = 2} end,
  cka = function()
    local xt = lps.data.fashion_mnist("test", a.data)
    return B.methods.cka(xt:rows(1, math.min(a.probe, xt:size(1))):clone())
  end,
  template_matching = function() return B.methods.template_matching() end,
}
local metrics = {"top1", "map", "novel_map", "heldout_arch_rank1", "cross_family_rank1", "cross_source_map",
  "heldout_family_rank1", "tau_transfer",
  "tau_transfer_per_target", "selection_accuracy", "selection_regret", "accuracy_tau", "nuisance_map_family"}
local function show(name, r)
  local parts = {}
  for _, m in ipairs(metrics) do parts[#parts + 1] = ("%s %.3f"):format(m, r[m] or 0 / 0) end
  log("%-20s %s", name, table.concat(parts, " "))
end
-- Model selection's data-based estimators first: the methods' funnels re-rank by their LogME.
local t_est = lps.now()
local est_rows, est_order = lps.selection.estimate(S, {data = a.data, log = log})
local results, details, timings, hybrid_fits = {}, {}, {selection_estimators = lps.now() - t_est}, {}
for m in a.methods:gmatch("[^,]+") do
  if not make[m] then fail("unknown method " .. m) end
  local t0, method = lps.now(), make[m]()
  results[m], details[m] = B.evaluate(S, method, eopts)
  hybrid_fits[m] = method.fits -- w, lo, hi per split and seed
  results[m].unseen_map, timings[m] = results[m].map, lps.now() - t0
  show(m, results[m])
end

-- Ablations (one seed each) and controls (lps.controls).
local ablations, abl_order, controls = {}, {}, {}
if not a.no_ablations then
  local n_classes, domains = lps.controls.unit_labels(S.splits.tasks) -- for unit supervision
  for _, v in ipairs{
    {"no_conv_encoder", {families = {"mlp"}}}, {"first_order_pooling", {pool = "mean"}},
    {"no_relation_objective", {relations = false}},
    {"trained_on_mlps", {train_families = {"mlp"}}},
    -- slow: weight units cost 100 s a fit; the templates are a function of the
    -- network, so chain normalization changes only the weight-unit slots
    {"weight_units_only", {slots = {"first", "last", "head"}}, slow = true},
    {"no_chain_norm", {slots = {"first", "last", "head"}, chain_norm = false}, slow = true},
    {"templates_and_units", {slots = {"templates", "first", "last", "head"}}, slow = true},
    {"no_template_extras", {template_extras = false}},
    {"unit_supervision", {unit_classes = n_classes, domains = domains}}, -- an addition, not a removal
    {"hybrid_no_gate", {hybrid = {gate = false}}}, -- lps_hybrid with g = 1
  } do
    local want = a.ablations == "all" or (a.ablations == "default" and not v.slow)
      or ("," .. a.ablations .. ","):find("," .. v[1] .. ",", 1, true)
    if not want then goto skip end
    local t0 = lps.now()
    ablations[v[1]] = B.evaluate(S, lps_with(v[2], v[1]), {seeds = 1, data = a.data})
    ablations[v[1]].unseen_map, timings["ablation_" .. v[1]] = ablations[v[1]].map, lps.now() - t0
    abl_order[#abl_order + 1] = v[1]
    show(v[1], ablations[v[1]])
    ::skip::
  end
  controls = lps.controls.run(S, lps_with, a.data)
end
controls.reliability = S.transfer.reliability
lps.controls.from_results(controls, results)
local order = {"lps", "lps_hybrid", "raw", "sorted", "stats", "gram", "matching", "cka", "template_matching"}
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
    "heldout_family_rank1", "tau_transfer",
    "selection_accuracy", "selection_regret"},
  intro = ("%d models (MLPs, CNNs and ResNets), %d tasks; means ± sd over %d seeds of the learned methods. "
    .. "Generated by recipes/eval_hetero.lua."):format(S.n, #S.splits.tasks, a.seeds)})

local saved = details.lps_hybrid or details.lps -- the hybrid when it ran: the REPL and CLI then score as it does
if saved then
  local model = lps.similarity.wrap(saved.fitted.net, saved.fitted.classes, saved.fitted.hybrid)
  model.n_train = #S.splits.classification.train
  model:save(a.out .. "/lps_hetero.model")
  if details.lps and not a.no_plots then
    local okp, err = B.figures(a.out, S, details.lps, "hetero_")
    if not okp then log("%s", err) end
  end
end
io.write(md, "\n")
print(("Results: %s/lps_hetero_eval.json, %s/lps_hetero_eval.md; model: %s/lps_hetero.model"):format(a.out, a.out, a.out))
print(("Evaluation took %s."):format(util.fmt_time(lps.now() - t_start)))
