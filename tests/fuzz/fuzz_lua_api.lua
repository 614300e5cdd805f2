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
-- no call got through. Not called: set_num_threads, the data sets
-- (glyphs, digits, fashion_mnist), paired_bootstrap, modelset.merge, the
-- similarity and benchmark modules' Lua (only the C calls they make); the
-- training loop runs at most 2 epochs on small data.
-- The last line: "fuzz_lua_api: N calls, M errors raised, 0 crashes".

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
-- never called: they change the process (threads), train for long, or
-- render whole data sets
local skip = {
  ["core.set_num_threads"] = true, ["data.glyphs"] = true, ["data.digits"] = true,
  ["data.fashion_mnist"] = true, ["eval.paired_bootstrap"] = true, ["modelset.merge"] = true,
  ["data.glyphs_clear_cache"] = true,
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

-- ------------------------------------------------------------ the loop
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
    if self_maker and type(f) == "string" then
      local ok, m = pcall(function() return args[1][f] end)
      fn = ok and m or nil
    end
  elseif self_maker then
    -- self: the right kind of object most of the time
    local self = R(10) <= 8 and self_maker() or value()
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
  log:write(calls, " ", name, "(", describe_args(args, n), ")\n")
  log:flush()
  if type(fn) == "function" then
    budget_hit = false
    debug.sethook(budget_hook, "", 20000000)
    local c0 = os.clock()
    local ok = pcall(fn, table.unpack(args, 1, n))
    debug.sethook()
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
for i = 1, ms_counter do
  local path = ("ms%d.lpsm"):format(i)
  local ok, good, problems = pcall(lps.modelset.verify, path)
  if not ok or not good then
    damaged = damaged + 1
    io.stderr:write(("fuzz_lua_api: model set %s damaged: %s\n"):format(path,
      ok and describe(problems and problems[1]) or tostring(good)))
  end
end
if damaged > 0 then os.exit(3) end
if opts.stats then
  -- the targets no call reached without error (past their checks)
  local never = {}
  for _, tg in ipairs(targets) do if not reached[tg[1]] then never[#never + 1] = tg[1] end end
  print("never ran without error: " .. table.concat(never, " "))
end
log:write("done\n"); log:close()
print(("fuzz_lua_api: %d calls, %d errors raised, 0 crashes (seed %d, %d targets, %d s)"):format(calls, errors,
  opts.seed, #targets, os.time() - t0))
