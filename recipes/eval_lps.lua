#!/usr/bin/env lua5.4
-- Evaluate LPS against every baseline on a model set's standard splits:
-- classification, retrieval on unseen tasks, clustering, task relations
-- (class overlap, measured transfer), ablations and the cross-setting test.
-- Writes OUT/lps_eval.json, OUT/lps_eval.md, OUT/lps.model and the plots.
--
--   lua5.4 recipes/eval_lps.lua --set build/modelset500.lpsm --out results
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require "cjson"
local B, eval, util = lps.benchmark, lps.eval, lps.util

local p = argparse("eval_lps.lua", "Evaluate LPS and the baselines on a model set.")
p:option("--set", "The model set (splits and transfer matrix beside it).", "build/modelset500.lpsm")
p:option("--out", "Output directory.", "results")
p:option("--seeds", "LPS training seeds (mean and sd over them).", "3"):convert(math.tointeger)
p:option("--epochs", "LPS training epochs.", "30"):convert(math.tointeger)
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
local transfer_text = util.read_file(a.set .. ".transfer.json")
if not transfer_text then fail("no transfer matrix beside the set (run recipes/transfer_matrix.lua)") end
assert(os.execute("mkdir -p '" .. a.out .. "'"))
local methods = {}
for m in a.methods:gmatch("[^,]+") do methods[#methods + 1] = m end

local function log(fmt, ...) io.stderr:write(os.date("%H:%M:%S "), fmt:format(...), "\n") io.stderr:flush() end
local t_start = lps.now()
local S = B.load(a.set)
local transfer = cjson.decode(transfer_text)
local cls, ret = S.splits.classification, S.splits.retrieval
local ntasks = #S.splits.tasks
log("loaded %d models of %d tasks from %s", S.n, ntasks, a.set)

-- Held-out and unseen ids, and their subsets for pairwise-only methods.
local function per_task_subset(ids, k)
  local count, out = {}, {}
  for _, id in ipairs(ids) do
    local t = S.meta[S.byid[id]].task
    count[t] = (count[t] or 0) + 1
    if count[t] <= k then out[#out + 1] = id end
  end
  return out
end
local unseen = {}
for _, id in ipairs(ret.query) do unseen[#unseen + 1] = id end
for _, id in ipairs(ret.gallery) do unseen[#unseen + 1] = id end
local all_ids = {}
for i = 1, S.n do all_ids[i] = S.meta[i].id end

--------------------------------------------------------------- methods

-- A method from embeddings E (n x e, unit rows) of every model of the set.
local function embedding_method(E)
  local function rows(ids)
    local idx = {}
    for k, id in ipairs(ids) do idx[k] = S.byid[id] end
    return E:index_rows(idx)
  end
  return {sim = function(x, y) return lps.matmul(rows(x), rows(y), false, true) end, features = rows}
end

-- Task labels 1..C of ids (their tasks in increasing order).
local function class_labels(ids)
  local _, y = B.gather(S, ids)
  local tasks, map = {}, {}
  for _, t in ipairs(y) do if not map[t] then map[t] = true; tasks[#tasks + 1] = t end end
  table.sort(tasks)
  for c, t in ipairs(tasks) do map[t] = c end
  local labels = {}
  for k, t in ipairs(y) do labels[k] = map[t] end
  return labels, #tasks
end

-- Train an LPS network on ids; returns the network and the embeddings of all models.
local function train_lps(ids, seed, opts)
  local models = B.gather(S, ids)
  local labels, C = class_labels(ids)
  local net_opts = {seed = seed, classes = C}
  local tr = {epochs = a.epochs, seed = seed}
  for k, v in pairs(opts or {}) do
    if lps.similarity.defaults[k] ~= nil then net_opts[k] = v else tr[k] = v end
  end
  if tr.loss == "triplet" then net_opts.classes = 0 end
  local net = lps.similarity.network(net_opts)
  local rep = lps.similarity.train_network(net, models, labels, tr)
  local t0 = lps.now()
  local E = net:embed(S.models)
  return net, E, rep.seconds, lps.now() - t0
end

-- Train a feature head on the features F (n x f rows of every model) of ids.
local function train_head(F, ids, seed)
  local labels, C = class_labels(ids)
  local rows = {}
  for k, id in ipairs(ids) do rows[k] = F[S.byid[id]] end
  local head = lps.similarity.feature_head{in_dim = F:size(2), classes = C, seed = seed}
  lps.similarity.train_network(head, rows, labels, {epochs = a.epochs, seed = seed})
  local all = {}
  for i = 1, S.n do all[i] = F[i] end
  return head:embed(all)
end

-- Every protocol for one method. lps-like methods are trained twice: on the
-- classification training models, and on the retrieval training tasks.
-- The SGD half of the training models (the cross-setting's training side).
local sgd_train = B.filter(S, cls.train, "optimizer", "sgd")

local function evaluate(m_cls, m_ret)
  local r = {}
  r.top1 = B.classification(S, m_cls.cls_method or m_cls, cls.train, m_cls.cls_test or cls.test)
  local rr = B.retrieval(S, m_ret, ret.query, ret.gallery)
  for k, v in pairs(rr) do r[k] = v end
  r.nmi, r.ami = B.clustering(S, m_ret, m_ret.unseen or unseen, 1)
  local tsim = B.task_similarity(S, m_cls, m_cls.rel_ids or cls.test, ntasks)
  local rel = B.task_relations(tsim, transfer)
  for k, v in pairs(rel) do r[k] = v end
  -- cross-setting: SGD-trained gallery, Adam-trained queries
  local adam_test = B.filter(S, m_cls.cls_test or cls.test, "optimizer", "adam")
  r.cross_top1 = B.classification(S, m_cls.cross or m_cls, sgd_train, adam_test)
  return r, tsim
end

local results, timings, task_sims = {}, {}, {}
local lps_models = {}

local function run_lps(name, opts, seeds)
  local runs = {}
  for seed = 1, seeds do
    local t0 = lps.now()
    local net_c, Ec, secs = train_lps(cls.train, seed, opts)
    local _, Er = train_lps(ret.train, seed, opts)
    -- cross-setting: trained on the SGD half of the training models only
    local _, Ex = train_lps(sgd_train, seed, opts)
    local mc, mr = embedding_method(Ec), embedding_method(Er)
    mc.cross = embedding_method(Ex)
    local tsim
    runs[seed], tsim = evaluate(mc, mr)
    runs[seed].train_seconds = secs
    if seed == 1 then
      task_sims[name] = tsim
      lps_models[name] = {net = net_c, E = Ec}
    end
    log("%s seed %d: top1 %.3f rank1 %.3f mAP %.3f NMI %.3f tau(transfer) %.3f  (%.1fs)", name, seed,
      runs[seed].top1, runs[seed].rank1, runs[seed].map, runs[seed].nmi, runs[seed].tau_transfer, lps.now() - t0)
  end
  return B.mean_std(runs)
end

for _, m in ipairs(methods) do
  local t0 = lps.now()
  if m == "lps" then
    results.lps = run_lps("lps", {}, a.seeds)
  elseif m == "raw" or m == "sorted" or m == "stats" then
    local F = eval.feature_matrix(m, S.models)
    if m == "stats" then
      -- standardized with the training models' mean and sd
      local idx = {}
      for k, id in ipairs(cls.train) do idx[k] = S.byid[id] end
      local _, mean, sd = eval.standardize(F:index_rows(idx))
      eval.standardize(F, mean, sd)
    end
    local norms = (F * F):sum(2):sqrt()
    for i = 1, S.n do F[i]:div_(math.max(norms[i], 1e-12)) end
    local meth = embedding_method(F)
    results[m], task_sims[m] = evaluate(meth, meth)
  elseif m == "stats_head" or m == "gram" then
    local F = eval.feature_matrix(m == "gram" and "gram" or "stats", S.models)
    if m == "stats_head" then eval.standardize(F) end
    local runs = {}
    for seed = 1, a.seeds do
      local mc = embedding_method(train_head(F, cls.train, seed))
      local mr = embedding_method(train_head(F, ret.train, seed))
      mc.cross = embedding_method(train_head(F, sgd_train, seed))
      local tsim
      runs[seed], tsim = evaluate(mc, mr)
      if seed == 1 then task_sims[m] = tsim end
    end
    results[m] = B.mean_std(runs)
  elseif m == "cka" then
    -- Features whose dot products are the layer-averaged linear CKA: every
    -- pair then costs one matrix product instead of two forward passes.
    local xt = lps.data.fashion_mnist("test", a.data)
    local probe = xt:rows(1, math.min(a.probe, xt:size(1))):clone()
    local F = eval.cka_features(S.models, probe)
    local meth = embedding_method(F)
    results[m], task_sims[m] = evaluate(meth, meth)
  elseif m == "matching" then
    local opts = {}
    -- Pairwise only: memoize computed pairs so protocols share them.
    local memo = {}
    local function sim(x, y)
      local out = lps.zeros(#x, #y)
      local need_a, need_b, where = {}, {}, {}
      for i, ix in ipairs(x) do
        for j, jy in ipairs(y) do
          local key = ix < jy and (ix .. "|" .. jy) or (jy .. "|" .. ix)
          if memo[key] then out:set(i, j, memo[key])
          else need_a[#need_a + 1], need_b[#need_b + 1], where[#where + 1] = ix, jy, {i, j, key} end
        end
      end
      -- compute the missing pairs row by row (one query against its gallery)
      local by_q = {}
      for k, q in ipairs(need_a) do
        by_q[q] = by_q[q] or {}
        table.insert(by_q[q], k)
      end
      local prog = #need_a > 1000 and util.progress(#need_a, {label = m, unit = "pairs"})
      local done = 0
      for q, ks in pairs(by_q) do
        local gal = {}
        for n, k in ipairs(ks) do gal[n] = S.models[S.byid[need_b[k]]] end
        local row = eval.similarity_matrix(m, {S.models[S.byid[q]]}, gal, opts)
        for n, k in ipairs(ks) do
          local w = where[k]
          out:set(w[1], w[2], row:get(1, n))
          memo[w[3]] = row:get(1, n)
        end
        done = done + #ks
        if prog then prog:update(done) end
      end
      if prog then prog:finish() end
      return out
    end
    local meth = {sim = sim}
    local k = a.pairwise_per_task
    do
      -- compare held-out models with k training models per task, and the
      -- task relations and clustering over k models per task
      meth.cls_method = {}
      meth.cls_method.sim = function(x, y)
        local sub = per_task_subset(y, k)
        local keep = {}
        for _, id in ipairs(sub) do keep[id] = true end
        local full = sim(x, sub)
        -- expand to the requested gallery with -inf where not compared
        local out = lps.full(#x, #y, -math.huge)
        local col = 0
        for j, id in ipairs(y) do
          if keep[id] then col = col + 1; for i = 1, #x do out:set(i, j, full:get(i, col)) end end
        end
        return out
      end
      meth.cross = meth.cls_method
      meth.rel_ids = per_task_subset(cls.test, k)
      meth.unseen = per_task_subset(unseen, k + 1)
    end
    results[m], task_sims[m] = evaluate(meth, meth)
  else
    fail("unknown method " .. m)
  end
  timings[m] = lps.now() - t0
  if results[m] then
    local r = results[m]
    log("%-10s top1 %.3f rank1 %.3f rank5 %.3f mAP %.3f NMI %.3f AMI %.3f tau(overlap) %.3f tau(transfer) %.3f cross %.3f (%.1fs)",
      m, r.top1, r.rank1, r.rank5, r.map, r.nmi, r.ami, r.tau_overlap, r.tau_transfer, r.cross_top1, timings[m])
  end
end

--------------------------------------------------------------- ablations

local ablations = {}
if not a.no_ablations and results.lps then
  -- LPS's defaults use the first hidden layer, layer-normalized pooled
  -- features and random unit subsets in training; each ablation changes one.
  local variants = {
    {"no_chain_norm", {chain_norm = false}},
    {"with_second_layer", {layers = 2}},
    {"first_order_pooling", {pool = "mean"}},
    {"no_layer_norm", {layer_norm = false}},
    {"all_units", {unit_keep = 1}},
    {"xent_only", {loss = "xent"}},
    {"triplet_only", {loss = "triplet"}},
  }
  for _, v in ipairs(variants) do
    local t0 = lps.now()
    ablations[v[1]] = run_lps(v[1], v[2], a.ablation_seeds)
    timings["ablation_" .. v[1]] = lps.now() - t0
  end
end

--------------------------------------------------------------- outputs

local protocol = {
  set = a.set, models = S.n, tasks = ntasks, seeds = a.seeds, ablation_seeds = a.ablation_seeds,
  lps_epochs = a.epochs, lps_options = lps.similarity.defaults,
  classification = ("top-1 task of each of the %d held-out models by its nearest (1-NN) of the %d training models")
    :format(#cls.test, #cls.train),
  retrieval = ("%d queries against %d gallery models of %d unseen tasks; LPS trained on the %d models of %d other tasks")
    :format(#ret.query, #ret.gallery, #ret.unseen_tasks, #ret.train, #ret.train_tasks),
  clustering = "k-means (k = unseen tasks, 10 restarts) on the unseen models' embeddings (features L2-normalized; pairwise-only methods: 16-D classical MDS); NMI (arithmetic) and AMI",
  task_relations = "Kendall tau-b and Spearman rho over the 190 unordered task pairs between the mean similarity of the held-out models of two tasks and (a) class overlap, (b) the transfer gain symmetrized",
  cross_setting = "1-NN top-1 of the Adam-trained held-out models against the SGD-trained training models; learned methods trained on the SGD half only",
  matching = ("pairwise only: each held-out model compared with %d training models per task; relations over %d held-out models per task; clustering over %d unseen models per task")
    :format(a.pairwise_per_task, a.pairwise_per_task, a.pairwise_per_task + 1),
  cka_probe = a.probe .. " Fashion-MNIST test images",
  seconds = timings, total_seconds = lps.now() - t_start,
}
local order = {"lps", "raw", "sorted", "stats", "stats_head", "gram", "matching", "cka"}
local metrics = {"top1", "rank1", "rank5", "rank10", "map", "nmi", "ami", "tau_overlap", "tau_transfer",
  "rho_transfer", "cross_top1"}
local function finite(t)
  local o = {}
  for k, v in pairs(t) do if type(v) ~= "number" or v == v then o[k] = v end end
  return o
end
local json_methods, json_abl = {}, {}
for k, v in pairs(results) do json_methods[k] = finite(v) end
for k, v in pairs(ablations) do json_abl[k] = finite(v) end
util.write_file(a.out .. "/lps_eval.json", cjson.encode{methods = json_methods, ablations = json_abl,
  protocol = protocol})

local md = {"# LPS on " .. a.set, "",
  ("%d models, %d tasks; means ± sd over %d LPS seeds. Generated by recipes/eval_lps.lua."):format(S.n, ntasks, a.seeds),
  "", B.markdown(results, order, metrics)}
if next(ablations) then
  local abl_order = {"no_chain_norm", "with_second_layer", "first_order_pooling", "no_layer_norm",
    "all_units", "xent_only", "triplet_only"}
  md[#md + 1] = "\n## Ablations of LPS\n"
  local both = {lps = results.lps}
  for k, v in pairs(ablations) do both[k] = v end
  table.insert(abl_order, 1, "lps")
  md[#md + 1] = B.markdown(both, abl_order, metrics)
end
util.write_file(a.out .. "/lps_eval.md", table.concat(md, "\n"))

if lps_models.lps then
  local model = lps.similarity.wrap(lps_models.lps.net, (function()
    local c = {} for t = 1, ntasks do c[t] = t end return c end)())
  model.n_train = #cls.train
  model:save(a.out .. "/lps.model")
end

-- Plots (gnuplot): task similarity next to transfer gain, and a 2-D PCA of
-- all embeddings coloured by task.
if not a.no_plots and task_sims.lps then
  local function write_matrix(path, M)
    local lines = {}
    for s = 1, #M do
      local row = {}
      for t = 1, #M do row[t] = string.format("%.5f", M[s][t] == M[s][t] and M[s][t] or 0) end
      lines[s] = table.concat(row, " ")
    end
    util.write_file(path, table.concat(lines, "\n") .. "\n")
  end
  write_matrix(a.out .. "/task_similarity.dat", task_sims.lps)
  write_matrix(a.out .. "/transfer_gain.dat", transfer.gain)
  local P = eval.pca(lps_models.lps.E, 2)
  local pts = {}
  for i = 1, S.n do pts[i] = ("%.5f %.5f %d"):format(P:get(i, 1), P:get(i, 2), S.meta[i].task) end
  util.write_file(a.out .. "/embedding_pca.dat", table.concat(pts, "\n") .. "\n")
  local gp = ([[
set terminal pngcairo size 1400,620 font ",10"
set output "%s/task_similarity_vs_transfer.png"
set multiplot layout 1,2
set size ratio 1
set xrange [-0.5:%d.5]; set yrange [%d.5:-0.5]
set xlabel "task"; set ylabel "task"
set palette defined (0 "#313695", 0.5 "#ffffbf", 1 "#a50026")
set title "LPS: mean similarity of held-out models"
plot "%s/task_similarity.dat" matrix with image notitle
set title "Transfer gain (fine-tuned minus scratch accuracy; row = source)"
plot "%s/transfer_gain.dat" matrix with image notitle
unset multiplot
set output "%s/embedding_pca.png"
set terminal pngcairo size 900,800 font ",10"
set size noratio
set autoscale
set xlabel "PC 1"; set ylabel "PC 2"
set title "LPS embeddings of all %d models (PCA), coloured by task"
set palette rgbformulae 33,13,10
set cbrange [1:%d]
plot "%s/embedding_pca.dat" using 1:2:3 with points pt 7 ps 0.8 palette notitle
]]):format(a.out, ntasks - 1, ntasks - 1, a.out, a.out, a.out, S.n, ntasks, a.out)
  util.write_file(a.out .. "/plots.gp", gp)
  local ok = os.execute("gnuplot '" .. a.out .. "/plots.gp' 2>/dev/null")
  if not ok then log("gnuplot failed; the data files and %s/plots.gp are there", a.out) end
end

io.write(table.concat(md, "\n"), "\n")
print(("Results: %s/lps_eval.json, %s/lps_eval.md; plots: %s/task_similarity_vs_transfer.png, %s/embedding_pca.png; model: %s/lps.model")
  :format(a.out, a.out, a.out, a.out, a.out))
print(("Evaluation took %s."):format(util.fmt_time(lps.now() - t_start)))
