-- Rendered letters (csrc/data/glyphs.c, lps.data.glyphs): hand-checked
-- images with the randomness off, then the random sets' shape, range,
-- determinism and class structure.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local D = lps.data

local function px(x, r, c) return x[r * 28 + c + 1] end
local function row_sum(x, r)
  local s = 0
  for c = 0, 27 do s = s + px(x, r, c) end
  return s
end
local function col_sum(x, c)
  local s = 0
  for r = 0, 27 do s = s + px(x, r, c) end
  return s
end

TestGlyphs = {}

function TestGlyphs:test_classes_are_the_52_letters()
  lu.assertEquals(#D.glyph_classes, 52)
  lu.assertEquals(D.glyph_classes[1], "A")
  lu.assertEquals(D.glyph_classes[26], "Z")
  lu.assertEquals(D.glyph_classes[27], "a")
  lu.assertEquals(D.glyph_classes[52], "z")
  for _, c in ipairs(D.glyph_classes) do lu.assertStrMatches(c, "%a") end
end

function TestGlyphs:test_faces_spread_over_families_and_exist()
  local families, packages = {}, {}
  lu.assertTrue(#D.glyph_faces >= 8)
  for _, f in ipairs(D.glyph_faces) do
    families[f.style:match("^%a+")] = true
    packages[f.package] = true
    lu.assertStrMatches(f.path, "/usr/share/fonts/.+%.[ot]tf")
    local h = io.open(f.path, "rb")
    lu.assertNotNil(h, f.path .. " (" .. f.package .. ") is missing")
    h:close()
  end
  lu.assertTrue(families.sans and families.serif and families.mono)
  lu.assertTrue(packages["fonts-dejavu-core"] and packages["fonts-urw-base35"])
end

-- DejaVu Sans 'I' is a rectangle: stem 203 font units, as tall as 'H'
-- (1493 units). At size 20, upright and centred, it covers rows 4..23
-- completely and is 20 * 203 / 1493 = 2.719 pixels wide.
function TestGlyphs:test_I_is_a_bar_of_the_predicted_size()
  local x = D.glyph("I", {face = 1, size = 20})
  local w = 20 * 203 / 1493
  for r = 0, 27 do
    if r >= 4 and r <= 23 then
      lu.assertAlmostEquals(row_sum(x, r), w, 0.01)
    else
      lu.assertEquals(row_sum(x, r), 0)
    end
  end
  -- the two inner columns are fully covered, the edges share the rest
  lu.assertAlmostEquals(col_sum(x, 13), 20, 1e-5)
  lu.assertAlmostEquals(col_sum(x, 14), 20, 1e-5)
  lu.assertAlmostEquals(col_sum(x, 12), col_sum(x, 15), 1e-5)
  lu.assertAlmostEquals(x:sum(), 20 * w, 0.2)
  -- 'l' rises to the ascender, 1556 units: 20 * 1556 / 1493 = 20.84 rows
  local l = D.glyph("l", {face = 1, size = 20})
  lu.assertAlmostEquals(col_sum(l, 13), 20 * 1556 / 1493, 0.02)
  lu.assertAlmostEquals(col_sum(l, 12), col_sum(l, 15), 1e-5)
end

function TestGlyphs:test_pixels_far_from_the_glyph_are_zero_even_with_noise()
  local x = D.glyph("I", {noise = 0.3, ink = 0.8, generator = lps.generator(3)})
  for r = 0, 27 do
    for c = 0, 27 do
      if c < 12 or c > 15 or r < 4 or r > 23 then lu.assertEquals(px(x, r, c), 0) end
    end
  end
  -- the noise is there: full-coverage pixels are no longer all 0.8
  local vals = {}
  for r = 4, 23 do vals[("%.4f"):format(px(x, r, 13))] = true end
  lu.assertTrue(next(vals, next(vals)) ~= nil)
end

function TestGlyphs:test_o_is_symmetric_and_hollow()
  local o = D.glyph("o", {face = 1, size = 24})
  for r = 0, 27 do
    for c = 0, 27 do
      lu.assertTrue(math.abs(px(o, r, c) - px(o, r, 27 - c)) < 0.05, "left-right mirror")
      lu.assertTrue(math.abs(px(o, r, c) - px(o, 27 - r, c)) < 0.05, "top-bottom mirror")
    end
  end
  for r = 12, 15 do
    for c = 11, 16 do lu.assertEquals(px(o, r, c), 0, "the counter is empty") end
  end
  -- the ring crosses the middle row twice, fully inked
  local left, right = 0, 0
  for c = 0, 13 do left = math.max(left, px(o, 14, c)) end
  for c = 14, 27 do right = math.max(right, px(o, 14, c)) end
  lu.assertEquals(left, 1)
  lu.assertEquals(right, 1)
end

function TestGlyphs:test_shift_moves_the_image_by_whole_pixels()
  local x0 = D.glyph("I", {})
  local x1 = D.glyph("I", {dx = 3, dy = -2}) -- 3 right, 2 up
  for r = 2, 27 do
    for c = 0, 24 do lu.assertEquals(px(x1, r - 2, c + 3), px(x0, r, c)) end
  end
end

function TestGlyphs:test_a_quarter_turn_matches_the_rotated_image()
  for _, L in ipairs{"L", "F", "R"} do
    local up = D.glyph(L, {size = 20}):reshape(1, 784)
    local cw = D.glyph(L, {size = 20, angle = -90})
    local rot = D.domain(up, "rot90"):reshape(784) -- clockwise
    lu.assertTrue((cw - rot):abs():max() < 0.02, L .. " turned clockwise")
    local ccw = D.glyph(L, {size = 20, angle = 90})
    local back = D.domain(D.domain(rot:reshape(1, 784), "rot90"), "rot90"):reshape(784)
    lu.assertTrue((ccw - back):abs():max() < 0.02, L .. " turned counter-clockwise")
  end
  -- the bar lies down: its column profile becomes the row profile
  local I, flat = D.glyph("I", {}), D.glyph("I", {angle = 90})
  for k = 0, 27 do lu.assertAlmostEquals(row_sum(flat, k), col_sum(I, 27 - k), 0.02) end
end

function TestGlyphs:test_stroke_grows_every_stroke_by_its_width()
  local base = D.glyph("I", {})
  local w = row_sum(base, 14)
  for _, s in ipairs{-1, -0.5, 0.5, 1} do
    local x = D.glyph("I", {stroke = s})
    lu.assertAlmostEquals(row_sum(x, 14), w + s, 0.02)
    lu.assertAlmostEquals(x:sum() / row_sum(x, 14), 20 + s, 0.05) -- the height
  end
  for f = 1, #D.glyph_faces do
    local prev = -1
    for _, s in ipairs{-0.4, 0, 0.5, 1} do
      local ink = D.glyph("e", {face = f, stroke = s}):sum()
      lu.assertTrue(ink > prev + 5, D.glyph_faces[f].name .. ": bolder is more ink")
      prev = ink
    end
  end
end

function TestGlyphs:test_size_scales_and_wide_letters_fit_the_frame()
  -- half the size: a bar 10 rows tall (9..18) and half as wide
  local x = D.glyph("I", {size = 10})
  for r = 0, 27 do
    if r >= 9 and r <= 18 then
      lu.assertAlmostEquals(row_sum(x, r), 10 * 203 / 1493, 0.02)
    else
      lu.assertEquals(row_sum(x, r), 0)
    end
  end
  -- URW Gothic 'W' at capital height 24 would be 33 pixels wide: it shrinks
  -- to LPS_GLYPH_MAX_EXTENT (26) and leaves the edge columns dark
  local W = D.glyph("W", {face = 10, size = 24})
  lu.assertEquals(col_sum(W, 0), 0)
  lu.assertEquals(col_sum(W, 27), 0)
  lu.assertTrue(col_sum(W, 1) + col_sum(W, 26) > 0)
end

function TestGlyphs:test_every_face_renders_every_letter()
  for f = 1, #D.glyph_faces do
    for c = 1, 52 do
      -- the faintest the random draw makes: smallest, thinnest, dimmest
      local x = D.glyph(c, {face = f, size = 16, stroke = -0.4, ink = 0.75})
      local what = D.glyph_faces[f].name .. " " .. D.glyph_classes[c]
      lu.assertTrue(x:sum() > 8, what)
      lu.assertTrue(x:max() > 0.3, what)
    end
  end
end

-- The random draw covers its documented ranges, every face, independently.
function TestGlyphs:test_random_parameters_cover_their_ranges()
  local g = lps.generator(11)
  local range = {size = {16, 23}, angle = {-15, 15}, dx = {-2, 2}, dy = {-2, 2},
    stroke = {-0.4, 1}, ink = {0.75, 1}}
  local n, sum, faces, sxy = 3000, {}, {}, 0
  for k in pairs(range) do sum[k] = 0 end
  for _ = 1, n do
    local p = D.glyph_params(g)
    faces[p.face] = (faces[p.face] or 0) + 1
    lu.assertEquals(p.noise, 0.05)
    for k, r in pairs(range) do
      lu.assertTrue(p[k] >= r[1] and p[k] <= r[2], k)
      sum[k] = sum[k] + p[k]
    end
    sxy = sxy + p.dx * p.dy
  end
  for f = 1, #D.glyph_faces do lu.assertTrue(faces[f] > n / #D.glyph_faces * 0.7, "face " .. f) end
  for k, r in pairs(range) do
    lu.assertAlmostEquals(sum[k] / n, (r[1] + r[2]) / 2, 0.03 * (r[2] - r[1]), k)
  end
  lu.assertTrue(math.abs(sxy / n) < 0.15, "dx and dy independent") -- var(dx) = 4/3
  -- a draw renders like the sets' images: a visible letter on black
  local x = D.glyph("g", D.glyph_params(g))
  lu.assertTrue(x:max() > 0.3 and x:min() == 0)
  T.assert_error_contains("expected a generator", D.glyph_params, 5)
end

function TestGlyphs:test_sets_have_the_shape_range_and_labels_of_fashion_mnist()
  local x, y = D.glyphs("test", {per_class = 3})
  lu.assertEquals(x:shape(), {156, 784})
  lu.assertEquals(y:shape(), {156})
  lu.assertEquals(x:min(), 0)
  lu.assertTrue(x:max() <= 1)
  for i = 1, 156 do lu.assertEquals(y[i], (i - 1) % 52 + 1) end -- class-cyclic
  for i = 1, 156 do
    local row = x[i]
    local zeros = 0
    for p = 1, 784 do if row[p] == 0 then zeros = zeros + 1 end end
    lu.assertTrue(zeros > 300, "a dark background")
    lu.assertTrue(row:max() > 0.3, "a visible letter")
  end
end

function TestGlyphs:test_same_seed_same_bits_on_any_thread_count()
  local threads = lps.get_num_threads()
  lps.set_num_threads(1)
  local a, ya = D.glyphs("train", {per_class = 2, seed = 7})
  D.glyphs_clear_cache()
  lps.set_num_threads(2)
  local b, yb = D.glyphs("train", {per_class = 2, seed = 7})
  lps.set_num_threads(threads)
  lu.assertEquals((a - b):abs():max(), 0)
  lu.assertEquals((ya - yb):abs():max(), 0)
  local c = D.glyphs("train", {per_class = 2, seed = 8})
  local t = D.glyphs("test", {per_class = 2, seed = 7})
  for i = 1, a:size(1) do
    lu.assertTrue((a[i] - c[i]):abs():max() > 0, "another seed, another image " .. i)
    lu.assertTrue((a[i] - t[i]):abs():max() > 0, "test draws apart from train " .. i)
  end
  -- the cache hands out copies
  a:fill_(5)
  lu.assertTrue(D.glyphs("train", {per_class = 2, seed = 7}):max() <= 1)
end

function TestGlyphs:test_a_class_subset_gives_the_same_images()
  local full, yf = D.glyphs("train", {per_class = 3, seed = 2})
  local sub, ys = D.glyphs("train", {per_class = 3, seed = 2, classes = {"b", "Q"}})
  lu.assertEquals(sub:size(1), 6)
  lu.assertEquals(ys:totable(), {28, 17, 28, 17, 28, 17}) -- in the order given, labels kept
  -- the k-th image of a class is the same in both
  local function kth(y)
    local seen, at = {}, {}
    for i = 1, y:numel() do
      local c = y[i]
      seen[c] = (seen[c] or 0) + 1
      at[c .. "/" .. seen[c]] = i
    end
    return at
  end
  local af, as = kth(yf), kth(ys)
  for key, j in pairs(as) do lu.assertEquals((sub[j] - full[af[key]]):abs():max(), 0, key) end
end

-- Classes look different: mean images of 'I' and 'o' are far apart, and a
-- nearest-class-mean classifier beats chance (1/52) many times over.
function TestGlyphs:test_classes_are_distinguishable()
  local x, y = D.glyphs("train", {per_class = 30, seed = 4})
  local xt, yt = D.glyphs("test", {per_class = 10, seed = 4})
  local onehot = lps.zeros(y:numel(), 52)
  for i = 1, y:numel() do onehot[i][y[i]] = 1 end
  local means = lps.matmul(onehot, x, true) / 30 -- 52 x 784
  local mI, mo = means[9], means[41]
  local cos = (mI * mo):sum() / (mI:norm() * mo:norm())
  lu.assertTrue(cos < 0.6, ("cosine of the mean I and o: %.3f"):format(cos))
  local half = (means * means):sum(2):reshape(1, 52) * -0.5
  local score = lps.matmul(xt, means, false, true) + half
  local _, pred = score:max(2)
  local right = 0
  for i = 1, yt:numel() do if pred[i] == yt[i] then right = right + 1 end end
  local acc = right / yt:numel()
  lu.assertTrue(acc > 0.25, ("nearest-mean accuracy %.3f"):format(acc))
end

function TestGlyphs:test_bad_options_are_named()
  T.assert_error_contains("split must be 'train' or 'test', got 'val'", D.glyphs, "val")
  T.assert_error_contains("per_class must be an integer 1..10000, got 0", D.glyphs, "train", {per_class = 0})
  T.assert_error_contains("per_class must be an integer 1..10000, got 10001", D.glyphs, "train",
    {per_class = 10001})
  T.assert_error_contains("per_class", D.glyphs, "train", {per_class = 1.5})
  T.assert_error_contains("seed must be an integer, got x (string)", D.glyphs, "test", {seed = "x"})
  T.assert_error_contains("seed must be an integer", D.glyphs, "test", {seed = 0.5})
  T.assert_error_contains("unknown option 'perclass'", D.glyphs, "test", {perclass = 2})
  T.assert_error_contains("unknown letter 1", D.glyphs, "test", {classes = {"1"}})
  T.assert_error_contains("lists 'b' twice", D.glyphs, "test", {classes = {"b", 28}})
  T.assert_error_contains("unknown letter 7", D.glyph, "7")
  T.assert_error_contains("face 13 out of range 1..12", D.glyph, "A", {face = 13})
  T.assert_error_contains("size is NaN", D.glyph, "A", {size = 0 / 0})
  T.assert_error_contains("angle = 200", D.glyph, "A", {angle = 200})
  T.assert_error_contains("Generator expected", function()
    return lps.core._glyphs.open():render_one(1, {face = 1, size = 20, angle = 0, dx = 0, dy = 0,
      stroke = 0, ink = 1, noise = 0.1}, "not a generator")
  end)
  T.assert_error_contains("unknown option 'colour'", D.glyph, "A", {colour = 1})
  -- the renderer's classes: 52 letters, then the 10 check-only digits
  T.assert_error_contains("labels entry 2 is 63, not a class number 1..62", function()
    return lps.core._glyphs.open():render(lps.tensor{1, 63}, 1)
  end)
end

function TestGlyphs:test_a_missing_or_broken_font_names_the_file_and_package()
  local G = lps.core._glyphs
  T.assert_error_contains("/nonexistent/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf is missing "
    .. "(install the Debian package fonts-dejavu-core)", G.open, "/nonexistent")
  local root = T.tmpname(".fonts")
  local dir = root .. "/usr/share/fonts/truetype/dejavu"
  lu.assertTrue(os.execute("mkdir -p '" .. dir .. "'"))
  local f = assert(io.open(dir .. "/DejaVuSans.ttf", "wb"))
  f:write("not a font")
  f:close()
  T.assert_error_contains("DejaVuSans.ttf (Debian package fonts-dejavu-core) is not a font", G.open, root)
  os.execute("rm -rf '" .. root .. "'")
  T.cleanup()
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
