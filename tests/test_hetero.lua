-- ModelSet-Hetero at a small scale on synthetic images: the plan, the
-- build (single, sharded, resumed), the metadata, the five splits and their
-- cleanliness, bad options refused before anything is touched.
local lu = require "luaunit"
local lps = require "lualps"
local cjson = require "cjson"
local T = require "tests.helpers"
local H = lps.hetero

local dir = os.tmpname(); os.remove(dir)
local data = T.fake_fashion_mnist(dir .. "/data", 600, 300)
local TABLE = dofile("recipes/modelset_hetero_tasks.lua")
-- subsets 1 {0,1}, 3 {5,7}, 8 {3,8,9} in two domains: 6 tasks, two of them with held-out classes
local SMALL = "--subsets 1,3,8 --domains identity,invert --per-task 8 --pool 4 --max-samples 200 --max-test 100 --quiet --data " .. data

local function recipe(args) return T.sh("lua5.4 recipes/modelset_hetero.lua " .. args) end
local function file_bytes(p) return lps.util.read_file(p) end

local single
local function single_build()
  if not single then
    single = dir .. "/single.lpsm"
    local ok, out = recipe(SMALL .. " --out " .. single)
    lu.assertTrue(ok, out)
  end
  return single
end

local records = T.records

TestHeteroPlan = {}

function TestHeteroPlan:test_full_plan_composition()
  local plan, tasks = H.plan(TABLE)
  lu.assertEquals(#tasks, 40)
  lu.assertEquals(#plan, 1200)
  local fam, dom, cls, held, pool = {}, {}, {}, 0, 0
  for _, m in ipairs(plan) do
    fam[m.family] = (fam[m.family] or 0) + 1
    dom[m.domain] = (dom[m.domain] or 0) + 1
    for _, c in ipairs(m.classes) do cls[c] = true end
    if m.heldout_arch then held = held + 1 end
    if m.in_pool then pool = pool + 1 end
    lu.assertTrue(#m.classes >= 2 and #m.classes <= 5)
    local last = m.arch[#m.arch]
    lu.assertEquals(last.out, #m.classes, m.id)
    if m.family == "cnn" then lu.assertTrue(m.macs <= H.defaults.cnn_max_macs, m.id) end
    -- CNN training stays within its share of the build time
    if m.family == "cnn" then
      local n = math.floor(m.fraction * 6000 * #m.classes + 0.5)
      lu.assertTrue(n * m.epochs <= H.defaults.cnn_max_samples + 1, m.id)
    end
  end
  lu.assertEquals(fam, {mlp = 600, cnn = 600})
  lu.assertEquals(dom, {identity = 300, invert = 300, rot90 = 300, blur = 300})
  for c = 0, 9 do lu.assertTrue(cls[c], "class " .. c) end
  lu.assertTrue(held > 60 and held < 220, "held-out architectures: " .. held)
  lu.assertEquals(pool, 320)
  -- the same configuration gives the same plan, another seed another one
  local again = H.plan(TABLE)
  lu.assertEquals(again[500], plan[500])
  lu.assertNotEquals(H.plan(TABLE, {master_seed = 2})[500].lr, plan[500].lr)
  T.assert_error_contains("hetero: unknown option 'per_tsk'", H.plan, TABLE, {per_tsk = 4})
  -- the domains are lps.data's: one list, the C core's
  local sepia = {class_names = TABLE.class_names, subsets = TABLE.subsets, domains = {"identity", "sepia"}}
  T.assert_error_contains("hetero: unknown domain 'sepia' (lps.data.domains: identity, invert, rot90, blur, downup, zoomout, shift, vflip, edges, texture, elastic)",
    H.tasks, sepia)
  lu.assertEquals(#H.plan(TABLE, {tasks = 2}), 60) -- the first two tasks
end

-- The full plan's splits, its metadata by id and its tasks.
local function planned_splits()
  local plan, tasks = H.plan(TABLE)
  local meta = {}
  for _, m in ipairs(plan) do meta[m.id] = m end
  return H.splits(TABLE, plan, tasks), meta, tasks
end

function TestHeteroPlan:test_full_splits_are_clean()
  local s, meta, tasks = planned_splits()
  lu.assertEquals(H.check_splits(s, meta), {})
  lu.assertEquals(#s.retrieval.unseen_tasks, 12)
  lu.assertEquals(#s.novel.unseen_tasks, 12) -- subsets 8, 9, 10 in four domains
  for _, t in ipairs(s.novel.unseen_tasks) do
    local has = false
    for _, c in ipairs(tasks[t].classes) do has = has or c == 8 or c == 9 end
    lu.assertTrue(has, "novel test task " .. t)
  end
  lu.assertEquals(#s.classification.train + #s.classification.test, 1200)
  lu.assertTrue(#s.heldout_arch.query > 0 and #s.cross_family.query > 0)
end

function TestHeteroPlan:test_split_checker_finds_planted_leaks()
  local s, meta = planned_splits()
  local function leak(f) local c = cjson.decode(cjson.encode(s)); f(c); return H.check_splits(c, meta) end
  local p = leak(function(c) table.insert(c.retrieval.train, c.retrieval.query[1]) end)
  lu.assertStrContains(p[1], "retrieval: training model")
  p = leak(function(c) table.insert(c.novel.train, c.novel.gallery[1]) end)
  lu.assertStrContains(table.concat(p, "\n"), "held-out class")
  p = leak(function(c) table.insert(c.heldout_arch.train, c.heldout_arch.query[1]) end)
  lu.assertStrContains(p[1], "heldout_arch: training model")
  p = leak(function(c) table.insert(c.cross_family.query, c.cross_family.gallery[1]) end)
  lu.assertStrContains(table.concat(p, "\n"), "is not a CNN")
  p = leak(function(c) table.insert(c.classification.test, c.classification.train[1]) end)
  lu.assertStrContains(p[1], "in both train and test")
end

TestHeteroBuild = {}

function TestHeteroBuild:test_build_metadata_and_models()
  local path = single_build()
  local recs, n = records(path)
  lu.assertEquals(n, 48)
  local ms <close> = lps.modelset.open(path)
  local seen = {mlp = 0, cnn = 0}
  for i = 1, #ms do
    local m = ms:meta(i)
    seen[m.family] = seen[m.family] + 1
    for _, k in ipairs{"task", "classes", "domain", "family", "arch", "optimizer", "lr", "batch_size", "epochs",
                       "fraction", "train_accuracy", "test_accuracy", "architecture"} do
      lu.assertNotNil(m[k], m.id .. " " .. k)
    end
    if m.optimizer == "adamw" then lu.assertNotNil(m.weight_decay, m.id) end
  end
  lu.assertEquals(seen, {mlp = 24, cnn = 24})
  -- the record alone rebuilds the model: its stored test accuracy comes back
  local loader = lps.zoo.task_data_loader(H.tasks({class_names = TABLE.class_names, domains = {"identity", "invert"},
    subsets = {TABLE.subsets[1], TABLE.subsets[3], TABLE.subsets[8]}}), data, {max_test = 100})
  for _, i in ipairs{1, 2, 8, 48} do
    local m = ms:meta(i)
    local td = loader(m.task)
    local x = m.family == "cnn" and td.xt:reshape(td.xt:size(1), 1, 28, 28) or td.xt
    lu.assertAlmostEquals(lps.evaluate(ms:get(i), {x = x, y = td.yt}), m.test_accuracy, 1e-12)
  end
  local splits = cjson.decode(file_bytes(path .. ".splits.json"))
  lu.assertEquals(H.check_splits(splits, (function() local t = {} for id, r in pairs(recs) do t[id] = r.meta end return t end)()), {})
  lu.assertEquals(#splits.tasks, 6)
end

function TestHeteroBuild:test_sharded_build_is_bit_identical()
  local ref = records(single_build())
  local path = dir .. "/jobs.lpsm"
  local ok, out = recipe(SMALL .. " --jobs 2 --out " .. path)
  lu.assertTrue(ok, out)
  local got, n = records(path)
  lu.assertEquals(n, 48)
  for id, r in pairs(ref) do
    lu.assertEquals(got[id].tensors, r.tensors, id)
    lu.assertEquals(got[id].meta, r.meta, id)
  end
  lu.assertEquals(cjson.decode(file_bytes(path .. ".splits.json")), cjson.decode(file_bytes(single_build() .. ".splits.json")))
end

function TestHeteroBuild:test_resume_after_a_shard()
  local ref = records(single_build())
  local path = dir .. "/resume.lpsm"
  local ok, out = recipe(SMALL .. " --shard 2/3 --out " .. path)
  lu.assertTrue(ok, out)
  ok, out = T.sh("lua5.4 recipes/modelset_hetero.lua " .. SMALL:gsub("%-%-quiet", "") .. " --out " .. path)
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "16 models were already stored, built 32")
  local got = records(path)
  for id, r in pairs(ref) do lu.assertEquals(got[id].tensors, r.tensors, id) end
end

function TestHeteroBuild:test_bad_options_refused_without_touching_the_set()
  local path = single_build()
  local before, splits = file_bytes(path), file_bytes(path .. ".splits.json")
  for _, c in ipairs{
    {"--subsets 1,11 --out " .. path, "unknown subset '11'"},
    {"--domains identity,sepia --out " .. path, "unknown domain 'sepia'"},
    {SMALL .. " --per-task 5 --out " .. path, "--per-task must be an even integer"},
    {SMALL .. " --pool 6 --out " .. path, "--pool must be a multiple of 4"},
    {SMALL .. " --seed 3 --out " .. path, "another configuration"},
    {SMALL .. " --subsets 1 --domains identity --out " .. dir .. "/x.lpsm", "at least 4 tasks"},
    {SMALL .. " --jobs 2 --shard 1/2 --out " .. dir .. "/y.lpsm", "do not go together"},
    {SMALL .. " --out /no/such/dir/z.lpsm", "does not exist"},
  } do
    local ok, out = recipe(c[1])
    lu.assertNotEquals(ok, true, c[1])
    lu.assertStrContains(out, c[2])
  end
  lu.assertEquals(file_bytes(path), before)
  lu.assertEquals(file_bytes(path .. ".splits.json"), splits)
  lu.assertNil(io.open(dir .. "/x.lpsm"))
end

TestHeteroTransfer = {}

-- The pool protocol on the small set: shards agree with one process, gains
-- are fine-tuned minus scratch per half, reliability is a correlation, and
-- the relation matrices are the hand-counted ones.
function TestHeteroTransfer:test_pool_matrix()
  local set = single_build()
  local base = ("lua5.4 recipes/transfer_matrix.lua --quiet --images 30 --head-epochs 3 --test-images 60 --data %s --set %s")
    :format(data, set)
  local ok, out = T.sh(base .. " --out " .. dir .. "/p1.json")
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "split-half reliability")
  ok, out = T.sh(base .. " --jobs 2 --out " .. dir .. "/p2.json")
  lu.assertTrue(ok, out)
  local r1 = cjson.decode(file_bytes(dir .. "/p1.json"))
  local r2 = cjson.decode(file_bytes(dir .. "/p2.json"))
  lu.assertEquals(r2.gain, r1.gain)
  lu.assertEquals(r2.finetune, r1.finetune)
  lu.assertEquals(r1.protocol.kind, "pool")
  -- tasks: {0,1} identity, {0,1} invert, {5,7} identity, {5,7} invert, {3,8,9} identity, {3,8,9} invert
  lu.assertEquals(r1.overlap[1], {2, 2, 0, 0, 0, 0})
  lu.assertEquals(r1.overlap[5], {0, 0, 0, 0, 3, 3})
  lu.assertEquals(r1.domain_match[1], {1, 0, 1, 0, 1, 0})
  -- the domain table: three class sets, one pair of tasks each per cell
  local g = r1.gain
  lu.assertEquals(r1.domain_pairs.identity.invert, 3)
  lu.assertAlmostEquals(r1.domain_gain.identity.invert, (g[1][2] + g[3][4] + g[5][6]) / 3, 1e-12)
  lu.assertAlmostEquals(r1.domain_gain.invert.invert, (g[2][2] + g[4][4] + g[6][6]) / 3, 1e-12)
  -- gain_half[h][s][t] = mean over half h's pool models of s of (fine-tuned - same family's scratch)
  local s, t = 3, 5
  for h = 1, 2 do
    local sum, n = 0, 0
    for _, e in ipairs(r1.pool[s]) do
      if e.half == h then sum, n = sum + r1.finetune[e.id][t] - r1.scratch[t][e.family][h], n + 1 end
    end
    lu.assertEquals(n, 2) -- one MLP and one CNN per half (pool 4)
    lu.assertAlmostEquals(r1.gain_halves[h][s][t], sum / n, 1e-12)
  end
  lu.assertAlmostEquals(r1.gain[s][t], (r1.gain_halves[1][s][t] + r1.gain_halves[2][s][t]) / 2, 1e-12)
  local rel = r1.reliability
  lu.assertTrue(math.abs(rel.split_half_spearman) <= 1, tostring(rel.split_half_spearman))
  lu.assertEquals(rel.pairs, 30)
  for id, row in pairs(r1.finetune) do
    for _, acc in ipairs(row) do lu.assertTrue(acc >= 0 and acc <= 1, id) end
  end
end

-- The report's mean gains by relation and, for same-class pairs, by domain,
-- on a hand-made result: tasks 1, 2 share classes (identity, blur), task 3 not.
function TestHeteroTransfer:test_report_by_relation_and_domain()
  local r = {tasks = {{classes = {0, 1}, domain = "identity"}, {classes = {0, 1}, domain = "blur"},
                      {classes = {2, 3}, domain = "identity"}},
    gain = {{0.1, 0.08, -0.02}, {0.06, 0.12, -0.04}, {-0.01, -0.03, 0.2}},
    overlap = {{2, 2, 0}, {2, 2, 0}, {0, 0, 2}}, domain_match = {{1, 0, 1}, {0, 1, 0}, {1, 0, 1}},
    reliability = {pairs = 6, split_half_spearman = 0.5, per_target_split_half_spearman = 0.4,
                   tau_overlap = 0.3, tau_domain = 0.2, tau_overlap_and_domain = 0.25}}
  local text = lps.transfer_pool.report(r)
  lu.assertStrContains(text, "same task                            +0.1400 (3 pairs)")
  lu.assertStrContains(text, "same classes, other domain           +0.0700 (2 pairs)")
  lu.assertStrContains(text, "disjoint classes, same domain        -0.0150 (2 pairs)")
  -- identity row: itself (0.1 on task 1, 0.2 on task 3: 0.15, 2 pairs), to blur 0.08; blur row: 0.06, 0.12
  lu.assertStrContains(text, "  identity    +0.1500 [ 2]  +0.0800 [ 1]")
  lu.assertStrContains(text, "  blur        +0.0600 [ 1]  +0.1200 [ 1]")
end

-- domain_gain[a][b]: mean gain over pairs of tasks of one class set (in any
-- order), source in a, target in b, the same task included; other pairs
-- and tasks without a domain left out. Tasks: 1 {0,1} identity, 2 {1,0}
-- rot90, 3 {0,1} rot90, 4 {2,3} identity, 5 {0,1} without a domain.
function TestHeteroTransfer:test_domain_gain()
  local tasks = {{classes = {0, 1}, domain = "identity"}, {classes = {1, 0}, domain = "rot90"},
    {classes = {0, 1}, domain = "rot90"}, {classes = {2, 3}, domain = "identity"}, {classes = {0, 1}}}
  local gain = {{0.10, 0.02, 0.04, 9, 9}, {0.01, 0.20, 0.30, 9, 9}, {0.03, 0.10, 0.40, 9, 9},
    {9, 9, 9, 0.06, 9}, {9, 9, 9, 9, 9}}
  local dg, pairs, domains = lps.transfer_pool.domain_gain(gain, tasks)
  lu.assertEquals(domains, {"identity", "rot90"})
  lu.assertEquals(pairs, {identity = {identity = 2, rot90 = 2}, rot90 = {identity = 2, rot90 = 4}})
  lu.assertAlmostEquals(dg.identity.identity, (0.10 + 0.06) / 2, 1e-12) -- tasks 1 and 4, each itself
  lu.assertAlmostEquals(dg.identity.rot90, (0.02 + 0.04) / 2, 1e-12)
  lu.assertAlmostEquals(dg.rot90.identity, (0.01 + 0.03) / 2, 1e-12)
  lu.assertAlmostEquals(dg.rot90.rot90, (0.20 + 0.30 + 0.10 + 0.40) / 4, 1e-12)
end

function TestHeteroTransfer:test_pool_halves()
  -- each half of a task's pool: one MLP and one CNN, disjoint models
  local ms <close> = lps.modelset.open(single_build())
  local pool = lps.transfer_pool.pool_of(ms)
  lu.assertEquals(#pool[1], 4)
  lu.assertEquals({pool[1][1].half, pool[1][2].half, pool[1][3].half, pool[1][4].half}, {1, 1, 2, 2})
  local fams = {}
  for _, e in ipairs(pool[1]) do fams[e.family] = (fams[e.family] or 0) + 1 end
  lu.assertEquals(fams, {mlp = 2, cnn = 2})
end

TestHeteroEval = {}

-- The whole ModelSet-Hetero evaluation at a small scale: every method, the
-- controls and ablations, the saved LPS model reading MLPs and CNNs.
function TestHeteroEval:test_pipeline_outputs()
  local set = single_build()
  if not io.open(set .. ".transfer.json") then
    local ok, out = T.sh(("lua5.4 recipes/transfer_matrix.lua --quiet --images 30 --head-epochs 3 --test-images 60 "
      .. "--data %s --set %s"):format(data, set))
    lu.assertTrue(ok, out)
  end
  local res = dir .. "/results"
  local ok, out = T.sh(("lua5.4 recipes/eval_hetero.lua --set %s --out %s --seeds 2 --epochs 3 --probe 20 --data %s")
    :format(set, res, data))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "| method | top1 | map | novel_map |")
  lu.assertNotStrContains(out, "gnuplot failed")
  local r = cjson.decode(file_bytes(res .. "/lps_hetero_eval.json"))
  for _, m in ipairs{"lps", "raw", "sorted", "stats", "gram", "matching", "cka"} do
    local x = r.methods[m]
    lu.assertNotNil(x, m)
    for _, k in ipairs{"unseen_map", "novel_map", "heldout_arch_rank1", "cross_family_rank1", "tau_transfer",
                       "selection_accuracy", "selection_regret"} do
      lu.assertNotNil(x[k], m .. " " .. k) -- a number, or null where the method cannot say
    end
    lu.assertTrue(x.top1 >= 0 and x.top1 <= 1, m)
  end
  lu.assertEquals(r.methods.raw.cross_family_rank1, cjson.null) -- raw weights cannot compare families
  lu.assertTrue(type(r.methods.lps.cross_family_rank1) == "number")
  lu.assertNotNil(r.methods.lps.map_std)
  for _, k in ipairs{"shuffled_labels_map", "chance_map", "random_regret", "reliability"} do
    lu.assertNotNil(r.controls[k], k)
  end
  for _, v in ipairs{"no_conv_encoder", "first_order_pooling", "no_relation_objective", "no_chain_norm",
                     "trained_on_mlps", "weight_units_only", "templates_and_units",
                     "no_template_extras", "unit_supervision"} do
    lu.assertNotNil(r.ablations[v], v)
  end
  lu.assertStrContains(file_bytes(res .. "/lps_hetero_eval.md"), "## Controls")
  -- model selection: weight methods, estimators on the budget and funnels, each with regret, tau and cost
  lu.assertStrContains(file_bytes(res .. "/lps_hetero_eval.md"), "## Model selection")
  for _, m in ipairs{"lps", "template_matching", "logme", "logme_exact", "leep", "knn", "linear_probe",
                     "lps+logme", "template_matching+logme", "lps+logme_exact"} do
    for _, k in ipairs{"selection_regret", "selection_tau", "selection_ms_per_candidate"} do
      lu.assertEquals(type(r.methods[m][k]), "number", m .. " " .. k)
    end
  end
  -- the saved model reads both families, from the store and through safetensors
  local sim = lps.similarity.load(res .. "/lps_hetero.model")
  local ms <close> = lps.modelset.open(set)
  local ic, im
  for i = 1, #ms do
    if ms:meta(i).family == "cnn" then ic = ic or i else im = im or i end
  end
  local st = dir .. "/cnn.safetensors"
  lps.export_safetensors(ms:get(ic), st)
  local e1, e2 = sim:embed(ms:get(ic)), sim:embed((lps.import_safetensors(st)))
  lu.assertAlmostEquals(e1:norm(), 1, 1e-5)
  lu.assertTrue(lps.allclose(e1, e2, 1e-5, 1e-6))
  lu.assertAlmostEquals(sim:embed(ms:get(im)):norm(), 1, 1e-5)
  lu.assertEquals(sim:nearest(ms, ic, 3)[1].index ~= ic, true)
  -- the command line: a CNN checkpoint as the query, its own record first
  local okc, outc = T.sh(("scripts/lualps nearest %s %s %s -k 2"):format(set, res .. "/lps_hetero.model", st))
  lu.assertTrue(okc, outc)
  lu.assertStrContains(outc, ms:meta(ic).id)
  lu.assertNotNil(outc:match("\n%s+1%s+" .. ic .. "%s+%S+%s+%S+%s+1%.0000"), outc)
  okc, outc = T.sh(("scripts/lualps similarity %s %s %d %s"):format(set, res .. "/lps_hetero.model", ic, st))
  lu.assertTrue(okc, outc)
  lu.assertAlmostEquals(tonumber(outc), 1, 1e-5)
  for _, png in ipairs{"hetero_task_similarity_vs_transfer.png", "hetero_embedding_pca.png"} do
    lu.assertEquals(file_bytes(res .. "/" .. png):sub(2, 4), "PNG", png)
  end
end

local code = lu.LuaUnit.run("-o", "tap")
os.execute("rm -rf '" .. dir .. "'")
os.exit(code, true)
