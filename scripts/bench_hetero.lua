#!/usr/bin/env lua5.4
--- Speed of LPS for every architecture (lualps/similarity/archnet.lua, the "templates"
-- slot over noise ranges U(0,0.2) and U(0.8,1)) on ModelSet-Hetero:
--   (1) training on split (a)'s training models (classification.train),
--       lps.benchmark.methods.lps with transfer relations: seconds with the
--       one-off preparation (class templates) and again on the same models
--       (preparation cached per model table), and lps_hybrid's fit with its
--       inner validation; target <= 60 s;
--   (2) embedding throughput streamed from the store, record by record,
--       batch 64, all CNNs and all MLPs of the set; target >= 1,000 CNNs/s;
--   (3) the class templates of N CNNs against PyTorch
--       (scripts/bench_hetero_torch.py) on the same noise images, at its best
--       split of the thread budget (scripts/peer_threads.lua) and its faster
--       way of taking k input gradients; both sides time the templates alone,
--       from modules built before the clock starts (file reading and module
--       construction excluded on both sides); lualps building its module
--       from the weights, as (1) and (2) do, is printed beside. The two
--       sides' templates must agree (max abs difference printed).
-- Medians of repeats, each from a collected Lua heap (collectgarbage).
-- Threads: lualps spends the budget on OpenBLAS.
-- usage: lua5.4 scripts/bench_hetero.lua [--set build/modelset_hetero.lpsm] [--threads 1,2] [--quick]
package.path = "./?.lua;./?/init.lua;" .. package.path
local BC = require "scripts.bench_common"
local median, loadavg = BC.median, BC.loadavg
local argparse = require "argparse"
local cjson = require "cjson"
local lps = require "lualps"
local peers = require "scripts.peer_threads"
local B, util, record = lps.benchmark, lps.util, lps.similarity.record

local p = argparse("bench_hetero", "LPS training, embedding and template speed on ModelSet-Hetero, vs PyTorch")
p:option("--set", "the model set (splits and transfer matrix beside it)", "build/modelset_hetero.lpsm")
p:option("--threads", "thread budgets", "1,2")
p:option("--epochs", "LPS training epochs", "30"):convert(math.tointeger)
p:option("--repeats", "repeats of each timing (median quoted)", "3"):convert(math.tointeger)
p:option("--peer-models", "CNNs whose templates both sides compute", "200"):convert(math.tointeger)
p:flag("--quick", "a smoke run: 96 training models, 3 epochs, 128 models per family, 32 peer CNNs, 1 repeat")
local a = p:parse()
for _, k in ipairs{"epochs", "repeats", "peer_models"} do if not (a[k] and a[k] >= 1) then p:error(k .. " < 1") end end
local N_TRAIN, N_FAMILY = math.huge, math.huge
if a.quick then N_TRAIN, N_FAMILY, a.epochs, a.repeats, a.peer_models = 96, 128, 3, 1, 32 end


local ms <close> = lps.modelset.open(a.set)
local splits = cjson.decode(assert(util.read_file(a.set .. ".splits.json")))
local transfer = cjson.decode(assert(util.read_file(a.set .. ".transfer.json")))
local byid, of_family = {}, {cnn = {}, mlp = {}}
for i = 1, #ms do
  local m = ms:meta(i)
  byid[m.id] = i
  local f = of_family[m.family] -- (ResNets are not timed)
  if f and #f < N_FAMILY then f[#f + 1] = i end
end
local train_ids = table.move(splits.classification.train, 1, math.min(N_TRAIN, #splits.classification.train), 1, {})
local LPS = {families = {"mlp", "cnn"}, slots = {"templates"}, noise_ranges = { {0, 0.2}, {0.8, 1} },
  relations = "transfer", epochs = a.epochs}
local method, ctx = B.methods.lps(LPS), {seed = 1, tasks = splits.tasks, transfer = transfer}
local HYB = {hybrid = true} -- lps_hybrid: an inner validation (a second training) fits its weight and gate
for k, v in pairs(LPS) do HYB[k] = v end
local hybrid = B.methods.lps(HYB)
local budgets = {}
for th in a.threads:gmatch("%d+") do budgets[#budgets + 1] = tonumber(th) end
print(("ModelSet-Hetero %s: %d models (%d MLPs, %d CNNs used); load average before: %s"):format(a.set, #ms,
  #of_family.mlp, #of_family.cnn, loadavg()))
print(BC.kernels())

-- Fresh model tables (as lps.benchmark.load gives fit: with classes, domain), so preparation is not cached.
local function training_models()
  local models, labels = {}, {}
  for k, id in ipairs(train_ids) do
    local i = byid[id]
    local w, meta = record(ms, i), ms:meta(i)
    w.classes, w.domain = meta.classes, meta.domain
    models[k], labels[k] = w, meta.task
  end
  return models, labels
end

------------------------------------------------------------------ (1) training
local train, fitted = {}, nil
for _, th in ipairs(budgets) do
  lps.set_num_threads(th)
  local cold, warm, hyb = {}, {}, {}
  for r = 1, a.repeats do
    local models, labels = training_models()
    collectgarbage()
    local t0 = lps.now()
    fitted = method:fit(models, labels, ctx)
    cold[r] = lps.now() - t0
    collectgarbage()
    t0 = lps.now()
    method:fit(models, labels, ctx)
    warm[r] = lps.now() - t0
    models, labels = training_models()
    collectgarbage()
    t0 = lps.now()
    hybrid:fit(models, labels, ctx)
    hyb[r] = lps.now() - t0
  end
  train[th] = {cold = median(cold), warm = median(warm), hybrid = median(hyb)}
end

------------------------------------------------------------------ (2) streamed embedding
-- Records read, decoded and embedded batch by batch: memory holds one batch.
local function stream(net, idx)
  for s = 1, #idx, 64 do
    local chunk = {}
    for k = s, math.min(#idx, s + 63) do chunk[#chunk + 1] = record(ms, idx[k]) end
    net:embed(chunk, 64)
  end
end
local embed = {}
for _, th in ipairs(budgets) do
  lps.set_num_threads(th)
  embed[th] = {}
  for fam, idx in pairs(of_family) do
    local rate = {}
    stream(fitted.net, {idx[1]}) -- warm-up
    for r = 1, a.repeats do
      collectgarbage() -- each repeat from a collected heap: the fits' garbage (about 12% of the rate) is not the stream's
      local t0 = lps.now()
      stream(fitted.net, idx)
      rate[r] = #idx / (lps.now() - t0)
    end
    embed[th][fam] = median(rate)
  end
end

------------------------------------------------------------------ (3) templates vs PyTorch
local net, dir = fitted.net, assert(io.popen("mktemp -d")):read("l")
local peer_idx, cnn = {}, of_family.cnn -- spread over the set's tasks and architectures
for k = 1, math.min(a.peer_models, #cnn) do peer_idx[k] = cnn[1 + (k - 1) * #cnn // math.min(a.peer_models, #cnn)] end
local weights, modules, ref = {}, {}, {}
for k, i in ipairs(peer_idx) do
  local name = ("%04d"):format(k)
  weights[k], modules[k] = record(ms, i), {module = (ms:get(i))}
  lps.export_safetensors(modules[k].module, ("%s/cnn_%s.safetensors"):format(dir, name))
  ref[name] = net:templates(weights[k], "cnn")
end
util.write_file(dir .. "/noise.safetensors", lps.safetensors.encode{noise = assert(net.noise_x)}) -- as drawn by net
util.write_file(dir .. "/lualps_templates.safetensors", lps.safetensors.encode(ref))
local function rate_of(list)
  local rate = {}
  for r = 1, a.repeats do
    collectgarbage()
    local t0 = lps.now()
    for _, m in ipairs(list) do net:templates(m, "cnn") end
    rate[r] = #list / (lps.now() - t0)
  end
  return median(rate)
end
local peer, have_torch = {}, os.execute("/usr/bin/python3 -c 'import torch' 2>/dev/null")
for _, th in ipairs(budgets) do
  lps.set_num_threads(th)
  local row = {lualps = rate_of(modules), lualps_build = rate_of(weights)}
  if have_torch then
    local best, _, r = peers.best(peers.splits(th, {"intra", "blas"}), function(s)
      local cmd = ("%s%s/usr/bin/python3 scripts/bench_hetero_torch.py --dir %s --intra %d --blas %d --ranges %d "
        .. "--repeats %d"):format(peers.env(s), peers.MALLOC, dir, s.intra, s.blas, #LPS.noise_ranges, a.repeats)
      local f = assert(io.popen(cmd))
      local out = f:read("a")
      local last = out:match("([^\n]+)\n?$")
      if not f:close() or not last or not last:match("^{") then error("torch peer failed: " .. cmd .. "\n" .. out) end
      local r = cjson.decode(last)
      io.stderr:write(("  budget %d, torch %s: %.0f CNNs/s (%s)\n"):format(th, s.label, r.median, r.way))
      return r.median, r
    end)
    row.torch, row.setting = r, best.label
  end
  peer[th] = row
end
os.execute("rm -rf " .. dir)

------------------------------------------------------------------ report
local function met(ok) return ok and "met" or "missed" end
print(("\n(1) LPS training, %d models of classification.train, %d epochs, relations transfer; s, median of %d;"
  .. " prep = with - without"):format(#train_ids, a.epochs, a.repeats))
print(("%3s %14s %14s %12s %10s %12s %10s"):format("thr", "with prep", "without prep", "prep", "<= 60 s",
  "lps_hybrid", "<= 60 s"))
for _, th in ipairs(budgets) do
  local t = train[th]
  print(("%3d %14.1f %14.1f %12.1f %10s %12.1f %10s"):format(th, t.cold, t.warm, t.cold - t.warm, met(t.cold <= 60),
    t.hybrid, met(t.hybrid <= 60)))
end
print("lps_hybrid: with prep, its inner validation included (lualps/similarity/hybrid.lua)")
print(("\n(2) embedding streamed from the store (by record, batch 64), models/s, median of %d"):format(a.repeats))
print(("%3s %12s %12s %12s"):format("thr", "CNNs/s", "MLPs/s", ">= 1000"))
for _, th in ipairs(budgets) do
  print(("%3d %12.0f %12.0f %12s"):format(th, embed[th].cnn, embed[th].mlp, met(embed[th].cnn >= 1000)))
end
print(("\n(3) class templates of %d CNNs (%d noise images), models/s, median of %d; modules built before timing"
  .. " on both sides"):format(#peer_idx, net.noise_x:size(1), a.repeats))
print(("%3s %10s %12s %10s %-17s %-8s %7s %10s"):format("thr", "lualps", "lualps+build", "torch", "torch setting",
  "way", "ratio", "max|diff|"))
local summary = {}
for _, th in ipairs(budgets) do
  local r, t = peer[th], peer[th].torch
  if t then
    print(("%3d %10.0f %12.0f %10.0f %-17s %-8s %6.2fx %10.2g"):format(th, r.lualps, r.lualps_build, t.median,
      r.setting, t.way, r.lualps / t.median, t.max_abs_diff))
  else
    print(("%3d %10.0f %12.0f %10s (torch missing: no peer)"):format(th, r.lualps, r.lualps_build, "-"))
  end
  summary[#summary + 1] = {threads = th, train_seconds = train[th].cold, train_seconds_prepared = train[th].warm,
    train_seconds_hybrid = train[th].hybrid,
    embed_cnn_per_s = embed[th].cnn, embed_mlp_per_s = embed[th].mlp, templates_lualps = r.lualps,
    templates_lualps_build = r.lualps_build, templates_torch = t and t.median, torch_setting = r.setting,
    torch_way = t and t.way, ratio = t and r.lualps / t.median, max_abs_diff = t and t.max_abs_diff}
end
print("thr: thread budget (lualps: OpenBLAS threads; torch: its best split, intra-op OpenMP x OpenBLAS)\n"
  .. "lualps+build: lualps also building each module from its weights, as training and embedding do")
print(("load average after: %s"):format(loadavg()))
print(cjson.encode(summary))
