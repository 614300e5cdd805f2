--- lualps.similarity.models: the models a second-order network reads, as
-- weight lists {W1, b1, ..., WL, bL} (PyTorch layout: the parameters in
-- state_dict order, any buffers in `.buffers`, the architecture in `.arch`),
-- from a list, an lps.nn module, the tensors of a record, or a record of an
-- open set.
local core = require "lualps.core"
local nn = require "lualps.nn"
local arch = require "lualps.arch"

local M = {}

-- Parameter and buffer names of an architecture, by its canonical JSON.
local names_of = {}
local function state_names(list)
  local _, json = arch.check(list)
  local c = names_of[json]
  if not c then
    local m = nn.from_arch(list, core.generator(0))
    c = {params = {}, buffers = {}}
    for k, e in ipairs(m:named_parameters()) do c.params[k] = e.name end
    for k, e in ipairs(m:named_buffers()) do c.buffers[k] = e.name end
    names_of[json] = c
  end
  return c
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
    local want = state_names(a)
    local list, buffers = {}, {}
    for k, name in ipairs(want.params) do
      list[k] = model[name]
      if not core.is_tensor(list[k]) then error(("similarity: parameter '%s' is missing"):format(name), 2) end
    end
    for k, name in ipairs(want.buffers) do
      buffers[k] = model[name]
      if not core.is_tensor(buffers[k]) then error(("similarity: buffer '%s' is missing"):format(name), 2) end
    end
    if #buffers > 0 then list.buffers = buffers end
    list.arch = a
    return list
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
  error("similarity: expected a model (a list of tensors, an lps.nn module or ms:tensors(i))", 2)
end

--- Record i of an open set as a model for the network: its weight list,
-- with the `arch` (older records: of their legacy spec) and `family` of its
-- metadata (what reading a CNN's function needs).
function M.record(set, i)
  local meta = set:meta(i)
  local a = arch.of_meta(meta)
  local map, names = set:tensors(i)
  local w = M.weights(map, names, a)
  w.arch, w.family = a, meta.family
  return w
end

return M
