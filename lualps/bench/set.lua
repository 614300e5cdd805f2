--- lualps.bench.set: a model set as the protocols of lps.benchmark see it
-- (every model's weights and metadata, the splits, the transfer ground
-- truth), and a method as they see it: a view comparing lists of ids.
-- Its functions are lps.benchmark's (load, gather, filter, per_task).
local core = require "lualps.core"
local cjson = require "cjson"
local util = require "lualps.util"
local modelset = require "lualps.modelset"
local similarity = require "lualps.similarity"

local B = {}

--- Load every model of a set (weights as lists, metadata), its splits
-- (path .. ".splits.json") and, when present, its transfer matrix
-- (path .. ".transfer.json"). Returns S = {path, n, models, labelled, meta,
-- byid, splits, transfer}: models[i] its tensors (with family and arch),
-- labelled[i] the same with its task's classes and domain (what fit sees).
function B.load(path)
  local ms <close> = modelset.open(path)
  local S = {path = path, n = #ms, models = {}, labelled = {}, meta = {}, byid = {}}
  for i = 1, #ms do
    local meta = ms:meta(i)
    S.meta[i], S.byid[meta.id] = meta, i
    local w = similarity.record(ms, i) -- with its arch and family: what a method needs to read a CNN
    S.models[i] = w
    -- the same model with what its task is (classes, domain): given to fit only
    local lw = {family = w.family, arch = w.arch, buffers = w.buffers, classes = meta.classes, domain = meta.domain}
    for k, t in ipairs(w) do lw[k] = t end
    S.labelled[i] = lw
  end
  local text, err = util.read_file(path .. ".splits.json")
  if not text then error("benchmark: no splits beside the set: " .. tostring(err), 2) end
  S.splits = cjson.decode(text)
  local tr = util.read_file(path .. ".transfer.json")
  S.transfer = tr and cjson.decode(tr) or nil
  return S
end

--- Models and task labels of a list of ids.
function B.gather(S, ids)
  local models, labels = {}, {}
  for k, id in ipairs(ids) do
    local i = S.byid[id] or error("benchmark: unknown model id " .. tostring(id), 2)
    models[k], labels[k] = S.models[i], S.meta[i].task
  end
  return models, labels
end

--- Ids of `ids` whose metadata field `field` equals `value`.
function B.filter(S, ids, field, value)
  local out = {}
  for _, id in ipairs(ids) do
    if S.meta[S.byid[id]][field] == value then out[#out + 1] = id end
  end
  return out
end

--- The first k ids of each task, in list order.
function B.per_task(S, ids, k)
  local count, out = {}, {}
  for _, id in ipairs(ids) do
    local t = S.meta[S.byid[id]].task
    count[t] = (count[t] or 0) + 1
    if count[t] <= k then out[#out + 1] = id end
  end
  return out
end

-- The task labels of a list of ids.
function B.labels(S, ids)
  local _, y = B.gather(S, ids)
  return y
end

------------------------------------------------------------------ methods as seen by the protocols

-- A fitted method as the protocols use it: sim(ids_a, ids_b) and, for
-- embedding methods, features(ids). Embeddings of every model of the set
-- are computed once, in the set's order.
function B.view(S, m)
  if m.embed then
    local E = m:embed(S.models)
    if E:size(1) ~= S.n then
      error(("benchmark: %s: embed gave %d rows for %d models"):format(tostring(m.name), E:size(1), S.n), 0)
    end
    if m.metric ~= "dot" then
      local norms = (E * E):sum(2):sqrt()
      for i = 1, S.n do E[i]:div_(math.max(norms[i], 1e-12)) end
    end
    local function rows(ids)
      local idx = {}
      for k, id in ipairs(ids) do idx[k] = S.byid[id] end
      return E:index_rows(idx)
    end
    local s = E:sum()
    local has_nan = s ~= s -- rows of models the method cannot read are NaN
    local function sim(x, y)
      local out = core.matmul(rows(x), rows(y), false, true)
      if has_nan then
        local flat = out:reshape(-1)
        for i = 1, flat:numel() do if flat[i] ~= flat[i] then flat[i] = -math.huge end end
      end
      return out
    end
    return {sim = sim, features = rows, E = E, fitted = m}
  elseif m.similarity then
    -- NaN: the pair is not comparable (e.g. raw weights of two architectures); it ranks last
    local function scored(f)
      return function(x, y)
        local out = f(m, B.gather(S, x), (B.gather(S, y)))
        local flat = out:reshape(-1)
        for i = 1, flat:numel() do if flat[i] ~= flat[i] then flat[i] = -math.huge end end
        return out
      end
    end
    -- rank: the scores a method ranks a gallery by, where they are not its similarities (the hybrid's)
    return {sim = scored(m.similarity), rank = m.rank and scored(m.rank), fitted = m}
  end
  error(("benchmark: method %s has neither embed nor similarity"):format(tostring(m.name)), 0)
end

-- A view whose sim compares with only k models per task of the gallery
-- (-inf elsewhere), for pairwise-only methods.
function B.subsampled(S, v, k)
  return {sim = function(x, y)
    local sub = B.per_task(S, y, k)
    local keep = {}
    for _, id in ipairs(sub) do keep[id] = true end
    local full = v.sim(x, sub)
    local out = core.full(#x, #y, -math.huge)
    local col = 0
    for j, id in ipairs(y) do
      if keep[id] then col = col + 1; for i = 1, #x do out:set(i, j, full:get(i, col)) end end
    end
    return out
  end}
end

-- A method fitted on ids (split: its name, for the method), or the method
-- itself when it has no fit.
function B.fitted(S, method, ids, seed, split)
  if not method.fit then return method end
  local models, y = {}, {}
  for k, id in ipairs(ids) do
    local i = S.byid[id]
    models[k], y[k] = (S.labelled or S.models)[i], S.meta[i].task
  end
  return method:fit(models, y, {seed = seed, split = split, ids = ids, tasks = S.splits.tasks,
                                transfer = S.transfer})
end

return B
