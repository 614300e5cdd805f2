-- scripts/lualps: the similarity, interop and REPL sub-commands (the store's
-- own sub-commands are covered in test_modelset.lua; with ResNet-style
-- models and a PyTorch checkpoint, and their errors, in test_resnet.lua).
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local cjson = require "cjson"

local dir = os.tmpname(); os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local SET, MODEL = dir .. "/set.lpsm", dir .. "/sim.lps"

-- Nine small MLPs (10-6-5-2) of three tasks, and an LPS model trained on them.
do
  local ms <close> = lps.modelset.create(SET)
  local g = lps.generator(11)
  for t = 1, 3 do
    local proto = lps.randn(6, 10, g)
    for k = 1, 3 do
      local m = lps.nn.mlp{10, 6, 5, 2, generator = g}
      local named = m:named_parameters()
      named[1].tensor:copy(proto:clone():add_(lps.randn(6, 10, g):mul_(0.05)))
      ms:append(m, {id = ("t%d-m%d"):format(t, k), task = t})
    end
  end
end
do
  local ms <close> = lps.modelset.open(SET)
  local sim = lps.similarity.train(ms, {1, 2, 4, 5, 7, 8}, {input_dim = 10, width = 8, embed = 8,
    epochs = 30, batch_size = 6, lr = 3e-3, progress = false})
  sim:save(MODEL)
end

local function cli(args) return T.sh("scripts/lualps " .. args) end

TestCLI = {}

function TestCLI:test_select_needs_a_prior_and_ranks_by_it()
  local ok, out = cli(("select %s %s 3 -k 2"):format(SET, MODEL))
  lu.assertNotEquals(ok, true)
  lu.assertStrContains(out, "has no transferability prior")
  -- the same network with a prior fitted on the set's models (scores: record order)
  local with = dir .. "/sim_prior.lps"
  do
    local ms <close> = lps.modelset.open(SET)
    local models, y, tasks = {}, {}, {}
    for i = 1, #ms do models[i], y[i], tasks[i] = lps.similarity.record(ms, i), i / 10, ms:meta(i).task end
    local sim = lps.similarity.load(MODEL)
    lps.similarity.wrap(sim.net, sim.classes, nil, lps.similarity.prior.fit(models, y, tasks)):save(with)
  end
  ok, out = cli(("select %s %s 3 -k 4 --json"):format(SET, with))
  lu.assertTrue(ok, out)
  local r = cjson.decode(out)
  lu.assertEquals(#r.select, 4)
  local sim = lps.similarity.load(with)
  local ms <close> = lps.modelset.open(SET)
  local want = sim:select(ms, 3, 4)
  for k, x in ipairs(r.select) do
    lu.assertEquals(x.index, want[k].index)
    lu.assertNotEquals(x.index, 3)
    lu.assertAlmostEquals(x.score, want[k].score, 1e-9)
    lu.assertAlmostEquals(x.prior, want[k].prior, 1e-9)
    lu.assertAlmostEquals(x.similarity, want[k].similarity, 1e-9)
  end
  ok, out = cli(("select %s %s 3 -k 2"):format(SET, with))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "prior")
end

function TestCLI:test_nearest_and_similarity()
  local ok, out = cli(("nearest %s %s 3 -k 2 --json"):format(SET, MODEL))
  lu.assertTrue(ok, out)
  local r = cjson.decode(out)
  lu.assertEquals(r.query.index, 3)
  lu.assertEquals(#r.nearest, 2)
  lu.assertNotEquals(r.nearest[1].index, 3)
  lu.assertTrue(r.nearest[1].score >= r.nearest[2].score)
  ok, out = cli(("nearest %s %s 3 -k 2"):format(SET, MODEL))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "query #3 t1-m3")
  ok, out = cli(("similarity %s %s 1 1 --json"):format(SET, MODEL))
  lu.assertTrue(ok, out)
  lu.assertAlmostEquals(cjson.decode(out).similarity, 1, 1e-5)
  -- the CLI agrees with the library
  ok, out = cli(("similarity %s %s 1 9"):format(SET, MODEL))
  local ms <close> = lps.modelset.open(SET)
  local sim = lps.similarity.load(MODEL)
  lu.assertAlmostEquals(tonumber(out), sim:similarity(ms:tensors(1), ms:tensors(9)), 1e-5)
end

function TestCLI:test_query_by_file()
  -- record 4 as a file: not in the set, so nothing is left out and the record
  -- itself comes first with cosine 1; the rest is record 4's own list
  local f = dir .. "/q4.safetensors"
  local ok, out = cli(("export %s 4 %s"):format(SET, f))
  lu.assertTrue(ok, out)
  ok, out = cli(("nearest %s %s 4 -k 3 --json"):format(SET, MODEL))
  lu.assertTrue(ok, out)
  local by_record = cjson.decode(out)
  ok, out = cli(("nearest %s %s %s -k 4 --json"):format(SET, MODEL, f))
  lu.assertTrue(ok, out)
  local by_file = cjson.decode(out)
  lu.assertEquals(by_file.query, {file = f, id = "t2-m1", task = 2})
  lu.assertEquals(#by_file.nearest, 4)
  lu.assertEquals(by_file.nearest[1].index, 4)
  lu.assertAlmostEquals(by_file.nearest[1].score, 1, 1e-5)
  for r = 1, 3 do
    local x, y = by_file.nearest[r + 1], by_record.nearest[r]
    lu.assertEquals({x.index, x.id, x.task}, {y.index, y.id, y.task})
    lu.assertAlmostEquals(x.score, y.score, 1e-5)
  end
  ok, out = cli(("nearest %s %s %s -k 2"):format(SET, MODEL, f))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, ("query %s t2-m1 (task 2)\n"):format(f))
  lu.assertStrContains(out, "   1      4  t2-m1")
  -- similarity: either side a file
  ok, out = cli(("similarity %s %s %s 9 --json"):format(SET, MODEL, f))
  lu.assertTrue(ok, out)
  local r = cjson.decode(out)
  lu.assertEquals({r.i, r.j}, {f, 9})
  ok, out = cli(("similarity %s %s 4 9"):format(SET, MODEL))
  lu.assertAlmostEquals(r.similarity, tonumber(out), 1e-5)
  ok, out = cli(("similarity %s %s 4 %s"):format(SET, MODEL, f))
  lu.assertAlmostEquals(tonumber(out), 1, 1e-5)
  local code
  ok, out, code = cli(("nearest %s %s %s/missing.safetensors"):format(SET, MODEL, dir))
  lu.assertEquals(code, 1, out)
  lu.assertStrContains(out, "INDEX " .. dir .. "/missing.safetensors is neither a record number 1..9 "
    .. "nor a readable .safetensors file")
  ok, out, code = cli(("similarity %s %s 1 %s"):format(SET, MODEL, SET))
  lu.assertEquals(code, 1, out)
  lu.assertStrContains(out, "lualps similarity: safetensors")
end

function TestCLI:test_embed_outputs()
  local ok, out = cli(("embed %s %s %s/e.json"):format(SET, MODEL, dir))
  lu.assertTrue(ok, out)
  local r = cjson.decode(require("lualps.util").read_file(dir .. "/e.json"))
  lu.assertEquals(#r.embeddings, 9)
  lu.assertEquals(r.embeddings[4].id, "t2-m1")
  lu.assertEquals(#r.embeddings[4].embedding, 8)
  ok, out = cli(("embed %s %s %s/e.safetensors"):format(SET, MODEL, dir))
  lu.assertTrue(ok, out)
  local named, meta = lps.safetensors.read(dir .. "/e.safetensors")
  lu.assertEquals(named.embeddings:shape(), {9, 8})
  lu.assertEquals(cjson.decode(meta.ids)[9], "t3-m3")
  lu.assertAlmostEquals(named.embeddings[4]:get(1), r.embeddings[4].embedding[1], 1e-6)
end

function TestCLI:test_query_file_task_is_typed_as_import_keeps_it()
  -- a file's task metadata reads as `import` stores it: "3" is 3, a digit
  -- string such as "0123" stays text (tonumber made it 123)
  local ms <close> = lps.modelset.open(SET)
  for _, case in ipairs{{"3", 3}, {"0123", "0123"}, {"true", "true"}, {"[1,2]", "[1,2]"}} do
    local f = dir .. "/task" .. case[1] .. ".safetensors"
    lps.export_safetensors(ms:get(1), f, {id = "x", task = case[1]})
    local ok, out = cli(("nearest %s %s %s -k 1 --json"):format(SET, MODEL, f))
    lu.assertTrue(ok, out)
    lu.assertEquals(cjson.decode(out).query.task, case[2])
    local set2 = dir .. "/typed" .. case[1] .. ".lpsm"
    ok, out = cli(("import %s %s"):format(set2, f))
    lu.assertTrue(ok, out)
    local b <close> = lps.modelset.open(set2)
    lu.assertEquals(b:meta(1).task, case[2])
  end
end

function TestCLI:test_export_import_round_trip()
  local f = dir .. "/m5.safetensors"
  local ok, out = cli(("export %s 5 %s"):format(SET, f))
  lu.assertTrue(ok, out)
  local set2 = dir .. "/imported.lpsm"
  ok, out = cli(("import %s %s --task 2"):format(set2, f))
  lu.assertTrue(ok, out)
  local a <close> = lps.modelset.open(SET)
  local b <close> = lps.modelset.open(set2)
  lu.assertEquals(#b, 1)
  lu.assertEquals(b:meta(1).task, 2)
  -- without --task the record's metadata comes back typed as export wrote it (safetensors keeps strings)
  local set3 = dir .. "/imported3.lpsm"
  ok, out = cli(("import %s %s"):format(set3, f))
  lu.assertTrue(ok, out)
  local c <close> = lps.modelset.open(set3)
  local want, got = a:meta(5), c:meta(1)
  lu.assertEquals(got.task, want.task)
  lu.assertEquals(got.id, want.id)
  for k, v in pairs(want) do
    if type(v) ~= "table" then lu.assertEquals(got[k], v, k) end
  end
  local m1, m2 = a:get(5), b:get(1)
  local x = lps.rand(4, 10, lps.generator(1))
  lu.assertEquals(m2:forward(x):totable(), m1:forward(x):totable())
end

function TestCLI:test_exit_codes_and_help()
  local ok, out, code = cli("nearest")
  lu.assertEquals(code, 2, out)
  lu.assertStrContains(out, "Usage: lualps nearest")
  ok, out, code = cli(("nearest %s %s 99"):format(SET, MODEL))
  lu.assertEquals(code, 1, out)
  lu.assertStrContains(out, "INDEX 99 is not a record number 1..9")
  ok, out, code = cli(("nearest %s %s 1"):format(SET, SET))
  lu.assertEquals(code, 1, out)
  lu.assertStrContains(out, "not one saved similarity")
  for _, sub in ipairs{"embed", "nearest", "similarity", "import", "export", "repl", "info"} do
    ok, out = cli(sub .. " --help")
    lu.assertTrue(ok, sub)
    lu.assertStrContains(out, "Usage: lualps " .. sub)
  end
end

function TestCLI:test_repl_session()
  local ok, out = T.sh(("printf 'print(#ms)\\nprint(sim:nearest(ms, 1, 1)[1].meta.task)\\n' | scripts/lualps repl %s %s")
    :format(SET, MODEL))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "lps, ms, sim loaded")
  lu.assertStrContains(out, "\n9\n")
end

local code = lu.LuaUnit.run("-o", "tap")
os.execute("rm -rf " .. dir)
os.exit(code, true)
