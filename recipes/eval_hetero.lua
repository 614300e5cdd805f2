#!/usr/bin/env lua5.4
-- Evaluate LPS for every architecture against the baselines on
-- ModelSet-Hetero (lps.benchmark runs the protocols: held-out models,
-- unseen tasks, novel classes, held-out architectures, cross-family, task
-- relations on unseen tasks, model selection), with the controls (shuffled
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
p:option("--methods", "Comma-separated methods.", "lps,raw,sorted,stats,gram,matching,cka,template_matching")
p:option("--probe", "Fashion-MNIST test images CKA probes with.", "128"):convert(math.tointeger)
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
p:flag("--no-ablations", "Skip the ablations and controls.")
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
local metrics = {"top1", "map", "novel_map", "heldout_arch_rank1", "cross_family_rank1", "tau_transfer",
  "tau_transfer_per_target", "selection_accuracy", "selection_regret", "accuracy_tau", "nuisance_map_family"}
local function show(name, r)
  local parts = {}
  for _, m in ipairs(metrics) do parts[#parts + 1] = ("%s %.3f"):format(m, r[m] or 0 / 0) end
  log("%-20s %s", name, table.concat(parts, " "))
end
local results, details, timings = {}, {}, {}
for m in a.methods:gmatch("[^,]+") do
  if not make[m] then fail("unknown method " .. m) end
  local t0 = lps.now()
  results[m], details[m] = B.evaluate(S, make[m](), eopts)
  results[m].unseen_map, timings[m] = results[m].map, lps.now() - t0
  show(m, results[m])
end

-- Ablations (one seed each) and controls.
local ablations, abl_order, controls = {}, {}, {reliability = S.transfer.reliability}
if not a.no_ablations then
  local n_classes, domains, seen = 0, {}, {} -- the set's class ids and domains, for unit supervision
  for _, t in ipairs(S.splits.tasks) do
    for _, c in ipairs(t.classes) do n_classes = math.max(n_classes, math.tointeger(c) + 1) end
    if not seen[t.domain] then seen[t.domain], domains[#domains + 1] = true, t.domain end
  end
  for _, v in ipairs{
    {"no_conv_encoder", {families = {"mlp"}}}, {"first_order_pooling", {pool = "mean"}},
    {"no_relation_objective", {relations = false}},
    {"trained_on_mlps", {train_families = {"mlp"}}}, {"weight_units_only", {slots = {"first", "last", "head"}}},
    -- beside weight_units_only: the templates are a function of the network,
    -- so chain normalization changes only the weight-unit slots
    {"no_chain_norm", {slots = {"first", "last", "head"}, chain_norm = false}},
    {"templates_and_units", {slots = {"templates", "first", "last", "head"}}},
    {"no_template_extras", {template_extras = false}},
    {"unit_supervision", {unit_classes = n_classes, domains = domains}}, -- an addition, not a removal
  } do
    local t0 = lps.now()
    ablations[v[1]] = B.evaluate(S, lps_with(v[2], v[1]), {seeds = 1, data = a.data})
    ablations[v[1]].unseen_map, timings["ablation_" .. v[1]] = ablations[v[1]].map, lps.now() - t0
    abl_order[#abl_order + 1] = v[1]
    show(v[1], ablations[v[1]])
  end
  local shuffled = B.evaluate(S, lps_with({shuffle_labels = true}, "shuffled_labels"), {seeds = 1, data = a.data})
  local untrained = B.evaluate(S, lps_with({epochs = 0}, "untrained"), {seeds = 1, data = a.data})
  controls.untrained_map, controls.untrained_cross_family_rank1 = untrained.map, untrained.cross_family_rank1
  -- Controls that read no weights: embeddings drawn at random (times `scale`),
  -- with a 1 in column slot(m) where slot names one: models of one slot
  -- first, at random among them.
  local function drawn(name, dim, scale, slot)
    return {name = name, fit = function(_, _, _, ctx)
      return {embed = function(_, ms)
        local E = lps.randn(#ms, dim, lps.generator(7919 + ctx.seed)):mul_(scale)
        for i, m in ipairs(ms) do
          local c = slot and slot(m)
          if c then E:set(i, c, 1) end
        end
        return E
      end}
    end}
  end
  local chance = B.evaluate(S, drawn("random", 64, 1), {seeds = 5, data = a.data})
  -- what the class count alone gives (a model's head says it, LPS's inputs carry it)
  local counted = B.evaluate(S, drawn("class_count", 64, 1e-3, function(m) return math.min(m[#m]:numel(), 64) end),
    {seeds = 5, data = a.data})
  controls.class_count_map, controls.class_count_novel_map = counted.map, counted.novel_map
  -- The best a method can do that cannot tell identity from blur (the pool's
  -- transfer gains barely can either): the true task, those two domains merged.
  -- Model selection's probes are not of the set: they stay random.
  local row_of, key_of, n_keys = {}, {}, 0
  for i = 1, S.n do row_of[S.models[i]], row_of[S.labelled[i]] = i, i end
  local blind = drawn("blur_blind_oracle", 256, 1e-3, function(m)
    local meta = row_of[m] and S.meta[row_of[m]]
    if not meta then return nil end
    local key = table.concat(meta.classes, ",") .. (meta.domain == "blur" and "identity" or meta.domain)
    if not key_of[key] then n_keys = n_keys + 1; key_of[key] = n_keys end
    return key_of[key]
  end)
  local ceiling = B.evaluate(S, blind, {seeds = 3, data = a.data})
  for _, k in ipairs{"top1", "map", "novel_map", "heldout_arch_rank1", "cross_family_rank1"} do
    controls["blur_blind_" .. k] = ceiling[k]
  end
  controls.shuffled_labels_map, controls.shuffled_labels_novel_map = shuffled.map, shuffled.novel_map
  controls.chance_map, controls.chance_map_std, controls.chance_novel_map = chance.map, chance.map_std, chance.novel_map
  for _, k in ipairs{"optimizer", "family", "width"} do controls["chance_nuisance_map_" .. k] = chance["nuisance_map_" .. k] end
end
for _, r in pairs(results) do -- the same for all methods
  controls.random_regret = controls.random_regret or r.random_regret
  controls.task_oracle_regret = controls.task_oracle_regret or r.task_oracle_regret
end
for _, k in ipairs{"optimizer", "family", "width"} do
  controls["nuisance_map_" .. k] = results.lps and results.lps["nuisance_map_" .. k]
end
controls.stats_accuracy_tau = results.stats and results.stats.accuracy_tau

local protocol = B.describe(S)
for k, v in pairs{set = a.set, models = S.n, tasks = #S.splits.tasks, seeds = a.seeds, lps_options = LPS,
  transfer = S.transfer.protocol, seconds = timings, total_seconds = lps.now() - t_start,
  cka_probe = a.probe .. " Fashion-MNIST test images"} do protocol[k] = v end
local ctl = {"\n## Controls\n", "| control | value |", "|---|---|"}
local function f3(v) return v and ("%.3f"):format(v) or "–" end
for _, k in ipairs{"shuffled_labels_map", "untrained_map", "chance_map", "class_count_map", "random_regret",
                   "task_oracle_regret", "stats_accuracy_tau", "blur_blind_top1", "blur_blind_map", "blur_blind_novel_map",
                   "blur_blind_heldout_arch_rank1", "blur_blind_cross_family_rank1"} do
  ctl[#ctl + 1] = ("| %s | %s |"):format(k, f3(controls[k]))
end
for _, k in ipairs{"optimizer", "family", "width"} do
  ctl[#ctl + 1] = ("| nuisance_map_%s (chance) | %s (%s) |"):format(k, f3(controls["nuisance_map_" .. k]),
    f3(controls["chance_nuisance_map_" .. k]))
end
ctl[#ctl + 1] = ("| transfer reliability (split-half Spearman; per target) | %.3f; %.3f |"):format(
  controls.reliability.split_half_spearman, controls.reliability.per_target_split_half_spearman)
local md = B.write_report(a.out, "lps_hetero_eval", {methods = results, ablations = ablations, protocol = protocol,
  order = {"lps", "raw", "sorted", "stats", "gram", "matching", "cka", "template_matching"}, ablation_order = abl_order, metrics = metrics,
  lead = "lps", title = "LPS on " .. a.set, extra = {controls = controls}, sections = {table.concat(ctl, "\n")},
  required = {"unseen_map", "novel_map", "heldout_arch_rank1", "cross_family_rank1", "tau_transfer",
    "selection_accuracy", "selection_regret"},
  intro = ("%d models (MLPs and CNNs), %d tasks; means ± sd over %d seeds of the learned methods. "
    .. "Generated by recipes/eval_hetero.lua."):format(S.n, #S.splits.tasks, a.seeds)})

if details.lps then
  local model = lps.similarity.wrap(details.lps.fitted.net, details.lps.fitted.classes)
  model.n_train = #S.splits.classification.train
  model:save(a.out .. "/lps_hetero.model")
  if not a.no_plots then
    local okp, err = B.figures(a.out, S, details.lps, "hetero_")
    if not okp then log("%s", err) end
  end
end
io.write(md, "\n")
print(("Results: %s/lps_hetero_eval.json, %s/lps_hetero_eval.md; model: %s/lps_hetero.model"):format(a.out, a.out, a.out))
print(("Evaluation took %s."):format(util.fmt_time(lps.now() - t_start)))
