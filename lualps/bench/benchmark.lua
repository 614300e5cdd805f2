--- lualps.bench.benchmark (lps.benchmark): the evaluation protocols of a model set, run for any
-- method of comparing models. `lps.benchmark.evaluate(set, method)` runs
-- every protocol the set defines and returns a table of metrics.
--
-- A method is a table with a `name` and either
--   embed(self, models) -> n x e tensor of embeddings (compared by cosine, or
--     by dot product when `metric = "dot"`), or
--   similarity(self, a, b) -> |a| x |b| tensor (larger = more similar);
-- and optionally
--   fit(self, models, labels, ctx) -> a fitted method (a table with embed or
--     similarity): trained on a split's models and their task labels; ctx =
--     {seed =, split = "classification" | "retrieval" | "cross", ids =};
--   pairwise_per_task = k: comparing a pair is costly, so galleries, task
--     relations and clustering use only k (k + 1 for clustering) models per task.
-- A model is a list of tensors {W1, b1, W2, b2, ...} (PyTorch layout), with
-- `family` and `spec` where the set has them; the models fit trains on also
-- carry their task's `classes` and `domain`.
--
--   local m = {name = "mean |W1|", embed = function(_, models)
--     local E = core.zeros(#models, 784)
--     for i, w in ipairs(models) do E[i]:copy(w[1]:abs():mean(1)) end
--     return E
--   end}
--   local r = lps.benchmark.evaluate("build/modelset500.lpsm", m)
--   print(r.top1, r.map, r.tau_transfer)
local core = require "lualps.core"
local cjson = require "cjson"
local util = require "lualps.util"
local eval = require "lualps.eval"
local modelset = require "lualps.modelset"
local similarity = require "lualps.similarity"
local selection = require "lualps.bench.selection"
local plot = require "lualps.bench.plot"

local B = {}

--- The methods of the evaluation tables (lualps/benchmark_methods.lua):
-- lps, features, feature_head, cka, matching, template_matching.
B.methods = require "lualps.bench.methods"

--- Load every model of a set (weights as lists, metadata), its splits
-- (path .. ".splits.json") and, when present, its transfer matrix
-- (path .. ".transfer.json"). Returns S = {path, n, models, labelled, meta,
-- byid, splits, transfer}: models[i] its tensors (with family and spec),
-- labelled[i] the same with its task's classes and domain (what fit sees).
function B.load(path)
  local ms <close> = modelset.open(path)
  local S = {path = path, n = #ms, models = {}, labelled = {}, meta = {}, byid = {}}
  for i = 1, #ms do
    local meta = ms:meta(i)
    S.meta[i], S.byid[meta.id] = meta, i
    local w = similarity.weights(ms:tensors(i))
    w.family, w.spec = meta.family, meta.spec -- what a method may need to read a CNN
    S.models[i] = w
    -- the same model with what its task is (classes, domain): given to fit only
    local lw = {family = w.family, spec = w.spec, classes = meta.classes, domain = meta.domain}
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

local function labels_of(S, ids)
  local _, y = B.gather(S, ids)
  return y
end

------------------------------------------------------------------ methods as seen by the protocols

-- A fitted method as the protocols use it: sim(ids_a, ids_b) and, for
-- embedding methods, features(ids). Embeddings of every model of the set
-- are computed once, in the set's order.
local function view(S, m)
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
    local function sim(x, y)
      local out = m:similarity(B.gather(S, x), (B.gather(S, y)))
      local flat = out:reshape(-1)
      for i = 1, flat:numel() do if flat[i] ~= flat[i] then flat[i] = -math.huge end end
      return out
    end
    return {sim = sim, fitted = m}
  end
  error(("benchmark: method %s has neither embed nor similarity"):format(tostring(m.name)), 0)
end

-- A view whose sim compares with only k models per task of the gallery
-- (-inf elsewhere), for pairwise-only methods.
local function subsampled(S, v, k)
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

------------------------------------------------------------------ protocols

--- Top-1 task accuracy of the held-out models by their nearest training model.
function B.classification(S, method, train_ids, test_ids)
  local sim = method.sim(test_ids, train_ids)
  return (eval.classify(sim, labels_of(S, train_ids), labels_of(S, test_ids), {rule = "knn", k = 1}))
end

--- CMC rank-1/5/10 and mAP of queries against the gallery (unseen tasks).
function B.retrieval(S, method, query_ids, gallery_ids)
  local sim = method.sim(query_ids, gallery_ids)
  local r = eval.retrieval(sim, labels_of(S, query_ids), labels_of(S, gallery_ids))
  return {rank1 = r.rank1, rank5 = r.rank5, rank10 = r.rank10, map = r.map}
end

--- NMI and AMI of k-means (k = number of tasks) against the task labels.
-- Methods with features cluster their L2-normalized rows; the others the
-- classical MDS coordinates (16-D) of their similarity matrix.
function B.clustering(S, method, ids, seed)
  local y = labels_of(S, ids)
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
  local y = labels_of(S, ids)
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

--- Mean and (sample) standard deviation of the values of each key over a
-- list of result tables: {k = mean, k_std = sd}; runs without a key, or
-- with NaN there, do not count for it.
function B.mean_std(runs)
  local out, keys = {}, {}
  for _, r in ipairs(runs) do
    for k, v in pairs(r) do if type(v) == "number" then keys[k] = true end end
  end
  for k in pairs(keys) do
    local s, n = 0, 0
    for _, r in ipairs(runs) do if r[k] and r[k] == r[k] then s, n = s + r[k], n + 1 end end
    local m = n > 0 and s / n or 0 / 0
    local ss = 0
    for _, r in ipairs(runs) do if r[k] and r[k] == r[k] then ss = ss + (r[k] - m) ^ 2 end end
    out[k], out[k .. "_std"] = m, n > 1 and math.sqrt(ss / (n - 1)) or 0
  end
  return out
end

------------------------------------------------------------------ evaluate

--- Task labels 1..C of a list of raw task labels (tasks in increasing
-- order), the number of tasks and the tasks in that order.
B.class_labels = B.methods.class_labels

--- Options of lps.benchmark.evaluate and their defaults; also data (the
-- Fashion-MNIST directory of the model-selection probes; default
-- lps.data's) and log (a function(fmt, ...) for progress lines; default
-- timestamped lines on stderr).
B.defaults = {
  seeds = 1,          -- fit seeds (methods with fit); metrics are means with *_std over them
  cross = {field = "optimizer", train = "sgd", test = "adam"}, -- cross-setting: fit on one value of a
                      -- metadata field, classify models of another (skipped if the set has none; false: never)
  nuisance = {"optimizer", "family", "width"}, -- sets with families: unseen-task retrieval by these
                      -- labels (false: none, and no accuracy prediction)
}

local function stderr_log(fmt, ...)
  io.stderr:write(os.date("%H:%M:%S "), fmt:format(...), "\n")
  io.stderr:flush()
end

-- Fit (or take as is) the method on ids.
local function fitted(S, method, ids, seed, split)
  if not method.fit then return method end
  local models, y = {}, {}
  for k, id in ipairs(ids) do
    local i = S.byid[id]
    models[k], y[k] = (S.labelled or S.models)[i], S.meta[i].task
  end
  return method:fit(models, y, {seed = seed, split = split, ids = ids, tasks = S.splits.tasks,
                                transfer = S.transfer})
end

local function concat(a, b)
  local out = {table.unpack(a)}
  for _, v in ipairs(b) do out[#out + 1] = v end
  return out
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
  local n, e = X:size(1), X:size(2)
  local mean, ymean = X:mean(1), 0
  for _, a in ipairs(y) do ymean = ymean + a / #y end
  X, Xt = X - mean, Xt - mean
  local yc = core.tensor(y):reshape(n, 1) - ymean
  local primal = e <= n
  local G = primal and core.matmul(X, X, true, false) or core.matmul(X, X, false, true)
  local m = G:size(1)
  local tr = 0
  for i = 1, m do tr = tr + G:get(i, i) end
  for i = 1, m do G:set(i, i, G:get(i, i) + 1e-3 * tr / e + 1e-9) end
  local rhs = primal and core.matmul(X, yc, true, false) or yc
  local vals, vecs = eval.symeig(G)
  local c = core.matmul(vecs, rhs, true, false)
  for i = 1, m do c:set(i, 1, c:get(i, 1) / vals[i]) end
  local sol = core.matmul(vecs, c) -- primal: w (e x 1); dual: alpha (n x 1), w = X^T alpha
  local w = primal and sol or core.matmul(X, sol, true, false)
  local pred = core.matmul(Xt, w):reshape(-1):totable()
  return eval.kendall_tau(pred, ys(test))
end


--- Task relations over the unseen tasks of (b) only: the mean similarity
-- of two tasks' models against the transfer gain (symmetrized; Kendall tau
-- and Spearman rho over unordered pairs), per target (each unseen target
-- ranks the other unseen sources by similarity against gain[s][t]: the mean
-- Kendall tau), against shared classes and against domain match.
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
    for _, s in ipairs(tasks) do if s ~= t then x[#x + 1], y[#y + 1] = tsim[s][t], gain[s][t] end end
    local tau = corr(x, y)
    if tau == tau then per, n = per + tau, n + 1 end
  end
  return {tau_transfer = corr(a, g), rho_transfer = corr(a, g, true),
          tau_transfer_per_target = n > 0 and per / n or 0 / 0, tau_overlap = corr(a, ov),
          tau_domain = corr(a, dm)}, tsim
end

--- Run every protocol the set defines for `method` (see the module's
-- header). `set` is a path or what lps.benchmark.load returned; opts as
-- lps.benchmark.defaults. Returns the metrics and the details of the first
-- seed ({task_similarity, fitted (on the classification training models),
-- embeddings (of every model, or nil), runs (per-seed metrics)}).
-- Metrics, as the set allows: top1 (a: held-out models of training tasks);
-- rank1, rank5, rank10, map, nmi, ami (b: unseen tasks); novel_rank1,
-- novel_map (c); heldout_arch_rank1, heldout_arch_map (d);
-- cross_family_rank1, cross_family_map (e); tau_overlap, rho_overlap,
-- tau_transfer, rho_transfer (relations: all tasks, or on sets whose
-- splits say relations = "unseen", unseen tasks only, with
-- tau_transfer_per_target and tau_domain); cross_top1 (cross-setting);
-- nuisance_map_<label>; accuracy_tau; selection_accuracy,
-- selection_regret, random_regret, oracle_accuracy (model selection, sets
-- with a pool transfer matrix); train_seconds. With several seeds, means
-- and *_std.
function B.evaluate(set, method, opts)
  opts = util.options(opts, B.defaults, "benchmark.evaluate", {"data", "log"})
  if type(method) ~= "table" or not (method.embed or method.similarity or method.fit) then
    error("benchmark.evaluate: a method needs embed(self, models) or similarity(self, a, b) (and may have fit)", 2)
  end
  local S = type(set) == "string" and B.load(set) or set
  local log = opts.log or stderr_log
  local seeds = method.fit and opts.seeds or 1
  local cross = opts.cross
  local sp = S.splits
  local cls, ret = sp.classification, sp.retrieval
  local ntasks = #sp.tasks
  local k = method.pairwise_per_task
  local unseen = concat(ret.query, ret.gallery)
  local cross_train = cross and B.filter(S, cls.train, cross.field, cross.train) or {}
  local cross_test = cross and B.filter(S, cls.test, cross.field, cross.test) or {}
  local runs, details = {}, {}
  for seed = 1, seeds do
    local t0 = core.now()
    -- an unfitted method is the same for every split: one view serves all
    local vc = view(S, fitted(S, method, cls.train, seed, "classification"))
    local function fit_view(train, split) return method.fit and view(S, fitted(S, method, train, seed, split)) or vc end
    local vr = fit_view(ret.train, "retrieval")
    local r = {}
    local gallery = k and subsampled(S, vc, k) or vc
    r.top1 = B.classification(S, gallery, cls.train, cls.test)
    for key, v in pairs(B.retrieval(S, vr, ret.query, ret.gallery)) do r[key] = v end
    r.nmi, r.ami = B.clustering(S, vr, k and B.per_task(S, unseen, k + 1) or unseen, 1)
    local tsim
    if sp.relations == "unseen" then
      if S.transfer then
        local rel
        rel, tsim = B.unseen_relations(S, vr, k and B.per_task(S, unseen, k) or unseen)
        for key, v in pairs(rel) do r[key] = v end
      end
    else
      tsim = B.task_similarity(S, vc, k and B.per_task(S, cls.test, k) or cls.test, ntasks)
      if S.transfer then
        for key, v in pairs(B.task_relations(tsim, S.transfer)) do r[key] = v end
      end
    end
    if #cross_train > 0 and #cross_test > 0 then
      local vx = fit_view(cross_train, "cross")
      r.cross_top1 = B.classification(S, k and subsampled(S, vx, k) or vx, cross_train, cross_test)
    end
    if sp.novel then
      local m = B.retrieval(S, fit_view(sp.novel.train, "novel"), sp.novel.query, sp.novel.gallery)
      r.novel_rank1, r.novel_map = m.rank1, m.map
    end
    if sp.heldout_arch and #sp.heldout_arch.query > 0 then
      local va = fit_view(sp.heldout_arch.train, "heldout_arch")
      local m = B.retrieval(S, va, sp.heldout_arch.query, sp.heldout_arch.gallery)
      r.heldout_arch_rank1, r.heldout_arch_map = m.rank1, m.map
    end
    if sp.cross_family then -- trained as (b)
      local m = B.retrieval(S, vr, sp.cross_family.query, sp.cross_family.gallery)
      local sim = vr.sim(sp.cross_family.query, sp.cross_family.gallery)
      local comparable = sim:max() > -math.huge
      r.cross_family_rank1 = comparable and m.rank1 or nil
      r.cross_family_map = comparable and m.map or nil
    end
    if sp.cross_family and opts.nuisance ~= false then
      for _, name in ipairs(opts.nuisance) do
        r["nuisance_map_" .. name] = retrieval_by(S, vr, ret.query, ret.gallery, nuisance_label[name]).map
      end
      r.accuracy_tau = B.accuracy_prediction(S, vc, cls.train, cls.test)
    end
    if S.transfer and S.transfer.protocol and S.transfer.protocol.kind == "pool" and not k then
      local sel = selection.evaluate(S, vr, opts)
      for key, v in pairs(sel) do r[key] = v end
    end
    r.train_seconds = vc.fitted.seconds
    runs[seed] = r
    if seed == 1 then details = {task_similarity = tsim, fitted = vc.fitted, embeddings = vc.E, fitted_unseen = vr.fitted} end
    if method.fit then
      log("%s seed %d: top1 %.3f rank1 %.3f mAP %.3f NMI %.3f tau(transfer) %.3f  (%.1fs)", tostring(method.name),
        seed, r.top1, r.rank1, r.map, r.nmi, r.tau_transfer or 0 / 0, core.now() - t0)
    end
  end
  details.runs = runs
  local out = seeds > 1 and B.mean_std(runs) or runs[1]
  return out, details
end

--- A description of the protocols on S, for the results' "protocol" entry.
function B.describe(S, opts)
  opts = util.options(opts, {pairwise_per_task = 2}, "benchmark.describe")
  local cls, ret = S.splits.classification, S.splits.retrieval
  local k = opts.pairwise_per_task
  return {
    classification = ("top-1 task of each of the %d held-out models by its nearest (1-NN) of the %d training models")
      :format(#cls.test, #cls.train),
    retrieval = ("%d queries against %d gallery models of %d unseen tasks; learned methods trained on the %d models of %d other tasks")
      :format(#ret.query, #ret.gallery, #ret.unseen_tasks, #ret.train, #ret.train_tasks),
    clustering = "k-means (k = unseen tasks, 10 restarts) on the unseen models' embeddings (features L2-normalized; pairwise-only methods: 16-D classical MDS); NMI (arithmetic) and AMI",
    task_relations = ("Kendall tau-b and Spearman rho over the %d unordered task pairs between the mean similarity of the held-out models of two tasks and (a) class overlap, (b) the transfer gain symmetrized")
      :format(#S.splits.tasks * (#S.splits.tasks - 1) // 2),
    cross_setting = "1-NN top-1 of the Adam-trained held-out models against the SGD-trained training models; learned methods trained on the SGD half only",
    pairwise = ("pairwise-only methods (matching): each held-out model compared with %d training models per task; relations over %d held-out models per task; clustering over %d unseen models per task")
      :format(k, k, k + 1),
  }
end

------------------------------------------------------------------ reports

--- Markdown table of methods x metrics ("mean ± sd").
function B.markdown(results, order, metrics)
  local head = {"| method |"}
  local rule = {"|---|"}
  for _, m in ipairs(metrics) do head[#head + 1] = " " .. m .. " |"; rule[#rule + 1] = "---|" end
  local lines = {table.concat(head), table.concat(rule)}
  for _, name in ipairs(order) do
    local r = results[name]
    if r then
      local row = {"| " .. name .. " |"}
      for _, m in ipairs(metrics) do
        local v, sd = r[m], r[m .. "_std"]
        if v == nil or v ~= v then row[#row + 1] = " – |"
        elseif sd and sd > 0 then row[#row + 1] = (" %.3f ± %.3f |"):format(v, sd)
        else row[#row + 1] = (" %.3f |"):format(v) end
      end
      lines[#lines + 1] = table.concat(row)
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

-- A copy of t without NaN numbers (JSON has none).
local function finite(t)
  local o = {}
  for key, v in pairs(t) do if type(v) ~= "number" or v == v then o[key] = v end end
  return o
end

--- Write OUT/NAME.json ({methods, ablations, protocol, plus `extra` keys})
-- and OUT/NAME.md (a title line, `intro`, the methods table and, if any,
-- the ablations table led by `lead`). Returns the markdown text.
-- r = {methods =, ablations =, protocol =, order =, ablation_order =,
-- metrics =, title =, intro =, lead =, extra =, required = keys written as
-- null where a method has no value, sections = more markdown after the tables}
function B.write_report(out, name, r)
  local json = {methods = {}, ablations = {}, protocol = r.protocol}
  for key, v in pairs(r.methods) do
    json.methods[key] = finite(v)
    -- keys every method has, null where it cannot measure them
    for _, req in ipairs(r.required or {}) do
      if json.methods[key][req] == nil then json.methods[key][req] = cjson.null end
    end
  end
  for key, v in pairs(r.ablations or {}) do json.ablations[key] = finite(v) end
  for key, v in pairs(r.extra or {}) do json[key] = v end
  util.write_file(out .. "/" .. name .. ".json", cjson.encode(json))
  local md = {"# " .. r.title, "", r.intro, "", B.markdown(r.methods, r.order, r.metrics)}
  if r.ablations and next(r.ablations) then
    md[#md + 1] = "\n## Ablations of " .. (r.lead or "lps"):upper() .. "\n"
    local both, order = {}, {}
    if r.lead then both[r.lead], order[1] = r.methods[r.lead], r.lead end
    for key, v in pairs(r.ablations) do both[key] = v end
    for _, key in ipairs(r.ablation_order) do order[#order + 1] = key end
    md[#md + 1] = B.markdown(both, order, r.metrics)
  end
  for _, sec in ipairs(r.sections or {}) do md[#md + 1] = sec end
  local text = table.concat(md, "\n")
  util.write_file(out .. "/" .. name .. ".md", text)
  return text
end

--- The figures of an evaluation: OUT/task_similarity_vs_transfer.png
-- (the method's mean similarity between the models of two tasks next to
-- the transfer gain, over the tasks the relations were measured on) and
-- OUT/embedding_pca.png (PCA of every model's embedding, coloured by task,
-- marked by family). d: the details lps.benchmark.evaluate returned;
-- prefix names the files (default none). Returns true or false and why.
function B.figures(out, S, d, prefix)
  prefix = prefix or ""
  local tasks = S.splits.relations == "unseen" and S.splits.retrieval.unseen_tasks or nil
  if not tasks then tasks = {} for t = 1, #S.splits.tasks do tasks[t] = t end end
  local function sub(M)
    local o = {}
    for i, s in ipairs(tasks) do o[i] = {} for j, t in ipairs(tasks) do o[i][j] = M[s][t] end end
    return o
  end
  local ok, err = plot.heatmaps(out .. "/" .. prefix .. "task_similarity_vs_transfer.png", {
    {title = "Mean similarity of two tasks' models (" .. #tasks .. " tasks)", matrix = sub(d.task_similarity)},
    {title = "Transfer gain (row = source, column = target)", matrix = sub(S.transfer.gain)}})
  if not ok or not d.embeddings then return ok, err end
  local task, fam, names = {}, {}, {"MLP", "CNN"}
  for i = 1, S.n do task[i], fam[i] = S.meta[i].task, S.meta[i].family == "cnn" and 2 or 1 end
  return plot.scatter(out .. "/" .. prefix .. "embedding_pca.png", eval.pca(d.embeddings, 2), task,
    S.meta[1].family and fam or nil, {marker_names = S.meta[1].family and names or nil,
    title = ("Embeddings of all %d models (PCA), coloured by task"):format(S.n)})
end

return B
