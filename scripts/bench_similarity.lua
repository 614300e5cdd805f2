#!/usr/bin/env lua5.4
-- LPS speed on ModelSet500, in one run: training time on the 300 training
-- models, embedding throughput (next to just reading the models from the
-- store), streaming a large set with bounded memory (peak RSS of a 500- and
-- a 5,000-model set), nearest-neighbour queries over 500 and 100,000
-- embeddings (next to a Lua loop), and every method over the same pairs
-- (the retrieval protocol's 40 queries x 160 gallery models). Everything runs
-- on one thread, the child processes too; the Lua-loop peer has one by nature.
--   lua5.4 scripts/bench_similarity.lua [--set build/modelset500.lpsm] [--epochs 30]
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local B, eval, util = lps.benchmark, lps.eval, lps.util

local p = argparse("bench_similarity.lua", "Speed of LPS and the baselines.")
p:option("--set", "ModelSet500 (with splits).", "build/modelset500.lpsm")
p:option("--epochs", "LPS training epochs.", "30"):convert(math.tointeger)
p:option("--big", "Models in the streamed large set.", "5000"):convert(math.tointeger)
local a = p:parse()
local median = util.median
lps.set_num_threads(1)

local function time(f, reps)
  local ts = {}
  for r = 1, reps or 5 do
    local t0 = lps.now()
    f()
    ts[r] = lps.now() - t0
  end
  return median(ts)
end

local S = B.load(a.set)
local cls, ret = S.splits.classification, S.splits.retrieval
print(("lualps %s, %d models from %s, 1 BLAS thread, load average %s"):format(lps.version, S.n, a.set,
  (util.read_file("/proc/loadavg") or "?"):match("^(%S+)")))

-- 1. Training on the 300 classification training models.
local models, labels = B.gather(S, cls.train)
local net = lps.similarity.network{classes = 20}
local rep = lps.similarity.train_network(net, models, labels, {epochs = a.epochs})
print(("\nLPS training: %d models x %d epochs in %.1f s (%.0f ms per epoch, final loss %.4f)")
  :format(#models, a.epochs, rep.seconds, rep.seconds / a.epochs * 1000, rep.epochs[#rep.epochs].loss))

-- 2. Embedding throughput, streamed from the store, next to reading alone.
local sim = lps.similarity.wrap(net)
local ms <close> = lps.modelset.open(a.set)
local t_read = time(function() for i = 1, #ms do ms:tensors(i) end end, 3)
local t_embed = time(function() sim:embed_set(ms) end, 3)
print(("embedding: %.0f models/s streamed from the store (reading alone: %.0f models/s, %.0f%% of the time)")
  :format(#ms / t_embed, #ms / t_read, 100 * t_read / t_embed))

-- 3. Bounded memory: peak RSS of a fresh process embedding 500 vs a large set.
local big = os.tmpname()
do
  local out = lps.modelset.create(big, {overwrite = true, sync = false})
  for k = 1, a.big do out._f:copy_from(ms._f, (k - 1) % #ms + 1) end
  out:close()
end
local model_file = os.tmpname()
sim:save(model_file)
local function rss_of(set)
  local cmd = ([[lua5.4 -e 'package.path="./?.lua;./?/init.lua;"..package.path
    local lps = require "lualps"
    lps.set_num_threads(1)
    local sim = lps.similarity.load("%s")
    local t0 = lps.now()
    local E = sim:embed_set("%s")
    io.write(E:size(1), " ", lps.util.peak_rss_mb(), " ", lps.now() - t0)']]):format(model_file, set)
  local f = assert(io.popen(cmd))
  local n, rss, secs = f:read("a"):match("(%d+) ([%d.]+) ([%d.]+)")
  f:close()
  return tonumber(n), tonumber(rss), tonumber(secs)
end
local n1, r1, s1 = rss_of(a.set)
local n2, r2, s2 = rss_of(big)
print(("streaming: %d models -> peak RSS %.0f MB (%.1f s); %d models -> peak RSS %.0f MB (%.1f s, %.0f models/s)")
  :format(n1, r1, s1, n2, r2, s2, n2 / s2))
os.remove(big); os.remove(model_file)

-- 4. Nearest-neighbour queries over 500 and 100,000 embeddings.
print("\nquery (top-10 of N unit embeddings, 64-d)      lps.eval.topk   Lua loop   ratio")
local g = lps.generator(3)
for _, N in ipairs{500, 100000} do
  local E = lps.randn(N, 64, g)
  local nr = E:norm(2)
  for i = 1, N do E[i]:div_(nr[i]) end
  local q = E[1]:clone()
  local t_c = time(function() eval.topk(E, q, 10) end, 31)
  local rows = E:totable()
  local qt = q:totable()
  local t_lua = time(function()
    local best = {}
    for i = 1, N do
      local r, s = rows[i], 0
      for j = 1, 64 do s = s + r[j] * qt[j] end
      if #best < 10 or s > best[#best][2] then
        best[#best + 1] = {i, s}
        table.sort(best, function(x, y) return x[2] > y[2] end)
        if #best > 10 then best[11] = nil end
      end
    end
  end, N > 1000 and 5 or 31)
  print(("  N = %-7d                                  %9.3f ms %9.2f ms %6.0fx"):format(N, t_c * 1000,
    t_lua * 1000, t_lua / t_c))
end

-- 5. Every method over the same pairs (40 queries x 160 gallery models).
local qm = B.gather(S, ret.query)
local gm = B.gather(S, ret.gallery)
local npairs = #qm * #gm
local probe = lps.data.fashion_mnist("test"):rows(1, 256):clone()
local methods = {
  {"lps (embed + cosine)", function()
    local Eq, Eg = net:embed(qm), net:embed(gm)
    return lps.matmul(Eq, Eg, false, true)
  end},
  {"raw", function() return eval.similarity_matrix("raw", qm, gm) end},
  {"sorted", function() return eval.similarity_matrix("sorted", qm, gm) end},
  {"stats", function() return eval.similarity_matrix("stats", qm, gm) end},
  {"gram (features + cosine)", function() return eval.similarity_matrix("gram", qm, gm) end},
  {"cka (Gram features)", function()
    local all = {}
    for i, m in ipairs(qm) do all[i] = m end
    for i, m in ipairs(gm) do all[#qm + i] = m end
    local F = eval.cka_features(all, probe)
    return lps.matmul(F:rows(1, #qm), F:rows(#qm + 1, #all), false, true)
  end},
  {"cka (pairwise)", function() return eval.similarity_matrix("cka", qm, gm, {probe = probe}) end},
  {"matching", function() return eval.similarity_matrix("matching", qm, gm) end},
}
print(("\nmethods over the same %d pairs (%d x %d models)   total      per pair"):format(npairs, #qm, #gm))
for _, m in ipairs(methods) do
  local reps = m[1]:match("matching") and 1 or 3
  local t = time(m[2], reps)
  print(("  %-30s %10.3f s %10.1f us"):format(m[1], t, t / npairs * 1e6))
end
