--- lualps.data: Fashion-MNIST from Debian's dataset-fashion-mnist package, and
-- helpers to pick classes, subsample and split.
local core = require "lualps.core"
local C = core._nn

local data = {}

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

--- The image domains of lps.data.domain, in order.
data.domains = {"identity", "invert", "rot90", "blur", "downup"}

--- Images x (N x 784, or N x 1 x 28 x 28; any square side) seen in another
-- domain, as a new tensor: "identity" (a copy), "invert" (1 - x), "rot90"
-- (rotated 90 degrees clockwise), "blur" (3x3 binomial filter, zeros
-- outside), "downup" (2x2 means, then back to full size: half resolution).
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
  local map = {}
  for i, c in ipairs(classes) do
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

-- A random permutation of 1..n from the generator (Fisher-Yates).
local function randperm(n, gen)
  gen = gen or core.default_generator()
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = gen:random(i)
    p[i], p[j] = p[j], p[i]
  end
  return p
end
data.randperm = randperm

--- A random subset of round(frac * N) samples (kept in their original order),
-- drawn from the generator (default: the module's).
function data.fraction(x, y, frac, gen)
  check_xy(x, y, "fraction")
  if type(frac) ~= "number" or frac < 0 or frac > 1 then error("fraction: frac must be in [0, 1]", 2) end
  local n = x:size(1)
  local k = math.floor(frac * n + 0.5)
  local p = randperm(n, gen)
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
  if type(val) ~= "number" or val < 0 then error("split: val must be a fraction or a count >= 0", 2) end
  local k = val < 1 and math.floor(val * n + 0.5) or math.floor(val)
  if k < 0 or k > n then error(("split: cannot take %d of %d samples"):format(k, n), 2) end
  if not gen then
    local yf = y:reshape(-1)
    return x:rows(1, n - k), yf:rows(1, n - k), x:rows(n - k + 1, n), yf:rows(n - k + 1, n)
  end
  local p = randperm(n, gen)
  local tr, va = table.move(p, 1, n - k, 1, {}), table.move(p, n - k + 1, n, 1, {})
  table.sort(tr)
  table.sort(va)
  local yf = y:reshape(-1)
  local xt, yt = take(x, yf, tr)
  local xv, yv = take(x, yf, va)
  return xt, yt, xv, yv
end

return data
