-- gelu: the exact GELU x Phi(x) (erf), against values of the normal
-- distribution function, finite differences near 0 and at large |x|, the
-- arch, errors. Agreement with PyTorch: tests/test_layers_torch.lua.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn
local st = lps.safetensors

TestGelu = {}

function TestGelu:test_forward_hand_computed()
  -- Phi(1) = 0.8413447460685429, Phi(2) = 0.9772498680518208, Phi(3) = 0.9986501019683699
  local x = lps.tensor{{-10, -3, -1, 0, 1, 2, 10}}
  local want = {-10 * 7.619853024160527e-24, -3 * (1 - 0.9986501019683699), -(1 - 0.8413447460685429), 0,
    0.8413447460685429, 2 * 0.9772498680518208, 10}
  local y = nn.gelu():forward(x)
  for i, v in ipairs(want) do lu.assertAlmostEquals(y[1][i], v, 1e-7 * math.max(1, math.abs(v))) end
  lu.assertEquals(y[1][7], 10) -- rounds to x itself
  -- any shape, a batch of scalars too
  lu.assertEquals(nn.gelu():forward(lps.tensor{0, 1}):shape(), {2})
  lu.assertEquals(nn.gelu():forward(lps.zeros(2, 3, 4, 5)):shape(), {2, 3, 4, 5})
end

function TestGelu:test_backward_hand_computed()
  -- d/dx = Phi(x) + x phi(x); phi(1) = 0.24197072451914337
  local x = lps.tensor{{-1, 0, 1, 30, -30}}
  local gx = nn.gelu():backward(x, lps.tensor{{1, 2, 1, 1, 1}})
  local want = {0.15865525393145707 - 0.24197072451914337, 2 * 0.5, 0.8413447460685429 + 0.24197072451914337, 1, 0}
  for i, v in ipairs(want) do lu.assertAlmostEquals(gx[1][i], v, 1e-6) end
end

function TestGelu:test_gradcheck_near_zero_and_far()
  local x = lps.tensor{{-12, -6, -3, -1, -0.3, -1e-3, 0, 1e-3, 0.3, 1, 3, 6, 12}}
  local m, R = nn.gelu(), lps.randn({1, 13}, lps.generator(1))
  T.assert_grad_close(m:backward(x, R), T.numgrad(function() return (m:forward(x) * R):sum() end, x), 1e-2,
    "gelu d/dinput")
  -- with parameters before and after it
  local g = lps.generator(2)
  local net = nn.sequential{nn.linear(4, 5, g), nn.gelu(), nn.linear(5, 3, g)}
  local xb, Rb = lps.randn(6, 4, g), lps.randn(6, 3, g)
  T.check_parameter_gradients(net, function() net:forward(xb); net:backward(xb, Rb) end,
    function() return (net:forward(xb) * Rb):sum() end)
end

function TestGelu:test_arch_and_errors()
  local g = lps.generator(3)
  local m = nn.sequential{nn.linear(3, 4, g), nn.gelu(), nn.linear(4, 2, g)}
  local list, json = m:arch()
  lu.assertEquals(list[2], {type = "gelu"})
  lu.assertEquals(json, '[{"type":"linear","in":3,"out":4},{"type":"gelu"},{"type":"linear","in":4,"out":2}]')
  local m2 = nn.from_arch(json):load_named(m:state_dict())
  local x = lps.randn(5, 3, g)
  lu.assertEquals(m2:forward(x):totable(), m:forward(x):totable())
  lu.assertEquals(tostring(m[2]), "GELU(approximate='none')")
  T.assert_error_contains('layer 1 (gelu): unknown key "approximate" (a gelu takes no other key)',
    st.check_arch, '[{"type":"gelu","approximate":"tanh"}]')
  T.assert_error_contains("gelu: takes 0 values, got 1", nn.gelu, 1)
  -- not positive-homogeneous: the weight-space methods refuse it by name
  local w = lps.similarity.weights(m)
  w.arch = list
  T.assert_error_contains("layer 2 (gelu) is not read by the weight-space methods", lps.eval.features, "sorted", w)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
