-- Model-set plans: the ModelSet500 task table, per-model configs, shards, splits.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local zoo = lps.zoo
local MS500 = dofile("recipes/modelset500_tasks.lua")

TestTasks = {}

function TestTasks:test_modelset500_table()
  lu.assertEquals(#MS500.tasks, 20)
  local per_class = zoo.check_tasks(MS500.tasks)
  for c = 0, 9 do lu.assertEquals(per_class[c], 4, "class " .. c) end
end

function TestTasks:test_bad_tables()
  T.assert_error_contains("same classes", zoo.check_tasks,
    {{id = 1, classes = {0, 1}}, {id = 2, classes = {1, 0}}})
  T.assert_error_contains("with itself", zoo.check_tasks, {{id = 1, classes = {3, 3}}})
  T.assert_error_contains("class 10", zoo.check_tasks, {{id = 1, classes = {0, 10}}})
  T.assert_error_contains("expected 1", zoo.check_tasks, {{id = 2, classes = {0, 1}}})
end

TestPlan = {}

function TestPlan:test_deterministic_and_complete()
  local p1 = zoo.plan{tasks = MS500.tasks}
  local p2 = zoo.plan{tasks = MS500.tasks}
  lu.assertEquals(#p1, 500)
  lu.assertEquals(p1, p2)
  local ids, sgd = {}, 0
  for _, m in ipairs(p1) do
    lu.assertNil(ids[m.id]); ids[m.id] = true
    lu.assertTrue(m.epochs >= 2 and m.epochs <= 5)
    lu.assertTrue(m.batch_size == 32 or m.batch_size == 64 or m.batch_size == 128)
    local r = m.optimizer == "sgd" and zoo.defaults.sgd.lr or zoo.defaults.adam.lr
    lu.assertTrue(m.lr >= r[1] and m.lr <= r[2])
    if m.optimizer == "sgd" then sgd = sgd + 1 end
  end
  lu.assertEquals(sgd, 20 * 13) -- 13 of each task's 25 use SGD, 12 Adam
  -- every option is known: a typo is an error, not the default in silence
  T.assert_error_contains("zoo: unknown option 'master_sed'", zoo.plan, {tasks = MS500.tasks, master_sed = 501})
  T.assert_error_contains("zoo.splits: unknown option 'unsen'", zoo.splits, {tasks = MS500.tasks}, {unsen = 3})
  local p3 = zoo.plan{tasks = MS500.tasks, master_seed = 501}
  lu.assertNotEquals(p3[1].lr, p1[1].lr)
  lu.assertNotEquals(p3[1].fingerprint, p1[1].fingerprint)
end

function TestPlan:test_fingerprint_tracks_the_task_table()
  local swapped = {}
  for i, t in ipairs(MS500.tasks) do swapped[i] = {id = i, classes = {t.classes[1], t.classes[2]}} end
  swapped[1].classes = {1, 0}
  lu.assertNotEquals(zoo.fingerprint{tasks = swapped}, zoo.fingerprint{tasks = MS500.tasks})
  lu.assertEquals(zoo.fnv1a(""), "cbf29ce484222325") -- FNV-1a 64 offset basis
  lu.assertEquals(zoo.fnv1a("a"), "af63dc4c8601ec8c") -- published test vector
end

function TestPlan:test_shards_partition_the_plan_in_order()
  local plan = zoo.plan{tasks = MS500.tasks}
  for _, n in ipairs{1, 2, 3, 7} do
    local all = {}
    for i = 1, n do
      for _, m in ipairs(zoo.shard(plan, i, n)) do all[#all + 1] = m.index end
    end
    lu.assertEquals(#all, 500)
    for k = 1, 500 do lu.assertEquals(all[k], k) end
  end
  lu.assertEquals({zoo.parse_shard("2/4")}, {2, 4})
  for _, bad in ipairs{"3/2", "0/2", "1/0", "a/b", "1", "1/2/3", "-1/2"} do
    T.assert_error_contains("bad shard spec '" .. bad .. "'", zoo.parse_shard, bad)
  end
end

TestSplits = {}

function TestSplits:test_standard_splits_are_disjoint()
  local s = zoo.splits{tasks = MS500.tasks}
  local c, r = s.classification, s.retrieval
  lu.assertEquals(#c.train, 300)
  lu.assertEquals(#c.test, 200)
  local side = {}
  for _, id in ipairs(c.train) do side[id] = "train" end
  for _, id in ipairs(c.test) do lu.assertNil(side[id], id); side[id] = "test" end
  -- every task: 15 train, 10 held out
  local per = {}
  for _, id in ipairs(c.train) do local t = id:sub(1, 3); per[t] = (per[t] or 0) + 1 end
  for t = 1, 20 do lu.assertEquals(per[string.format("t%02d", t)], 15) end

  lu.assertEquals(#r.train_tasks, 12)
  lu.assertEquals(#r.unseen_tasks, 8)
  lu.assertEquals(#r.train, 300)
  lu.assertEquals(#r.query, 40)
  lu.assertEquals(#r.gallery, 160)
  local unseen = {}
  for _, t in ipairs(r.unseen_tasks) do unseen[string.format("t%02d", t)] = true end
  for _, t in ipairs(r.train_tasks) do lu.assertNil(unseen[string.format("t%02d", t)]) end
  local where = {}
  for _, id in ipairs(r.train) do lu.assertNil(unseen[id:sub(1, 3)]); where[id] = "train" end
  for _, id in ipairs(r.query) do lu.assertTrue(unseen[id:sub(1, 3)]); lu.assertNil(where[id]); where[id] = "q" end
  for _, id in ipairs(r.gallery) do lu.assertTrue(unseen[id:sub(1, 3)]); lu.assertNil(where[id]) end
  lu.assertEquals(zoo.splits{tasks = MS500.tasks}, s) -- fixed by the master seed
end

-- The recipes' shard policy (scripts/shards.lua): the command line of a
-- shard is the program's own, interpreter and its options included.
TestShards = {}

function TestShards:test_shard_command_and_files()
  local shards = require "scripts.shards"
  local argv = {[-1] = "lua5.4", [0] = "recipes/modelset500.lua", "--jobs", "2", "--tasks=4", "--out", "b/it's.lpsm",
    "--out=x", "--jobs=3", "--quiet"}
  lu.assertEquals(shards.command(argv, 2, "b/it's.lpsm"), "'lua5.4' 'recipes/modelset500.lua' '--tasks=4' "
    .. "'--quiet' --shard {}/2 --out 'b/it'\\''s.lpsm.shard-{}-of-2'")
  lu.assertEquals(shards.command({[-3] = "/usr/bin/lua5.4", [-2] = "-e", [-1] = "x=1", [0] = "r.lua"}, 4, "o"),
    "'/usr/bin/lua5.4' '-e' 'x=1' 'r.lua' --shard {}/4 --out 'o.shard-{}-of-4'")
  lu.assertEquals(shards.paths("o.lpsm", 2), {"o.lpsm.shard-1-of-2", "o.lpsm.shard-2-of-2"})
  T.assert_error_contains("--shard and --jobs do not go together", shards.check_args, {jobs = 2, shard = "1/2", out = "x"})
  T.assert_error_contains("bad shard spec '3/2'", shards.check_args, {jobs = 1, shard = "3/2", out = "x"})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
