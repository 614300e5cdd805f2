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

os.exit(lu.LuaUnit.run("-o", "tap"), true)
