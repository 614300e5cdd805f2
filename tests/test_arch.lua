-- Architecture lists ("lualps.arch"): the C parser and shape checker, the
-- conversion to and from modules, CNNs through safetensors export/import,
-- ModelSets and the `lualps import`/`export` commands.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local st = lps.safetensors
local nn = lps.nn

local EXAMPLE = '[{"type":"input","shape":[1,28,28]},' ..
  '{"type":"conv2d","in":1,"out":8,"kernel":5,"stride":2,"padding":2},{"type":"relu"},' ..
  '{"type":"maxpool2d","kernel":2},{"type":"flatten"},{"type":"linear","in":392,"out":4}]'

-- conv(1->3, k3, stride 2, pad 1), relu, pool(k3, stride 1), conv(3->4, k2), tanh,
-- flatten, linear(16 -> 5) on 1x9x9: 9 -> 5 -> 3 -> 2, 4*2*2 = 16.
local function small_cnn(g)
  return nn.sequential{nn.conv2d(1, 3, 3, {stride = 2, padding = 1, generator = g}), nn.relu(),
    nn.maxpool2d(3, {stride = 1}), nn.conv2d(3, 4, 2, {generator = g}), nn.tanh(), nn.flatten(),
    nn.linear(16, 5, {generator = g})}
end

local function same_outputs(a, b, x)
  lu.assertEquals(a:forward(x):totable(), b:forward(x):totable())
end

TestArchParse = {}

function TestArchParse:test_shapes_and_defaults()
  local list, json, shapes = st.check_arch(EXAMPLE)
  -- (28 + 2*2 - 5) // 2 + 1 = 14; (14 - 2) // 2 + 1 = 7; 8*7*7 = 392
  lu.assertEquals(shapes, {{1, 28, 28}, {8, 14, 14}, {8, 14, 14}, {8, 7, 7}, {392}, {4}})
  lu.assertEquals(list[4], {type = "maxpool2d", kernel = 2, stride = 2}) -- stride defaults to kernel
  lu.assertEquals(list[2], {type = "conv2d", ["in"] = 1, out = 8, kernel = 5, stride = 2, padding = 2})
  lu.assertEquals(json, EXAMPLE:gsub('"kernel":2}', '"kernel":2,"stride":2}'))
  -- the canonical text parses to itself
  lu.assertEquals(select(2, st.check_arch(json)), json)
  -- conv2d defaults stride 1, padding 0; pooling with stride 1; tanh keeps the shape
  local _, j2, s2 = st.check_arch('[{"type":"input","shape":[3,9,9]},{"type":"conv2d","in":3,' ..
    '"out":4,"kernel":3,"stride":2,"padding":1},{"type":"maxpool2d","kernel":3,"stride":1},' ..
    '{"type":"conv2d","in":4,"out":2,"kernel":2},{"type":"tanh"},{"type":"flatten"},' ..
    '{"type":"linear","in":8,"out":2}]')
  -- (9+2-3)//2+1 = 5; 5-3+1 = 3; 3-2+1 = 2; 2*2*2 = 8
  lu.assertEquals(s2, {{3, 9, 9}, {4, 5, 5}, {4, 3, 3}, {2, 2, 2}, {2, 2, 2}, {8}, {2}})
  lu.assertStrContains(j2, '{"type":"conv2d","in":4,"out":2,"kernel":2,"stride":1,"padding":0}')
  -- without an input entry, only what the layers tell
  local _, _, s3 = st.check_arch(EXAMPLE:gsub('^%[{"type":"input","shape":%[1,28,28%]},', "["))
  lu.assertEquals(s3, {{8, -1, -1}, {8, -1, -1}, {8, -1, -1}, {-1}, {4}})
  local _, _, s4 = st.check_arch('[{"type":"relu"},{"type":"flatten"},{"type":"linear","in":5,"out":3}]')
  lu.assertEquals(s4, {{}, {-1}, {3}})
end

function TestArchParse:test_lua_list_equals_json()
  local list = {{type = "input", shape = {1, 28, 28}},
    {type = "conv2d", ["in"] = 1, out = 8, kernel = 5, stride = 2.0, padding = 2},
    {type = "relu"}, {type = "maxpool2d", kernel = 2}, {type = "flatten"},
    {type = "linear", ["in"] = 392, out = 4}}
  local a, ja = st.check_arch(list)
  local b, jb = st.check_arch(EXAMPLE)
  lu.assertEquals(a, b)
  lu.assertEquals(ja, jb)
end

function TestArchParse:test_errors()
  local conv = '{"type":"conv2d","in":1,"out":8,"kernel":5}'
  local cases = {
    {"[", "arch: invalid JSON at byte 1"},
    {"{}", "expected a JSON array of layers, got an object"},
    {"[]", "the list has no layers"},
    {{}, "the list has no layers"},
    {42, "expected a list of layer tables or its JSON text, got number"},
    {{{type = "relu", f = print}}, "not a list of plain tables"},
    {"[3]", "entry 1 of the list is a number, expected an object"},
    {'[{"kernel":2}]', "entry 1 has no \"type\""},
    {'[{"type":"relu","type":"relu"}]', "entry 1 has \"type\" twice"},
    {'[{"type":2}]', "entry 1: \"type\" is a number, expected a string"},
    {'[{"type":"Conv2d"}]', "unknown type \"Conv2d\" (known: input, conv2d, maxpool2d, relu, tanh, flatten, linear, " ..
      "batchnorm1d, batchnorm2d, dropout, residual"},
    {'[{"type":"relu"},{"type":"input","shape":[3]}]', "entry 2: an input entry may only come first"},
    {'[{"type":"input","shape":[3]}]', "an input entry but no layers"},
    {'[{"type":"input"},{"type":"relu"}]', "input: \"shape\" is missing"},
    {'[{"type":"input","shape":[28,28]},{"type":"relu"}]', "[features] or [channels, height, width] (no batch size), got an array of 2 sizes"},
    {'[{"type":"input","shape":[1,0,28]},{"type":"relu"}]', "input: \"height\" is 0, expected 1..1048576"},
    {'[{"type":"conv2d","in":1,"out":8}]', "layer 1 (conv2d): \"kernel\" is missing"},
    {'[{"type":"conv2d","in":1,"out":8,"kernel":5,"strides":2}]',
      "layer 1 (conv2d): unknown key \"strides\" (a conv2d takes in, out, kernel, stride, padding, bias)"},
    {'[{"type":"relu","inplace":true}]', "layer 1 (relu): unknown key \"inplace\" (a relu takes no other key)"},
    {'[{"type":"maxpool2d","kernel":2,"kernel":2}]', "layer 1 (maxpool2d): \"kernel\" appears twice"},
    {'[{"type":"conv2d","in":1,"out":8,"kernel":5,"stride":2.5}]', "\"stride\" must be an integer, got 2.5"},
    {'[{"type":"conv2d","in":1,"out":8,"kernel":5,"stride":"2"}]', "\"stride\" must be an integer, got a string"},
    {'[{"type":"conv2d","in":1,"out":8,"kernel":0}]', "\"kernel\" is 0, expected 1..1024"},
    {'[{"type":"conv2d","in":1,"out":8,"kernel":3,"padding":-1}]', "\"padding\" is -1, expected 0..1024"},
    {'[{"type":"linear","in":99999999999999999999,"out":2}]', "\"in\" is 99999999999999999999, expected 1..1073741823"},
    -- shapes that do not chain
    {'[' .. conv .. ',{"type":"conv2d","in":6,"out":2,"kernel":3}]',
      "layer 2 (conv2d): \"in\" is 6 but layer 1 (conv2d) gives 8 channels (8x?x?)"},
    {'[{"type":"linear","in":4,"out":3},' .. conv .. ']',
      "layer 2 (conv2d): needs (channels x height x width) but layer 1 (linear) gives (3) features"},
    {'[' .. conv .. ',{"type":"linear","in":8,"out":3}]',
      "layer 2 (linear): needs flat features but layer 1 (conv2d) gives (8x?x?): put a flatten before it"},
    {'[{"type":"linear","in":4,"out":3},{"type":"relu"},{"type":"linear","in":4,"out":2}]',
      "layer 3 (linear): \"in\" is 4 but layer 2 (relu) gives 3 features"},
    {'[' .. conv .. ',{"type":"flatten"},{"type":"linear","in":100,"out":2}]',
      "layer 3 (linear): \"in\" is 100, not a multiple of the 8 channels flattened before it"},
    {EXAMPLE:gsub("392", "400"),
      "layer 5 (linear): \"in\" is 400 but layer 4 (flatten) gives 392 features: (8x7x7) flattened"},
    {EXAMPLE:gsub("%[1,28,28%]", "[2,28,28]"), "layer 1 (conv2d): \"in\" is 1 but the input gives 2 channels (2x28x28)"},
    {'[{"type":"input","shape":[1,4,4]},' .. conv .. ']',
      "layer 1 (conv2d): kernel 5 is larger than its input: the input gives (1x4x4)"},
    {'[{"type":"input","shape":[1,5,5]},' .. conv .. ',{"type":"maxpool2d","kernel":2}]',
      "layer 2 (maxpool2d): kernel 2 is larger than its input: layer 1 (conv2d) gives (8x1x1)"},
    {'[{"type":"input","shape":[1,28,28]},{"type":"linear","in":784,"out":2}]',
      "layer 1 (linear): needs flat features but the input gives (1x28x28)"},
  }
  for i, c in ipairs(cases) do
    local ok, err = pcall(st.check_arch, c[1])
    lu.assertFalse(ok, "case " .. i)
    lu.assertStrContains(tostring(err), "arch: ", false, "case " .. i)
    if not tostring(err):find(c[2], 1, true) then
      lu.fail(("case %d: expected '%s' in: %s"):format(i, c[2], tostring(err)))
    end
  end
  -- padding grows sizes layer after layer (2^20 + 600*2048 = 2277376): the flattened
  -- count must not overflow
  local grow = {{type = "input", shape = {1048576, 1048576, 1048576}}}
  for i = 2, 601 do grow[i] = {type = "conv2d", ["in"] = 1048576, out = 1048576, kernel = 1, padding = 1024} end
  grow[602] = {type = "flatten"}
  T.assert_error_contains("layer 601 (flatten): (1048576x2277376x2277376) from layer 600 (conv2d) has more "
    .. "than 2^62 elements", st.check_arch, grow)
  -- 4096 layers at most
  local many = {}
  for i = 1, 4097 do many[i] = {type = "relu"} end
  T.assert_error_contains("arch: more than 4096 layers", st.check_arch, many)
  many[1] = {type = "input", shape = {3}}
  lu.assertEquals(#st.check_arch(many), 4097) -- the input entry is not a layer
  many[4098] = {type = "relu"}
  T.assert_error_contains("arch: more than 4096 layers", st.check_arch, many)
end

TestArchModules = {}

function TestArchModules:test_module_arch_and_back()
  local g = lps.generator(4)
  local m = small_cnn(g)
  local list, json = m:arch()
  lu.assertEquals(list, {
    {type = "conv2d", ["in"] = 1, out = 3, kernel = 3, stride = 2, padding = 1}, {type = "relu"},
    {type = "maxpool2d", kernel = 3, stride = 1}, {type = "conv2d", ["in"] = 3, out = 4, kernel = 2,
      stride = 1, padding = 0}, {type = "tanh"}, {type = "flatten"}, {type = "linear", ["in"] = 16, out = 5}})
  lu.assertEquals(select(2, st.check_arch(list)), json)
  lu.assertEquals(nn.from_arch(list):arch(), list)
  lu.assertEquals(select(2, nn.from_arch(json):arch()), json)
  -- with the input shape: checked
  local with_input = m:arch{input = {1, 9, 9}}
  lu.assertEquals(with_input[1], {type = "input", shape = {1, 9, 9}})
  lu.assertEquals(nn.from_arch(with_input):arch(), list) -- the input entry builds nothing
  T.assert_error_contains("arch: layer 7 (linear): \"in\" is 16 but layer 6 (flatten) gives 36 features: (4x3x3) flattened",
    m.arch, m, {input = {1, 11, 11}})
  -- the same generator draws the same weights as the constructors
  same_outputs(nn.from_arch(list, lps.generator(9)), small_cnn(lps.generator(9)), lps.randn(2, 1, 9, 9, g))
  same_outputs(nn.from_arch(list, {generator = lps.generator(9)}), small_cnn(lps.generator(9)),
    lps.randn(2, 1, 9, 9, g))
  -- MLPs, single layers, nested Sequentials
  lu.assertEquals(select(2, nn.mlp{4, 3, 2, activation = "tanh"}:arch()),
    '[{"type":"linear","in":4,"out":3},{"type":"tanh"},{"type":"linear","in":3,"out":2}]')
  lu.assertEquals(nn.linear(3, 2):arch(), {{type = "linear", ["in"] = 3, out = 2}})
  local nested = nn.sequential{nn.sequential{nn.linear(2, 3), nn.relu()}, nn.linear(3, 1)}
  T.assert_error_contains("arch: layer 1 is a nested Sequential, which has no arch entry", nested.arch, nested)
  T.assert_error_contains("from_arch: layer 1 (linear): \"out\" is missing", nn.from_arch, {{type = "linear", ["in"] = 3}})
end

TestArchFiles = {}

function TestArchFiles:tearDown() T.cleanup() end

function TestArchFiles:test_cnn_export_import_round_trip()
  local g = lps.generator(6)
  local m = small_cnn(g)
  local p = T.tmpname()
  lps.export_safetensors(m, p, {task = "a"}, {input = {1, 9, 9}})
  local tensors, meta, names = st.read(p)
  lu.assertEquals(meta["lualps.arch"], select(2, m:arch{input = {1, 9, 9}}))
  lu.assertEquals(meta.format, "pt")
  lu.assertEquals(meta.task, "a")
  lu.assertEquals(names, {"0.bias", "0.weight", "3.bias", "3.weight", "6.bias", "6.weight"})
  for name, t in pairs(m:state_dict()) do lu.assertEquals(tensors[name]:totable(), t:totable(), name) end
  local m2, meta2 = lps.import_safetensors(p)
  lu.assertEquals(meta2, meta)
  lu.assertEquals(m2:arch(), m:arch())
  same_outputs(m, m2, lps.randn(3, 1, 9, 9, g))
  -- the export refuses an input the model cannot take, and a user "lualps.arch"
  T.assert_error_contains("export: arch: layer 7 (linear)", lps.export_safetensors, m, p, nil, {input = {1, 8, 8}})
  T.assert_error_contains("export: metadata 'lualps.arch' is written by export", lps.export_safetensors, m, p,
    {["lualps.arch"] = "[]"})
  -- MLPs carry the key too; a single layer is written as a Sequential of one
  lps.export_safetensors(nn.mlp{3, 2, 1, generator = g}, p)
  lu.assertEquals(select(2, st.read(p))["lualps.arch"],
    '[{"type":"linear","in":3,"out":2},{"type":"relu"},{"type":"linear","in":2,"out":1}]')
  local lin = nn.linear(3, 2, {generator = g})
  lps.export_safetensors(lin, p)
  lu.assertEquals(select(3, st.read(p)), {"0.bias", "0.weight"})
  same_outputs(lin, lps.import_safetensors(p), lps.randn(4, 3, g))
end

-- A CNN whose output is computed by hand: x 3x3, conv 2x2 [[1,0],[0,-1]] with
-- no bias in the file (loads as zero), relu, maxpool 2, flatten, linear 2*v + 0.5.
function TestArchFiles:test_hand_computed_cnn_and_missing_bias()
  local p = T.tmpname()
  st.write(p, {["0.weight"] = lps.tensor{{{{1, 0}, {0, -1}}}}, ["4.weight"] = lps.tensor{{2}},
    ["4.bias"] = lps.tensor{0.5}})
  local arch = {{type = "conv2d", ["in"] = 1, out = 1, kernel = 2}, {type = "relu"},
    {type = "maxpool2d", kernel = 2}, {type = "flatten"}, {type = "linear", ["in"] = 1, out = 1}}
  local m = lps.import_safetensors(p, {arch = arch})
  -- conv: 9-1 = 8, 2-6 = -4, 4-8 = -4, 1-0 = 1; relu, max = 8; 2*8 + 0.5
  local x = lps.tensor{{{{9, 2, 3}, {4, 1, 6}, {7, 8, 0}}}}
  lu.assertEquals(m:forward(x):totable(), {{16.5}})
  lu.assertEquals(m:state_dict()["0.bias"]:totable(), {0})
end

function TestArchFiles:test_import_without_arch()
  local g = lps.generator(8)
  local m = small_cnn(g)
  local p = T.tmpname("cnn.safetensors")
  st.write(p, m:state_dict(), {format = "pt"}) -- PyTorch's plain state dict: no arch
  T.assert_error_contains("import: " .. p .. ": 4-D weight '0.weight' (3x1x3x3) (a convolution) but no "
    .. "'lualps.arch' metadata; strides, padding and pooling cannot be inferred: pass opts.arch or "
    .. "write the key (see scripts/torch_interop.py)", lps.import_safetensors, p)
  local x = lps.randn(2, 1, 9, 9, g)
  same_outputs(m, lps.import_safetensors(p, {arch = m:arch()}), x)
  same_outputs(m, lps.import_safetensors(p, {arch = select(2, m:arch())}), x)
  -- opts.arch wins over the file's key (here a wrong one)
  st.write(p, m:state_dict(), {["lualps.arch"] = '[{"type":"relu"}]'})
  T.assert_error_contains("tensor '0.bias' belongs to layer 1 (relu)", lps.import_safetensors, p)
  same_outputs(m, lps.import_safetensors(p, {arch = m:arch()}), x)
  local bad = m:arch()
  table.insert(bad, 1, {type = "input", shape = {1, 11, 11}})
  T.assert_error_contains("opts.arch: layer 7 (linear): \"in\" is 16 but layer 6 (flatten) gives 36",
    lps.import_safetensors, p, {arch = bad})
end

function TestArchFiles:test_import_errors()
  local g = lps.generator(9)
  local m = small_cnn(g)
  local arch = m:arch()
  local p = T.tmpname()
  local function try(changes, needle, opts)
    local sd = {}
    for k, v in pairs(m:state_dict()) do sd[k] = v end
    for k, v in pairs(changes) do sd[k] = v or nil end
    st.write(p, sd)
    T.assert_error_contains(needle, lps.import_safetensors, p, opts or {arch = arch})
  end
  try({["3.weight"] = lps.zeros(4, 3, 3, 3)},
    "import: " .. p .. ": layer 4 (conv2d): tensor '3.weight' has shape (4x3x3x3), expected (4x3x2x2)")
  try({["6.bias"] = lps.zeros(4)}, "layer 7 (linear): tensor '6.bias' has shape (4), expected (5)")
  try({["6.weight"] = false}, "tensor '6.weight' is missing (the arch's layers hold 0.weight, 0.bias, 3.weight")
  try({["1.weight"] = lps.zeros(3)}, "tensor '1.weight' belongs to layer 2 (relu), which has no parameters")
  try({["9.bias"] = lps.zeros(3)}, "tensor '9.bias' would belong to layer 10 but the arch has 7 layers")
  try({["features.0.weight"] = lps.zeros(3)}, "tensor 'features.0.weight' is not a parameter or buffer of the arch's "
    .. "layers, which are named 0.weight, 0.bias, 3.weight, 3.bias, 6.weight, 6.bias")
  try({}, "opts.activation is for files without an architecture, but opts.arch gives one",
    {arch = arch, activation = "tanh"})
  try({}, "import: unknown option 'input' (activation, arch)", {input = {1, 9, 9}})
  try({}, "opts.activation must be 'relu' or 'tanh', got sigmoid", {activation = "sigmoid"})
  -- a broken key in the file
  st.write(p, m:state_dict(), {["lualps.arch"] = '[{"type":"conv2d","in":1,"out":3}]'})
  T.assert_error_contains("import: " .. p .. ": 'lualps.arch': layer 1 (conv2d): \"kernel\" is missing",
    lps.import_safetensors, p)
  -- errors point at the caller's line
  local ok, err = pcall(function() local x = lps.import_safetensors(p); return x end)
  lu.assertFalse(ok)
  lu.assertStrContains(err, "test_arch.lua:")
end

function TestArchFiles:test_modelset_round_trip()
  local g = lps.generator(10)
  local m = small_cnn(g)
  local path = T.tmpname(".lpsm")
  local x = lps.randn(2, 1, 9, 9, g)
  do
    local ms <close> = lps.modelset.create(path, {overwrite = true})
    ms:append(m, {id = "cnn1", task = 1})
    ms:append(nn.mlp{4, 3, 2, generator = g}, {id = "mlp1"})
  end
  local ms <close> = lps.modelset.open(path)
  local m2, meta = ms:get(1)
  lu.assertEquals(m2:arch(), m:arch())
  same_outputs(m, m2, x)
  lu.assertEquals(tostring(meta), "record 1  cnn1  task 1  cnn-c3-c4-l5")
  lu.assertEquals(tostring(ms:meta(2)), "record 2  mlp1  mlp-4-3-2")
  -- and out again through safetensors
  local p = T.tmpname()
  lps.export_safetensors(m2, p)
  same_outputs(m, lps.import_safetensors(p), x)
end

-- `lualps export` and `lualps import` of a CNN (the input shape travels
-- through the set as metadata input_shape).
function TestArchFiles:test_cli()
  local g = lps.generator(12)
  local m = small_cnn(g)
  local dir = T.tmpname(".d")
  assert(os.execute("mkdir -p " .. dir))
  local set, set2 = dir .. "/a.lpsm", dir .. "/b.lpsm"
  local f, f2 = dir .. "/cnn.safetensors", dir .. "/back.safetensors"
  lps.export_safetensors(m, f, {id = "c1"}, {input = {1, 9, 9}})
  local ok, out = T.sh(("scripts/lualps import %s %s --task 3"):format(set, f))
  lu.assertTrue(ok, out)
  ok, out = T.sh(("scripts/lualps export %s 1 %s"):format(set, f2))
  lu.assertTrue(ok, out)
  local _, meta = st.read(f2)
  lu.assertEquals(meta["lualps.arch"], select(2, m:arch{input = {1, 9, 9}}))
  lu.assertEquals(meta.task, "3")
  local x = lps.randn(2, 1, 9, 9, g)
  same_outputs(m, lps.import_safetensors(f2), x)
  -- a plain state dict needs --arch (JSON text or @file)
  st.write(f, m:state_dict())
  local code
  ok, out, code = T.sh(("scripts/lualps import %s %s"):format(set2, f))
  lu.assertEquals(code, 1, out)
  lu.assertStrContains(out, "lualps import: " .. f .. ": 4-D weight '0.weight' (3x1x3x3) (a convolution) "
    .. "but no 'lualps.arch' metadata; strides, padding and pooling cannot be inferred: pass --arch")
  local archfile = dir .. "/arch.json"
  require("lualps.util").write_file(archfile, select(2, m:arch()))
  ok, out = T.sh(("scripts/lualps import %s %s --arch @%s"):format(set2, f, archfile))
  lu.assertTrue(ok, out)
  ok, out = T.sh(("scripts/lualps import %s %s --arch '%s'"):format(set2, f, select(2, m:arch())))
  lu.assertTrue(ok, out)
  local ms <close> = lps.modelset.open(set2)
  lu.assertEquals(#ms, 2)
  same_outputs(m, ms:get(2), x)
  ok, out, code = T.sh(("scripts/lualps export %s 1 %s --input 1,8,8"):format(set2, f2))
  lu.assertEquals(code, 1, out)
  lu.assertStrContains(out, "lualps export: arch: layer 7 (linear)")
  os.execute("rm -rf " .. dir)
end

-- The parser names entries only in a second pass, after a first without
-- names failed (csrc/nn/arch.c, lps_arch_parse): its messages name nested
-- entries as a single pass did.
function TestArchParse:test_messages_name_nested_entries()
  local cases = {
    {'[{"type":"residual","body":[{"type":"linear","in":3}]}]',
      'arch: layer 1 (residual) body layer 1 (linear): "out" is missing'},
    {'[{"type":"relu"},{"type":"residual","body":[{"type":"relu"},{"type":"residual","body":' ..
      '[{"type":"linear","in":3,"out":2.5}]}]}]',
      'arch: layer 2 (residual) body layer 2 (residual) body layer 1 (linear): "out" must be an integer, got 2.5'},
    {'[{"type":"input","shape":[3]},{"type":"linear","in":3,"out":4,"bogus":1}]',
      'arch: layer 1 (linear): unknown key "bogus" (a linear takes in, out, bias)'},
    {'[{"type":"linear","in":3,"out":4},{"type":"conv9d"}]', 'arch: layer 2: unknown type "conv9d" (known: input, '},
    {'[{"type":"residual","body":[{"type":"linear","in":3,"out":3}],"shortcut":[{"type":"relu"},{"kind":"x"}]}]',
      'arch: layer 1 (residual) shortcut entry 2 has no "type"'},
    {'[{"type":"residual","body":[{"type":"linear","in":true,"out":3}]}]',
      'arch: layer 1 (residual) body layer 1 (linear): "in" must be an integer, got true'},
    {'[{"type":"residual","body":[{"type":"linear","in":3,"out":3}],"body":[]}]',
      'arch: layer 1 (residual): "body" appears twice'},
  }
  for _, c in ipairs(cases) do T.assert_error_contains(c[2], lps.arch.check, c[1]) end
  -- and a text that parses gives its arch after one pass, as before
  local arch = lps.arch.check('[{"type":"residual","body":[{"type":"linear","in":3,"out":3}]}]')
  lu.assertEquals(arch[1].type, "residual")
end

-- Found by a 15-minute fuzzing run: a residual block of unknown input whose
-- identity shortcut knows no rank lent the body its (absent) sizes as 0, and
-- the flatten after it divided by them (SIGFPE, the process killed).
function TestArchParse:test_residual_of_unknown_input_then_flatten()
  local text = '[{"type":"relu"},{"type":"residual","body":[{"type":"conv2d","in":8,"out":8,"kernel":3,' ..
    '"stride":1,"padding":1}],"shortcut":[]},{"type":"flatten"},{"type":"linear","in":16,"out":10}]'
  local _, _, shapes = lps.arch.check(text)
  lu.assertEquals(shapes[2], {8, -1, -1}) -- the body's channels; the spatial sizes only the input tells
  lu.assertEquals(shapes[3], {-1})
  local m = lps.nn.from_arch(text)
  local y = m:forward(lps.zeros(2, 8, 1, 2)) -- 8 x 1 x 2 = 16 features
  lu.assertEquals(y:shape(), {2, 10})
  T.assert_error_contains('"in" is 16 but its input (2x32) gives 32 features', m.forward, m, lps.zeros(2, 8, 2, 2))
end

-- of_meta of something that is not a metadata table: an error naming it
-- (was "attempt to index a nil value (local 'meta')"; the Lua API fuzzer)
TestArchOfMeta = {}

function TestArchOfMeta:test_bad_meta()
  T.assert_error_contains("arch.of_meta: meta must be a record's metadata table, got nil", lps.arch.of_meta, nil)
  T.assert_error_contains("got number", lps.arch.of_meta, 3)
  lu.assertNil(lps.arch.of_meta({}))
end

-- name of a list with entries that are not layers (a number raised
-- "attempt to index a number value (local 'e')"; the Lua API fuzzer)
function TestArchOfMeta:test_name_checks_its_list()
  T.assert_error_contains("arch.name: the arch must be a list of layers, got nil", lps.arch.name, nil)
  T.assert_error_contains("arch.name: the arch layer 2 is number, not a table", lps.arch.name, {{type = "relu"}, 3})
  T.assert_error_contains("arch.name: the arch layer 1's body layer 1 is string", lps.arch.name, {{type = "residual", body = {"x"}}})
  lu.assertEquals(lps.arch.name({{type = "linear", ["in"] = 4, out = 2}}), "mlp-4-2")
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
