-- Seed corpus for fuzz_modelset: small valid ModelSet images of every shape
-- the reader meets (codecs, no index, torn tail, empty, metadata only).
-- Usage: lua5.4 tests/fuzz/make_modelset_seeds.lua DIR
local lps = require "lualps"
local MS = lps.modelset
local dir = assert(arg[1], "usage: make_modelset_seeds.lua DIR")
os.execute("mkdir -p " .. dir)
local function read(p) local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s end
local function write(name, s) local f = assert(io.open(dir .. "/" .. name, "wb")); f:write(s); f:close() end
local tmp = os.tmpname()
local function build(name, fill, opts)
  opts = opts or {}
  opts.overwrite = true
  opts.sync = false
  local ms = MS.create(tmp, opts)
  fill(ms)
  ms:close()
  local s = read(tmp)
  write(name, s)
  return s
end
local g = lps.generator(1)
build("empty", function() end)
build("one_shuffle", function(ms)
  ms:append_tensors({{name = "0.weight", tensor = lps.randn(4, 5, g)}, {name = "0.bias", tensor = lps.randn(4, g)}}, {id = 1, task = "t1"})
end)
local mixed = build("mixed_codecs", function(ms)
  ms:append_tensors({{name = "w", tensor = lps.randn(3, 2, 2, g), codec = "plain"}}, {id = "a"})
  ms:append_tensors({{name = "w", tensor = lps.randn(8, g), codec = "bf16"}, {name = "e", tensor = lps.zeros(0, 2)}}, {id = "b"})
  ms:append_tensors({}, {note = "metadata only"})
end, {codec = "plain", level = 1})
build("bf16_default", function(ms)
  ms:append_tensors({w = lps.randn(2, 3, 2, 2, g)}, {x = {1, 2, {y = true}}})
end, {codec = "bf16"})
-- without the index (a writer that never closed), and torn in the last record
local nt = mixed:sub(1, #mixed - 32 - 16 - 3 * 48)
write("no_index", nt)
write("torn_tail", nt:sub(1, #nt - 7))
os.remove(tmp)
