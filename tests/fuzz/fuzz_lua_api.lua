--- fuzz_lua_api.lua: the Lua API under hostile arguments.
--   lua5.4 tests/fuzz/fuzz_lua_api.lua [--seed N] [--seconds S] [--calls N] [--log FILE] [--quiet] [--stats]
--   make fuzz-lua [FUZZ_LUA_SECONDS=60] [FUZZ_SEED=0]   (against the ASan+UBSan build)
-- Calls the C-backed functions of lualps.core (and its private tables _nn,
-- _lps, _eval, ...), the methods and metamethods of its objects (tensors,
-- modules, optimizers, generators, model sets, glyph renderers) and the
-- functions of the Lua modules that wrap them, each with a random argument
-- list drawn from a pool of hostile values (nil, booleans, empty and huge
-- strings, extreme integers, NaN/inf/-0.0, empty, nested, cyclic tables and
-- tables with metatables, tensors with 0-sized dims and of every rank, row
-- views and transposes, the wrong userdata, closed objects) and of valid
-- small objects, each call under pcall. A Lua error is the expected outcome;
-- a crash, a sanitizer report or a hang is a finding. Deterministic for a
-- seed: before each call the log file (default fuzz_lua_api.log in the
-- sandbox) gets "<call number> <target> <arguments>" and is flushed, so the
-- last line names the call that crashed, and `--calls <that number>` with
-- the same seed replays up to it. Runs in a fresh directory under /tmp (the
-- sandbox; every path it passes is relative), printed at the start.
-- Valid calls seed each target (the table `seeds`, and the arguments the
-- wrappers pass to the private C functions while the seeds and a small
-- similarity network run); most calls mutate one that ran without error,
-- which reaches past the first argument checks. --stats lists the targets
-- no call got through. The library's own Lua is called too, its arguments
-- capped (integers above 64 in them become 64; epochs 2, steps 5, ...):
-- set_num_threads (the count put back to 1 or 2 after each call), the
-- data sets (fashion_mnist from small IDX files written here, some
-- corrupt, never a real data set; glyphs and digits, 1 or 2 images per
-- class), paired_bootstrap, modelset.merge (every set it writes verifies
-- at the end, as every set made here), the similarity module (networks,
-- similarity objects with and without a hybrid and a prior, weights,
-- record, wrap, load, train and train_network, probe matching, priors,
-- templates) and small helpers of util and the benchmark (those called for
-- crashes only: their messages are not judged). Left out: hybrid.fit,
-- the benchmark's protocols, builds and reports (they train and read whole
-- sets and data sets), the networks' and the hybrid's internal steps.
-- A Lua error is the expected outcome, but one raised from inside the
-- library's Lua in Lua's own words ("attempt to index a nil value", "bad
-- argument #1 to 'for iterator'") names neither the operation nor the
-- argument: those are counted, and but for --quiet the first of each
-- target is listed at the end.
-- The last line: "fuzz_lua_api: N calls, M errors raised (K without the
-- operation's name), 0 crashes".

local parser = require("argparse")("fuzz_lua_api.lua", "The Lua API under hostile arguments")
parser:option("--seed", "the seed: the same seed makes the same calls", "1"):convert(math.tointeger)
parser:option("--seconds", "how long to call", "20"):convert(math.tointeger)
parser:option("--calls", "stop after this many calls (replaying a crash)", tostring(math.maxinteger))
  :convert(math.tointeger)
parser:option("--log", "the call log (default fuzz_lua_api.log in the sandbox)")
parser:flag("--quiet", "print the last line only")
parser:flag("--stats", "list the targets no call got through")
parser:flag("--in-sandbox", "(internal) already running in the sandbox directory")
local opts = parser:parse()
opts.sandboxed = opts.in_sandbox

-- Re-run inside a fresh directory, so that every relative path the
-- calls write (model sets, safetensors files) lands there.
local script = arg[0]
if not opts.sandboxed then
  local root = script:match("^(.*)/tests/fuzz/[^/]*$") or "."
  if root:sub(1, 1) ~= "/" then root = os.getenv("PWD") .. "/" .. root end
  local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
  -- helper commands run without a preloaded sanitizer runtime (the
  -- shell's own leaks at exit would be reported); lua gets it back
  local preload = os.getenv("LD_PRELOAD")
  local function plain(cmd) return "exec env -u LD_PRELOAD sh -c " .. q(cmd) end
  local p = io.popen(plain("mktemp -d /tmp/fuzz_lua_api.XXXXXX"))
  local dir = p:read("l"); p:close()
  local lua = arg[-1] or "lua5.4"
  local cpath = os.getenv("LUA_CPATH") or ""
  -- relative C paths of the caller (./build/asan/?.so) made absolute
  cpath = cpath:gsub("%./", root .. "/")
  local cmd = ("cd %s && %sLUA_PATH=%s LUA_CPATH=%s %s %s/tests/fuzz/fuzz_lua_api.lua --in-sandbox --seed %d --seconds %d --calls %d%s%s")
    :format(q(dir), preload and ("LD_PRELOAD=" .. q(preload) .. " ") or "", q(root .. "/?.lua;" .. root .. "/?/init.lua;;"),
      q((cpath ~= "" and cpath .. ";" or "") .. root .. "/?.so;;"), lua, q(root), opts.seed, opts.seconds, opts.calls,
      (opts.quiet and " --quiet" or "") .. (opts.stats and " --stats" or ""), opts.log and (" --log " .. q(opts.log)) or "")
  if not opts.quiet then io.stderr:write("fuzz_lua_api: sandbox ", dir, "\n") end
  local ok, how, code = os.execute(plain(cmd))
  if ok then os.execute(plain("rm -rf " .. q(dir))) end
  if not ok then
    io.stderr:write(("fuzz_lua_api: CRASH (%s %s); the log: %s/%s\n"):format(how, code, dir,
      opts.log or "fuzz_lua_api.log"))
  end
  os.exit(ok and 0 or 1)
end

local lps = require "lualps"
local core = lps.core
core.set_num_threads(1)
math.randomseed(opts.seed)
local R = math.random

local log = assert(io.open(opts.log or "fuzz_lua_api.log", "w"))

-- ------------------------------------------------------------ describing values
local function describe(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" then
    if #v > 60 then return ("string(%d bytes)"):format(#v) end
    return ("%q"):format(v)
  elseif t == "number" then
    if math.type(v) == "integer" then
      if v == math.mininteger then return "math.mininteger" end
      return tostring(v)
    end
    if v ~= v then return "(0/0)" end
    if v == math.huge then return "math.huge" end
    if v == -math.huge then return "-math.huge" end
    if v == 0 and 1 / v < 0 then return "-0.0" end
    return ("%.17g"):format(v)
  elseif t == "table" then
    if depth > 2 then return "{...}" end
    local parts, n, ks = {}, 0, {}
    for k in next, v do ks[#ks + 1] = k end -- sorted: the same log in every run
    table.sort(ks, function(a, b)
      if type(a) ~= type(b) then return type(a) < type(b) end
      if type(a) == "number" or type(a) == "string" then return a < b end
      return false
    end)
    for _, k in ipairs(ks) do
      local x = v[k]
      n = n + 1
      if n > 8 then parts[#parts + 1] = "..."; break end
      if x == v then parts[#parts + 1] = "[" .. describe(k, 3) .. "]=<self>"
      else parts[#parts + 1] = "[" .. describe(k, depth + 1) .. "]=" .. describe(x, depth + 1) end
    end
    return (getmetatable(v) and "mt" or "") .. "{" .. table.concat(parts, ",") .. "}"
  elseif t == "userdata" then
    local ok, s = pcall(tostring, v)
    s = ok and s or "<userdata>"
    s = s:gsub("\n.*", "")
    if #s > 80 then s = s:sub(1, 80) .. "..." end
    return "<" .. s .. ">"
  end
  return tostring(v)
end

local function describe_args(args, n)
  local parts = {}
  for i = 1, n do parts[i] = describe(args[i]) end
  return table.concat(parts, ", ")
end

-- ------------------------------------------------------------ valid objects
local function try(f, ...) local ok, v = pcall(f, ...); if ok then return v end return nil end

local nn = lps.nn
local g0 = lps.generator(7)

local archs = {
  {{type = "linear", ["in"] = 4, out = 3}, {type = "relu"}, {type = "linear", ["in"] = 3, out = 2}},
  {{type = "input", shape = {1, 6, 6}}, {type = "conv2d", ["in"] = 1, out = 2, kernel = 3, stride = 1, padding = 1},
    {type = "relu"}, {type = "maxpool2d", kernel = 2, stride = 2}, {type = "flatten"},
    {type = "linear", ["in"] = 18, out = 3}},
  '[{"type":"residual","body":[{"type":"linear","in":3,"out":3}]}]',
  '[{"type":"linear","in":2,"out":2}]',
  {{type = "conv2d", ["in"] = 2, out = 2, kernel = 1}, {type = "batchnorm2d", features = 2}},
}

local tensor_makers = {
  function() return lps.zeros(0) end,
  function() return lps.zeros(0, 3) end,
  function() return lps.zeros(3, 0) end,
  function() return lps.zeros(2, 0, 2, 2) end,
  function() return lps.ones(1) end,
  function() return lps.ones(1, 1) end,
  function() return lps.randn(2, 3, g0) end,
  function() return lps.randn(3, 4, g0) end,
  function() return lps.randn(4, 3, g0) end,
  function() return lps.randn(5, 4, g0) end,
  function() return lps.randn(2, 1, 6, 6, g0) end,
  function() return lps.randn(2, 2, 3, 3, g0) end,
  function() return lps.randn(3, 2, 2, g0) end,
  function() return lps.arange(10) end,
  function() return lps.tensor{1, 2, 1} end,
  function() return lps.tensor{0, -1, 3} end,
  function() return lps.tensor{{1, 0}, {0, 1}} end,
  function() return lps.tensor{0 / 0, math.huge, -math.huge} end,
  function() return lps.full(3, 3, 0 / 0) end,
  function() return lps.randn(6, 3, g0):rows(2, 4) end,
  function() return lps.randn(6, 3, g0):rows(3) end,
  function() return lps.randn(3, 5, g0):t() end,
  function() return lps.randn(4, 6, g0):reshape(2, -1) end,
  function() return lps.randn(4, 6, g0)[2] end,
  function() local t = lps.randn(2, 2, g0); t:close(); return t end,
}

local module_makers = {
  function() return nn.linear(4, 3, g0) end,
  function() return nn.linear(3, 2, {bias = false, generator = g0}) end,
  function() return nn.mlp{4, 3, 2} end,
  function() return nn.conv2d(1, 2, 3, {generator = g0}) end,
  function() return nn.maxpool2d(2) end,
  function() return nn.flatten() end,
  function() return nn.relu() end,
  function() return nn.from_arch(archs[2], g0) end,
  function() return nn.from_arch(archs[3], g0) end,
  function() return nn.from_arch(archs[5], g0) end,
  function() return nn.layer("tanh") end,
  function() return nn.sequential{} end,
  function() local m = nn.linear(2, 2); m:close(); return m end,
  function() return nn.sequential{nn.linear(4, 3), nn.relu(), nn.linear(3, 2)} end,
}

local optim_makers = {
  function() return lps.optim.sgd{lr = 0.1} end,
  function() return lps.optim.adam{} end,
  function() return lps.optim.sgd{lr = 0.1, momentum = 0.9} end,
  function() local o = lps.optim.adam{}; o:close(); return o end,
}

local ms_counter = 0
local function new_modelset(kind)
  ms_counter = ms_counter + 1
  local path = ("ms%d.lpsm"):format(ms_counter)
  local ms = lps.modelset.create(path)
  if kind ~= "empty" then
    ms:append(nn.mlp{4, 3, 2}, {id = "a", task = 1})
    ms:append(nn.linear(3, 2), {id = "b", task = 2})
  end
  if kind == "closed" then ms:close() end
  if kind == "reopened" then ms:close(); ms = lps.modelset.open(path) end
  return ms
end
local modelset_makers = {
  function() return new_modelset("full") end,
  function() return new_modelset("empty") end,
  function() return new_modelset("closed") end,
  function() return new_modelset("reopened") end,
}

local glyphs_obj = try(function() return core._glyphs.open() end)

local function pick(list) return list[R(#list)] end

local function valid_bytes()
  local k = R(4)
  if k == 1 then return (try(lps.safetensors.encode, {w = lps.randn(2, 3, g0), b = lps.zeros(3)}) or "") end
  if k == 2 then
    local s = try(lps.safetensors.encode, {w = lps.randn(2, 3, g0)}) or ""
    local i = R(math.max(#s, 1))
    return s:sub(1, i - 1) .. string.char(R(0, 255)) .. s:sub(i + 1)
  end
  if k == 3 then
    local ms = try(new_modelset, "full")
    if ms then
      local p = ms:path(); ms:close()
      local f = io.open(p, "rb"); local s = f:read("a"); f:close()
      if R(2) == 1 then local i = R(#s); s = s:sub(1, i) end
      return s
    end
    return ""
  end
  return '{"__metadata__":{},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'
end

-- Fresh tables every time: a call may store into the tables it is given
-- (t[k] = v), and a shared one would keep objects (an open set) alive.
local function cyclic() local c = {}; c[1] = c; c.self = c; return c end
local function with_mt()
  return setmetatable({}, {__index = function() error("index metamethod") end, __len = function() return 3 end})
end
local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in next, v do c[k] = deep_copy(x) end
  return c
end

local scalars = {
  function() return nil end, function() return true end, function() return false end,
  function() return 0 end, function() return 1 end, function() return 2 end, function() return 3 end,
  function() return -1 end, function() return -2 end, function() return 2 ^ 31 // 1 end,
  function() return 2 ^ 31 // 1 - 1 end, function() return 2 ^ 32 // 1 end,
  function() return math.maxinteger end, function() return math.mininteger end,
  function() return 1 << 40 end, function() return 1 << 20 end,
  function() return 0 / 0 end, function() return math.huge end, function() return -math.huge end,
  function() return -0.0 end, function() return 0.5 end, function() return 1e-30 end, function() return 1e30 end,
  function() return 1.5 end, function() return 2.0 end, function() return R(0, 9) end,
  function() return "" end, function() return "x" end, function() return "relu" end,
  function() return "linear" end, function() return "sgd" end, function() return "adam" end,
  function() return "r" end, function() return "w" end, function() return "a" end,
  function() return "train" end, function() return "raw" end, function() return "cka" end,
  function() return "\0" end, function() return string.rep("A", 1 << 16) end,
  function() return "nofile.lpsm" end, function() return "out.safetensors" end,
  function() return "[" end, function() return "[]" end, function() return "{}" end,
  function() return '[{"type":"flatten"}]' end, function() return deep_copy(pick(archs)) end,
  function() return '[{"type":"linear","in":0,"out":0}]' end,
  function() return '[{"type":"conv2d","in":1,"out":1,"kernel":0}]' end,
  function() return valid_bytes() end,
}

local tables = {
  function() return {} end, function() return {{}} end, function() return {{{}}} end,
  cyclic, with_mt,
  function() return {1, 2, 3} end, function() return {0} end, function() return {-1} end,
  function() return {1.5} end, function() return {0 / 0} end, function() return {math.maxinteger} end,
  function() return {1, nil, 3} end, function() return {"a", "b"} end, function() return {2, 3} end,
  function() return {0, 3} end, function() return {1, 4, 4} end, function() return {2, 1, 6, 6} end,
  function() return {lr = 0 / 0} end, function() return {lr = -1} end, function() return {kind = "sgd", lr = 0.1} end,
  function() return {kind = "adam"} end, function() return {k = 0} end, function() return {k = -1} end,
  function() return {generator = "x"} end, function() return {epochs = 0} end, function() return {batch = 0} end,
  function() return {type = "linear", ["in"] = 3, out = 2} end, function() return {{type = "relu"}} end,
  function() return {{type = "residual", body = {}}} end,
  function() return {{type = "input", shape = {}}, {type = "flatten"}} end,
  function() return {{type = "input", shape = {0, 0}}, {type = "flatten"}, {type = "linear", ["in"] = 0, out = 1}} end,
  function() return {x = lps.randn(4, 4, g0), y = lps.tensor{1, 2, 1, 2}} end,
  function() return {x = lps.randn(0, 4, g0), y = lps.tensor{}} end,
  function() return {w = lps.randn(2, 3, g0)} end,
  function() return {["0.weight"] = lps.randn(3, 4, g0), ["0.bias"] = lps.zeros(3)} end,
  function() return {pick(tensor_makers)(), pick(tensor_makers)()} end,
  function() return {lps.randn(3, 4, g0), lps.randn(2, 3, g0)} end,
  function() return {try(pick(module_makers)), try(pick(module_makers))} end,
  function() return {lps.tensor{1, 2}, lps.tensor{2, 1}} end,
  function() return {{1, 2}, {3}} end,
  function() return {{0.5, 0.5}, {1, 0}} end,
}

local objects = {
  function() return try(pick(tensor_makers)) end,
  function() return try(pick(tensor_makers)) end,
  function() return try(pick(tensor_makers)) end,
  function() return try(pick(module_makers)) end,
  function() return try(pick(module_makers)) end,
  function() return try(pick(optim_makers)) end,
  function() return lps.generator(R(0, 5)) end,
  function() return try(pick(modelset_makers)) end,
  function() return glyphs_obj end,
  function() return io.stdout end,
  function() return print end,
  function() return coroutine.create(print) end,
}

local function value()
  local r = R(100)
  if r <= 40 then return pick(scalars)() end
  if r <= 65 then return pick(tables)() end
  return pick(objects)()
end

-- A value near v: another of its kind, an edge, or anything.
local function mutate(v)
  local t = type(v)
  local r = R(10)
  if r <= 3 then return value() end
  if t == "number" then
    local c = {0, -1, 1, v + 1, v - 1, -v, v * 2, 0 / 0, math.huge, 1 << 31, math.maxinteger, math.mininteger, 0.5,
      v + 0.5}
    local ok, x = pcall(function() return c[R(#c)] end)
    return ok and x or 0
  elseif t == "table" then
    local c = {}
    for k, x in next, v do c[k] = x end
    local ks = {}
    for k in next, c do ks[#ks + 1] = k end
    table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
    if #ks > 0 then
      local k = ks[R(#ks)]
      local r2 = R(3)
      if r2 == 1 then c[k] = nil elseif r2 == 2 then c[k] = mutate(c[k]) else c[k] = value() end
    else
      c[R(3)] = value()
    end
    return c
  elseif t == "userdata" and core.is_tensor(v) then
    return try(pick(tensor_makers))
  elseif t == "string" then
    if #v > 0 and R(2) == 1 then
      local i = R(#v)
      return v:sub(1, i - 1) .. string.char(R(0, 255)) .. v:sub(i + 1)
    end
    return v:sub(1, R(0, #v))
  end
  return value()
end

local corpus = {}

-- Valid calls that start the corpus of each target they name (the
-- mutations then reach past the argument checks).
local function X(r, c) return lps.randn(r, c, g0) end
local function mlp() return nn.mlp{4, 3, 2} end
local function cnn() return nn.from_arch(archs[2], g0) end
local seeds = {
  ["core.zeros"] = {2, 3}, ["core.ones"] = {{2, 2}}, ["core.full"] = {2, 2, 1.5}, ["core.rand"] = {3, 2},
  ["core.randn"] = {2, 2, 2, 2}, ["core.arange"] = {5}, ["core.tensor"] = {{{1, 2}, {3, 4}}},
  ["core.matmul"] = function() return {X(2, 3), X(3, 4)} end,
  ["core.allclose"] = function() return {X(2, 3), X(2, 3)} end,
  ["Tensor:get"] = function() return {X(2, 3), 1, 2} end,
  ["Tensor:set"] = function() return {X(2, 3), 1, 2, 5} end,
  ["Tensor:copy"] = function() return {X(2, 3), X(3, 2)} end,
  ["Tensor:reshape"] = function() return {X(2, 3), 3, 2} end,
  ["Tensor:view"] = function() return {X(2, 3), -1} end,
  ["Tensor:rows"] = function() return {X(4, 3), 2, 3} end,
  ["Tensor:index_rows"] = function() return {X(4, 3), {1, 4, 2}} end,
  ["Tensor:matmul"] = function() return {X(2, 3), X(3, 2)} end,
  ["Tensor:add"] = function() return {X(2, 3), X(1, 3)} end,
  ["Tensor:add_"] = function() return {X(2, 3), X(2, 3), 2} end,
  ["Tensor:mul_"] = function() return {X(2, 3), lps.randn(3, g0)} end,
  ["Tensor:div"] = function() return {X(2, 3), X(2, 3)} end,
  ["Tensor:sum"] = function() return {X(2, 3), 2} end,
  ["Tensor:max"] = function() return {X(2, 3), 1} end,
  ["Tensor:min"] = function() return {X(2, 3), 2} end,
  ["Tensor:argmax"] = function() return {X(2, 3), 2} end,
  ["Tensor:norm"] = function() return {X(2, 3), 1} end,
  ["Tensor:size"] = function() return {X(2, 3), 2} end,
  ["Module:forward"] = function() return {mlp(), X(5, 4)} end,
  ["Module:backward"] = function() local m = mlp(); local x = X(5, 4); m:forward(x); return {m, x, X(5, 2)} end,
  ["Module:input_gradients"] = function() return {mlp(), X(2, 4), X(4, 2), 2} end,
  ["Module:output_shape"] = function() return {cnn(), {2, 1, 6, 6}} end,
  ["Module:load_named"] = function() local m = mlp(); return {m, m:state_dict()} end,
  ["Module:stat_prior"] = function() return {nn.from_arch(archs[5], g0), 0.5} end,
  ["Module:freeze"] = function() return {mlp(), true} end,
  ["Module:arch"] = function() return {cnn(), {input = {1, 6, 6}}} end,
  ["Optimizer:step"] = function() local m = mlp(); local p, gr = m:parameters(); return {lps.optim.adam{}, p, gr} end,
  ["Optimizer:lr"] = function() return {lps.optim.sgd{lr = 0.1}, 0.5} end,
  ["Generator:random"] = function() return {lps.generator(1), 10} end,
  ["Generator:state"] = function() local g = lps.generator(1); return {g, g:state()} end,
  ["ModelSet:meta"] = function() return {new_modelset("full"), 1} end,
  ["ModelSet:meta_json"] = function() return {new_modelset("full"), 2} end,
  ["ModelSet:info"] = function() return {new_modelset("full"), 1} end,
  ["ModelSet:describe"] = function() return {new_modelset("reopened"), 2} end,
  ["ModelSet:tensors"] = function() return {new_modelset("full"), 2} end,
  ["ModelSet:get"] = function() return {new_modelset("reopened"), 1} end,
  ["ModelSet:append"] = function() return {new_modelset("full"), cnn(), {id = "c"}} end,
  ["ModelSet:append_tensors"] = function() return {new_modelset("empty"), {w = X(2, 3)}, {id = "t"}} end,
  ["nn.linear"] = {3, 2}, ["nn.conv2d"] = {1, 2, 3, {stride = 2, padding = 1}}, ["nn.maxpool2d"] = {2},
  ["nn.mlp"] = {{4, 3, 2}}, ["nn.batchnorm1d"] = {3}, ["nn.batchnorm2d"] = {2}, ["nn.adaptive_avgpool2d"] = {1},
  ["nn.residual"] = function() return {nn.sequential{nn.linear(3, 3)}} end,
  ["nn.sequential"] = function() return {{nn.linear(4, 3), nn.relu()}} end,
  ["nn.layer"] = {"linear", {["in"] = 3, out = 2}}, ["nn.from_arch"] = function() return {deep_copy(archs[2])} end,
  ["core._nn.cross_entropy"] = function() return {X(3, 2), {1, 2, 1}} end,
  ["arch.check"] = function() return {deep_copy(archs[2])} end, ["arch.of_legacy_spec"] = {"mlp-4-3-2"},
  ["safetensors.encode"] = function() return {{w = X(2, 3)}, {a = "b"}} end,
  ["safetensors.decode"] = function() return {lps.safetensors.encode{w = X(2, 3)}} end,
  ["safetensors.decode_header"] = function() return {lps.safetensors.encode{w = X(2, 3)}} end,
  ["safetensors.write"] = function() return {"w.safetensors", {w = X(2, 3)}} end,
  ["safetensors.read"] = function() lps.safetensors.write("r.safetensors", {w = X(2, 3)}); return {"r.safetensors"} end,
  ["safetensors.header"] = function() lps.safetensors.write("h.safetensors", {w = X(2, 3)}); return {"h.safetensors"} end,
  ["safetensors.export"] = function() return {cnn(), "e.safetensors"} end,
  ["safetensors.import"] = function() lps.safetensors.export(cnn(), "i.safetensors"); return {"i.safetensors"} end,
  ["safetensors.mlp_layers"] = function() return {mlp():state_dict()} end,
  ["modelset.create"] = {"c.lpsm"},
  ["modelset.open"] = function() local ms = new_modelset("full"); local p = ms:path(); ms:close(); return {p, "a"} end,
  ["modelset.verify"] = function() local ms = new_modelset("full"); local p = ms:path(); ms:close(); return {p} end,
  ["modelset.repair"] = function() local ms = new_modelset("full"); local p = ms:path(); ms:close(); return {p} end,
  ["modelset.open_string"] = function() return {valid_bytes()} end,
  ["eval.features"] = function() return {"gram", mlp()} end,
  ["eval.feature_matrix"] = function() return {"raw", {mlp(), mlp()}} end,
  ["eval.similarity"] = function() return {"matching", mlp(), mlp()} end,
  ["eval.similarity_matrix"] = function() return {"stats", {mlp(), cnn()}, {mlp()}} end,
  ["eval.cka_layers"] = function() return {{X(5, 3), X(5, 2)}, {X(5, 4)}} end,
  ["eval.cka_features"] = function() return {{mlp(), mlp()}, X(5, 4)} end,
  ["eval.cka_layer_features"] = function() return {{{X(5, 3)}, {X(5, 2), X(5, 3)}}} end,
  ["eval.ridge_fit"] = function() return {X(5, 3), {1, 2, 3, 4, 5}} end,
  ["eval.ridge_predict"] = function() return {X(5, 3), {1, 2, 3, 4, 5}, X(2, 3), 0.1} end,
  ["eval.assign"] = function() return {X(3, 4), true} end,
  ["eval.weight_matching"] = function() return {mlp(), mlp(), {max_iter = 3}} end,
  ["eval.retrieval"] = function() return {X(3, 4), {1, 2, 1}, {1, 2, 1, 2}} end,
  ["eval.classify"] = function() return {X(3, 4), {1, 2, 1, 2}, {1, 2, 1}, {k = 3}} end,
  ["eval.kmeans"] = function() return {X(6, 2), 2, {restarts = 2}} end,
  ["eval.topk"] = function() return {X(5, 3), lps.randn(3, g0), 2} end,
  ["eval.standardize"] = function() return {X(5, 3)} end,
  ["eval.cosine_matrix"] = function() return {X(2, 3), X(4, 3)} end,
  ["eval.forward"] = function() return {mlp(), X(2, 4)} end,
  ["eval.hidden"] = function() return {cnn(), lps.randn(2, 36, g0)} end,
  ["eval.permute"] = function() return {mlp(), {{3, 1, 2}}} end,
  ["eval.sort_perm"] = function() return {mlp()} end,
  ["eval.linear_cka"] = function() return {X(5, 3), X(5, 2)} end,
  ["eval.symeig"] = function() return {lps.tensor{{2, 1}, {1, 2}}} end,
  ["eval.pca"] = function() return {X(5, 3), 2} end, ["eval.mds"] = function() return {X(4, 4), 2} end,
  ["eval.nmi"] = {{1, 2, 1, 2}, {1, 1, 2, 2}}, ["eval.ami"] = {{1, 2, 1, 2}, {1, 1, 2, 2}},
  ["eval.emi"] = {{1, 2, 1, 2}, {1, 1, 2, 2}},
  ["eval.kendall_tau"] = {{1, 2, 3}, {3, 1, 2}}, ["eval.spearman"] = {{1, 2, 3}, {3, 1, 2}},
  ["estimators.logme"] = function() return {X(6, 3), {1, 2, 1, 2, 1, 2}} end,
  ["estimators.leep"] = function() return {lps.tensor{{0.5, 0.5}, {1, 0}, {0, 1}}, {1, 2, 1}} end,
  ["estimators.knn"] = function() return {X(6, 3), {1, 2, 1, 2, 1, 2}, {k = 3}} end,
  ["estimators.linear_probe"] = function() return {X(6, 3), {1, 2, 1, 2, 1, 2}} end,
  ["estimators.softmax"] = function() return {X(3, 4)} end,
  ["estimators.outputs"] = function() return {mlp(), X(3, 4)} end,
  ["data.domain"] = function() return {lps.rand(2, 1, 28, 28), "invert"} end,
  ["data.select_classes"] = function() return {X(4, 3), lps.tensor{1, 2, 3, 1}, {1, 3}} end,
  ["data.fraction"] = function() return {X(4, 3), lps.tensor{1, 2, 3, 1}, 0.5, lps.generator(1)} end,
  ["data.split"] = function() return {X(4, 3), lps.tensor{1, 2, 3, 1}, 0.5, lps.generator(1)} end,
  ["Glyphs:render"] = function() return {glyphs_obj, lps.tensor{1, 53, 62}, 5} end,
  ["Glyphs:render_one"] = function() return {glyphs_obj, 3, core._glyphs.draw(lps.generator(1))} end,
  ["core._glyphs.draw"] = function() return {lps.generator(2)} end,
  ["core._nn.schedule_lr"] = function() return {{kind = "cosine", total = 10}, 0.1, 3} end,
  ["nn.train"] = function()
    return {mlp(), {x = X(6, 4), y = lps.tensor{1, 2, 1, 2, 1, 2}}, {optimizer = lps.optim.sgd{lr = 0.1},
      batch_size = 4, progress = false, validation = {x = X(2, 4), y = {1, 2}}}}
  end,
  ["nn.evaluate"] = function() return {mlp(), {x = X(6, 4), y = lps.tensor{1, 2, 1, 2, 1, 2}}, {batch_size = 4}} end,
  ["data.glyph"] = {"A"}, ["optim.cosine"] = {{total = 10}}, ["optim.step_lr"] = {{step = 2}},
}

-- ------------------------------------------------------------ targets
-- {name, function, self maker or nil}
local targets = {}
local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do if type(k) == "string" then ks[#ks + 1] = k end end
  table.sort(ks)
  return ks
end
-- added below with their arguments guarded (a thread count put back, the
-- data sets' sizes capped, no real data set read, merge's output path)
local skip = {
  ["core.set_num_threads"] = true, ["data.glyphs"] = true, ["data.digits"] = true,
  ["data.fashion_mnist"] = true, ["eval.paired_bootstrap"] = true, ["modelset.merge"] = true,
}
local function add_table(prefix, t)
  for _, k in ipairs(sorted_keys(t)) do
    local name = prefix .. "." .. k
    if type(t[k]) == "function" and not skip[name] then targets[#targets + 1] = {name, t[k]} end
  end
end
add_table("core", core)
for _, sub in ipairs(sorted_keys(core)) do
  if type(core[sub]) == "table" and sub:sub(1, 1) == "_" then add_table("core." .. sub, core[sub]) end
end
for _, m in ipairs{"nn", "arch", "safetensors", "modelset", "eval", "estimators", "optim", "data"} do
  add_table(m, lps[m])
end

local function add_methods(kind, maker, names)
  for _, k in ipairs(names) do targets[#targets + 1] = {kind .. ":" .. k, k, maker} end
end
local any_tensor = function() return try(pick(tensor_makers)) end
add_methods("Tensor", any_tensor, {"shape", "size", "dim", "numel", "get", "set", "totable", "clone", "copy",
  "reshape", "view", "t", "rows", "index_rows", "matmul", "add", "sub", "mul", "div", "add_", "sub_", "mul_",
  "div_", "fill_", "zero_", "exp", "log", "sqrt", "abs", "relu", "sigmoid", "tanh", "sum", "mean", "max", "min",
  "argmax", "norm", "refcount", "close"})
add_methods("Module", function() return try(pick(module_makers)) end, {"forward", "backward", "parameters",
  "zero_grad", "train", "evaluate", "eval", "freeze", "stat_prior", "batch_stats", "stat_prior_weight",
  "uses_batch_stats", "input_gradients", "output_shape", "is_training", "type", "num_parameters", "children",
  "arch", "named_parameters", "named_buffers", "close", "state_dict", "load_named", "clone"})
add_methods("Optimizer", function() return try(pick(optim_makers)) end,
  {"step", "lr", "reset", "steps", "config", "close"})
add_methods("Generator", function() return lps.generator(3) end, {"seed", "uniform", "normal", "random", "state"})
add_methods("ModelSet", function() return try(pick(modelset_makers)) end, {"meta", "meta_json", "info",
  "describe", "tensors", "get", "append_tensors", "append", "flush", "close", "state", "path", "iter", "models"})
if glyphs_obj then add_methods("Glyphs", function() return glyphs_obj end, {"render", "render_one"}) end
-- metamethods and operators
local ops = {
  {"__add", function(a, b) return a + b end}, {"__sub", function(a, b) return a - b end},
  {"__mul", function(a, b) return a * b end}, {"__div", function(a, b) return a / b end},
  {"__unm", function(a) return -a end}, {"__len", function(a) return #a end},
  {"__index", function(a, k) return a[k] end}, {"__newindex", function(a, k, v) a[k] = v end},
  {"__tostring", function(a) return tostring(a) end},
  {"__close", function(a) local mt = getmetatable(a); return mt and mt.__close and mt.__close(a) end},
}
for _, o in ipairs(ops) do
  targets[#targets + 1] = {"op " .. o[1], o[2], function()
    local r = R(4)
    if r <= 2 then return any_tensor() elseif r == 3 then return try(pick(module_makers)) end
    return try(pick(modelset_makers))
  end}
end

-- ------------------------------------------------------------ the Lua modules' own code
-- Targets whose work is Lua in the library (the thread count, the data
-- sets, eval's and the benchmark's helpers, model set merging, the
-- similarity module): their table and integer arguments are capped first
-- (cap: an integer above 64, nested up to 3 tables deep, becomes 64;
-- epochs 2, steps 5, ...), as the plain build really allocates and loops
-- over huge legal sizes; the C below them gets the huge ones directly.
local caps = {epochs = 2, steps = 5, reps = 200, per_class = 2, noise = 8, starts = 3, batch_size = 8,
  restarts = 3, max_iter = 20, batch = 8, width = 16, embed = 16, jitter = 3, smooth = 3, blur_bn = 3}
local function cap(v, key, depth)
  if math.type(v) == "integer" then
    local c = caps[key] or 64
    return v > c and c or v
  end
  if type(v) ~= "table" or getmetatable(v) ~= nil or depth > 3 then return v end
  local c = {}
  for k, x in next, v do c[k] = cap(x, k, depth + 1) end
  return c
end
local capped = {}
-- internal helpers (the benchmark's, the hybrid's pieces): called for
-- crashes and sanitizer reports, their messages not judged
local crash_only = {}
local function add_lua(name, f, self_maker)
  targets[#targets + 1] = {name, f, self_maker}
  capped[name] = true
end
local function add_lua_table(prefix, t, names, internal)
  for _, k in ipairs(names or sorted_keys(t)) do
    if type(t[k]) == "function" then
      add_lua(prefix .. "." .. k, t[k])
      crash_only[prefix .. "." .. k] = internal
    end
  end
end
-- after[name](): run after each call of the target (not part of it)
local after = {}

-- The thread count: any value, then back to 1 or 2 (the pool's workers
-- and BLAS run with what the calls after it get).
add_lua("core.set_num_threads", core.set_num_threads)
after["core.set_num_threads"] = function() core.set_num_threads(R(2)) end
seeds["core.set_num_threads"] = {2}

-- IDX files in the sandbox, gzip written here (stored blocks, CRC-32),
-- some of them corrupt; data.default_dir points at an empty directory, so
-- no call reads a real data set.
local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do c = (c & 1 == 1) and (0xEDB88320 ~ (c >> 1)) or (c >> 1) end
  crc_table[i] = c
end
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do c = crc_table[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8) end
  return c ~ 0xFFFFFFFF
end
local function gzip(s, bad_crc)
  local out, pos = {"\31\139\8\0\0\0\0\0\0\255"}, 1
  repeat
    local chunk = s:sub(pos, pos + 65534)
    pos = pos + #chunk
    out[#out + 1] = string.char(pos > #s and 1 or 0) .. string.pack("<I2I2", #chunk, ~#chunk & 0xFFFF) .. chunk
  until pos > #s
  out[#out + 1] = string.pack("<I4I4", crc32(s) ~ (bad_crc and 1 or 0), #s & 0xFFFFFFFF)
  return table.concat(out)
end
local function idx_images(n, r, c, magic, bytes)
  return string.pack(">I4I4I4I4", magic or 0x803, n, r, c) .. (bytes or string.rep("\127", n * r * c))
end
local function idx_labels(n, magic, bytes)
  if not bytes then
    local t = {}
    for i = 1, n do t[i] = string.char((i * 7) % 10) end
    bytes = table.concat(t)
  end
  return string.pack(">I4I4", magic or 0x801, n) .. bytes
end
-- each a directory as fashion_mnist reads one: {train images, train labels, test images, test labels}
local idx_sets = {
  {gzip(idx_images(3, 28, 28)), gzip(idx_labels(3)), gzip(idx_images(2, 28, 28)), gzip(idx_labels(2))},
  {gzip(idx_images(3, 28, 28)), gzip(idx_labels(2)), gzip(idx_images(0, 28, 28)), gzip(idx_labels(0))},
  {gzip(idx_images(2, 28, 28)), gzip(idx_labels(2, nil, "\0\12")), gzip(idx_images(1, 2, 2)), gzip(idx_labels(1))},
  {gzip(idx_images(2, 28, 28, 0x801)), gzip(idx_labels(2, 0x803)), gzip(idx_images(2, 0, 28)), gzip(idx_labels(2, 0x800))},
  {gzip(idx_images(1 << 28, 28, 28, nil, "")), gzip(idx_labels(1 << 28, nil, "")),
    gzip(idx_images(1 << 20, 4096, 4096, nil, "")), gzip(idx_labels(0xFFFFFFFF, nil, ""))},
  {gzip(idx_images(3, 28, 28)):sub(1, 200), gzip(idx_labels(3), true), idx_images(2, 28, 28), ""},
  {gzip(idx_images(2, 28, 28, nil, string.rep("\255", 100))), gzip(idx_labels(2)):sub(1, 12), "\31\139", gzip("")},
}
local idx_names = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz"}
local idx_files = {}
do
  local dirs = {"idx/none"}
  for k = 1, #idx_sets do dirs[#dirs + 1] = "idx/" .. k end
  os.execute("exec env -u LD_PRELOAD mkdir -p " .. table.concat(dirs, " "))
  for k, set in ipairs(idx_sets) do
    for j, bytes in ipairs(set) do
      local path = ("idx/%d/%s"):format(k, idx_names[j])
      local f = assert(io.open(path, "wb"))
      f:write(bytes)
      f:close()
      idx_files[#idx_files + 1] = path
    end
  end
  idx_files[#idx_files + 1] = "idx/1" -- a directory
end
lps.data.default_dir = "idx/none"
local real_data = os.getenv("LUALPS_DATA") ~= nil
scalars[#scalars + 1] = function() return pick(idx_files) end
scalars[#scalars + 1] = function() return "idx/" .. R(#idx_sets) end
seeds["core._nn.idx_images"] = {"idx/1/train-images-idx3-ubyte.gz"}
seeds["core._nn.idx_labels"] = {"idx/1/train-labels-idx1-ubyte.gz"}
add_lua("data.fashion_mnist", function(split, dir, ...)
  if not dir and real_data then dir = "idx/none" end -- $LUALPS_DATA would name a real one
  return lps.data.fashion_mnist(split, dir, ...)
end)
seeds["data.fashion_mnist"] = {"train", "idx/1"}
-- the letters and digits: a few images per class (the per_class cap)
for _, k in ipairs{"glyphs", "digits"} do -- (no per_class: 1, not the default 1000)
  add_lua("data." .. k, function(split, o, ...)
    if o == nil then o = {per_class = 1} end
    if type(o) == "table" and getmetatable(o) == nil and o.per_class == nil then
      local c = {per_class = 1}
      for key, v in next, o do c[key] = v end
      o = c
    end
    return lps.data[k](split, o, ...)
  end)
end
seeds["data.glyphs"] = {"test", {per_class = 1, classes = {"a", 2}}}
seeds["data.digits"] = {"train", {per_class = 1, seed = 3, classes = {0, 9}}}
seeds["data.domain"] = function() return {lps.rand(2, 1, 6, 6), pick(lps.data.domains)} end
seeds["data.randperm"] = function() return {5, lps.generator(2)} end

-- eval's Lua: the bootstrap (reps capped)
add_lua("eval.paired_bootstrap", lps.eval.paired_bootstrap)
seeds["eval.paired_bootstrap"] = {{0.5, 0.2, 0.9, 0 / 0}, {0.4, 0.3, 0.9, 0.1}, {1, 1, 2, 2}, {reps = 50, level = 0.9}}

-- merge: inputs the sets made here, the output a new set ("mg<k>.lpsm",
-- verified at the end as the others) or one of them (overwrite,
-- skip_existing), or anything
local merge_outs = {}
local function set_path()
  local ok, p = pcall(function()
    local ms = new_modelset(R(3) == 1 and "empty" or "full")
    local p = ms:path()
    if R(3) > 1 then ms:close() end -- sometimes still open for appending
    return p
  end)
  return ok and p or "nofile.lpsm"
end
add_lua("modelset.merge", function(out, inputs, opts, ...)
  if out == "new" then
    out = ("mg%d.lpsm"):format(#merge_outs + 1)
    merge_outs[#merge_outs + 1] = out
  elseif out == "set" then
    out = set_path()
  end
  return lps.modelset.merge(out, inputs, opts, ...)
end)
seeds["modelset.merge"] = function() return {"new", {set_path(), set_path()}, {skip_existing = true}} end
scalars[#scalars + 1] = function() return "new" end
scalars[#scalars + 1] = function() return "set" end
tables[#tables + 1] = function() return {set_path(), set_path()} end
tables[#tables + 1] = function() return {skip_existing = true, overwrite = R(2) == 1} end

-- util's plain helpers (their messages are Lua's own: called for crashes only)
add_lua_table("util", lps.util, {"finite", "fmt_time", "median", "memoize", "options", "read_file", "write_file"}, true)
-- the benchmark's small helpers (the protocols and builds train or read data sets)
add_lua_table("relation_prior", lps.relation_prior, {"effects", "z", "zsum", "coherence_scores", "tau"}, true)
add_lua_table("benchmark", lps.benchmark, {"mean_std"}, true)
add_lua_table("zoo", lps.zoo, {"check_tasks", "fingerprint", "parse_shard", "shard", "shuffled", "fnv1a"}, true)
add_lua_table("selection", lps.selection, {"rank", "funnel", "zsum"}, true)
add_lua_table("transfer", lps.transfer, {"overlap", "merge", "summary", "options"}, true)
add_lua_table("controls", lps.controls, {"drawn", "unit_labels"}, true)
local methods = require "lualps.bench.methods"
add_lua_table("methods", methods, {"features", "feature_head", "cka", "matching", "assignment_score",
  "template_matching", "probe_matching", "class_labels"}, true)
seeds["relation_prior.tau"] = {{1, 2, 3}, {3, 1, 2}}
seeds["relation_prior.z"] = {{1, 2, 3}}
seeds["relation_prior.zsum"] = {{1, 2, 3}, {3, 1, 2}}
seeds["selection.rank"] = {{0.5, 0.2, 0.9}, {0.7, 0.1, 0.8}}
seeds["zoo.parse_shard"] = {"2/3"}
seeds["benchmark.mean_std"] = {{{a = 1}, {a = 2}}}
seeds["methods.assignment_score"] = function() return {X(3, 3)} end
seeds["methods.template_matching"] = {{pool = 2}}
seeds["methods.probe_matching"] = {{dreams = {input_shape = {4}, steps = 2}}}

-- the similarity module: small networks and models (4 inputs; 784 for
-- template and probe matching's defaults; a 6x6 CNN)
local sim = lps.similarity
local S = {}
S.mlpnet = try(sim.network, {input_dim = 4, width = 4, embed = 3, classes = 2, seed = 3})
S.archnet = try(sim.network, {families = {"mlp", "cnn"}, input_dim = 4, width = 4, embed = 3, classes = 2, seed = 3,
  slots = {"first", "last", "head"}})
S.tnet = try(sim.network, {families = {"mlp", "cnn"}, input_dim = 36, width = 4, embed = 3, classes = 2, seed = 3,
  template_pool = 2, input_shape = {1, 6, 6}, slots = {"templates", "head"}, noise = 2})
local function wl(sizes)
  local t = {}
  for _, sz in ipairs(sizes) do t[#t + 1] = X(sz[2], sz[1]); t[#t + 1] = lps.randn(sz[2], g0) end
  return t
end
local cnn6 = function() return nn.from_arch({{type = "input", shape = {1, 6, 6}}, {type = "conv2d", ["in"] = 1,
  out = 2, kernel = 3, stride = 1, padding = 1}, {type = "relu"}, {type = "maxpool2d", kernel = 2, stride = 2},
  {type = "flatten"}, {type = "linear", ["in"] = 18, out = 2}}, g0) end
local sim_models = {
  function() return wl{{4, 5}, {5, 3}, {3, 2}} end,
  function() return wl{{4, 3}, {3, 2}} end,
  function() return wl{{36, 4}, {4, 2}} end,
  function() return wl{{784, 3}, {3, 2}} end,
  function() return sim.weights(cnn6()) end,
  function() return sim.weights(nn.mlp{4, 5, 2}) end,
  function() return nn.mlp{4, 3, 2} end,
  function() return cnn6() end,
  function() return nn.from_arch(archs[5], g0) end, -- batch norm, no head
  function() local m = wl{{4, 3}, {3, 2}}; m[1]:fill_(0 / 0); return m end,
  function() return {lps.randn(3, 4, g0), lps.randn(3, g0)} end, -- one layer
  function() return {["0.weight"] = X(3, 4), ["0.bias"] = lps.zeros(3), ["2.weight"] = X(2, 3), ["2.bias"] = lps.zeros(2)} end,
  function() local ms = new_modelset("reopened"); return (ms:tensors(1)) end,
  function() return {module = nn.mlp{4, 3, 2}} end,
}
local function sim_model() return try(pick(sim_models)) end
objects[#objects + 1] = sim_model
objects[#objects + 1] = sim_model
tables[#tables + 1] = function() return {sim_model(), sim_model()} end
tables[#tables + 1] = function() return {sim_model(), sim_model(), sim_model()} end
local function prior_state()
  return try(sim.prior.fit, {wl{{4, 5}, {5, 2}}, wl{{4, 3}, {3, 2}}, wl{{4, 6}, {6, 2}}, wl{{4, 2}, {2, 2}}},
    {0.5, 0.7, 0.6, 0.9}, {1, 1, 2, 2})
end
local function hybrid_state(net)
  return sim.hybrid_state({tm_pool = 2}, lps.randn(2, net.opts.embed, g0), {0.5, 0.1, 0.9})
end
local sim_makers = {
  function() return sim.wrap(S.mlpnet, {1, 2}) end,
  function() return sim.wrap(S.archnet, {"a", "b"}) end,
  function() return sim.wrap(S.archnet, {1, 2}, nil, prior_state()) end,
  function() return sim.wrap(S.tnet, {1, 2}, hybrid_state(S.tnet)) end,
  function() return sim.wrap(S.tnet, {1, 2}, hybrid_state(S.tnet), prior_state()) end,
}
local function a_sim() return try(pick(sim_makers)) end
objects[#objects + 1] = a_sim
local function a_net() return pick{S.mlpnet, S.archnet, S.tnet} end
objects[#objects + 1] = a_net
local function sim_set() return try(new_modelset, pick{"full", "reopened", "empty"}) end

add_lua_table("similarity", sim, {"network", "feature_head", "weights", "record", "wrap", "load", "hybrid_state",
  "chain_normalize", "train_network", "train"})
add_lua_table("similarity.probe", sim.probe)
add_lua_table("similarity.prior", sim.prior, {"targets", "features", "fit", "fit_zoo", "check", "predict", "combine"})
add_lua_table("similarity.hybrid", sim.hybrid, {"new"})
add_lua_table("similarity.hybrid", sim.hybrid, {"anchor", "anchor_bn", "check_probe", "choose_w", "combine",
  "gate", "group_z", "holdout", "model_gate", "probe_weights", "prototypes", "quantile", "tm_rows", "typicality",
  "typicality_gate"}, true)
add_lua_table("similarity.templates", require "lualps.similarity.templates", {"function_of"})
local function add_lua_methods(kind, maker, names)
  for _, k in ipairs(names) do add_lua(kind .. ":" .. k, k, maker) end
end
add_lua_methods("Sim", a_sim, {"embed", "embed_set", "similarity", "similarities", "nearest", "transferability",
  "select", "save", "set_models", "set_embeddings", "__tostring"})
add_lua_methods("Net", a_net, {"forward", "backward", "embed", "loss", "templates", "spec", "named_parameters",
  "parameters", "load_named", "zero_grad", "__tostring"})
add_lua_methods("Head", function() return try(sim.feature_head, {in_dim = 5, embed = 3, classes = 2}) end,
  {"prepare", "forward", "backward", "__tostring"})
add_lua_methods("Hybrid", function() return try(sim.hybrid.new, S.tnet, hybrid_state(S.tnet)) end,
  {"describe", "similarity", "rank", "warm"})
for _, k in ipairs{"directed", "scores"} do -- functions of the matcher (not methods)
  add_lua("Matcher." .. k, function(m, ...) return m[k](...) end,
    function() return try(sim.probe.matcher, {input_shape = {4}, steps = 2}) end)
end
crash_only["Method:similarity"] = true -- (the benchmark's, as methods.*)
add_lua_methods("Method", function()
  local ok, m = pcall(pick{function() return methods.template_matching{pool = 2} end,
    function() return methods.probe_matching{dreams = {input_shape = {4}, steps = 2}, probe = 0.5} end,
    function() return methods.features("stats", {pairwise = true}) end})
  return ok and m or nil
end, {"similarity"})
seeds["similarity.network"] = {{input_dim = 4, width = 4, embed = 3, classes = 2}}
seeds["similarity.feature_head"] = {{in_dim = 5, embed = 3, classes = 2}}
seeds["similarity.weights"] = function() return {nn.mlp{4, 3, 2}} end
seeds["similarity.record"] = function() return {new_modelset("reopened"), 1} end
seeds["similarity.wrap"] = function() return {S.mlpnet, {1, 2}} end
seeds["similarity.load"] = function() local s = sim.wrap(S.archnet, {1, 2}); s:save("sim.lpsm"); return {"sim.lpsm"} end
seeds["similarity.chain_normalize"] = function() return {wl{{4, 3}, {3, 2}}} end
seeds["similarity.train_network"] = function()
  return {sim.network{input_dim = 4, width = 4, embed = 3, classes = 2}, {wl{{4, 3}, {3, 2}}, wl{{4, 5}, {5, 2}}},
    {1, 2}, {epochs = 1, progress = false}}
end
seeds["similarity.train"] = function() return {new_modelset("reopened"), {1}, {input_dim = 4, width = 4,
  embed = 3, epochs = 1, progress = false}} end
seeds["similarity.probe.dreams"] = function() return {nn.mlp{4, 3, 2}, {input_shape = {4}, steps = 2}} end
seeds["similarity.probe.scores"] = function() return {{wl{{4, 3}, {3, 2}}}, {wl{{4, 5}, {5, 2}}},
  {input_shape = {4}, steps = 2}} end
seeds["similarity.probe.outputs"] = function() return {wl{{4, 3}, {3, 2}}, X(2, 4), {{0, 2}}, {input_shape = {4}}} end
seeds["similarity.probe.settings"] = {{steps = 3}}
seeds["similarity.probe.has_batch_norm"] = function() return {sim.weights(nn.from_arch(archs[5], g0))} end
seeds["similarity.prior.fit"] = function() return {{wl{{4, 5}, {5, 2}}, wl{{4, 3}, {3, 2}}, wl{{4, 6}, {6, 2}}},
  {0.5, 0.7, 0.6}, {1, 1, 2}} end
seeds["similarity.prior.predict"] = function() return {prior_state(), {wl{{4, 5}, {5, 2}}}} end
seeds["similarity.prior.combine"] = {{0.5, 0.2, 0.9}, {0.1, 0.3, 0.2}}
seeds["similarity.prior.check"] = function() return {prior_state(), "x"} end
seeds["similarity.prior.targets"] = {{"a", "b"}, {1, 2}, {a = {0.5, 0.6}, b = {0.7, 0.2}}, {1, 2}}
seeds["similarity.hybrid.new"] = function() return {S.tnet, hybrid_state(S.tnet)} end
seeds["similarity.hybrid.gate"] = {0.5, 0.1, 0.9}
seeds["similarity.hybrid.prototypes"] = function() return {X(4, 3), {1, 2, 1, 2}} end
seeds["similarity.hybrid.typicality"] = function() return {X(4, 3), X(2, 3)} end
seeds["similarity.hybrid.quantile"] = {{0.1, 0.5, 0.3}, 0.5}
seeds["similarity.hybrid.holdout"] = function() return {{1, 2, 3, 4}, {1, 1, 2, 2}, 0.5} end
seeds["similarity.hybrid.tm_rows"] = function() return {S.tnet, wl{{36, 4}, {4, 2}}, 2, "network"} end
seeds["similarity.templates.function_of"] = function() return {nn.mlp{4, 3, 2}} end
seeds["Sim:embed"] = function() return {sim.wrap(S.archnet, {1, 2}), wl{{4, 3}, {3, 2}}} end
seeds["Sim:similarity"] = function() return {sim.wrap(S.archnet, {1, 2}), wl{{4, 3}, {3, 2}}, nn.mlp{4, 5, 2}} end
seeds["Sim:nearest"] = function() return {sim.wrap(S.archnet, {1, 2}), new_modelset("full"), 1, 2} end
seeds["Sim:select"] = function() return {sim.wrap(S.archnet, {1, 2}, nil, prior_state()), new_modelset("full"), 1, 2} end
seeds["Sim:transferability"] = function() return {sim.wrap(S.archnet, {1, 2}, nil, prior_state()), {nn.mlp{4, 3, 2}}} end
seeds["Sim:embed_set"] = function() return {sim.wrap(S.archnet, {1, 2}), new_modelset("reopened"), {batch = 1}} end
seeds["Sim:save"] = function() return {sim.wrap(S.tnet, {1, 2}, hybrid_state(S.tnet), prior_state()), "s.lpsm"} end
seeds["Net:forward"] = function() return {S.archnet, {wl{{4, 3}, {3, 2}}, sim.weights(nn.mlp{4, 5, 2})}} end
seeds["Net:embed"] = function() return {S.tnet, {wl{{36, 3}, {3, 2}}, sim.weights(cnn6())}, 1} end
seeds["Net:templates"] = function() return {S.tnet, sim.weights(cnn6())} end
seeds["Net:loss"] = function() return {S.archnet, S.archnet:forward{wl{{4, 3}, {3, 2}}, wl{{4, 5}, {5, 2}}}, {1, 2}} end
seeds["Net:backward"] = function()
  local Y = S.archnet:forward{wl{{4, 3}, {3, 2}}, wl{{4, 5}, {5, 2}}}
  local _, dY = S.archnet:loss(Y, {1, 2})
  return {S.archnet, dY}
end
seeds["Head:prepare"] = function() return {sim.feature_head{in_dim = 5, embed = 3, classes = 2}, lps.randn(5, g0)} end
seeds["Head:backward"] = function()
  local h = sim.feature_head{in_dim = 5, embed = 3, classes = 2}
  local Y = h:forward{lps.randn(5, g0), lps.randn(5, g0)}
  local _, dY = h:loss(Y, {1, 2})
  return {h, dY}
end
seeds["similarity.prior.features"] = function() return {{wl{{4, 5}, {5, 2}}, sim.weights(cnn6())}} end
seeds["similarity.prior.fit_zoo"] = function()
  return {{wl{{4, 5}, {5, 2}}, wl{{4, 3}, {3, 2}}, wl{{4, 6}, {6, 2}}, wl{{4, 2}, {2, 2}}}, {"a", "b", "c", "d"},
    {1, 1, 2, 2}, {a = {[2] = 0.5}, b = {[2] = 0.6}, c = {0.7}, d = {0.4}}}
end
seeds["Net:load_named"] = function() return {S.mlpnet, S.mlpnet:named_parameters()} end
seeds["Hybrid:similarity"] = function() return {sim.hybrid.new(S.tnet, hybrid_state(S.tnet)), {wl{{36, 3}, {3, 2}}},
  {sim.weights(cnn6()), wl{{36, 4}, {4, 2}}}} end
seeds["Hybrid:rank"] = seeds["Hybrid:similarity"]
seeds["Hybrid:warm"] = function() local s = seeds["Hybrid:similarity"](); s[4] = function() end; return s end
seeds["similarity.hybrid.group_z"] = function() local x = {} return {X(2, 3), {x, {}}, {{}, x, {}}, {true, false, false}} end
seeds["Matcher.scores"] = function() return {sim.probe.matcher{input_shape = {4}, steps = 2},
  {wl{{4, 3}, {3, 2}}}, {nn.mlp{4, 5, 2}}} end
seeds["Method:similarity"] = function() return {methods.template_matching{pool = 2}, {wl{{784, 3}, {3, 2}}},
  {wl{{784, 4}, {4, 3}}}} end

-- ------------------------------------------------------------ the loop
-- Errors a user cannot act on: Lua's own messages (attempt to index a nil
-- value, bad argument to 'for iterator', ...) raised inside the library's
-- Lua code, which name neither the operation nor the argument. Counted
-- and, but for --quiet, the first of each target listed at the end.
local unnamed, unnamed_count = {}, 0
local note_unnamed
local lua_phrases = {"^attempt to ", "^table index is ", "^number has no integer", "^invalid ", "^wrong number ",
  "^'for' ", "^string length overflow", "^stack overflow"}
-- Lua's own functions: a bad argument to one of them names neither (one of
-- the C functions' names their argument)
local builtins = {}
for _, k in ipairs{"for iterator", "format", "error", "rawget", "rawset", "rawlen", "concat", "insert", "remove",
  "ipairs", "pairs", "next", "setmetatable", "getmetatable", "tostring", "tonumber", "unpack", "sort", "move",
  "select", "rep", "sub", "match", "gsub", "find", "floor", "ceil", "tointeger", "max", "min", "abs", "pack",
  "?"} do builtins[k] = true end
note_unnamed = function(name, err, call)
  if type(err) ~= "string" then return end
  local where, msg = err:match("^([^\n]-lualps/[%w_/]+%.lua:%d+): (.*)$")
  if not where then return end
  local fname = msg:match("^bad argument #%d+ to '([^']*)'")
  for _, ph in ipairs(lua_phrases) do
    if (fname and builtins[fname]) or msg:match(ph) then
      unnamed_count = unnamed_count + 1
      if not unnamed[name] then unnamed[name] = ("%d %s"):format(call, err:gsub("\n.*", "")) end
      return
    end
  end
end
-- A Lua-side budget per call: a wrapper looping for long raises instead.
local budget_hit = false
local function budget_hook() budget_hit = true; error("fuzz: instruction budget", 2) end

for _, tg in ipairs(targets) do
  local sd = seeds[tg[1]]
  if sd then
    local ok, list = pcall(function() return type(sd) == "function" and sd() or sd end)
    if ok then
      local copy = {n = 0}
      for i = 1, 8 do if list[i] ~= nil then copy[i] = list[i]; copy.n = i end end
      corpus[tg[1]] = {copy}
    elseif not opts.quiet then
      io.stderr:write("fuzz_lua_api: seed of ", tg[1], " failed: ", tostring(list), "\n")
    end
  end
end
for k in pairs(seeds) do
  local found = false
  for _, tg in ipairs(targets) do if tg[1] == k then found = true end end
  if not found and not opts.quiet then io.stderr:write("fuzz_lua_api: no target ", k, "\n") end
end

-- Record the private C functions' arguments while the seeds run and a
-- small similarity network trains a step: valid calls of _lps, _nn, _eval,
-- ... (their signatures are the wrappers' business) join the corpus.
do
  local saved_fns = {}
  local function snapshot(v)
    if core.is_tensor(v) then return try(v.clone, v) or v end
    return v
  end
  for _, tg in ipairs(targets) do
    local sub, k = tg[1]:match("^core%.(_[%w_]+)%.([%w_]+)$")
    if sub then
      local tbl, orig, name = core[sub], core[sub][k], tg[1]
      saved_fns[#saved_fns + 1] = {tbl, k, orig}
      tbl[k] = function(...)
        local list = corpus[name] or {}
        corpus[name] = list
        if #list < 4 then
          local copy = {n = select("#", ...)}
          for i = 1, copy.n do copy[i] = snapshot((select(i, ...))) end
          list[#list + 1] = copy
        end
        return orig(...)
      end
    end
  end
  for _, tg in ipairs(targets) do
    local list = corpus[tg[1]]
    if list and not tg[3] and type(tg[2]) == "function" then pcall(tg[2], table.unpack(list[1], 1, list[1].n)) end
  end
  pcall(function()
    local net = lps.similarity.network{families = {"mlp", "cnn"}, input_dim = 4, width = 4, embed = 3, classes = 2,
      seed = 3, slots = {"first", "last", "head"}}
    local function w(sizes)
      local t = {}
      for _, sz in ipairs(sizes) do t[#t + 1] = X(sz[2], sz[1]); t[#t + 1] = lps.randn(sz[2], g0) end
      return t
    end
    local cnn6 = nn.from_arch({{type = "input", shape = {1, 6, 6}}, {type = "conv2d", ["in"] = 1, out = 2,
      kernel = 3, stride = 1, padding = 1}, {type = "relu"}, {type = "maxpool2d", kernel = 2, stride = 2},
      {type = "flatten"}, {type = "linear", ["in"] = 18, out = 2}}, g0)
    local models = {w{{4, 5}, {5, 3}, {3, 2}}, w{{4, 3}, {3, 3}, {3, 2}}, lps.similarity.weights(cnn6)}
    local labels = {1, 2, 1}
    local lo = {loss = "both", relations = lps.tensor{{0.9, 0.1}, {0.1, 0.8}}, relation_weight = 0.5, margin = 0.5}
    local _, dY = net:loss(net:forward(models), labels, lo)
    net:backward(dY)
    -- class templates (the functions of the models on noise)
    local tnet = lps.similarity.network{families = {"mlp", "cnn"}, input_dim = 36, width = 4, embed = 3,
      classes = 2, seed = 3, template_pool = 2, input_shape = {1, 6, 6}, slots = {"templates", "head"}}
    local tmodels = {lps.similarity.weights(nn.mlp{36, 5, 2}), lps.similarity.weights(cnn6)}
    _, dY = tnet:loss(tnet:forward(tmodels), {1, 2}, {loss = "xent"})
    tnet:backward(dY)
  end)
  for _, f in ipairs(saved_fns) do f[1][f[2]] = f[3] end
end

local calls, errors, t0 = 0, 0, os.time()
local next_check = 0
while calls < opts.calls do
  if calls >= next_check then
    if os.time() - t0 >= opts.seconds then break end
    next_check = calls + 20
  end
  calls = calls + 1
  local tg = targets[R(#targets)]
  local name, f, self_maker = tg[1], tg[2], tg[3]
  local n = R(0, 5)
  local args = {}
  local fn = f
  local self_given = not self_maker -- a method's first argument: an object of its kind
  local saved = corpus[name]
  if saved and R(10) <= 6 then
    -- mutate an argument list that ran without error: one or two values
    -- replaced, or one dropped or added (nearly valid calls reach past
    -- the first checks)
    local base = saved[R(#saved)]
    n = base.n
    for i = 1, n do args[i] = base[i] end
    for _ = 1, R(2) do
      local r = R(10)
      if r <= 7 and n > 0 then
        local i = R(n)
        if self_maker and i == 1 and R(2) == 1 then i = math.min(2, n) end
        args[i] = mutate(args[i])
      elseif r == 8 and n > 0 then
        n = n - 1
      elseif r == 9 and n > 1 then
        args[R(n)] = args[R(n)] -- aliasing: one object in two places
      else
        n = n + 1; args[n] = value()
      end
    end
    if self_maker then self_given = n >= 1 and args[1] == base[1] end
    if self_maker and type(f) == "string" then
      local ok, m = pcall(function() return args[1][f] end)
      fn = ok and m or nil
    end
  elseif self_maker then
    -- self: the right kind of object most of the time
    self_given = R(10) <= 8
    local self = self_given and self_maker() or value()
    if type(f) == "string" then
      local ok, m = pcall(function() return self[f] end)
      fn = ok and m or nil
    end
    args[1] = self
    for i = 2, n + 1 do args[i] = value() end
    n = n + 1
  else
    for i = 1, n do args[i] = value() end
  end
  -- the training loop: at most 2 epochs, no progress bar (a whole call
  -- stays short; the data are small)
  local oi = (name == "nn.train" and 3) or (name == "core._nn.train" and 5)
  if oi and type(args[oi]) == "table" then
    local o = {}
    for k, v in next, args[oi] do o[k] = v end
    if not (math.type(o.epochs) == "integer" and o.epochs <= 2) then o.epochs = 2 end
    if name == "nn.train" then o.progress = false else args[6] = nil; n = math.min(n, 5) end
    args[oi] = o
  end
  if capped[name] then for i = 1, n do args[i] = cap(args[i], nil, 0) end end
  log:write(calls, " ", name, "(", describe_args(args, n), ")\n")
  log:flush()
  if type(fn) == "function" then
    budget_hit = false
    debug.sethook(budget_hook, "", 20000000)
    local c0 = os.clock()
    local ok, err = pcall(fn, table.unpack(args, 1, n))
    debug.sethook()
    if after[name] then after[name]() end
    if not ok and not budget_hit and self_given and (not self_maker or args[1] ~= nil) and not crash_only[name] then note_unnamed(name, err, calls) end
    local dt = os.clock() - c0
    if dt > 2 and not opts.quiet then
      io.stderr:write(("fuzz_lua_api: slow call (%.1f s): %d %s(%s)\n"):format(dt, calls, name,
        describe_args(args, n)))
    end
    if not ok then
      errors = errors + 1
    else
      saved = saved or {}
      corpus[name] = saved
      local copy = {n = n}
      for i = 1, n do copy[i] = args[i] end
      if #saved < 8 then saved[#saved + 1] = copy else saved[R(8)] = copy end
    end
  else
    errors = errors + 1
  end
  if calls % 200 == 0 then collectgarbage() end
end
local reached = {}
for k in pairs(corpus) do reached[k] = true end
corpus, seeds = {}, nil -- the last references to open sets: the collector closes them
collectgarbage(); collectgarbage()
-- No call may damage a model set: every set made here (closed by now, by
-- the calls or the collector) verifies.
local damaged = 0
local function check_set(path, what)
  local ok, good, problems = pcall(lps.modelset.verify, path)
  if not ok or not good then
    damaged = damaged + 1
    io.stderr:write(("fuzz_lua_api: %s %s damaged: %s\n"):format(what, path,
      ok and describe(problems and problems[1]) or tostring(good)))
  end
end
for i = 1, ms_counter do check_set(("ms%d.lpsm"):format(i), "model set") end
for _, path in ipairs(merge_outs) do
  local f = io.open(path, "rb")
  if f then -- a merge that failed leaves no file
    f:close()
    check_set(path, "merged set")
  end
end
if damaged > 0 then os.exit(3) end
if opts.stats then
  -- the targets no call reached without error (past their checks)
  local never = {}
  for _, tg in ipairs(targets) do if not reached[tg[1]] then never[#never + 1] = tg[1] end end
  print("never ran without error: " .. table.concat(never, " "))
end
local un = sorted_keys(unnamed)
if #un > 0 and not opts.quiet then
  io.stderr:write(("fuzz_lua_api: %d errors without the operation's name, in %d targets (the first call of each):\n")
    :format(unnamed_count, #un))
  for _, k in ipairs(un) do io.stderr:write("  ", k, ": ", unnamed[k], "\n") end
end
log:write("done\n"); log:close()
print(("fuzz_lua_api: %d calls, %d errors raised (%d without the operation's name), 0 crashes (seed %d, %d targets, %d s)")
  :format(calls, errors, unnamed_count, opts.seed, #targets, os.time() - t0))
