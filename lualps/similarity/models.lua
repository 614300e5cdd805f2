--- lualps.similarity.models: the models a second-order network reads, as
-- weight lists {W1, b1, ..., WL, bL} (PyTorch layout), from a list, an
-- lps.nn module, the tensors of a record, or a record of an open set.
local core = require "lualps.core"

local M = {}

--- The weight list {W1, b1, ..., WL, bL} of a model given as such a list, as
-- an lps.nn module (named_parameters), or as the two results of ms:tensors(i)
-- (a map name -> tensor and the names in stored order).
function M.weights(model, names)
  local tm = type(model)
  if tm ~= "table" and tm ~= "userdata" then
    error("similarity: expected a model (a list of tensors, an lps.nn module or ms:tensors(i)), got " .. tm, 2)
  end
  if tm == "table" and core.is_tensor(model[1]) then return model end
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
    local list = {}
    for k, nt in ipairs(model:named_parameters()) do list[k] = nt.tensor end
    if #list > 0 then
      list.spec = model:spec() -- strides, padding and pooling: what a CNN's function needs
      list.family = list[1]:dim() == 4 and "cnn" or "mlp"
      list.module = model
      return list
    end
  end
  error("similarity: expected a model (a list of tensors, an lps.nn module or ms:tensors(i))", 2)
end

--- Record i of an open set as a model for the network: its weight list,
-- with the `spec` and `family` of its metadata (what reading a CNN's
-- function needs).
function M.record(set, i)
  local w = M.weights(set:tensors(i))
  local meta = set:meta(i)
  w.spec, w.family = meta.spec, meta.family
  return w
end

return M
