-- Fashion-MNIST reading (the real Debian files) and errors on bad files.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local data = lps.data

local DIR = os.getenv("LUALPS_DATA") or data.default_dir

TestFashion = {}

function TestFashion:test_test_split()
  local x, y = data.fashion_mnist("test", DIR)
  lu.assertEquals(x:shape(), {10000, 784})
  lu.assertEquals(y:shape(), {10000})
  -- the first labels of t10k-labels (0-based 9 2 1 1 6 1 4 6 5 7), 1-based here
  lu.assertEquals(y:rows(1, 10):totable(), {10, 3, 2, 2, 7, 2, 5, 7, 6, 8})
  lu.assertEquals(y:min(), 1)
  lu.assertEquals(y:max(), 10)
  lu.assertEquals(x:min(), 0)
  lu.assertEquals(x:max(), 1)
  -- balanced: 1000 images per class
  local _, y3 = data.select_classes(x, y, {3})
  lu.assertEquals(y3:numel(), 1000)
  -- pixel sum of the first image (bytes sum to 33456)
  lu.assertAlmostEquals(x[1]:sum(), 33456 / 255, 1e-3)
end

function TestFashion:test_train_split()
  if T.scale == "small" then return end -- 47 MB of pixels: skipped under ASan
  local x, y = data.fashion_mnist("train", DIR)
  lu.assertEquals(x:shape(), {60000, 784})
  lu.assertEquals(y:rows(1, 10):totable(), {10, 1, 1, 4, 1, 3, 8, 3, 6, 6})
  lu.assertAlmostEquals(x[1]:sum(), 76247 / 255, 1e-3)
  lu.assertEquals(y:sum(), 6000 * 55)
end

function TestFashion:test_env_and_errors()
  T.assert_error_contains("split must be 'train' or 'test'", data.fashion_mnist, "val", DIR)
  T.assert_error_contains("/nonexistent/t10k-images-idx3-ubyte.gz: cannot open: No such file",
    data.fashion_mnist, "test", "/nonexistent")
  -- $LUALPS_DATA replaces the default directory (checked in a child process)
  local p = io.popen([[LUALPS_DATA=/elsewhere lua5.4 -e 'package.path = "./?.lua;./?/init.lua;" .. package.path
    print(select(2, pcall(require("lualps").data.fashion_mnist, "test")))' 2>&1]])
  local out = p:read("a")
  p:close()
  lu.assertStrContains(out, "/elsewhere/t10k-images-idx3-ubyte.gz: cannot open")
end

-- A new directory and a function writing gzip-compressed bytes into it.
local function gzip_dir(suffix)
  local dir = T.tmpname(suffix)
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  return dir, function(name, bytes)
    local f = assert(io.popen("gzip -c > '" .. dir .. "/" .. name .. "'", "w"))
    f:write(bytes)
    assert(f:close())
  end
end

-- A 30-byte file whose header claims a million images (3 GB of floats):
-- the reader fails on the missing bytes without first zeroing the whole
-- tensor (it did: 3.5 s and 3.1 GB resident for those 30 bytes, found by
-- the Lua API fuzzer's IDX files)
function TestFashion:test_header_claiming_more_than_the_file_holds()
  local dir, put = gzip_dir("")
  put("train-images-idx3-ubyte.gz", string.pack(">I4I4I4I4", 0x803, 1 << 20, 28, 28))
  put("train-labels-idx1-ubyte.gz", string.pack(">I4I4", 0x801, 1 << 28))
  local rss0 = lps.util.peak_rss_mb()
  T.assert_error_contains("1048576 images of 28x28 pixels need 822083584 bytes after the header, the data has 0",
    lps.core._nn.idx_images, dir .. "/train-images-idx3-ubyte.gz")
  T.assert_error_contains("268435456 labels need 268435456 bytes after the header, the data has 0",
    lps.core._nn.idx_labels, dir .. "/train-labels-idx1-ubyte.gz")
  if rss0 then lu.assertTrue(lps.util.peak_rss_mb() - rss0 < 500, "peak memory grew by less than 500 MB") end
  os.remove(dir .. "/train-images-idx3-ubyte.gz")
  os.remove(dir .. "/train-labels-idx1-ubyte.gz")
  os.remove(dir)
end

TestHelpers = {}

local function toy()
  -- 6 samples, sample i has value i; labels 1 2 3 1 2 3
  local x = lps.arange(6):reshape(6, 1) + 1
  return x, lps.tensor{1, 2, 3, 1, 2, 3}
end

function TestHelpers:test_select_classes()
  local x, y = toy()
  local xs, ys = data.select_classes(x, y, {3, 1})
  lu.assertEquals(xs:reshape(-1):totable(), {1, 3, 4, 6})
  lu.assertEquals(ys:totable(), {2, 1, 2, 1})
  T.assert_error_contains("listed twice", data.select_classes, x, y, {1, 1})
end

function TestHelpers:test_fraction()
  local x, y = toy()
  local xf, yf = data.fraction(x, y, 0.5, lps.generator(1))
  lu.assertEquals(xf:size(1), 3)
  -- rows and labels stay paired, in the original order
  local prev = 0
  for i = 1, 3 do
    local v = xf:get(i, 1)
    lu.assertTrue(v > prev)
    prev = v
    lu.assertEquals(yf[i], (v - 1) % 3 + 1)
  end
  -- same generator seed, same subset; another seed eventually differs
  local xg = data.fraction(x, y, 0.5, lps.generator(1))
  lu.assertTrue(lps.allclose(xf, xg, 0, 0))
  local differs = false
  for s = 2, 10 do
    if not lps.allclose(data.fraction(x, y, 0.5, lps.generator(s)), xf, 0, 0) then differs = true end
  end
  lu.assertTrue(differs)
  lu.assertEquals(data.fraction(x, y, 0, lps.generator(1)):size(1), 0)
  T.assert_error_contains("frac must be in [0, 1]", data.fraction, x, y, 2)
end

function TestHelpers:test_split()
  local x, y = toy()
  local xt, yt, xv, yv = data.split(x, y, 2)
  lu.assertEquals(xt:reshape(-1):totable(), {1, 2, 3, 4})
  lu.assertEquals(yv:totable(), {2, 3})
  lu.assertEquals(xv:reshape(-1):totable(), {5, 6})
  xt, yt, xv, yv = data.split(x, y, 0.5, lps.generator(3))
  lu.assertEquals(xt:size(1) + xv:size(1), 6)
  lu.assertEquals(xv:size(1), 3)
  local seen = {}
  for _, part in ipairs{xt, xv} do
    for i = 1, part:size(1) do
      local v = part:get(i, 1)
      lu.assertNil(seen[v])
      seen[v] = true
    end
  end
  lu.assertEquals(yt:numel(), 3)
  T.assert_error_contains("cannot take 7 of 6", data.split, x, y, 7)
  T.assert_error_contains("6 samples but 5 labels", data.split, x, lps.zeros(5), 1)
end

-- Bad arguments raise errors naming the operation (found by
-- tests/fuzz/fuzz_lua_api.lua: they raised "attempt to call a nil value
-- (method 'random')" and the like from inside data.lua).
function TestHelpers:test_bad_arguments_name_the_operation()
  local x, y = toy()
  T.assert_error_contains("fraction: gen must be a generator", data.fraction, x, y, 0.5, 7)
  T.assert_error_contains("split: gen must be a generator", data.split, x, y, 2, {})
  T.assert_error_contains("randperm: gen must be a generator", data.randperm, 4, "g")
  T.assert_error_contains("randperm: n must be an integer >= 0, got x", data.randperm, "x")
  T.assert_error_contains("randperm: n must be an integer >= 0, got -1", data.randperm, -1)
  lu.assertEquals(#data.randperm(0), 0)
  T.assert_error_contains("select_classes: classes must be a list", data.select_classes, x, y, 3)
  T.assert_error_contains("select_classes: class 2 is NaN, not a label", data.select_classes, x, y, {1, 0 / 0})
  T.assert_error_contains("select_classes: class 1 is a, not a label", data.select_classes, x, y, {"a"})
  T.assert_error_contains("fashion_mnist: dir must be a directory path, got table", data.fashion_mnist, "test", {})
  T.assert_error_contains("glyph: opts must be a table, got string", data.glyph, "A", "big")
  -- split's val must be finite (math.huge raised "bad argument #2 to 'format'")
  T.assert_error_contains("split: val must be a fraction or a count >= 0", data.split, x, y, math.huge)
  T.assert_error_contains("split: val must be a fraction or a count >= 0", data.split, x, y, 0 / 0)
  -- a count too large for an integer ("bad argument #1 to 'format'"), a NaN fraction (an error from table.move)
  T.assert_error_contains("split: cannot take 1e+300 of 6 samples", data.split, x, y, 1e300)
  T.assert_error_contains("fraction: frac must be in [0, 1]", data.fraction, x, y, 0 / 0)
end

TestDomains = {}

-- A 4x4 image with pixel values 1..16, row by row.
local function ramp() return lps.arange(16):add_(1):reshape(1, 16) end

function TestDomains:test_hand_checked_outputs()
  local x = ramp()
  local function flat(d) return lps.data.domain(x, d):reshape(16):totable() end
  lu.assertEquals(flat("identity"), x:reshape(16):totable())
  lu.assertEquals(flat("invert"), {0, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15})
  -- clockwise: the first column, read bottom up, becomes the first row
  lu.assertEquals(flat("rot90"), {13, 9, 5, 1, 14, 10, 6, 2, 15, 11, 7, 3, 16, 12, 8, 4})
  lu.assertEquals(flat("downup"), {3.5, 3.5, 5.5, 5.5, 3.5, 3.5, 5.5, 5.5, 11.5, 11.5, 13.5, 13.5,
    11.5, 11.5, 13.5, 13.5})
  -- blur corner: rows (2*1 + 2)/4 = 1 and (2*5 + 6)/4 = 4, then (2*1 + 4)/4 = 1.5
  local b = flat("blur")
  lu.assertEquals(b[1], 1.5)
  lu.assertEquals(b[6], 6) -- inner pixel of a linear ramp keeps its value
  -- a single bright pixel spreads as the 3x3 binomial kernel / 16
  local dot = lps.zeros(1, 25)
  dot:set(1, 13, 16)
  local k = lps.data.domain(dot, "blur"):reshape(5, 5)
  lu.assertEquals(k:rows(2, 4):totable(), {{0, 1, 2, 1, 0}, {0, 2, 4, 2, 0}, {0, 1, 2, 1, 0}})
  lu.assertEquals(k:sum(), 16)
end

function TestDomains:test_rotations_compose()
  local x = lps.rand(3, 1, 28, 28, lps.generator(5))
  local r = x
  for _ = 1, 4 do r = lps.data.domain(r, "rot90") end
  lu.assertEquals(r:totable(), x:totable()) -- four quarter turns: the same images
  lu.assertEquals(lps.data.domain(x, "rot90"):shape(), {3, 1, 28, 28})
  local inv = lps.data.domain(lps.data.domain(x, "invert"), "invert")
  lu.assertTrue(lps.allclose(inv, x, 0, 1e-6))
end

-- The image of side s whose pixel (r, c) (0-based) is f(r, c), as 1 x s*s.
local function image(s, f)
  local x = lps.zeros(1, s * s)
  for r = 0, s - 1 do for c = 0, s - 1 do x:set(1, r * s + c + 1, f(r, c)) end end
  return x
end

local function pixel(x, s, r, c) return x:get(1, r * s + c + 1) end

function TestDomains:test_zoomout_hand_checked()
  -- 4x4: centre 1.5, output row r samples row 1.5 + (r - 1.5) * 5/3 = -1, 2/3, 7/3, 4: the border
  -- rows and columns fall outside; inside, bilinear sampling of the ramp 4r + c + 1 is exact
  local out = lps.data.domain(ramp(), "zoomout"):reshape(4, 4):totable()
  local want = {{0, 0, 0, 0}, {0, 13 / 3, 6, 0}, {0, 11, 38 / 3, 0}, {0, 0, 0, 0}}
  for r = 1, 4 do for c = 1, 4 do lu.assertAlmostEquals(out[r][c], want[r][c], 1e-5) end end
  -- a lone pixel at (1, 1) reaches only output (1, 1), with weight (2/3)^2
  local dot = image(4, function(r, c) return (r == 1 and c == 1) and 1 or 0 end)
  local z = lps.data.domain(dot, "zoomout")
  lu.assertAlmostEquals(pixel(z, 4, 1, 1), 4 / 9, 1e-6)
  lu.assertAlmostEquals(z:sum(), 4 / 9, 1e-6)
  -- 28x28 ones: rows 6..21 sample inside (1), rows 0..4 and 23..27 outside (0)
  local o = lps.data.domain(lps.ones(1, 784), "zoomout")
  for _, r in ipairs{0, 4, 23, 27} do lu.assertEquals(pixel(o, 28, r, 14), 0) end
  for _, r in ipairs{6, 13, 21} do lu.assertAlmostEquals(pixel(o, 28, r, 14), 1, 1e-6) end
  lu.assertTrue(o:max() <= 1 + 1e-6 and o:min() >= 0)
end

function TestDomains:test_shift_and_vflip_hand_checked()
  -- side 10: k = 2 pixels down and right, zeros where nothing comes in
  local x = image(10, function(r, c) return 10 * r + c + 1 end)
  local out = lps.data.domain(x, "shift")
  lu.assertEquals(pixel(out, 10, 2, 2), 1)
  lu.assertEquals(pixel(out, 10, 2, 9), 8)
  lu.assertEquals(pixel(out, 10, 9, 9), 78)
  lu.assertEquals(pixel(out, 10, 1, 5), 0)
  lu.assertEquals(pixel(out, 10, 5, 1), 0)
  lu.assertEquals(out:sum(), 64 * 1 + 8 * (0 + 1 + 2 + 3 + 4 + 5 + 6 + 7) + 8 * 10 * (0 + 1 + 2 + 3 + 4 + 5 + 6 + 7))
  -- 28x28: five pixels
  local one = image(28, function(r, c) return (r == 0 and c == 0) and 1 or 0 end)
  lu.assertEquals(pixel(lps.data.domain(one, "shift"), 28, 5, 5), 1)
  -- upside down: rows in reverse order; twice: the image
  lu.assertEquals(lps.data.domain(ramp(), "vflip"):reshape(16):totable(),
    {13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4})
  local y = lps.rand(2, 1, 28, 28, lps.generator(3))
  lu.assertEquals(lps.data.domain(lps.data.domain(y, "vflip"), "vflip"):totable(), y:totable())
end

function TestDomains:test_edges_hand_checked()
  -- a step (columns 0, 1 dark, 2, 3 bright), zeros outside: Sobel gx = 4 on both sides of
  -- the step and at the right border; top row: (gx, gy) = (3, 1) beside the step (sqrt(10)/4),
  -- (3, 3) and (-3, 3) on the bright side, capped at 1
  local step = image(4, function(_, c) return c >= 2 and 1 or 0 end)
  local out = lps.data.domain(step, "edges"):reshape(4, 4):totable()
  local e = math.sqrt(10) / 4
  local want = {{0, e, 1, 1}, {0, 1, 1, 1}, {0, 1, 1, 1}, {0, e, 1, 1}}
  for r = 1, 4 do for c = 1, 4 do lu.assertAlmostEquals(out[r][c], want[r][c], 1e-6) end end
  -- a gentle ramp 0.1 c: gx = 4 * 0.2 inside, magnitude 0.2 (not capped); flat: 0
  local g = lps.data.domain(image(5, function(_, c) return 0.1 * c end), "edges")
  lu.assertAlmostEquals(pixel(g, 5, 2, 2), 0.2, 1e-6)
  lu.assertEquals(pixel(lps.data.domain(lps.full({1, 25}, 0.5), "edges"), 5, 2, 2), 0)
end

-- The fixed texture: s*s uniforms from a generator seeded LPS_DOMAIN_SEED, times 0.6.
local function texture(s)
  local g, t = lps.generator(1907), {}
  for j = 1, s * s do t[j] = 0.6 * g:uniform() end
  return t
end

function TestDomains:test_texture_where_dark()
  local t = texture(28)
  local bg = lps.data.domain(lps.zeros(1, 784), "texture") -- a dark image: the texture itself
  for _, j in ipairs{1, 2, 400, 784} do lu.assertAlmostEquals(bg:get(1, j), t[j], 1e-6) end
  lu.assertTrue(bg:min() >= 0 and bg:max() < 0.6)
  lu.assertEquals(lps.data.domain(lps.ones(1, 784), "texture"):min(), 1) -- bright: no texture
  local x = lps.rand(3, 784, lps.generator(9))
  local out = lps.data.domain(x, "texture")
  for _, i in ipairs{1, 3} do
    for _, j in ipairs{5, 300, 700} do
      local v = x:get(i, j)
      lu.assertAlmostEquals(out:get(i, j), v + (1 - v) * t[j], 1e-6)
    end
  end
end

-- The elastic warp by the rule of csrc/lualps.h, in Lua: a 5x5 grid of
-- control displacements, interpolated bilinearly, then bilinear sampling.
local function elastic_reference(x, s)
  local g, amp, ctl = lps.generator(1907), s / 7, {}
  for k = 1, 50 do ctl[k] = amp * (2 * g:uniform() - 1) end
  local function at(i, j, k) return ctl[2 * (i * 5 + j) + k] end
  local function px(r, c) return (r >= 0 and r < s and c >= 0 and c < s) and x[r * s + c + 1] or 0 end
  local out = {}
  for r = 0, s - 1 do
    for c = 0, s - 1 do
      local u, v = r * 4 / (s - 1), c * 4 / (s - 1)
      local i, j = math.min(math.floor(u), 3), math.min(math.floor(v), 3)
      local fu, fv = u - i, v - j
      local d = {}
      for k = 1, 2 do
        local top = (1 - fv) * at(i, j, k) + fv * at(i, j + 1, k)
        local bot = (1 - fv) * at(i + 1, j, k) + fv * at(i + 1, j + 1, k)
        d[k] = (1 - fu) * top + fu * bot
      end
      local fr, fc = r + d[1], c + d[2]
      local r0, c0 = math.floor(fr), math.floor(fc)
      local a, b = fr - r0, fc - c0
      out[r * s + c + 1] = (1 - a) * ((1 - b) * px(r0, c0) + b * px(r0, c0 + 1))
        + a * ((1 - b) * px(r0 + 1, c0) + b * px(r0 + 1, c0 + 1))
    end
  end
  return out
end

function TestDomains:test_elastic_against_a_reference()
  for _, s in ipairs{9, 28} do
    local x = lps.rand(1, s * s, lps.generator(s))
    local want = elastic_reference(x:reshape(s * s):totable(), s)
    local got = lps.data.domain(x, "elastic"):reshape(s * s):totable()
    for j = 1, s * s do lu.assertAlmostEquals(got[j], want[j], 1e-5) end
  end
  -- a ramp in rows shows the field: inside, no pixel moves more than s/7 = 4
  local x = image(28, function(r) return r end)
  local out = lps.data.domain(x, "elastic")
  local moved = 0
  for r = 5, 22 do
    for c = 5, 22 do
      local d = math.abs(pixel(out, 28, r, c) - r)
      lu.assertTrue(d <= 4 + 1e-4, ("pixel %d,%d moved %g rows"):format(r, c, d))
      moved = math.max(moved, d)
    end
  end
  lu.assertTrue(moved > 1, "the field moves pixels")
end

function TestDomains:test_new_domains_keep_shape_and_range()
  local x = lps.rand(2, 1, 28, 28, lps.generator(4))
  for _, d in ipairs{"zoomout", "shift", "vflip", "edges", "texture", "elastic"} do
    local out = lps.data.domain(x, d)
    lu.assertEquals(out:shape(), {2, 1, 28, 28}, d)
    lu.assertTrue(out:min() >= 0 and out:max() <= 1 + 1e-6, d)
    lu.assertEquals(lps.data.domain(x, d):totable(), out:totable(), d) -- one fixed transform
  end
end

-- lps.data.domains is the one list of domain names: the C core's, in its
-- order (each name selects a transform there, and another name is refused).
function TestDomains:test_one_list_of_names()
  lu.assertEquals(lps.data.domains, {"identity", "invert", "rot90", "blur", "downup", "zoomout", "shift", "vflip",
    "edges", "texture", "elastic"})
  local C = lps.core._nn
  for _, d in ipairs(lps.data.domains) do lu.assertEquals(C.image_domain(ramp(), d):shape(), {1, 16}) end
  T.assert_error_contains("unknown domain 'sepia'", C.image_domain, ramp(), "sepia")
end

function TestDomains:test_bad_input()
  T.assert_error_contains("unknown domain 'sepia'", lps.data.domain, ramp(), "sepia")
  T.assert_error_contains("square images", lps.data.domain, lps.zeros(2, 5), "rot90")
  T.assert_error_contains("even side", lps.data.domain, lps.zeros(1, 9), "downup")
  T.assert_error_contains("expected a tensor", lps.data.domain, {1, 2}, "blur")
  for _, d in ipairs{"zoomout", "shift", "vflip", "edges", "texture", "elastic"} do
    T.assert_error_contains("square images", lps.data.domain, lps.zeros(2, 6), d)
    T.assert_error_contains("square images", lps.data.domain, lps.zeros(2, 1, 4, 5), d)
    T.assert_error_contains("square images", lps.data.domain, lps.zeros(3, 1), d)
  end
end

TestBadFiles = {}

local function be32(n) return string.pack(">I4", n) end

-- Write bytes gzip-compressed (or raw) to a fresh temp path.
local function write(bytes, raw)
  local path = T.tmpname(".gz")
  if raw then
    local f = assert(io.open(path, "wb"))
    f:write(bytes)
    f:close()
  else
    local p = assert(io.popen("gzip -c > '" .. path .. "'", "w"))
    p:write(bytes)
    p:close()
  end
  return path
end

local function images(n, rows, cols, pixels)
  return be32(0x803) .. be32(n) .. be32(rows) .. be32(cols) .. (pixels or ("\7"):rep(n * rows * cols))
end

function TestBadFiles:teardown() T.cleanup() end

function TestBadFiles:test_good_small_file()
  local x = lps.core._nn.idx_images(write(images(2, 2, 3, "\0\255\51\0\0\0" .. "\1\2\3\4\5\6")))
  lu.assertEquals(x:shape(), {2, 6})
  lu.assertAlmostEquals(x:get(1, 2), 1, 0)
  lu.assertAlmostEquals(x:get(1, 3), 0.2, 1e-7)
  local y = lps.core._nn.idx_labels(write(be32(0x801) .. be32(3) .. "\9\0\4"))
  lu.assertEquals(y:totable(), {9, 0, 4})
end

function TestBadFiles:test_errors_name_file_and_problem()
  local idx = lps.core._nn
  local p = write(be32(0x801) .. be32(2) .. "\1\2")
  T.assert_error_contains(p .. ": wrong magic number 0x00000801, expected 0x00000803", idx.idx_images, p)
  p = write(images(2, 28, 28, ("\0"):rep(1000)))
  T.assert_error_contains(p .. ": truncated: 2 images of 28x28 pixels need 1568 bytes after the header, the data has 1000",
    idx.idx_images, p)
  p = write(be32(0x803) .. be32(2))
  T.assert_error_contains(p .. ": truncated: the header needs 16 bytes, the data has 8", idx.idx_images, p)
  p = write(images(1, 2, 2), true)
  T.assert_error_contains(p .. ": not a gzip file", idx.idx_images, p)
  p = write("", true)
  T.assert_error_contains(p .. ": not a gzip file (it is empty)", idx.idx_images, p)
  p = write(images(3, 0, 28, ""))
  T.assert_error_contains(p .. ": wrong dimensions 3 x 0 x 28", idx.idx_images, p)
  p = write(be32(0x801) .. be32(5) .. "\1\2")
  T.assert_error_contains(p .. ": truncated: 5 labels need 5 bytes after the header, the data has 2",
    idx.idx_labels, p)
  T.assert_error_contains("/no/such/file.gz: cannot open: No such file or directory", idx.idx_images, "/no/such/file.gz")
end

function TestBadFiles:test_corrupt_gzip_stream()
  -- a valid gzip file cut in the middle of its compressed data
  local full = write(images(50, 28, 28, ("\1\2\3\250"):rep(50 * 196)))
  local f = assert(io.open(full, "rb"))
  local bytes = f:read("a")
  f:close()
  local cut = write(bytes:sub(1, #bytes // 2), true)
  local ok, err = pcall(lps.core._nn.idx_images, cut)
  lu.assertFalse(ok)
  lu.assertStrContains(err, cut .. ": ")
  lu.assertTrue((err:find("truncated", 1, true) or err:find("corrupt", 1, true)) ~= nil, err)
end

function TestBadFiles:test_dataset_dir_mismatch()
  -- a directory whose images and labels disagree in count
  local dir, put = gzip_dir("_dir")
  put("t10k-images-idx3-ubyte.gz", images(3, 28, 28))
  put("t10k-labels-idx1-ubyte.gz", be32(0x801) .. be32(2) .. "\1\2")
  T.assert_error_contains("has 3 images but", data.fashion_mnist, "test", dir)
  put("t10k-labels-idx1-ubyte.gz", be32(0x801) .. be32(3) .. "\1\2\12")
  T.assert_error_contains("has label 12, expected classes 0..9", data.fashion_mnist, "test", dir)
  put("t10k-labels-idx1-ubyte.gz", be32(0x801) .. be32(3) .. "\1\2\9")
  local x, y = data.fashion_mnist("test", dir)
  lu.assertEquals(y:totable(), {2, 3, 10})
  lu.assertAlmostEquals(x:max(), 7 / 255, 1e-7)
  os.remove(dir .. "/t10k-images-idx3-ubyte.gz")
  os.remove(dir .. "/t10k-labels-idx1-ubyte.gz")
  os.remove(dir)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
