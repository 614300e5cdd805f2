-- Held-out zoos (scripts/heldout_zoos.lua) and their check-only digits
-- (lps.data.digits): the digits are deterministic and in no training set;
-- tiny zoos go through the whole pipeline (build, cache, PyTorch import,
-- evaluation, report); identical copies retrieve each other perfectly.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local H = dofile("scripts/heldout_zoos.lua")
local D = lps.data

local function same(a, b) return a:numel() == b:numel() and (a - b):abs():max() == 0 end

local tmpdir
local function dir()
  if not tmpdir then
    tmpdir = T.tmpname(".heldout")
    assert(os.execute("env -u LD_PRELOAD mkdir -p '" .. tmpdir .. "'"))
  end
  return tmpdir
end

TestDigits = {}

function TestDigits:test_deterministic_for_a_seed()
  local x1, y1 = D.digits("train", {per_class = 3, seed = 7})
  D.glyphs_clear_cache()
  local x2, y2 = D.digits("train", {per_class = 3, seed = 7})
  lu.assertTrue(same(x1, x2), "the same seed renders the same bits")
  lu.assertTrue(same(y1, y2))
  lu.assertEquals(x1:shape(), {30, 784})
  lu.assertTrue(x1:min() >= 0 and x1:max() <= 1)
  -- class-cyclic labels 1..10 = digits 0..9
  for k = 1, 30 do lu.assertEquals(y1[k], (k - 1) % 10 + 1) end
  lu.assertFalse(same(x1, (D.digits("train", {per_class = 3, seed = 8}))), "another seed, other images")
  lu.assertFalse(same(x1, (D.digits("test", {per_class = 3, seed = 7}))), "the test split draws apart")
  -- a subset renders the same images of its digits: 5 then 2
  local xs, ys = D.digits("train", {per_class = 3, seed = 7, classes = {5, 2}})
  lu.assertEquals(ys:totable(), {6, 3, 6, 3, 6, 3})
  for k = 0, 2 do
    lu.assertTrue(same(xs[2 * k + 1], x1[10 * k + 6]))
    lu.assertTrue(same(xs[2 * k + 2], x1[10 * k + 3]))
  end
end

function TestDigits:test_digits_have_their_shapes()
  -- mean ink over 40 random draws: "1" is a stroke, "8" two loops
  local x, y = D.digits("train", {per_class = 40, classes = {1, 8}})
  local ink = {0, 0}
  for i = 1, x:size(1) do
    local k = y[i] == 2 and 1 or 2
    ink[k] = ink[k] + x[i]:sum()
  end
  lu.assertTrue(ink[1] < 0.85 * ink[2], ("ink of 1: %.0f, of 8: %.0f"):format(ink[1], ink[2]))
  -- a digit is not a letter: "0" against "O" of the same draws differs
  lu.assertFalse(same(D.digits("train", {per_class = 1, classes = {0}}), D.glyphs("train", {per_class = 1, classes = {"O"}})))
end

function TestDigits:test_no_digit_in_any_training_source()
  lu.assertEquals(D.digit_classes, {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"})
  for _, c in ipairs(D.glyph_classes) do lu.assertNil(c:find("%d"), "glyph class " .. c) end
  for d = 0, 9 do
    T.assert_error_contains("unknown letter", D.glyphs, "train", {per_class = 1, classes = {tostring(d)}})
  end
  T.assert_error_contains("unknown letter", D.glyphs, "train", {per_class = 1, classes = {53}})
  -- the training sets' task tables: no digit class, no digits source
  local het = dofile("recipes/modelset_hetero_tasks.lua")
  lu.assertNil(het.sources.digits)
  for _, s in ipairs(het.subsets) do
    lu.assertNotEquals(s.source, "digits")
    for _, c in ipairs(s.classes) do lu.assertTrue(c < 62, "class id " .. c) end
  end
  for _, t in ipairs(dofile("recipes/modelset500_tasks.lua")) do
    for _, c in ipairs(t.classes) do lu.assertTrue(c >= 0 and c <= 9) end
  end
end

function TestDigits:test_errors()
  T.assert_error_contains("not a digit 0..9", D.digits, "train", {classes = {10}})
  T.assert_error_contains("not a digit 0..9", D.digits, "train", {classes = {"3"}})
  T.assert_error_contains("lists '4' twice", D.digits, "train", {classes = {4, 4}})
  T.assert_error_contains("split must be 'train' or 'test'", D.digits, "val")
  T.assert_error_contains("unknown option 'size'", D.digits, "train", {size = 3})
  T.assert_error_contains("per_class must be an integer", D.digits, "train", {per_class = 0})
end

TestHeldoutZoos = {}

-- The script's --scale tiny (the end-to-end test then finds its digits zoo built).
local tiny = {progress = false}
for k, v in pairs(H.scales.tiny) do tiny[k] = v end

-- A saved, untrained any-architecture LPS network (a stand-in for
-- results/lps_hetero.model).
local function model_file()
  local p = dir() .. "/random.model"
  if not io.open(p) then lps.similarity.wrap(lps.similarity.network{families = {"mlp", "cnn"}, embed = 16,
    width = 16, seed = 3}):save(p) end
  return p
end

local function tensors_of(path)
  local ms <close> = lps.modelset.open(path)
  local out = {}
  for i = 1, #ms do out[i] = {meta = ms:meta(i), w = lps.similarity.record(ms, i)} end
  return out
end

function TestHeldoutZoos:test_build_is_deterministic_and_cached()
  local p1 = H.build("digits", dir() .. "/a", tiny)
  local p2 = H.build("digits", dir() .. "/b", tiny)
  local a, b = tensors_of(p1), tensors_of(p2)
  lu.assertEquals(#a, 8) -- 2 subsets x 2 domains x 2 models
  for i = 1, #a do
    lu.assertEquals(a[i].meta.id, b[i].meta.id)
    lu.assertEquals(a[i].meta.zoo, "digits")
    lu.assertEquals(a[i].meta.source, "digits")
    lu.assertEquals(a[i].meta.family, i % 2 == 1 and "mlp" or "cnn")
    lu.assertEquals(a[i].meta.domain, ({"identity", "rot90"})[(i - 1) // 2 % 2 + 1])
    for k = 1, #a[i].w do lu.assertTrue(same(a[i].w[k], b[i].w[k]), "bit-identical builds") end
  end
  -- cached: the same call leaves the file as it is
  local before = lps.util.read_file(p1)
  lu.assertEquals(H.build("digits", dir() .. "/a", tiny), p1)
  lu.assertEquals(lps.util.read_file(p1), before)
  -- another seed, other draws
  for _, name in ipairs{"digits", "torch"} do
    local p1 = H.plan(name, {seed = 1, subsets = 1, domains = {"identity"}})
    local p2 = H.plan(name, {seed = 2, subsets = 1, domains = {"identity"}})
    lu.assertEquals(#p1, 6)
    lu.assertNotEquals(p1[1].seed, p2[1].seed)
  end
  lu.assertNotEquals(H.plan("digits", {seed = 2})[1].lr, H.plan("digits")[1].lr)
  T.assert_error_contains("unknown zoo 'mnist'", H.build, "mnist", dir())
  T.assert_error_contains("unknown option 'per_tsak'", H.build, "digits", dir(), {per_tsak = 2})
end

-- Copies of one model per task, three each: every method must retrieve a
-- model's copies first (mAP and rank-1 of 1).
function TestHeldoutZoos:test_identical_copies_retrieve_each_other()
  local src <close> = lps.modelset.open(H.build("digits", dir() .. "/a", tiny))
  local path = dir() .. "/copies.lpsm"
  local out = lps.modelset.create(path, {overwrite = true})
  for i = 1, 4 do
    local meta = src:meta(2 * i - (i % 2)) -- MLPs and CNNs of four tasks
    local model = src:get(2 * i - (i % 2))
    for copy = 1, 3 do
      out:append(model, {id = ("%s-c%d"):format(meta.id, copy), task = i, family = meta.family,
        test_accuracy = meta.test_accuracy})
    end
  end
  out:close()
  local methods = H.model_methods(lps.similarity.load(model_file()))
  methods[#methods + 1] = H.template_matching()
  local r = H.evaluate(path, methods)
  lu.assertEquals(r.models, 12)
  lu.assertEquals(r.tasks, 4)
  for _, name in ipairs{"lps", "template_matching"} do
    lu.assertAlmostEquals(r.methods[name].map, 1, 1e-12, name)
    lu.assertAlmostEquals(r.methods[name].rank1, 1, 1e-12, name)
  end
  -- query by query: every AP 1 for both, so no difference either way
  local paired = H.paired({copies = r}, {"copies"}, {"lps", "template_matching"}, "template_matching")
  local d = paired.copies.lps
  lu.assertEquals({d.delta, d.lo, d.hi, d.better, d.worse, d.ties}, {0, 0, 0, 0, 0, 12})
end

-- The script end to end at --scale tiny: the digits zoo and, with
-- /usr/bin/python3 and torch, the PyTorch zoo (trained in the background,
-- imported with the function kept); the JSON and markdown reports.
function TestHeldoutZoos:test_script_end_to_end()
  local out = dir() .. "/results"
  assert(os.execute("env -u LD_PRELOAD mkdir -p '" .. out .. "'"))
  local py = H.torch_python()
  local zoos = py and "torch,digits" or "digits"
  local rc = H.main{"--model", model_file(), "--build", dir() .. "/a", "--out", out, "--scale", "tiny",
    "--zoos", zoos, "--quiet"}
  lu.assertEquals(rc, 0)
  local j = require("cjson").decode(lps.util.read_file(out .. "/heldout_zoos.json"))
  lu.assertEquals(j.zoos.digits.models, 8)
  lu.assertEquals(j.zoos.digits.tasks, 4)
  for _, m in ipairs{"lps", "template_matching"} do
    local v = j.methods[m].digits_map
    lu.assertTrue(v > 0 and v <= 1, m .. " digits_map " .. tostring(v))
  end
  lu.assertNotNil(j.provenance.blas_kernel)
  -- the paired comparison's mean difference is the difference of the mAPs
  local d = j.paired.digits.lps
  lu.assertAlmostEquals(d.delta, j.methods.lps.digits_map - j.methods.template_matching.digits_map, 1e-9)
  lu.assertTrue(d.lo <= d.delta and d.delta <= d.hi)
  lu.assertEquals(d.better + d.worse + d.ties, 8)
  local md = lps.util.read_file(out .. "/heldout_zoos.md")
  lu.assertStrContains(md, "## Against template matching, query by query")
  lu.assertStrContains(md, "| method | ")
  lu.assertStrContains(md, "Produced by lualps")
  if not py then return end
  lu.assertEquals(j.zoos.torch.models, 8)
  for _, rec in ipairs(tensors_of(j.zoos.torch.path)) do
    lu.assertEquals(rec.meta.trainer, "pytorch")
    lu.assertTrue(math.abs(rec.meta.lualps_test_accuracy - rec.meta.test_accuracy) <= 0.005)
    if rec.meta.family == "cnn" then lu.assertEquals(rec.w.arch[1].type, "conv2d") end
  end
end

os.exit((function()
  local rc = lu.LuaUnit.run("-o", "tap")
  if tmpdir then os.execute("env -u LD_PRELOAD rm -rf '" .. tmpdir .. "'") end
  T.cleanup()
  return rc
end)(), true)
