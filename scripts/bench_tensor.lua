#!/usr/bin/env lua5.4
-- Tensor benchmark: matmul GFLOP/s through lualps next to raw cblas_sgemm from
-- C (scripts/bench_sgemm.c) in the same run, and element-wise GB/s next to
-- memcpy. Medians of repeats. lualps runs at THREADS OpenBLAS threads; the
-- raw sgemm peer at its best of 1..THREADS for each shape (printed).
-- Usage: lua5.4 scripts/bench_tensor.lua [THREADS]
package.path = "./?.lua;./?/init.lua;" .. package.path
local BC = require "scripts.bench_common"
local median = BC.median
local lps = require "lualps"
local peers = require "scripts.peer_threads"

local threads = tonumber(arg[1]) or lps.get_num_threads()
lps.set_num_threads(threads)


-- Build the C peer.
local peer = "build/bench_sgemm"
assert(os.execute("mkdir -p build && cc -O2 -o " .. peer ..
  " scripts/bench_sgemm.c -lopenblas"), "cannot build the C peer")

local shapes = {{128, 128, 128}, {512, 512, 512}, {2048, 2048, 2048}, {128, 784, 256}}

-- The C peer for one shape at t threads: median GFLOP/s of its own repeats
-- (and memcpy GB/s).
local function peer_run(s, t)
  local p = assert(io.popen(("%s%s %d %d %d %d"):format(peers.env{blas = t}, peer, t, s[1], s[2], s[3])))
  local g, mc
  for line in p:lines() do
    g = g or tonumber(line:match("^sgemm %d+ %d+ %d+ ([%d.]+)"))
    mc = mc or tonumber(line:match("^memcpy ([%d.]+)"))
  end
  p:close()
  return g, mc
end

local function time_it(f, flop)
  local reps = flop > 1e9 and 5 or flop > 1e8 and 15 or 31
  local inner = flop > 1e8 and 1 or math.floor(1e8 / flop) + 1
  f()
  local ts = {}
  for r = 1, reps do
    local t0 = lps.now()
    for _ = 1, inner do f() end
    ts[r] = (lps.now() - t0) / inner
  end
  return median(ts)
end

-- Rounds alternate the peer and lualps on each shape, so a change of load
-- during the run hits both sides alike; medians over rounds.
local ROUNDS = 5
print(string.format("lualps %s, OpenBLAS threads: %d, %d alternating rounds", lps.version, threads, ROUNDS))
print(string.format("%-16s %12s %-9s %12s %12s %8s", "matmul M K N", "raw GFLOP/s", "raw at",
  "lps GFLOP/s", "lps(out=)", "ratio"))
local g = lps.generator(1)
local memcpy_runs = {}
local settings = peers.splits(threads, {"blas"})
for _, s in ipairs(shapes) do
  local m, k, n = s[1], s[2], s[3]
  local a, b = lps.rand(m, k, g), lps.rand(k, n, g)
  local out = lps.zeros(m, n)
  local flop = 2 * m * k * n
  local raw, alloc, into = {}, {}, {}
  for _, st in ipairs(settings) do raw[st] = {} end
  for r = 1, ROUNDS do
    for _, st in ipairs(settings) do
      local gf, mc = peer_run(s, st.blas)
      raw[st][r] = gf
      memcpy_runs[#memcpy_runs + 1] = mc
    end
    alloc[r] = flop / time_it(function() lps.matmul(a, b) end, flop) * 1e-9
    into[r] = flop / time_it(function() lps.matmul(a, b, false, false, out) end, flop) * 1e-9
    collectgarbage()
  end
  local best, rr = peers.best(settings, function(st) return median(raw[st]) end)
  local ra, ri = median(alloc), median(into)
  print(string.format("%-16s %12.2f %-9s %12.2f %12.2f %7.3fx", m .. " " .. k .. " " .. n, rr, best.label,
    ra, ri, math.max(ra, ri) / rr))
end
local memcpy_gbs = median(memcpy_runs)

print()
print(string.format("element-wise on 1M floats (memcpy peer: %.2f GB/s, read+write)", memcpy_gbs))
print(string.format("%-22s %10s %10s", "op", "GB/s", "vs memcpy"))
local x, y = lps.rand(1 << 20, g), lps.rand(1 << 20, g)
local bytes3 = 3 * 4 * (1 << 20) -- two reads and a write
local bytes2 = 2 * 4 * (1 << 20)
local ops = {
  {"a + b (new tensor)", function() return x + y end, bytes3},
  {"a:add_(b)", function() x:add_(y) end, bytes3},
  {"a * 2 (new tensor)", function() return x * 2 end, bytes2},
  {"a:mul_(0.5)", function() x:mul_(1.0) end, bytes2},
  {"a:relu()", function() return x:relu() end, bytes2},
  {"a:exp()", function() return x:exp() end, bytes2},
  {"a:sum()", function() return x:sum() end, 4 * (1 << 20)},
}
for _, o in ipairs(ops) do
  local ts = {}
  for r = 1, 31 do
    local t0 = lps.now()
    for _ = 1, 10 do o[2]() end
    ts[r] = (lps.now() - t0) / 10
    if r % 4 == 0 then collectgarbage() end
  end
  local gbs = o[3] / median(ts) * 1e-9
  print(string.format("%-22s %10.2f %9.2fx", o[1], gbs, gbs / memcpy_gbs))
end
