-- Speed of the LPS second-order network on ModelSet500-shaped models
-- (784-64-64-2): per-model forward and forward+backward, embedding
-- throughput, and training on 300 models; the peer is the floor of the
-- same work, the first-layer encoder's matrix products alone (lps.matmul,
-- i.e. raw sgemm), timed in the same run at its best of 1..T OpenBLAS
-- threads (printed: a slower floor would flatter the ratio). Medians of repeats.
--   lua5.4 scripts/bench_lps.lua [--epochs 30] [--threads 1,2] [--quick]
package.path = "./?.lua;./?/init.lua;" .. package.path
local BC = require "scripts.bench_common"
local median = BC.median
local lps = require "lualps"
local sim = lps.similarity
local util = lps.util
local peers = require "scripts.peer_threads"

local args = {epochs = 30, threads = "1,2", quick = false}
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--epochs" then args.epochs = tonumber(arg[i + 1]); i = i + 1
    elseif a == "--threads" then args.threads = arg[i + 1]; i = i + 1
    elseif a == "--quick" then args.quick = true
    else error("bench_lps: unknown argument " .. a) end
    i = i + 1
  end
end


local function time(f, reps)
  local t = {}
  for r = 1, reps do
    local t0 = lps.now()
    f()
    t[r] = lps.now() - t0
  end
  return median(t)
end

-- PyTorch-default-like initialization (uniform +-1/sqrt(fan_in)).
local g = lps.generator(1)
local function model()
  local m, sizes = {}, {784, 64, 64, 2}
  for l = 2, #sizes do
    local s = 1 / math.sqrt(sizes[l - 1])
    m[#m + 1] = lps.rand(sizes[l], sizes[l - 1], g):mul_(2 * s):sub_(s)
    m[#m + 1] = lps.rand(sizes[l], g):mul_(2 * s):sub_(s)
  end
  return m
end

local N, TASKS, B = args.quick and 64 or 300, 12, 32
local models, labels = {}, {}
for i = 1, N do
  models[i] = model()
  labels[i] = (i - 1) % TASKS + 1
end
local reps = args.quick and 3 or 7

print(("LPS network, default options (width 64, embedding 64, power pooling), %d models 784-64-64-2"):format(N))
print(("%-8s %12s %12s %12s %12s %-8s %12s %10s"):format("threads", "prepare", "forward", "fwd+bwd",
  "sgemm floor", "floor at", "embed", "ratio"))
print(("%-8s %12s %12s %12s %12s %-8s %12s %10s"):format("", "ms/model", "ms/model", "ms/model", "ms/model", "",
  "models/s", "fb/floor"))
local results = {}
for th in args.threads:gmatch("%d+") do
  lps.set_num_threads(tonumber(th))
  local net = sim.network{classes = TASKS}
  local batch, blab = {}, {}
  for i = 1, B do batch[i], blab[i] = models[i], labels[i] end
  local prepared = {}
  local tp = time(function() for i = 1, B do prepared[i] = net:prepare(batch[i]) end end, reps) / B
  local tf = time(function() net:forward(prepared) end, reps) / B
  local tfb = time(function()
    net:zero_grad()
    local Y = net:forward(prepared)
    local _, dY = net:loss(Y, blab)
    net:backward(dY)
  end, reps) / B
  -- floor: the first layer's three products per model (forward, dA, none for dU)
  local U, A = lps.randn(64, 784, g), lps.randn(64, 786, g):rows(1, 64)
  local A784 = lps.randn(64, 784, g)
  local G = lps.randn(64, 64, g)
  local te = time(function() net:embed(models) end, args.quick and 1 or 3)
  local best, inv = peers.best(peers.splits(tonumber(th), {"blas"}), function(s)
    lps.set_num_threads(s.blas)
    return 1 / time(function()
      for _ = 1, B do
        lps.matmul(U, A784, false, true)  -- Z = U A^T
        lps.matmul(G, U, true, false)     -- dA = G^T U
      end
    end, reps)
  end)
  local tmm = 1 / inv / B
  results[#results + 1] = {threads = tonumber(th), prepare_ms = tp * 1e3, forward_ms = tf * 1e3,
    fwd_bwd_ms = tfb * 1e3, floor_ms = tmm * 1e3, floor_setting = best.label, embed_per_s = N / te}
  print(("%-8s %12.3f %12.3f %12.3f %12.3f %-8s %12.0f %10.1f"):format(th, tp * 1e3, tf * 1e3, tfb * 1e3,
    tmm * 1e3, best.label, N / te, tfb / tmm))
  local _ = A
end

-- Training on N models (the issue's goal: under 60 s for 300 on 2 cores).
lps.set_num_threads(2)
local net = sim.network{classes = TASKS}
local rep = sim.train_network(net, models, labels, {epochs = args.epochs})
print(("train_network: %d models, %d epochs, batch 32, loss both: %.1f s (%.2f ms per model-step)")
  :format(N, args.epochs, rep.seconds, rep.seconds / (N * args.epochs) * 1e3))
if util and util.peak_rss_mb then print(("peak RSS %.0f MB"):format(util.peak_rss_mb())) end
