-- The user-facing similarity API: train from a set, embed, compare, nearest,
-- save and load; the feature head used by the learned baselines.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"

-- A small set of random MLPs (10-6-5-2) whose first layers come from one of
-- three task-specific patterns, permuted and rescaled per model.
local function synthetic_set(path)
  local ms <close> = lps.modelset.create(path, {overwrite = true})
  local g = lps.generator(5)
  local protos = {}
  for t = 1, 3 do protos[t] = lps.randn(6, 10, g) end
  for t = 1, 3 do
    for k = 1, 6 do
      local W1 = protos[t]:clone():add_(lps.randn(6, 10, g):mul_(0.1))
      local named = {
        {name = "0.weight", tensor = W1}, {name = "0.bias", tensor = lps.randn(6, g):mul_(0.1)},
        {name = "2.weight", tensor = lps.randn(5, 6, g)}, {name = "2.bias", tensor = lps.randn(5, g)},
        {name = "4.weight", tensor = lps.randn(2, 5, g)}, {name = "4.bias", tensor = lps.randn(2, g)},
      }
      ms:append_tensors(named, {id = ("t%d-m%d"):format(t, k), task = t})
    end
  end
end

TestSimilarityAPI = {}

function TestSimilarityAPI:setUp()
  self.path = T.tmpname(".lpsm")
  synthetic_set(self.path)
  self.ms = lps.modelset.open(self.path)
  local train = {}
  for t = 1, 3 do for k = 1, 4 do train[#train + 1] = ("t%d-m%d"):format(t, k) end end
  self.sim = lps.similarity.train(self.ms, train, {input_dim = 10, width = 8, embed = 8, epochs = 40,
    batch_size = 12, lr = 3e-3, progress = false})
end

function TestSimilarityAPI:tearDown()
  self.ms:close()
  T.cleanup()
end

function TestSimilarityAPI:test_embed_and_similarity()
  local e = self.sim:embed(lps.similarity.weights(self.ms:tensors(1)))
  lu.assertEquals(e:shape(), {8})
  lu.assertAlmostEquals(e:norm(), 1, 1e-5)
  local same = self.sim:similarity(self.ms:tensors(5), self.ms:tensors(6)) -- task 1, held out
  lu.assertTrue(same > 0.5, "models of one task are similar: " .. same)
  local E = self.sim:embed_set(self.ms)
  lu.assertEquals(E:shape(), {18, 8})
  lu.assertTrue(lps.allclose(E[5], self.sim:embed(self.ms:tensors(5)), 1e-5, 1e-6))
  lu.assertStrContains(tostring(self.sim), "trained on 12 models of 3 tasks")
end

function TestSimilarityAPI:test_nearest_finds_the_same_task()
  -- held-out models 5 and 6 of each task: their nearest model is of the same task
  local hits = 0
  for t = 1, 3 do
    for k = 5, 6 do
      local i = (t - 1) * 6 + k
      local r = self.sim:nearest(self.ms, i, 3)
      lu.assertEquals(#r, 3)
      for _, x in ipairs(r) do lu.assertNotEquals(x.index, i) end
      lu.assertTrue(r[1].score >= r[2].score and r[2].score >= r[3].score)
      if r[1].meta.task == t then hits = hits + 1 end
    end
  end
  lu.assertTrue(hits >= 5, "nearest model of the same task for " .. hits .. " of 6")
  local shown = tostring(self.sim:nearest(self.ms, 1, 2))
  lu.assertStrContains(shown, "rank")
  lu.assertEquals(select(2, shown:gsub("\n", "")), 2) -- a header and two rows
  T.assert_error_contains("out of range 1..18", self.sim.nearest, self.sim, self.ms, 19, 3)
  T.assert_error_contains("k must be a positive integer", self.sim.nearest, self.sim, self.ms, 1, 0)
  -- a record number as a float: 1.0 is record 1, 2.5 and NaN are named
  local r1, rf = self.sim:nearest(self.ms, 1, 3), self.sim:nearest(self.ms, 1.0, 3)
  for j = 1, 3 do lu.assertEquals(rf[j].index, r1[j].index) end
  T.assert_error_contains("nearest: record 2.5 is not an integer", self.sim.nearest, self.sim, self.ms, 2.5, 3)
  T.assert_error_contains("nearest: record ", self.sim.nearest, self.sim, self.ms, 0 / 0, 3)
  -- a query that is neither a record nor a model names the operation, not the layer below
  T.assert_error_contains("nearest: expected a record number or a model, got string", self.sim.nearest, self.sim,
    self.ms, "3", 3)
  T.assert_error_contains("nearest: expected a record number or a model, got nil", self.sim.nearest, self.sim,
    self.ms, nil, 3)
  -- no set, or an embedding of the wrong size
  T.assert_error_contains("nearest: expected an open model set, got nil", self.sim.nearest, self.sim, nil, 1, 3)
  T.assert_error_contains("nearest: expected an open model set, got number", self.sim.nearest, self.sim, 3, 1, 3)
  T.assert_error_contains("nearest: the query embedding has 5 entries, the network's 8", self.sim.nearest, self.sim,
    self.ms, lps.ones(5), 3)
  -- an empty set: nothing is near (select's answer too), not a top-k error
  local empty = T.tmpname(".lpsm")
  do local out <close> = lps.modelset.create(empty, {overwrite = true}) end
  local es <close> = lps.modelset.open(empty)
  lu.assertEquals(#self.sim:nearest(es, self.ms:tensors(1), 3), 0)
end

function TestSimilarityAPI:test_save_and_load_round_trip()
  local p = T.tmpname(".lps")
  self.sim:save(p)
  local s2 = lps.similarity.load(p)
  local m = self.ms:tensors(7)
  lu.assertEquals(s2:embed(m):totable(), self.sim:embed(m):totable()) -- bit-exact
  -- a model set that is not a saved similarity is refused
  T.assert_error_contains("holds 18 records", lps.similarity.load, self.path)
  -- a flipped byte is detected by the store's checksums
  local bytes = require("lualps.util").read_file(p)
  local pos = #bytes // 2
  require("lualps.util").write_file(p, bytes:sub(1, pos - 1) .. string.char((bytes:byte(pos) + 1) % 256) .. bytes:sub(pos + 1))
  local ok, err = pcall(function() return lps.similarity.load(p):embed(m) end)
  lu.assertFalse(ok)
  lu.assertStrContains(tostring(err):lower(), "checksum")
end

function TestSimilarityAPI:test_bad_input()
  T.assert_error_contains("unknown option 'epoch'", lps.similarity.train, self.ms, {"t1-m1"}, {epoch = 1})
  T.assert_error_contains("model id 'nope' is not in the set", lps.similarity.train, self.ms, {"nope"}, {})
  T.assert_error_contains("expected a model", self.sim.embed, self.sim, 42)
  -- the operation and the argument are named, not the layer below or its file position
  local function err_of(f, ...) local ok, e = pcall(f, ...); lu.assertFalse(ok); return tostring(e) end
  lu.assertEquals(err_of(self.sim.embed, self.sim, "x"):match("^[^(]*"), "embed: expected a model ")
  local m1 = self.ms:tensors(1)
  lu.assertStrMatches(err_of(self.sim.similarity, self.sim, m1, "x"),
    "similarity: argument 2: expected a model %(.*%), got string")
  lu.assertStrMatches(err_of(self.sim.similarity, self.sim, {}, m1),
    "similarity: argument 1: expected a model %(.*%), got a table without tensors")
  lu.assertStrMatches(err_of(self.sim.nearest, self.sim, self.ms, {}, 3),
    "nearest: expected a model %(.*%), got a table without tensors")
  -- a record the network cannot read (NaN weights): embed_set, nearest and
  -- the CLI name it, not only its tensor
  local bad = T.tmpname(".lpsm")
  do
    local out <close> = lps.modelset.create(bad, {overwrite = true})
    for i = 1, 3 do
      local map, names = self.ms:tensors(i)
      local named = {}
      for k, name in ipairs(names) do named[k] = {name = name, tensor = map[name]} end
      if i == 2 then named[1].tensor = named[1].tensor:clone():fill_(0 / 0) end
      out:append_tensors(named, {id = "b" .. i, task = 1})
    end
  end
  T.assert_error_contains("embed_set: record 2 (id b2): chain_normalize: weight 1 has a non-finite entry",
    self.sim.embed_set, self.sim, bad)
  local bs <close> = lps.modelset.open(bad)
  T.assert_error_contains("embed_set: record 2 (id b2)", self.sim.nearest, self.sim, bs, 1, 2)
end

-- Something else than a model set where one is expected: errors naming the
-- operation, at the caller's line (the Lua API fuzzer found "attempt to
-- call a nil value (method 'meta_json')" from models.lua for a table, and
-- "attempt to get length of a number value" for a number)
TestSetArguments = {}

function TestSetArguments:test_sets_are_checked()
  local sim = lps.similarity.wrap(lps.similarity.network{input_dim = 10, width = 4, embed = 4, classes = 2}, {1, 2})
  local function err_of(f, ...)
    local args = table.pack(...)
    local ok, e = pcall(function() local r = f(table.unpack(args, 1, args.n)); return r end)
    lu.assertFalse(ok)
    lu.assertStrContains(tostring(e), "test_similarity_api.lua:") -- raised at the call
    return tostring(e)
  end
  lu.assertStrContains(err_of(sim.embed_set, sim, 3),
    "embed_set: expected a model set (lps.modelset.open) or its path, got number")
  lu.assertStrContains(err_of(sim.embed_set, sim, {}), "embed_set: expected a model set (lps.modelset.open) or its path, "
    .. "got a table that is not one")
  lu.assertStrContains(err_of(sim.set_models, sim, {}), "set_models: expected an open model set, got a table")
  -- a second argument is no label of its (the Lua API fuzzer, seed 21: a table there was concatenated)
  lu.assertStrContains(err_of(sim.set_models, sim, {}, {}), "set_models: expected an open model set, got a table")
  lu.assertStrContains(err_of(sim.set_embeddings, sim, 7), "set_embeddings: expected an open model set, got number")
  lu.assertStrContains(err_of(sim.nearest, sim, {}, 1), "nearest: expected an open model set, got a table that is not one")
  lu.assertStrContains(err_of(lps.similarity.record, {}, 1), "similarity.record: expected an open model set")
  lu.assertStrContains(err_of(lps.similarity.train, 5, {1}), "similarity.train: expected a model set")
  lu.assertStrContains(err_of(lps.similarity.train, "x.lpsm", {1}, "fast"), "similarity.train: opts must be a table")
  local path = T.tmpname(".lpsm")
  do
    local ms <close> = lps.modelset.create(path)
    ms:append(lps.nn.mlp{10, 3, 2}, {id = "a", task = 1})
  end
  lu.assertStrContains(err_of(sim.embed_set, sim, path, {batch = 0}), "embed_set: batch must be a positive integer, got 0")
  lu.assertEquals(sim:embed_set(path, {batch = 1}):shape(), {1, 4})
  T.cleanup()
end

-- wrap, hybrid_state, hybrid.new, a network's embed and a feature head's
-- forward given the wrong kinds of values: errors naming them (the Lua API
-- fuzzer found "attempt to index a number value (local 'state')" from
-- hybrid.lua, "attempt to index a nil value (local 'par')" from
-- similarity/init.lua, "attempt to get length" from base.lua and head.lua)
function TestSetArguments:test_wrap_and_networks_check_their_arguments()
  local S = lps.similarity
  local net = S.network{input_dim = 10, width = 4, embed = 4, classes = 2}
  T.assert_error_contains("similarity.wrap: expected a network (lps.similarity.network), got number", S.wrap, 3, {1})
  T.assert_error_contains("similarity.wrap: classes must be a list, got string", S.wrap, net, "ab")
  T.assert_error_contains("similarity.wrap: the hybrid state must be a table, got number", S.wrap, net, {1, 2}, 5)
  T.assert_error_contains("similarity.hybrid_state: expected the hybrid metadata (a table), the prototypes and (w, lo, hi), "
    .. "got table, a tensor and nil", S.hybrid_state, {}, lps.zeros(2, 4))
  T.assert_error_contains("hybrid: expected a network", S.hybrid.new, "net", {})
  T.assert_error_contains("hybrid: state must be a table, got number", S.hybrid.new, net, 1)
  T.assert_error_contains("hybrid: embed must be a function", S.hybrid.new, net, {}, 3)
  T.assert_error_contains("hybrid: state.w must be a number", S.hybrid.new, net, {})
  T.assert_error_contains("similarity: embed needs a list of models, got number", net.embed, net, 3)
  T.assert_error_contains("similarity: embed's batch must be a positive integer, got 0", net.embed, net, {}, 0)
  lu.assertEquals(net:embed({}):shape(), {0, 4})
  local head = S.feature_head{in_dim = 5, embed = 3}
  T.assert_error_contains("feature head: forward needs a list of feature vectors, got number", head.forward, head, 2)
  T.assert_error_contains("prior.fit: opts must be a table, got number", S.prior.fit, {}, {}, {}, 3)
  T.assert_error_contains("prior.fit_zoo: opts must be a table, got string", S.prior.fit_zoo, {}, {}, {}, {}, nil, "x")
  T.assert_error_contains("prior: not a table", S.prior.check, 3, {})
end

-- train_network's options of the wrong kinds: errors naming them (the Lua
-- API fuzzer found a file handle as progress raising "attempt to call a
-- FILE* value (local 'progress')" from train.lua after a whole epoch)
function TestSetArguments:test_train_network_checks_its_options()
  local S = lps.similarity
  local net = S.network{input_dim = 4, width = 4, embed = 3, classes = 2}
  local g = lps.generator(1)
  local models = {T.random_mlp(g, {4, 3, 2}), T.random_mlp(g, {4, 5, 2})}
  local function bad(want, o) T.assert_error_contains("train_network: " .. want, S.train_network, net, models, {1, 2}, o) end
  bad("progress must be a boolean, a table of bar options or a function, got userdata", {progress = io.stdout})
  bad("epochs must be an integer >= 0, got x", {epochs = "x"})
  bad("batch_size must be an integer >= 1, got 0", {batch_size = 0})
  bad("per_task must be an integer >= 1, got 1.5", {per_task = 1.5})
  bad("seed must be an integer, got 2.5", {seed = 2.5})
  bad("optimizer must be an object with :step(params, grads), got number", {optimizer = 3})
  lu.assertEquals(#S.train_network(net, models, {1, 2}, {epochs = 1}).epochs, 1)
end

TestFeatureHead = {}

function TestFeatureHead:test_gradients()
  local head = lps.similarity.feature_head{in_dim = 5, embed = 3, classes = 2, seed = 3}
  local g = lps.generator(4)
  local rows = {lps.randn(5, g), lps.randn(5, g), lps.randn(5, g)}
  local labels = {1, 2, 1}
  local function loss()
    local Y = head:forward(rows)
    local l = head:loss(Y, labels, {loss = "xent"})
    head.cache = nil
    return l
  end
  T.check_parameter_gradients(head, function()
    local _, dY = head:loss(head:forward(rows), labels, {loss = "xent"})
    head:backward(dY)
  end, loss, {what = "feature head "})
end

function TestFeatureHead:test_learns_separable_features()
  local g = lps.generator(8)
  local rows, labels = {}, {}
  for i = 1, 40 do
    local y = i % 2 + 1
    rows[i] = lps.randn(6, g):add_(lps.tensor{y == 1 and 2 or -2, 0, 0, 0, 0, 0})
    labels[i] = y
  end
  local head = lps.similarity.feature_head{in_dim = 6, embed = 4, classes = 2}
  local rep = lps.similarity.train_network(head, rows, labels, {epochs = 20, batch_size = 8, loss = "xent", lr = 1e-2})
  lu.assertTrue(rep.epochs[20].accuracy > 0.9, "accuracy " .. rep.epochs[20].accuracy)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
