--- lualps.safetensors: read and write the Hugging Face safetensors format,
-- and move models (PyTorch nn.Sequential MLPs and CNNs) between lualps and
-- PyTorch through it. The architecture travels as a JSON list in the
-- metadata key "lualps.arch" (see check_arch).
--
--   local tensors, metadata, names = lps.safetensors.read("model.safetensors")
--   lps.safetensors.write("out.safetensors", {w = w, b = b}, {author = "me"})
--   local model, metadata = lps.import_safetensors("cnn.safetensors")
--   lps.export_safetensors(model, "cnn.safetensors", nil, {input = {1, 28, 28}})
--
-- F32, F16, BF16 (exactly) and F64 (rounded) tensors read as float32; files
-- are written as F32, in the reference writer's layout (sorted names,
-- contiguous offsets, header padded to 8 bytes). Malformed files raise an
-- error naming the file and the problem.
local core = require "lualps.core"
local cjson = require "cjson"
local util = require "lualps.util"
local arch = require "lualps.arch"
local nn = require "lualps.nn"
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

-- ------------------------------------------------------------- architectures

-- The metadata key of the architecture list; export always writes it.
M.ARCH_KEY = "lualps.arch"
-- Files exported before lualps.arch carried lualps' own spec here; import
-- still reads them.
M.SPEC_KEY = "lualps.spec"

local function strip_pos(msg) return (tostring(msg):gsub("^.-:%d+: ", "")) end

--- Check an architecture list and fill its defaults: lps.arch.check (the
-- list, its canonical JSON text and the shapes; errors start with "arch:").
M.check_arch = arch.check

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
  level = (math.type(level) == "integer" and level >= 1 and level or 1) + 1
  if type(tensors) ~= "table" or type(names) ~= "table" then
    error(("safetensors: mlp_layers needs the tensors (a map name -> tensor) and their names (a list), got %s and %s")
      :format(type(tensors), type(names)), level)
  end
  local layers, by_prefix = {}, {}
  for _, name in ipairs(names) do
    if type(name) ~= "string" or not core.is_tensor(tensors[name]) then
      error(string.format("safetensors: mlp_layers: tensor name %s is not a string naming a tensor", tostring(name)), level)
    end
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

-- A throwaway generator: building a model to load weights into must not
-- consume draws from the user's default stream.
local function scratch_gen() return core.generator(0) end

local function shape_of(t) return "(" .. table.concat(t, "x") .. ")" end

local function layer_desc(i, e)
  if e.type == "conv2d" then
    return ("layer %d (conv2d %d->%d, kernel %d)"):format(i, e["in"], e.out, e.kernel)
  elseif e.type == "linear" then
    return ("layer %d (linear %d->%d)"):format(i, e["in"], e.out)
  end
  return ("layer %d (%s)"):format(i, e.type)
end

-- Names that a PyTorch state_dict holds and lualps does not keep.
local IGNORED = "%.num_batches_tracked$"

-- The model of a checked arch list with the file's tensors loaded by their
-- PyTorch state_dict names ("3.weight", "2.body.0.running_mean": what the
-- model's named_parameters and named_buffers say); batch norm's
-- num_batches_tracked is read and passed over, and a missing bias (a file
-- of PyTorch's bias=False under an arch without "bias": false) loads as
-- zeros. Errors name the tensor, its layer and both shapes.
local function build(list, tensors, names)
  local model = nn.from_arch(list, scratch_gen())
  local want, order = {}, {}
  for _, e in ipairs(model:named_parameters()) do want[e.name] = e.tensor; order[#order + 1] = e.name end
  for _, e in ipairs(model:named_buffers()) do want[e.name] = e.tensor; order[#order + 1] = e.name end
  local layers = {}
  for _, e in ipairs(list) do if e.type ~= "input" then layers[#layers + 1] = e end end
  for _, name in ipairs(names) do
    if not want[name] and not name:find(IGNORED) then
      local c = name:match("^(%d+)%.")
      local i = c and tostring(tonumber(c)) == c and tonumber(c) + 1
      if i and layers[i] then
        local own = {}
        for _, n in ipairs(order) do if n:match("^(%d+)%.") == c then own[#own + 1] = n end end
        error(("tensor '%s' belongs to layer %d (%s), which has %s"):format(name, i, layers[i].type,
          #own > 0 and "no such tensor (it has " .. table.concat(own, ", ") .. ")" or "no parameters"), 0)
      elseif i then
        error(("tensor '%s' would belong to layer %d but the arch has %d layers (layer i is "
          .. "child i-1 of the nn.Sequential)"):format(name, i, #layers), 0)
      end
      error(("tensor '%s' is not a parameter or buffer of the arch's layers, which are named %s "
        .. "(layer i is child i-1 of the nn.Sequential)"):format(name,
        #order > 0 and table.concat(order, ", ") or "nothing: no layer has parameters"), 0)
    end
  end
  local map = {}
  for _, name in ipairs(order) do
    local t = tensors[name]
    local who = arch.layer_of(list, name) or "a layer"
    if not t and name:match("%.bias$") then t = core.zeros(table.unpack(want[name]:shape())) end
    if not t then
      error(("%s: tensor '%s' is missing (the arch's layers hold %s)"):format(who, name, table.concat(order, ", ")), 0)
    end
    if shape_of(t:shape()) ~= shape_of(want[name]:shape()) then
      error(("%s: tensor '%s' has shape %s, expected %s"):format(who, name, shape_of(t:shape()),
        shape_of(want[name]:shape())), 0)
    end
    map[name] = t
  end
  model:load_named(map)
  return model
end

-- The arch list of an MLP state dict (see mlp_layers) and its parameters.
local function infer_mlp(tensors, names, activation)
  for _, name in ipairs(names) do
    local t = tensors[name]
    if name:match("%.weight$") and t:dim() == 4 then
      error(("4-D weight '%s' %s (a convolution) but no '%s' metadata; strides, padding and "
        .. "pooling cannot be inferred: pass opts.arch or write the key (see "
        .. "scripts/torch_interop.py)"):format(name, shape_of(t:shape()), M.ARCH_KEY), 0)
    end
  end
  local ok, layers = pcall(M.mlp_layers, tensors, names)
  if not ok then error((strip_pos(layers):gsub("^safetensors: ", "")), 0) end
  local list, params = {}, {}
  for k, l in ipairs(layers) do
    if k > 1 then list[#list + 1] = {type = activation or "relu"} end
    list[#list + 1] = {type = "linear", ["in"] = l.weight:size(2), out = l.weight:size(1)}
    params[(#list - 1) .. ".weight"] = l.weight
    params[(#list - 1) .. ".bias"] = l.bias
  end
  return list, params
end

local function import_model(tensors, metadata, names, opts)
  local given, where = opts.arch, "opts.arch"
  if given == nil and metadata[M.ARCH_KEY] then
    given, where = metadata[M.ARCH_KEY], "'" .. M.ARCH_KEY .. "'"
  end
  if given ~= nil then
    if opts.activation then
      error(("opts.activation is for files without an architecture, but %s gives one")
        :format(where), 0)
    end
    local ok, list = pcall(arch.check, given)
    if not ok then error(where .. ": " .. strip_pos(list):gsub("^arch: ", ""), 0) end
    return build(list, tensors, names)
  end
  local spec_json = metadata[M.SPEC_KEY]
  if spec_json and not opts.activation then
    local ok, spec = pcall(cjson.decode, spec_json)
    if not ok or type(spec) ~= "table" then
      error(("metadata %s is not a JSON spec"):format(M.SPEC_KEY), 0)
    end
    local okl, list = pcall(arch.of_legacy_spec, spec)
    if not okl then error(("metadata %s: %s"):format(M.SPEC_KEY, strip_pos(list)), 0) end
    return build(list, tensors, names)
  end
  if opts.activation ~= nil and opts.activation ~= "relu" and opts.activation ~= "tanh" then
    error(("opts.activation must be 'relu' or 'tanh', got %s"):format(tostring(opts.activation)), 0)
  end
  local list, params = infer_mlp(tensors, names, opts.activation)
  local pnames = {}
  for name in pairs(params) do pnames[#pnames + 1] = name end
  table.sort(pnames)
  return build(list, params, pnames)
end

--- A model ready to forward (an lps.nn Sequential), and the file's metadata.
-- The architecture comes from opts.arch (an arch list or its JSON text, see
-- lps.safetensors.check_arch), else from the file's "lualps.arch" metadata
-- (written by export, and by scripts/torch_interop.py for PyTorch models);
-- tensors must then be named "<i-1>.weight"/"<i-1>.bias" for layer i, as in a
-- PyTorch nn.Sequential, with the shapes the arch implies. Without an arch, the
-- file must be an MLP, which the shapes describe: linear layers in name order
-- ("0.weight", "2.weight", ... or "fc1.weight", "fc2.weight", ...; digit runs
-- compare as numbers) and opts.activation ("relu", default, or "tanh")
-- between them. Convolutions cannot be inferred (their strides, padding and
-- pooling are not in the weights): a file with 4-D weights needs an arch. A
-- missing bias (bias=False) loads as zeros.
function M.import(path, opts)
  opts = util.options(opts, {}, "import", {"arch", "activation"})
  local tensors, metadata, names = read_at(2, path)
  local ok, model = pcall(import_model, tensors, metadata, names, opts)
  if not ok then error(("import: %s: %s"):format(path, strip_pos(model)), 2) end
  return model, metadata
end

--- Write a model's parameters and buffers with PyTorch's naming and layout
-- (its state_dict but num_batches_tracked), so that the matching
-- torch.nn.Sequential(...).load_state_dict() takes them, and its
-- architecture list as metadata "lualps.arch" (JSON, see m:arch(); a single
-- layer is written as a Sequential of one: "0.weight", "0.bias").
-- metadata (optional, string values) is added to {format = "pt"}.
-- opts.input (default none): the input shape without the batch, e.g.
-- {1, 28, 28}, written as the arch's first entry so that import checks every
-- shape (export checks it too).
function M.export(model, path, metadata, opts)
  if type(model) ~= "userdata" or type(model.named_parameters) ~= "function" then
    error("safetensors: export expects a model (lps.nn module), got " .. type(model), 2)
  end
  local o = util.options(opts, {}, "export", {"input"})
  local ok, list, json = pcall(model.arch, model, {input = o.input})
  if not ok then error("export: " .. strip_pos(list), 2) end
  local meta = {format = "pt", [M.ARCH_KEY] = json}
  for k, v in pairs(check_metadata(metadata, 2) or {}) do
    if k == M.ARCH_KEY then
      error(("export: metadata '%s' is written by export from the model (opts.input adds "
        .. "the input shape)"):format(k), 2)
    end
    meta[k] = v
  end
  local named = model:named_parameters()
  for _, e in ipairs(model:named_buffers()) do named[#named + 1] = e end
  if model:type() ~= "sequential" then
    for _, e in ipairs(named) do e.name = "0." .. e.name end
  end
  write_at(2, path, named, meta)
end

return M
