-- ResNet-style models (bias-free convolutions, batch norm, residual blocks
-- with identity and projection shortcuts, dropout, global average pooling)
-- through every reader: the model store, the command line (import, export,
-- nearest, similarity, embed, repl), the REPL-style calls, a checkpoint
-- PyTorch wrote, the errors of bad input on each path, and LPS and template
-- matching reading them through their function (batch norm folded into
-- the convolution gives the same embedding) while the weight-space readers
-- refuse them by name.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local cjson = require "cjson"
local nn = lps.nn

local dir = os.tmpname(); os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local SET, SIM = dir .. "/resnets.lpsm", dir .. "/sim.lps"

local function conv(cin, cout, k, stride)
  return {type = "conv2d", ["in"] = cin, out = cout, kernel = k, stride = stride or 1, padding = k // 2, bias = false}
end
local function bn(c) return {type = "batchnorm2d", features = c} end
local RELU = {type = "relu"}

-- 1x28x28 -> 4 channels -> a block with the identity shortcut -> a block to
-- 6 channels at 14x14 with a strided 1x1 conv + batch norm shortcut ->
-- dropout, global average pooling, a linear head of `classes`.
local function resnet_arch(classes)
  return {{type = "input", shape = {1, 28, 28}}, conv(1, 4, 3), bn(4), RELU,
    {type = "residual", body = {conv(4, 4, 3), bn(4), RELU, conv(4, 4, 3), bn(4)}, shortcut = {}}, RELU,
    {type = "residual", body = {conv(4, 6, 3, 2), bn(6), RELU, conv(6, 6, 3), bn(6)},
      shortcut = {conv(4, 6, 1, 2), bn(6)}}, RELU,
    {type = "dropout", p = 0.2}, {type = "adaptive_avgpool2d", output = 1}, {type = "flatten"},
    {type = "linear", ["in"] = 6, out = classes}}
end

-- A ResNet with random weights and running statistics (seed s), in eval mode.
local function resnet(s, classes)
  local g = lps.generator(s)
  return T.randomize_state(nn.from_arch(resnet_arch(classes or 3), g), g):eval()
end

local X = lps.rand(5, 1, 28, 28, lps.generator(99))

local function same_function(a, b, what)
  a:eval()
  b:eval()
  lu.assertTrue(lps.allclose(a:forward(X), b:forward(X), 0, 0), what)
end

-- The set: four ResNets (records 1-4, tasks 1, 1, 2, 2) and two MLPs; the
-- LPS model: the templates of an untrained any-architecture network (it
-- reads every model through its function).
do
  local ms <close> = lps.modelset.create(SET)
  for s = 1, 4 do ms:append(resnet(s, 2 + s % 2), {id = "res" .. s, task = (s + 1) // 2}) end
  for s = 5, 6 do ms:append(nn.mlp{784, 8, 2, generator = lps.generator(s)}, {id = "mlp" .. s, task = 3}) end
  lps.similarity.wrap(lps.similarity.network{families = {"mlp", "cnn"}, slots = {"templates"}, noise = 2}):save(SIM)
end

local function cli(args) return T.sh("scripts/lualps " .. args) end

TestResNetStore = {}

function TestResNetStore:test_get_rebuilds_with_buffers()
  local ms <close> = lps.modelset.open(SET)
  local m, meta = ms:get(3)
  local ref = resnet(3, 3)
  same_function(m, ref, "ms:get(3)")
  lu.assertEquals(meta.id, "res3")
  lu.assertEquals(tostring(m), tostring(ref))
  -- every buffer under its PyTorch name, with the stored values
  local want = ref:named_buffers()
  lu.assertEquals(T.names(m:named_buffers()), T.names(want))
  lu.assertEquals(want[11].name, "5.shortcut.1.running_mean")
  for k, e in ipairs(m:named_buffers()) do lu.assertEquals(e.tensor:totable(), want[k].tensor:totable(), e.name) end
  -- the stored arch text parses again (an identity shortcut is [], not {})
  local json = ms:meta_json(3)
  lu.assertStrContains(json, '"shortcut":[]')
  local stored = cjson.decode(json).arch
  lu.assertEquals(select(2, lps.arch.check(json:match('"arch":(%b[])'))), select(2, lps.arch.check(stored)))
  lu.assertEquals(lps.arch.name(meta.arch), "cnn-c4-res[c4-c4]-res[c6-c6]-l3")
end

TestResNetCLI = {}

function TestResNetCLI:test_export_import_round_trip()
  local f = dir .. "/res2.safetensors"
  local ok, out = cli(("export %s 2 %s --input 1,28,28"):format(SET, f))
  lu.assertTrue(ok, out)
  -- the file holds every parameter and buffer by state_dict name, and the arch with its input
  local tensors, meta = lps.safetensors.read(f)
  lu.assertEquals(tensors["5.shortcut.1.running_var"]:shape(), {6})
  lu.assertStrContains(meta["lualps.arch"], '{"type":"input","shape":[1,28,28]}')
  local set2 = dir .. "/imported.lpsm"
  ok, out = cli(("import %s %s --task 7"):format(set2, f))
  lu.assertTrue(ok, out)
  local a <close> = lps.modelset.open(SET)
  local b <close> = lps.modelset.open(set2)
  lu.assertEquals({b:meta(1).task, b:meta(1).id, b:meta(1).input_shape}, {7, "res2", {1, 28, 28}})
  same_function(b:get(1), a:get(2), "exported and imported")
end

function TestResNetCLI:test_nearest_similarity_embed_agree_with_the_library()
  local ms <close> = lps.modelset.open(SET)
  local sim = lps.similarity.load(SIM)
  -- REPL-style calls: a model or a record as the query
  local m = ms:get(1)
  local by_model, by_record = sim:nearest(ms, m, 3), sim:nearest(ms, 1, 3)
  lu.assertEquals(by_model[1].index, 1)
  lu.assertAlmostEquals(by_model[1].score, 1, 1e-5)
  for r = 1, 2 do
    lu.assertEquals(by_model[r + 1].index, by_record[r].index)
    lu.assertAlmostEquals(by_model[r + 1].score, by_record[r].score, 1e-5)
  end
  lu.assertStrContains(tostring(by_record), "rank      #  id")
  local s14 = sim:similarity(m, ms:get(4))
  lu.assertTrue(s14 > -1 and s14 < 0.9999, "two different ResNets: " .. s14)
  -- template matching reads them too: 1 for the same function, less for another
  local tm = lps.benchmark.methods.template_matching{noise = 2}
  local S = tm:similarity({lps.similarity.record(ms, 1)}, {lps.similarity.weights(m), lps.similarity.record(ms, 3)})
  lu.assertAlmostEquals(S:get(1, 1), 1, 1e-5)
  lu.assertTrue(S:get(1, 2) < 0.99, "another ResNet: " .. S:get(1, 2))
  lu.assertAlmostEquals(sim:similarity(lps.similarity.record(ms, 1), lps.similarity.record(ms, 4)), s14, 1e-5)
  -- the command line gives the same
  local ok, out = cli(("nearest %s %s 1 -k 3 --json"):format(SET, SIM))
  lu.assertTrue(ok, out)
  local r = cjson.decode(out)
  for k = 1, 3 do
    lu.assertEquals(r.nearest[k].index, by_record[k].index)
    lu.assertAlmostEquals(r.nearest[k].score, by_record[k].score, 1e-5)
  end
  ok, out = cli(("similarity %s %s 1 4"):format(SET, SIM))
  lu.assertTrue(ok, out)
  lu.assertAlmostEquals(tonumber(out), s14, 1e-5)
  local f = dir .. "/res1.safetensors"
  lps.export_safetensors(m, f, {id = "res1", task = "1"})
  ok, out = cli(("nearest %s %s %s -k 1"):format(SET, SIM, f))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "   1      1  res1")
  ok, out = cli(("embed %s %s %s/e.json"):format(SET, SIM, dir))
  lu.assertTrue(ok, out)
  local e = cjson.decode(require("lualps.util").read_file(dir .. "/e.json")).embeddings
  lu.assertEquals(#e, 6)
  local mine = sim:embed(ms:get(4))
  for k = 1, mine:numel() do lu.assertAlmostEquals(e[4].embedding[k], mine[k], 1e-5) end
end

function TestResNetCLI:test_repl_session()
  local ok, out = T.sh(("printf 'm = ms:get(3)\\nprint(m:is_training(), #m:named_buffers())\\n"
    .. "print(sim:nearest(ms, m, 1)[1].meta.id)\\nprint(sim:similarity(m, ms:get(3)) > 0.9999)\\n' | "
    .. "scripts/lualps repl %s %s"):format(SET, SIM))
  lu.assertTrue(ok, out)
  lu.assertStrContains(out, "lps, ms, sim loaded")
  -- train mode as PyTorch builds modules, 12 buffers (6 batch norms), the
  -- record itself first, cosine 1 with itself
  for _, line in ipairs{"\ntrue\t12\n", "\nres3\n", "\ntrue\n"} do lu.assertStrContains(out, line) end
  lu.assertNotStrContains(out, "stdin:")
end

TestResNetTorch = {}

-- A checkpoint PyTorch wrote from its own modules (state_dict with
-- num_batches_tracked as I64, arch_of() as lualps.arch) imports with the
-- same eval-mode outputs, and the command line takes it.
function TestResNetTorch:test_pytorch_checkpoint_imports()
  local py = "/usr/bin/python3"
  local fh = io.open(py, "rb")
  if not fh then lu.skip("no " .. py) end
  fh:close()
  local f, io_f = dir .. "/torch_resnet.safetensors", dir .. "/torch_resnet_io.safetensors"
  local ok, out = T.sh(("%s scripts/torch_interop.py --resnet %s --io %s --epochs 1 --images 256"):format(py, f, io_f))
  if out:find("No module named 'torch'", 1, true) then lu.skip("no torch for " .. py) end
  lu.assertTrue(ok, out)
  local entries = lps.safetensors.header(f)
  local dtypes = {}
  for _, e in ipairs(entries) do dtypes[e.name] = e.dtype end
  lu.assertEquals(dtypes["3.body.1.num_batches_tracked"], "I64")
  local m, meta = lps.import_safetensors(f)
  lu.assertEquals({meta.id, meta.task}, {"torch-resnet", "1"})
  local io_t = lps.safetensors.read(io_f)
  m:eval()
  local diff = (m:forward(io_t.x) - io_t.y):abs():max()
  print(("# PyTorch ResNet checkpoint: max |lualps - PyTorch| %.2g"):format(diff))
  lu.assertTrue(diff <= 1e-5, "eval-mode outputs differ by " .. diff)
  -- what PyTorch wrote is what lualps keeps: the arch, every parameter and buffer
  lu.assertEquals(lps.arch.name(m:arch()), "cnn-c16-res[c16-c16]-res[c32-c32]-l2")
  local n = 0
  for name in pairs(m:state_dict()) do
    n = n + 1
    lu.assertNotNil(dtypes[name], name)
  end
  lu.assertEquals(n + 6, #entries) -- 6 batch norms' num_batches_tracked passed over
  local set2 = dir .. "/torch.lpsm"
  ok, out = cli(("import %s %s"):format(set2, f))
  lu.assertTrue(ok, out)
  ok, out = cli(("nearest %s %s %s -k 2 --json"):format(SET, SIM, f))
  lu.assertTrue(ok, out)
  lu.assertEquals(cjson.decode(out).query, {file = f, id = "torch-resnet", task = 1})
  local ms <close> = lps.modelset.open(set2)
  same_function(ms:get(1), m, "the imported record")
end

TestResNetErrors = {}

-- Each kind of bad input, through import (library and command line), the
-- store (ms:get, and the similarity reading a record), and from_arch.
function TestResNetErrors:test_bad_input_on_every_path()
  local m = resnet(1, 2)
  local _, json = m:arch({input = {1, 28, 28}})
  local state = m:state_dict()
  local function with(name, t)
    local s = {}
    for k, v in pairs(state) do s[k] = v end
    s[name] = t
    return s
  end
  -- {what, arch, tensors, message, and its prefix on the paths import / ms:get / similarity}
  local ARCH = {"'lualps.arch': ", "from_arch: ", "arch: "}
  local cases = {
    {"unknown type", (json:gsub('"type":"dropout","p":0.2', '"type":"dropout2d"')), state,
      'layer 8: unknown type "dropout2d"', ARCH},
    {"missing key", (json:gsub('"features":6,', "", 1)), state,
      'layer 6 (residual) body layer 2 (batchnorm2d): "features" is missing', ARCH},
    {"branches do not add", (json:gsub('"kernel":1,"stride":2', '"kernel":1,"stride":1')), state,
      "layer 6 (residual): its branches do not add: the body gives (6x14x14) but the shortcut gives (6x28x28)", ARCH},
    {"buffer shape", json, with("5.shortcut.1.running_var", lps.ones(5)), "layer 6 (residual) shortcut layer 2 "
      .. "(batchnorm2d): %s '5.shortcut.1.running_var' has shape (5), expected (6)", {"", "load_named: ", ""}},
  }
  local sim = lps.similarity.load(SIM)
  for i, c in ipairs(cases) do
    local name, arch_json, tensors, want, pre = table.unpack(c)
    local f = ("%s/bad%d.safetensors"):format(dir, i)
    lps.safetensors.write(f, tensors, {["lualps.arch"] = arch_json})
    local in_file = pre[1] .. want:format("tensor")
    T.assert_error_contains("import: " .. f .. ": " .. in_file, lps.import_safetensors, f)
    for _, cmd in ipairs{"import " .. dir .. "/bad_cli.lpsm", ("nearest %s %s"):format(SET, SIM)} do
      local _, out, code = cli(cmd .. " " .. f)
      lu.assertEquals(code, 1, name .. ": " .. out)
      lu.assertStrContains(out, in_file, false, name)
    end
    -- a record stored with this arch and these tensors
    local set = ("%s/bad%d.lpsm"):format(dir, i)
    local ms <close> = lps.modelset.create(set)
    ms:append_tensors(tensors, {id = "bad", arch = cjson.decode(arch_json)})
    T.assert_error_contains(("%s: record 1 (bad): %s%s"):format(set, pre[2], want:format("buffer")), ms.get, ms, 1)
    T.assert_error_contains(("similarity: record 1 (bad) of %s: %s%s"):format(set, pre[3], want:format("buffer")),
      sim.embed_set, sim, ms)
    if pre == ARCH then T.assert_error_contains("from_arch: " .. want, nn.from_arch, arch_json) end
  end
end

TestFunctionReaders = {}

-- conv (with bias) + batch norm + relu + a linear head, and the same
-- function with the batch norm folded into the convolution by hand:
-- W' = W gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps) + beta.
local function bn_and_folded(seed)
  local g = lps.generator(seed)
  local a = T.randomize_state(nn.sequential{nn.conv2d(1, 6, 5, {stride = 2, padding = 2, generator = g}),
    nn.batchnorm2d(6, {eps = 1e-3}), nn.relu(), nn.flatten(), nn.linear(6 * 14 * 14, 3, g)}, g):eval()
  local b = nn.sequential{nn.conv2d(1, 6, 5, {stride = 2, padding = 2}), nn.relu(), nn.flatten(), nn.linear(6 * 14 * 14, 3)}
  local sa, sb = a:state_dict(), b:state_dict()
  for o = 1, 6 do
    local s = sa["1.weight"][o] / math.sqrt(sa["1.running_var"][o] + 1e-3)
    sb["0.weight"][o]:copy(sa["0.weight"][o] * s)
    sb["0.bias"][o] = (sa["0.bias"][o] - sa["1.running_mean"][o]) * s + sa["1.bias"][o]
  end
  sb["3.weight"]:copy(sa["4.weight"])
  sb["3.bias"]:copy(sa["4.bias"])
  return a, b:eval()
end

function TestFunctionReaders:test_folded_batch_norm_embeds_alike()
  local a, b = bn_and_folded(1)
  local x = lps.rand(4, 1, 28, 28, lps.generator(5))
  lu.assertTrue((a:forward(x) - b:forward(x)):abs():max() < 1e-5, "folding keeps the function")
  local other = bn_and_folded(2)
  local sim = lps.similarity.wrap(lps.similarity.network{families = {"mlp", "cnn"}, slots = {"templates"}})
  local tm = lps.benchmark.methods.template_matching()
  local function cosines(m1, m2)
    local wa, wb = lps.similarity.weights(m1), lps.similarity.weights(m2)
    return sim:similarity(wa, wb), tm:similarity({wa}, {wb}):get(1, 1)
  end
  local lps_same, tm_same = cosines(a, b)
  local lps_other, tm_other = cosines(a, other)
  print(("# folded: LPS %.6f, template matching %.6f; another model: %.4f, %.4f"):format(lps_same, tm_same,
    lps_other, tm_other))
  lu.assertTrue(lps_same >= 0.9999, "LPS cosine " .. lps_same)
  lu.assertTrue(tm_same >= 0.9999, "template matching " .. tm_same)
  -- and they tell another function apart
  lu.assertTrue(lps_other < 0.99 and tm_other < 0.99, ("another model: %g, %g"):format(lps_other, tm_other))
end

function TestFunctionReaders:test_weight_space_readers_name_the_layer()
  local a, b = bn_and_folded(1)
  local g = lps.generator(3)
  local gelu = nn.sequential{nn.conv2d(1, 4, 5, {stride = 2, padding = 2, generator = g}), nn.gelu(), nn.flatten(),
    nn.linear(4 * 14 * 14, 3, g)}
  local units = lps.similarity.network{families = {"mlp", "cnn"}, slots = {"first", "head", "templates"}}
  lu.assertEquals(units:embed({lps.similarity.weights(b)}):size(2), 64) -- the folded model reads
  local raw = lps.benchmark.methods.features("raw")
  for _, c in ipairs{{a, "layer 2 (batchnorm2d)"}, {gelu, "layer 2 (gelu)"}, {resnet(1), "layer 1 (conv2d) has no bias"},
      {nn.sequential{nn.conv2d(1, 4, 3, {padding = 1, generator = g}), nn.relu(),
        nn.residual{body = {nn.conv2d(4, 4, 3, {padding = 1, generator = g}), nn.relu()}}, nn.flatten(),
        nn.linear(4 * 28 * 28, 2, g)}, "layer 3 (residual) is not read"}} do
    local w = lps.similarity.weights(c[1])
    T.assert_error_contains("similarity: the weight-unit slots (first, head): " .. c[2], units.embed, units, {w})
    T.assert_error_contains("the templates slot reads any model", units.embed, units, {w})
    -- the benchmark's weight-space rows give NaN for what they cannot read (ranked last)
    local e = raw:embed({w, w})
    lu.assertTrue(e[1][1] ~= e[1][1] and e[2][1] ~= e[2][1], c[2])
    T.assert_error_contains(c[2], lps.eval.similarity_matrix, "matching", {w}, {w})
    T.assert_error_contains("similarity: an MLP network (it reads weights): " .. c[2],
      function() return lps.similarity.network{}:embed({w}) end)
  end
end

local code = lu.LuaUnit.run("-o", "tap")
os.execute("rm -rf " .. dir)
os.exit(code, true)
