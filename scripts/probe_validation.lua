#!/usr/bin/env lua5.4
-- Dream options of probe matching, compared on a validation split that no
-- protocol of ModelSet-Hetero 2 tests: the *training* tasks of the
-- retrieval split (b). Queries are those tasks' ResNets (the held-out
-- family's stand-in) and one MLP and one CNN per task; the gallery is the
-- next --per-family MLPs and CNNs of each task. Each query reads the
-- gallery's dreams (probe_matching{directed = true}); rank-1 and mAP by task.
--   lua5.4 scripts/probe_validation.lua --set build/modelset_hetero.lpsm \
--     --variant base= --variant lr05=lr:0.05 --variant soft=temperature:4,steps:40
-- (branch robust-dreams measured gradient smoothing and jitter with it: no gain)
package.path = "./?.lua;./?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local argparse = require "argparse"
local lps = require "lualps"
local B = require "lualps.bench.set"

local p = argparse("probe_validation.lua", "Dream options of probe matching on the training tasks' models")
p:option("--set", "model set (with its .splits.json)", "build/modelset_hetero.lpsm")
p:option("--per-family", "gallery models per training task and family", "2"):convert(math.tointeger)
p:option("--variant", "NAME=key:value,... (dream options; repeatable)"):count("*")
local args = p:parse()

local function parse_variant(text)
  local name, rest = text:match("^([%w_]+)=(.*)$")
  if not name then error("--variant: expected NAME=key:value,..., got " .. text, 0) end
  local opts = {}
  for k, v in rest:gmatch("([%w_]+):([^,]+)") do opts[k] = math.tointeger(tonumber(v)) or tonumber(v) or v end
  return name, opts
end
local variants = {}
for _, v in ipairs(#args.variant > 0 and args.variant or {"base="}) do
  local name, opts = parse_variant(v)
  variants[#variants + 1] = {name = name, opts = opts}
end

local S = B.load(args.set)
local train_task = {}
for _, t in ipairs(S.splits.retrieval.train_tasks) do train_task[t] = true end
local per = {}
for i = 1, S.n do
  local m = S.meta[i]
  if train_task[m.task] then
    per[m.task] = per[m.task] or {mlp = {}, cnn = {}, resnet = {}}
    if per[m.task][m.family] then table.insert(per[m.task][m.family], i) end
  end
end
local resnets, others, gallery = {}, {}, {}
for t = 1, #S.splits.tasks do
  local f = per[t]
  if f then
    for _, i in ipairs(f.resnet) do resnets[#resnets + 1] = i end
    for _, fam in ipairs{"mlp", "cnn"} do
      others[#others + 1] = f[fam][1]
      for j = 2, 1 + args.per_family do gallery[#gallery + 1] = f[fam][j] end
    end
  end
end

local function metrics(queries, M)
  local r1, ap = 0, 0
  for qi, q in ipairs(queries) do
    local t, order = S.meta[q].task, {}
    for j = 1, #gallery do order[j] = j end
    local row = M[qi]
    table.sort(order, function(a, b)
      local x, y = row:get(a), row:get(b)
      if x ~= x then x = -math.huge end
      if y ~= y then y = -math.huge end
      if x ~= y then return x > y end
      return a < b
    end)
    if S.meta[gallery[order[1]]].task == t then r1 = r1 + 1 end
    local hits, sum = 0, 0
    for k, j in ipairs(order) do
      if S.meta[gallery[j]].task == t then hits = hits + 1; sum = sum + hits / k end
    end
    ap = ap + (hits > 0 and sum / hits or 0)
  end
  return r1 / #queries, ap / #queries
end

local function models(ids)
  local out = {}
  for k, i in ipairs(ids) do out[k] = S.models[i] end
  return out
end
print(("validation: %d training tasks; %d ResNet and %d MLP/CNN queries; gallery %d MLPs and CNNs")
  :format(#S.splits.retrieval.train_tasks, #resnets, #others, #gallery))
print(("%-14s %10s %10s %10s %10s %8s"):format("variant", "resnet r1", "resnet map", "mlpcnn r1", "mlpcnn map", "seconds"))
for _, v in ipairs(variants) do
  local t0 = lps.now()
  local pm = lps.similarity.probe.matcher(v.opts)
  local g = models(gallery)
  local r1, rmap = metrics(resnets, pm.directed(models(resnets), g))
  local o1, omap = metrics(others, pm.directed(models(others), g))
  print(("%-14s %10.3f %10.3f %10.3f %10.3f %8.1f"):format(v.name, r1, rmap, o1, omap, lps.now() - t0))
end
