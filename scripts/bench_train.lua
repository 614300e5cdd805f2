#!/usr/bin/env lua5.4
--- Training throughput, lualps against PyTorch (scripts/bench_train_torch.py),
-- on the same Fashion-MNIST data, models, batch sizes, optimizers and thread
-- budgets. Each side trains in its own process (so peak RSS is its own), one
-- warm-up epoch then timed epochs; medians are quoted. lualps spends a budget
-- of T threads on OpenBLAS (its only pool; OpenMP is pinned to 1). PyTorch
-- runs at its best split of T over its intra-op (OpenMP) and OpenBLAS pools,
-- every split tried (scripts/peer_threads.lua); its setting is printed. Both
-- sides run with glibc malloc keeping freed memory (peers.MALLOC: without it
-- PyTorch page-faults every step and its speed swings with the host). Its
-- best at budget T also counts its runs at smaller budgets (peers.best_up_to):
-- on a shared machine a split's speed moves with the load between runs.
--   (a) 784-256-128-10, Adam 1e-3, batch 128
--   (b) 784-64-64-2 on two classes (9600 images, a ModelSet500 task), SGD
--       lr 0.05 momentum 0.9, batch 64
--   (c) CNN conv(1,32,3,p1)-relu-pool2-conv(32,64,3,p1)-relu-pool2-linear(3136,128)
--       -relu-linear(128,10), Adam 1e-3, batch 128
--   (d) residual CNN with batch norm (ARCH_D below: conv 16 + BN + ReLU, a
--       residual block with the identity shortcut, one with a strided 1x1
--       conv + BN shortcut to 32 channels, global average pooling, linear),
--       Adam 1e-3, batch 128; PyTorch builds the same module from the same
--       arch (scripts/torch_interop.py FROM_ARCH)
-- usage: lua5.4 scripts/bench_train.lua [--threads 1,2] [--models abcd] [--epochs 3] [--quick]
package.path = "./?.lua;./?/init.lua;" .. package.path
local BC = require "scripts.bench_common"
local median, run_json, loadavg, vmhwm_mb = BC.median, BC.run_json, BC.loadavg, BC.vmhwm_mb
local argparse = require "argparse"
local cjson = require "cjson"
local peers = require "scripts.peer_threads"

local p = argparse("bench_train", "lualps vs PyTorch training throughput")
p:option("--threads", "thread budgets", "1,2")
p:option("--models", "which of a, b, c, d", "abcd")
p:option("--epochs", "timed epochs per run", "3")
p:flag("--quick", "fewer samples (a smoke run)")
p:option("--worker", "internal: run one lualps configuration"):hidden(true)
p:option("--worker-threads"):hidden(true)
p:option("--samples"):hidden(true)
local args = p:parse()

-- Samples used per model: enough for steady state, short enough to repeat.
local SAMPLES = {a = 20000, b = 9600, c = 3000, d = 3000}
if args.quick then SAMPLES = {a = 5000, b = 9600, c = 600, d = 600} end

-- (d), as an arch list: both sides build their model from it.
local function conv(cin, cout, k, stride)
  return {type = "conv2d", ["in"] = cin, out = cout, kernel = k, stride = stride or 1, padding = k // 2, bias = false}
end
local function bn(c) return {type = "batchnorm2d", features = c} end
local RELU = {type = "relu"}
local ARCH_D = {{type = "input", shape = {1, 28, 28}},
  conv(1, 16, 3), bn(16), RELU,
  {type = "residual", body = {conv(16, 16, 3), bn(16), RELU, conv(16, 16, 3), bn(16)}, shortcut = {}}, RELU,
  {type = "residual", body = {conv(16, 32, 3, 2), bn(32), RELU, conv(32, 32, 3), bn(32)},
    shortcut = {conv(16, 32, 1, 2), bn(32)}}, RELU,
  {type = "adaptive_avgpool2d", output = 1}, {type = "flatten"}, {type = "linear", ["in"] = 32, out = 10}}


-- Training FLOPs per sample (multiply-adds x 2): forward, weight gradient,
-- and input gradient for every layer but the first.
local function linear_flops(dims)
  local f = 0
  for i = 1, #dims - 1 do
    local mac = dims[i] * dims[i + 1]
    f = f + 2 * mac * (i == 1 and 2 or 3)
  end
  return f
end
local FLOPS = {
  a = linear_flops{784, 256, 128, 10},
  b = linear_flops{784, 64, 64, 2},
  c = 2 * (9 * 32 * 784 * 2 + 288 * 64 * 196 * 3) + linear_flops{3136, 128, 10} + 2 * 3136 * 128,
  -- convolutions at 28x28 then 14x14 (the first without an input gradient), the head
  d = 2 * (9 * 16 * 784 * 2 + 9 * 16 * 16 * 784 * 2 * 3 + (9 * 16 * 32 + 9 * 32 * 32 + 16 * 32) * 196 * 3)
    + linear_flops{32, 10} + 2 * 32 * 10,
}

------------------------------------------------------------------ worker
if args.worker then
  local lps = require "lualps"
  local nn, optim = lps.nn, lps.optim
  local which, threads = args.worker, tonumber(args.worker_threads)
  lps.set_num_threads(threads)
  local x, y = lps.data.fashion_mnist("train")
  local model, opt, bs
  local g = lps.generator(0)
  if which == "b" then
    x, y = lps.data.select_classes(x, y, {1, 2})
    x, y = x:rows(1, 9600), y:rows(1, 9600)
    model = nn.mlp{784, 64, 64, 2, generator = g}
    opt, bs = optim.sgd{lr = 0.05, momentum = 0.9}, 64
  elseif which == "d" then
    x = x:reshape(x:size(1), 1, 28, 28)
    model = nn.from_arch(ARCH_D, g)
    opt, bs = optim.adam{lr = 1e-3}, 128
  elseif which == "a" then
    model = nn.mlp{784, 256, 128, 10, generator = g}
    opt, bs = optim.adam{lr = 1e-3}, 128
  else
    x = x:reshape(x:size(1), 1, 28, 28)
    model = nn.sequential{nn.conv2d(1, 32, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2),
      nn.conv2d(32, 64, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2), nn.flatten(),
      nn.linear(3136, 128, g), nn.relu(), nn.linear(128, 10, g)}
    opt, bs = optim.adam{lr = 1e-3}, 128
  end
  local n = tonumber(args.samples)
  if n and n < x:size(1) then x, y = x:rows(1, n), y:rows(1, n) end
  local d = {x = x, y = y}
  local o = {optimizer = opt, batch_size = bs, epochs = 1, generator = lps.generator(1), progress = false}
  lps.train(model, d, o) -- warm-up, as on the PyTorch side
  o.epochs = tonumber(args.epochs)
  local r = lps.train(model, d, o)
  local sps = {}
  for i, e in ipairs(r.epochs) do sps[i] = x:size(1) / e.seconds end
  -- raw sgemm peak in this process: 1024^3 products through lps.matmul
  local A, B = lps.rand(1024, 1024), lps.rand(1024, 1024)
  lps.matmul(A, B)
  local peaks = {}
  for i = 1, 5 do
    local t0 = lps.now()
    lps.matmul(A, B)
    peaks[i] = 2 * 1024 ^ 3 / (lps.now() - t0) / 1e9
  end
  print(cjson.encode{side = "lualps", model = which, threads = threads, samples = x:size(1),
    samples_per_second = sps, median = median(sps), loss = r.loss, accuracy = r.accuracy,
    rss_mb = vmhwm_mb(), sgemm_gflops = median(peaks)})
  os.exit(0)
end

------------------------------------------------------------------ driver


local self = arg[0]
local arch_json = select(2, require("lualps.arch").check(ARCH_D))
local rows = {}
local earlier = {} -- per model, the peer's measurements at smaller budgets (peers.best_up_to)
print(("load average before: %s"):format(loadavg()))
print(BC.kernels())
for th in args.threads:gmatch("%d+") do
  for which in args.models:gmatch("[abcd]") do
    local n = SAMPLES[which]
    local l = run_json(("%s%slua5.4 %s --worker %s --worker-threads %s --samples %d --epochs %s")
      :format(peers.env{blas = tonumber(th)}, peers.MALLOC, self, which, th, n, args.epochs))
    earlier[which] = earlier[which] or {}
    local best, _, t, all, at = peers.best_up_to(earlier[which], tonumber(th),
      peers.splits(tonumber(th), {"intra", "blas"}), function(s)
      local r = run_json(("%s%s/usr/bin/python3 scripts/bench_train_torch.py --model %s --intra %d --blas %d "
        .. "--samples %d --epochs %s%s"):format(peers.env(s), peers.MALLOC, which, s.intra, s.blas, n, args.epochs,
        which == "d" and (" --arch '%s'"):format(arch_json) or ""))
      io.stderr:write(("  (%s) budget %s, torch %s: %.0f samples/s\n"):format(which, th, s.label, r.median))
      return r.median, r
    end)
    rows[#rows + 1] = {which = which, th = tonumber(th), l = l, t = t, tried = all, at = at,
      setting = best.label .. (at < tonumber(th) and "*" or "")}
  end
end

print(("%-28s %3s %12s %12s %-17s %7s %9s %9s %8s %8s"):format("model", "thr", "lualps/s", "torch/s",
  "torch setting", "ratio", "GFLOP/s", "sgemm pk", "RSS lps", "RSS pt"))
local names = {a = "(a) 784-256-128-10 Adam/128", b = "(b) 784-64-64-2 SGD/64", c = "(c) CNN Adam/128",
  d = "(d) ResNet+BN Adam/128"}
local summary = {}
for _, r in ipairs(rows) do
  local gf = FLOPS[r.which] * r.l.median / 1e9
  print(("%-28s %3d %12.0f %12.0f %-17s %6.2fx %9.1f %9.1f %7.0fM %7.0fM"):format(names[r.which], r.th,
    r.l.median, r.t.median, r.setting, r.l.median / r.t.median, gf, r.l.sgemm_gflops, r.l.rss_mb, r.t.rss_mb))
  summary[#summary + 1] = {model = r.which, threads = r.th, lualps = r.l.median, torch = r.t.median,
    torch_setting = r.setting, torch_tried = r.tried, torch_budget = r.at, ratio = r.l.median / r.t.median, gflops = gf,
    sgemm_peak = r.l.sgemm_gflops, rss_lualps_mb = r.l.rss_mb, rss_torch_mb = r.t.rss_mb}
end
print("thr: thread budget; lualps uses it as OpenBLAS threads; torch/s is PyTorch's best split of it")
print("(torch setting: intra-op OpenMP x OpenBLAS threads); ratio = lualps / torch best")
print("torch's best at a budget counts every split of it and every split it measured at a smaller")
print("budget (fewer threads fit too; a split's speed varies with the machine's load between runs);")
print("* marks a best measured at a smaller budget; both sides run with " .. peers.MALLOC)
print(("load average after: %s"):format(loadavg()))
print(cjson.encode(summary))
