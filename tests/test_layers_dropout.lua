-- dropout: the identity in eval mode; in train mode zeros with probability p
-- and the rest scaled by 1/(1-p), from a generator of its own seeded when
-- the layer is built; a replay (m:backward) reuses the last mask.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn

-- x without zeros, so a zero in the output is a dropped value.
local function nonzero(g, rows, cols) return lps.rand(rows, cols, g) + 0.5 end

TestDropout = {}

function TestDropout:test_eval_is_identity()
  local g = lps.generator(1)
  local m = nn.dropout(0.4, g)
  m:eval()
  local x, gy = lps.randn(3, 5, g), lps.randn(3, 5, g)
  lu.assertTrue(lps.allclose(m:forward(x), x, 0, 0))
  lu.assertTrue(lps.allclose(m:backward(x, gy), gy, 0, 0))
  -- p = 0 in train mode too
  local m0 = nn.dropout(0)
  lu.assertTrue(lps.allclose(m0:forward(x), x, 0, 0))
end

-- Every value is either dropped or x / (1 - p) exactly; about p of them dropped.
function TestDropout:test_train_values_and_rate()
  local x = nonzero(lps.generator(2), 100, 200)
  for _, p in ipairs{0.25, 0.5, 0.9} do
    local m = nn.dropout(p, lps.generator(3))
    local y = m:forward(x)
    local fx, fy, dropped = x:reshape(-1), y:reshape(-1), 0
    local scale = 1 / (1 - p)
    for i = 1, fx:numel() do
      if fy[i] == 0 then dropped = dropped + 1
      else lu.assertAlmostEquals(fy[i], fx[i] * scale, 1e-6 * scale * 2) end
    end
    -- 20000 draws: the rate's standard deviation is below 0.0036
    lu.assertAlmostEquals(dropped / fx:numel(), p, 0.015, "dropped fraction for p = " .. p)
  end
end

-- Seeded at creation from the init generator: the same seed, the same masks;
-- each forward draws a new mask.
function TestDropout:test_seeded()
  local x = nonzero(lps.generator(4), 8, 16)
  local a, b, c = nn.dropout(0.5, lps.generator(5)), nn.dropout(0.5, lps.generator(5)), nn.dropout(0.5, lps.generator(6))
  local ya, yb, yc = a:forward(x), b:forward(x), c:forward(x)
  lu.assertTrue(lps.allclose(ya, yb, 0, 0), "same seed")
  lu.assertFalse(lps.allclose(ya, yc, 0, 0), "another seed")
  lu.assertFalse(lps.allclose(a:forward(x), ya, 0, 0), "a new mask each forward")
  -- a model built from a seed: the layers after a dropout draw their weights after its seed
  local arch = '[{"type":"linear","in":16,"out":8},{"type":"dropout","p":0.5},{"type":"linear","in":8,"out":2}]'
  local m1, m2 = nn.from_arch(arch, lps.generator(7)), nn.from_arch(arch, lps.generator(7))
  lu.assertTrue(lps.allclose(m1:forward(x), m2:forward(x), 0, 0))
end

-- m:backward replays the forward with the last mask: gx = gy * mask / (1 - p).
function TestDropout:test_replay_reuses_mask()
  local g = lps.generator(8)
  local x, gy = nonzero(g, 6, 10), lps.randn(6, 10, g)
  local m = nn.dropout(0.3, lps.generator(9))
  local y = m:forward(x)
  local gx = m:backward(x, gy)
  local fy, fg, fgx = y:reshape(-1), gy:reshape(-1), gx:reshape(-1)
  for i = 1, fy:numel() do
    lu.assertAlmostEquals(fgx[i], fy[i] == 0 and 0 or fg[i] / 0.7, 1e-6)
  end
  lu.assertTrue(lps.allclose(m:backward(x, gy), gx, 0, 0), "twice: the same mask")
  -- a replay of another shape draws the mask the next forward will draw,
  -- leaving the generator as it was
  local x2 = nonzero(g, 4, 10)
  local twin = nn.dropout(0.3, lps.generator(9))
  twin:forward(x)
  local gx2 = m:backward(x2, lps.ones(4, 10))
  local y2 = twin:forward(x2)
  local f1, f2 = gx2:reshape(-1), y2:reshape(-1)
  for i = 1, f1:numel() do lu.assertEquals(f1[i] == 0, f2[i] == 0, "value " .. i) end
  lu.assertTrue(lps.allclose(m:forward(x2), y2, 0, 0), "the generator did not move")
end

-- Finite differences in train mode need the same mask on every call: the
-- loss rebuilds the model from the same seed (its first forward draws the
-- same mask) with the parameters being perturbed.
function TestDropout:test_finite_differences()
  local arch = '[{"type":"linear","in":5,"out":6},{"type":"tanh"},{"type":"dropout","p":0.4},{"type":"linear","in":6,"out":3}]'
  local g = lps.generator(10)
  local x = lps.randn(4, 5, g)
  local R = lps.randn(4, 3, g)
  for _, mode in ipairs{"train", "eval"} do
    local m = nn.from_arch(arch, lps.generator(11))
    m:train(mode == "train")
    local function f()
      local fresh = nn.from_arch(arch, lps.generator(11)):load_named(m:state_dict())
      fresh:train(mode == "train")
      return (fresh:forward(x) * R):sum()
    end
    local function backward() m:forward(x); m:backward(x, R) end
    T.check_parameter_gradients(m, backward, f, {what = mode .. " "})
    m:zero_grad()
    local m2 = nn.from_arch(arch, lps.generator(11)):load_named(m:state_dict())
    m2:train(mode == "train")
    T.assert_grad_close(m2:backward(x, R), T.numgrad(f, x, 1e-2), 2e-2, mode .. " input")
    if mode == "train" then -- the mask matters: eval mode's gradient differs
      local gtrain = m2:backward(x, R)
      m2:eval()
      lu.assertFalse(lps.allclose(m2:backward(x, R), gtrain, 1e-3, 1e-3))
    end
  end
end

-- Training with dropout from a seed gives the same weights every run.
function TestDropout:test_train_deterministic()
  local g = lps.generator(12)
  local x, y = lps.randn(48, 6, g), {}
  for i = 1, 48 do y[i] = i % 2 + 1 end
  T.assert_train_repeatable('[{"type":"linear","in":6,"out":16},{"type":"relu"},{"type":"dropout","p":0.5},' ..
    '{"type":"linear","in":16,"out":2}]', {x = x, y = y, epochs = 2, batch_size = 8,
    optimizer = function() return lps.optim.adam{lr = 1e-2} end})
end

function TestDropout:test_arch_and_printing()
  local m = nn.sequential{nn.linear(4, 4), nn.dropout(0.2), nn.relu(), nn.dropout()}
  local list, json = m:arch()
  lu.assertEquals(list[2], {type = "dropout", p = 0.2})
  lu.assertEquals(list[4], {type = "dropout", p = 0.5}, "PyTorch's default p")
  lu.assertEquals(json, '[{"type":"linear","in":4,"out":4},{"type":"dropout","p":0.2},{"type":"relu"},{"type":"dropout","p":0.5}]')
  lu.assertEquals(select(2, nn.from_arch(json):arch()), json)
  lu.assertEquals(tostring(m[2]), "Dropout(p=0.2, inplace=False)")
  lu.assertEquals(tostring(nn.dropout(0)), "Dropout(p=0.0, inplace=False)")
  lu.assertEquals(#m[2]:named_parameters() + #m[2]:named_buffers(), 0, "no tensors")
end

-- The weight-space methods see through it (the identity in eval mode): an
-- MLP with dropout between its layers is a model for them.
function TestDropout:test_weight_space()
  local g = lps.generator(16)
  local m = nn.sequential{nn.linear(5, 4, g), nn.relu(), nn.dropout(0.5), nn.linear(4, 3, g)}
  local model = {arch = (m:arch())}
  for i, p in ipairs((m:parameters())) do model[i] = p end
  local x = lps.randn(6, 5, g)
  m:eval()
  lu.assertTrue(lps.allclose(lps.eval.forward(model, x), m:forward(x), 1e-6, 1e-6))
  local perm = lps.eval.permute(model, {{4, 3, 2, 1}})
  lu.assertTrue(lps.allclose(lps.eval.forward(perm, x), m:forward(x), 1e-5, 1e-6))
end

function TestDropout:test_errors()
  T.assert_error_contains('layer 1 (dropout): "p" is 1: it must be below 1', nn.from_arch, '[{"type":"dropout","p":1}]')
  T.assert_error_contains('dropout: "p" is 1: it must be below 1', nn.dropout, 1)
  T.assert_error_contains('"p" is -0.1, expected 0..1', nn.from_arch, '[{"type":"dropout","p":-0.1}]')
  T.assert_error_contains('unknown key "inplace" (a dropout takes p)', nn.from_arch, '[{"type":"dropout","inplace":true}]')
  T.assert_error_contains("dropout: takes 1 values, got 2", nn.dropout, 0.1, 0.2)
  local m = nn.dropout(0.5)
  T.assert_error_contains("dropout: input (3) needs a batch dimension", m.forward, m, lps.ones(3))
end

TestDropoutTorch = {}

-- PyTorch's masks are its own: eval mode agrees exactly as the identity; a
-- model with dropout and batch norm agrees in eval mode and, dropout off,
-- in train mode.
function TestDropoutTorch:test_agrees_with_pytorch()
  local g = lps.generator(15)
  local m = nn.sequential{nn.linear(6, 5, g), nn.dropout(0.3), nn.batchnorm1d(5), nn.relu(), nn.dropout(0.1),
    nn.linear(5, 2, g)}
  T.assert_torch_agrees{{name = "dropout around batch norm", model = m, x = lps.randn(4, 6, g), train = true}}
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
