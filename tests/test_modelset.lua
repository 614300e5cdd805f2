-- ModelSet store: round trips, codecs, metadata, corruption, truncation,
-- absurd sizes, verify/repair, merge, locking, concurrent readers.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local MS = lps.modelset
local nn = lps.nn

-- ------------------------------------------------------------ helpers

-- CRC-32C (Castagnoli): an independent implementation of the spec's
-- checksum, used to craft files whose checksums are right but whose
-- fields lie.
local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do c = (c & 1) ~= 0 and (0x82F63B78 ~ (c >> 1)) or (c >> 1) end
  crc_table[i] = c
end
local function crc32(s, i, j)
  local c = 0xFFFFFFFF
  for k = i or 1, j or #s do c = crc_table[(c ~ s:byte(k)) & 0xFF] ~ (c >> 8) end
  return c ~ 0xFFFFFFFF
end

local function readfile(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local function writefile(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end
-- replace bytes at 0-based offset
local function patch(s, off, bytes) return s:sub(1, off) .. bytes .. s:sub(off + #bytes + 1) end
local function u32(s, off) return (string.unpack("<I4", s, off + 1)) end
-- recompute a record header's CRC (header at 0-based offset)
local function fix_rec_crc(s, off) return patch(s, off + 60, string.pack("<I4", crc32(s, off + 1, off + 60))) end

-- after patching record headers: copy their checksums into the index and
-- recompute the index and trailer checksums, so only the patched field lies
local function fix_index(s)
  local tr = #s - 32
  local at, count = string.unpack("<I8I8", s, tr + 9)
  for i = 0, count - 1 do
    local e = at + 16 + 48 * i
    local off = string.unpack("<I8", s, e + 1)
    s = patch(s, e + 24, string.pack("<I4", u32(s, off + 60)))
  end
  s = patch(s, tr + 24, string.pack("<I4", crc32(s, at + 1, tr)))
  return patch(s, tr + 28, string.pack("<I4", crc32(s, tr + 1, tr + 28)))
end

local function bits(t)
  local out = {}
  local flat = t:reshape(-1)
  for i = 1, flat:numel() do out[i] = string.pack("<f", flat[i]) end
  return table.concat(out)
end
local assert_bit_exact = T.assert_same_bits

local function specials()
  local t = lps.tensor{0, -0.0, 1, -1, 1 / 0, -1 / 0, 3.4028234663852886e38, 1.1754943508222875e-38,
                       1.401298464324817e-45, -2.5e-40, 0.1, 123456.789}
  return t
end

-- A small set: record k has tensors a (2x3) and b (4), meta {id=k}.
local function small_set(path, n, opts)
  local ms = MS.create(path, opts)
  local data = {}
  for k = 1, n do
    local g = lps.generator(k)
    local a, b = lps.randn(2, 3, g), lps.randn(4, g)
    data[k] = {a = a, b = b}
    ms:append_tensors({{name = "a", tensor = a}, {name = "b", tensor = b}}, {id = k, task = "t" .. k % 2})
  end
  ms:close()
  return data
end

local function has_problem(problems, pred)
  for _, p in ipairs(problems) do if pred(p) then return true end end
  return false
end
local function problems_text(problems)
  local t = {}
  for _, p in ipairs(problems) do t[#t + 1] = (p.record and ("#" .. p.record .. " ") or "") .. p.message end
  return table.concat(t, "\n")
end

-- ----------------------------------------------------------- round trips

TestRoundTrip = {}

function TestRoundTrip:tearDown() T.cleanup() end

function TestRoundTrip:test_lossless_codecs_bit_exact()
  for _, codec in ipairs{"shuffle", "plain"} do
    local p = T.tmpname(".lpsm")
    local ms = MS.create(p, {codec = codec, overwrite = true})
    local g = lps.generator(7)
    local inputs = {
      {name = "0.weight", tensor = lps.randn(64, 78, g)},
      {name = "0.bias", tensor = lps.randn(64, g) * 1e-3},
      {name = "conv", tensor = lps.randn(2, 3, 4, 5, g)},
      {name = "cube", tensor = lps.rand(3, 4, 5, g)},
      {name = "empty", tensor = lps.zeros(0, 3)},
      {name = "special", tensor = specials()},
    }
    lu.assertEquals(ms:append_tensors(inputs, {codec = codec}), 1)
    ms:close()
    local r <close> = MS.open(p)
    lu.assertEquals(#r, 1)
    local map, names = r:tensors(1)
    lu.assertEquals(#names, #inputs)
    for k, e in ipairs(inputs) do
      lu.assertEquals(names[k], e.name) -- stored order kept
      assert_bit_exact(map[e.name], e.tensor, codec .. " " .. e.name)
    end
    for _, d in ipairs(r:describe(1)) do lu.assertEquals(d.codec, codec) end
    lu.assertEquals(r:meta(1), {codec = codec})
  end
end

function TestRoundTrip:test_bf16_error_bound_and_rounding()
  local p = T.tmpname(".lpsm")
  local ms = MS.create(p)
  local g = lps.generator(3)
  local x = lps.randn(1000, g)
  for i = 1, 1000 do x[i] = x[i] * 10 ^ ((i % 13) - 6) end
  -- halfway cases round to even; exact bf16 values stay exact
  local ties = lps.tensor{1 + 2 ^ -8, 1 + 3 * 2 ^ -8, 1.5, -2, 0.15625, 1 / 0, -1 / 0, 0, 3.4e38}
  ms:append_tensors({{name = "x", tensor = x, codec = "bf16"}, {name = "ties", tensor = ties}},
    {}, {codec = "bf16"})
  ms:append_tensors({{name = "x", tensor = x}}) -- default stays lossless
  ms:close()
  local r <close> = MS.open(p)
  lu.assertEquals(r:info(1).codecs, {"bf16"})
  lu.assertEquals(r:info(2).codecs, {"shuffle"})
  lu.assertEquals(r:describe(1)[1].codec, "bf16")
  local y = r:tensors(1).x
  for i = 1, 1000 do
    local a, b = x[i], y[i]
    lu.assertTrue(math.abs(a - b) <= 2 ^ -8 * math.abs(a), string.format("x=%g y=%g", a, b))
  end
  lu.assertEquals(r:tensors(1).ties:totable(), {1, 1 + 2 ^ -6, 1.5, -2, 0.15625, 1 / 0, -1 / 0, 0, 1 / 0})
  assert_bit_exact(r:tensors(2).x, x, "default codec")
  -- bf16 holds 16 bits per value: the stored frame is about half of shuffle's
  lu.assertTrue(r:describe(1)[1].stored_bytes < 0.6 * r:describe(2)[1].stored_bytes)
end

function TestRoundTrip:test_nan_survives()
  local p = T.tmpname(".lpsm")
  local ms = MS.create(p)
  ms:append_tensors({{name = "n", tensor = lps.tensor{0 / 0, 1}}, {name = "h", tensor = lps.tensor{0 / 0}, codec = "bf16"}})
  ms:close()
  local r <close> = MS.open(p)
  local m = r:tensors(1)
  lu.assertTrue(m.n[1] ~= m.n[1])
  lu.assertEquals(m.n[2], 1)
  lu.assertTrue(m.h[1] ~= m.h[1])
end

function TestRoundTrip:test_metadata_round_trip()
  local p = T.tmpname(".lpsm")
  local meta = {id = "task3-seed7", task = "t3", classes = {2, 3}, seed = 7, lr = 0.05,
                test_acc = 0.9712, history = {loss = {0.7, 0.31, 0.2}}, note = "naïve ✓ \"quoted\"",
                big = 12345678901234, flag = true, third = 1 / 3, tiny = 5e-324, sum = 0.1 + 0.2}
  local ms = MS.create(p)
  ms:append_tensors({w = lps.ones(2)}, meta)
  ms:append_tensors({}, nil)
  T.assert_error_contains("JSON", ms.append_tensors, ms, {w = lps.ones(1)}, {bad = 0 / 0})
  T.assert_error_contains("JSON", ms.append_tensors, ms, {w = lps.ones(1)}, {f = print})
  T.assert_error_contains("JSON object", ms.append_tensors, ms, {w = lps.ones(1)}, {1, 2})
  lu.assertEquals(#ms, 2) -- failed appends wrote nothing
  ms:close()
  local r <close> = MS.open(p)
  local m = r:meta(1)
  lu.assertEquals(m, meta)
  lu.assertEquals(math.type(m.seed), "integer")
  lu.assertEquals(math.type(m.big), "integer")
  lu.assertEquals(r:meta(2), {})
  lu.assertEquals(r:tensors(2), {})
  lu.assertStrContains(r:meta_json(1), '"task":"t3"')
  lu.assertEquals(m.third, 1 / 3) -- exact, not 14 digits
  lu.assertEquals(m.sum, 0.1 + 0.2)
end

-- meta_json(i, key, ...): the raw text of top-level fields, the rest not
-- decoded; a key only nested, or absent, gives nil.
function TestRoundTrip:test_metadata_fields_as_text()
  local cjson = require "cjson"
  local p = T.tmpname(".lpsm")
  local meta = {arch = {{type = "linear", ["in"] = 4, out = 2}}, note = 'a ] "q" \\ [ {', n = -1.5e-3, t = true,
                nested = {family = "x", list = {{1}, {2, {3}}}}, family = "cnn"}
  local ms = MS.create(p)
  ms:append_tensors({w = lps.ones(2)}, meta)
  ms:close()
  local r <close> = MS.open(p)
  local arch, note, fam, n, t, nested, absent = r:meta_json(1, "arch", "note", "family", "n", "t", "nested", "absent")
  lu.assertEquals(arch, '[{"in":4,"out":2,"type":"linear"}]')
  lu.assertEquals(cjson.decode(note), meta.note)
  lu.assertEquals(fam, '"cnn"')
  lu.assertEquals(tonumber(n), -1.5e-3)
  lu.assertEquals(t, "true")
  lu.assertEquals(cjson.decode(nested), meta.nested)
  lu.assertNil(absent)
  lu.assertNil(r:meta_json(1, "list")) -- only nested
  T.assert_error_contains("at most 8", r.meta_json, r, 1, "a", "b", "c", "d", "e", "f", "g", "h", "i")
  T.assert_error_contains("string expected", r.meta_json, r, 1, {})
end

function TestRoundTrip:test_checksum_is_crc32c()
  local C = lps.core._modelset
  lu.assertEquals(crc32("123456789"), 0xE3069283) -- the standard check value
  lu.assertEquals(C.crc32c("123456789"), 0xE3069283)
  lu.assertEquals(C.crc32c(""), 0)
  local g = lps.generator(8)
  for n = 0, 70 do -- every length and alignment the 8-byte loops see
    local t = {}
    for i = 1, n + 3 do t[i] = string.char(g:random(0, 255)) end
    local s = table.concat(t)
    for a = 1, 3 do
      local sub = s:sub(a, a + n - 1)
      lu.assertEquals(C.crc32c(sub), crc32(sub))
      lu.assertEquals(C.crc32c(sub, true), crc32(sub))
    end
  end
end

function TestRoundTrip:test_same_content_same_bytes()
  local p, q = T.tmpname(".lpsm"), T.tmpname(".lpsm")
  small_set(p, 4)
  small_set(q, 4)
  lu.assertTrue(readfile(p) == readfile(q))
  lu.assertStrContains(readfile(p), '{"id":1,"task":"t1"}') -- keys sorted
end

function TestRoundTrip:test_random_access_iteration_and_tostring()
  local p = T.tmpname(".lpsm")
  local data = small_set(p, 40)
  local r = MS.open(p)
  lu.assertEquals(#r, 40)
  lu.assertTrue(r:state().indexed)
  local g = lps.generator(11)
  for _ = 1, 60 do
    local k = g:random(40)
    local map = r:tensors(k)
    assert_bit_exact(map.a, data[k].a)
    assert_bit_exact(map.b, data[k].b)
    lu.assertEquals(r:meta(k).id, k)
  end
  local n = 0
  for i, meta in ipairs(r) do n = n + 1; lu.assertEquals(meta.id, i) end
  lu.assertEquals(n, 40)
  n = 0
  for i, meta in r:iter() do n = n + 1; lu.assertEquals(meta.id, i) end
  lu.assertEquals(n, 40)
  n = 0
  for i, meta in pairs(r) do n = n + 1; lu.assertEquals(meta.id, i) end
  lu.assertEquals(n, 40)
  lu.assertNil(r[41])
  local s = tostring(r)
  lu.assertStrContains(s, p)
  lu.assertStrContains(s, "40 models")
  lu.assertStrContains(s, "codec shuffle")
  T.assert_error_contains("out of range 1..40", r.meta, r, 41)
  T.assert_error_contains("out of range 1..40", r.tensors, r, 0)
  T.assert_error_contains("read-only", r.append_tensors, r, {w = lps.ones(1)})
  r:close()
  r:close() -- twice is fine
  lu.assertStrContains(tostring(r), "closed")
  T.assert_error_contains("closed", r.meta, r, 1)
  do
    local c <close> = MS.open(p)
    lu.assertEquals(#c, 40)
  end
end

function TestRoundTrip:test_append_reopen_keeps_codec_and_order()
  local p = T.tmpname(".lpsm")
  local ms = MS.create(p, {codec = "plain", level = 5, sync = false})
  ms:append_tensors({w = lps.ones(3)}, {id = 1})
  ms:close()
  T.assert_error_contains("exists", MS.create, p)
  local a = MS.open(p, "a")
  lu.assertEquals(a:state().codec, "plain")
  lu.assertEquals(a:append_tensors({w = lps.full(3, 2)}, {id = 2}), 2)
  a:close()
  local r <close> = MS.open(p)
  lu.assertEquals(#r, 2)
  lu.assertEquals(r:tensors(2).w:totable(), {2, 2, 2})
  lu.assertEquals(r:describe(2)[1].codec, "plain")
  lu.assertEquals(MS.verify(p), true)
  -- overwrite replaces
  local o = MS.create(p, {overwrite = true})
  lu.assertEquals(#o, 0)
  o:close()
  lu.assertEquals(#MS.open(p), 0)
end

function TestRoundTrip:test_bad_options_and_inputs()
  local p = T.tmpname(".lpsm")
  T.assert_error_contains("invalid option 'zip'", MS.create, p, {codec = "zip"})
  T.assert_error_contains("level", MS.create, p, {level = 40})
  T.assert_error_contains("unknown option 'codex'", MS.create, p, {codex = "plain"})
  local ms <close> = MS.create(p, {overwrite = true})
  T.assert_error_contains("duplicate tensor name 'a'", ms.append_tensors, ms,
    {{name = "a", tensor = lps.ones(1)}, {name = "a", tensor = lps.ones(2)}})
  T.assert_error_contains("name of 1..255", ms.append_tensors, ms, {{name = "", tensor = lps.ones(1)}})
  T.assert_error_contains("name of 1..255", ms.append_tensors, ms, {{name = ("x"):rep(256), tensor = lps.ones(1)}})
  T.assert_error_contains("not a live tensor", ms.append_tensors, ms, {{name = "a", tensor = {1, 2}}})
  T.assert_error_contains("append needs an lps.nn module", ms.append, ms, {}, {})
  lu.assertEquals(#ms, 0)
end

function TestRoundTrip:test_zstd_cli_decodes_a_cut_payload()
  local p = T.tmpname(".lpsm")
  local x = lps.randn(50, 7, lps.generator(5))
  local ms = MS.create(p)
  ms:append_tensors({{name = "p", tensor = x, codec = "plain"}, {name = "s", tensor = x}})
  ms:close()
  local r <close> = MS.open(p)
  local file = readfile(p)
  local function cli(d)
    local cut, out = T.tmpname(".zst"), T.tmpname(".raw")
    writefile(cut, file:sub(d.offset + 1, d.offset + d.stored_bytes))
    lu.assertTrue(os.execute(string.format("zstd -q -d -f -o %s %s", out, cut)))
    return readfile(out)
  end
  local d = r:describe(1)
  lu.assertEquals(cli(d[1]), bits(x)) -- plain: the float32 bytes
  local planes, raw = cli(d[2]), bits(x)
  local n = x:numel()
  for i = 0, n - 1, 37 do -- shuffle: byte k of value i at k*n + i
    for k = 0, 3 do lu.assertEquals(planes:byte(k * n + i + 1), raw:byte(4 * i + k + 1)) end
  end
end

-- ----------------------------------------------------------- models

TestModels = {}

function TestModels:tearDown() T.cleanup() end

function TestModels:test_append_get_forward_bit_exact()
  local nn = lps.nn
  local p = T.tmpname(".lpsm")
  local models = {}
  local ms = MS.create(p)
  for k = 1, 3 do
    local m = nn.mlp{20, 8, 8, 2, generator = lps.generator(k)}
    models[k] = m
    lu.assertEquals(ms:append(m, {id = k, seed = k}), k)
  end
  T.assert_error_contains("reserved", ms.append, ms, models[1], {arch = 1})
  ms:close()
  local r <close> = MS.open(p)
  local x = lps.randn(5, 20, lps.generator(99))
  for k = 1, 3 do
    local m, meta = r:get(k)
    lu.assertEquals(meta.id, k)
    lu.assertEquals(meta.arch, (models[k]:arch()))
    assert_bit_exact(m:forward(x), models[k]:forward(x), "forward " .. k)
    local names = {}
    for _, e in ipairs(m:named_parameters()) do names[#names + 1] = e.name end
    lu.assertEquals(names, {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"})
  end
  local n = 0
  for i, m, meta in r:models() do
    n = n + 1
    lu.assertEquals(meta.id, i)
    assert_bit_exact(m:forward(x), models[i]:forward(x))
  end
  lu.assertEquals(n, 3)
end

function TestModels:test_get_without_arch_is_a_clear_error()
  local p = T.tmpname(".lpsm")
  local ms <close> = MS.create(p)
  ms:append_tensors({w = lps.ones(2)})
  T.assert_error_contains("record 1 has no arch", ms.get, ms, 1)
end

function TestModels:test_records_of_older_sets_keep_working()
  -- sets built before the arch stored a legacy spec: get converts it
  local p = T.tmpname(".lpsm")
  local m = nn.sequential{nn.conv2d(1, 2, 3, {padding = 1, generator = lps.generator(3)}), nn.relu(),
    nn.maxpool2d(2), nn.flatten(), nn.linear(2 * 2 * 2, 3, lps.generator(4))}
  local ms = MS.create(p)
  ms:append_tensors(m:named_parameters(), {id = "old", spec = {type = "sequential", layers = {
    {type = "conv2d", in_channels = 1, out_channels = 2, kernel_size = 3, stride = 1, padding = 1},
    {type = "relu"}, {type = "maxpool2d", kernel_size = 2, stride = 2}, {type = "flatten"},
    {type = "linear", in_features = 8, out_features = 3}}}})
  ms:close()
  local r <close> = MS.open(p)
  local got = r:get(1)
  lu.assertEquals(got:arch(), (m:arch()))
  local x = lps.randn(2, 1, 4, 4, lps.generator(5))
  assert_bit_exact(got:forward(x), m:forward(x), "legacy record")
  lu.assertStrContains(tostring(r[1]), "cnn-c2-l3")
end

-- ----------------------------------------------------------- bad input

TestBadInput = {}

function TestBadInput:tearDown() T.cleanup() end

function TestBadInput:test_wrong_magic_short_and_missing()
  local p = T.tmpname(".lpsm")
  writefile(p, ("hello, not a model set\n"):rep(10))
  T.assert_error_contains("not a ModelSet file (bad magic)", MS.open, p)
  local ok, problems = MS.verify(p)
  lu.assertFalse(ok)
  lu.assertStrContains(problems[1].message, "bad magic")
  T.assert_error_contains("cannot repair", MS.repair, p)
  lu.assertEquals(readfile(p), ("hello, not a model set\n"):rep(10)) -- untouched
  writefile(p, "")
  T.assert_error_contains("too short", MS.open, p)
  T.assert_error_contains("cannot open", MS.open, p .. ".missing")
end

function TestBadInput:test_future_version()
  local p = T.tmpname(".lpsm")
  small_set(p, 1)
  local s = readfile(p)
  s = patch(s, 8, string.pack("<I4", 2))
  s = patch(s, 60, string.pack("<I4", crc32(s, 1, 60)))
  writefile(p, s)
  T.assert_error_contains("format version 2, this reader knows version 1 (written by a newer lualps)", MS.open, p)
  local ok, problems = MS.verify(p)
  lu.assertFalse(ok)
  lu.assertStrContains(problems[1].message, "newer")
  T.assert_error_contains("newer", MS.repair, p)
end

function TestBadInput:test_reserved_bits_must_be_zero()
  local p = T.tmpname(".lpsm")
  small_set(p, 1)
  local s = readfile(p)
  local h = patch(s, 30, "\1")
  h = patch(h, 60, string.pack("<I4", crc32(h, 1, 60)))
  T.assert_error_contains("reserved bits", MS.open_string, h)
  local r = patch(s, 64 + 4, "\1") -- record flags
  r = fix_rec_crc(r, 64)
  local ms = MS.open_string(r)
  T.assert_error_contains("record 1", ms.meta, ms, 1)
end

function TestBadInput:test_truncation_at_every_byte()
  local p = T.tmpname(".lpsm")
  local data = small_set(p, 3)
  local full = readfile(p)
  local r = MS.open(p)
  local ends = {}
  for i = 1, #r do local inf = r:info(i); ends[i] = inf.offset + inf.bytes end
  r:close()
  local q = T.tmpname(".lpsm")
  for len = 0, #full - 1 do
    local s = full:sub(1, len)
    if len < 64 then
      T.assert_error_contains("too short", MS.open_string, s)
    else
      local ms = MS.open_string(s)
      local want = 0
      for i = 1, 3 do if ends[i] <= len then want = i end end
      lu.assertEquals(#ms, want, "prefix of " .. len .. " bytes")
      for i = 1, want do
        local m = ms:tensors(i)
        assert_bit_exact(m.a, data[i].a)
        assert_bit_exact(m.b, data[i].b)
      end
      ms:close()
    end
    local ok = MS.verify_string(s)
    lu.assertFalse(ok, "verify of a " .. len .. "-byte prefix")
    if len >= 64 and len % 7 == 0 then
      -- appending after a torn write drops only the torn record
      writefile(q, s)
      local a = MS.open(q, "a")
      local before = #a
      a:append_tensors({a = lps.ones(1)}, {id = 99})
      a:close()
      local v = MS.open(q)
      lu.assertEquals(#v, before + 1)
      lu.assertEquals(v:meta(#v).id, 99)
      v:close()
      lu.assertEquals(MS.verify(q), true)
    end
  end
end

function TestBadInput:test_lengths_past_eof_and_absurd_sizes()
  local p = T.tmpname(".lpsm")
  small_set(p, 1)
  local s = readfile(p)
  local meta_len = u32(s, 64 + 16)
  local table_at = 64 + 64 + meta_len
  -- a tensor table entry claiming 2^30 x 2^30 = 2^60 elements, checksums fixed
  local function with_table(t)
    local tl = u32(t, 64 + 20)
    t = patch(t, 64 + 52, string.pack("<I4", crc32(t, table_at + 1, table_at + tl)))
    return fix_index(fix_rec_crc(t, 64))
  end
  local huge = patch(s, table_at + 8, string.pack("<I8I8", 1 << 30, 1 << 30))
  huge = patch(huge, table_at + 4, "\2")
  local ms = MS.open_string(with_table(huge))
  T.assert_error_contains("element count overflows", ms.tensors, ms, 1)
  -- 2^60 in one dimension
  local huge1 = patch(s, table_at + 8, string.pack("<I8", 1 << 60))
  ms = MS.open_string(with_table(huge1))
  T.assert_error_contains("size 1152921504606846976 in dimension 1", ms.tensors, ms, 1)
  -- 2^39 elements within the numel limit, from a tiny frame: refused, not allocated
  local big = patch(s, table_at + 8, string.pack("<I8I8", 1 << 20, 1 << 19))
  big = patch(big, table_at + 4, "\2")
  ms = MS.open_string(with_table(big))
  T.assert_error_contains("cannot come from", ms.tensors, ms, 1)
  -- stored bytes past the end of the record
  local past = patch(s, table_at + 40, string.pack("<I8", 1 << 40))
  ms = MS.open_string(with_table(past))
  T.assert_error_contains("stored bytes", ms.tensors, ms, 1)
  -- a record header whose length runs past the end of the file
  local rec_end = 64 + u32(s, 64 + 8)
  local long = patch(s, 64 + 8, string.pack("<I8", 1 << 62))
  long = fix_rec_crc(long, 64):sub(1, rec_end) -- no index: the reader scans
  ms = MS.open_string(long)
  lu.assertEquals(#ms, 0)
  local ok, problems = MS.verify_string(long)
  lu.assertFalse(ok)
  lu.assertTrue(has_problem(problems, function(q) return q.message:find("tail") end), problems_text(problems))
  -- an index trailer claiming 2^60 records
  local tr = #s - 32
  local lie = patch(s, tr + 16, string.pack("<I8", 1 << 60))
  lie = patch(lie, tr + 28, string.pack("<I4", crc32(lie, tr + 1, tr + 28)))
  ms = MS.open_string(lie)
  lu.assertEquals(#ms, 1) -- falls back to scanning
  lu.assertFalse(ms:state().indexed)
  lu.assertTrue(has_problem(select(2, MS.verify_string(lie)), function(q) return q.message:find("index") end))
  -- metadata length beyond the limit
  local m = fix_index(fix_rec_crc(patch(s, 64 + 16, string.pack("<I4", 1 << 30)), 64))
  ok, problems = MS.verify_string(m)
  lu.assertFalse(ok)
  lu.assertStrContains(problems_text(problems), "exceeds the limit")
end

function TestBadInput:test_invalid_json_metadata()
  local p = T.tmpname(".lpsm")
  local ms = MS.create(p)
  ms._f:append('{"id": 1, oops', {}) -- the raw layer does not parse JSON
  ms._f:append('[1, 2]', {})
  ms:append_tensors({w = lps.ones(1)}, {id = 3})
  ms:close()
  local r <close> = MS.open(p)
  T.assert_error_contains("record 1: invalid JSON metadata", r.meta, r, 1)
  T.assert_error_contains("record 2: metadata is not a JSON object", r.meta, r, 2)
  lu.assertEquals(r:meta(3).id, 3)
  local ok, problems = MS.verify(p)
  lu.assertFalse(ok)
  lu.assertEquals(#problems, 2)
  lu.assertEquals(problems[1].record, 1)
  lu.assertEquals(problems[2].record, 2)
end

function TestBadInput:test_duplicate_tensor_names_in_a_file()
  local p = T.tmpname(".lpsm")
  local ms = MS.create(p)
  ms:append_tensors({{name = "w1", tensor = lps.ones(2)}, {name = "w2", tensor = lps.ones(2)}})
  ms:close()
  local s = readfile(p)
  local meta_len = u32(s, 64 + 16)
  local table_at = 64 + 64 + meta_len
  local second = table_at + 64 + 2 + 64 -- second entry's name
  lu.assertEquals(s:sub(second + 2, second + 2), "2")
  local t = patch(s, second + 1, "1")
  local tl = u32(t, 64 + 20)
  t = patch(t, 64 + 52, string.pack("<I4", crc32(t, table_at + 1, table_at + tl)))
  t = fix_index(fix_rec_crc(t, 64)) -- the index holds the header checksum too
  local r = MS.open_string(t)
  lu.assertTrue(r:state().indexed)
  T.assert_error_contains("record 1: duplicate tensor name 'w1'", r.tensors, r, 1)
end

function TestBadInput:test_flipped_bit_anywhere_is_detected_and_named()
  local p = T.tmpname(".lpsm")
  local data = small_set(p, 2)
  local s = readfile(p)
  local r = MS.open(p)
  local spans = {}
  for i = 1, 2 do local inf = r:info(i); spans[i] = {inf.offset, inf.offset + inf.bytes} end
  r:close()
  for off = 0, #s - 1 do
    local b = 1 << (off % 8)
    local f = patch(s, off, string.char(s:byte(off + 1) ~ b))
    local ok, problems = MS.verify_string(f)
    lu.assertFalse(ok, "flip at byte " .. off .. " not detected")
    local rec
    for i = 1, 2 do if off >= spans[i][1] and off < spans[i][2] then rec = i end end
    local text = problems_text(problems)
    if rec then
      lu.assertTrue(has_problem(problems, function(q) return q.record == rec end),
        "flip at " .. off .. " should name record " .. rec .. ":\n" .. text)
      -- reading that record fails naming it; the other reads bit-exact
      local okm, ms = pcall(MS.open_string, f)
      lu.assertTrue(okm, "open after a flip in a record must work: " .. tostring(ms))
      local okr, err = pcall(ms.tensors, ms, rec)
      lu.assertFalse(okr, "flip at " .. off .. " read back silently")
      lu.assertStrContains(tostring(err), "record " .. rec)
      local other = 3 - rec
      if #ms == 2 then assert_bit_exact(ms:tensors(other).a, data[other].a) end
    elseif off < 64 then
      lu.assertTrue((text:find("file header") or text:find("magic") or text:find("version")) ~= nil, text)
    else
      lu.assertStrContains(text, "index")
      local ms = MS.open_string(f) -- the records are intact: found by scanning
      lu.assertEquals(#ms, 2)
      assert_bit_exact(ms:tensors(2).b, data[2].b)
    end
  end
end

function TestBadInput:test_meta_does_not_touch_tensors()
  local p = T.tmpname(".lpsm")
  small_set(p, 1)
  local s = readfile(p)
  local r0 = MS.open(p)
  local d = r0:describe(1)[1]
  r0:close()
  local f = patch(s, d.offset + 3, string.char(s:byte(d.offset + 4) ~ 0x10))
  local ms = MS.open_string(f)
  lu.assertEquals(ms:meta(1).id, 1) -- metadata alone still reads
  T.assert_error_contains("record 1: tensor 'a': payload checksum mismatch", ms.tensors, ms, 1)
end

-- ----------------------------------------------------------- verify / repair

TestRepair = {}

function TestRepair:tearDown() T.cleanup() end

function TestRepair:test_clean_file_is_left_alone()
  local p = T.tmpname(".lpsm")
  small_set(p, 3)
  local before = readfile(p)
  local ok, problems, rep = MS.verify(p)
  lu.assertTrue(ok, problems_text(problems))
  lu.assertEquals(rep.records, 3)
  rep = MS.repair(p)
  lu.assertTrue(rep.ok)
  lu.assertFalse(rep.truncated)
  lu.assertEquals(readfile(p), before)
end

function TestRepair:test_torn_tail_is_truncated_in_place()
  local p = T.tmpname(".lpsm")
  local data = small_set(p, 3)
  local r = MS.open(p)
  local inf = r:info(3)
  r:close()
  local s = readfile(p)
  writefile(p, s:sub(1, inf.offset + inf.bytes - 5)) -- torn in record 3, index gone
  local ok, problems = MS.verify(p)
  lu.assertFalse(ok)
  lu.assertStrContains(problems_text(problems), "tail")
  local ro = MS.open(p)
  lu.assertEquals(#ro, 2)
  lu.assertStrContains(tostring(ro), "torn tail")
  ro:close()
  local rep = MS.repair(p)
  lu.assertTrue(rep.truncated)
  lu.assertFalse(rep.rewrote)
  lu.assertEquals(rep.records, 2)
  lu.assertTrue((MS.verify(p)))
  local v <close> = MS.open(p)
  lu.assertTrue(v:state().indexed)
  lu.assertEquals(#v, 2)
  for i = 1, 2 do assert_bit_exact(v:tensors(i).a, data[i].a) end
end

function TestRepair:test_damaged_record_inside_is_dropped_original_kept()
  local p = T.tmpname(".lpsm")
  T.tmpname() -- keep cleanup tidy
  local data = small_set(p, 3)
  local r = MS.open(p)
  local d = r:describe(2)[2]
  r:close()
  local s = readfile(p)
  local damaged = patch(s, d.offset + 2, string.char(s:byte(d.offset + 3) ~ 1))
  writefile(p, damaged)
  local ok, problems = MS.verify(p)
  lu.assertFalse(ok)
  lu.assertEquals(problems[1].record, 2)
  lu.assertStrContains(problems[1].message, "record 2 (byte")
  lu.assertStrContains(problems[1].message, "tensor 'b': payload checksum mismatch")
  T.assert_error_contains("record 2", function() MS.open(p):tensors(2) end)
  local rep = MS.repair(p)
  lu.assertTrue(rep.rewrote)
  lu.assertEquals(rep.backup, p .. ".damaged")
  lu.assertEquals(rep.records, 2)
  lu.assertEquals(readfile(p .. ".damaged"), damaged) -- nothing destroyed
  local v = MS.open(p)
  lu.assertEquals(#v, 2)
  lu.assertEquals(v:meta(1).id, 1)
  lu.assertEquals(v:meta(2).id, 3)
  assert_bit_exact(v:tensors(2).b, data[3].b)
  v:close()
  lu.assertTrue((MS.verify(p)))
  -- a second repair needing a backup refuses to overwrite the first one
  writefile(p, damaged)
  T.assert_error_contains("earlier repair", MS.repair, p)
  os.remove(p .. ".damaged")
end

function TestRepair:test_damaged_header_without_index_resyncs()
  local p = T.tmpname(".lpsm")
  local data = small_set(p, 3)
  local r = MS.open(p)
  local i2, i3 = r:info(2), r:info(3)
  r:close()
  local s = readfile(p):sub(1, i3.offset + i3.bytes) -- no index, as after a crash
  local f = patch(s, i2.offset + 9, "\255")            -- record 2's length field
  writefile(p, f)
  local ms = MS.open(p)
  lu.assertEquals(#ms, 2) -- records 1 and 3 stay reachable
  assert_bit_exact(ms:tensors(2).a, data[3].a)
  ms:close()
  T.assert_error_contains("repair", MS.open, p, "a") -- no appending past damage
  local ok, problems = MS.verify(p)
  lu.assertFalse(ok)
  lu.assertTrue(has_problem(problems, function(q) return q.record == 2 end), problems_text(problems))
  local rep = MS.repair(p)
  lu.assertTrue(rep.rewrote)
  lu.assertEquals(rep.records, 2)
  lu.assertTrue((MS.verify(p)))
  os.remove(p .. ".damaged")
end

-- ----------------------------------------------------------- merge

TestMerge = {}

function TestMerge:tearDown() T.cleanup() end

function TestMerge:test_merge_concatenates_and_checks_ids()
  local a, b, out = T.tmpname(".lpsm"), T.tmpname(".lpsm"), T.tmpname(".lpsm")
  local da = small_set(a, 3)
  local ms = MS.create(b, {codec = "bf16"})
  local w = lps.randn(3, 3, lps.generator(4))
  ms:append_tensors({w = w}, {id = "b1"})
  ms:append_tensors({w = w}, {note = "no id"})
  ms:append_tensors({w = w}, {note = "no id"})
  ms:close()
  lu.assertEquals(MS.merge(out, {a, b}), 6)
  local m <close> = MS.open(out)
  lu.assertEquals(#m, 6)
  lu.assertEquals(m:meta(2).id, 2)
  lu.assertEquals(m:meta(4).id, "b1")
  assert_bit_exact(m:tensors(3).a, da[3].a)
  lu.assertEquals(m:describe(4)[1].codec, "bf16") -- frames copied as stored
  lu.assertTrue((MS.verify(out)))
  -- duplicate ids: refused before anything is written
  local out2 = T.tmpname(".lpsm")
  os.remove(out2)
  T.assert_error_contains("duplicate model id 1: " .. a .. " record 1 and " .. a .. " record 1",
    MS.merge, out2, {a, a})
  lu.assertNil(io.open(out2, "rb"))
  local c = T.tmpname(".lpsm")
  local mc = MS.create(c, {overwrite = true})
  mc:append_tensors({w = w}, {id = "b1"})
  mc:close()
  T.assert_error_contains("duplicate model id b1", MS.merge, out2, {a, b, c})
  T.assert_error_contains("also an input", MS.merge, a, {a, b})
  T.assert_error_contains("exists", MS.merge, out, {a})
  lu.assertEquals(MS.merge(out, {c}, {overwrite = true}), 1)
end

-- Resuming a sharded build: records whose id the output holds are skipped,
-- the output is appended to (its records stay byte for byte), and of
-- records sharing an id across the inputs the first is copied.
-- Inputs and out that are not paths: errors naming merge and the input
-- (a table among the inputs raised "bad argument #1 to 'open'"; the Lua
-- API fuzzer), and nothing written
function TestMerge:test_merge_checks_its_paths()
  local a, out = T.tmpname(".lpsm"), T.tmpname(".lpsm")
  small_set(a, 2)
  T.assert_error_contains("merge: input 2 must be a path, got table", MS.merge, out, {a, {}})
  T.assert_error_contains("merge: out must be a path, got nil", MS.merge, nil, {a})
  T.assert_error_contains("merge: id_field must be a string, got number", MS.merge, out, {a}, {id_field = 3})
  lu.assertNil(io.open(out, "rb"))
  lu.assertEquals(MS.merge(out, {a}), 2)
end

-- verify given a number (a file name, as C reads it) and append given a
-- meta that is not a table (they raised "attempt to get length of a number
-- value" and "bad argument #1 to 'for iterator'"; the Lua API fuzzer)
function TestMerge:test_verify_number_and_append_meta()
  -- in a child process whose directory holds a set named "7"
  local dir = T.tmpname("")
  os.remove(dir)
  lu.assertTrue(os.execute("mkdir " .. dir))
  local root = os.getenv("PWD")
  local p = io.popen(("cd %s && LUA_PATH='%s/?.lua;%s/?/init.lua;;' LUA_CPATH='%s/?.so;;' lua5.4 -e '"
    .. "local MS = require(\"lualps\").modelset; local ms = MS.create(\"7\"); "
    .. "ms:append_tensors({w = require(\"lualps\").zeros(2)}, {id = 1}); ms:close(); print(MS.verify(7))' 2>&1")
    :format(dir, root, root, root))
  local out = p:read("a")
  p:close()
  os.remove(dir .. "/7")
  os.remove(dir)
  lu.assertStrContains(out, "true")
  local ms <close> = MS.create(T.tmpname(".lpsm"))
  T.assert_error_contains("modelset: append's meta must be a table, got number", ms.append, ms, lps.nn.mlp{2, 2}, 5)
  lu.assertEquals(ms:append(lps.nn.mlp{2, 2}, {id = "x"}), 1)
end

function TestMerge:test_merge_skip_existing()
  local a, b, out = T.tmpname(".lpsm"), T.tmpname(".lpsm"), T.tmpname(".lpsm")
  os.remove(out)
  local da = small_set(a, 3)                 -- ids 1, 2, 3
  local w = lps.randn(2, 2, lps.generator(9))
  local ms = MS.create(b)
  ms:append_tensors({w = w}, {id = 2, note = "a second model 2"})
  ms:append_tensors({w = w}, {id = 4})
  ms:append_tensors({w = w}, {note = "no id"})
  ms:append_tensors({w = w}, {id = 4, note = "a second model 4"})
  ms:close()
  lu.assertEquals(MS.merge(out, {a}, {skip_existing = true}), 3) -- a new out: as without the option
  local before = assert(lps.util.read_file(out))
  lu.assertEquals(MS.merge(out, {b, a}, {skip_existing = true}), 2) -- id 4 and the record without an id
  local m <close> = MS.open(out)
  lu.assertEquals(#m, 5)
  lu.assertEquals({m:meta(1).id, m:meta(2).id, m:meta(3).id, m:meta(4).id, m:meta(5).id}, {1, 2, 3, 4, nil})
  lu.assertNil(m:meta(2).note)               -- out's model 2 kept, b's skipped
  lu.assertNil(m:meta(4).note)               -- b's first model 4, not its second
  lu.assertEquals(m:meta(5).note, "no id")
  assert_bit_exact(m:tensors(2).a, da[2].a)
  lu.assertTrue((MS.verify(out)))
  local after = assert(lps.util.read_file(out))
  lu.assertEquals(after:sub(1, 64), before:sub(1, 64)) -- the same file, appended to
  lu.assertEquals(MS.merge(out, {a}, {skip_existing = true}), 0) -- nothing new
  -- without the option the same merges are refused, before anything is written
  T.assert_error_contains("exists", MS.merge, out, {a})
  local out2 = T.tmpname(".lpsm")
  os.remove(out2)
  T.assert_error_contains("duplicate model id 2: " .. a .. " record 2 and " .. b .. " record 1", MS.merge, out2, {a, b})
  lu.assertNil(io.open(out2, "rb"))
  T.assert_error_contains("merge: unknown option 'skip'", MS.merge, out2, {a}, {skip = true})
end

-- ----------------------------------------------------------- locking and readers

TestConcurrency = {}

function TestConcurrency:tearDown() T.cleanup() end

function TestConcurrency:test_one_writer_at_a_time()
  local p = T.tmpname(".lpsm")
  local w = MS.create(p, {overwrite = true})
  w:append_tensors({x = lps.ones(2)}, {id = 1})
  T.assert_error_contains("another writer holds the lock", MS.open, p, "a")
  T.assert_error_contains("another writer holds the lock", MS.create, p, {overwrite = true})
  T.assert_error_contains("lock", MS.repair, p)
  -- another process is refused too
  local cmd = string.format([[lua5.4 -e 'package.path="./?.lua;./?/init.lua;"..package.path
    local ok, e = pcall(require("lualps").modelset.open, %q, "a")
    io.write(ok and "opened" or e)' 2>&1]], p)
  local h = io.popen(cmd)
  local out = h:read("a")
  h:close()
  lu.assertStrContains(out, "another writer holds the lock")
  local r = MS.open(p) -- readers are never refused
  lu.assertEquals(#r, 1)
  r:close()
  w:close()
  local w2 = MS.open(p, "a")
  lu.assertEquals(#w2, 1)
  w2:close()
end

function TestConcurrency:test_readers_see_records_complete_at_open()
  local p = T.tmpname(".lpsm")
  local w = MS.create(p, {overwrite = true})
  w:append_tensors({x = lps.ones(2)}, {id = 1})
  w:append_tensors({x = lps.full(2, 2)}, {id = 2})
  local r1 = MS.open(p) -- no index yet: found by scanning
  lu.assertEquals(#r1, 2)
  lu.assertFalse(r1:state().indexed)
  w:append_tensors({x = lps.full(2, 3)}, {id = 3})
  lu.assertEquals(#r1, 2)
  lu.assertEquals(r1:tensors(2).x:totable(), {2, 2})
  -- a record being written (here: its first half) is not seen
  local f = assert(io.open(p, "ab"))
  f:write(readfile(p):sub(65, 65 + 100))
  f:close()
  local r2 = MS.open(p)
  lu.assertEquals(#r2, 3)
  lu.assertEquals(r2:tensors(3).x:totable(), {3, 3})
  w:close()
  -- the writer's close wrote after its own last record, so the junk is gone
  local r3 = MS.open(p)
  lu.assertTrue(r3:state().indexed)
  lu.assertEquals(#r3, 3)
  lu.assertTrue((MS.verify(p)))
  w = MS.open(p, "a")
  w:append_tensors({x = lps.full(2, 4)}, {id = 4})
  w:flush() -- readers opening now use the index
  local r4 = MS.open(p)
  lu.assertTrue(r4:state().indexed)
  lu.assertEquals(#r4, 4)
  lu.assertEquals(#r3, 3) -- earlier readers keep their view
  lu.assertEquals(r3:tensors(3).x:totable(), {3, 3})
  w:close()
  for _, x in ipairs{r1, r2, r3, r4} do x:close() end
end

-- ----------------------------------------------------------- command line

TestCLI = {}

function TestCLI:tearDown() T.cleanup() end

local function run(cmd)
  local h = io.popen("lua5.4 scripts/lualps " .. cmd .. " 2>&1")
  local text = h:read("a")
  local _, _, code = h:close()
  return code, text
end

function TestCLI:test_subcommands_and_exit_codes()
  local a, b, m = T.tmpname(".lpsm"), T.tmpname(".lpsm"), T.tmpname(".lpsm")
  small_set(a, 3)
  local ms = MS.create(b, {overwrite = true})
  ms:append_tensors({w = lps.ones(2)}, {id = "x", task = "t9", test_acc = 0.5})
  ms:close()
  local code, text = run("info " .. a)
  lu.assertEquals(code, 0, text)
  lu.assertStrContains(text, "models      3")
  lu.assertStrContains(text, "t1                   2")
  code, text = run("ls " .. b)
  lu.assertEquals(code, 0, text)
  lu.assertStrContains(text, "x")
  lu.assertStrContains(text, "0.5000")
  code, text = run("cat-meta " .. a .. " 2")
  lu.assertEquals(code, 0, text)
  lu.assertEquals(text, '{"id":2,"task":"t0"}\n')
  code, text = run("merge " .. m .. " " .. a .. " " .. b .. " --overwrite")
  lu.assertEquals(code, 0, text)
  lu.assertEquals(#MS.open(m), 4)
  code, text = run("merge " .. m .. " " .. a .. " " .. a .. " --overwrite")
  lu.assertEquals(code, 1)
  lu.assertStrContains(text, "duplicate model id 1")
  code, text = run("merge " .. m .. " " .. a .. " " .. b .. " --skip-existing") -- m holds them all
  lu.assertEquals(code, 0, text)
  lu.assertStrContains(text, "0 records from 2 sets")
  lu.assertEquals(#MS.open(m), 4)
  code, text = run("verify " .. a .. " " .. b)
  lu.assertEquals(code, 0, text)
  local s = readfile(b)
  writefile(b, s:sub(1, #s - 40))
  code, text = run("verify " .. a .. " " .. b)
  lu.assertEquals(code, 1)
  lu.assertStrContains(text, "problem")
  code, text = run("repair " .. b)
  lu.assertEquals(code, 0, text)
  lu.assertStrContains(text, "repaired in place, 1 records kept")
  lu.assertEquals((run("verify " .. b)), 0)
  lu.assertEquals((run("frobnicate")), 2)
  lu.assertEquals((run("cat-meta " .. a .. " two")), 2)
  lu.assertEquals((run("info")), 2)
  code, text = run("--help")
  lu.assertEquals(code, 0)
  lu.assertStrContains(text, "cat-meta")
  code, text = run("info /nonexistent.lpsm")
  lu.assertEquals(code, 1)
  lu.assertStrContains(text, "cannot open")
end

function TestCLI:test_info_tasks_in_numeric_order()
  local a = T.tmpname(".lpsm")
  local ms = MS.create(a, {overwrite = true})
  -- numbers by value before the other labels, which sort as strings ("9" too)
  for _, t in ipairs{10, 2, "b", 1, "9", 11, "a", 2.5} do
    ms:append_tensors({w = lps.ones(2)}, {id = tostring(t) .. type(t), task = t})
  end
  ms:append_tensors({w = lps.ones(2)}, {id = "none"})
  ms:close()
  local code, text = run("info " .. a)
  lu.assertEquals(code, 0, text)
  local order = {}
  for t in text:match("tasks +9\n(.*)$"):gmatch("    (%S+) +1\n") do order[#order + 1] = t end
  lu.assertEquals(order, {"1", "2", "2.5", "10", "11", "(none)", "9", "a", "b"})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
