-- Safetensors: round trips, the reference writer's exact bytes, F16/BF16
-- conversions, every kind of malformed file, model import/export, and the
-- PyTorch interop check (when python3 with torch is installed).
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local st = lps.safetensors

-- A file image from a header text and data bytes.
local function image(header, data)
  return string.pack("<I8", #header) .. header .. (data or "")
end

local function f32s(...) return string.pack("<" .. string.rep("f", select("#", ...)), ...) end
local function u16s(...) return string.pack("<" .. string.rep("I2", select("#", ...)), ...) end
local function bits(x) return string.unpack("<I4", string.pack("<f", x)) end

local function write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

TestFormat = {}

function TestFormat:tearDown() T.cleanup() end

-- Byte-for-byte the outputs of the reference implementation's own tests
-- (safetensors/src/tensor.rs: test_serialization, _forced_alignement, test_empty).
function TestFormat:test_reference_writer_bytes()
  local x = lps.tensor{{{0, 1, 2}, {3, 4, 5}}}
  local hdr = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}'
  lu.assertEquals(#hdr, 64)
  lu.assertEquals(st.encode({["attn.0"] = x}), image(hdr, f32s(0, 1, 2, 3, 4, 5)))

  local hdr2 = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}' .. string.rep(" ", 7)
  lu.assertEquals(#hdr2, 72)
  lu.assertEquals(st.encode({attn0 = x:reshape(1, 1, 2, 3)}), image(hdr2, f32s(0, 1, 2, 3, 4, 5)))

  lu.assertEquals(st.encode({}), image("{}      "))
  local meta = '{"__metadata__":{"framework":"pt"}}' .. string.rep(" ", 5)
  lu.assertEquals(#meta, 40)
  lu.assertEquals(st.encode({}, {framework = "pt"}), image(meta))
end

function TestFormat:test_layout_sorted_contiguous_aligned()
  local bytes = st.encode({{name = "b", tensor = lps.ones(3)}, {name = "a", tensor = lps.zeros(2, 2)},
    {name = "c10", tensor = lps.zeros(0)}, {name = "é\"\n", tensor = lps.ones(1)}},
    {zeta = "1", alpha = "x\ty"})
  local entries, meta, hlen = st.decode_header(bytes)
  lu.assertEquals(hlen % 8, 0)
  local got = {}
  for i, e in ipairs(entries) do got[i] = {e.name, e.offsets[1], e.offsets[2], e.dtype} end
  -- byte order of names; offsets tile the buffer from 0
  lu.assertEquals(got, {{"a", 0, 16, "F32"}, {"b", 16, 28, "F32"}, {"c10", 28, 28, "F32"},
    {"é\"\n", 28, 32, "F32"}})
  lu.assertEquals(meta, {zeta = "1", alpha = "x\ty"})
  lu.assertEquals(#bytes, 8 + hlen + 32)
  local header = bytes:sub(9, 8 + hlen)
  lu.assertStrContains(header, '{"__metadata__":{"alpha":"x\\ty","zeta":"1"},"a":')
  lu.assertStrContains(header, '"\195\169\\"\\n":') -- UTF-8 verbatim, escapes as serde_json
end

function TestFormat:test_round_trip_bit_exact()
  local p = T.tmpname()
  local special = lps.tensor{0, -0.0, 1 / 0, -1 / 0, 0 / 0, 1e-45, 3.4028234663852886e38, 0.1}
  local g = lps.generator(7)
  local named = {
    v = special, m = lps.randn(3, 5, g), c = lps.randn(2, 3, 4, g), q = lps.randn(1, 2, 3, 2, g),
    empty = lps.zeros(0, 3),
  }
  st.write(p, named, {note = "round trip", n = 3, flag = true})
  local back, meta, names = st.read(p)
  lu.assertEquals(names, {"c", "empty", "m", "q", "v"})
  lu.assertEquals(meta, {note = "round trip", n = "3", flag = "true"})
  for k, t in pairs(named) do
    lu.assertEquals(back[k]:shape(), t:shape(), k)
  end
  -- every float's bits, NaN and -0 included
  local vb = back.v
  for i = 1, special:numel() do lu.assertEquals(bits(vb[i]), bits(special[i]), "element " .. i) end
  lu.assertEquals(st.encode(back, meta), st.encode(named, meta))
  lu.assertEquals(read_file(p), st.encode(named, {note = "round trip", n = "3", flag = "true"}))
  lu.assertEquals(back.m:totable(), named.m:totable())
  lu.assertEquals(back.q:totable(), named.q:totable())
end

function TestFormat:test_overwrite_is_atomic_and_leaves_no_temp()
  local p = T.tmpname()
  st.write(p, {a = lps.ones(2)})
  st.write(p, {b = lps.zeros(3)})
  local t, _, names = st.read(p)
  lu.assertEquals(names, {"b"})
  lu.assertEquals(t.b:totable(), {0, 0, 0})
  -- a failed write leaves the old file alone
  T.assert_error_contains("duplicate tensor name 'x'", st.write, p,
    {{name = "x", tensor = lps.ones(1)}, {name = "x", tensor = lps.ones(1)}})
  lu.assertEquals(select(3, st.read(p)), {"b"})
  T.assert_error_contains("cannot write", st.write, "/nonexistent-dir/x.safetensors", {a = lps.ones(1)})
end

function TestFormat:test_f16_exact()
  local codes = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x3555, 0x8000, 0x7C00, 0xFC00,
    0x7E00, 0x8001}
  local want = {1, -2, 65504, 2 ^ -24, 1023 * 2 ^ -24, 2 ^ -14, 0x555 * 2 ^ -10 * 2 ^ -2, -0.0,
    1 / 0, -1 / 0, nil, -(2 ^ -24)}
  local hdr = string.format('{"h":{"dtype":"F16","shape":[%d],"data_offsets":[0,%d]}}', #codes, 2 * #codes)
  local t = st.decode(image(hdr, u16s(table.unpack(codes)))).h
  for i = 1, #codes do
    if i == 11 then lu.assertTrue(t[i] ~= t[i], "0x7E00 is NaN")
    else lu.assertEquals(t[i], want[i], string.format("0x%04X", codes[i])) end
  end
  lu.assertEquals(1 / t[8], -1 / 0) -- negative zero keeps its sign
  lu.assertEquals(bits(t[11]), 0x7FC00000) -- quiet NaN, payload bits moved up
end

function TestFormat:test_bf16_exact()
  local codes = {0x3F80, 0xC000, 0x4049, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x7F7F}
  local want = {1, -2, 3.140625, 1 / 0, -1 / 0, 2 ^ -133, -0.0, (2 - 2 ^ -7) * 2 ^ 127}
  local hdr = '{"b":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]}}'
  local t = st.decode(image(hdr, u16s(table.unpack(codes)))).b:reshape(8)
  for i = 1, #codes do lu.assertEquals(t[i], want[i], string.format("0x%04X", codes[i])) end
  lu.assertEquals(bits(t[7]), 0x80000000)
end

function TestFormat:test_f64_rounds_and_scalar()
  local hdr = '{"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},' ..
    '"s":{"dtype":"F32","shape":[],"data_offsets":[24,28]}}'
  local t = st.decode(image(hdr, string.pack("<ddd", 0.1, 1e300, -2.5) .. f32s(7)))
  lu.assertEquals(t.d[1], string.unpack("<f", string.pack("<f", 0.1)))
  lu.assertEquals(t.d[2], 1 / 0)
  lu.assertEquals(t.d[3], -2.5)
  lu.assertEquals(t.s:shape(), {1}) -- a scalar reads as one element
  lu.assertEquals(t.s[1], 7)
end

function TestFormat:test_header_only_and_other_dtypes()
  -- The example file of the reference documentation: I32 reads as a header.
  local ex = "<\0\0\0\0\0\0\0" .. '{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}' ..
    string.rep("\0", 16)
  local entries, meta, hlen = st.decode_header(ex)
  lu.assertEquals(hlen, 60)
  lu.assertEquals(entries, {{name = "test", dtype = "I32", shape = {2, 2}, offsets = {0, 16}}})
  lu.assertEquals(meta, {})
  -- integer payloads read as float32, rounded to nearest (batch norm's I64 num_batches_tracked)
  local ints = "<\0\0\0\0\0\0\0" .. '{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}' ..
    string.pack("<i4i4i4i4", -3, 0, 16777217, 2147483647)
  lu.assertEquals(st.decode(ints).test:reshape(4):totable(), {-3, 0, 16777216, 2147483648})
  local i64 = image('{"n":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}', string.pack("<i8", 123456))
  lu.assertEquals(st.decode(i64).n[1], 123456)
  local u8 = image('{"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]},"u":{"dtype":"U8","shape":[1],'
    .. '"data_offsets":[3,4]}}', "\0\1\7\255")
  lu.assertEquals(st.decode(u8).b:totable(), {0, 1, 1})
  lu.assertEquals(st.decode(u8).u[1], 255)
  T.assert_error_contains("'x' has dtype C64; lualps reads F32, F16, BF16, F64 and the integer types",
    st.decode, image('{"x":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', string.rep("\0", 8)))
  -- Five dimensions are a valid file but not a lualps tensor.
  local five = image('{"x":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[0,8]}}', f32s(1, 2))
  lu.assertEquals(st.decode_header(five)[1].shape, {1, 1, 1, 1, 2})
  T.assert_error_contains("'x' has 5 dimensions; lualps tensors have 1 to 4", st.decode, five)
  -- Sub-byte dtypes: 3 F4 values do not fill whole bytes.
  T.assert_error_contains("do not fill whole bytes", st.decode_header,
    image('{"x":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', "\0\0"))
  lu.assertEquals(st.decode_header(image('{"x":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}',
    "\0\0"))[1].dtype, "F4")
  -- From a file, the header alone is read and checked against the file size.
  local p = T.tmpname()
  write_file(p, ex)
  lu.assertEquals(st.header(p)[1].shape, {2, 2})
end

-- A valid one-tensor file, and variants of its header.
local function one(hdr, data) return image(hdr, data or f32s(1, 2)) end
local OK = '{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'

function TestFormat:test_valid_variants()
  lu.assertEquals(st.decode(one(OK)).x:totable(), {1, 2})
  -- whitespace, unknown fields (ignored, as by the reference reader), escapes in names
  local t, meta, names = st.decode(one(' \n{ "\\u0078" : {"shape":[2], "extra":[{"a":null}],' ..
    '"data_offsets":[0,8], "dtype":"F32"}, "__metadata__": {"k\\"":"\\ud83d\\ude00"} }\t  '))
  lu.assertEquals(names, {"x"})
  lu.assertEquals(t.x:totable(), {1, 2})
  lu.assertEquals(meta, {['k"'] = "\240\159\152\128"})
  -- offsets listed out of order in the header are fine; names come in header order
  local two = '{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},' ..
    '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
  local t2, _, n2 = st.decode(one(two))
  lu.assertEquals(n2, {"b", "a"})
  lu.assertEquals({t2.a[1], t2.b[1]}, {1, 2})
  -- empty tensors take no bytes, anywhere
  local e = '{"e":{"dtype":"F16","shape":[0,5],"data_offsets":[8,8]},' ..
    '"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[3,0],"data_offsets":[0,0]}}'
  local t3 = st.decode(one(e))
  lu.assertEquals(t3.e:shape(), {0, 5})
  lu.assertEquals(t3.z:shape(), {3, 0})
end

function TestFormat:test_bad_headers()
  local cases = {
    -- {header (string) or full image (table), expected message}
    {{"\1\0\0"}, "too short for the 8-byte header length"},
    {{string.pack("<I8", 100) .. "{}"}, "header length 100 runs past the end of the 10-byte file"},
    {{string.pack("<I8", 100000001) .. "{}"}, "exceeds the limit of 100000000 bytes"},
    {{string.pack("<I8", -1) .. "{}"}, "header length 18446744073709551615 exceeds the limit"},
    {"", "empty document"},
    {"[]", "the header is an array, expected a JSON object"},
    {'{"x":', "unexpected end of text, expected a value"},
    {'{"x":{},}', "expected a string key"},
    {'{"x" {}}', "expected ':' after an object key"},
    {'{} {}', "unexpected text after the top-level value"},
    {'{"x":[1,]}', "unexpected character"},
    {'{"x":[01]}', "expected ',' or ']'"},
    {'{"x":tru}', "unexpected character"},
    {'{"x":-}', "invalid number"},
    {'{"x":1.}', "digit expected after '.'"},
    {'{"x":"a\\q"}', "invalid escape"},
    {'{"x":"\\ud800"}', "unpaired UTF-16 surrogate"},
    {'{"x":"\\udc00\\ud800"}', "unpaired UTF-16 surrogate"},
    {'{"x":"a\1b"}', "unescaped control character"},
    {'{"x":"abc', "unterminated string"},
    {'{"x":' .. string.rep("[", 100) .. string.rep("]", 100) .. '}', "nested deeper than 64 levels"},
    {'{"\255":{}}', "invalid UTF-8"},
    {'{"\192\175":{}}', "invalid UTF-8"},          -- overlong '/'
    {'{"\237\160\128":{}}', "invalid UTF-8"},      -- an encoded surrogate
    {'{"\244\144\128\128":{}}', "invalid UTF-8"},  -- above U+10FFFF
    {'{"\195":{}}', "invalid UTF-8"},              -- truncated sequence
    {'{"a\\u0000b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}', "NUL character"},
    {'{"x":5}', "tensor 'x' is a number, expected an object"},
    {'{"x":{"dtype":"F32","shape":[2]}}', "tensor 'x' has no \"data_offsets\""},
    {'{"x":{"shape":[2],"data_offsets":[0,8]}}', "tensor 'x' has no \"dtype\""},
    {'{"x":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "has \"dtype\" twice"},
    {'{"x":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}', "unknown dtype \"F31\""},
    {'{"x":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}', "unknown dtype \"f32\""},
    {'{"x":{"dtype":32,"shape":[2],"data_offsets":[0,8]}}', "dtype is a number, expected a string"},
    {'{"x":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}', "shape is a number, expected an array"},
    {'{"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', "shape entry 1 is not an integer"},
    {'{"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', "shape entry 1 is not an integer"},
    {'{"x":{"dtype":"F32","shape":[1e1],"data_offsets":[0,8]}}', "shape entry 1 is not an integer"},
    {'{"x":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}}', "not an integer in 0..2^63-1"},
    {'{"x":{"dtype":"F32","shape":[' .. string.rep("1,", 16) .. '1],"data_offsets":[0,4]}}', "17 dimensions (at most 16)"},
    {'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0]}}', "data_offsets must be an array [begin, end]"},
    {'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}}', "data_offsets must be an array [begin, end]"},
    {'{"x":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}}', "data_offsets must be integers"},
    {'{"x":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}', "data_offsets [8, 0] end before they begin"},
    {'{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', "shape [3] of F32 needs 12 bytes but data_offsets [0, 8] hold 8"},
    {'{"x":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}', "shape [2] of F16 needs 4 bytes"},
    {'{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', "data_offsets [0, 16] run past the end of the 8-byte data buffer"},
    {'{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}', "overflows 64 bits"},
    {'{"x":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}}', "overflows 64 bits"},
    {'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
      "tensors 'x' and 'y' overlap"},
    {'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
      "overlap"},
    {'{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', "4-byte gap before tensor 'x'"},
    {'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "4 bytes after the last tensor's data belong to no tensor"},
    {'{}', "8 bytes after the last tensor's data belong to no tensor"},
    {'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
      "duplicate tensor name 'x'"},
    {'{"__metadata__":{"k":1},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "value of 'k' is a number, expected a string"},
    {'{"__metadata__":[],"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "\"__metadata__\" is an array"},
    {'{"__metadata__":{},"__metadata__":{},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "appears twice"},
    {'{"__metadata__":{"k":"a","k":"b"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "has key 'k' twice"},
  }
  for i, c in ipairs(cases) do
    local bytes = type(c[1]) == "table" and c[1][1] or one(c[1])
    local ok, err = pcall(st.decode, bytes)
    lu.assertFalse(ok, string.format("case %d (%s) should fail", i, c[2]))
    lu.assertStrContains(err, "safetensors", false, "case " .. i)
    if not tostring(err):find(c[2], 1, true) then
      lu.fail(string.format("case %d: expected '%s' in: %s", i, c[2], tostring(err)))
    end
    -- the header-only reader rejects the same files
    lu.assertFalse(pcall(st.decode_header, bytes), "header-only, case " .. i)
  end
end

function TestFormat:test_bad_files()
  local p = T.tmpname()
  T.assert_error_contains("cannot open", st.read, p .. ".missing")
  T.assert_error_contains("not a regular file", st.read, "/tmp")
  write_file(p, "")
  T.assert_error_contains("the file has 0 bytes, too few", st.read, p)
  -- A header length of 2^62 in a tiny file: refused before any allocation.
  write_file(p, string.pack("<I8", 1 << 62) .. "{}")
  T.assert_error_contains("exceeds the limit", st.read, p)
  write_file(p, string.pack("<I8", 99999999) .. "{}")
  T.assert_error_contains(p .. ": header length 99999999 runs past the end of the 10-byte file",
    st.read, p)
  -- Errors from a file name it.
  write_file(p, one('{"x":{"dtype":"Q","shape":[2],"data_offsets":[0,8]}}'))
  T.assert_error_contains(p .. ": tensor 'x': unknown dtype", st.read, p)
  T.assert_error_contains("unknown dtype", st.header, p)
  -- Errors point at the caller's line, like Lua's own.
  local ok, err = pcall(function() local t = st.read(p); return t end)
  lu.assertFalse(ok)
  lu.assertStrContains(err, "test_safetensors.lua:")
  ok, err = pcall(function() st.write(p, {a = 1}) end)
  lu.assertStrContains(err, "test_safetensors.lua:")
  ok, err = pcall(function() st.encode({["\255"] = lps.ones(1)}) end)
  lu.assertStrContains(err, "test_safetensors.lua:")
  T.assert_error_contains("the path must be a string, got nil", st.read)
  -- Truncated data: the tensor's range runs past the file's end.
  write_file(p, one(OK):sub(1, -2))
  T.assert_error_contains("run past the end of the 7-byte data buffer", st.read, p)
end

function TestFormat:test_bad_writes()
  local one_t = lps.ones(1)
  T.assert_error_contains("reserved", st.encode, {__metadata__ = one_t})
  T.assert_error_contains("not valid UTF-8", st.encode, {["\255"] = one_t})
  T.assert_error_contains("metadata entry 1 is not valid UTF-8", st.encode, {a = one_t}, {k = "\192\175"})
  T.assert_error_contains("metadata 'k' is a table", st.encode, {a = one_t}, {k = {}})
  T.assert_error_contains("expected a tensor", st.encode, {a = 3})
  T.assert_error_contains("entry 1 is a tensor", st.encode, {one_t})
  T.assert_error_contains("names must be strings", st.encode, {[true] = one_t})
  T.assert_error_contains("NUL", st.encode, {["a\0b"] = one_t})
  T.assert_error_contains("duplicate tensor name 'a'", st.encode, {{"a", one_t}, {"a", one_t}})
end

TestModels = {}

function TestModels:tearDown() T.cleanup() end

-- y = W2 relu(W1 x + b1) + b2 ... computed by hand from a name -> tensor map.
local function manual_mlp(x, layers)
  local h = x
  for i, l in ipairs(layers) do
    h = lps.matmul(h, l[1], false, true)
    if l[2] then h = h + l[2] end
    if i < #layers then h = h:relu() end
  end
  return h
end

function TestModels:test_export_import_round_trip()
  local g = lps.generator(3)
  local p = T.tmpname()
  for _, m in ipairs{lps.nn.mlp{6, 5, 4, 3, generator = g},
                     lps.nn.mlp{6, 4, 2, activation = "tanh", generator = g},
                     lps.nn.sequential{lps.nn.conv2d(1, 2, 3, {generator = g}), lps.nn.relu(),
                       lps.nn.maxpool2d(2), lps.nn.flatten(), lps.nn.linear(8, 3, {generator = g})}} do
    lps.export_safetensors(m, p, {task = "t1", epochs = 3})
    local m2, meta = lps.import_safetensors(p)
    lu.assertEquals(meta.format, "pt")
    lu.assertEquals(meta.task, "t1")
    lu.assertEquals(meta.epochs, "3")
    lu.assertEquals(m2:arch(), m:arch())
    local x = m:arch()[1].type == "conv2d" and lps.randn(4, 1, 6, 6, g) or lps.randn(7, 6, g)
    lu.assertEquals(m2:forward(x):totable(), m:forward(x):totable()) -- bit-exact weights
    -- PyTorch naming in the file, weights out x in
    local _, _, names = st.read(p)
    local want = {}
    for i, e in ipairs(m:named_parameters()) do want[i] = e.name end
    table.sort(want)
    lu.assertEquals(names, want)
  end
end

function TestModels:test_import_pytorch_naming()
  local g = lps.generator(5)
  local W1, b1, W2, b2, W3 = lps.randn(5, 4, g), lps.randn(5, g), lps.randn(3, 5, g),
    lps.randn(3, g), lps.randn(2, 3, g)
  local x = lps.randn(6, 4, g)
  local want = manual_mlp(x, {{W1, b1}, {W2, b2}, {W3, nil}})
  local p = T.tmpname()
  -- nn.Sequential indices, fc-style names (fc10 after fc2), nested prefixes; no spec
  -- metadata, so the architecture comes from the shapes. A missing bias is zero.
  for _, names in ipairs{{"0", "2", "4"}, {"fc1", "fc2", "fc10"}, {"net.layer1", "net.layer2", "net.layer3"}} do
    st.write(p, {[names[1] .. ".weight"] = W1, [names[1] .. ".bias"] = b1,
      [names[2] .. ".weight"] = W2, [names[2] .. ".bias"] = b2, [names[3] .. ".weight"] = W3},
      {format = "pt"})
    local m, meta = lps.import_safetensors(p)
    lu.assertEquals(meta, {format = "pt"})
    lu.assertEquals(tostring(m):match("Linear%(in_features=4, out_features=5%)") ~= nil, true)
    lu.assertTrue(lps.allclose(m:forward(x), want, 0, 1e-6), table.concat(names, ","))
    lu.assertEquals(m:forward(x):totable(), want:totable())
  end
  -- the activation can be chosen for files without a spec
  local m = lps.import_safetensors(p, {activation = "tanh"})
  lu.assertEquals(m:arch()[2].type, "tanh")
  -- F16 weights import too (converted exactly)
  local half = image('{"0.weight":{"dtype":"F16","shape":[1,2],"data_offsets":[0,4]},' ..
    '"0.bias":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]}}  ', u16s(0x3C00, 0xC000, 0x3F80))
  write_file(p, half)
  lu.assertEquals(lps.import_safetensors(p):forward(lps.tensor{{3, 1}}):totable(), {{2}})
end

function TestModels:test_import_errors()
  local p = T.tmpname()
  local function try(named, needle, meta)
    st.write(p, named, meta)
    T.assert_error_contains(needle, lps.import_safetensors, p)
  end
  try({["0.weight"] = lps.ones(2, 3), ["1.running_mean"] = lps.ones(2)},
    "'1.running_mean' is not a layer's weight or bias")
  try({["0.weight"] = lps.ones(2, 3), ["2.weight"] = lps.ones(4, 5)},
    "layer '2' takes 5 inputs but layer '0' gives 2")
  try({["0.weight"] = lps.ones(2, 3), ["2.bias"] = lps.ones(4)}, "layer '2' has a bias but no weight")
  try({["0.weight"] = lps.ones(2, 3, 1)}, "0.weight is (2x3x1); a linear layer's weight is 2-D")
  try({["0.weight"] = lps.ones(2, 3), ["0.bias"] = lps.ones(3)}, "0.bias is (3), expected (2)")
  try({}, "holds no tensors")
  try({["0.weight"] = lps.ones(2, 3)}, "is not a JSON spec", {["lualps.spec"] = "{"})
  try({["0.bias"] = lps.ones(2)}, "tensor '0.weight' is missing",
    {["lualps.spec"] = '{"type":"sequential","layers":[{"type":"linear","in_features":3,"out_features":2}]}'})
  T.assert_error_contains("cannot open", lps.import_safetensors, p .. ".missing")
  local ok, err = pcall(function() local m = lps.import_safetensors(p); return m end)
  lu.assertFalse(ok)
  lu.assertStrContains(err, "test_safetensors.lua:")
  T.assert_error_contains("export expects a model", lps.export_safetensors, {}, p)
end

TestTorchInterop = {}

-- PyTorch trains and exports MLPs and a CNN, lualps imports them and must
-- reproduce PyTorch's outputs to 1e-5, and the reverse
-- (scripts/check_torch_interop.lua).
function TestTorchInterop:test_pytorch_round_trip()
  local check = dofile("scripts/check_torch_interop.lua")
  local py = check.find_python()
  if not py then lu.skip("no python3 with torch (Debian python3-torch; scripts/setup.sh installs it)") end
  local r = check.run{python = py}
  lu.assertTrue(r.python_ok, "PyTorch loaded the lualps export and matched its outputs")
  lu.assertTrue(r.reverse <= 1e-5, "lualps -> torch max diff " .. r.reverse)
  lu.assertTrue(r.seq <= 1e-5, "torch Sequential -> lualps max diff " .. r.seq)
  lu.assertTrue(r.fc <= 1e-5, "torch fc1/fc2/fc3 -> lualps max diff " .. r.fc)
  -- CNNs both ways, the architecture in "lualps.arch"
  lu.assertTrue(r.reverse_cnn <= 1e-5, "lualps CNN -> torch max diff " .. r.reverse_cnn)
  lu.assertTrue(r.cnn <= 1e-5, "torch CNN -> lualps max diff " .. r.cnn)
  lu.assertEquals(r.cnn_arch, {{type = "conv2d", ["in"] = 1, out = 6, kernel = 5, stride = 1, padding = 2},
    {type = "relu"}, {type = "maxpool2d", kernel = 2, stride = 2},
    {type = "conv2d", ["in"] = 6, out = 12, kernel = 3, stride = 2, padding = 0}, {type = "tanh"},
    {type = "maxpool2d", kernel = 3, stride = 1}, {type = "flatten"}, {type = "linear", ["in"] = 192, out = 10}})
  lu.assertStrContains(r.cnn_meta["lualps.arch"], '{"type":"input","shape":[1,28,28]}')
  lu.assertEquals(r.seq_meta.format, "pt")
  lu.assertEquals(#r.seq_arch, 5)
  lu.assertEquals(r.fc_arch[1].out, 24)
  lu.assertEquals(r.dtypes.w_f16, "F16")
  lu.assertEquals(r.dtypes.w_bf16, "BF16")
  lu.assertEquals(r.dtypes.x_f64, "F64")
  lu.assertTrue(r.half_exact, "F16 payloads read bit-exactly")
  lu.assertTrue(r.bf16_exact, "BF16 payloads read bit-exactly")
  lu.assertTrue(r.f64_exact, "F64 rounds as PyTorch's .float()")
end

-- mlp_layers with arguments that are not a state dict and its names:
-- errors naming it (was arithmetic on a table, indexing a number; the Lua
-- API fuzzer)
TestMlpLayersArguments = {}

function TestMlpLayersArguments:test_bad_arguments()
  local st = lps.safetensors
  T.assert_error_contains("mlp_layers needs the tensors (a map name -> tensor) and their names (a list), got table and nil",
    st.mlp_layers, {}, nil)
  T.assert_error_contains("mlp_layers: tensor name 5 is not a string naming a tensor", st.mlp_layers, {}, {5})
  T.assert_error_contains("tensor name w.weight is not a string naming a tensor", st.mlp_layers, {["w.weight"] = 1}, {"w.weight"})
  T.assert_error_contains("the file holds no tensors", st.mlp_layers, {}, {}, {})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
