-- The layer types avgpool2d, adaptive_avgpool2d, gelu, sigmoid, silu,
-- leaky_relu, conv2d/linear without bias and conv2d geometries against
-- PyTorch: each model's arch and weights are written (safetensors), one run
-- of scripts/torch_interop.py --check-arch rebuilds every one as a
-- torch.nn.Sequential (load_state_dict strict), compares its eval-mode
-- outputs with lualps' (1e-5) and checks that its TO_ARCH table gives the
-- arch back; skipped without /usr/bin/python3 and torch. Also one model of
-- every new layer together: finite differences and training bit for bit.
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

local results -- name -> max |diff| (false: no python with torch), and the run's output
local output = ""

-- Write every model and its input and output, then one run of the script.
local function run_torch(py)
  local args, by_file = {}, {}
  for name, c in pairs(MODELS) do
    local g = lps.generator(#name)
    local m = c[1](g)
    m:eval()
    local shape = c[2]
    local x = lps.randn({5, table.unpack(shape)}, g):mul_(c[3] or 1)
    local y = m:forward(x)
    local mpath, iopath = T.tmpname("." .. name .. ".safetensors"), T.tmpname(".io.safetensors")
    local _, json = m:arch({input = shape})
    lps.safetensors.write(mpath, m:named_parameters(), {["lualps.arch"] = json})
    lps.safetensors.write(iopath, {x = x, y = y})
    args[#args + 1] = ("--check-arch '%s' '%s'"):format(mpath, iopath)
    by_file[mpath:match("[^/]*$")] = name
  end
  local _, out = T.sh(py .. " scripts/torch_interop.py " .. table.concat(args, " "))
  output = out
  for file, v in out:gmatch("check_arch_max_abs_diff%(([^)]*)%)=(%S+)") do
    results[by_file[file]] = tonumber(v)
  end
  for file in out:gmatch("reverse_arch%(([^)]*)%)=[^\n]*%(arch_of gives another arch%)") do
    results[by_file[file] .. " arch"] = true
  end
end

local function torch_results()
  if results ~= nil then return results end
  local py = dofile("scripts/check_torch_interop.lua").find_python()
  if not py then
    results = false
    return results
  end
  results = {}
  local ok, err = pcall(run_torch, py)
  if not ok then output = tostring(err) end
  T.cleanup()
  return results
end

local function check(name)
  local r = torch_results()
  if not r then lu.skip("no python3 with torch (Debian python3-torch; scripts/setup.sh installs it)") end
  local d = r[name]
  if not d then lu.fail(("%s: no result from torch_interop.py:\n%s"):format(name, output)) end
  lu.assertTrue(d <= TOL, ("%s: max |diff| %.3g against PyTorch"):format(name, d))
  lu.assertNil(r[name .. " arch"], name .. ": TO_ARCH does not give lualps' arch back:\n" .. output)
end

TestTorchAgreement = {}
for name in pairs(MODELS) do
  TestTorchAgreement["test_" .. name] = function() check(name) end
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
  local names = {}
  for _, e in ipairs(m:named_parameters()) do names[#names + 1] = e.name end
  lu.assertEquals(names, {"0.weight", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight"})
end

function TestAllLayers:test_training_repeats_bit_for_bit()
  -- the same seed and thread count give the same weights, for 1 and 2 threads
  local threads = lps.get_num_threads()
  local x = lps.randn(96, 1, 12, 12, lps.generator(2))
  local y = {}
  for i = 1, 96 do y[i] = i % 3 + 1 end
  local function train(nt)
    lps.set_num_threads(nt)
    local m = all_layers(lps.generator(3))
    local report = lps.train(m, {x = x, y = y}, {optimizer = lps.optim.adam{lr = 1e-2}, epochs = 2,
      batch_size = 32, generator = lps.generator(4)})
    local bytes = {}
    for _, e in ipairs(m:named_parameters()) do
      local f = e.tensor:reshape(-1)
      for i = 1, f:numel() do bytes[#bytes + 1] = string.pack("<f", f[i]) end
    end
    return table.concat(bytes), report
  end
  for _, nt in ipairs{1, 2} do
    local a, ra = train(nt)
    local b = train(nt)
    lu.assertTrue(a == b, "two runs on " .. nt .. " threads differ")
    lu.assertTrue(ra.epochs[2].loss < ra.epochs[1].loss, "the loss goes down")
  end
  lps.set_num_threads(threads)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
