--- lualps: Learnable Parameter Similarity for Lua 5.4.
-- `local lps = require "lualps"` gives the tensor functions of the C core
-- (lualps.core) and, loaded on first use, the modules listed below. This
-- file is the facade for users, recipes, scripts and tests: no module of
-- the package requires it (each requires what it uses; tests/test_layout.lua
-- checks the layers).
local core = require "lualps.core"

local lps = {}
for k, v in pairs(core) do lps[k] = v end
lps.core = core

-- Modules load on first access (`lps.nn`, `lps.modelset`, ...), so a quick
-- REPL question does not pay for what it does not use. The library is at
-- lualps/*.lua, the second-order networks in lualps/similarity/, the
-- benchmark (model sets, transfer, protocols, figures) in lualps/bench/.
local modules = {
  util = "lualps.util", nn = "lualps.nn", optim = "lualps.optim", data = "lualps.data",
  arch = "lualps.arch", safetensors = "lualps.safetensors", modelset = "lualps.modelset",
  eval = "lualps.eval", estimators = "lualps.estimators", similarity = "lualps.similarity",
  zoo = "lualps.bench.zoo", hetero = "lualps.bench.hetero", transfer = "lualps.bench.transfer",
  transfer_pool = "lualps.bench.transfer_pool", selection = "lualps.bench.selection",
  controls = "lualps.bench.controls", relation_prior = "lualps.bench.relation_prior",
  benchmark = "lualps.bench.benchmark", plot = "lualps.bench.plot",
}

-- Safetensors interop (lualps/safetensors.lua) at the top level.
function lps.import_safetensors(path, opts) return require("lualps.safetensors").import(path, opts) end
function lps.export_safetensors(model, path, metadata, opts)
  return require("lualps.safetensors").export(model, path, metadata, opts)
end

-- The training loop lives in lualps.nn; lps.train and lps.evaluate reach it.
function lps.train(...) return require("lualps.nn").train(...) end
function lps.evaluate(...) return require("lualps.nn").evaluate(...) end

return setmetatable(lps, {
  __index = function(t, k)
    local name = modules[k]
    if not name then return nil end
    local m = require(name)
    rawset(t, k, m)
    return m
  end,
})
