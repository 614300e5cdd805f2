-- The LPS network learns a task similarity from weights alone: a synthetic
-- zoo where a model's task shows only in a weak direction shared by its
-- first-layer units (hidden under a stronger model-specific direction, unit
-- permutations and rescalings), trained with lps.similarity.train_network.
local lu = require "luaunit"
local lps = require "lualps"
local sim = lps.similarity

local D0, NT = 16, 4

-- Task t: first-layer rows get a random multiple of dirs[t] (in the first 4
-- input coordinates); every model also gets a stronger random direction in
-- the other 12 coordinates (nuisance). Widths vary; units are rescaled.
local function zoo(seed, per_task)
  local g = lps.generator(seed)
  local dirs = {}
  for t = 1, NT do
    dirs[t] = lps.zeros(D0)
    for k = 1, 4 do dirs[t][k] = g:normal() end
    dirs[t]:div_(dirs[t]:norm())
  end
  local function model(t)
    local h1, h2 = 6 + g:random(5), 4 + g:random(4)
    local W1 = lps.randn(h1, D0, g)
    local v = lps.zeros(D0)
    for k = 5, D0 do v[k] = g:normal() end
    v:div_(v:norm())
    for j = 1, h1 do
      W1[j]:add_(v, g:normal() * 4)
      W1[j]:add_(dirs[t], g:normal() * 3.2)
      W1[j]:mul_(math.exp(g:normal()))
    end
    return {W1, lps.randn(h1, g), lps.randn(h2, h1, g), lps.randn(h2, g), lps.randn(2, h2, g),
            lps.randn(2, g)}
  end
  local ms, labels = {}, {}
  for _ = 1, per_task do
    for t = 1, NT do
      ms[#ms + 1] = model(t)
      labels[#labels + 1] = t
    end
  end
  return ms, labels
end

-- Leave-one-out nearest neighbour (cosine) task accuracy.
local function nn_accuracy(E, labels)
  local S = lps.matmul(E, E, false, true)
  local hits = 0
  for i = 1, #labels do
    local best, arg = -math.huge, nil
    for j = 1, #labels do
      if j ~= i and S:get(i, j) > best then best, arg = S:get(i, j), j end
    end
    if labels[arg] == labels[i] then hits = hits + 1 end
  end
  return hits / #labels
end

TestLearn = {}

function TestLearn:test_synthetic_tasks_are_learned()
  -- one zoo (one set of task directions): 24 models per task to train on,
  -- 20 per task held out
  local all, all_labels = zoo(1, 44)
  local train, train_labels, test, test_labels = {}, {}, {}, {}
  for i = 1, #all do
    if i <= 24 * NT then
      train[#train + 1], train_labels[#train_labels + 1] = all[i], all_labels[i]
    else
      test[#test + 1], test_labels[#test_labels + 1] = all[i], all_labels[i]
    end
  end
  -- two layers, all units: these models have only 7 to 11 units
  local net = sim.network{input_dim = D0, width = 16, embed = 16, classes = NT, seed = 1, layers = 2,
    layer_norm = false}
  local before = nn_accuracy(net:embed(test), test_labels)
  local epochs = {}
  local report = sim.train_network(net, train, train_labels, {epochs = 40, lr = 1e-2, unit_keep = 1,
    progress = function(info) epochs[#epochs + 1] = info.epoch end})
  local after = nn_accuracy(net:embed(test), test_labels)
  print(("# nearest-neighbour task accuracy on %d held-out models: %.3f before, %.3f after training (chance 0.25)")
    :format(#test, before, after))
  lu.assertTrue(before < 0.45, "before training: " .. before)
  lu.assertTrue(after > 0.65, "after training: " .. after)
  lu.assertEquals(#epochs, 40)
  lu.assertTrue(report.epochs[40].loss < report.epochs[1].loss)
  lu.assertTrue(report.epochs[40].accuracy > 0.9)
end

function TestLearn:test_train_network_checks_its_input()
  local ms, labels = zoo(3, 2)
  local net = sim.network{input_dim = D0, width = 4, embed = 4, classes = NT}
  local ok, err = pcall(sim.train_network, net, ms, {1, 2}, {epochs = 1})
  lu.assertFalse(ok)
  lu.assertStrContains(err, "same length")
  labels[3] = 9
  ok, err = pcall(sim.train_network, net, ms, labels, {epochs = 1})
  lu.assertFalse(ok)
  lu.assertStrContains(err, "label 3 is 9")
  ok, err = pcall(sim.train_network, net, ms, labels, {epochz = 1})
  lu.assertFalse(ok)
  lu.assertStrContains(err, "unknown option 'epochz'")
  labels[3] = 3
  ok, err = pcall(sim.train_network, net, ms, labels, {schedule = "step"})
  lu.assertFalse(ok)
  lu.assertStrContains(err, "schedule must be")
end

function TestLearn:test_schedule_progress_and_stop()
  local ms, labels = zoo(5, 3)
  local net = sim.network{input_dim = D0, width = 4, embed = 4, classes = NT}
  local opt = lps.optim.adam{lr = 0.01}
  local seen = {}
  local rep = sim.train_network(net, ms, labels, {epochs = 4, lr = 0.01, schedule = "cosine",
    optimizer = opt, progress = function(info)
      seen[#seen + 1] = opt:lr()
      return info.epoch < 3 -- stop after the third epoch
    end})
  lu.assertEquals(#rep.epochs, 3)
  -- cosine annealing: lr/2 (1 + cos(pi (epoch - 1) / epochs))
  lu.assertAlmostEquals(seen[1], 0.01, 1e-9)
  lu.assertAlmostEquals(seen[2], 0.005 * (1 + math.cos(math.pi / 4)), 1e-9)
  lu.assertAlmostEquals(seen[3], 0.005, 1e-9)
  -- progress as util.progress options: the epoch bar, one line per epoch
  -- without a terminal
  local out = {}
  local stream = {write = function(_, ...) for _, x in ipairs{...} do out[#out + 1] = x end end,
    flush = function() end}
  rep = sim.train_network(net, ms, labels, {epochs = 2, progress = {stream = stream, tty = false}})
  local text = table.concat(out)
  lu.assertEquals(select(2, text:gsub("\n", "")), 2)
  lu.assertStrContains(text, ("lps: 1/2 epochs, "))
  lu.assertStrContains(text, ("  loss %.4f  acc %.4f\nlps: 2/2 epochs, "):format(rep.epochs[1].loss,
    rep.epochs[1].accuracy))
  -- a triplet-only run reports no accuracy
  rep = sim.train_network(net, ms, labels, {epochs = 1, loss = "triplet"})
  lu.assertNil(rep.epochs[1].accuracy)
  lu.assertTrue(rep.epochs[1].loss >= 0)
end

function TestLearn:test_unit_subsets()
  -- training on random subsets of the first-layer units still learns the
  -- synthetic tasks, is deterministic, and checks its option
  local all, all_labels = zoo(1, 44) -- the split of test_synthetic_tasks_are_learned
  local train, train_labels, test, test_labels = {}, {}, {}, {}
  for i = 1, #all do
    local dst, dl = i <= 24 * NT and train or test, i <= 24 * NT and train_labels or test_labels
    dst[#dst + 1], dl[#dl + 1] = all[i], all_labels[i]
  end
  local function trained(keep)
    local net = sim.network{input_dim = D0, width = 16, embed = 16, classes = NT, seed = 1, layers = 2,
      layer_norm = true}
    sim.train_network(net, train, train_labels, {epochs = 40, lr = 1e-2, unit_keep = keep})
    return net
  end
  local net = trained(0.5)
  local acc = nn_accuracy(net:embed(test), test_labels)
  print(("# with unit_keep = 0.5 and layer_norm: nearest-neighbour accuracy %.3f on %d held-out models"):format(acc, #test))
  lu.assertTrue(acc > 0.55, "after training on unit subsets: " .. acc) -- chance 0.25
  lu.assertTrue(lps.allclose(trained(0.5):embed(test), net:embed(test), 0, 0))
  -- the subsets change the training
  lu.assertFalse(lps.allclose(trained(1):embed(test), net:embed(test), 1e-3, 1e-3))
  for _, bad in ipairs{0, 1.5, "half"} do
    local ok, err = pcall(sim.train_network, net, train, train_labels, {epochs = 1, unit_keep = bad})
    lu.assertFalse(ok)
    lu.assertStrContains(err, "unit_keep must be a number in (0, 1]")
  end
end

function TestLearn:test_same_seed_same_weights()
  local ms, labels = zoo(4, 4)
  local function trained()
    local net = sim.network{input_dim = D0, width = 8, embed = 8, classes = NT, seed = 5}
    sim.train_network(net, ms, labels, {epochs = 3, batch_size = 8, seed = 9})
    return net:embed(ms)
  end
  lu.assertTrue(lps.allclose(trained(), trained(), 0, 0))
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
