#!/usr/bin/env lua5.4
-- Nearest-neighbour query benchmark: lps.eval.topk (sgemv + heap selection in
-- C) over N x 64 unit embeddings, next to two peers measured in the same run:
-- a plain Lua loop (dot products and a running top-k in Lua) and the C matmul
-- followed by a full table.sort of all N scores, its matmul at its best of
-- 1..THREADS OpenBLAS threads (printed; the Lua loop has one thread by
-- nature). Median milliseconds per query.
-- Usage: lua5.4 scripts/bench_query.lua [THREADS]
package.path = "./?.lua;./?/init.lua;" .. package.path
local BC = require "scripts.bench_common"
local median = BC.median
local lps = require "lualps"
local peers = require "scripts.peer_threads"
local E = lps.eval

local threads = tonumber(arg[1]) or 1
lps.set_num_threads(threads)
local E_DIM, K = 64, 10


local function unit_rows(n, g)
  local x = lps.randn(n, E_DIM, g)
  local norms = x:norm(2)
  for i = 1, n do x[i]:div_(norms[i]) end
  return x
end

local time_ms = BC.time_ms

-- Peer 1: everything in Lua over a flat array copy of the embeddings.
local function lua_topk(flat, n, q, k)
  local best, bscore = {}, {}
  for i = 0, n - 1 do
    local s, base = 0.0, i * E_DIM
    for j = 1, E_DIM do s = s + flat[base + j] * q[j] end
    if #best < k or s > bscore[#best] then
      local pos = math.min(#best + 1, k)
      while pos > 1 and bscore[pos - 1] < s do
        best[pos], bscore[pos] = best[pos - 1], bscore[pos - 1]
        pos = pos - 1
      end
      best[pos], bscore[pos] = i + 1, s
    end
  end
  return best
end

-- Peer 2: C matmul for the scores, then sort all N indices in Lua.
local function sort_topk(emb, qcol, n, k)
  local s = emb:matmul(qcol):reshape(n)
  local sc, idx = {}, {}
  for i = 1, n do idx[i], sc[i] = i, s[i] end
  table.sort(idx, function(a, b) if sc[a] ~= sc[b] then return sc[a] > sc[b] end return a < b end)
  local out = {}
  for i = 1, k do out[i] = idx[i] end
  return out
end

print(string.format("top-%d query over N x %d unit embeddings, %d BLAS thread(s); median ms per query",
  K, E_DIM, threads))
print(string.format("%-8s %12s %14s %14s %-8s %10s %10s", "N", "lps.topk", "Lua loop", "matmul+sort",
  "sort at", "vs loop", "vs sort"))
local g = lps.generator(2024)
for _, n in ipairs({500, 100000}) do
  local emb = unit_rows(n, g)
  local q = unit_rows(1, g):reshape(E_DIM)
  local qt, qcol = q:totable(), q:reshape(E_DIM, 1)
  local flat = emb:reshape(n * E_DIM):totable()
  -- all three agree on the answer
  local a, b, c = E.topk(emb, q, K), lua_topk(flat, n, qt, K), sort_topk(emb, qcol, n, K)
  for i = 1, K do assert(a[i] == b[i] and a[i] == c[i], "peers disagree at rank " .. i) end
  local big = n > 10000
  local t_c = time_ms(big and 51 or 201, function() E.topk(emb, q, K) end)
  local t_lua = time_ms(big and 3 or 21, function() lua_topk(flat, n, qt, K) end)
  local best, inv = peers.best(peers.splits(threads, {"blas"}), function(s)
    lps.set_num_threads(s.blas)
    return 1 / time_ms(big and 3 or 21, function() sort_topk(emb, qcol, n, K) end)
  end)
  lps.set_num_threads(threads)
  local t_sort = 1 / inv
  print(string.format("%-8d %12.4f %14.3f %14.3f %-8s %9.0fx %9.0fx", n, t_c, t_lua, t_sort, best.label,
    t_lua / t_c, t_sort / t_c))
end
