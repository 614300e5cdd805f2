-- silu: x sigmoid(x) on hand-computed values, finite differences near 0
-- and at large |x| (no NaN where exp overflows), the arch, errors.
-- Agreement with PyTorch: tests/test_layers_torch.lua.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn
local st = lps.safetensors

TestSilu = {}

function TestSilu:test_forward_and_backward_hand_computed()
  -- sigmoid(1) = 0.7310585786300049; silu(-1) = -sigmoid(-1) = -(1 - sigmoid(1))
  local s1 = 0.7310585786300049
  local x = lps.tensor{{-1000, -100, -1, 0, 1, 100}}
  local m = nn.silu()
  local y = m:forward(x)
  local want = {0, 0, -(1 - s1), 0, s1, 100}
  for i, v in ipairs(want) do lu.assertAlmostEquals(y[1][i], v, 1e-7 * math.max(1, math.abs(v))) end
  -- d/dx = s (1 + x (1 - s)): 0.5 at 0; s1 (2 - s1) at 1; (1 - s1)(1 - s1) at -1; 0 and 1 far out
  local gx = m:backward(x, lps.ones(1, 6))
  local gwant = {0, 0, (1 - s1) * (1 - s1), 0.5, s1 * (2 - s1), 1}
  for i, v in ipairs(gwant) do lu.assertAlmostEquals(gx[1][i], v, 1e-6) end
  lu.assertFalse(gx[1][1] ~= gx[1][1], "no NaN where exp(-x) overflows")
end

function TestSilu:test_gradcheck_near_zero_and_far()
  local x = lps.tensor{{-20, -8, -3, -1, -1e-3, 0, 1e-3, 1, 3, 8, 20}}
  local m, R = nn.silu(), lps.randn({1, 11}, lps.generator(1))
  T.assert_grad_close(m:backward(x, R), T.numgrad(function() return (m:forward(x) * R):sum() end, x), 1e-2,
    "silu d/dinput")
  local g = lps.generator(2)
  local net = nn.sequential{nn.linear(4, 5, g), nn.silu(), nn.linear(5, 3, g), nn.silu()}
  local xb, Rb = lps.randn(6, 4, g), lps.randn(6, 3, g)
  T.check_parameter_gradients(net, function() net:forward(xb); net:backward(xb, Rb) end,
    function() return (net:forward(xb) * Rb):sum() end)
end

function TestSilu:test_arch_and_errors()
  local g = lps.generator(3)
  local m = nn.sequential{nn.conv2d(1, 2, 3, {padding = 1, generator = g}), nn.silu(), nn.flatten(),
    nn.linear(18, 2, g)}
  local list, json = m:arch()
  lu.assertEquals(list[2], {type = "silu"})
  lu.assertStrContains(json, '{"type":"silu"},{"type":"flatten"}')
  local x = lps.randn(2, 1, 3, 3, g)
  lu.assertEquals(nn.from_arch(json):load_named(m:state_dict()):forward(x):totable(), m:forward(x):totable())
  lu.assertEquals(tostring(m[2]), "SiLU()")
  T.assert_error_contains('unknown type "swish"', st.check_arch, '[{"type":"swish"}]')
  T.assert_error_contains('layer 1 (silu): unknown key "inplace" (a silu takes no other key)',
    st.check_arch, '[{"type":"silu","inplace":false}]')
  T.assert_error_contains("silu: argument 1 is a string", nn.silu, "x")
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
