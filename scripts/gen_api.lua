#!/usr/bin/env lua5.4
-- Generate docs/API.md from the `---` doc comments of lualps/: every
-- public function (module functions and methods) with the comment above it.
-- Usage: lua5.4 scripts/gen_api.lua [OUT]   (default docs/API.md)
-- `make docs` runs it; tests/test_docs.lua checks the file is up to date.
local out_path = arg[1] or "docs/API.md"

local modules = {
  {"lualps/init.lua", "lps", "The module table: tensor functions from the C core, modules loaded on first use."},
  {"lualps/util.lua", "lps.util", "Progress display and small helpers."},
  {"lualps/json.lua", "lualps.json", "The JSON of model-set metadata: sorted keys, exact numbers."},
  {"lualps/nn.lua", "lps.nn", "Layers, models and the training loop."},
  {"lualps/optim.lua", "lps.optim", "Optimizers and learning-rate schedules."},
  {"lualps/data.lua", "lps.data", "Fashion-MNIST, rendered letters, image domains and data helpers."},
  {"lualps/arch.lua", "lps.arch", "Architecture lists (the \"lualps.arch\" metadata)."},
  {"lualps/safetensors.lua", "lps.safetensors", "Reading and writing .safetensors files."},
  {"lualps/modelset.lua", "lps.modelset", "The ModelSet store (format: docs/MODELSET_FORMAT.md)."},
  {"lualps/eval.lua", "lps.eval", "Baselines and evaluation metrics."},
  {"lualps/estimators.lua", "lps.estimators", "Data-based transferability estimators: LogME, LEEP, k-NN, a ridge probe."},
  {"lualps/similarity/init.lua", "lps.similarity", "The LPS second-order networks and the similarity API."},
  {"lualps/similarity/base.lua", "lps.similarity", "What every second-order network (and feature head) shares."},
  {"lualps/similarity/mlpnet.lua", "lps.similarity", "The second-order network for MLPs."},
  {"lualps/similarity/archnet.lua", "lps.similarity (any architecture)", "The second-order network for MLPs and CNNs."},
  {"lualps/similarity/templates.lua", "lps.similarity", "The class templates of any architecture."},
  {"lualps/similarity/head.lua", "lps.similarity", "A learned head on fixed features."},
  {"lualps/similarity/train.lua", "lps.similarity", "Training a network on models with task labels."},
  {"lualps/similarity/models.lua", "lps.similarity", "The models a network reads (weight lists)."},
  {"lualps/similarity/sim.lua", "lps.similarity", "The similarity object: embed, nearest, save."},
  {"lualps/similarity/match.lua", "lualps.similarity.match", "Template matching's assignment score of two models' unit rows."},
  {"lualps/similarity/hybrid.lua", "lps.similarity.hybrid", "Template matching plus a gated learned residual (issue 19)."},
  {"lualps/similarity/probe.lua", "lps.similarity.probe", "Probe matching: each model classifies the other's class dreams."},
  {"lualps/similarity/prior.lua", "lps.similarity.prior", "The transferability prior: how well a model fine-tunes, from its weight statistics."},
  {"lualps/bench/benchmark.lua", "lps.benchmark", "Evaluation protocols on a model set."},
  {"lualps/bench/set.lua", "lps.benchmark", "A model set as the protocols see it."},
  {"lualps/bench/protocols.lua", "lps.benchmark", "The protocols, in their order, and their metrics."},
  {"lualps/bench/report.lua", "lps.benchmark", "Tables and figures of an evaluation."},
  {"lualps/bench/methods.lua", "lps.benchmark.methods", "The methods of the evaluation tables."},
  {"lualps/bench/selection.lua", "lps.selection", "The model-selection protocol."},
  {"lualps/bench/controls.lua", "lps.controls", "Controls of an evaluation: what a method reaches without the weights."},
  {"lualps/bench/relation_prior.lua", "lps.relation_prior", "Per-task transfer effects, the relation prior and the ceilings of a task similarity."},
  {"lualps/bench/zoo.lua", "lps.zoo", "Building model sets: plans, shards, splits, resumable builds."},
  {"lualps/bench/hetero.lua", "lps.hetero", "ModelSet-Hetero: plan, splits and composition."},
  {"lualps/bench/transfer.lua", "lps.transfer", "The transfer ground truth: fine-tuning gains between tasks."},
  {"lualps/bench/transfer_pool.lua", "lps.transfer_pool", "The transfer ground truth of sets of many architectures, with its reliability."},
  {"lualps/bench/plot.lua", "lps.plot", "PNG figures through gnuplot."},
}

-- Every Lua file of the package has its place above.
do
  local listed = {}
  for _, m in ipairs(modules) do listed[m[1]] = true end
  local p = assert(io.popen("find lualps -name '*.lua' | sort"))
  for f in p:lines() do
    if not listed[f] then error(("gen_api: %s is not in the module list of scripts/gen_api.lua"):format(f), 0) end
  end
  p:close()
end

local function doc_entries(path)
  local f = io.open(path)
  if not f then return nil end
  local entries, comment = {}, {}
  for line in f:lines() do
    local c = line:match("^%-%-%-%s?(.*)$")
    if c then
      comment = {c}
    elseif #comment > 0 and line:match("^%-%-") then
      comment[#comment + 1] = line:gsub("^%-%-%s?", "")
    else
      local name, params = line:match("^function%s+([%w_%.:]+)%s*(%b())")
      if name and #comment > 0 then
        entries[#entries + 1] = {name = name, params = params, doc = table.concat(comment, "\n")}
      end
      comment = {}
    end
  end
  f:close()
  return entries
end

local lines = {"# lualps API reference", "",
  "Generated by `scripts/gen_api.lua` from the doc comments of `lualps/`; do not edit by hand.",
  "The tensor type (implemented in C) is documented in the README's *Tensors* section; the C API is",
  "`csrc/lualps.h`. In the names below `M.` is the module (e.g. `lps.nn.`) and `Class:` a method of",
  "the objects it returns.", ""}
for _, m in ipairs(modules) do
  local entries = doc_entries(m[1])
  if entries and #entries > 0 then
    lines[#lines + 1] = ("## `%s` (%s)"):format(m[2], m[1])
    lines[#lines + 1] = ""
    lines[#lines + 1] = m[3]
    lines[#lines + 1] = ""
    for _, e in ipairs(entries) do
      -- module functions under their public name; methods as Class:method
      local shown = e.name:find(":", 1, true) and e.name or e.name:gsub("^[%w_]+%.", m[2] .. ".")
      lines[#lines + 1] = ("### `%s%s`"):format(shown, e.params)
      lines[#lines + 1] = ""
      lines[#lines + 1] = e.doc
      lines[#lines + 1] = ""
    end
  end
end
local text = table.concat(lines, "\n")
if out_path == "-" then io.write(text) else
  local f = assert(io.open(out_path, "w"))
  f:write(text)
  f:close()
end
