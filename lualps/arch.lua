--- lualps.arch: architecture lists, the one description of a model's
-- structure (the "lualps.arch" metadata of safetensors files, the `arch`
-- of model set records): one table per child of a PyTorch nn.Sequential,
-- fields named as the registry's layer types say (csrc/nn/registry.c;
-- lps.nn.layer_types() lists them), a residual block's branches as nested
-- lists. Parsed, checked and completed in C (csrc/nn/arch.c); lps.nn builds
-- modules from a list (lps.nn.from_arch) and gives a module's list (m:arch()).
local core = require "lualps.core"

local C = core._nn

local M = {}

--- Check an architecture list and fill its defaults. arch is a Lua list of
-- layer tables or its JSON text, e.g.
-- `{{type = "conv2d", ["in"] = 1, out = 8, kernel = 5, stride = 2, padding = 2},
-- {type = "relu"}, {type = "flatten"}, {type = "linear", ["in"] = 1568, out = 4}}`,
-- optionally first `{type = "input", shape = {C, H, W}}` (or `{N}`), the
-- input without the batch (not a layer: layer i is child i-1 of the
-- PyTorch nn.Sequential). Shapes must chain: with an input entry every size
-- is checked here; without one, what the layers alone tell, and spatial
-- sizes at the first forward, whose error names the layer. Returns the list
-- (defaults filled), its canonical JSON text (fixed key order), and the
-- shape after each entry without the batch (-1 where only the input shape
-- would tell, {} when not even the rank is known). Errors start with
-- "arch:" and name the layer (nested: "layer 3 (residual) body layer 1
-- (conv2d)"), the field and the sizes. (Also lps.safetensors.check_arch.)
function M.check(arch)
  local ok, list, canon, shapes = pcall(C.arch_parse, arch)
  if not ok then error((tostring(list):gsub("^.-:%d+: ", "")), 2) end
  return list, canon, shapes
end

-- The keys of the spec tables that model sets built before the arch was the
-- one description stored (`spec = {type = "sequential", layers = {...}}`).
local legacy_keys = {
  linear = {in_features = "in", out_features = "out"},
  conv2d = {in_channels = "in", out_channels = "out", kernel_size = "kernel", stride = "stride",
    padding = "padding"},
  maxpool2d = {kernel_size = "kernel", stride = "stride"},
}

--- The arch list of a legacy spec (the `spec` field of records stored
-- before `arch` replaced it; files exported with "lualps.spec"), checked.
-- The only reader of that form.
function M.of_legacy_spec(spec)
  if type(spec) ~= "table" then error("arch: a legacy spec is a table, got " .. type(spec), 2) end
  if spec.type == "sequential" and type(spec.layers) ~= "table" then
    error("arch: a legacy sequential spec needs a layers list", 2)
  end
  local specs = spec.type == "sequential" and spec.layers or {spec}
  local list = {}
  for i, s in ipairs(specs) do
    if type(s) ~= "table" then error(("arch: legacy spec layer %d is not a table"):format(i), 2) end
    local e = {type = s.type}
    for k, v in pairs(s) do
      if k ~= "type" then
        local key = legacy_keys[s.type] and legacy_keys[s.type][k]
        if not key then error(("arch: legacy %s spec: unknown key '%s'"):format(tostring(s.type), tostring(k)), 2) end
        e[key] = v
      end
    end
    list[i] = e
  end
  local checked = M.check(list)
  return checked
end

--- The arch of a record's metadata: its `arch`, or for older records the
-- conversion of their legacy `spec`; nil when it has neither.
function M.of_meta(meta)
  if type(meta) ~= "table" then error(("arch.of_meta: meta must be a record's metadata table, got %s"):format(type(meta)), 2) end
  if meta.arch ~= nil then return meta.arch end
  if meta.spec ~= nil then return M.of_legacy_spec(meta.spec) end
  return nil
end

--- The layer that holds a parameter or buffer, by its state_dict name
-- ("3.body.1.running_var"), as arch errors name it: "layer 4 (residual)
-- body layer 2 (batchnorm2d)"; nil when the name is not of the list's
-- layers (layer i is child i-1 of the nn.Sequential; an input entry is not
-- a layer).
function M.layer_of(list, name)
  if type(list) ~= "table" or type(name) ~= "string" then return nil end
  local who, l, rest = nil, list, name
  local skip = type(list[1]) == "table" and list[1].type == "input" and 1 or 0
  while true do
    local k, tail = rest:match("^(%d+)%.(.+)$")
    local e = k and l[tonumber(k) + 1 + skip]
    if type(e) ~= "table" then return who end
    who = (who and who .. " " or "") .. ("layer %d (%s)"):format(tonumber(k) + 1, tostring(e.type))
    local branch, inner = tail:match("^(%a+)%.(.+)$")
    if not (branch == "body" or branch == "shortcut") or type(e[branch]) ~= "table" then return who end
    who, l, rest, skip = who .. " " .. branch, e[branch], inner, 0
  end
end

--- A short name of an arch list for listings: "mlp-784-64-2" for linear
-- layers alone, else its weight layers and blocks, e.g. "cnn-c8-c16-l4" or
-- "cnn-c8-res[c8-c8]-l10".
function M.name(list)
  local function check(l, where)
    if type(l) ~= "table" then error(("arch.name: %s must be a list of layers, got %s"):format(where, type(l)), 3) end
    for i, e in ipairs(l) do
      if type(e) ~= "table" then error(("arch.name: %s layer %d is %s, not a table"):format(where, i, type(e)), 3) end
      if e.body ~= nil then check(e.body, ("%s layer %d's body"):format(where, i)) end
    end
  end
  check(list, "the arch")
  local function parts(l, out)
    for _, e in ipairs(l) do
      if e.type == "conv2d" then out[#out + 1] = "c" .. tostring(e.out)
      elseif e.type == "linear" then out[#out + 1] = "l" .. tostring(e.out)
      elseif e.body then out[#out + 1] = "res[" .. table.concat(parts(e.body, {}), "-") .. "]" end
    end
    return out
  end
  local sizes, plain = {}, true
  for _, e in ipairs(list) do
    if e.type == "linear" then
      if #sizes == 0 then sizes[1] = e["in"] end
      sizes[#sizes + 1] = e.out
    elseif e.type ~= "input" and e.type ~= "relu" and e.type ~= "tanh" then
      plain = false
    end
  end
  if plain and #sizes > 0 then return "mlp-" .. table.concat(sizes, "-") end
  return "cnn-" .. table.concat(parts(list, {}), "-")
end

return M
