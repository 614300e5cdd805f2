-- leaky_relu: x for x > 0, else slope x (PyTorch's default slope 0.01), on
-- hand-computed values, finite differences, the arch, errors, and the
-- weight-space methods seeing through it.
-- Agreement with PyTorch: tests/test_layers_torch.lua.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn
local st = lps.safetensors

TestLeakyRelu = {}

function TestLeakyRelu:test_forward_and_backward_hand_computed()
  local x = lps.tensor{{-2, -0.5, 0, 0.5, 3}}
  -- (float32 products: the expected values rounded to float32 as well)
  lu.assertEquals(nn.leaky_relu():forward(x):totable(), lps.tensor{{-2 * 0.01, -0.5 * 0.01, 0, 0.5, 3}}:totable())
  lu.assertEquals(nn.leaky_relu(0.25):forward(x):totable(), {{-0.5, -0.125, 0, 0.5, 3}})
  lu.assertEquals(nn.leaky_relu{slope = -1}:forward(x):totable(), {{2, 0.5, 0, 0.5, 3}}) -- |x|
  lu.assertEquals(nn.leaky_relu(1):forward(x):totable(), x:totable())
  -- the gradient at 0 is the slope's, as PyTorch's (x > 0 ? g : slope g)
  lu.assertEquals(nn.leaky_relu(0.25):backward(x, lps.tensor{{1, 2, 4, 8, 16}}):totable(), {{0.25, 0.5, 1, 8, 16}})
end

function TestLeakyRelu:test_gradcheck()
  local g = lps.generator(1)
  -- values away from the kink at 0 (0.05 apart, none within eps of 0)
  local x = lps.randn(4, 6, g)
  for i = 1, 4 do for j = 1, 6 do if math.abs(x[i][j]) < 0.05 then x[i][j] = 0.1 end end end
  for _, slope in ipairs{0.01, 0.2, -0.3} do
    local m, R = nn.leaky_relu(slope), lps.randn(4, 6, g)
    T.assert_grad_close(m:backward(x, R), T.numgrad(function() return (m:forward(x) * R):sum() end, x), 1e-2,
      "leaky_relu " .. slope)
  end
  local net = nn.sequential{nn.linear(4, 5, g), nn.leaky_relu(0.1), nn.linear(5, 3, g)}
  local xb, Rb = lps.randn(6, 4, g), lps.randn(6, 3, g)
  T.check_parameter_gradients(net, function() net:forward(xb); net:backward(xb, Rb) end,
    function() return (net:forward(xb) * Rb):sum() end, {eps = 1e-3})
end

function TestLeakyRelu:test_arch_round_trip()
  local g = lps.generator(2)
  local m = nn.sequential{nn.linear(3, 4, g), nn.leaky_relu(), nn.linear(4, 4, g), nn.leaky_relu(0.1),
    nn.linear(4, 2, g)}
  local list, json = m:arch()
  lu.assertEquals(list[2], {type = "leaky_relu", slope = 0.01})
  lu.assertEquals(list[4], {type = "leaky_relu", slope = 0.1})
  -- the slope is written in the shortest text that reads back as it
  lu.assertStrContains(json, '{"type":"leaky_relu","slope":0.01}')
  lu.assertStrContains(json, '{"type":"leaky_relu","slope":0.1}')
  lu.assertEquals(select(2, st.check_arch(json)), json)
  local x = lps.randn(5, 3, g)
  lu.assertEquals(nn.from_arch(json):load_named(m:state_dict()):forward(x):totable(), m:forward(x):totable())
  -- the default filled in when the key is left out
  lu.assertEquals(st.check_arch('[{"type":"leaky_relu"}]')[1], {type = "leaky_relu", slope = 0.01})
  lu.assertEquals(tostring(m[2]), "LeakyReLU(negative_slope=0.01)")
  lu.assertEquals(tostring(m[4]), "LeakyReLU(negative_slope=0.1)")
end

function TestLeakyRelu:test_errors()
  local cases = {
    {'[{"type":"leaky_relu","slope":"0.1"}]', 'layer 1 (leaky_relu): "slope" must be a number, got a string'},
    {'[{"type":"leaky_relu","slope":true}]', '"slope" must be a number, got true'},
    {'[{"type":"leaky_relu","slope":[0.1]}]', '"slope" must be a number, got an array'},
    {'[{"type":"leaky_relu","slope":1e400}]', '"slope" must be a number, got 1e400'},
    {'[{"type":"leaky_relu","negative_slope":0.1}]',
      'unknown key "negative_slope" (a leaky_relu takes slope)'},
  }
  for _, c in ipairs(cases) do T.assert_error_contains(c[2], st.check_arch, c[1]) end
  T.assert_error_contains("leaky_relu: option slope must be a number or a boolean, got a string",
    nn.leaky_relu, {slope = "x"})
  T.assert_error_contains('a leaky_relu has no field "negative_slope"', nn.leaky_relu, {negative_slope = 0.1})
  T.assert_error_contains("leaky_relu: takes 1 values, got 2", nn.leaky_relu, 0.1, 0.2)
end

function TestLeakyRelu:test_weight_space_methods_see_through_it()
  -- leaky_relu(a x) = a leaky_relu(x) for a > 0: scaling a hidden unit's
  -- weights and bias by a and its outgoing weights by 1/a keeps the function
  local g = lps.generator(3)
  local net = nn.sequential{nn.linear(5, 4, g), nn.leaky_relu(0.2), nn.linear(4, 3, g)}
  local x = lps.randn(6, 5, g)
  local m = T.assert_weight_space_reads(net, {{4, 2, 1, 3}}, x)
  local s = {arch = m.arch}
  for i, t in ipairs(m) do s[i] = t:clone() end
  for k, a in ipairs{2, 0.5, 3, 1} do
    s[1][k]:mul_(a)
    s[2]:set(k, s[2][k] * a)
    for r = 1, 3 do s[3]:set(r, k, s[3][r][k] / a) end
  end
  lu.assertTrue((lps.eval.forward(m, x) - lps.eval.forward(s, x)):abs():max() < 1e-5)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
