-- The C training loop: it learns, it is reproducible, it stops on NaN, and
-- models round-trip through their arch / named_parameters / load_named.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn, optim, data = lps.nn, lps.optim, lps.data

local small = T.scale == "small"

-- Trouser (2) vs Bag (9) from the test split: an easy two-class task.
local X, Y = data.fashion_mnist("test")
local x2, y2 = data.select_classes(X, Y, {2, 9})
local xtr, ytr, xva, yva = data.split(x2, y2, 0.25, lps.generator(5))
if small then
  xtr, ytr = xtr:rows(1, 300), ytr:rows(1, 300)
end

TestTrain = {}

function TestTrain:test_learns()
  local m = nn.mlp{784, 16, 2, generator = lps.generator(1)}
  local acc0 = lps.evaluate(m, {x = xva, y = yva})
  local r = lps.train(m, {x = xtr, y = ytr}, {optimizer = optim.sgd{lr = 0.1, momentum = 0.9},
    epochs = 2, batch_size = 32, generator = lps.generator(2), progress = false,
    validation = {x = xva, y = yva}})
  lu.assertEquals(#r.epochs, 2)
  lu.assertTrue(r.epochs[2].loss < r.epochs[1].loss)
  local acc, loss = lps.evaluate(m, {x = xva, y = yva})
  lu.assertTrue(acc > 0.95, "validation accuracy " .. acc)
  lu.assertTrue(acc > acc0 + 0.2)
  lu.assertAlmostEquals(r.val_accuracy, acc, 1e-12)
  lu.assertAlmostEquals(r.epochs[2].val_loss, loss, 1e-9)
  lu.assertTrue(r.seconds > 0 and r.samples_per_second > 0)
  -- evaluate in batches gives the same answer whatever the batch size
  local acc7, loss7 = lps.evaluate(m, {x = xva, y = yva}, {batch_size = 7})
  lu.assertEquals(acc7, acc)
  lu.assertAlmostEquals(loss7, loss, 1e-6)
end

function TestTrain:test_cnn_learns()
  local g = lps.generator(3)
  local m = nn.sequential{nn.conv2d(1, 4, 5, {stride = 2, generator = g}), nn.relu(), nn.maxpool2d(2),
    nn.flatten(), nn.linear(4 * 6 * 6, 2, g)}
  local n = small and 200 or 1000
  local xi = xtr:rows(1, n):reshape(n, 1, 28, 28)
  lps.train(m, {x = xi, y = ytr:rows(1, n)}, {optimizer = optim.adam{lr = 3e-3}, epochs = 2,
    batch_size = 50, generator = g, progress = false})
  local acc = lps.evaluate(m, {x = xva:reshape(xva:size(1), 1, 28, 28), y = yva})
  lu.assertTrue(acc > 0.9, "cnn validation accuracy " .. acc)
end

local function weights(m)
  local out = {}
  for i, p in ipairs((m:parameters())) do out[i] = p:clone() end
  return out
end

local function run(seed, threads)
  if threads then lps.set_num_threads(threads) end
  local m = nn.mlp{784, 8, 8, 2, generator = lps.generator(seed)}
  lps.train(m, {x = xtr, y = ytr}, {optimizer = optim.adam{lr = 1e-2}, epochs = 2, batch_size = 16,
    generator = lps.generator(seed + 1), progress = false})
  return weights(m)
end

-- The guarantee (README, "What is guaranteed"): the same code, seed,
-- thread count and OpenBLAS kernel (lps.build_info().blas_kernel) give the
-- same bits. Across kernels (processors) only the last bits of products may
-- differ; that is not checked here, where there is one kernel.
function TestTrain:test_same_seed_bit_identical()
  local threads = lps.get_num_threads()
  for _, nt in ipairs{1, 2} do
    local a, b = run(11, nt), run(11, nt)
    for i = 1, #a do lu.assertTrue(lps.allclose(a[i], b[i], 0, 0), "parameter " .. i .. " differs") end
  end
  lps.set_num_threads(threads)
  -- and the comparison can fail: another seed gives other weights
  local a, c = run(11), run(12)
  lu.assertFalse(lps.allclose(a[1], c[1], 0, 0))
end

function TestTrain:test_cnn_same_seed_bit_identical()
  -- every conv kernel (direct, Winograd, im2col), pooling and the batch split
  -- over threads: the same seed and thread count give the same weights
  local function cnn_run(seed, threads)
    lps.set_num_threads(threads)
    local g = lps.generator(seed)
    local m = nn.sequential{nn.conv2d(1, 8, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2),
      nn.conv2d(8, 16, 3, {padding = 1, generator = g}), nn.relu(),
      nn.conv2d(16, 16, 5, {stride = 2, padding = 2, generator = g}), nn.relu(), nn.maxpool2d(2),
      nn.flatten(), nn.linear(16 * 3 * 3, 2, g)}
    local n = small and 128 or 256
    lps.train(m, {x = xtr:rows(1, n):reshape(n, 1, 28, 28), y = ytr:rows(1, n)},
      {optimizer = optim.adam{lr = 1e-2}, epochs = 1, batch_size = 64, generator = lps.generator(seed + 1),
       progress = false})
    return weights(m)
  end
  local threads = lps.get_num_threads()
  for _, nt in ipairs{1, 2} do
    local a, b = cnn_run(5, nt), cnn_run(5, nt)
    for i = 1, #a do lu.assertTrue(lps.allclose(a[i], b[i], 0, 0), nt .. " threads: parameter " .. i .. " differs") end
    lps.release_threads() -- the workers end, and start again for the next run: the same weights
    b = cnn_run(5, nt)
    for i = 1, #a do lu.assertTrue(lps.allclose(a[i], b[i], 0, 0), nt .. " threads, released: parameter " .. i) end
  end
  lps.set_num_threads(threads)
  local a, c = cnn_run(5, 1), cnn_run(6, 1)
  lu.assertFalse(lps.allclose(a[1], c[1], 0, 0))
end

function TestTrain:test_nan_loss_names_epoch_and_step()
  local x = xtr:rows(1, 100):clone()
  local y = ytr:rows(1, 100):clone()
  x:set(25, 1, 0 / 0) -- sample 25 is in batch 3 of 10 when not shuffled
  local m = nn.mlp{784, 4, 2, generator = lps.generator(1)}
  T.assert_error_contains("train: loss is NaN at epoch 1, step 3 (of 10)", lps.train, m, {x = x, y = y},
    {optimizer = optim.sgd{lr = 0.1}, batch_size = 10, shuffle = false, progress = false})
  -- the data shares memory with x: poison it between epochs from the callback
  x:set(25, 1, 0)
  m = nn.mlp{784, 4, 2, generator = lps.generator(1)}
  T.assert_error_contains("loss is NaN at epoch 2, step 3", lps.train, m, {x = x, y = y},
    {optimizer = optim.sgd{lr = 0.1}, batch_size = 10, shuffle = false, epochs = 3,
     progress = function(p) if p.done and p.epoch == 1 then x:set(25, 1, 0 / 0) end end})
  -- a diverging run: infinite or NaN, either way named
  x:set(25, 1, 0)
  T.assert_error_contains("at epoch 1, step 2 (of 10)", lps.train, nn.linear(784, 2), {x = x * 1e18, y = y},
    {optimizer = optim.sgd{lr = 1e5}, batch_size = 10, epochs = 2, progress = false})
end

function TestTrain:test_progress_callback()
  local calls, last = 0, nil
  local m = nn.mlp{784, 4, 2, generator = lps.generator(1)}
  lps.train(m, {x = xtr, y = ytr}, {optimizer = optim.sgd{lr = 0.05}, epochs = 2, batch_size = 8,
    progress_interval = 1e-9, progress = function(p) calls = calls + 1; last = p end})
  lu.assertTrue(calls > 2)
  lu.assertEquals(last.epoch, 2)
  lu.assertEquals(last.epochs, 2)
  lu.assertTrue(last.done)
  lu.assertEquals(last.step, last.steps)
  lu.assertEquals(last.samples, xtr:size(1))
  lu.assertNil(last.val_accuracy)
  lps.train(m, {x = xtr, y = ytr}, {optimizer = optim.sgd{lr = 0.05}, batch_size = 64,
    validation = {x = xva, y = yva}, progress = function(p) last = p end})
  lu.assertEquals(last.val_accuracy, (lps.evaluate(m, {x = xva, y = yva})))
  -- at most a few calls a second by default: one per epoch end on a fast run
  calls = 0
  lps.train(m, {x = xtr:rows(1, 64), y = ytr:rows(1, 64)}, {optimizer = optim.sgd{lr = 0.05},
    epochs = 3, batch_size = 8, progress = function() calls = calls + 1 end})
  lu.assertEquals(calls, 3)
  -- returning false stops; an error in the callback comes through unchanged
  T.assert_error_contains("stopped by the progress callback after epoch 1", lps.train, m,
    {x = xtr, y = ytr}, {optimizer = optim.sgd{}, epochs = 3, progress = function() return false end})
  T.assert_error_contains("boom", lps.train, m, {x = xtr, y = ytr},
    {optimizer = optim.sgd{}, epochs = 3, progress = function() error("boom") end})
  -- closing the optimizer or model from the callback cannot pull memory away
  local o = optim.sgd{}
  T.assert_error_contains("while train is using it", lps.train, m, {x = xtr, y = ytr},
    {optimizer = o, progress = function() o:close() end})
  local m2 = nn.mlp{784, 4, 2}
  lps.train(m2, {x = xtr, y = ytr}, {optimizer = optim.sgd{}, epochs = 2,
    progress = function() m2:close() end})
  T.assert_error_contains("closed", lps.evaluate, m2, {x = xtr, y = ytr})
end

local sink = T.sink

function TestTrain:test_progress_display()
  -- progress = util.progress options: the epoch bar on that stream; without
  -- a terminal one line per epoch with the epoch's loss and accuracy
  local m = nn.mlp{784, 4, 2, generator = lps.generator(1)}
  local out = sink()
  local r = lps.train(m, {x = xtr:rows(1, 64), y = ytr:rows(1, 64)}, {optimizer = optim.sgd{lr = 0.05},
    epochs = 3, batch_size = 8, progress = {stream = out, tty = false}})
  local lines = {}
  for l in out:text():gmatch("[^\n]+") do lines[#lines + 1] = l end
  lu.assertEquals(#lines, 3)
  for e = 1, 3 do
    lu.assertStrContains(lines[e], ("train: %d/3 epochs"):format(e))
    lu.assertStrContains(lines[e], ("loss %.4f  acc %.4f  "):format(r.epochs[e].loss, r.epochs[e].accuracy))
    lu.assertStrContains(lines[e], " samples/s")
  end
  -- on a terminal the bar's line is ended even when training fails
  out = sink()
  local x = xtr:rows(1, 20):clone()
  x:set(15, 1, 0 / 0)
  T.assert_error_contains("loss is NaN at epoch 1, step 2", lps.train, m, {x = x, y = ytr:rows(1, 20)},
    {optimizer = optim.sgd{lr = 0.05}, epochs = 3, batch_size = 10, shuffle = false,
     progress_interval = 1e-9, progress = {stream = out, tty = true, interval = 0, label = "fit"}})
  lu.assertStrContains(out:text(), "\r[")
  lu.assertStrContains(out:text(), "  16% fit: 0/3 epochs") -- after step 1 of 2 (1/6)
  lu.assertEquals(out:text():sub(-1), "\n")
  lu.assertNotStrContains(out:text(), "fit: 1/3")
end

function TestTrain:test_errors()
  local m = nn.mlp{784, 4, 2}
  local o = optim.sgd{}
  T.assert_error_contains("opts.optimizer is required", lps.train, m, {x = xtr, y = ytr}, {})
  T.assert_error_contains("unknown option 'epoch'", lps.train, m, {x = xtr, y = ytr}, {optimizer = o, epoch = 2})
  T.assert_error_contains("train: labels entry 1 is 3, not a class number 1..2", lps.train, m,
    {x = xtr:rows(1, 2), y = {3, 1}}, {optimizer = o})
  T.assert_error_contains('linear(784 -> 4): "in" is 784 but its input (2x10) gives 10 features', lps.train, m,
    {x = lps.zeros(2, 10), y = {1, 1}}, {optimizer = o})
  T.assert_error_contains("batch_size must be >= 1", lps.train, m, {x = xtr, y = ytr}, {optimizer = o, batch_size = 0})
  T.assert_error_contains("data.y (labels) is missing", lps.train, m, {x = xtr}, {optimizer = o})
  T.assert_error_contains("3 labels for 2 samples", lps.evaluate, m, {x = xtr:rows(1, 2), y = {1, 1, 1}})
  T.assert_error_contains("the model's output should be (batch x classes)", lps.train, nn.relu(),
    {x = lps.zeros(2, 2, 2), y = {1, 1}}, {optimizer = o})
  -- an optimizer built for one model refuses another
  lps.train(m, {x = xtr:rows(1, 4), y = ytr:rows(1, 4)}, {optimizer = o, progress = false})
  T.assert_error_contains("state was built for", lps.train, nn.mlp{784, 5, 2}, {x = xtr, y = ytr}, {optimizer = o})
end

TestSpec = {}

local function cnn(g)
  return nn.sequential{nn.conv2d(1, 3, 3, {padding = 1, generator = g}), nn.relu(), nn.maxpool2d(2),
    nn.conv2d(3, 4, 3, {stride = 2, generator = g}), nn.tanh(), nn.flatten(), nn.linear(4 * 6 * 6, 5, g)}
end

function TestSpec:test_named_parameters_pytorch_layout()
  local m = nn.mlp{784, 64, 64, 2}
  local named = m:named_parameters()
  local names, shapes = {}, {}
  for i, e in ipairs(named) do names[i] = e.name; shapes[i] = e.tensor:shape() end
  lu.assertEquals(names, {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"})
  lu.assertEquals(shapes, {{64, 784}, {64}, {64, 64}, {64}, {2, 64}, {2}})
  -- shares memory with the module
  named[5].tensor:fill_(0)
  named[6].tensor:fill_(0)
  lu.assertEquals(m:forward(lps.ones(1, 784)):totable(), {{0, 0}})
  local c = cnn()
  local cn = {}
  for i, e in ipairs(c:named_parameters()) do cn[i] = e.name .. "=" .. table.concat(e.tensor:shape(), "x") end
  lu.assertEquals(cn, {"0.weight=3x1x3x3", "0.bias=3", "3.weight=4x3x3x3", "3.bias=4", "6.weight=5x144", "6.bias=5"})
  -- nested sequentials name like PyTorch's nested nn.Sequential
  local nested = nn.sequential{nn.sequential{nn.linear(2, 3), nn.relu()}, nn.linear(3, 1)}
  lu.assertEquals(nested:named_parameters()[1].name, "0.0.weight")
  lu.assertEquals(nested:named_parameters()[3].name, "1.weight")
  lu.assertEquals(nn.linear(2, 3):named_parameters()[2].name, "bias")
end

function TestSpec:test_round_trip()
  local cjson = require "cjson"
  for _, m in ipairs{nn.mlp{784, 16, 8, 2, generator = lps.generator(4)}, cnn(lps.generator(5))} do
    local arch = cjson.decode(cjson.encode((m:arch()))) -- JSON-able
    lu.assertEquals(arch, (m:arch()))
    local fresh = nn.from_arch(arch, lps.generator(99))
    lu.assertEquals(fresh:arch(), m:arch())
    lu.assertEquals(tostring(fresh), tostring(m))
    local x = arch[1].type == "conv2d" and lps.rand(3, 1, 28, 28) or lps.rand(3, 784)
    lu.assertFalse(lps.allclose(fresh:forward(x), m:forward(x), 0, 0))
    local map = {}
    for _, e in ipairs(m:named_parameters()) do map[e.name] = e.tensor end
    fresh:load_named(map)
    lu.assertTrue(lps.allclose(fresh:forward(x), m:forward(x), 0, 0))
    -- load_named copies: later changes to the source do not leak in
    map["0.bias"]:fill_(5)
    lu.assertFalse(lps.allclose(fresh:forward(x), m:forward(x), 0, 0))
    lu.assertTrue(lps.allclose(m:clone():forward(x), m:forward(x), 0, 0))
  end
  lu.assertEquals(nn.mlp{3, 2}:arch(), {{type = "linear", ["in"] = 3, out = 2}})
  lu.assertEquals(nn.conv2d(1, 2, 3, {stride = 2, padding = 1}):arch(),
    {{type = "conv2d", ["in"] = 1, out = 2, kernel = 3, stride = 2, padding = 1}})
  lu.assertEquals(nn.maxpool2d(2):arch(), {{type = "maxpool2d", kernel = 2, stride = 2}})
end

function TestSpec:test_load_named_errors()
  local m = nn.mlp{4, 3, 2}
  local map = m:state_dict()
  local function with(k, v)
    local t = {}
    for name, x in pairs(map) do t[name] = x end
    t[k] = v
    return t
  end
  local before = m:parameters()[1]:clone()
  T.assert_error_contains("parameter '2.bias' is missing", m.load_named, m, with("2.bias", nil))
  T.assert_error_contains("unexpected parameter '1.weight'", m.load_named, m, with("1.weight", lps.zeros(1)))
  T.assert_error_contains("'0.weight' has shape (4x3), expected (3x4)", m.load_named, m,
    with("0.weight", lps.zeros(4, 3)))
  T.assert_error_contains("'0.bias' is a string", m.load_named, m, with("0.bias", "x"))
  -- nothing was copied by the failed calls
  lu.assertTrue(lps.allclose(m:parameters()[1], before, 0, 0))
  T.assert_error_contains('unknown type "softmax2d"', nn.from_arch, {{type = "softmax2d"}})
  T.assert_error_contains('from_arch: layer 1 (linear): "out" is missing', nn.from_arch, {{type = "linear", ["in"] = 3}})
  -- the legacy spec of older sets converts (lps.arch.of_legacy_spec), and only that way
  lu.assertEquals(lps.arch.of_legacy_spec{type = "sequential", layers = {{type = "linear", in_features = 3,
    out_features = 2}}}, {{type = "linear", ["in"] = 3, out = 2}})
  T.assert_error_contains("needs a layers list", lps.arch.of_legacy_spec, {type = "sequential"})
  T.assert_error_contains("legacy linear spec: unknown key 'bias'", lps.arch.of_legacy_spec, {type = "linear", bias = 1})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
