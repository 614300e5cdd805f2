#!/usr/bin/env lua5.4
-- Evaluate LPS against every baseline on a model set's standard splits
-- (lps.benchmark runs the protocols), then the ablations of LPS.
-- Writes OUT/lps_eval.json, OUT/lps_eval.md, OUT/lps.model and the plots.
--
--   lua5.4 recipes/eval_lps.lua --set build/modelset500.lpsm --out results
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local B, eval, util = lps.benchmark, lps.eval, lps.util

local p = argparse("eval_lps.lua", "Evaluate LPS and the baselines on a model set.")
p:option("--set", "The model set (splits and transfer matrix beside it).", "build/modelset500.lpsm")
p:option("--out", "Output directory.", "results")
p:option("--seeds", "Training seeds of learned methods (mean and sd over them).", "3"):convert(math.tointeger)
p:option("--epochs", "Training epochs of learned methods.", "30"):convert(math.tointeger)
p:option("--ablation-seeds", "Seeds for each ablation.", "1"):convert(math.tointeger)
p:option("--methods", "Comma-separated methods.", "lps,raw,sorted,stats,stats_head,gram,matching,cka")
p:option("--pairwise-per-task", "Models per task that pairwise-only baselines (matching) compare.", "2")
  :convert(math.tointeger)
p:option("--probe", "Fashion-MNIST test images CKA probes with.", "256"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:flag("--no-ablations", "Skip the ablations.")
p:flag("--no-plots", "Skip the gnuplot figures.")
local a = p:parse()
local function fail(msg) io.stderr:write("eval_lps: ", msg, "\n") os.exit(1) end
for _, k in ipairs{"seeds", "epochs", "ablation_seeds", "pairwise_per_task", "probe"} do
  if not a[k] or a[k] < 1 then fail(("--%s must be a positive integer"):format(k:gsub("_", "-"))) end
end
if not lps.zoo.file_exists(a.set) then fail("no model set at " .. a.set .. " (build it with recipes/modelset500.lua)") end
local ok, S = pcall(B.load, a.set)
if not ok then fail(S) end
if not S.transfer then fail("no transfer matrix beside the set (run recipes/transfer_matrix.lua)") end
assert(os.execute("mkdir -p '" .. a.out .. "'"))
local t_start = lps.now()
local log = function(fmt, ...) io.stderr:write(os.date("%H:%M:%S "), fmt:format(...), "\n") end
log("loaded %d models of %d tasks from %s", S.n, #S.splits.tasks, a.set)

local train_models = B.gather(S, S.splits.classification.train)
local make = {
  lps = function() return B.methods.lps{epochs = a.epochs} end,
  raw = function() return B.methods.features("raw") end,
  sorted = function() return B.methods.features("sorted") end,
  stats = function() return B.methods.features("stats", {standardize = train_models}) end,
  stats_head = function() return B.methods.feature_head("stats", {standardize = S.models, epochs = a.epochs}) end,
  gram = function() return B.methods.feature_head("gram", {epochs = a.epochs}) end,
  matching = function() return B.methods.matching{per_task = a.pairwise_per_task} end,
  cka = function()
    local xt = lps.data.fashion_mnist("test", a.data)
    return B.methods.cka(xt:rows(1, math.min(a.probe, xt:size(1))):clone())
  end,
}
local results, timings, details = {}, {}, {}
for m in a.methods:gmatch("[^,]+") do
  if not make[m] then fail("unknown method " .. m) end
  local t0 = lps.now()
  results[m], details[m] = B.evaluate(S, make[m](), {seeds = a.seeds})
  timings[m] = lps.now() - t0
  local r = results[m]
  log("%-10s top1 %.3f rank1 %.3f rank5 %.3f mAP %.3f NMI %.3f AMI %.3f tau(overlap) %.3f tau(transfer) %.3f cross %.3f (%.1fs)",
    m, r.top1, r.rank1, r.rank5, r.map, r.nmi, r.ami, r.tau_overlap, r.tau_transfer, r.cross_top1, timings[m])
end

-- LPS's defaults use the first hidden layer, layer-normalized pooled
-- features and random unit subsets in training; each ablation changes one.
local variants = {
  {"no_chain_norm", {chain_norm = false}}, {"with_second_layer", {layers = 2}},
  {"first_order_pooling", {pool = "mean"}}, {"no_layer_norm", {layer_norm = false}},
  {"all_units", {unit_keep = 1}}, {"xent_only", {loss = "xent"}}, {"triplet_only", {loss = "triplet"}},
}
local ablations, abl_order = {}, {}
if not a.no_ablations and results.lps then
  for _, v in ipairs(variants) do
    local t0 = lps.now()
    local o = {name = v[1], epochs = a.epochs}
    for k, x in pairs(v[2]) do o[k] = x end
    ablations[v[1]] = B.evaluate(S, B.methods.lps(o), {seeds = a.ablation_seeds})
    timings["ablation_" .. v[1]], abl_order[#abl_order + 1] = lps.now() - t0, v[1]
  end
end

local protocol = B.describe(S, {pairwise_per_task = a.pairwise_per_task})
for k, v in pairs{set = a.set, models = S.n, tasks = #S.splits.tasks, seeds = a.seeds, lps_epochs = a.epochs,
  ablation_seeds = a.ablation_seeds, lps_options = lps.similarity.defaults, seconds = timings,
  cka_probe = a.probe .. " Fashion-MNIST test images", total_seconds = lps.now() - t_start} do protocol[k] = v end
local md = B.write_report(a.out, "lps_eval", {methods = results, ablations = ablations, protocol = protocol,
  order = {"lps", "raw", "sorted", "stats", "stats_head", "gram", "matching", "cka"}, ablation_order = abl_order,
  metrics = {"top1", "rank1", "rank5", "rank10", "map", "nmi", "ami", "tau_overlap", "tau_transfer",
    "rho_transfer", "cross_top1"}, lead = "lps", title = "LPS on " .. a.set,
  intro = ("%d models, %d tasks; means ± sd over %d LPS seeds. Generated by recipes/eval_lps.lua.")
    :format(S.n, #S.splits.tasks, a.seeds)})

local lps_run = details.lps
if lps_run then
  local classes = {}
  for t = 1, #S.splits.tasks do classes[t] = t end
  local model = lps.similarity.wrap(lps_run.fitted.net, classes)
  model.n_train = #S.splits.classification.train
  model:save(a.out .. "/lps.model")
  if not a.no_plots then
    local plot, tasks = lps.plot, {}
    for i = 1, S.n do tasks[i] = S.meta[i].task end
    local ok1, e1 = plot.heatmaps(a.out .. "/task_similarity_vs_transfer.png", {
      {title = "LPS: mean similarity of held-out models", matrix = lps_run.task_similarity},
      {title = "Transfer gain (fine-tuned minus scratch accuracy; row = source)", matrix = S.transfer.gain}})
    local ok2, e2 = plot.scatter(a.out .. "/embedding_pca.png", eval.pca(lps_run.embeddings, 2), tasks, nil,
      {title = ("LPS embeddings of all %d models (PCA), coloured by task"):format(S.n)})
    if not (ok1 and ok2) then log("%s", e1 or e2) end
  end
end

io.write(md, "\n")
print(("Results: %s/lps_eval.json, %s/lps_eval.md; plots: %s/task_similarity_vs_transfer.png, %s/embedding_pca.png; model: %s/lps.model")
  :format(a.out, a.out, a.out, a.out, a.out))
print(("Evaluation took %s."):format(util.fmt_time(lps.now() - t_start)))
