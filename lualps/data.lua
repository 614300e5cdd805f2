--- lualps.data: Fashion-MNIST from Debian's dataset-fashion-mnist package,
-- rendered letters (glyphs) and, for checks only, digits, and helpers to
-- pick classes, subsample and split.
local core = require "lualps.core"
local C = core._nn
local G = core._glyphs

local data = {}

local function is_generator(v)
  local mt = getmetatable(v)
  return type(v) == "userdata" and type(mt) == "table" and mt.__name == "lualps.Generator"
end

data.default_dir = "/usr/share/datasets/fashion-mnist"
--- Class names, by 1-based label.
data.fashion_classes = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
  "Shirt", "Sneaker", "Bag", "Ankle boot"}

--- x (N x 784 floats in [0, 1]), y (N labels 1..10 as floats) of split
-- "train" (60000) or "test" (10000). The directory is dir, else $LUALPS_DATA,
-- else data.default_dir.
function data.fashion_mnist(split, dir)
  split = split or "train"
  local prefix = ({train = "train", test = "t10k"})[split]
  if not prefix then error(("fashion_mnist: split must be 'train' or 'test', got '%s'"):format(tostring(split)), 2) end
  dir = dir or os.getenv("LUALPS_DATA") or data.default_dir
  if type(dir) ~= "string" then error(("fashion_mnist: dir must be a directory path, got %s"):format(type(dir)), 2) end
  local ipath = ("%s/%s-images-idx3-ubyte.gz"):format(dir, prefix)
  local lpath = ("%s/%s-labels-idx1-ubyte.gz"):format(dir, prefix)
  local x = C.idx_images(ipath)
  local y = C.idx_labels(lpath)
  if x:size(1) ~= y:numel() then
    error(("fashion_mnist: %s has %d images but %s has %d labels"):format(ipath, x:size(1), lpath, y:numel()), 2)
  end
  if x:size(2) ~= 784 then
    error(("fashion_mnist: %s has images of %d pixels, expected 28x28"):format(ipath, x:size(2)), 2)
  end
  if y:numel() > 0 and y:max() > 9 then
    error(("fashion_mnist: %s has label %d, expected classes 0..9"):format(lpath, math.floor(y:max())), 2)
  end
  return x, y:add_(1)
end

--- The image domains of lps.data.domain, in order (csrc/lualps.h
-- documents each).
data.domains = C.domain_names()

--- Images x (N x 784, or N x 1 x 28 x 28; any square side) seen in another
-- domain, as a new tensor: "identity" (a copy), "invert" (1 - x), "rot90"
-- (rotated 90 degrees clockwise), "blur" (3x3 binomial filter, zeros
-- outside), "downup" (2x2 means, then back to full size: half resolution),
-- "zoomout" (shrunk to 60% about the centre), "shift" (moved side/5 pixels
-- down and right), "vflip" (upside down), "edges" (Sobel magnitude / 4,
-- capped at 1), "texture" (a fixed noise texture where the image is dark),
-- "elastic" (a fixed smooth displacement field). Zeros fill what comes from
-- outside the image.
function data.domain(x, name)
  if not core.is_tensor(x) then error("domain: expected a tensor of images", 2) end
  local known = false
  for _, d in ipairs(data.domains) do known = known or d == name end
  if not known then
    error(("domain: unknown domain '%s' (%s)"):format(tostring(name), table.concat(data.domains, ", ")), 2)
  end
  local ok, out = pcall(C.image_domain, x, name)
  if not ok then error(out, 2) end
  return out
end

--- The 52 classes of lps.data.glyphs, by 1-based label: "A".."Z" (1..26),
-- then "a".."z" (27..52). No digits.
data.glyph_classes = {}
for i = 1, 26 do
  data.glyph_classes[i] = string.char(64 + i)
  data.glyph_classes[26 + i] = string.char(96 + i)
end
local glyph_label = {}
for i, c in ipairs(data.glyph_classes) do glyph_label[c] = i end

--- The font faces of the letters, in order (a face number is an index
-- here): {name, style, path, package} with the font file's fixed Debian path
-- and the package that installs it.
data.glyph_faces = {}
for i, f in ipairs(G.faces) do
  data.glyph_faces[i] = {name = f.name, style = f.style, path = f.path, package = f.package}
end

--- Default sizes of lps.data.glyphs per split (images per class) and seed.
data.glyph_defaults = {train = 1000, test = 200, seed = 1}

local handle -- every face loaded once per process (lualps.Glyphs)
local function fonts()
  if not handle then handle = G.open() end
  return handle
end

local function glyph_class(c, what, level)
  local i = type(c) == "number" and math.tointeger(c)
  local k = glyph_label[c] or (i and i >= 1 and i <= 52 and i) or nil
  if not k then
    error(("%s: unknown letter %s (a letter A-Z, a-z or a class 1..52)"):format(what, tostring(c)), level or 3)
  end
  return k
end

local cache = {}
local TEST_SALT = 0x5445535400000000 -- the test split's seed: seed xor "TEST"

-- Images of the renderer's classes `classes` (its 1-based labels: letters
-- 1..52, digits 53..62), per_class each, class-cyclic, cached per process;
-- copies of x and of y (the renderer's labels minus `offset`).
local function rendered(split, n, seed, classes, offset)
  local key = ("%s/%d/%d/%s"):format(split, n, seed, table.concat(classes, ","))
  local hit = cache[key]
  if not hit then
    local y = core.zeros(n * #classes)
    for k = 0, n - 1 do
      for j, c in ipairs(classes) do y[k * #classes + j] = c end
    end
    local x = fonts():render(y, split == "test" and (seed ~ TEST_SALT) or seed)
    hit = {x, y}
    cache[key] = hit
  end
  local y = hit[2]:clone()
  if offset ~= 0 then y:sub_(offset) end
  return hit[1]:clone(), y
end

-- The renderer's labels of every letter and every digit.
local all_letters, all_digits = {}, {}
for i = 1, 52 do all_letters[i] = i end
for d = 0, 9 do all_digits[d + 1] = 53 + d end

-- Images of data.glyphs or data.digits (`what`) after checking the
-- arguments: split, per_class, seed and classes, a listed class's renderer
-- label being class_of(c) (which raises for others), all of `all` by
-- default; name(label) names a label in errors; y is the renderer's labels
-- minus offset.
local function render_checked(what, split, opts, class_of, all, name, offset)
  split = split or "train"
  if split ~= "train" and split ~= "test" then
    error(("%s: split must be 'train' or 'test', got '%s'"):format(what, tostring(split)), 3)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error(what .. ": opts must be a table", 3) end
  for k in pairs(opts) do
    if k ~= "per_class" and k ~= "seed" and k ~= "classes" then
      error(("%s: unknown option '%s' (per_class, seed, classes)"):format(what, tostring(k)), 3)
    end
  end
  local n = opts.per_class or data.glyph_defaults[split]
  if math.type(n) ~= "integer" or n < 1 or n > 10000 then
    error(("%s: per_class must be an integer 1..10000, got %s"):format(what, tostring(n)), 3)
  end
  local seed = opts.seed or data.glyph_defaults.seed
  if math.type(seed) ~= "integer" then
    error(("%s: seed must be an integer, got %s (%s)"):format(what, tostring(seed), type(seed)), 3)
  end
  local classes = all
  if opts.classes ~= nil then
    if type(opts.classes) ~= "table" or #opts.classes == 0 then
      error(("%s: classes must be a non-empty list"):format(what), 3)
    end
    local seen = {}
    classes = {}
    for _, c in ipairs(opts.classes) do
      local k = class_of(c)
      if seen[k] then error(("%s: classes lists '%s' twice"):format(what, name(k)), 3) end
      seen[k] = true
      classes[#classes + 1] = k
    end
  end
  return rendered(split, n, seed, classes, offset)
end

--- Rendered Latin letters (FreeType, data.glyph_faces), shaped like
-- fashion_mnist: x (N x 784 floats in [0, 1], bright on black), y (N labels
-- 1..52 as floats, data.glyph_classes). Each image draws a face, a capital
-- height of 16 to 23 pixels, a rotation of -15 to 15 degrees, a shift of -2
-- to 2 pixels each way, strokes 0.4 pixels thinner to 1 pixel bolder, an ink
-- level of 0.75 to 1 and 5% multiplicative pixel noise (csrc/lualps.h,
-- lps_glyph_draw). opts: per_class (images per class, 1..10000; default
-- data.glyph_defaults: 1000 "train", 200 "test"), seed (integer, default 1;
-- "test" draws from another seed than "train", so the splits are disjoint
-- draws), classes (letters or labels to render, in this order, default all
-- 52; y keeps the labels 1..52). Images are class-cyclic (A, B, ..., z, A,
-- ...); the k-th image of a class depends only on (split, seed, class, k),
-- so a classes subset gives the same images as the full set. Bit-identical
-- for a seed on any thread count. Results are cached per process
-- (data.glyphs_clear_cache frees them); each call returns copies.
function data.glyphs(split, opts)
  local x, y = render_checked("glyphs", split, opts, function(c)
    local k = glyph_class(c, "glyphs: classes", 5) -- level 5: the caller of data.glyphs
    return k
  end, all_letters, function(k) return data.glyph_classes[k] end, 0)
  return x, y -- not a tail call: errors name the caller's line
end

--- The digits of lps.data.digits, by 1-based label: "0".."9".
data.digit_classes = {}
for d = 0, 9 do data.digit_classes[d + 1] = tostring(d) end

--- Rendered digits 0-9, a check-only source: the held-out zoos of
-- scripts/heldout_zoos.lua read models trained on them, and no training
-- set of lualps uses them (lps.data.glyphs refuses digits). Drawn as
-- data.glyphs draws letters (faces, size, rotation, shift, stroke, ink,
-- noise), with the same opts and defaults; classes are digits 0..9
-- (integers), y the labels 1..10 (digit d is label d + 1, as
-- data.digit_classes), each image a function of (split, seed, digit, k).
function data.digits(split, opts)
  local x, y = render_checked("digits", split, opts, function(d)
    if math.type(d) ~= "integer" or d < 0 or d > 9 then
      error(("digits: classes: %s is not a digit 0..9"):format(tostring(d)), 4)
    end
    return 53 + d
  end, all_digits, function(k) return data.digit_classes[k - 52] end, 52)
  return x, y
end

--- Free the images lps.data.glyphs and lps.data.digits keep for later calls.
function data.glyphs_clear_cache() cache = {} end

local glyph_fixed = {face = 1, size = 20, angle = 0, dx = 0, dy = 0, stroke = 0, ink = 1, noise = 0}

--- A random draw of data.glyph's parameters, as lps.data.glyphs draws them
-- (ranges above), from the generator (default: the module's):
-- data.glyph("g", data.glyph_params(gen)) is one random letter image.
function data.glyph_params(gen)
  if gen ~= nil and not is_generator(gen) then
    error("glyph_params: expected a generator (lps.generator(seed))", 2)
  end
  return G.draw(gen)
end

--- One letter (a string "A".."z" or a label 1..52) rendered with fixed
-- parameters, as 784 floats (28 x 28, top row first). opts and defaults:
-- face (1, an index of data.glyph_faces), size (20: capital height in
-- pixels), angle (0: degrees counter-clockwise), dx, dy (0: shift right and
-- down in pixels), stroke (0: pixels added to every stroke's width; negative
-- thins), ink (1: intensity of full coverage), noise (0: sd of the
-- multiplicative pixel noise), generator (the noise's; default the module's).
function data.glyph(letter, opts)
  local cls = glyph_class(letter, "glyph")
  if opts ~= nil and type(opts) ~= "table" then error(("glyph: opts must be a table, got %s"):format(type(opts)), 2) end
  local p = {}
  for k, v in pairs(glyph_fixed) do p[k] = v end
  for k, v in pairs(opts or {}) do
    if glyph_fixed[k] == nil and k ~= "generator" then
      error(("glyph: unknown option '%s'"):format(tostring(k)), 2)
    end
    p[k] = v
  end
  local gen = p.generator
  p.generator = nil
  local ok, x = pcall(fonts().render_one, fonts(), cls, p, gen)
  if not ok then error(x, 2) end
  return x
end

local function check_xy(x, y, what)
  if not core.is_tensor(x) or not core.is_tensor(y) then error(what .. ": expected tensors x and y", 3) end
  if x:size(1) ~= y:numel() then
    error(("%s: %d samples but %d labels"):format(what, x:size(1), y:numel()), 3)
  end
end

local function take(x, y, idx)
  local labels = core.zeros(#idx)
  for i, j in ipairs(idx) do labels[i] = y[j] end
  return x:index_rows(idx), labels
end

--- Samples of the given classes (1-based labels), relabelled 1..k in the
-- order given: select_classes(x, y, {3, 5}) maps 3 -> 1 and 5 -> 2.
function data.select_classes(x, y, classes)
  check_xy(x, y, "select_classes")
  if type(classes) ~= "table" then
    error(("select_classes: classes must be a list of labels, got %s"):format(type(classes)), 2)
  end
  local map = {}
  for i, c in ipairs(classes) do
    if type(c) ~= "number" or c ~= c then
      error(("select_classes: class %d is %s, not a label (a number)"):format(i, c ~= c and "NaN" or tostring(c)), 2)
    end
    if map[c] then error(("select_classes: class %s is listed twice"):format(tostring(c)), 2) end
    map[c] = i
  end
  local idx, labels = {}, {}
  local flat = y:reshape(-1)
  for i = 1, flat:numel() do
    local k = map[flat[i]]
    if k then idx[#idx + 1] = i; labels[#labels + 1] = k end
  end
  local ty = core.zeros(#idx)
  for i, k in ipairs(labels) do ty[i] = k end
  return x:index_rows(idx), ty
end

-- A random permutation of 1..n from the generator (Fisher-Yates); `what`
-- names the caller in errors (raised at `level`, default the caller's).
local function randperm(n, gen, what, level)
  what, level = what or "randperm", level or 2
  if math.type(n) ~= "integer" or n < 0 then
    error(("%s: n must be an integer >= 0, got %s"):format(what, tostring(n)), level + 1)
  end
  if gen ~= nil and not is_generator(gen) then
    error(("%s: gen must be a generator (lps.generator(seed)), got %s"):format(what, type(gen)), level + 1)
  end
  gen = gen or core.default_generator()
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = gen:random(i)
    p[i], p[j] = p[j], p[i]
  end
  return p
end
function data.randperm(n, gen)
  local p = randperm(n, gen, "randperm", 2)
  return p
end

--- A random subset of round(frac * N) samples (kept in their original order),
-- drawn from the generator (default: the module's).
function data.fraction(x, y, frac, gen)
  check_xy(x, y, "fraction")
  if type(frac) ~= "number" or not (frac >= 0 and frac <= 1) then error("fraction: frac must be in [0, 1]", 2) end
  local n = x:size(1)
  local k = math.floor(frac * n + 0.5)
  local p = randperm(n, gen, "fraction", 2)
  local idx = table.move(p, 1, k, 1, {})
  table.sort(idx)
  return take(x, y:reshape(-1), idx)
end

--- Split off a validation part: val is a fraction (< 1) or a count of samples.
-- With a generator the parts are drawn at random, without one the last samples
-- become the validation part (as views, no copy).
-- Returns x_train, y_train, x_val, y_val.
function data.split(x, y, val, gen)
  check_xy(x, y, "split")
  local n = x:size(1)
  if type(val) ~= "number" or not (val >= 0 and val < math.huge) then
    error("split: val must be a fraction or a count >= 0", 2)
  end
  local k = val < 1 and math.floor(val * n + 0.5) or math.floor(val)
  if k < 0 or k > n then error(("split: cannot take %s of %d samples"):format(tostring(math.tointeger(k) or k), n), 2) end
  if not gen then
    local yf = y:reshape(-1)
    return x:rows(1, n - k), yf:rows(1, n - k), x:rows(n - k + 1, n), yf:rows(n - k + 1, n)
  end
  local p = randperm(n, gen, "split", 2)
  local tr, va = table.move(p, 1, n - k, 1, {}), table.move(p, n - k + 1, n, 1, {})
  table.sort(tr)
  table.sort(va)
  local yf = y:reshape(-1)
  local xt, yt = take(x, yf, tr)
  local xv, yv = take(x, yf, va)
  return xt, yt, xv, yv
end

return data
