--- lualps.similarity.sim: the similarity object (lps.similarity.train,
-- wrap, load): a trained network with its classes, embedding models and
-- sets, comparing them, finding nearest models, choosing models to
-- fine-tune (select, with a transferability prior), saving itself.
local core = require "lualps.core"
local util = require "lualps.util"
local eval = require "lualps.eval"
local modelset = require "lualps.modelset"
local models = require "lualps.similarity.models"
local hybrid = require "lualps.similarity.hybrid"
local prior = require "lualps.similarity.prior"

local M = {}

local Sim = {}
Sim.__index = Sim
M.Sim = Sim

-- The weights of model x (models.weights), or an error that names
-- operation `what` (and `which`, e.g. "argument 2", when given) rather than
-- the layer below, raised at `level` (default 3: the caller's caller).
local function weights_of(x, what, which, level)
  local ok, w = pcall(models.weights, x)
  if not ok then
    error(("%s: %s%s"):format(what, which and (which .. ": ") or "",
      (tostring(w):gsub("^[^\n]-%.lua:%d+: ", ""):gsub("^similarity: ", ""))), level or 3)
  end
  return w
end

-- The embedding (1-D, unit norm) of model x, errors as weights_of's (level
-- counted from weights_of, which runs one call deeper).
local function embed_of(self, x, what, which, level)
  local e = self.net:embed({weights_of(x, what, which, level)})
  return e:reshape(e:size(2))
end

-- Open a set given by path; returns it and whether we opened it. Anything
-- else than a set or a path is an error naming operation `what` (default
-- "similarity"), raised at `level` (default 2: the caller's caller).
function M.as_set(ms, what, level)
  if type(ms) == "string" then return modelset.open(ms), true end
  if not models.is_set(ms) then
    error(("%s: expected a model set (lps.modelset.open) or its path, got %s"):format(what or "similarity",
      type(ms) == "table" and "a table that is not one" or type(ms)), (level or 2) + 1)
  end
  return ms, false
end

-- A similarity object of fields (net, classes, label[, report, n_train,
-- hybrid (a state for lualps.similarity.hybrid: the score is then the
-- hybrid's, not the cosine), prior (a transferability prior,
-- lualps.similarity.prior)]). Its field progress (nil: a bar on stderr when
-- it is a terminal; false: none; a table: util.progress options) shows a
-- first nearest or select on a set of 64 models or more reading the set.
function M.new(fields)
  fields.cache = setmetatable({}, {__mode = "k"})
  if fields.hybrid then fields.hy = hybrid.new(fields.net, fields.hybrid) end
  return setmetatable(fields, Sim)
end

function Sim:__tostring()
  local h = self.hybrid
  return ("lualps.similarity (%s; trained on %s models of %d %ss%s%s)"):format(tostring(self.net):match("%((.*)%)") or "",
    tostring(self.n_train or "?"), #self.classes, self.label, h and ("; hybrid with template matching%s%s, w %.2f, gate %s")
      :format((h.probe or 0) > 0 and (" and probe matching (%.2f%s%s)"):format(h.probe, h.probe_directed and ", directed" or "",
        h.probe_gate and ", gated" or "") or "",
        ((h.probe_bn or 0) > 0 or (h.probe_bn_both or 0) > 0) and (", batch norm read by probe (%.2f; %.2f both)%s")
          :format(h.probe_bn or 0, h.probe_bn_both or h.probe_bn or 0, h.bn_residual and "" or " without the learned term")
          or "", h.w,
        h.gate == false and "off" or ("%.3f..%.3f"):format(h.lo, h.hi)) or "",
    self.prior and ("; transferability prior from %s models"):format(tostring(self.prior.n or "?")) or "")
end

--- Embedding (1-D, unit norm) of one model.
function Sim:embed(model)
  local e = embed_of(self, model, "embed", nil, 4) -- not a tail call: the error level counts this frame
  return e
end

--- Embeddings (N x e) of every model of a set (a set or a path), streamed
-- from the store in batches: memory holds one batch of models, not the set.
-- opts: batch (64), progress (a util.progress option table, or false).
function Sim:embed_set(ms, opts)
  local o = util.options(opts, {batch = 64, progress = false}, "embed_set")
  if math.type(o.batch) ~= "integer" or o.batch < 1 then
    error(("embed_set: batch must be a positive integer, got %s"):format(tostring(o.batch)), 2)
  end
  local set, own = M.as_set(ms, "embed_set", 2)
  local n, batch = #set, o.batch
  local out = core.zeros(n, self.net.opts.embed)
  local prog = o.progress and util.progress(n, o.progress)
  for s = 1, n, batch do
    local chunk = {}
    for i = s, math.min(n, s + batch - 1) do chunk[#chunk + 1] = models.record(set, i) end
    local ok, e = pcall(self.net.embed, self.net, chunk, batch)
    if not ok then -- name the record the network refuses (e.g. NaN weights), not only its tensor
      for j, m in ipairs(chunk) do
        local okj, err = pcall(self.net.embed, self.net, {m}, 1)
        if not okj then
          local i = s + j - 1
          local msg = ("embed_set: record %d (id %s): %s"):format(i, tostring(set:meta(i).id),
            (tostring(err):gsub("^[^\n]-%.lua:%d+: ", "")))
          if own then set:close() end
          error(msg, 2)
        end
      end
      error(e, 0)
    end
    out:rows(s, s + #chunk - 1):copy(e)
    if prog then prog:update(s + #chunk - 1) end
  end
  if prog then prog:finish() end
  if own then set:close() end
  return out
end

--- Similarity of two models: the cosine of their embeddings (unit norm),
-- or for a hybrid model (lualps.similarity.hybrid) the hybrid score.
function Sim:similarity(a, b)
  if self.hy then
    return self.hy:similarity({weights_of(a, "similarity", "argument 1")}, {weights_of(b, "similarity", "argument 2")}):get(1, 1)
  end
  local ea = embed_of(self, a, "similarity", "argument 1", 4)
  local eb = embed_of(self, b, "similarity", "argument 2", 4)
  return (ea * eb):sum()
end

--- The similarities a model offers beside the cosine of its embeddings,
-- each {name, similarity = function(models) -> n x n} over a list of models
-- (weight lists): a hybrid model's score as "lps_hybrid"; none otherwise.
-- scripts/heldout_zoos.lua reports a row for each.
function Sim:similarities()
  if not self.hy then return {} end
  return {{name = "lps_hybrid", similarity = function(ms) return self.hy:similarity(ms, ms) end}}
end

-- A progress display for a first query's work on a set (total units),
-- or nil: on a terminal (sim.progress nil: stderr's), or as sim.progress's
-- util.progress options (a table; and min, the least work shown, default
-- 64 units); none with false.
local function progress_of(self, total, label, unit)
  local p = self.progress
  if p == false or (p == nil and not core.isatty(2)) then return nil end
  local o = {label = label, unit = unit}
  if type(p) == "table" then for k, v in pairs(p) do if k ~= "min" then o[k] = v end end end
  local least = type(p) == "table" and p.min or 64
  if type(least) ~= "number" then error(("%s: progress.min must be a number, got %s"):format(label:match("^[^:]*"), type(least)), 0) end
  if total < least then return nil end
  return util.progress(total, o)
end

-- Every model of a set (weight lists), read once per open set object: a
-- hybrid compares a query with each of them. what: the caller, for errors
-- and the progress display's label.
local function set_models(self, ms, what)
  models.check_set(ms, what, 3)
  self.set_cache = self.set_cache or setmetatable({}, {__mode = "k"})
  local list = self.set_cache[ms]
  if not list or #list ~= #ms then
    list = {}
    local prog = progress_of(self, #ms, what .. ": reading the set's records (once)", "models")
    for i = 1, #ms do
      list[i] = models.record(ms, i)
      if prog then prog:update(i) end
    end
    if prog then prog:finish() end
    self.set_cache[ms] = list
  end
  return list
end

function Sim:set_models(ms)
  local list = set_models(self, ms, "set_models") -- not a tail call: the error level counts this frame
  return list
end

-- Embeddings of a set, computed once per open set object.
function Sim:set_embeddings(ms)
  models.check_set(ms, "set_embeddings")
  local e = self.cache[ms]
  if not e or e:size(1) ~= #ms then
    e = self:embed_set(ms)
    self.cache[ms] = e
  end
  return e
end

-- The query's record number in set `ms` when it is one (nil otherwise),
-- checked; `what` names the caller in errors.
local function query_index(ms, query, what)
  if type(ms) == "string" then error(what .. ": open the set first (lps.modelset.open)", 3) end
  models.check_set(ms, what, 3) -- at query_index's caller's caller, as its other errors
  if math.type(query) == "float" then
    -- 3.0 is record 3; 2.5 or NaN is no record (nor a model)
    if not math.tointeger(query) then error(("%s: record %s is not an integer"):format(what, tostring(query)), 3) end
    query = math.tointeger(query)
  end
  if math.type(query) ~= "integer" then
    local tq = type(query)
    if tq ~= "table" and tq ~= "userdata" then
      error(("%s: expected a record number or a model, got %s"):format(what, tq), 3)
    end
    return nil
  end
  if query < 1 or query > #ms then error(("%s: record %d out of range 1..%d"):format(what, query, #ms), 3) end
  return query
end

-- A network's embeddings of set `ms` and of `query` (a model, its record
-- number self_index, or an embedding: one finite entry per dimension).
local function query_embedding(self, ms, query, self_index, what)
  local E = self:set_embeddings(ms)
  if self_index then return E, E[self_index]:clone() end
  if core.is_tensor(query) and query:dim() == 1 then
    if query:numel() ~= self.net.opts.embed then
      error(("%s: the query embedding has %d entries, the network's %d"):format(what, query:numel(), self.net.opts.embed), 3)
    end
    if not util.finite(query:sum()) then error(what .. ": the query embedding is not finite", 3) end
    return E, query
  end
  return E, embed_of(self, query, what, nil, 5)
end

-- The query's scores over the set (NaN as -inf) and, with a hybrid, the
-- scores it ranks the set by (Hybrid:rank: z-scored within the set's
-- batch-norm models and within the others, where the set holds both; else
-- nil: the scores' own order).
local function scores_of(self, ms, query, self_index, what)
  local row, rank
  if self.hy then
    if core.is_tensor(query) then error(what .. ": a hybrid model compares models, not embeddings: give a model or a record", 3) end
    local list = set_models(self, ms, what)
    local q = {self_index and list[self_index] or weights_of(query, what, nil, 4)}
    -- a first query's templates and dreams of the whole set: seconds for a large set, done once
    local prog = progress_of(self, self.hy:warm(q, list, nil, true), what .. ": the set's templates and dreams (once)",
      "steps")
    if prog then
      local done = 0
      self.hy:warm(q, list, function() done = done + 1; prog:update(done) end)
      prog:finish()
    end
    local R, S, mixed = self.hy:rank(q, list)
    row = S:reshape(-1):totable()
    rank = mixed and R:reshape(-1):totable() or nil
  else
    local E, q = query_embedding(self, ms, query, self_index, what)
    row = core.matmul(E, q:reshape(q:numel(), 1)):reshape(-1):totable()
  end
  local any = false
  for i = 1, #row do
    if row[i] ~= row[i] then row[i] = -math.huge end
    if rank and rank[i] ~= rank[i] then rank[i] = -math.huge end
    if i ~= self_index and row[i] > -math.huge then any = true end
  end
  -- a query no model compares with (NaN weights, an unreadable model): an error, not a list of -inf
  if not any and #row > (self_index and 1 or 0) then
    error(("%s: the query%s compares with no model of the set (every score is NaN: non-finite weights, or a model "
      .. "this LPS model cannot read)"):format(what, self_index and (" (record %d, id %s)"):format(self_index,
      tostring(ms:meta(self_index).id)) or ""), 3)
  end
  return row, rank
end

-- A result list (entries {index=, score=, meta=[, similarity=, prior=]})
-- that prints as a table, its score column named `label`.
local function listing(out, label)
  -- a value in w columns: NaN (no prior: a model without weight statistics) as "nan", not C's "-nan"
  local function num(x, w) return x ~= x and ("%" .. w .. "s"):format("nan") or ("%" .. w .. ".4f"):format(x) end
  return setmetatable(out, {__tostring = function(list)
    local extras = {} -- the columns beside the score: select's similarity and prior, a mixed set's similarity
    for _, key in ipairs{"similarity", "prior"} do if list[1] and list[1][key] ~= nil then extras[#extras + 1] = key end end
    local head = {}
    for _, key in ipairs(extras) do head[#head + 1] = ("%10s"):format(key) end
    local lines = {("%4s %6s  %-16s %-8s %8s"):format("rank", "#", "id", "task", label)
      .. (#extras > 0 and "  " .. table.concat(head, " ") or "")}
    for r, x in ipairs(list) do
      local cols = {}
      for _, key in ipairs(extras) do cols[#cols + 1] = num(x[key], 10) end
      lines[#lines + 1] = ("%4d %6d  %-16s %-8s %s"):format(r, x.index, tostring(x.meta.id), tostring(x.meta.task),
        num(x.score, 8)) .. (#extras > 0 and "  " .. table.concat(cols, " ") or "")
    end
    return table.concat(lines, "\n")
  end})
end

-- The k best of a list of scores (best first, ties by index), the query's
-- record excluded; each {index=, score=, meta=} plus more(i)'s fields.
local function best(ms, row, k, self_index, label, more)
  local order = {}
  for i = 1, #row do if i ~= self_index then order[#order + 1] = i end end
  table.sort(order, function(x, y) if row[x] ~= row[y] then return row[x] > row[y] end return x < y end)
  local out = {}
  for j = 1, math.min(k, #order) do
    local i = order[j]
    local x = {index = i, score = row[i], meta = ms:meta(i)}
    if more then for key, v in pairs(more(i)) do x[key] = v end end
    out[j] = x
  end
  return listing(out, label)
end

local function check_k(k, what)
  k = k or 5
  local ki = type(k) == "number" and math.tointeger(k) -- 2.0 is 2, as a record number is; "2" is no k
  if not ki or ki < 1 then error(("%s: k must be a positive integer, got %s"):format(what, tostring(k)), 3) end
  return ki
end

--- The k models of set `ms` most similar to `query`: a model, a record
-- number of ms (itself excluded), or an embedding. Returns a list of
-- {index=, score=, meta=} best first. The set's embeddings are computed on
-- the first query and cached for later ones. A hybrid over a set of
-- batch-norm models and others ranks by score = its similarity z-scored
-- within each kind (hybrid.group_z: it reads the two kinds' pairs on two
-- scales) and gives the similarity beside it (similarity=).
function Sim:nearest(ms, query, k)
  k = check_k(k, "nearest")
  local self_index = query_index(ms, query, "nearest")
  if self.hy then
    local row, rank = scores_of(self, ms, query, self_index, "nearest")
    if not rank then return best(ms, row, k, self_index, "score") end
    return best(ms, rank, k, self_index, "score", function(i) return {similarity = row[i]} end)
  end
  -- a network alone: the C top-k of the cosines, not a sort of all of them
  local E, q = query_embedding(self, ms, query, self_index, "nearest")
  if #ms == 0 then return listing({}, "cosine") end -- an empty set: no model is near (as select)
  local idx, scores = eval.topk(E, q, math.min(#ms, k + (self_index and 1 or 0)))
  local out = {}
  for j = 1, #idx do
    local i = math.tointeger(idx[j])
    if i ~= self_index and #out < k then out[#out + 1] = {index = i, score = scores[j], meta = ms:meta(i)} end
  end
  return listing(out, "cosine")
end

--- The transferability prior of a model (a number: its predicted fine-tuned
-- accuracy over the mean of its training zoo's, whatever the target; NaN for
-- a model without weight statistics, e.g. a ResNet), or of every model of a
-- list of models (a Lua list). Raises when the model file has no prior.
function Sim:transferability(m)
  if not self.prior then
    error("transferability: this model has no transferability prior (trained without a fine-tuning matrix, or saved before priors were)", 2)
  end
  local function weights(x, i) return weights_of(x, "transferability", i and ("model %d"):format(i), 4) end
  if type(m) == "table" and getmetatable(m) == nil and next(m) == nil then return {} end -- no models
  if type(m) == "table" and getmetatable(m) == nil and m[1] ~= nil and not core.is_tensor(m[1]) then
    local list = {}
    for i, x in ipairs(m) do list[i] = weights(x, i) end
    return prior.predict(self.prior, list)
  end
  return prior.predict(self.prior, {weights(m)})[1]
end

--- The k models of set `ms` to fine-tune for the task of `query` (a model
-- trained on the new task's few images, or a record number of ms, itself
-- excluded): ranked by z(similarity) + z(transferability prior) over the
-- set (lualps.similarity.prior.combine), the model selection of the README;
-- a hybrid's similarities z-scored within each kind first, as nearest ranks.
-- Returns {index=, score=, similarity=, prior=, meta=} best first. Needs a
-- model with a prior (sim:transferability).
function Sim:select(ms, query, k)
  if not self.prior then
    error("select: this model has no transferability prior (trained without a fine-tuning matrix, or saved before priors were); nearest ranks by similarity alone", 2)
  end
  k = check_k(k, "select")
  local self_index = query_index(ms, query, "select")
  local sim_row, rank = scores_of(self, ms, query, self_index, "select")
  local row = rank or sim_row -- a mixed set's similarities on one scale per kind (nearest's)
  self.prior_cache = self.prior_cache or setmetatable({}, {__mode = "k"})
  local c = self.prior_cache[ms] -- a set's priors, while the set and this prior are the same
  if not c or c.prior ~= self.prior or #c.values ~= #ms then
    c = {prior = self.prior, values = prior.predict(self.prior, self:set_models(ms))}
    self.prior_cache[ms] = c
  end
  local pr = c.values
  local sc, ps, at = {}, {}, {}
  for i = 1, #row do
    if i ~= self_index then sc[#sc + 1], ps[#sc + 1], at[#sc + 1] = row[i], pr[i], i end
  end
  local z, combined = prior.combine(sc, ps), {}
  for i = 1, #row do combined[i] = -math.huge end
  for j, i in ipairs(at) do combined[i] = z[j] end
  return best(ms, combined, k, self_index, "score", function(i) return {similarity = sim_row[i], prior = pr[i]} end)
end

-- The `kind` of a saved similarity's record.
M.FORMAT = "lualps.similarity"
local FORMAT = M.FORMAT

--- Save to a small file (a one-record model set: checksummed like any set).
-- A hybrid saves its prototypes and (w, lo, hi) as float32 tensors
-- (hybrid.prototypes, hybrid.params), a prior its ridge (prior.*): a loaded
-- copy scores the same bits.
function Sim:save(path, opts)
  local named = self.net:named_parameters()
  local o = util.options(opts, {overwrite = true}, "save")
  local h, hmeta = self.hybrid, nil
  if h then
    named["hybrid.prototypes"], named["hybrid.params"] = h.mu, core.tensor({h.w, h.lo, h.hi})
    hmeta = {gate = h.gate ~= false, tm_pool = h.tm_pool, tm_templates = h.tm_templates or "network", probe = h.probe or 0,
             probe_directed = h.probe_directed == true, probe_gate = h.probe_gate == true, probe_bn = h.probe_bn or 0,
             probe_bn_both = h.probe_bn_both or h.probe_bn or 0, bn_residual = h.bn_residual == true, dreams = h.dreams}
  end
  local pmeta = self.prior and prior.to_saved(self.prior, named)
  local out = modelset.create(path, {overwrite = o.overwrite})
  local ok, err = pcall(function()
    out:append_tensors(named, {kind = FORMAT, version = 1, spec = self.net:spec(),
      classes = self.classes, label = self.label, n_train = self.n_train, hybrid = hmeta, prior = pmeta})
  end)
  out:close()
  if not ok then error(err, 2) end
end

return M
