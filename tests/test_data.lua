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

-- lps.data.domains is the one list of domain names: the C core's, in its
-- order (each name selects a transform there, and another name is refused).
function TestDomains:test_one_list_of_names()
  lu.assertEquals(lps.data.domains, {"identity", "invert", "rot90", "blur", "downup"})
  local C = lps.core._nn
  for _, d in ipairs(lps.data.domains) do lu.assertEquals(C.image_domain(ramp(), d):shape(), {1, 16}) end
  T.assert_error_contains("unknown domain 'sepia'", C.image_domain, ramp(), "sepia")
end

function TestDomains:test_bad_input()
  T.assert_error_contains("unknown domain 'sepia'", lps.data.domain, ramp(), "sepia")
  T.assert_error_contains("square images", lps.data.domain, lps.zeros(2, 5), "rot90")
  T.assert_error_contains("even side", lps.data.domain, lps.zeros(1, 9), "downup")
  T.assert_error_contains("expected a tensor", lps.data.domain, {1, 2}, "blur")
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
  local dir = T.tmpname("_dir")
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local function put(name, bytes)
    local p = assert(io.popen("gzip -c > '" .. dir .. "/" .. name .. "'", "w"))
    p:write(bytes)
    p:close()
  end
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
