--- lualps: Learnable Parameter Similarity for Lua 5.4.
-- `local lps = require "lualps"` gives the tensor functions of the C core
-- (lualps.core) and, loaded on first use, the submodules listed below.
local core = require "lualps.core"

local lps = {}
for k, v in pairs(core) do lps[k] = v end
lps.core = core

-- Submodules load on first access (`lps.nn`, `lps.modelset`, ...), so a
-- quick REPL question does not pay for what it does not use.
local submodules = {
  nn = "lualps.nn", optim = "lualps.optim", data = "lualps.data",
  modelset = "lualps.modelset", similarity = "lualps.similarity",
  util = "lualps.util", zoo = "lualps.zoo", benchmark = "lualps.benchmark", eval = "lualps.eval",
  safetensors = "lualps.safetensors", plot = "lualps.plot", transfer = "lualps.transfer", transfer_pool = "lualps.transfer_pool",
  hetero = "lualps.hetero", estimators = "lualps.estimators",
}

-- Safetensors interop (lualps/safetensors.lua) at the top level.
function lps.import_safetensors(path, opts) return lps.safetensors.import(path, opts) end
function lps.export_safetensors(model, path, metadata, opts)
  return lps.safetensors.export(model, path, metadata, opts)
end

-- The training loop lives in lualps.nn; lps.train and lps.evaluate reach it.
function lps.train(...) return require("lualps.nn").train(...) end
function lps.evaluate(...) return require("lualps.nn").evaluate(...) end

return setmetatable(lps, {
  __index = function(t, k)
    local name = submodules[k]
    if not name then return nil end
    local m = require(name)
    rawset(t, k, m)
    return m
  end,
})
