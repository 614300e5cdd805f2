-- peer_threads.lua: a benchmark peer runs at its best, so the scripts try
-- every split of a thread budget over the peer's thread pools and keep the
-- fastest, printing its label. Used as: local peers = require "scripts.peer_threads"
local M = {}

--- Every setting giving each named pool 1..budget threads, each with a label:
-- splits(2, {"intra", "blas"}) -> {intra = 1, blas = 1, label = "intra 1 x blas 1"}, ...
-- Each pool may take the whole budget because the pools take turns (OpenMP
-- ops, then a BLAS call); when their idle threads spin at once they
-- oversubscribe the cores, and the search measures that rather than guessing.
function M.splits(budget, pools)
  local out = {{}}
  for _, pool in ipairs(pools) do
    local grown = {}
    for _, s in ipairs(out) do
      for n = 1, budget do
        local t = {[pool] = n}
        for k, v in pairs(s) do t[k] = v end
        grown[#grown + 1] = t
      end
    end
    out = grown
  end
  for _, s in ipairs(out) do
    local parts = {}
    for _, pool in ipairs(pools) do parts[#parts + 1] = pool .. " " .. s[pool] end
    s.label = table.concat(parts, " x ")
  end
  return out
end

--- Shell environment prefix for setting s: OpenMP gets s.intra threads (1
-- when the setting has no such pool, so no idle OpenMP team spins), OpenBLAS
-- (and MKL, should a torch be built with it) s.blas.
function M.env(s)
  local b = s.blas or 1
  return ("OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d MKL_NUM_THREADS=%d "):format(s.intra or 1, b, b)
end

--- Calls measure(s) for every setting; it returns a score (higher is better)
-- and any payload. Returns the best setting, its score and payload, and
-- every setting's score by label.
function M.best(settings, measure)
  local best, score, payload, all = nil, -math.huge, nil, {}
  for _, s in ipairs(settings) do
    local v, p = measure(s)
    all[s.label] = v
    if v > score then best, score, payload = s, v, p end
  end
  return best, score, payload, all
end

return M
