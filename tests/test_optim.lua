-- Optimizers against hand-computed updates (torch.optim's rules), and schedules.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local optim = lps.optim

local function close(t, want, tol)
  local got = t:totable()
  for i = 1, #want do lu.assertAlmostEquals(got[i], want[i], tol or 1e-6) end
end

-- p = [1, -2], g = [0.5, 0.25]
local function setup() return lps.tensor{1, -2}, lps.tensor{0.5, 0.25} end

TestSGD = {}

function TestSGD:test_plain()
  local p, g = setup()
  local o = optim.sgd{lr = 0.1}
  o:step({p}, {g})
  close(p, {0.95, -2.025})
  o:step({p}, {g})
  close(p, {0.9, -2.05})
  lu.assertEquals(o:steps(), 2)
end

function TestSGD:test_momentum_weight_decay()
  local p, g = setup()
  local o = optim.sgd{lr = 0.1, momentum = 0.9, weight_decay = 0.1}
  -- step 1: d = g + 0.1 p = [0.6, 0.05]; buf = d; p -= 0.1 buf
  o:step({p}, {g})
  close(p, {0.94, -2.005})
  -- step 2: d = [0.594, 0.0495]; buf = 0.9 [0.6, 0.05] + d = [1.134, 0.0945]
  o:step({p}, {g})
  close(p, {0.8266, -2.01445})
end

function TestSGD:test_nesterov()
  local p, g = setup()
  local o = optim.sgd{lr = 0.1, momentum = 0.9, nesterov = true}
  -- step 1: buf = g, update g + 0.9 buf = 1.9 g; step 2: buf = 1.9 g, update 2.71 g
  o:step({p}, {g})
  close(p, {0.905, -2.0475})
  o:step({p}, {g})
  close(p, {0.7695, -2.11525})
end

function TestSGD:test_dampening()
  local p, g = setup()
  local o = optim.sgd{lr = 0.1, momentum = 0.9, dampening = 0.5}
  -- step 1: buf = g (undamped); step 2: buf = 0.9 g + 0.5 g = 1.4 g
  o:step({p}, {g})
  o:step({p}, {g})
  close(p, {1 - 0.05 - 0.07, -2 - 0.025 - 0.035})
end

function TestSGD:test_errors()
  T.assert_error_contains("nesterov needs momentum > 0", optim.sgd, {nesterov = true})
  T.assert_error_contains("unknown option 'learning_rate'", optim.sgd, {learning_rate = 1})
  T.assert_error_contains("lr >= 0", optim.sgd, {lr = -1})
  local o = optim.sgd{}
  local p, g = setup()
  o:step({p}, {g})
  T.assert_error_contains("state was built for 2", o.step, o, {lps.zeros(3)}, {lps.zeros(3)})
  T.assert_error_contains("got 2 parameters", o.step, o, {p, p}, {g, g})
  T.assert_error_contains("1 params but 0 grads", o.step, o, {p}, {})
  o:reset()
  o:step({lps.zeros(3)}, {lps.zeros(3)}) -- a reset optimizer takes new shapes
  lu.assertStrContains(tostring(o), "SGD(lr=0.01, momentum=0")
end

TestAdam = {}

-- Adam written out in doubles, as torch.optim.Adam documents it.
local function adam_ref(p, grads, lr, b1, b2, eps, wd, decoupled)
  local m, v = {}, {}
  for i = 1, #p do m[i], v[i] = 0, 0 end
  for t, g in ipairs(grads) do
    for i = 1, #p do
      local d = g[i]
      if decoupled then p[i] = p[i] * (1 - lr * wd) else d = d + wd * p[i] end
      m[i] = b1 * m[i] + (1 - b1) * d
      v[i] = b2 * v[i] + (1 - b2) * d * d
      local mhat, vhat = m[i] / (1 - b1 ^ t), v[i] / (1 - b2 ^ t)
      p[i] = p[i] - lr * mhat / (math.sqrt(vhat) + eps)
    end
  end
  return p
end

function TestAdam:test_first_steps_by_hand()
  -- bias correction makes the first steps exactly lr * sign(g) for a constant g
  local p, g = setup()
  local o = optim.adam{lr = 0.1}
  o:step({p}, {g})
  close(p, {0.9, -2.1}, 1e-5) -- float32 state: (1 - 0.9f) is not exactly 0.1
  o:step({p}, {g})
  close(p, {0.8, -2.2}, 1e-5)
end

function TestAdam:test_against_reference()
  local grads = {{0.5, 0.25, -3}, {1, 0, 0.1}, {-0.2, 0.3, 2}}
  local p = lps.tensor{1, -2, 0.5}
  local g = lps.zeros(3)
  local o = optim.adam{lr = 0.05, betas = {0.8, 0.99}, eps = 1e-6}
  for _, gi in ipairs(grads) do
    g:copy(lps.tensor(gi))
    o:step({p}, {g})
  end
  close(p, adam_ref({1, -2, 0.5}, grads, 0.05, 0.8, 0.99, 1e-6, 0, false), 1e-5)
end

function TestAdam:test_weight_decay_l2_vs_decoupled()
  -- L2 (Adam): g + wd p = [1.5, -1.75] flips the second sign
  local p, g = setup()
  optim.adam{lr = 0.1, weight_decay = 1}:step({p}, {g})
  close(p, {0.9, -1.9}, 1e-5)
  -- decoupled (AdamW): p (1 - lr wd) - lr sign(g)
  p, g = setup()
  optim.adamw{lr = 0.1, weight_decay = 0.1}:step({p}, {g})
  close(p, {0.89, -2.08}, 1e-5)
  p, g = setup()
  optim.adam{lr = 0.1, weight_decay = 0.1, decoupled = true}:step({p}, {g})
  close(p, {0.89, -2.08}, 1e-5)
  -- several AdamW steps against the reference
  local grads = {{0.5, 0.25}, {-1, 2}, {0.3, 0.3}}
  p = lps.tensor{1, -2}
  local o = optim.adamw{lr = 0.01, weight_decay = 0.05}
  for _, gi in ipairs(grads) do o:step({p}, {lps.tensor(gi)}) end
  close(p, adam_ref({1, -2}, grads, 0.01, 0.9, 0.999, 1e-8, 0.05, true), 1e-5)
end

function TestAdam:test_config_and_errors()
  local o = optim.adamw{lr = 0.002}
  local c = o:config()
  lu.assertEquals(c.kind, "adam")
  lu.assertTrue(c.decoupled)
  lu.assertAlmostEquals(c.weight_decay, 0.01, 1e-12)
  lu.assertStrContains(tostring(o), "AdamW(lr=0.002, betas=(0.9, 0.999)")
  lu.assertAlmostEquals(o:lr(0.5), 0.5, 0)
  T.assert_error_contains("betas in [0, 1)", optim.adam, {betas = {1, 0.9}})
  T.assert_error_contains("betas should be", optim.adam, {betas = 0.9})
  T.assert_error_contains("not a tensor", o.step, o, {1}, {2})
end

function TestAdam:test_with_module_parameters()
  -- the lists from m:parameters() are views: a step changes the module
  local m = lps.nn.linear(3, 2, lps.generator(1))
  local x = lps.randn(4, 3, lps.generator(2))
  local before = m:forward(x):clone()
  local p, g = m:parameters()
  m:backward(x, lps.ones(4, 2))
  optim.sgd{lr = 0.1}:step(p, g)
  lu.assertFalse(lps.allclose(m:forward(x), before, 0, 0))
  -- descending on sum(y) lowers it
  lu.assertTrue(m:forward(x):sum() < before:sum())
end

TestSchedules = {}

function TestSchedules:test_step()
  local s = optim.step_lr{step_size = 2, gamma = 0.5}
  lu.assertEquals(s:lr(1, 0), 1)
  lu.assertEquals(s:lr(1, 1.9), 1)
  lu.assertEquals(s:lr(1, 2), 0.5)
  lu.assertEquals(s:lr(0.1, 5), 0.025)
  lu.assertStrContains(tostring(s), "StepLR(step_size=2, gamma=0.5)")
end

function TestSchedules:test_cosine()
  local s = optim.cosine{t_max = 10, eta_min = 0.1}
  lu.assertAlmostEquals(s:lr(1, 0), 1, 1e-12)
  lu.assertAlmostEquals(s:lr(1, 5), 0.55, 1e-12)
  lu.assertAlmostEquals(s:lr(1, 2.5), 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 1e-12)
  lu.assertAlmostEquals(s:lr(1, 10), 0.1, 1e-12)
  lu.assertAlmostEquals(s:lr(1, 25), 0.1, 1e-12)
  T.assert_error_contains("t_max (epochs) is required", optim.cosine, {})
  T.assert_error_contains("t_max > 0", optim.cosine, {t_max = 0})
  T.assert_error_contains("step_size > 0", optim.step_lr, {step_size = 0})
end

function TestSchedules:test_applied_by_train()
  local g = lps.generator(3)
  local x = lps.randn(40, 4, g)
  local y = lps.zeros(40):add_(1)
  local m = lps.nn.linear(4, 2, g)
  local o = optim.sgd{lr = 0.2}
  local r = lps.train(m, {x = x, y = y}, {optimizer = o, epochs = 4, batch_size = 10, progress = false,
    schedule = optim.step_lr{step_size = 1, gamma = 0.5}, generator = g})
  lu.assertEquals(#r.epochs, 4)
  for e = 1, 4 do lu.assertAlmostEquals(r.epochs[e].lr, 0.2 * 0.5 ^ (e - 1), 1e-12) end
  -- the optimizer's rate is restored afterwards
  lu.assertAlmostEquals(o:lr(), 0.2, 1e-12)
  r = lps.train(m, {x = x, y = y}, {optimizer = o, epochs = 2, batch_size = 10, progress = false,
    schedule = optim.cosine{t_max = 2, per_batch = true}, generator = g})
  -- per batch: the last batch of epoch 2 is at t = 1.75 of 2
  lu.assertAlmostEquals(r.epochs[2].lr, 0.2 * (1 + math.cos(math.pi * 1.75 / 2)) / 2, 1e-12)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
