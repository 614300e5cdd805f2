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

--- Shell environment prefix of glibc malloc settings for a benchmark process
-- (both sides, after M.env): freed blocks stay in the heap for reuse instead
-- of going back to the kernel. A framework that allocates its tensors afresh
-- every step (PyTorch) otherwise takes page faults on every step, which cost
-- a third or more of its time on a virtual machine, and that cost moves with
-- the host's load: on the benchmark machine PyTorch's model (d) at one thread
-- measured between 600 and 1,650 samples/s from run to run with glibc's
-- defaults, and 1,920 to 1,990 with these (its system time 5-6 s -> 0.9 s).
-- MALLOC_MMAP_THRESHOLD_ is glibc's maximum (32 MB); a trim threshold alone
-- would pin the mmap threshold at its 128 KB default and fault far more.
M.MALLOC = "MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 "

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

--- M.best at a budget, counting what the peer measured at smaller budgets
-- too: a split of fewer threads also fits this budget, and on a machine
-- shared with other jobs one split's speed can differ severalfold between
-- two runs minutes apart (load, not configuration: the runs have the same
-- environment and command line), so a slow re-measurement must not make the
-- peer look worse at the larger budget. earlier (kept by the caller across
-- budgets, {} at first) maps a label to {score, payload, budget}; this
-- budget's measurements are added to it. Returns the best setting, its
-- score and payload, this budget's scores by label, and the budget the best
-- score was measured at.
function M.best_up_to(earlier, budget, settings, measure)
  local payloads = {}
  local best, score, payload, all = M.best(settings, function(s)
    local v, p = measure(s)
    payloads[s.label] = p
    return v, p
  end)
  local at = budget
  for label, e in pairs(earlier) do
    if e.budget < budget and e.score > score then
      best, score, payload, at = {label = label}, e.score, e.payload, e.budget
    end
  end
  for _, s in ipairs(settings) do
    local e = earlier[s.label]
    if not e or all[s.label] > e.score then
      earlier[s.label] = {score = all[s.label], payload = payloads[s.label], budget = budget}
    end
  end
  return best, score, payload, all, at
end

return M
