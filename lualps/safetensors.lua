--- lualps.safetensors: read and write the Hugging Face safetensors format,
-- and move MLPs between lualps and PyTorch through it.
--
--   local tensors, metadata, names = lps.safetensors.read("model.safetensors")
--   lps.safetensors.write("out.safetensors", {w = w, b = b}, {author = "me"})
--   local model, metadata = lps.import_safetensors("mlp.safetensors")
--   lps.export_safetensors(model, "mlp.safetensors")
--
-- F32, F16, BF16 (exactly) and F64 (rounded) tensors read as float32; files
-- are written as F32, in the reference writer's layout (sorted names,
-- contiguous offsets, header padded to 8 bytes). Malformed files raise an
-- error naming the file and the problem.
local core = require "lualps.core"
local C = core._safetensors

local M = {}

-- Run a C function; re-raise its error at `level` as seen from the caller
-- of `call` (2 = whoever called the public function), so messages point at
-- the user's line.
local function call(level, f, ...)
  local ok, a, b, c = pcall(f, ...)
  if not ok then error(a, level + 1) end
  return a, b, c
end

local function check_string(v, what, level)
  if type(v) ~= "string" then
    error(string.format("safetensors: %s must be a string, got %s", what, type(v)), level + 1)
  end
end

local function read_at(level, path)
  check_string(path, "the path", level + 1)
  local t, m, n = call(level + 1, C.read, path) -- not a tail call: keep the frame count
  return t, m, n
end

--- Tensors of a file: map name -> tensor, metadata (map string -> string,
-- empty if the file has none), names in header order. A scalar (shape [])
-- reads as shape {1}.
function M.read(path)
  local t, m, n = read_at(2, path)
  return t, m, n
end

--- The same from the bytes of a file held in a string.
function M.decode(bytes)
  check_string(bytes, "the bytes", 2)
  local t, m, n = call(2, C.decode, bytes)
  return t, m, n
end

--- The header only (the data is not read): entries {name, dtype, shape,
-- offsets = {begin, end}} in header order, metadata, header length in bytes.
function M.header(path)
  check_string(path, "the path", 2)
  local e, m, n = call(2, C.header, path)
  return e, m, n
end

function M.decode_header(bytes)
  check_string(bytes, "the bytes", 2)
  local e, m, n = call(2, C.decode_header, bytes)
  return e, m, n
end

-- Named tensors as parallel arrays. Accepts a map name -> tensor, an array
-- of {name = ..., tensor = ...} (what model:named_parameters() returns), or
-- an array of {name, tensor} pairs.
local function split_named(named, level)
  if type(named) ~= "table" then
    error("safetensors: expected a table of named tensors, got " .. type(named), level + 1)
  end
  local names, tensors = {}, {}
  if #named > 0 then
    for i, e in ipairs(named) do
      if type(e) ~= "table" or core.is_tensor(e) then
        error(string.format("safetensors: entry %d is a %s, expected {name = ..., tensor = ...}",
          i, core.is_tensor(e) and "tensor" or type(e)), level + 1)
      end
      names[i] = e.name or e[1]
      tensors[i] = e.tensor or e[2]
    end
  else
    for k in pairs(named) do
      if type(k) ~= "string" then
        error("safetensors: tensor names must be strings, got a " .. type(k), level + 1)
      end
      names[#names + 1] = k
    end
    table.sort(names)
    for i, k in ipairs(names) do tensors[i] = named[k] end
  end
  return names, tensors
end

-- Metadata values may be strings, numbers or booleans (written as text).
local function check_metadata(meta, level)
  if meta == nil then return nil end
  if type(meta) ~= "table" then
    error("safetensors: metadata must be a table of strings, got " .. type(meta), level + 1)
  end
  local out = {}
  for k, v in pairs(meta) do
    if type(k) ~= "string" then
      error("safetensors: metadata keys must be strings, got a " .. type(k), level + 1)
    end
    local tv = type(v)
    if tv == "number" or tv == "boolean" then v = tostring(v)
    elseif tv ~= "string" then
      error(string.format("safetensors: metadata '%s' is a %s, expected a string", k, tv), level + 1)
    end
    out[k] = v
  end
  return out
end

--- Write named tensors (see split_named) and optional metadata to path,
-- atomically (a temporary file renamed over path).
local function write_at(level, path, named, metadata)
  check_string(path, "the path", level + 1)
  local names, tensors = split_named(named, level + 1)
  call(level + 1, C.write, path, names, tensors, check_metadata(metadata, level + 1))
end

function M.write(path, named, metadata) write_at(2, path, named, metadata) end

--- The bytes write would produce, as a string.
function M.encode(named, metadata)
  local names, tensors = split_named(named, 2)
  local s = call(2, C.encode, names, tensors, check_metadata(metadata, 2))
  return s
end

-- ------------------------------------------------------------- models

-- "fc10" after "fc2": compare digit runs as numbers.
local function natural_less(a, b)
  local ia, ib = 1, 1
  while ia <= #a and ib <= #b do
    local da, db = a:match("^%d+", ia), b:match("^%d+", ib)
    if da and db then
      local na, nb = tonumber(da), tonumber(db)
      if na ~= nb then return na < nb end
      ia, ib = ia + #da, ib + #db
    else
      local ca, cb = a:sub(ia, ia), b:sub(ib, ib)
      if ca ~= cb then return ca < cb end
      ia, ib = ia + 1, ib + 1
    end
  end
  return #a - ia < #b - ib
end

local function shape_str(t) return "(" .. table.concat(t:shape(), "x") .. ")" end

--- The linear layers of an MLP state dict, in order: {prefix, weight, bias}.
-- Names are PyTorch's "<prefix>.weight" / "<prefix>.bias" ("0.weight",
-- "fc1.weight", "net.2.bias", ...); layers are ordered by prefix with digit
-- runs compared as numbers; weights are out x in and must chain.
function M.mlp_layers(tensors, names, level)
  level = (level or 1) + 1
  local layers, by_prefix = {}, {}
  for _, name in ipairs(names) do
    local prefix, kind = name:match("^(.+)%.(weight)$")
    if not prefix then prefix, kind = name:match("^(.+)%.(bias)$") end
    if not prefix then
      error(string.format("safetensors: tensor '%s' is not a layer's weight or bias; an MLP "
        .. "file holds only <layer>.weight and <layer>.bias", name), level)
    end
    local l = by_prefix[prefix]
    if not l then
      l = {prefix = prefix}
      by_prefix[prefix] = l
      layers[#layers + 1] = l
    end
    l[kind] = tensors[name]
  end
  if #layers == 0 then error("safetensors: the file holds no tensors", level) end
  table.sort(layers, function(x, y) return natural_less(x.prefix, y.prefix) end)
  for i, l in ipairs(layers) do
    local w, b = l.weight, l.bias
    if not w then error(string.format("safetensors: layer '%s' has a bias but no weight", l.prefix), level) end
    if w:dim() ~= 2 then
      error(string.format("safetensors: %s.weight is %s; a linear layer's weight is 2-D (out x in)",
        l.prefix, shape_str(w)), level)
    end
    if b and (b:dim() ~= 1 or b:size(1) ~= w:size(1)) then
      error(string.format("safetensors: %s.bias is %s, expected (%d) for weight %s",
        l.prefix, shape_str(b), w:size(1), shape_str(w)), level)
    end
    local prev = layers[i - 1]
    if prev and prev.weight:size(1) ~= w:size(2) then
      error(string.format("safetensors: layer '%s' takes %d inputs but layer '%s' gives %d "
        .. "(weights %s then %s)", l.prefix, w:size(2), prev.prefix, prev.weight:size(1),
        shape_str(prev.weight), shape_str(w)), level)
    end
  end
  return layers
end

-- Key of the metadata entry where export keeps the model's architecture.
M.SPEC_KEY = "lualps.spec"

-- A throwaway generator: building a model to load weights into must not
-- consume draws from the user's default stream.
local function scratch_gen() return require("lualps").generator(0) end

local function mlp_from_layers(layers, activation, level)
  local lps = require "lualps"
  local sizes = {layers[1].weight:size(2), activation = activation or "relu",
    generator = scratch_gen()}
  for _, l in ipairs(layers) do sizes[#sizes + 1] = l.weight:size(1) end
  local ok, model = pcall(lps.nn.mlp, sizes)
  if not ok then error("safetensors: " .. tostring(model), level + 1) end
  -- The model's own parameters, grouped into layers the same way.
  local own, ownnames = {}, {}
  for _, p in ipairs(model:named_parameters()) do
    own[p.name] = p.tensor
    ownnames[#ownnames + 1] = p.name
  end
  local target = M.mlp_layers(own, ownnames, level + 1)
  local map = {}
  for i, l in ipairs(layers) do
    local t = target[i]
    map[t.prefix .. ".weight"] = l.weight
    map[t.prefix .. ".bias"] = l.bias or lps.zeros(l.weight:size(1))
  end
  model:load_named(map)
  return model
end

--- A model ready to forward, and the file's metadata.
-- Files written by export carry the architecture (metadata "lualps.spec")
-- and load exactly. Other files are read as an MLP in PyTorch's naming and
-- layout ("0.weight", "0.bias", "2.weight", ... or "fc1.weight", ...):
-- linear layers in name order, opts.activation ("relu", or "tanh") between
-- them and none after the last; a missing bias (bias=False) loads as zeros.
function M.import(path, opts)
  opts = opts or {}
  local lps = require "lualps"
  local tensors, metadata, names = read_at(2, path)
  local spec_json = metadata[M.SPEC_KEY]
  if spec_json and not opts.activation then
    local ok, spec = pcall(require("cjson").decode, spec_json)
    if not ok or type(spec) ~= "table" then
      error(string.format("safetensors: %s: metadata %s is not a JSON spec", path, M.SPEC_KEY), 2)
    end
    local ok2, model = pcall(lps.nn.from_spec, spec, scratch_gen())
    if ok2 then ok2, model = pcall(model.load_named, model, tensors) end
    if not ok2 then
      error(string.format("safetensors: %s: %s", path, tostring(model):gsub("^.-:%d+: ", "")), 2)
    end
    return model, metadata
  end
  local ok, layers = pcall(M.mlp_layers, tensors, names)
  if not ok then error(string.format("%s (in %s)", tostring(layers):gsub("^.-:%d+: ", ""), path), 2) end
  return mlp_from_layers(layers, opts.activation, 2), metadata
end

--- Write a model's parameters with PyTorch's naming and layout, so that the
-- matching torch.nn.Sequential(...).load_state_dict() takes them, plus its
-- architecture (metadata "lualps.spec", JSON) for import. metadata
-- (optional, string values) is added to {format = "pt"}.
function M.export(model, path, metadata)
  if type(model) ~= "userdata" or type(model.named_parameters) ~= "function" then
    error("safetensors: export expects a model (lps.nn module), got " .. type(model), 2)
  end
  local meta = {format = "pt", [M.SPEC_KEY] = require("cjson").encode(model:spec())}
  for k, v in pairs(check_metadata(metadata, 2) or {}) do meta[k] = v end
  write_at(2, path, model:named_parameters(), meta)
end

return M
