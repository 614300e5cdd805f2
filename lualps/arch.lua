--- lualps.arch: architecture lists, the form a model's structure travels in
-- (the "lualps.arch" metadata of safetensors files): one flat table per
-- child of a PyTorch nn.Sequential, sizes named in/out/kernel. Checked and
-- completed in C (csrc/io/arch.c); lps.nn builds modules from a list
-- (lps.nn.from_arch) and gives a module's list (m:arch()).
local core = require "lualps.core"
local cjson = require "cjson"

local C = core._safetensors

local M = {}

local function strip_pos(msg) return (tostring(msg):gsub("^.-:%d+: ", "")) end

--- Check an architecture list and fill its defaults. arch is a Lua list of
-- layer tables or its JSON text (the "lualps.arch" metadata):
-- `{type = "conv2d", ["in"] = C, out = C2, kernel = K[, stride = 1, padding = 0]}`,
-- `{type = "maxpool2d", kernel = K[, stride = K]}`, `{type = "linear", ["in"] = N, out = M}`,
-- `{type = "relu"}`, `{type = "tanh"}`, `{type = "flatten"}`, and optionally first
-- `{type = "input", shape = {C, H, W}}` (or `{N}`), the input without the batch.
-- The input entry is not a layer: layer i is child i-1 of the PyTorch
-- nn.Sequential, whose parameters are "<i-1>.weight" and "<i-1>.bias".
-- Shapes must chain: with an input entry every size is checked here;
-- without one, what the layers alone tell (channels from conv2d to conv2d,
-- features from linear to linear, a flattened size that is a multiple of
-- the channels), and spatial sizes at the first forward, whose error names
-- the layer. Returns the list (defaults filled), its canonical JSON text (fixed
-- key order), and the shape after each entry without the batch (-1 where
-- only the input shape would tell, {} when not even the rank is known).
-- Errors start with "arch:" and name the layer, the field and the sizes.
-- (Also lps.safetensors.check_arch.)
function M.check(arch)
  local json = arch
  if type(arch) == "table" then
    if #arch == 0 then error("arch: the list has no layers", 2) end
    local ok, j = pcall(cjson.encode, arch)
    if not ok then error("arch: not a list of plain tables: " .. strip_pos(j), 2) end
    json = j
  elseif type(arch) ~= "string" then
    error("arch: expected a list of layer tables or its JSON text, got " .. type(arch), 2)
  end
  local ok, list, canon, shapes = pcall(C.arch_parse, json)
  if not ok then error(list, 2) end
  return list, canon, shapes
end

-- One arch entry per layer type of a module spec (m:spec()).
local of_layer = {
  linear = function(s) return {type = "linear", ["in"] = s.in_features, out = s.out_features} end,
  conv2d = function(s)
    return {type = "conv2d", ["in"] = s.in_channels, out = s.out_channels, kernel = s.kernel_size,
      stride = s.stride, padding = s.padding}
  end,
  maxpool2d = function(s) return {type = "maxpool2d", kernel = s.kernel_size, stride = s.stride} end,
  relu = function() return {type = "relu"} end,
  tanh = function() return {type = "tanh"} end,
  flatten = function() return {type = "flatten"} end,
}

--- The arch list of a module spec (what m:spec() returns; see m:arch()),
-- checked: the list and its JSON text. input (optional) is the input shape
-- without the batch, written as a first {type = "input", shape = input}.
-- A nested Sequential has no arch list (an error).
function M.of_spec(spec, input)
  local specs = spec.type == "sequential" and spec.layers or {spec}
  local list = {}
  if input ~= nil then list[1] = {type = "input", shape = input} end
  for i, s in ipairs(specs) do
    local f = of_layer[s.type]
    if not f then
      error(("arch: layer %d is a %s, which has no arch entry (the list is flat: build the model "
        .. "as one lps.nn.sequential of conv2d, maxpool2d, relu, tanh, flatten, linear)")
        :format(i, s.type == "sequential" and "nested Sequential" or tostring(s.type)), 2)
    end
    list[#list + 1] = f(s)
  end
  local checked, json = M.check(list)
  return checked, json
end

return M
