-- The ModelSet500 recipe at a small scale: build, shard + merge, resume, and
-- bad input refused before training (on a small synthetic dataset).
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"

local dir = os.tmpname(); os.remove(dir)
local data = T.fake_fashion_mnist(dir .. "/data", 400, 200)
local SMALL = "--tasks 3 --per-task 2 --epochs 1 --quiet --data " .. data

local function recipe(args)
  return T.sh("lua5.4 recipes/modelset500.lua " .. args)
end

local function by_id(path)
  local out, n = T.records(path)
  for _, r in pairs(out) do lu.assertEquals(#r.tensors, 6) end -- 3 linear layers: weight and bias each
  return out, n
end

local function file_bytes(p) return require("lualps.util").read_file(p) end

local single -- built once, compared against by the other tests
local function single_build()
  if not single then
    single = dir .. "/single.lpsm"
    local ok, out = recipe(SMALL .. " --out " .. single)
    lu.assertTrue(ok, out)
  end
  return single
end

TestModelSet500 = {}

function TestModelSet500:test_build_and_splits()
  local path = single_build()
  local models, n = by_id(path)
  lu.assertEquals(n, 6)
  local m = models["t02-m01"].meta
  lu.assertEquals(m.task, 2)
  lu.assertEquals(m.classes, {1, 2})
  lu.assertTrue(m.test_accuracy >= 0.75, "learned its task")
  lu.assertEquals(m.optimizer, "sgd")
  lu.assertEquals(models["t02-m02"].meta.optimizer, "adam")
  local splits = require("cjson").decode(file_bytes(path .. ".splits.json"))
  local seen = {}
  for _, id in ipairs(splits.classification.train) do seen[id] = true end
  for _, id in ipairs(splits.classification.test) do lu.assertNil(seen[id]) end
  lu.assertEquals(#splits.classification.train + #splits.classification.test, 6)
end

function TestModelSet500:test_sharded_build_is_bit_identical()
  local ref = by_id(single_build())
  local path = dir .. "/jobs.lpsm"
  local ok, out = recipe(SMALL .. " --jobs 2 --out " .. path)
  lu.assertTrue(ok, out)
  local got, n = by_id(path)
  lu.assertEquals(n, 6)
  for id, r in pairs(ref) do
    lu.assertEquals(got[id].tensors, r.tensors, id .. " tensors")
    lu.assertEquals(got[id].meta, r.meta, id .. " metadata")
  end
  lu.assertNil(io.open(path .. ".shard-1-of-2"), "shard files removed after the merge")
end

function TestModelSet500:test_resume_skips_stored_models()
  local ref = by_id(single_build())
  local path = dir .. "/resume.lpsm"
  local ok, out = recipe(SMALL .. " --shard 1/2 --out " .. path)
  lu.assertTrue(ok, out)
  local _, n1 = by_id(path)
  lu.assertEquals(n1, 3)
  local before = file_bytes(path)
  local spans = {}
  do
    local ms <close> = lps.modelset.open(path)
    for i = 1, #ms do local inf = ms:info(i); spans[i] = {inf.offset, inf.bytes} end
  end
  ok, out = T.sh("lua5.4 recipes/modelset500.lua " .. SMALL:gsub("%-%-quiet", "") .. " --out " .. path)
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "3 models were already stored, built 3")
  local after = file_bytes(path)
  -- the stored records are untouched, byte for byte, where they were
  for i, sp in ipairs(spans) do
    lu.assertEquals(after:sub(sp[1] + 1, sp[1] + sp[2]), before:sub(sp[1] + 1, sp[1] + sp[2]), "record " .. i)
  end
  local got, n = by_id(path)
  lu.assertEquals(n, 6)
  for id, r in pairs(ref) do lu.assertEquals(got[id].tensors, r.tensors, id) end
  ok, out = recipe(SMALL .. " --out " .. path) -- nothing left to do
  lu.assertTrue(ok, out)
  lu.assertEquals(file_bytes(path), after)
end

function TestModelSet500:test_bad_input_refused_before_training()
  local path = single_build()
  local before = file_bytes(path)
  local cases = {
    {"--bogus 1", "unknown option"},
    {SMALL .. " --shard 3/2 --out " .. dir .. "/x.lpsm", "bad shard spec '3/2'"},
    {SMALL .. " --out /no/such/dir/x.lpsm", "output directory /no/such/dir does not exist"},
    {"--tasks 2 --per-task 2 --quiet --data /no/data --out " .. dir .. "/y.lpsm", "no Fashion-MNIST in /no/data"},
    {SMALL .. " --seed 7 --out " .. path, "another configuration"},
    {SMALL .. " --epochs 3-1 --out " .. dir .. "/z.lpsm", "--epochs must be"},
  }
  for _, c in ipairs(cases) do
    local t0 = lps.now()
    local ok, out = recipe(c[1])
    lu.assertNotEquals(ok, true, c[1])
    lu.assertStrContains(out:lower(), c[2]:lower())
    lu.assertTrue(lps.now() - t0 < 5, "refused at once: " .. c[1])
  end
  lu.assertEquals(file_bytes(path), before, "the existing set is untouched")
  lu.assertNil(io.open(dir .. "/x.lpsm"))
end

TestTransfer = {}

function TestTransfer:test_matrix_and_sharded_matrix_agree()
  local set = single_build()
  local base = "lua5.4 recipes/transfer_matrix.lua --quiet --sources 1 --seeds 1 --images 40 " ..
    "--epochs 1 --batch 8 --data " .. data .. " --set " .. set
  local ok, out = T.sh(base .. " --out " .. dir .. "/t1.json")
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "gain range")
  local cjson = require "cjson"
  local r1 = cjson.decode(file_bytes(dir .. "/t1.json"))
  lu.assertEquals(#r1.gain, 3)
  lu.assertEquals(#r1.gain[1], 3)
  -- tasks 1 {0,1}, 2 {1,2}, 3 {2,3}: overlap counts shared classes
  lu.assertEquals(r1.overlap, {{2, 1, 0}, {1, 2, 1}, {0, 1, 2}})
  for s = 1, 3 do
    for t = 1, 3 do
      lu.assertAlmostEquals(r1.gain[s][t], r1.finetune_accuracy[s][t] - r1.scratch_accuracy[t], 1e-12)
    end
  end
  ok, out = T.sh(base .. " --jobs 2 --out " .. dir .. "/t2.json")
  lu.assertTrue(ok, out)
  local r2 = cjson.decode(file_bytes(dir .. "/t2.json"))
  lu.assertEquals(r2.gain, r1.gain) -- same numbers whichever process computed them
  lu.assertNotNil(io.open(dir .. "/t2.csv"))
end

TestEvaluation = {}

-- The whole pipeline at a small scale: set, transfer matrix, evaluation of
-- LPS and every baseline with ablations, outputs and plots.
function TestEvaluation:test_pipeline_outputs()
  local set = dir .. "/eval.lpsm"
  local ok, out = recipe("--tasks 4 --per-task 5 --epochs 1 --quiet --data " .. data .. " --out " .. set)
  lu.assertTrue(ok, out)
  ok, out = T.sh("lua5.4 recipes/transfer_matrix.lua --quiet --sources 1 --seeds 1 --images 40 " ..
    "--epochs 1 --batch 8 --data " .. data .. " --set " .. set)
  lu.assertTrue(ok, out)
  local res = dir .. "/results"
  ok, out = T.sh(("lua5.4 recipes/eval_lps.lua --set %s --out %s --seeds 2 --epochs 3 --probe 50 --data %s")
    :format(set, res, data))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "| method | top1 | rank1 |")
  local r = require("cjson").decode(file_bytes(res .. "/lps_eval.json"))
  for _, m in ipairs{"lps", "raw", "sorted", "stats", "stats_head", "gram", "matching", "cka"} do
    local x = r.methods[m]
    lu.assertNotNil(x, m)
    for _, k in ipairs{"top1", "rank1", "rank5", "map", "cross_top1"} do
      lu.assertTrue(x[k] >= 0 and x[k] <= 1, m .. " " .. k .. " = " .. tostring(x[k]))
    end
    lu.assertTrue(x.nmi >= 0 and x.nmi <= 1 + 1e-9, m .. " nmi")
  end
  lu.assertNotNil(r.methods.lps.top1_std)
  for _, v in ipairs{"no_chain_norm", "with_second_layer", "first_order_pooling", "no_layer_norm", "all_units",
    "xent_only", "triplet_only"} do
    lu.assertNotNil(r.ablations[v], v)
  end
  lu.assertEquals(r.protocol.seeds, 2)
  lu.assertStrContains(file_bytes(res .. "/lps_eval.md"), "## Ablations of LPS")
  local sim = lps.similarity.load(res .. "/lps.model")
  local ms <close> = lps.modelset.open(set)
  lu.assertAlmostEquals(sim:embed(ms:tensors(1)):norm(), 1, 1e-5)
  for _, png in ipairs{"task_similarity_vs_transfer.png", "embedding_pca.png"} do
    local bytes = file_bytes(res .. "/" .. png)
    lu.assertNotNil(bytes, png)
    lu.assertEquals(bytes:sub(2, 4), "PNG")
  end
end

local code = lu.LuaUnit.run("-o", "tap")
os.execute("rm -rf '" .. dir .. "'")
os.exit(code, true)
