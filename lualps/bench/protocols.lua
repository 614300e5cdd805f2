--- lualps.bench.protocols: the evaluation protocols of lps.benchmark,
-- each a small function from the context of one fit seed to metrics, run
-- in a fixed order by lps.benchmark.evaluate; and the metric functions they
-- use (lps.benchmark.classification, retrieval, clustering, ...).
local core = require "lualps.core"
local eval = require "lualps.eval"
local set = require "lualps.bench.set"
local selection = require "lualps.bench.selection"
local relation_prior = require "lualps.bench.relation_prior"

local B = {}

--- Top-1 task accuracy of the held-out models by their nearest training model.
function B.classification(S, method, train_ids, test_ids)
  local sim = method.sim(test_ids, train_ids)
  return (eval.classify(sim, set.labels(S, train_ids), set.labels(S, test_ids), {rule = "knn", k = 1}))
end

--- CMC rank-1/5/10 and mAP of queries against the gallery (unseen tasks).
function B.retrieval(S, method, query_ids, gallery_ids)
  local sim = method.sim(query_ids, gallery_ids)
  local r = eval.retrieval(sim, set.labels(S, query_ids), set.labels(S, gallery_ids))
  return {rank1 = r.rank1, rank5 = r.rank5, rank10 = r.rank10, map = r.map}
end

--- NMI and AMI of k-means (k = number of tasks) against the task labels.
-- Methods with features cluster their L2-normalized rows; the others the
-- classical MDS coordinates (16-D) of their similarity matrix.
function B.clustering(S, method, ids, seed)
  local y = set.labels(S, ids)
  local k, seen = 0, {}
  for _, t in ipairs(y) do if not seen[t] then seen[t] = true; k = k + 1 end end
  local X
  local F = method.features and method.features(ids)
  local total = F and F:sum()
  if F and total == total then -- features of every model (no NaN row)
    X = F
    local norms = (X * X):sum(2):sqrt()
    for i = 1, X:size(1) do X[i]:div_(math.max(norms[i], 1e-12)) end
  else
    -- pairs a method cannot compare (-inf) count as its least similar
    local sim = method.sim(ids, ids)
    local flat, lo = sim:reshape(-1), math.huge
    for i = 1, flat:numel() do if flat[i] > -math.huge then lo = math.min(lo, flat[i]) end end
    if lo == math.huge then lo = 0 end
    for i = 1, flat:numel() do if flat[i] == -math.huge then flat[i] = lo end end
    X = eval.mds(sim, math.min(16, #ids - 1))
  end
  local assign = eval.kmeans(X, k, {generator = core.generator(seed or 1), restarts = 10})
  local pred = {}
  for i = 1, #ids do pred[i] = math.tointeger(assign[i]) or assign[i] end
  return eval.nmi(y, pred), eval.ami(y, pred)
end

--- Mean similarity of two tasks' models (ids), the task x task matrix.
function B.task_similarity(S, method, ids, ntasks)
  local sim = method.sim(ids, ids)
  local y = set.labels(S, ids)
  local sum, cnt = {}, {}
  for s = 1, ntasks do sum[s], cnt[s] = {}, {} for t = 1, ntasks do sum[s][t], cnt[s][t] = 0, 0 end end
  for i = 1, #ids do
    for j = 1, #ids do
      local v = sim:get(i, j)
      if i ~= j and v > -math.huge and v == v then -- pairs a method cannot compare do not count
        local s, t = y[i], y[j]
        sum[s][t] = sum[s][t] + v
        cnt[s][t] = cnt[s][t] + 1
      end
    end
  end
  for s = 1, ntasks do for t = 1, ntasks do sum[s][t] = cnt[s][t] > 0 and sum[s][t] / cnt[s][t] or 0 / 0 end end
  return sum
end

-- Kendall tau-b (or Spearman rho with rho = true) of a against b over the
-- pairs where a is finite; NaN with fewer than 3 such pairs.
local function corr(a, b, rho)
  local x, y = {}, {}
  for i = 1, #a do if a[i] == a[i] and math.abs(a[i]) < math.huge then x[#x + 1], y[#y + 1] = a[i], b[i] end end
  if #x < 3 then return 0 / 0 end
  return rho and eval.spearman(x, y) or eval.kendall_tau(x, y)
end

--- Kendall tau-b and Spearman rho between the task similarity matrix and
-- the ground truth over unordered task pairs: class overlap, and the
-- transfer gain symmetrized as (gain[s][t] + gain[t][s]) / 2.
function B.task_relations(tsim, transfer)
  local a, overlap, gain = {}, {}, {}
  local n = #tsim
  for s = 1, n do
    for t = s + 1, n do
      a[#a + 1] = (tsim[s][t] + tsim[t][s]) / 2
      overlap[#overlap + 1] = transfer.overlap[s][t]
      gain[#gain + 1] = (transfer.gain[s][t] + transfer.gain[t][s]) / 2
    end
  end
  return {tau_overlap = corr(a, overlap), rho_overlap = corr(a, overlap, true),
          tau_transfer = corr(a, gain), rho_transfer = corr(a, gain, true)}
end

-- Retrieval of queries in a gallery with labels from a metadata field.
local function retrieval_by(S, v, query, gallery, label)
  local function labs(ids)
    local out, codes = {}, S.codes or {}
    S.codes = codes
    for k, id in ipairs(ids) do
      local x = label(S.meta[S.byid[id]])
      codes[x] = codes[x] or (function() local n = 0 for _ in pairs(codes) do n = n + 1 end return n + 1 end)()
      out[k] = codes[x]
    end
    return out
  end
  return eval.retrieval(v.sim(query, gallery), labs(query), labs(gallery))
end

local nuisance_label = {
  optimizer = function(m) return "opt:" .. tostring(m.optimizer) end,
  family = function(m) return "fam:" .. tostring(m.family) end,
  width = function(m) return "w:" .. tostring(m.widths and m.widths[1] or m.architecture) end,
}

--- Kendall tau between the test accuracy of the held-out models of (a) and
-- its prediction from their embeddings by ridge regression (lambda 1e-3 *
-- trace / e) fitted on the training models of (a): what the embedding
-- knows of a model's quality (Unterthiner et al. 2020). Solved in the
-- smaller of the feature space and the sample space (the same solution).
function B.accuracy_prediction(S, v, train, test)
  if not v.features then return nil end
  local function ys(ids) local y = {} for k, id in ipairs(ids) do y[k] = S.meta[S.byid[id]].test_accuracy end return y end
  local X, Xt, y = v.features(train), v.features(test), ys(train)
  local s = X:sum() + Xt:sum()
  if s ~= s then return nil end
  local pred = eval.ridge_predict(X, y, Xt, 1e-3)
  return eval.kendall_tau(pred, ys(test))
end


--- Task relations over the unseen tasks of (b) only: the mean similarity
-- of two tasks' models against the transfer gain (symmetrized; Kendall tau
-- and Spearman rho over unordered pairs), per target (each unseen target
-- ranks the other unseen sources by similarity against gain[s][t]: the mean
-- Kendall tau), against shared classes and against domain match; and
-- tau_transfer_coherence, the similarity with each task's coherence
-- (relation_prior.coherence_scores) against the gain.
function B.unseen_relations(S, v, ids)
  local tsim = B.task_similarity(S, v, ids, #S.splits.tasks)
  local tasks, gain = S.splits.retrieval.unseen_tasks, S.transfer.gain
  local a, g, ov, dm = {}, {}, {}, {}
  local info = S.splits.tasks
  local function shared(s, t)
    local n = 0
    for _, x in ipairs(info[s].classes) do for _, y in ipairs(info[t].classes) do if x == y then n = n + 1 end end end
    return n
  end
  for i, s in ipairs(tasks) do
    for j = i + 1, #tasks do
      local t = tasks[j]
      a[#a + 1] = (tsim[s][t] + tsim[t][s]) / 2
      g[#g + 1] = (gain[s][t] + gain[t][s]) / 2
      ov[#ov + 1] = shared(s, t)
      dm[#dm + 1] = info[s].domain == info[t].domain and 1 or 0
    end
  end
  local per, n = 0, 0
  for _, t in ipairs(tasks) do
    local x, y = {}, {}
    -- the target is the query (the row), as in model selection: the same
    -- for a symmetric score, the query's direction for a directed one
    for _, s in ipairs(tasks) do if s ~= t then x[#x + 1], y[#y + 1] = tsim[t][s], gain[s][t] end end
    local tau = corr(x, y)
    if tau == tau then per, n = per + tau, n + 1 end
  end
  local r = {tau_transfer = corr(a, g), rho_transfer = corr(a, g, true),
             tau_transfer_per_target = n > 0 and per / n or 0 / 0, tau_overlap = corr(a, ov),
             tau_domain = corr(a, dm)}
  -- with each task's coherence (its models' mean similarity among
  -- themselves): pairs of hard tasks first (lualps.bench.relation_prior)
  r.tau_transfer_coherence = corr(relation_prior.coherence_scores(tsim, tasks), g)
  return r, tsim
end

------------------------------------------------------------------ the protocols

-- Each protocol maps the context c of one seed to its metrics (nil: the set
-- does not define it). c: S (the loaded set), sp (its splits), opts
-- (evaluate's), k (the method's pairwise_per_task or nil), vc (the view of
-- the method fitted on (a)'s training models), vr (fitted on (b)'s),
-- fit_view(train_ids, split) (a view fitted on other models), unseen (the
-- unseen tasks' models), cross_train and cross_test (the cross-setting
-- halves); a protocol may leave details in c (c.task_similarity).

-- k models per task of ids for a pairwise-only method, or all of them.
local function per_task(c, ids, k) return c.k and set.per_task(c.S, ids, k) or ids end
local function gallery(c, v) return c.k and set.subsampled(c.S, v, c.k) or v end

--- The protocols lps.benchmark.evaluate runs, in this order: {name =, run =
-- function(context) -> metrics or nil}.
B.protocols = {
  {name = "classification", run = function(c) -- (a) held-out models of training tasks
    local cls = c.sp.classification
    return {top1 = B.classification(c.S, gallery(c, c.vc), cls.train, cls.test)}
  end},
  {name = "retrieval", run = function(c) -- (b) unseen tasks
    return B.retrieval(c.S, c.vr, c.sp.retrieval.query, c.sp.retrieval.gallery)
  end},
  {name = "clustering", run = function(c)
    local nmi, ami = B.clustering(c.S, c.vr, per_task(c, c.unseen, c.k and c.k + 1), 1)
    return {nmi = nmi, ami = ami}
  end},
  {name = "relations", run = function(c) -- against the transfer ground truth
    if c.sp.relations == "unseen" then
      if not c.S.transfer then return nil end
      local rel
      rel, c.task_similarity = B.unseen_relations(c.S, c.vr, per_task(c, c.unseen, c.k))
      return rel
    end
    local test = c.sp.classification.test
    c.task_similarity = B.task_similarity(c.S, c.vc, per_task(c, test, c.k), #c.sp.tasks)
    return c.S.transfer and B.task_relations(c.task_similarity, c.S.transfer)
  end},
  {name = "cross_setting", run = function(c)
    if #c.cross_train == 0 or #c.cross_test == 0 then return nil end
    local vx = c.fit_view(c.cross_train, "cross")
    return {cross_top1 = B.classification(c.S, gallery(c, vx), c.cross_train, c.cross_test)}
  end},
  {name = "novel", run = function(c) -- (c) tasks of classes never seen in training
    local s = c.sp.novel
    if not s then return nil end
    local m = B.retrieval(c.S, c.fit_view(s.train, "novel"), s.query, s.gallery)
    return {novel_rank1 = m.rank1, novel_map = m.map}
  end},
  {name = "heldout_arch", run = function(c) -- (d) architectures no training model has
    local s = c.sp.heldout_arch
    if not s or #s.query == 0 then return nil end
    local m = B.retrieval(c.S, c.fit_view(s.train, "heldout_arch"), s.query, s.gallery)
    return {heldout_arch_rank1 = m.rank1, heldout_arch_map = m.map}
  end},
  {name = "cross_family", run = function(c) -- (e) CNN queries, MLP gallery; trained as (b)
    local s = c.sp.cross_family
    if not s then return nil end
    local m = B.retrieval(c.S, c.vr, s.query, s.gallery)
    if not (c.vr.sim(s.query, s.gallery):max() > -math.huge) then return nil end -- nothing comparable
    return {cross_family_rank1 = m.rank1, cross_family_map = m.map}
  end},
  {name = "cross_source", run = function(c) -- (f) trained on one source's tasks, tested on the other's
    local list = c.sp.cross_source
    if not list or #list == 0 then return nil end
    local r, map, rank1 = {}, 0, 0
    for _, s in ipairs(list) do
      local m = B.retrieval(c.S, c.fit_view(s.train, "cross_source"), s.query, s.gallery)
      r["cross_source_map_from_" .. s.train_source], r["cross_source_rank1_from_" .. s.train_source] = m.map, m.rank1
      map, rank1 = map + m.map / #list, rank1 + m.rank1 / #list
    end
    r.cross_source_map, r.cross_source_rank1 = map, rank1
    return r
  end},
  {name = "heldout_family", run = function(c) -- (g) ResNet queries, MLP+CNN gallery; trained as (b)
    local s = c.sp.heldout_family
    if not s or #s.query == 0 then return nil end
    if not (c.vr.sim(s.query, s.gallery):max() > -math.huge) then return nil end -- the method reads no ResNet
    local m = B.retrieval(c.S, c.vr, s.query, s.gallery)
    return {heldout_family_rank1 = m.rank1, heldout_family_map = m.map}
  end},
  {name = "mixed_zoo", run = function(c) -- (h) (g)'s tasks as one zoo of every family, each model a query
    local s = c.sp.heldout_family
    if not s or #s.query == 0 or c.k then return nil end
    local ids = {table.unpack(s.query)} -- the ResNets first
    for _, id in ipairs(s.gallery) do ids[#ids + 1] = id end
    local y = set.labels(c.S, ids)
    local function metrics(sim, prefix, r)
      local all = eval.retrieval(sim, y, y, {exclude_self = true, ks = {1}})
      r[prefix .. "rank1"], r[prefix .. "map"] = all.rank1, all.map
      -- the ResNet queries alone (each has its task's other models); none for a method that reads no ResNet
      if not (sim:rows(1, #s.query):max() > -math.huge) then return r end
      local hits, ap, n = 0, 0, 0
      for i = 1, #s.query do
        local row, top = sim[i]:totable(), nil
        for j = 1, #row do if j ~= i and (not top or row[j] > row[top]) then top = j end end
        if all.ap[i] == all.ap[i] then
          n, ap = n + 1, ap + all.ap[i]
          if y[top] == y[i] then hits = hits + 1 end
        end
      end
      r[prefix .. "resnet_rank1"], r[prefix .. "resnet_map"] = hits / n, ap / n
      return r
    end
    local sim = c.vr.sim(ids, ids)
    if not (sim:max() > -math.huge) then return nil end
    local r = {}
    if c.vr.rank then metrics(sim, "mixed_raw_", r); sim = c.vr.rank(ids, ids) end
    return metrics(sim, "mixed_", r)
  end},
  {name = "nuisance", run = function(c) -- unseen-task retrieval by labels other than the task
    if not c.sp.cross_family or c.opts.nuisance == false then return nil end
    local r, ret = {}, c.sp.retrieval
    for _, name in ipairs(c.opts.nuisance) do
      r["nuisance_map_" .. name] = retrieval_by(c.S, c.vr, ret.query, ret.gallery, nuisance_label[name]).map
    end
    return r
  end},
  {name = "accuracy_prediction", run = function(c)
    if not c.sp.cross_family or c.opts.nuisance == false then return nil end
    local cls = c.sp.classification
    return {accuracy_tau = B.accuracy_prediction(c.S, c.vc, cls.train, cls.test)}
  end},
  {name = "selection", run = function(c) -- sets with a pool transfer matrix
    local tr = c.S.transfer
    if not (tr and tr.protocol and tr.protocol.kind == "pool") or c.k then return nil end
    return selection.evaluate(c.S, c.vr, c.opts)
  end},
}

return B
