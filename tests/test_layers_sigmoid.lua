-- sigmoid: 1 / (1 + exp(-x)) on hand-computed values, its gradient from the
-- output, finite differences, large |x| without NaN, the arch, errors.
-- Agreement with PyTorch: tests/test_layers_torch.lua.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn
local st = lps.safetensors

TestSigmoid = {}

function TestSigmoid:test_forward_and_backward_hand_computed()
  -- sigmoid(2) = e^2 / (1 + e^2) = 0.8807970779778823; sigmoid(-x) = 1 - sigmoid(x)
  local x = lps.tensor{{-200, -2, 0, 2, 200}}
  local m = nn.sigmoid()
  local y = m:forward(x)
  local want = {0, 0.11920292202211755, 0.5, 0.8807970779778823, 1}
  for i, v in ipairs(want) do lu.assertAlmostEquals(y[1][i], v, 1e-7) end
  -- s (1 - s): 0.25 at 0, 0.10499358540350652 at +-2, 0 far out
  local gx = m:backward(x, lps.tensor{{1, 1, 2, 1, 1}})
  local gwant = {0, 0.10499358540350652, 0.5, 0.10499358540350652, 0}
  for i, v in ipairs(gwant) do lu.assertAlmostEquals(gx[1][i], v, 1e-7) end
  -- the layer and the tensor operation agree bit for bit
  local r = lps.randn(3, 7, lps.generator(1)):mul_(5)
  lu.assertTrue(lps.allclose(m:forward(r), r:sigmoid(), 0, 0))
end

function TestSigmoid:test_gradcheck()
  local x = lps.tensor{{-9, -4, -1, -1e-3, 0, 1e-3, 1, 4, 9}}
  local m, R = nn.sigmoid(), lps.randn({1, 9}, lps.generator(2))
  m:forward(x)
  T.assert_grad_close(m:backward(x, R), T.numgrad(function() return (m:forward(x) * R):sum() end, x), 1e-2,
    "sigmoid d/dinput")
  local g = lps.generator(3)
  local net = nn.sequential{nn.conv2d(2, 3, 3, {generator = g}), nn.sigmoid(), nn.flatten(), nn.linear(12, 2, g),
    nn.sigmoid()}
  local xb, Rb = lps.randn(3, 2, 4, 4, g), lps.randn(3, 2, g)
  T.check_parameter_gradients(net, function() net:forward(xb); net:backward(xb, Rb) end,
    function() return (net:forward(xb) * Rb):sum() end)
end

function TestSigmoid:test_arch_and_errors()
  local g = lps.generator(4)
  local m = nn.sequential{nn.linear(3, 2, g), nn.sigmoid()}
  local list, json = m:arch()
  lu.assertEquals(list[2], {type = "sigmoid"})
  lu.assertEquals(json, '[{"type":"linear","in":3,"out":2},{"type":"sigmoid"}]')
  local x = lps.randn(4, 3, g)
  lu.assertEquals(nn.from_arch(json):load_named(m:state_dict()):forward(x):totable(), m:forward(x):totable())
  lu.assertEquals(tostring(m[2]), "Sigmoid()")
  T.assert_error_contains('layer 2 (sigmoid): unknown key "slope" (a sigmoid takes no other key)',
    st.check_arch, '[{"type":"relu"},{"type":"sigmoid","slope":1}]')
  local w = lps.similarity.weights(nn.sequential{nn.linear(3, 4, g), nn.sigmoid(), nn.linear(4, 2, g)})
  w.arch = '[{"type":"linear","in":3,"out":4},{"type":"sigmoid"},{"type":"linear","in":4,"out":2}]'
  T.assert_error_contains("layer 2 (sigmoid) is not read by the weight-space methods", lps.eval.features, "raw", w)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
