-- lps.benchmark.evaluate on a hand-made set whose answers are known: four
-- tasks over four classes (a ring: {1,2}, {2,3}, {3,4}, {4,1}), four models
-- per task whose first weight row is the task's class indicator.
local lu = require "luaunit"
local lps = require "lualps"
local cjson = require "cjson"
local T = require "tests.helpers"
local B = lps.benchmark

local TASKS = {{1, 2}, {2, 3}, {3, 4}, {4, 1}}
local path = T.tmpname(".lpsm")

local function build()
  local ms <close> = lps.modelset.create(path, {overwrite = true})
  local ids = {}
  for t, cl in ipairs(TASKS) do
    for k = 1, 4 do
      local W1 = lps.zeros(2, 4)
      for _, c in ipairs(cl) do W1:set(1, c, 1) end
      W1:set(2, k, 0.01 * t) -- a little per-model variation
      local id = ("t%d-m%d"):format(t, k)
      ms:append_tensors({{name = "0.weight", tensor = W1}, {name = "0.bias", tensor = lps.zeros(2)},
        {name = "2.weight", tensor = lps.ones(2, 2)}, {name = "2.bias", tensor = lps.zeros(2)}},
        {id = id, task = t, optimizer = k % 2 == 1 and "sgd" or "adam"})
      ids[#ids + 1] = id
    end
  end
  local function pick(tasks, ks)
    local out = {}
    for _, t in ipairs(tasks) do for _, k in ipairs(ks) do out[#out + 1] = ("t%d-m%d"):format(t, k) end end
    return out
  end
  local splits = {
    tasks = {{id = 1}, {id = 2}, {id = 3}, {id = 4}},
    classification = {train = pick({1, 2, 3, 4}, {1, 2}), test = pick({1, 2, 3, 4}, {3, 4})},
    retrieval = {train_tasks = {1, 2}, unseen_tasks = {3, 4}, train = pick({1, 2}, {1, 2, 3, 4}),
                 query = pick({3, 4}, {1}), gallery = pick({3, 4}, {2, 3, 4})},
  }
  lps.util.write_file(path .. ".splits.json", cjson.encode(splits))
  -- gain ranks the pairs against class overlap: sharing a class is worse here
  local overlap, gain = {}, {}
  for s = 1, 4 do
    overlap[s], gain[s] = {}, {}
    for t = 1, 4 do
      local n = 0
      for _, a in ipairs(TASKS[s]) do for _, b in ipairs(TASKS[t]) do if a == b then n = n + 1 end end end
      overlap[s][t], gain[s][t] = n, -n
    end
  end
  lps.util.write_file(path .. ".transfer.json", cjson.encode{overlap = overlap, gain = gain})
end
build()

-- the class indicator: cosine 1 within a task, 0.5 between tasks sharing a class, 0 otherwise
local oracle = {name = "oracle", embed = function(_, models)
  local E = lps.zeros(#models, 4)
  for i, w in ipairs(models) do E[i]:copy(w[1][1]) end
  return E
end}

TestBenchmark = {}

function TestBenchmark:tearDown() os.remove(path .. ".tmp") end

function TestBenchmark:test_oracle_scores_known_answers()
  local r, d = B.evaluate(path, oracle, {log = function() end})
  lu.assertEquals(r.top1, 1)
  lu.assertEquals(r.rank1, 1)
  lu.assertEquals(r.map, 1)
  lu.assertAlmostEquals(r.nmi, 1, 1e-12)
  lu.assertAlmostEquals(r.cross_top1, 1, 1e-12)
  -- pairs sharing a class have similarity 0.5, the others 0: tau with overlap 1, with -overlap -1
  lu.assertAlmostEquals(r.tau_overlap, 1, 1e-12)
  lu.assertAlmostEquals(r.tau_transfer, -1, 1e-12)
  lu.assertAlmostEquals(d.task_similarity[1][2], 0.5, 1e-6)
  lu.assertAlmostEquals(d.task_similarity[1][3], 0, 1e-6)
  lu.assertAlmostEquals(d.task_similarity[1][1], 1, 1e-6)
  lu.assertEquals(d.embeddings:shape(), {16, 4})
end

function TestBenchmark:test_per_target_tau_ranks_with_the_target_as_query()
  -- four unseen tasks, one model each, a circulant gain[s][t] (transfer
  -- s -> t) in which row and column orders are reversed. A directed score
  -- whose rows (queries) see the truth, good[t][s] = gain[s][t]: per
  -- target the target is the query (as in model selection), so the
  -- per-target tau is +1; its transpose (the source as query) gives -1.
  local gain = {{0, 0.1, 0.2, 0.3}, {0.3, 0, 0.1, 0.2}, {0.2, 0.3, 0, 0.1}, {0.1, 0.2, 0.3, 0}}
  local good = {}
  for t = 1, 4 do good[t] = {} for s = 1, 4 do good[t][s] = s == t and 1 or gain[s][t] end end
  local tasks = {}
  for t = 1, 4 do tasks[t] = {classes = {t}, domain = "a"} end
  local S = {splits = {tasks = tasks, retrieval = {unseen_tasks = {1, 2, 3, 4}}}, transfer = {gain = gain},
    meta = {{task = 1}, {task = 2}, {task = 3}, {task = 4}}, byid = {a = 1, b = 2, c = 3, d = 4}, models = {{}, {}, {}, {}}}
  local ids = {"a", "b", "c", "d"}
  local r = B.unseen_relations(S, {sim = function() return lps.tensor(good) end}, ids)
  lu.assertAlmostEquals(r.tau_transfer_per_target, 1, 1e-9)
  local back = B.unseen_relations(S, {sim = function() return lps.tensor(good):t():clone() end}, ids)
  lu.assertAlmostEquals(back.tau_transfer_per_target, -1, 1e-9)
end

function TestBenchmark:test_fit_sees_each_split_and_seeds_average()
  local calls = {}
  local method = {name = "seeded", fit = function(_, models, labels, ctx)
    calls[#calls + 1] = {split = ctx.split, n = #models, seed = ctx.seed, first = labels[1], ids = ctx.ids}
    -- seed 1: the oracle; seed 2: every model alike (1-NN then picks the first training model)
    if ctx.seed == 1 then return oracle end
    return {embed = function(_, ms) return lps.ones(#ms, 3) end, seconds = 2}
  end}
  local r = B.evaluate(path, method, {seeds = 2, log = function() end})
  lu.assertEquals(#calls, 6)
  lu.assertEquals({calls[1].split, calls[2].split, calls[3].split}, {"classification", "retrieval", "cross"})
  lu.assertEquals({calls[1].n, calls[2].n, calls[3].n}, {8, 8, 4})
  lu.assertEquals(calls[2].ids[1], "t1-m1")
  lu.assertEquals(calls[4].seed, 2)
  -- top1: 1 (oracle) and 2/8 (all predicted task 1): mean 0.625, sd sqrt(2) * 0.375
  lu.assertAlmostEquals(r.top1, 0.625, 1e-12)
  lu.assertAlmostEquals(r.top1_std, math.sqrt(2) * 0.375, 1e-12)
  lu.assertEquals(r.train_seconds, 2) -- the oracle reports none: the mean of those that do
end

function TestBenchmark:test_pairwise_methods_compare_k_per_task()
  local widths = {}
  local method = {name = "pairs", pairwise_per_task = 1, similarity = function(_, a, b)
    widths[#widths + 1] = #b
    return oracle:embed(a):matmul(oracle:embed(b):t())
  end}
  local r = B.evaluate(path, method, {log = function() end})
  lu.assertEquals(r.top1, 1)
  -- classification gallery: one training model per task (4), not all 8
  lu.assertEquals(widths[1], 4)
  lu.assertEquals(r.map, 1)
end

function TestBenchmark:test_bad_methods_are_refused()
  T.assert_error_contains("a method needs embed", B.evaluate, path, {name = "x"})
  T.assert_error_contains("unknown option 'sed'", B.evaluate, path, oracle, {sed = 1})
  local wrong = {name = "short", embed = function() return lps.zeros(3, 2) end}
  T.assert_error_contains("embed gave 3 rows for 16 models", B.evaluate, path, wrong)
end

function TestBenchmark:test_baseline_methods_run()
  for _, m in ipairs{B.methods.features("raw"), B.methods.features("sorted"), B.methods.matching{per_task = 1}} do
    local r = B.evaluate(path, m, {log = function() end})
    lu.assertTrue(r.top1 >= 0 and r.top1 <= 1, m.name)
  end
  -- raw weights see the class indicator: every held-out model finds its task
  lu.assertEquals(B.evaluate(path, B.methods.features("raw"), {log = function() end}).top1, 1)
end

-- evaluate runs the named protocols in their order, and its metrics are
-- what they return: here the ones this set defines (no novel classes,
-- held-out architectures, families or pool), with the oracle's known answers.
-- The mixed zoo (h): (g)'s ResNets and gallery as one zoo, each model a
-- query against all the others, by the view's rank where it has one
-- (mixed_*) and by its similarity (mixed_raw_*). Here the two ResNets
-- score 0.9 with each other (another task), same-task pairs 0.5, the rest
-- 0.1: by similarity each ResNet's first is the other (0 of 2; AP (1/2 +
-- 2/3) / 2 for both), the MLPs find their task (ties: the earlier id).
function TestBenchmark:test_mixed_zoo_by_hand()
  local ids = {"r1", "r2", "m1", "m2", "m3", "m4"}
  local task = {r1 = 1, r2 = 2, m1 = 1, m2 = 1, m3 = 2, m4 = 2}
  local S = {byid = {}, models = {}, meta = {}}
  for i, id in ipairs(ids) do S.byid[id], S.models[i], S.meta[i] = i, {}, {task = task[id]} end
  local function matrix(f)
    return function(x, y)
      local out = lps.zeros(#x, #y)
      for i, a in ipairs(x) do for j, b in ipairs(y) do out:set(i, j, f(a, b)) end end
      return out
    end
  end
  local sim = matrix(function(a, b)
    if a == b then return 1 end
    if a:sub(1, 1) == "r" and b:sub(1, 1) == "r" then return 0.9 end
    return task[a] == task[b] and 0.5 or 0.1
  end)
  local rank = matrix(function(a, b) return task[a] == task[b] and 1 or 0 end)
  local run
  for _, p in ipairs(B.protocols) do if p.name == "mixed_zoo" then run = p.run end end
  local c = {S = S, sp = {heldout_family = {query = {"r1", "r2"}, gallery = {"m1", "m2", "m3", "m4"}}}, vr = {sim = sim, rank = rank}}
  local r = run(c)
  local ap = (1 / 2 + 2 / 3) / 2
  lu.assertAlmostEquals(r.mixed_raw_rank1, 4 / 6, 1e-12)
  lu.assertAlmostEquals(r.mixed_raw_map, (2 * ap + 4) / 6, 1e-6)
  lu.assertEquals(r.mixed_raw_resnet_rank1, 0)
  lu.assertAlmostEquals(r.mixed_raw_resnet_map, ap, 1e-6)
  lu.assertEquals({r.mixed_rank1, r.mixed_map, r.mixed_resnet_rank1, r.mixed_resnet_map}, {1, 1, 1, 1})
  -- a method without rank: its similarity gives mixed_*, and no mixed_raw_*
  c.vr.rank = nil
  local r2 = run(c)
  lu.assertAlmostEquals(r2.mixed_rank1, 4 / 6, 1e-12)
  lu.assertEquals(r2.mixed_resnet_rank1, 0)
  lu.assertNil(r2.mixed_raw_rank1)
  -- a method that reads no ResNet (-inf wherever one is in the pair): no ResNet figures
  c.vr.sim = matrix(function(a, b)
    if a:sub(1, 1) == "r" or b:sub(1, 1) == "r" then return -math.huge end
    return task[a] == task[b] and 0.5 or 0.1
  end)
  local r3 = run(c)
  lu.assertNil(r3.mixed_resnet_rank1)
  lu.assertNil(r3.mixed_resnet_map)
  lu.assertNotNil(r3.mixed_rank1)
  -- pairwise-only methods (k per task) and sets without (g): nothing
  c.k = 1
  lu.assertNil(run(c))
  c.k, c.sp = nil, {}
  lu.assertNil(run(c))
end

function TestBenchmark:test_protocols_run_in_order()
  local names = {}
  for i, p in ipairs(B.protocols) do names[i] = p.name end
  lu.assertEquals(names, {"classification", "retrieval", "clustering", "relations", "cross_setting", "novel",
    "heldout_arch", "cross_family", "cross_source", "heldout_family", "mixed_zoo", "nuisance", "accuracy_prediction",
    "selection"})
  local saved, ran, given = B.protocols, {}, {}
  B.protocols = {}
  for i, p in ipairs(saved) do
    B.protocols[i] = {name = p.name, run = function(c)
      local m = p.run(c)
      if m then ran[#ran + 1] = p.name end
      for k, v in pairs(m or {}) do given[k] = v end
      return m
    end}
  end
  local ok, r = pcall(B.evaluate, path, oracle, {log = function() end})
  B.protocols = saved
  lu.assertTrue(ok, r)
  lu.assertEquals(ran, {"classification", "retrieval", "clustering", "relations", "cross_setting"})
  lu.assertEquals(given.top1, 1)
  lu.assertEquals(given.cross_top1, 1)
  lu.assertEquals(r, given) -- train_seconds, the one metric evaluate adds, is nil: the oracle has no fit
end

-- Every report says where its figures come from: the BLAS kernel they
-- depend on (results are bit-identical per kernel), the threads, the code.
function TestBenchmark:test_reports_carry_their_provenance()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local md = B.write_report(dir, "r", {methods = {a = {top1 = 0.5}}, protocol = {}, order = {"a"},
    metrics = {"top1"}, title = "t", intro = "2 models, 1 task."})
  local info = lps.build_info()
  local json = require("cjson").decode(lps.util.read_file(dir .. "/r.json"))
  lu.assertEquals(json.provenance.blas_kernel, info.blas_kernel)
  lu.assertEquals(json.provenance.threads, info.threads)
  lu.assertEquals(json.provenance.version, lps.version)
  lu.assertStrContains(md, "Produced by lualps " .. lps.version)
  lu.assertStrContains(md, "OpenBLAS's " .. info.blas_kernel .. " kernel")
  -- and the convolutions' products, which decide their last bits too
  lu.assertTrue(info.conv_kernels == "fma8" or info.conv_kernels == "wide16" or info.conv_kernels == "unfused8")
  lu.assertEquals(json.provenance.conv_kernels, info.conv_kernels)
  lu.assertStrContains(md, "the " .. info.conv_kernels .. " convolution kernels")
  os.execute("rm -rf " .. dir)
end

local code = lu.LuaUnit.run("-o", "tap")
T.cleanup()
os.remove(path .. ".splits.json"); os.remove(path .. ".transfer.json")
os.exit(code, true)
