-- The layer types avgpool2d, adaptive_avgpool2d, gelu, sigmoid, silu,
-- leaky_relu, conv2d/linear without bias and conv2d geometries against
-- PyTorch, in one run of scripts/torch_interop.py --check-arch (through
-- T.assert_torch_agrees): each model is rebuilt from its arch as a
-- torch.nn.Sequential (its TO_ARCH table must give the arch back), loaded
-- with strict=True, and its eval-mode outputs and every parameter after two
-- SGD steps (so the backward passes too) compared with lualps' (1e-5);
-- skipped without /usr/bin/python3 and torch. Also one model of every new
-- layer together: finite differences and training bit for bit.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local nn = lps.nn

local TOL = 1e-5

-- T.conv2d and T.linear drawing from g
local function conv(cin, cout, k, g, opts)
  local o = {generator = g}
  for key, v in pairs(opts or {}) do o[key] = v end
  return T.conv2d(cin, cout, k, o)
end
local function linear(nin, nout, g, bias) return T.linear(nin, nout, {generator = g, bias = bias}) end

-- conv2d bias=false -> leaky_relu -> avgpool2d -> conv2d -> gelu ->
-- adaptive_avgpool2d(1) -> flatten -> linear -> silu -> linear bias=false -> sigmoid
local function all_layers(g)
  return nn.sequential{conv(1, 4, 3, g, {padding = 1, bias = false}), nn.leaky_relu(0.1), nn.avgpool2d(2),
    conv(4, 6, 3, g), nn.gelu(), nn.adaptive_avgpool2d(1), nn.flatten(), linear(6, 5, g), nn.silu(),
    linear(5, 3, g, false), nn.sigmoid()}
end

-- name -> {model builder, input shape without the batch, input scale}
local MODELS = {
  avgpool2d = {function(g)
    -- 16 -conv3,p1-> 16 -pool2-> 8 -pool3,s1-> 6 -pool2,s3-> 2
    return nn.sequential{conv(2, 3, 3, g, {padding = 1}), nn.avgpool2d(2), nn.avgpool2d(3, {stride = 1}),
      nn.avgpool2d(2, {stride = 3}), nn.flatten(), linear(12, 3, g)}
  end, {2, 16, 16}},
  adaptive_avgpool2d = {function(g)
    -- 5x7 -> 3x3 (overlapping windows) -> 5x5 (more outputs than inputs) -> 1x1
    return nn.sequential{conv(1, 2, 3, g, {padding = 1}), nn.adaptive_avgpool2d(3), nn.adaptive_avgpool2d(5),
      nn.adaptive_avgpool2d(1), nn.flatten(), linear(2, 2, g)}
  end, {1, 5, 7}},
  adaptive_avgpool2d_sizes = {function(g)
    return nn.sequential{nn.adaptive_avgpool2d(4), nn.adaptive_avgpool2d(7), nn.adaptive_avgpool2d(2), nn.flatten(),
      linear(12, 2, g)}
  end, {3, 11, 9}},
  gelu = {function(g) return nn.sequential{linear(6, 16, g), nn.gelu(), linear(16, 3, g), nn.gelu()} end, {6}, 8},
  sigmoid = {function(g) return nn.sequential{linear(6, 8, g), nn.sigmoid(), linear(8, 3, g), nn.sigmoid()} end,
    {6}, 30},
  silu = {function(g)
    return nn.sequential{conv(2, 3, 3, g), nn.silu(), nn.flatten(), linear(12, 3, g), nn.silu()}
  end, {2, 4, 4}, 40},
  leaky_relu = {function(g)
    return nn.sequential{linear(5, 8, g), nn.leaky_relu(), linear(8, 8, g), nn.leaky_relu(0.2), linear(8, 3, g),
      nn.leaky_relu(-0.5)}
  end, {5}, 3},
  no_bias = {function(g)
    -- every convolution path without a bias: direct, Winograd, im2col + GEMM, 1x1
    return nn.sequential{conv(1, 4, 3, g, {padding = 1, bias = false}), nn.relu(),
      conv(4, 4, 3, g, {padding = 1, bias = false}), nn.relu(),
      conv(4, 3, 5, g, {stride = 2, padding = 2, bias = false}),
      conv(3, 2, 1, g, {bias = false}), nn.flatten(), linear(2 * 5 * 5, 4, g, false), nn.relu(), linear(4, 2, g)}
  end, {1, 10, 10}},
  conv_geometry = {function(g)
    -- padding beyond the kernel, stride beyond it, 1x1 with padding and
    -- stride, a kernel as large as the padded input:
    -- 6 -k2,s5,p3-> 3 -k3,p4 (Winograd)-> 9 -k5,s7,p6-> 3 -k1,p2-> 7 -k1,s3-> 3 -k5,p1-> 1
    return nn.sequential{conv(1, 4, 2, g, {stride = 5, padding = 3}), conv(4, 3, 3, g, {padding = 4}),
      conv(3, 2, 5, g, {stride = 7, padding = 6}), conv(2, 2, 1, g, {padding = 2}), conv(2, 3, 1, g, {stride = 3}),
      conv(3, 2, 5, g, {padding = 1}), nn.flatten(), linear(2, 2, g)}
  end, {1, 6, 6}},
  all_layers = {all_layers, {1, 12, 12}, 2},
}

TestTorchAgreement = {}

function TestTorchAgreement:test_every_model()
  local names, cases = {}, {}
  for name in pairs(MODELS) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local c = MODELS[name]
    local g = lps.generator(#name)
    local m = c[1](g)
    local x = lps.randn({5, table.unpack(c[2])}, g):mul_(c[3] or 1)
    local classes = m:forward(x):size(2)
    local y = {}
    for i = 1, 8 do y[i] = i % classes + 1 end
    cases[#cases + 1] = {name = name, model = m, x = x,
      fit = {x = lps.randn({8, table.unpack(c[2])}, g):mul_(c[3] or 1), y = y, lr = 0.1, batch_size = 4, steps = 2}}
  end
  T.assert_torch_agrees(cases, TOL)
end

TestAllLayers = {}

function TestAllLayers:test_gradcheck()
  local g = lps.generator(1)
  local m = all_layers(g)
  local x, R = lps.randn(2, 1, 6, 6, g), lps.randn(2, 3, g)
  local function f() return (m:forward(x) * R):sum() end
  local gx
  T.check_parameter_gradients(m, function() m:forward(x); gx = m:backward(x, R) end, f, {eps = 1e-3})
  T.assert_grad_close(gx, T.numgrad(f, x), 1e-2, "all layers d/dinput")
  lu.assertEquals(T.names(m:named_parameters()), {"0.weight", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight"})
end

function TestAllLayers:test_training_repeats_bit_for_bit()
  -- the same seed and thread count give the same weights, for 1 and 2 threads
  local threads = lps.get_num_threads()
  local arch = all_layers(lps.generator(3)):arch()
  local y = {}
  for i = 1, 96 do y[i] = i % 3 + 1 end
  for _, nt in ipairs{1, 2} do
    lps.set_num_threads(nt)
    T.assert_train_repeatable(arch, {x = lps.randn(96, 1, 12, 12, lps.generator(2)), y = y, epochs = 2,
      batch_size = 32, optimizer = function() return lps.optim.adam{lr = 1e-2} end})
  end
  lps.set_num_threads(threads)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
