--- lualps.json: the JSON of a model set's metadata (lps.modelset): written
-- with sorted keys (the same metadata, the same bytes) and numbers that
-- read back exactly; read with lua-cjson, whole numbers as integers (exact
-- up to 2^53).
local cjson = require("cjson").new()

local M = {}

-- JSON numbers come back as floats; whole ones become integers again.
local mtype, tointeger = math.type, math.tointeger
local function integers(v)
  for k, x in pairs(v) do
    if type(x) == "table" then
      integers(x)
    elseif mtype(x) == "float" and x >= -2^53 and x <= 2^53 then
      local i = tointeger(x) -- nil unless whole
      if i then v[k] = i end
    end
  end
  return v
end

--- The metadata table of a record's JSON text (`where` names the record in
-- errors): an object, whole numbers as integers.
function M.decode(json, where)
  local ok, v = pcall(cjson.decode, json)
  if not ok then
    error(string.format("%s: invalid JSON metadata: %s", where, tostring(v)), 0)
  end
  if type(v) ~= "table" or not json:match("^%s*{") then
    error(string.format("%s: metadata is not a JSON object", where), 0)
  end
  return integers(v)
end

-- JSON with sorted keys (the same metadata always gives the same bytes)
-- and numbers that read back exactly (cjson keeps only 14 digits). An empty
-- table is {} unless marked a list (metatable named "lualps.list": an
-- arch's empty shortcut), which is [].
local function encode_value(v, out, depth)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = cjson.encode(v)
  elseif math.type(v) == "integer" then
    out[#out + 1] = string.format("%d", v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("NaN or infinity", 0) end
    local s = string.format("%.15g", v)
    if tonumber(s) ~= v then s = string.format("%.17g", v) end
    out[#out + 1] = s
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif v == cjson.null then
    out[#out + 1] = "null"
  elseif t == "table" then
    if depth > 64 then error("nested deeper than 64 levels", 0) end
    local n, count, keys = #v, 0, {}
    for k in pairs(v) do
      count = count + 1
      if type(k) == "string" then keys[#keys + 1] = k
      elseif math.type(k) ~= "integer" or k < 1 or k > n then
        error("a table mixes list entries and keys of type " .. type(k), 0)
      end
    end
    local mt = getmetatable(v)
    if n > 0 and count == n or count == 0 and mt and mt.__name == "lualps.list" then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        encode_value(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    else
      if #keys ~= count then error("a table mixes list entries and string keys", 0) end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = cjson.encode(k)
        out[#out + 1] = ":"
        encode_value(v[k], out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("cannot store a " .. t, 0)
  end
end

--- The JSON text of a record's metadata table (nil: {}): sorted keys,
-- numbers that read back exactly; errors (level: the caller of the
-- function that called it) say why a table cannot be stored.
function M.encode(meta)
  if meta == nil then return "{}" end
  if type(meta) ~= "table" then error("modelset: metadata must be a table", 3) end
  local ok, json = pcall(function()
    local out = {}
    encode_value(meta, out, 0)
    return table.concat(out)
  end)
  if not ok then error("modelset: metadata cannot be stored as JSON: " .. tostring(json), 3) end
  if json:sub(1, 1) ~= "{" then
    error("modelset: metadata must be a JSON object (a table with string keys)", 3)
  end
  return json
end

return M
