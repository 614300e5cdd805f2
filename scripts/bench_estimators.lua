#!/usr/bin/env lua5.4
-- Transferability estimators (lps.estimators) per candidate model, at the
-- model-selection budget (n = 128 target images, 4 target classes) and the
-- feature widths of the transfer pool's reference models: the MLP's
-- penultimate 64 units and the CNN's flattened 16 x 7 x 7 = 784 maps. The
-- peer is the reference LogME (LogME.py's fixed-point fit, in numpy:
-- scripts/logme_reference.py) on the same candidates' features, measured in
-- the same run at its best OpenBLAS thread count (1..THREADS, printed).
-- Also the forward pass that yields F and theta (lps.estimators.outputs)
-- through each reference model, which a selection pays per candidate too.
-- lualps runs on THREADS BLAS threads. Median ms per candidate (each
-- candidate's median over repeats, then the median over candidates).
-- Usage: lua5.4 scripts/bench_estimators.lua [THREADS]
package.path = "./?.lua;./?/init.lua;" .. package.path
local BC = require "scripts.bench_common"
local peers = require "scripts.peer_threads"
local lps = require "lualps"
local E = lps.estimators

local threads = tonumber(arg[1]) or 1
lps.set_num_threads(threads)
local N, CLASSES, SOURCE, CANDIDATES, REPEATS = 128, 4, 5, 8, 15
local PY = "/usr/bin/python3"

local function time_ms(f) return BC.time_ms(REPEATS, f) end

-- Candidate i's features: ReLU of a random projection of shared inputs
-- (correlated columns, a few dead units, as a trained body gives).
local g = lps.generator(2026)
local y = {}
for i = 1, N do y[i] = (i - 1) % CLASSES + 1 end
local function candidates(d)
  local x, out = lps.randn(N, 32, g), {}
  for c = 1, CANDIDATES do out[c] = (lps.matmul(x, lps.randn(d, 32, g), false, true) + lps.randn(N, d, g) * 0.5):relu() end
  return out
end

local function write_f32(path, list)
  local f = assert(io.open(path, "wb"))
  for _, F in ipairs(list) do
    local t = F:reshape(-1):totable()
    for s = 1, #t, 4096 do f:write(string.pack("<" .. ("f"):rep(math.min(4096, #t - s + 1)), table.unpack(t, s, math.min(#t, s + 4095)))) end
  end
  f:close()
end

-- The numpy reference at its best thread count: ms per candidate, scores, label.
local function numpy_logme(list, d)
  local ok = os.execute(PY .. " -c 'import numpy' 2>/dev/null")
  if not ok then return nil end
  local fpath, ypath = os.tmpname(), os.tmpname()
  write_f32(fpath, list)
  local yf = assert(io.open(ypath, "w"))
  for i = 1, N do yf:write(y[i] - 1, "\n") end
  yf:close()
  local best, score, payload = peers.best(peers.splits(threads, {"blas"}), function(s)
    local r = BC.run_json(("%s%s scripts/logme_reference.py bench %s %s %d %d %d %d"):format(
      peers.env(s) .. peers.MALLOC, PY, fpath, ypath, N, d, #list, REPEATS))
    local ms = BC.median(r.ms)
    return -ms, r
  end)
  os.remove(fpath)
  os.remove(ypath)
  return -score, payload.scores, best.label
end

local function reference_models(k)
  local mlp = lps.nn.mlp{784, 128, 64, k, generator = g}
  local cnn = lps.nn.from_arch({
    {type = "conv2d", ["in"] = 1, out = 8, kernel = 5, stride = 2, padding = 2}, {type = "relu"},
    {type = "conv2d", ["in"] = 8, out = 16, kernel = 3, stride = 2, padding = 1}, {type = "relu"},
    {type = "flatten"}, {type = "linear", ["in"] = 784, out = k}}, g)
  return {[64] = mlp, [784] = cnn}
end

print(("transferability estimators, n = %d images, %d classes, %d candidates x %d repeats; lualps on %d BLAS thread(s); load %s")
  :format(N, CLASSES, CANDIDATES, REPEATS, threads, BC.loadavg()))
print("median ms per candidate")
print(("%-5s %9s %9s %9s %9s %9s %9s | %11s %9s %-9s %8s"):format("D", "forward", "logme", "exact", "leep", "knn(1)",
  "probe", "numpy logme", "ratio", "numpy at", "max diff"))
local images, models = lps.rand(N, 784, g), reference_models(SOURCE)
for _, d in ipairs{64, 784} do
  local list = candidates(d)
  local thetas = {}
  for c = 1, CANDIDATES do thetas[c] = E.softmax(lps.randn(N, SOURCE, g) * 2) end
  local function per_candidate(f)
    local ms = {}
    for c = 1, CANDIDATES do ms[c] = time_ms(function() f(c) end) end
    return BC.median(ms)
  end
  local mine = {}
  for c = 1, CANDIDATES do mine[c] = E.logme(list[c], y) end
  local fwd = time_ms(function() E.outputs(models[d], images) end)
  local t = {
    logme = per_candidate(function(c) E.logme(list[c], y) end),
    exact = per_candidate(function(c) E.logme(list[c], y, {exact = true}) end),
    leep = per_candidate(function(c) E.leep(thetas[c], y) end),
    knn = per_candidate(function(c) E.knn(list[c], y) end),
    probe = per_candidate(function(c) E.linear_probe(list[c], y) end),
  }
  local np_ms, np_scores, np_at = numpy_logme(list, d)
  local diff = 0
  for c = 1, CANDIDATES do diff = math.max(diff, np_scores and math.abs(np_scores[c] - mine[c]) or 0) end
  print(("%-5d %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f | %11s %9s %-9s %8s"):format(d, fwd, t.logme, t.exact, t.leep, t.knn,
    t.probe, np_ms and ("%.3f"):format(np_ms) or "n/a", np_ms and ("%.2fx"):format(np_ms / t.logme) or "",
    np_at or "", np_ms and ("%.1e"):format(diff) or ""))
end
print("forward: lps.estimators.outputs through the pool's reference MLP (784-128-64-5) or CNN (8c5s2-16c3s2-5)")
print("ratio: numpy's ms / lualps's ms for LogME (> 1: lualps faster); max diff: |score difference| over candidates")
