#!/usr/bin/env lua5.4
--- Small-CNN training throughput, lualps against PyTorch (scripts/bench_conv_torch.py),
-- forward + backward + Adam step on 28x28 Fashion-MNIST images, for the kinds
-- of CNN the ModelSet-Hetero benchmark trains by the hundred (2-3 conv layers,
-- 3x3 or 5x5 kernels, 4-32 channels, stride 2 or max-pooling, a linear head,
-- batch 32..128) and for bench_train's model (c). Each side runs every model
-- in its own process per thread count: one warm-up epoch, then --epochs
-- timed epochs of --samples images; medians are quoted. PyTorch runs at its
-- best setting: for T threads, the faster of 1..T threads.
-- Columns: samples/s (wall clock) of each side and their ratio; "per thr" is
-- the ratio of samples/s per thread (lualps / T against PyTorch / its
-- threads); "us cpu" is process CPU time per sample (sturdier than the wall
-- clock on a shared machine).
--   usage: lua5.4 scripts/bench_conv.lua [--threads 1,2] [--models c,s1,...] [--samples 2048] [--epochs 3]
package.path = "./?.lua;./?/init.lua;" .. package.path
local BC = require "scripts.bench_common"
local peers = require "scripts.peer_threads"
local median, run_json, loadavg = BC.median, BC.run_json, BC.loadavg
local argparse = require "argparse"
local cjson = require "cjson"

-- name = {batch, layers}: cI,O,K,S,P conv2d; r relu; pK maxpool2d; f flatten; lI,O linear
local MODELS = {
  {"c", 128, "c1,32,3,1,1 r p2 c32,64,3,1,1 r p2 f l3136,128 r l128,10"},
  {"s1", 32, "c1,8,3,1,1 r p2 c8,16,3,1,1 r p2 f l784,10"},
  {"s2", 64, "c1,8,5,2,2 r c8,16,5,2,2 r f l784,10"},
  {"s3", 128, "c1,4,3,1,1 r p2 c4,8,3,1,1 r p2 c8,16,3,1,1 r f l784,10"},
  {"s4", 64, "c1,16,5,1,2 r p2 c16,32,5,1,2 r p2 f l1568,10"},
  {"s5", 32, "c1,32,3,2,1 r c32,32,3,2,1 r f l1568,10"},
  {"s6", 64, "c1,6,5,1,0 r p2 c6,16,5,1,0 r p2 f l256,10"},
}

local p = argparse("bench_conv", "small-CNN training: lualps vs PyTorch")
p:option("--threads", "thread counts", "1,2")
p:option("--models", "comma-separated names (default: all)")
p:option("--samples", "images per epoch", "2048")
p:option("--epochs", "timed epochs", "3")
p:option("--worker", "internal: run the lualps side"):hidden(true)
local args = p:parse()


local selected = {}
for _, m in ipairs(MODELS) do selected[#selected + 1] = m end
if args.models then
  local want, byname = {}, {}
  for _, m in ipairs(MODELS) do byname[m[1]] = m end
  for name in args.models:gmatch("[^,]+") do
    want[#want + 1] = assert(byname[name], "unknown model " .. name)
  end
  selected = want
end

------------------------------------------------------------------ worker
if args.worker then
  local lps = require "lualps"
  local nn = lps.nn
  local threads = tonumber(args.worker)
  lps.set_num_threads(threads)
  local x, y = lps.data.fashion_mnist("train")
  local n = tonumber(args.samples)
  x, y = x:rows(1, n):reshape(n, 1, 28, 28), y:rows(1, n)
  local out = {}
  for _, m in ipairs(selected) do
    local name, bs, spec = m[1], m[2], m[3]
    local g = lps.generator(0)
    local layers = {}
    for tok in spec:gmatch("%S+") do
      local kind, rest = tok:sub(1, 1), tok:sub(2)
      local v = {}
      for num in rest:gmatch("%d+") do v[#v + 1] = tonumber(num) end
      if kind == "c" then
        layers[#layers + 1] = nn.conv2d(v[1], v[2], v[3], {stride = v[4], padding = v[5], generator = g})
      elseif kind == "r" then layers[#layers + 1] = nn.relu()
      elseif kind == "p" then layers[#layers + 1] = nn.maxpool2d(v[1])
      elseif kind == "f" then layers[#layers + 1] = nn.flatten()
      else layers[#layers + 1] = nn.linear(v[1], v[2], g) end
    end
    local model = nn.sequential(layers)
    local o = {optimizer = lps.optim.adam{lr = 1e-3}, batch_size = bs, epochs = 1,
      generator = lps.generator(1), progress = false}
    local d = {x = x, y = y}
    lps.train(model, d, o) -- warm-up
    local sps, cpu = {}, {}
    for e = 1, tonumber(args.epochs) do
      local c0, t0 = os.clock(), lps.now()
      lps.train(model, d, o)
      local t, c = lps.now() - t0, os.clock() - c0
      sps[e], cpu[e] = n / t, c / n * 1e6
    end
    out[name] = {median = median(sps), cpu_us = median(cpu)}
  end
  print(cjson.encode(out))
  os.exit(0)
end

------------------------------------------------------------------ driver


local names = {}
for _, m in ipairs(selected) do names[#names + 1] = m[1] end
local specs = {}
for _, m in ipairs(selected) do specs[#specs + 1] = m[1] .. ":" .. m[2] .. ":" .. m[3] end
local spec_arg = "'" .. table.concat(specs, ";") .. "'"
print(("load average before: %s"):format(loadavg()))
print(BC.kernels())
local torch_at = {} -- thread count -> results
local function torch(th)
  if not torch_at[th] then
    local env = ("OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d "):format(th, th) .. peers.MALLOC -- its best heap
    torch_at[th] = run_json(("%s/usr/bin/python3 scripts/bench_conv_torch.py --threads %d --samples %s --epochs %s --models %s")
      :format(env, th, args.samples, args.epochs, spec_arg))
  end
  return torch_at[th]
end

print(("%-5s %5s %3s %10s %10s %4s %7s %8s %8s %8s  %s"):format("model", "batch", "thr", "lualps/s", "torch/s",
  "@thr", "ratio", "per thr", "us cpu", "pt cpu", "layers"))
local summary = {}
for th in args.threads:gmatch("%d+") do
  th = tonumber(th)
  local env = ("OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d "):format(th, th)
  local l = run_json(("%slua5.4 %s --worker %d --samples %s --epochs %s --models %s")
    :format(env, arg[0], th, args.samples, args.epochs, table.concat(names, ",")))
  for _, m in ipairs(selected) do
    local name = m[1]
    local best, best_th
    for t = 1, th do
      local r = torch(t)[name]
      if not best or r.median > best.median then best, best_th = r, t end
    end
    local ratio = l[name].median / best.median
    local per = (l[name].median / th) / (best.median / best_th)
    print(("%-5s %5d %3d %10.0f %10.0f %4d %6.2fx %7.2fx %8.1f %8.1f  %s"):format(name, m[2], th,
      l[name].median, best.median, best_th, ratio, per, l[name].cpu_us, best.cpu_us, m[3]))
    summary[#summary + 1] = {model = name, batch = m[2], threads = th, lualps = l[name].median,
      torch = best.median, torch_threads = best_th, ratio = ratio, ratio_per_thread = per,
      lualps_cpu_us = l[name].cpu_us, torch_cpu_us = best.cpu_us}
  end
end
print(("load average after: %s"):format(loadavg()))
print(cjson.encode(summary))
