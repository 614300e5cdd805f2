-- Shared test helpers: error assertions and finite-difference gradient checks.
local lu = require "luaunit"

local M = {}

-- LuaUnit's runner takes time quadratic or worse in a failure message's
-- length: a failing assertEquals over a 30x30 table of numbers ran for
-- minutes (the message lists every entry), so a broken test hung CI instead
-- of failing. Tables that differ fail here with the first differing entry.
local assert_equals = lu.assertEquals
local function first_diff(a, b, path, seen)
  if a == b then return nil end
  if type(a) ~= "table" or type(b) ~= "table" or getmetatable(a) and getmetatable(a).__eq then
    return path, a, b
  end
  if seen[a] == b then return nil end -- a cycle already being compared
  seen[a] = b
  for k, v in pairs(a) do
    local w, x, y = first_diff(v, b[k], ("%s[%s]"):format(path, type(k) == "string" and ("%q"):format(k) or tostring(k)), seen)
    if w then return w, x, y end
  end
  for k, v in pairs(b) do
    if a[k] == nil then return ("%s[%s]"):format(path, tostring(k)), nil, v end
  end
  return nil
end
lu.assertEquals = function(actual, expected, msg, ...)
  if type(actual) == "table" and type(expected) == "table" and not lu.private.is_table_equals(actual, expected) then
    local where, x, y = first_diff(actual, expected, "", {})
    if where then
      lu.private.fail_fmt(2, msg, "tables differ at %s: actual %s, expected %s", where == "" and "the top" or where,
        lu.prettystr(x):sub(1, 200), lu.prettystr(y):sub(1, 200))
    end
  end
  return assert_equals(actual, expected, msg, ...)
end

--- Assert that f(...) raises an error whose message contains `needle`.
function M.assert_error_contains(needle, f, ...)
  local ok, err = pcall(f, ...)
  lu.assertFalse(ok, "expected an error containing '" .. needle .. "'")
  lu.assertStrContains(tostring(err), needle)
end

--- "small" under sanitizers and in CI smoke runs, "full" otherwise.
M.scale = os.getenv("LUALPS_TEST_SCALE") or "full"

--- A temporary file path removed by M.cleanup().
local tmpfiles = {}
function M.tmpname(suffix)
  local base = os.tmpname() -- creates an empty file: remove it at cleanup too
  tmpfiles[#tmpfiles + 1] = base
  local p = base .. (suffix or "")
  if suffix then tmpfiles[#tmpfiles + 1] = p end
  return p
end
function M.cleanup()
  for _, p in ipairs(tmpfiles) do os.remove(p) end
  tmpfiles = {}
end

--- Numerical gradient of a scalar function f() with respect to tensor x,
-- by central differences (x is perturbed in place and restored). f must
-- recompute from x each call and return a Lua number.
function M.numgrad(f, x, eps)
  eps = eps or 1e-3
  local flat = x:reshape(-1)
  local g = require("lualps").zeros(table.unpack(x:shape()))
  local gflat = g:reshape(-1)
  for i = 1, flat:numel() do
    local old = flat[i]
    flat[i] = old + eps
    local fp = f()
    flat[i] = old - eps
    local fm = f()
    flat[i] = old
    gflat[i] = (fp - fm) / (2 * eps)
  end
  return g
end

--- Assert analytic and numeric gradients agree: max |a - n| relative to
-- max(1, |a|max, |n|max) below tol (float32 central differences: 1e-2).
function M.assert_grad_close(analytic, numeric, tol, what)
  tol = tol or 1e-2
  lu.assertEquals(analytic:shape(), numeric:shape(), what)
  local diff = (analytic - numeric):abs():max()
  local scale = math.max(1, analytic:abs():max(), numeric:abs():max())
  if diff / scale > tol then
    lu.fail(string.format("%s: gradient mismatch, max abs diff %.3g (scale %.3g, tol %.3g)",
      what or "gradient", diff, scale, tol))
  end
end

--- Write a small synthetic dataset in Fashion-MNIST's files (gzip IDX) to
-- dir: class c (0..9) lights rows 2c..2c+2 over faint noise, so every pair
-- of classes is learnable in one epoch. Returns dir.
function M.fake_fashion_mnist(dir, n_train, n_test)
  local lps = require "lualps"
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local g = lps.generator(99)
  local function be32(v) return string.pack(">I4", v) end
  local function put(name, bytes)
    local f = assert(io.popen("gzip -c > '" .. dir .. "/" .. name .. "'", "w"))
    f:write(bytes)
    assert(f:close())
  end
  local function make(prefix, n)
    local img, lab = {be32(0x803), be32(n), be32(28), be32(28)}, {be32(0x801), be32(n)}
    for i = 0, n - 1 do
      local c = i % 10
      local px = {}
      for r = 0, 27 do
        for col = 0, 27 do
          local on = r >= 2 * c and r < 2 * c + 2
          px[#px + 1] = on and 200 + g:random(0, 55) or g:random(0, 40)
        end
      end
      img[#img + 1] = string.char(table.unpack(px))
      lab[#lab + 1] = string.char(c)
    end
    put(prefix .. "-images-idx3-ubyte.gz", table.concat(img))
    put(prefix .. "-labels-idx1-ubyte.gz", table.concat(lab))
  end
  make("train", n_train)
  make("t10k", n_test)
  return dir
end

--- Reference forward pass of an MLP {W1, b1, ..., WL, bL} (PyTorch layout,
-- ReLU between layers) on the rows of X, in plain tensor operations: an
-- independent check of the C forward passes.
function M.mlp_forward(m, X)
  local lps = require "lualps"
  local h = X
  for l = 1, #m // 2 do
    h = lps.matmul(h, m[2 * l - 1], false, true) + m[2 * l]
    if l < #m // 2 then h = h:relu() end
  end
  return h
end

--- A deep copy of a list of tensors.
function M.clone_list(m)
  local c = {}
  for i, t in ipairs(m) do c[i] = t:clone() end
  return c
end

--- Run a shell command; returns ok, output (stdout and stderr), exit code.
-- Under the sanitizer run, children (lua5.4, GNU parallel's perl, ...) run
-- without the preloaded ASan runtime and so use the plain build: the
-- sanitizers check this process, not the tools it starts.
function M.sh(cmd)
  if os.getenv("LD_PRELOAD") then
    cmd = "env -u LD_PRELOAD -u LUA_CPATH sh -c '" .. cmd:gsub("'", "'\\''") .. "'"
  end
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

--- Every record of a set by model id: {meta =, tensors = { {name, values}, ... }}
-- (values as nested tables, for exact comparisons), and the record count.
function M.records(path)
  local lps = require "lualps"
  local ms <close> = lps.modelset.open(path)
  local out = {}
  for i = 1, #ms do
    local meta = ms:meta(i)
    local map, names = ms:tensors(i)
    local flat = {}
    for _, name in ipairs(names) do flat[#flat + 1] = {name, map[name]:totable()} end
    out[meta.id] = {meta = meta, tensors = flat}
  end
  return out, #ms
end

--- A random MLP weight list {W1, b1, ...} of the given widths (standard
-- normal entries) from generator g.
function M.random_mlp(g, widths)
  local lps = require "lualps"
  local m = {}
  for l = 2, #widths do
    m[#m + 1] = lps.randn(widths[l], widths[l - 1], g)
    m[#m + 1] = lps.randn(widths[l], g)
  end
  return m
end

--- A file-like sink for progress displays: write, flush, and text() of all written.
function M.sink()
  local s = {buf = {}}
  function s:write(...) for _, x in ipairs{...} do self.buf[#self.buf + 1] = x end end
  function s:flush() end
  function s:text() return table.concat(self.buf) end
  return s
end

--- Finite differences against the gradients of every parameter of a
-- network (parameters, named_parameters, zero_grad: an lps.nn module or an
-- LPS network). backward() runs one forward and backward; f() returns the
-- loss. opts: eps (1e-2), tol (2e-2), what (a prefix of the failure label),
-- check(p) (which parameters; default all).
function M.check_parameter_gradients(net, backward, f, opts)
  opts = opts or {}
  net:zero_grad()
  backward()
  local params, grads = net:parameters()
  local named, names = net:named_parameters()
  if not names then -- an lps.nn module: a list of {name =, tensor =}
    names = {}
    for i, e in ipairs(named) do names[i] = e.name end
  end
  local analytic = {} -- before f's losses add to the gradients too
  for i, gr in ipairs(grads) do analytic[i] = gr:clone() end
  for i, p in ipairs(params) do
    if not opts.check or opts.check(p) then
      M.assert_grad_close(analytic[i], M.numgrad(f, p, opts.eps or 1e-2), opts.tol or 2e-2,
        (opts.what or "") .. names[i])
    end
  end
end

--- lps.nn.conv2d(cin, cout, k, opts) and lps.nn.linear(nin, nout, opts) with
-- any field of the registry in opts (bias = false, stride, ...) and
-- opts.generator.
function M.conv2d(cin, cout, k, opts)
  local f = {["in"] = cin, out = cout, kernel = k}
  for key, v in pairs(opts or {}) do f[key] = v end
  return require("lualps").nn.layer("conv2d", f)
end
function M.linear(nin, nout, opts)
  local f = {["in"] = nin, out = nout}
  for key, v in pairs(opts or {}) do f[key] = v end
  return require("lualps").nn.layer("linear", f)
end

--- Assert that tensors a and b hold the same float32 bits, element by
-- element (-0.0 against 0.0 and NaN payloads told apart); the message names
-- the first element that differs.
function M.assert_same_bits(a, b, what)
  what = what or "tensor"
  lu.assertEquals(a:shape(), b:shape(), what)
  local fa, fb = a:reshape(-1), b:reshape(-1)
  for i = 1, fa:numel() do
    local x, y = fa[i], fb[i]
    if string.pack("<f", x) ~= string.pack("<f", y) then
      lu.fail(("%s: element %d is %.9g against %.9g (not the same bits)"):format(what, i, x, y))
    end
  end
end

--- Assert that module m gives the same bits forward and backward on 1 and
-- on 2 threads (x large enough for the layers to split it).
function M.assert_threads_same_bits(m, x, gy, what)
  local lps = require "lualps"
  local threads = lps.get_num_threads()
  local function run(nt)
    lps.set_num_threads(nt)
    local y = m:forward(x):clone()
    return y, m:backward(x, gy):clone()
  end
  local y1, g1 = run(1)
  local y2, g2 = run(2)
  lps.set_num_threads(threads)
  lu.assertTrue(lps.allclose(y1, y2, 0, 0), (what or "") .. " output: 1 vs 2 threads")
  lu.assertTrue(lps.allclose(g1, g2, 0, 0), (what or "") .. " input gradient: 1 vs 2 threads")
end

--- Assert that the weight-space methods read net (an lps.nn Sequential of
-- weight layers and channel-wise ones) and see through its channel-wise
-- layers: permuting its hidden units (perms, as lps.eval.permute) keeps its
-- function on x (flat rows) and its sorted features.
function M.assert_weight_space_reads(net, perms, x)
  local lps = require "lualps"
  local m = lps.similarity.weights(net)
  m.arch = net:arch()
  local p = lps.eval.permute(m, perms)
  p.arch = m.arch
  lu.assertTrue((lps.eval.forward(m, x) - lps.eval.forward(p, x)):abs():max() < 1e-5, "permuted function")
  lu.assertTrue(lps.allclose(lps.eval.features("sorted", m), lps.eval.features("sorted", p), 1e-5, 1e-6),
    "sorted features of the permuted model")
  return m
end

--- Random parameters (normal, sd 0.5) and running statistics (means in
-- [-0.5, 0.5), variances in [0.5, 1.5)) of an lps.nn module, from g; returns m.
function M.randomize_state(m, g)
  local lps = require "lualps"
  for _, e in ipairs(m:named_parameters()) do e.tensor:copy(lps.randn(e.tensor:shape(), g) * 0.5) end
  for _, e in ipairs(m:named_buffers()) do
    local r = lps.rand(e.tensor:shape(), g)
    e.tensor:copy(e.name:match("running_var$") and r + 0.5 or r - 0.5)
  end
  return m
end

--- The names of a list of {name =, tensor =} (m:named_parameters()).
function M.names(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = e.name end
  return out
end

--- An lps.nn module's arch rebuilds it: its JSON text and its list read back
-- as themselves, the rebuilt module prints the same and, with m's state
-- (randomized from g first) loaded, gives the same eval-mode outputs on x,
-- as does m:clone(). Leaves m in eval mode; returns the rebuilt module.
function M.assert_arch_rebuilds(m, x, g)
  local lps = require "lualps"
  local list, json = m:arch()
  local m2 = lps.nn.from_arch(json)
  lu.assertEquals(select(2, m2:arch()), json)
  lu.assertEquals((lps.nn.from_arch(list):arch()), list)
  lu.assertEquals(tostring(m2), tostring(m))
  M.randomize_state(m, g)
  m2:load_named(m:state_dict())
  m:eval()
  m2:eval()
  lu.assertTrue(lps.allclose(m2:forward(x), m:forward(x), 0, 0), "the rebuilt module's outputs")
  lu.assertTrue(lps.allclose(m:clone():eval():forward(x), m:forward(x), 0, 0), "the clone's outputs")
  return m2
end

--- Train the model of an arch built from a seed twice (opts: x, y,
-- optimizer (a function giving a new one), epochs, batch_size) and assert
-- every parameter and buffer comes out bit-identical; returns the state.
function M.assert_train_repeatable(arch, opts)
  local lps = require "lualps"
  local function run()
    local m = lps.nn.from_arch(arch, lps.generator(9))
    lps.train(m, {x = opts.x, y = opts.y}, {optimizer = opts.optimizer(), epochs = opts.epochs,
      batch_size = opts.batch_size, generator = lps.generator(10), progress = false})
    return m:state_dict()
  end
  local a, b = run(), run()
  for k, v in pairs(a) do lu.assertTrue(lps.allclose(v, b[k], 0, 0), k) end
  return a
end

-- Every module under m (m included), depth first.
local function modules(m, out)
  out = out or {}
  out[#out + 1] = m
  for _, c in ipairs(m:children()) do modules(c, out) end
  return out
end

-- Train mode with every dropout in eval mode (PyTorch's masks are its own).
local function train_mode(m)
  m:train()
  for _, c in ipairs(modules(m)) do if c:type() == "dropout" then c:eval() end end
end

local function snapshot(m, prefix, into)
  for _, list in ipairs{m:named_parameters(), m:named_buffers()} do
    for _, e in ipairs(list) do into[prefix .. e.name] = e.tensor:clone() end
  end
  return into
end

--- Compare modules with PyTorch through scripts/torch_interop.py
-- --check-arch (one python3 run for all cases). cases: a list of {model =,
-- x =, train = (also one train-mode forward: outputs and running
-- statistics), fit = {x =, y = (1-based labels), lr =, batch_size =, steps
-- =} (plain SGD in order, then every parameter and buffer)}. Models are
-- left as they were. Returns a list of {eval =, train =, running =, fit =}
-- (max abs differences, -1 where not asked), or nil and the reason when
-- /usr/bin/python3 or its torch is missing.
function M.torch_check(cases)
  local lps = require "lualps"
  local py = "/usr/bin/python3"
  local f = io.open(py, "rb")
  if not f then return nil, "no " .. py end
  f:close()
  local files = {}
  for i, c in ipairs(cases) do
    local m, was = c.model, c.model:is_training()
    local start = snapshot(m, "", {})
    local named = snapshot(m, "", {x = c.x})
    m:eval()
    named["eval.y"] = m:forward(c.x):clone()
    if c.train then
      train_mode(m)
      named["train.y"] = m:forward(c.x):clone()
      for _, e in ipairs(m:named_buffers()) do named["train." .. e.name] = e.tensor:clone() end
      m:load_named(start)
    end
    local meta = {["lualps.arch"] = select(2, m:arch())}
    if c.fit then
      local n = c.fit.batch_size * c.fit.steps
      local x, y = c.fit.x:rows(1, n), lps.tensor(c.fit.y):rows(1, n)
      train_mode(m)
      lps.train(m, {x = x, y = y}, {optimizer = lps.optim.sgd{lr = c.fit.lr}, epochs = 1,
        batch_size = c.fit.batch_size, shuffle = false, progress = false})
      snapshot(m, "fit.", named)
      named["fit.x"], named["fit.y"] = x, y - 1
      meta["lualps.fit"] = ('{"lr":%.17g,"batch_size":%d,"steps":%d}'):format(c.fit.lr,
        c.fit.batch_size, c.fit.steps)
      m:load_named(start)
    end
    m:train(was)
    files[i] = M.tmpname(".safetensors")
    lps.safetensors.write(files[i], named, meta)
  end
  local ok, out = M.sh(py .. " scripts/torch_interop.py --check-arch " .. table.concat(files, " "))
  if out:find("No module named 'torch'", 1, true) then return nil, "no torch for " .. py end
  local results = {}
  for line in out:gmatch("[^\n]+") do
    if line:match("^check_arch ") then
      local r = {}
      for k, v in line:gmatch("(%w+)=(%S+)") do r[k] = tonumber(v) end
      results[#results + 1] = r
    end
  end
  if #results ~= #cases then error("torch_interop.py --check-arch failed (" .. tostring(ok) .. "):\n" .. out) end
  return results
end

--- M.torch_check, printing the differences (a TAP comment per case, named
-- by case.name) and asserting each asked one is at most tol (1e-5);
-- skips the test without PyTorch.
function M.assert_torch_agrees(cases, tol)
  local r, why = M.torch_check(cases)
  if not r then lu.skip(why) end
  for i, c in ipairs(r) do
    local parts = {}
    for _, k in ipairs{"eval", "train", "running", "fit"} do
      if c[k] >= 0 then
        parts[#parts + 1] = ("%s %.2g"):format(k, c[k])
        lu.assertTrue(c[k] <= (tol or 1e-5), ("%s: %s max |diff| %g"):format(cases[i].name, k, c[k]))
      end
    end
    print(("# PyTorch max |diff|, %s: %s"):format(cases[i].name, table.concat(parts, ", ")))
  end
  return r
end

--- A copy of model m (a weight list) with the rows of its head permuted by perm.
function M.permute_classes(m, perm)
  local c = {family = m.family, arch = m.arch}
  for i, t in ipairs(m) do c[i] = t:clone() end
  c[#m - 1], c[#m] = m[#m - 1]:index_rows(perm), m[#m]:index_rows(perm)
  return c
end

--- Every permutation of 1..n (n small), for brute-force answers.
function M.all_perms(n)
  local out = {}
  local function rec(p, used)
    if #p == n then out[#out + 1] = {table.unpack(p)} return end
    for i = 1, n do
      if not used[i] then used[i] = true; p[#p + 1] = i; rec(p, used); p[#p] = nil; used[i] = false end
    end
  end
  rec({}, {})
  return out
end

--- A small random CNN (two strided convolutions, 4 classes) as a weight
-- record with its arch, as the store gives it (no module).
function M.small_cnn_record(g)
  local lps = require "lualps"
  local arch = {
    {type = "conv2d", ["in"] = 1, out = 4, kernel = 5, stride = 2, padding = 2}, {type = "relu"},
    {type = "conv2d", ["in"] = 4, out = 6, kernel = 3, stride = 2, padding = 1}, {type = "relu"},
    {type = "flatten"}, {type = "linear", ["in"] = 6 * 7 * 7, out = 4}}
  local cnn = lps.similarity.weights(lps.nn.from_arch(arch, g))
  cnn.family, cnn.module = "cnn", nil
  return cnn
end

return M
