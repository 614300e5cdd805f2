-- scripts/peer_threads.lua: the thread-split search the benchmarks use to
-- run each peer at its best.
package.path = "./?.lua;./?/init.lua;" .. package.path
local lu = require "luaunit"
local peers = require "scripts.peer_threads"

TestPeerThreads = {}

function TestPeerThreads:test_splits_cover_every_pool_size_within_budget()
  local labels = {}
  for i, s in ipairs(peers.splits(2, {"intra", "blas"})) do
    labels[i] = s.label
    lu.assertEquals(s.label, ("intra %d x blas %d"):format(s.intra, s.blas))
  end
  lu.assertEquals(labels, {"intra 1 x blas 1", "intra 1 x blas 2", "intra 2 x blas 1", "intra 2 x blas 2"})
  local one = peers.splits(1, {"intra", "blas"})
  lu.assertEquals(#one, 1)
  lu.assertEquals(one[1].label, "intra 1 x blas 1")
  lu.assertEquals(#peers.splits(3, {"blas"}), 3)
end

function TestPeerThreads:test_env_pins_absent_pools_to_one()
  lu.assertEquals(peers.env{intra = 2, blas = 1, label = "x"},
    "OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 ")
  lu.assertEquals(peers.env{blas = 2}, "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 ")
end

function TestPeerThreads:test_best_keeps_highest_score_and_its_payload()
  local speed = {["intra 1 x blas 1"] = 5, ["intra 1 x blas 2"] = 9, ["intra 2 x blas 1"] = 7,
    ["intra 2 x blas 2"] = 1}
  local best, score, payload, all = peers.best(peers.splits(2, {"intra", "blas"}), function(s)
    return speed[s.label], {from = s.label}
  end)
  lu.assertEquals(best.label, "intra 1 x blas 2")
  lu.assertEquals(score, 9)
  lu.assertEquals(payload, {from = "intra 1 x blas 2"})
  lu.assertEquals(all, speed)
end

function TestPeerThreads:test_best_up_to_counts_smaller_budgets()
  local earlier = {}
  local speed1 = {["intra 1 x blas 1"] = 10}
  local best, score, payload, all, at = peers.best_up_to(earlier, 1, peers.splits(1, {"intra", "blas"}),
    function(s) return speed1[s.label], {from = s.label, budget = 1} end)
  lu.assertEquals({best.label, score, at}, {"intra 1 x blas 1", 10, 1})
  lu.assertEquals(payload, {from = "intra 1 x blas 1", budget = 1})
  -- at budget 2 the same split measures slower, and no split beats 10: the budget-1 run counts
  local speed2 = {["intra 1 x blas 1"] = 4, ["intra 1 x blas 2"] = 6, ["intra 2 x blas 1"] = 8,
    ["intra 2 x blas 2"] = 3}
  best, score, payload, all, at = peers.best_up_to(earlier, 2, peers.splits(2, {"intra", "blas"}),
    function(s) return speed2[s.label], {from = s.label, budget = 2} end)
  lu.assertEquals({best.label, score, at}, {"intra 1 x blas 1", 10, 1})
  lu.assertEquals(payload, {from = "intra 1 x blas 1", budget = 1})
  lu.assertEquals(all, speed2)
  -- a faster split at this budget wins
  speed2["intra 2 x blas 1"] = 12
  best, score, payload, all, at = peers.best_up_to({}, 2, peers.splits(2, {"intra", "blas"}),
    function(s) return speed2[s.label], s.label end)
  lu.assertEquals({best.label, score, payload, at}, {"intra 2 x blas 1", 12, "intra 2 x blas 1", 2})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
