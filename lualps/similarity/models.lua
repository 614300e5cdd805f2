--- lualps.similarity.models: the models a second-order network reads, as
-- weight lists {W1, b1, ..., WL, bL} (PyTorch layout: the parameters in
-- state_dict order, any buffers in `.buffers`, the architecture in `.arch`),
-- from a list, an lps.nn module, the tensors of a record, or a record of an
-- open set.
local core = require "lualps.core"
local nn = require "lualps.nn"
local arch = require "lualps.arch"
local cjson = require "cjson"
local K = core._lps

local M = {}

-- Parameter and buffer names and shapes of a checked architecture, by its
-- canonical JSON (a module of zeros built once per architecture).
local names_of = {}
local function names_by_json(json)
  local c = names_of[json]
  if not c then
    local m = nn.from_arch(json, false)
    c = {params = {}, buffers = {}, shapes = {}, json = json}
    for k, e in ipairs(m:named_parameters()) do c.params[k], c.shapes[e.name] = e.name, e.tensor:shape() end
    for k, e in ipairs(m:named_buffers()) do c.buffers[k], c.shapes[e.name] = e.name, e.tensor:shape() end
    m:close()
    names_of[json] = c
  end
  return c
end

-- The same of an arch list or JSON text, checked; also the checked list.
local function state_names(list)
  local ok, checked, json = pcall(arch.check, list)
  if not ok then error("similarity: " .. tostring(checked):gsub("^[^\n]-%.lua:%d+: ", ""), 0) end
  return names_by_json(json), checked
end

-- The tensor `name` of a map, checked against the arch's shape; errors
-- name its layer.
local function state_tensor(map, name, want, a, kind)
  local t = map[name]
  local function who() -- only for errors: naming the layer costs more than the check
    local w = arch.layer_of(a, name)
    return w and w .. ": " or ""
  end
  if not core.is_tensor(t) then error(("similarity: %s%s '%s' is missing"):format(who(), kind, name), 0) end
  local shape, fits = want.shapes[name], t:dim() == #want.shapes[name]
  for d = 1, #shape do fits = fits and t:size(d) == shape[d] end
  if not fits then
    error(("similarity: %s%s '%s' has shape (%s), expected (%s)"):format(who(), kind, name,
      table.concat(t:shape(), "x"), table.concat(shape, "x")), 0)
  end
  return t
end

-- The weight list of a map name -> tensor for a checked arch (`want`: its
-- names and shapes), with `given` (the arch list as given) and its
-- canonical JSON (cheaper to build a module from) beside it.
local function from_state(map, want, checked, given)
  local list, buffers = {}, {}
  for k, name in ipairs(want.params) do list[k] = state_tensor(map, name, want, checked, "parameter") end
  for k, name in ipairs(want.buffers) do buffers[k] = state_tensor(map, name, want, checked, "buffer") end
  if #buffers > 0 then list.buffers = buffers end
  list.arch, list.arch_checked = given, {arch = given, json = want.json}
  return list
end

--- The weight list {W1, b1, ..., WL, bL} of a model given as such a list, as
-- an lps.nn module (named_parameters; buffers and arch kept), or as the two
-- results of ms:tensors(i) (a map name -> tensor and the names in stored
-- order; with the record's arch list `a`, its parameters in state_dict
-- order and its buffers apart).
function M.weights(model, names, a)
  local tm = type(model)
  if tm ~= "table" and tm ~= "userdata" then
    error("similarity: expected a model (a list of tensors, an lps.nn module or ms:tensors(i)), got " .. tm, 2)
  end
  if tm == "table" and core.is_tensor(model[1]) then return model end
  if tm == "table" and type(names) == "table" and a then
    local want, checked = state_names(a)
    return from_state(model, want, checked, type(a) == "table" and a or checked)
  end
  if tm == "table" and type(names) == "table" then
    local list = {}
    for k, name in ipairs(names) do
      list[k] = model[name]
      if not core.is_tensor(list[k]) then error(("similarity: tensor '%s' is missing"):format(tostring(name)), 2) end
    end
    return list
  end
  if tm == "table" and next(model) ~= nil and #model == 0 then
    -- a map name -> tensor in PyTorch naming ("0.weight", "fc2.bias", ...):
    -- order by layer number, weight before bias
    local keys = {}
    for name, t in pairs(model) do
      local n = type(name) == "string" and tonumber(name:match("^%a*(%d+)%.")) or nil
      local kind = type(name) == "string" and name:match("%.(%a+)$")
      if not n or (kind ~= "weight" and kind ~= "bias") or not core.is_tensor(t) then
        error(("similarity: cannot order tensor '%s' (expected names like 0.weight, 0.bias)"):format(tostring(name)), 2)
      end
      keys[#keys + 1] = {name = name, n = n, b = kind == "bias" and 1 or 0}
    end
    table.sort(keys, function(x, y) if x.n ~= y.n then return x.n < y.n end return x.b < y.b end)
    local list = {}
    for k, e in ipairs(keys) do list[k] = model[e.name] end
    return list
  end
  local okf, np = pcall(function() return model.named_parameters end)
  if okf and np then
    local list, buffers = {}, {}
    for k, nt in ipairs(model:named_parameters()) do list[k] = nt.tensor end
    for k, nt in ipairs(model:named_buffers()) do buffers[k] = nt.tensor end
    if #list > 0 then
      list.arch = model:arch() -- strides, padding, pooling, blocks: what a CNN's function needs
      list.family = list[1]:dim() == 4 and "cnn" or "mlp"
      list.module = model
      if #buffers > 0 then list.buffers = buffers end
      return list
    end
  end
  error("similarity: expected a model (a list of tensors, an lps.nn module or ms:tensors(i)), got a "
    .. (tm == "table" and "table without tensors" or tm), 2)
end

-- Check that the weight-space reading of a second-order network (`what`,
-- e.g. "the weight-unit slots (first)") is defined for a model with an
-- arch: weight layers with biases and only layers that act on every
-- channel alike and commute with a positive scale between them (as for the
-- weight-space baselines, csrc/nn/arch.c lps_arch_weight_layers). Raises
-- naming the first layer it cannot read; models without an arch (weight
-- lists of MLPs) pass.
function M.check_weight_space(model, what)
  if type(model) ~= "table" or model.arch == nil then return end
  local ok, err = pcall(K.weight_layers, model.arch, "similarity: " .. what)
  if not ok then
    error(tostring(err):gsub("^[^\n]-%.lua:%d+: ", "") .. "; the templates slot reads any model through its "
      .. "function (slots = {\"templates\"})", 0)
  end
end

-- (internal) Whether x is a model set (lps.modelset.open's or create's,
-- open or closed).
function M.is_set(x) return type(x) == "table" and getmetatable(x) == require("lualps.modelset").ModelSet end

-- (internal) An error naming operation `what` unless set is a model set,
-- raised `level` calls above the caller (default 2: the caller's caller).
function M.check_set(set, what, level)
  if not M.is_set(set) then
    error(("%s: expected an open model set, got %s"):format(what, type(set) == "table" and "a table that is not one"
      or type(set)), (level or 2) + 1)
  end
end

--- Record i of an open set as a model for the network: its weight list,
-- with the `arch` (older records: of their legacy spec) and `family` of its
-- metadata (what reading a CNN's function needs).
function M.record(set, i)
  M.check_set(set, "similarity.record")
  -- The stored arch is read as text, checked and parsed in C, with the
  -- family beside it: the rest of the metadata is not decoded. Older
  -- records (a legacy spec, or an arch the C parser reads only as a decoded
  -- table, e.g. {} for an empty branch) take the decoded metadata.
  local atext, ftext = set:meta_json(i, "arch", "family") -- raises as set:meta does for a bad i
  local a, json
  if atext then
    local okc, list, canon = pcall(arch.check, atext)
    if okc then a, json = list, canon end
  end
  local meta = not a and set:meta(i) or nil
  local ok, w = pcall(function()
    a = a or arch.of_meta(meta)
    local map, names = set:tensors(i)
    local w = json and from_state(map, names_by_json(json), a, a) or M.weights(map, names, a)
    w.family = meta and meta.family or ftext and (ftext:match('^"([%w_%-]*)"$') or cjson.decode(ftext))
    return w
  end)
  if not ok then -- a stored arch or tensors that do not fit: name the record
    meta = meta or set:meta(i)
    local id = meta.id -- (set:meta gives whole numbers as integers)
    error(("similarity: record %d%s of %s: %s"):format(i, id ~= nil and " (" .. tostring(id) .. ")" or "",
      set:path(), tostring(w):gsub("^[^\n]-%.lua:%d+: ", ""):gsub("^similarity: ", "")), 2)
  end
  return w
end

return M
