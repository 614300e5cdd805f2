-- ModelSet-Hetero 2 at a small scale on synthetic Fashion-MNIST and
-- rendered letters: the plan (MLPs, CNNs, ResNets over both sources), the
-- build (single, sharded, resumed), the metadata, the splits (a) to (g) and
-- their cleanliness, bad options refused before anything is touched.
local lu = require "luaunit"
local lps = require "lualps"
local cjson = require "cjson"
local T = require "tests.helpers"
local H = lps.hetero

local dir = os.tmpname(); os.remove(dir)
local data = T.fake_fashion_mnist(dir .. "/data", 600, 300)
local TABLE = dofile("recipes/modelset_hetero_tasks.lua")
-- subsets 9 {T-shirt, Trouser}, 13 {Dress, Bag, Ankle boot}, 14 {g, y} in two
-- domains: 6 tasks of two sources, four with held-out classes; 6 MLPs and
-- CNNs and a ResNet per task
local SMALL = "--subsets 9,13,14 --domains identity,rot90 --per-task 6 --pool 4 --resnets 1 --letters-per-class 200 "
  .. "--max-samples 200 --max-test 100 --quiet --data " .. data
local SMALL_TABLE = {}
for k, v in pairs(TABLE) do SMALL_TABLE[k] = v end
SMALL_TABLE.subsets, SMALL_TABLE.domains = {TABLE.subsets[9], TABLE.subsets[13], TABLE.subsets[14]}, {"identity", "rot90"}
SMALL_TABLE.sources = {fashion_mnist = TABLE.sources.fashion_mnist, glyphs = {first_class = 10, classes = 52,
  per_class = 200, test_per_class = TABLE.sources.glyphs.test_per_class}}

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

-- The task table: 16 subsets of two sources in four domains, one class space.
function TestHeteroPlan:test_task_table()
  local tasks = H.tasks(TABLE)
  lu.assertEquals(#tasks, 64)
  local src, classes, names = {}, {}, {}
  for _, t in ipairs(tasks) do
    src[t.source] = (src[t.source] or 0) + 1
    lu.assertTrue(#t.classes >= 2 and #t.classes <= 5, t.name)
    for k, c in ipairs(t.classes) do
      classes[c] = true
      lu.assertEquals(t.class_names[k], TABLE.class_names[c])
      -- the label in the source's data: Fashion-MNIST c + 1, letters 10 + 0-based label
      lu.assertEquals(t.labels[k], t.source == "glyphs" and c - 9 or c + 1, t.name)
      if t.source == "glyphs" then
        lu.assertEquals(lps.data.glyph_classes[t.labels[k]], t.class_names[k])
        names[t.class_names[k]] = true
      end
    end
    lu.assertEquals(t.per_class, t.source == "glyphs" and 3000 or nil)
  end
  lu.assertEquals(src, {fashion_mnist = 32, glyphs = 32})
  local n = 0
  for _ in pairs(classes) do n = n + 1 end
  lu.assertEquals(n, 28)
  -- 18 letters, one case each (no o/O, s/S look-alikes), no digits
  for name in pairs(names) do
    lu.assertNil(names[name:upper() ~= name and name:upper() or name:lower()], name)
    lu.assertNil(name:match("%d"))
  end
  lu.assertEquals(TABLE.class_names[10], "A")
  lu.assertEquals(TABLE.class_names[42], "g")
  lu.assertEquals(TABLE.class_names[61], "z")
  local bad = {class_names = TABLE.class_names, sources = TABLE.sources, domains = {"identity"},
               subsets = {{source = "fashion_mnist", classes = {0, 12}}}}
  T.assert_error_contains("hetero: subset 1 (fashion_mnist) has class 12, expected an integer 0..9", H.tasks, bad)
  bad.subsets = {{source = "mnist", classes = {0, 1}}}
  T.assert_error_contains("hetero: subset 1 has unknown source 'mnist'", H.tasks, bad)
end

function TestHeteroPlan:test_full_plan_composition()
  local plan, tasks = H.plan(TABLE)
  lu.assertEquals(#tasks, 64)
  lu.assertEquals(#plan, 1728)
  local fam, dom, src, cls, held, pool = {}, {}, {}, {}, 0, 0
  local archs, shortcuts = {}, {[0] = 0, [2] = 0}
  for _, m in ipairs(plan) do
    fam[m.family] = (fam[m.family] or 0) + 1
    dom[m.domain] = (dom[m.domain] or 0) + 1
    src[m.source] = (src[m.source] or 0) + 1
    for _, c in ipairs(m.classes) do cls[c] = true end
    if m.heldout_arch then held = held + 1 end
    if m.in_pool then pool = pool + 1 end
    lu.assertEquals(m.class_names, tasks[m.task].class_names)
    local last = m.arch[#m.arch]
    lu.assertEquals(last.out, #m.classes, m.id)
    local n = math.floor(m.fraction * (m.source == "glyphs" and 3000 or 6000) * #m.classes + 0.5)
    local steps = -(-n // m.batch_size) * m.epochs
    if m.family ~= "mlp" then
      -- CNN and ResNet training stays within its share of the build time
      lu.assertTrue(n * m.epochs <= H.defaults.cnn_max_samples + 1, m.id)
      lu.assertTrue(m.macs <= H.defaults[m.family == "cnn" and "cnn_max_macs" or "resnet_max_macs"], m.id)
      -- enough steps, unless that would pass the cap
      lu.assertTrue(steps >= H.defaults.min_steps[m.family] or n * (m.epochs + 1) > H.defaults.cnn_max_samples, m.id)
    else
      lu.assertTrue(steps >= H.defaults.min_steps.mlp, m.id)
    end
    if m.family == "resnet" then
      archs[m.architecture] = true
      lu.assertFalse(m.in_pool or m.heldout_arch, m.id)
      -- conv (no bias) + bn + relu, residual blocks (+ relu), global average pooling, flatten, linear
      lu.assertEquals({m.arch[1].type, m.arch[1].bias, m.arch[2].type, m.arch[3].type}, {"conv2d", false, "batchnorm2d", "relu"})
      local blocks = 0
      for l = 4, #m.arch - 3, 2 do
        local r = m.arch[l]
        lu.assertEquals(r.type, "residual", m.id)
        lu.assertEquals(m.arch[l + 1].type, "relu", m.id)
        lu.assertEquals(#r.body, 5)
        lu.assertEquals(r.body[1].bias, false)
        -- the identity shortcut only where channels and size stay
        local same = r.body[1]["in"] == r.body[1].out and r.body[1].stride == 1
        lu.assertEquals(#r.shortcut, same and 0 or 2, m.id)
        shortcuts[#r.shortcut] = shortcuts[#r.shortcut] + 1
        blocks = blocks + 1
      end
      lu.assertTrue(blocks == 1 or blocks == 2, m.id)
      lu.assertEquals({m.arch[#m.arch - 2].type, m.arch[#m.arch - 2].output, m.arch[#m.arch - 1].type},
        {"adaptive_avgpool2d", 1, "flatten"})
    end
  end
  lu.assertEquals(fam, {mlp = 832, cnn = 768, resnet = 128})
  lu.assertEquals(dom, {identity = 432, rot90 = 432, zoomout = 432, shift = 432})
  lu.assertEquals(src, {fashion_mnist = 864, glyphs = 864})
  for _, t in ipairs(tasks) do for _, c in ipairs(t.classes) do lu.assertTrue(cls[c], "class " .. c) end end
  local n = 0
  for _ in pairs(archs) do n = n + 1 end
  lu.assertTrue(n > 40, "ResNet architectures: " .. n)
  lu.assertTrue(shortcuts[0] > 10 and shortcuts[2] > 10, ("shortcuts: %d identity, %d conv"):format(shortcuts[0], shortcuts[2]))
  lu.assertTrue(held > 90 and held < 260, "held-out architectures: " .. held)
  lu.assertEquals(pool, 512)
  -- a ResNet of the plan trains: batch norm in train mode, k outputs
  local r = plan[26]
  lu.assertEquals(r.family, "resnet")
  local m = lps.nn.from_arch(r.arch, lps.generator(1))
  lu.assertEquals(m:forward(lps.rand(3, 1, 28, 28, lps.generator(2))):shape(), {3, #r.classes})
  -- the same configuration gives the same plan, another seed another one
  local again = H.plan(TABLE)
  lu.assertEquals(again[500], plan[500])
  lu.assertNotEquals(H.plan(TABLE, {master_seed = 2})[500].lr, plan[500].lr)
  T.assert_error_contains("hetero: unknown option 'per_tsk'", H.plan, TABLE, {per_tsk = 4})
  -- the domains are lps.data's: one list, the C core's
  local sepia = {class_names = TABLE.class_names, sources = TABLE.sources, subsets = TABLE.subsets,
                 domains = {"identity", "sepia"}}
  T.assert_error_contains("hetero: unknown domain 'sepia' (lps.data.domains: identity, invert, rot90, blur, downup, zoomout, shift, vflip, edges, texture, elastic)",
    H.tasks, sepia)
  lu.assertEquals(#H.plan(TABLE, {tasks = 2}), 54) -- the first two tasks
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
  lu.assertEquals(#s.retrieval.unseen_tasks, 19)
  lu.assertEquals(#s.novel.unseen_tasks, 16) -- subsets 13, 15 (Bag, Ankle boot), 14, 16 (A, g, y) in four domains
  local held = {[8] = true, [9] = true, [10] = true, [42] = true, [60] = true}
  for t = 1, #tasks do
    local has = false
    for _, c in ipairs(tasks[t].classes) do has = has or held[c] or false end
    local test = false
    for _, u in ipairs(s.novel.unseen_tasks) do test = test or u == t end
    lu.assertEquals(test, has, "novel test task " .. t)
  end
  lu.assertEquals(#s.classification.train + #s.classification.test, 1600) -- no ResNet
  lu.assertTrue(#s.heldout_arch.query > 0 and #s.cross_family.query > 0)
  -- (f): both directions, every MLP and CNN of a source trains the other's test
  lu.assertEquals(#s.cross_source, 2)
  for k, src in ipairs{"fashion_mnist", "glyphs"} do
    local d = s.cross_source[k]
    lu.assertEquals(d.train_source, src)
    lu.assertEquals({#d.train_tasks, #d.unseen_tasks, #d.train, #d.query + #d.gallery}, {32, 32, 800, 800})
    for _, t in ipairs(d.train_tasks) do lu.assertEquals(tasks[t].source, src) end
    for _, t in ipairs(d.unseen_tasks) do lu.assertNotEquals(tasks[t].source, src) end
  end
  -- (g): the ResNets of (b)'s unseen tasks against those tasks' MLPs and CNNs, trained as (b)
  local g = s.heldout_family
  lu.assertEquals(g.unseen_tasks, s.retrieval.unseen_tasks)
  lu.assertEquals(g.train, s.retrieval.train)
  lu.assertEquals(#g.query, 2 * 19)
  lu.assertEquals(#g.gallery, #s.retrieval.query + #s.retrieval.gallery)
  for _, id in ipairs(g.query) do lu.assertEquals(meta[id].family, "resnet") end
end

function TestHeteroPlan:test_split_checker_finds_planted_leaks()
  local s, meta = planned_splits()
  local function leak(f) local c = cjson.decode(cjson.encode(s)); f(c); return table.concat(H.check_splits(c, meta), "\n") end
  local p = leak(function(c) table.insert(c.retrieval.train, c.retrieval.query[1]) end)
  lu.assertStrContains(p, "retrieval: training model")
  p = leak(function(c) table.insert(c.novel.train, c.novel.gallery[1]) end)
  lu.assertStrContains(p, "held-out class")
  p = leak(function(c) table.insert(c.heldout_arch.train, c.heldout_arch.query[1]) end)
  lu.assertStrContains(p, "heldout_arch: training model")
  p = leak(function(c) table.insert(c.cross_family.query, c.cross_family.gallery[1]) end)
  lu.assertStrContains(p, "is not a CNN")
  p = leak(function(c) table.insert(c.classification.test, c.classification.train[1]) end)
  lu.assertStrContains(p, "in both train and test")
  -- ResNets: in no training split, and in no queries or gallery but (g)'s
  local resnet = s.heldout_family.query[1]
  for _, where in ipairs{{"classification", "train"}, {"novel", "train"}, {"heldout_arch", "train"},
                         {"retrieval", "gallery"}, {"classification", "test"}} do
    p = leak(function(c) table.insert(c[where[1]][where[2]], resnet) end)
    lu.assertStrContains(p, ("%s: %s model %s is a ResNet"):format(where[1], where[2], resnet))
  end
  p = leak(function(c) table.insert(c.cross_source[1].train, resnet) end)
  lu.assertStrContains(p, "cross_source from fashion_mnist: train model " .. resnet .. " is a ResNet")
  -- (f): training models of one source only, queries and gallery of the other
  p = leak(function(c) table.insert(c.cross_source[1].train, c.cross_source[2].train[1]) end)
  lu.assertStrContains(p, "cross_source from fashion_mnist: training model " .. s.cross_source[2].train[1]
    .. " is of source glyphs")
  p = leak(function(c) table.insert(c.cross_source[2].gallery, c.cross_source[2].train[1]) end)
  lu.assertStrContains(p, "cross_source from glyphs: gallery model " .. s.cross_source[2].train[1]
    .. " is of the training source")
  -- (g): ResNet queries of test tasks, a gallery of no ResNet, no ResNet trains
  p = leak(function(c) table.insert(c.heldout_family.query, c.heldout_family.gallery[1]) end)
  lu.assertStrContains(p, "heldout_family: query " .. s.heldout_family.gallery[1] .. " is not a ResNet")
  p = leak(function(c) table.insert(c.heldout_family.gallery, resnet) end)
  lu.assertStrContains(p, "heldout_family: gallery model " .. resnet .. " is a ResNet")
  p = leak(function(c) table.insert(c.heldout_family.train, resnet) end)
  lu.assertStrContains(p, "heldout_family: training model " .. resnet .. " is a ResNet")
  local trained_resnet -- a ResNet of a training task of (b)
  for id, m in pairs(meta) do
    if m.family == "resnet" and not trained_resnet then
      local unseen = false
      for _, t in ipairs(s.retrieval.unseen_tasks) do unseen = unseen or t == m.task end
      if not unseen then trained_resnet = id end
    end
  end
  p = leak(function(c) table.insert(c.heldout_family.query, trained_resnet) end)
  lu.assertStrContains(p, "heldout_family: query " .. trained_resnet .. " is not of a test task")
end

TestHeteroBuild = {}

-- The loader reads either source: a letters task's images are lps.data.glyphs'
-- of its letters (labels 1..k in the task's order) in its domain, whichever
-- other tasks the list holds.
function TestHeteroBuild:test_task_data_loader_reads_both_sources()
  local tasks = H.tasks(SMALL_TABLE)
  lu.assertEquals({tasks[1].source, tasks[5].source, tasks[6].domain}, {"fashion_mnist", "glyphs", "rot90"})
  local load = lps.zoo.task_data_loader(tasks, data, {max_test = 100})
  local gy = load(6) -- {g, y} rotated
  local x, y = lps.data.glyphs("train", {per_class = 200, classes = {"g", "y"}})
  local xt = lps.data.glyphs("test", {per_class = 500, classes = {"g", "y"}})
  lu.assertEquals(gy.x:size(1), 400)
  lu.assertTrue(lps.allclose(gy.x, lps.data.domain(x, "rot90"), 0, 0))
  local labels = {}
  for i = 1, 400 do labels[i] = ({[33] = 1, [51] = 2})[y[i]] end -- g (label 33) is class 1, y (51) class 2
  lu.assertEquals(gy.y:totable(), labels)
  lu.assertEquals(gy.xt:size(1), 100)
  lu.assertTrue(lps.allclose(gy.xt, lps.data.domain(xt:rows(1, 100), "rot90"), 0, 0))
  -- the same images from a list of that task alone
  local alone = lps.zoo.task_data_loader({tasks[6]}, data, {max_test = 100})(1)
  lu.assertTrue(lps.allclose(alone.x, gy.x, 0, 0) and lps.allclose(alone.xt, gy.xt, 0, 0))
  -- Fashion-MNIST: class c is label c + 1 (the fake data draws class c in rows 2c, 2c + 1)
  local fm = load(3) -- {Dress, Bag, Ankle boot}
  lu.assertEquals(fm.x:size(1), 180)
  local fx, fy = lps.data.fashion_mnist("train", data)
  local want = lps.data.select_classes(fx, fy, {4, 9, 10})
  lu.assertTrue(lps.allclose(fm.x, want, 0, 0))
  T.assert_error_contains("task_data_loader: task 1 has unknown source 'mnist'",
    lps.zoo.task_data_loader({{classes = {0, 1}, source = "mnist"}}, data), 1)
end

function TestHeteroBuild:test_build_metadata_and_models()
  local path = single_build()
  local recs, n = records(path)
  lu.assertEquals(n, 42)
  local ms <close> = lps.modelset.open(path)
  local seen, sources = {mlp = 0, cnn = 0, resnet = 0}, {}
  for i = 1, #ms do
    local m = ms:meta(i)
    seen[m.family] = seen[m.family] + 1
    sources[m.source] = (sources[m.source] or 0) + 1
    for _, k in ipairs{"task", "classes", "class_names", "source", "domain", "family", "arch", "optimizer", "lr",
                       "batch_size", "epochs", "fraction", "train_accuracy", "test_accuracy", "architecture"} do
      lu.assertNotNil(m[k], m.id .. " " .. k)
    end
    for k, c in ipairs(m.classes) do lu.assertEquals(m.class_names[k], TABLE.class_names[c]) end
    if m.optimizer == "adamw" then lu.assertNotNil(m.weight_decay, m.id) end
  end
  lu.assertEquals(seen, {mlp = 18, cnn = 18, resnet = 6})
  lu.assertEquals(sources, {fashion_mnist = 28, glyphs = 14})
  -- the record alone rebuilds the model: its stored test accuracy comes back (a ResNet in eval mode too)
  local loader = lps.zoo.task_data_loader(H.tasks(SMALL_TABLE), data, {max_test = 100})
  for _, i in ipairs{1, 2, 7, 36, 41, 42} do
    local m = ms:meta(i)
    local td = loader(m.task)
    local x = m.family ~= "mlp" and td.xt:reshape(td.xt:size(1), 1, 28, 28) or td.xt
    lu.assertAlmostEquals(lps.evaluate(ms:get(i), {x = x, y = td.yt}), m.test_accuracy, 1e-12)
  end
  lu.assertEquals(ms:meta(42).family, "resnet")
  local splits = cjson.decode(file_bytes(path .. ".splits.json"))
  local meta = {}
  for id, r in pairs(recs) do meta[id] = r.meta end
  lu.assertEquals(H.check_splits(splits, meta), {})
  lu.assertEquals(#splits.tasks, 6)
  lu.assertEquals(#splits.cross_source, 2)
  lu.assertEquals(#splits.heldout_family.query, 2)
end

function TestHeteroBuild:test_sharded_build_is_bit_identical()
  local ref = records(single_build())
  local path = dir .. "/jobs.lpsm"
  local ok, out = recipe(SMALL .. " --jobs 2 --out " .. path)
  lu.assertTrue(ok, out)
  local got, n = records(path)
  lu.assertEquals(n, 42)
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
  lu.assertStrContains(out, "14 models were already stored, built 28")
  -- the composition is printed
  lu.assertStrContains(out, "models per family: cnn 18, mlp 18, resnet 6")
  lu.assertStrContains(out, "models per source: fashion_mnist 28, glyphs 14")
  lu.assertStrContains(out, "distinct classes: 7 (fashion_mnist 5, glyphs 2)")
  local got = records(path)
  for id, r in pairs(ref) do lu.assertEquals(got[id].tensors, r.tensors, id) end
end

function TestHeteroBuild:test_bad_options_refused_without_touching_the_set()
  local path = single_build()
  local before, splits = file_bytes(path), file_bytes(path .. ".splits.json")
  for _, c in ipairs{
    {"--subsets 1,17 --out " .. path, "unknown subset '17'"},
    {"--domains identity,sepia --out " .. path, "unknown domain 'sepia'"},
    {SMALL .. " --per-task 3 --out " .. path, "--per-task must be an integer >= --pool"},
    {SMALL .. " --pool 6 --out " .. path, "--pool must be a multiple of 4"},
    {SMALL .. " --resnets=-1 --out " .. path, "--resnets must be an integer >= 0"},
    {SMALL .. " --letters-per-class 0 --out " .. path, "--letters-per-class must be an integer 1..10000"},
    {SMALL .. " --seed 3 --out " .. path, "another configuration"},
    {SMALL .. " --letters-per-class 300 --out " .. path, "another configuration"},
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
  -- tasks: {0,1} identity, {0,1} rot90, {3,8,9} identity, {3,8,9} rot90, {g,y} identity, {g,y} rot90
  lu.assertEquals(r1.overlap[1], {2, 2, 0, 0, 0, 0})
  lu.assertEquals(r1.overlap[3], {0, 0, 3, 3, 0, 0})
  lu.assertEquals(r1.overlap[5], {0, 0, 0, 0, 2, 2})
  lu.assertEquals(r1.domain_match[1], {1, 0, 1, 0, 1, 0})
  -- the domain table: three class sets, one pair of tasks each per cell
  local g = r1.gain
  lu.assertEquals(r1.domain_pairs.identity.rot90, 3)
  local dg = r1.domain_gain
  lu.assertAlmostEquals(dg.identity.rot90, (g[1][2] + g[3][4] + g[5][6]) / 3, 1e-12)
  lu.assertAlmostEquals(dg.rot90.rot90, (g[2][2] + g[4][4] + g[6][6]) / 3, 1e-12)
  -- the criterion: the smaller of staying minus moving in, for each target domain; per source too
  local into_rot90, into_identity = dg.rot90.rot90 - dg.identity.rot90, dg.identity.identity - dg.rot90.identity
  local c = r1.domain_criterion
  lu.assertAlmostEquals(c.all.smallest, math.min(into_rot90, into_identity), 1e-12)
  lu.assertEquals(c.all.at, into_rot90 < into_identity and "identity->rot90" or "rot90->identity")
  lu.assertEquals(c.all.pass, c.all.smallest >= 0.02)
  lu.assertAlmostEquals(c.glyphs.smallest, math.min(g[6][6] - g[5][6], g[5][5] - g[6][5]), 1e-12)
  lu.assertAlmostEquals(c.fashion_mnist.smallest, math.min((g[2][2] + g[4][4] - g[1][2] - g[3][4]) / 2,
    (g[1][1] + g[3][3] - g[2][1] - g[4][3]) / 2), 1e-12)
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
  -- issue 18's criterion: staying in b (rot90 0.25, identity 0.08) against moving in (0.03, 0.02)
  local c = lps.transfer_pool.domain_criterion(dg, domains)
  lu.assertAlmostEquals(c.smallest, 0.08 - 0.02, 1e-12)
  lu.assertEquals({c.at, c.margin, c.pass}, {"rot90->identity", 0.02, true})
  lu.assertFalse(lps.transfer_pool.domain_criterion(dg, domains, 0.07).pass)
  -- one source's tasks only: tasks 2 and 4 of letters
  tasks[2].source, tasks[4].source = "glyphs", "glyphs"
  local dg2, pairs2, domains2 = lps.transfer_pool.domain_gain(gain, tasks, "glyphs")
  lu.assertEquals(domains2, {"rot90", "identity"})
  lu.assertEquals(pairs2, {rot90 = {rot90 = 1}, identity = {identity = 1}})
  lu.assertEquals({dg2.rot90.rot90, dg2.identity.identity}, {0.20, 0.06})
  lu.assertNil(lps.transfer_pool.domain_criterion(dg2, domains2).smallest) -- no pair of domains to compare
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

-- The pool protocol computed the plain way: each source decoded for each
-- use, its features of the budget and of the test images recomputed for
-- every head (as before features were shared). lps.transfer_pool.columns
-- must give the same numbers bit for bit.
local function columns_by_hand(ms, tasks, targets, task_data, o)
  local TP, core, nn = lps.transfer_pool, lps.core, lps.nn
  local pool, ref, out = TP.pool_of(ms), {}, {scratch = {}, finetune = {}}
  for t = 1, #tasks do for _, e in ipairs(pool[t]) do ref[e.family] = ref[e.family] or e.arch end end
  local body = TP.features -- recomputed for every use (chunks of 64 rows as the protocol's)
  for _, t in ipairs(targets) do
    local td, k = task_data(t), #tasks[t].classes
    out.scratch[t] = {mlp = {0, 0}, cnn = {0, 0}}
    for h = 1, 2 do
      for r = 1, o.scratch_draws do
        for _, fam in ipairs{"mlp", "cnn"} do
          local _, acc, head, budget, test = TP.probe(ref[fam], t, k, h, r, td, o)
          out.scratch[t][fam][h] = out.scratch[t][fam][h] + acc / o.scratch_draws
          for s = 1, #tasks do
            for _, e in ipairs(pool[s]) do
              if r <= o.repeats and e.half == h and e.family == fam then
                local src = ms:get(e.i)
                local fx = body(src, budget.x)
                local lin = nn.linear(fx:size(2), k, core.generator(0))
                local p = lin:named_parameters()
                p[1].tensor:copy(head.weight)
                p[2].tensor:copy(head.bias)
                nn.train(lin, {x = fx, y = budget.y}, {optimizer = lps.optim.adam{lr = o.head_lr},
                  epochs = o.head_epochs, batch_size = o.batch, generator = core.generator(budget.seed), progress = false})
                local a = nn.evaluate(lin, {x = body(src, test.x), y = test.y})
                out.finetune[e.id] = out.finetune[e.id] or {}
                out.finetune[e.id][t] = (out.finetune[e.id][t] or 0) + a / o.repeats
              end
            end
          end
        end
      end
    end
  end
  return out
end

-- Features computed once per source and target and shared by its heads (and
-- the scratch models' extra draws) give the plain protocol's numbers.
function TestHeteroTransfer:test_shared_features_match_plain_protocol()
  local set = single_build()
  local ms <close> = lps.modelset.open(set)
  local tasks = cjson.decode(file_bytes(set .. ".splits.json")).tasks
  local loader = lps.zoo.task_data_loader(tasks, data)
  local o = {images = 30, head_epochs = 3, test_images = 300, repeats = 2, scratch_draws = 3}
  local r = lps.transfer_pool.columns(ms, tasks, {2, 5}, loader, o)
  for k, v in pairs(lps.transfer_pool.defaults) do if o[k] == nil then o[k] = v end end
  local want = columns_by_hand(ms, tasks, {2, 5}, loader, o)
  lu.assertEquals(r.scratch, want.scratch)
  lu.assertEquals(r.finetune, want.finetune)
  local n = 0
  for _ in pairs(r.finetune) do n = n + 1 end
  lu.assertEquals(n, 6 * 4) -- every pool model, both targets
  -- more scratch draws than fine-tune draws only; too many draws would share seeds across halves
  lu.assertErrorMsgContains("at most 30 budget draws", lps.transfer_pool.columns, ms, tasks, {2}, loader, {scratch_draws = 31})
end

TestHeteroEval = {}

-- The whole ModelSet-Hetero evaluation at a small scale: every method, the
-- controls and ablations, the saved LPS model reading MLPs and CNNs.
-- The small set with its pool transfer matrix.
local function with_transfer()
  local set = single_build()
  if not io.open(set .. ".transfer.json") then
    local ok, out = T.sh(("lua5.4 recipes/transfer_matrix.lua --quiet --images 30 --head-epochs 3 --test-images 60 "
      .. "--data %s --set %s"):format(data, set))
    lu.assertTrue(ok, out)
  end
  return set
end

function TestHeteroEval:test_pipeline_outputs()
  local set = with_transfer()
  local res = dir .. "/results"
  -- every method and ablation, the ones make run leaves out by default too
  local ok, out = T.sh(("lua5.4 recipes/eval_hetero.lua --set %s --out %s --seeds 2 --epochs 3 --probe 20 --data %s"
    .. " --methods lps,lps_hybrid,lps_hybrid_directed,raw,sorted,stats,gram,matching,cka,template_matching --ablations all")
    :format(set, res, data))
  lu.assertTrue(ok, out)
  -- a hybrid variant on request is saved beside the main model, and loads as itself
  local variant = lps.similarity.load(res .. "/lps_hybrid_directed.model")
  lu.assertTrue(variant.hybrid.probe_directed)
  lu.assertEquals(variant.hybrid.probe, 0.5)
  lu.assertStrContains(out, "| method | top1 | map | novel_map |")
  lu.assertNotStrContains(out, "gnuplot failed")
  local r = cjson.decode(file_bytes(res .. "/lps_hetero_eval.json"))
  for _, m in ipairs{"lps", "lps_hybrid", "raw", "sorted", "stats", "gram", "matching", "cka"} do
    local x = r.methods[m]
    lu.assertNotNil(x, m)
    for _, k in ipairs{"unseen_map", "novel_map", "heldout_arch_rank1", "cross_family_rank1", "cross_source_map",
                       "heldout_family_rank1", "tau_transfer", "selection_accuracy", "selection_regret"} do
      lu.assertNotNil(x[k], m .. " " .. k) -- a number, or null where the method cannot say
    end
    lu.assertTrue(x.top1 >= 0 and x.top1 <= 1, m)
  end
  lu.assertEquals(r.methods.raw.cross_family_rank1, cjson.null) -- raw weights cannot compare families
  lu.assertTrue(type(r.methods.lps.cross_family_rank1) == "number")
  -- (g): the weight-space baselines cannot read a ResNet (NaN rows, no value); the templates can
  for _, m in ipairs{"raw", "sorted", "stats", "gram", "matching", "cka"} do
    lu.assertEquals(r.methods[m].heldout_family_rank1, cjson.null, m)
  end
  for _, m in ipairs{"lps", "lps_hybrid", "template_matching"} do
    lu.assertTrue(r.methods[m].heldout_family_rank1 >= 0 and r.methods[m].heldout_family_map > 0, m)
  end
  lu.assertEquals(r.ablations.weight_units_only.heldout_family_rank1, nil) -- its weight units read no ResNet
  -- (f): the mean of both directions
  local x = r.methods.lps
  lu.assertAlmostEquals(x.cross_source_map, (x.cross_source_map_from_fashion_mnist + x.cross_source_map_from_glyphs) / 2,
    1e-9)
  lu.assertStrContains(cjson.encode(r.protocol), "ResNet queries")
  local fits = r.protocol.hybrid_fits.lps_hybrid -- w, lo, hi of every fit of lps_hybrid (2 seeds)
  lu.assertTrue(#fits >= 2 and fits[1].w >= 0 and fits[1].w <= 1 and fits[1].lo <= fits[1].hi)
  lu.assertNotNil(r.methods.lps.map_std)
  for _, k in ipairs{"shuffled_labels_map", "shuffled_labels_hybrid_map", "chance_map", "random_regret",
                     "reliability"} do
    lu.assertNotNil(r.controls[k], k)
  end
  lu.assertEquals(r.controls.template_matching_map, r.methods.template_matching.map)
  local rel = r.controls.reliability.split_half_spearman
  lu.assertAlmostEquals(r.controls.reliability.spearman_brown, 2 * rel / (1 + rel), 1e-12)
  for _, v in ipairs{"no_conv_encoder", "first_order_pooling", "no_relation_objective", "no_chain_norm",
                     "trained_on_mlps", "weight_units_only", "templates_and_units",
                     "no_template_extras", "unit_supervision", "hybrid_no_gate", "hybrid_bn_residual",
                     "hybrid_no_blur_bn"} do
    lu.assertNotNil(r.ablations[v], v)
  end
  lu.assertStrContains(file_bytes(res .. "/lps_hetero_eval.md"), "## Controls")
  -- model selection: weight methods, estimators on the budget and funnels, each with regret, tau and cost
  lu.assertStrContains(file_bytes(res .. "/lps_hetero_eval.md"), "## Model selection")
  for _, m in ipairs{"lps", "template_matching", "logme", "logme_exact", "leep", "knn", "linear_probe",
                     "lps+logme", "template_matching+logme", "lps+logme_exact", "lps_hybrid+logme"} do
    for _, k in ipairs{"selection_regret", "selection_tau", "selection_ms_per_candidate"} do
      lu.assertEquals(type(r.methods[m][k]), "number", m .. " " .. k)
    end
  end
  -- the saved model reads both families, from the store and through safetensors
  local sim = lps.similarity.load(res .. "/lps_hetero.model")
  lu.assertStrContains(tostring(sim), "hybrid with template matching") -- the saved model is lps_hybrid's
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
  -- the set holds ResNets: ranked by score (z within its kind), the similarity 1 beside it
  lu.assertNotNil(outc:match("\n%s+1%s+" .. ic .. "%s+%S+%s+%S+%s+%S+%s+1%.0000"), outc)
  okc, outc = T.sh(("scripts/lualps similarity %s %s %d %s"):format(set, res .. "/lps_hetero.model", ic, st))
  lu.assertTrue(okc, outc)
  lu.assertAlmostEquals(tonumber(outc), 1, 1e-5)
  for _, png in ipairs{"hetero_task_similarity_vs_transfer.png", "hetero_embedding_pca.png"} do
    lu.assertEquals(file_bytes(res .. "/" .. png):sub(2, 4), "PNG", png)
  end
end

-- --jobs spreads the jobs over processes: two and three parts give the same
-- figures bit for bit (every job depends only on the set and its seeds, not
-- on which process runs it or what ran before it there); only times differ.
function TestHeteroEval:test_parts_give_the_same_figures()
  local set = with_transfer()
  local function run(jobs)
    local res = ("%s/parts%d"):format(dir, jobs)
    local ok, out = T.sh(("lua5.4 recipes/eval_hetero.lua --set %s --out %s --seeds 1 --epochs 2 --probe 20 --data %s"
      .. " --methods lps,lps_hybrid,raw,template_matching --ablations no_conv_encoder,hybrid_no_gate --no-plots --jobs %d")
      :format(set, res, data, jobs))
    lu.assertTrue(ok, out)
    lu.assertNil(io.open(res .. "/.eval_hetero.part2.lua"), "part files are removed")
    return cjson.decode(file_bytes(res .. "/lps_hetero_eval.json"))
  end
  local r2, r3 = run(2), run(3)
  local function figures(t, path, out)
    for k, v in pairs(t) do
      local key = path .. "." .. tostring(k)
      if type(v) == "table" then figures(v, key, out)
      elseif not (key:find("_ms_") or key:find("seconds") or key:find("provenance")) then out[key] = v end
    end
    return out
  end
  local f2, f3 = figures({r2.methods, r2.ablations, r2.controls}, "", {}), figures({r3.methods, r3.ablations, r3.controls}, "", {})
  local n = 0
  for k, v in pairs(f2) do n = n + 1; lu.assertEquals(f3[k], v, k) end
  for k in pairs(f3) do lu.assertNotNil(f2[k], k) end
  lu.assertTrue(n > 100, "figures compared: " .. n)
  lu.assertEquals(r2.methods.lps.map, r3.methods.lps.map)
  lu.assertNotNil(r2.ablations.hybrid_no_gate)
  lu.assertNotNil(r2.controls.shuffled_labels_hybrid_map)
  -- the assignment: pinned jobs in part 1, then longest first to the least loaded part
  local parts = require "scripts.parts"
  local part, load = parts.assign({{name = "e", cost = 7, pinned = true}, {name = "a", cost = 5}, {name = "b", cost = 4},
                                   {name = "c", cost = 3}, {name = "d", cost = 3}}, 2)
  lu.assertEquals(part, {e = 1, a = 2, b = 2, c = 1, d = 2})
  lu.assertEquals(load, {10, 12})
  T.assert_error_contains("--part must be k/n", parts.parse, "3/2")
end

local code = lu.LuaUnit.run("-o", "tap")
os.execute("rm -rf '" .. dir .. "'")
os.exit(code, true)
