--- lualps.benchmark: the evaluation protocols of a model set, run for any
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
-- A model is a list of tensors {W1, b1, W2, b2, ...} (PyTorch layout).
--
--   local m = {name = "mean |W1|", embed = function(_, models)
--     local E = lps.zeros(#models, 784)
--     for i, w in ipairs(models) do E[i]:copy(w[1]:abs():mean(1)) end
--     return E
--   end}
--   local r = lps.benchmark.evaluate("build/modelset500.lpsm", m)
--   print(r.top1, r.map, r.tau_transfer)
local lps = require "lualps"
local eval = require "lualps.eval"
local cjson = require "cjson"
local util = require "lualps.util"

local B = {}

--- Load every model of a set (weights as lists, metadata), its splits
-- (path .. ".splits.json") and, when present, its transfer matrix
-- (path .. ".transfer.json"). Returns S = {path, n, models, meta, byid,
-- splits, transfer}.
function B.load(path)
  local ms <close> = lps.modelset.open(path)
  local S = {path = path, n = #ms, models = {}, meta = {}, byid = {}}
  for i = 1, #ms do
    local meta = ms:meta(i)
    S.meta[i], S.byid[meta.id] = meta, i
    S.models[i] = lps.similarity.weights(ms:tensors(i))
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
    return {sim = function(x, y) return lps.matmul(rows(x), rows(y), false, true) end, features = rows,
            E = E, fitted = m}
  elseif m.similarity then
    return {sim = function(x, y) return m:similarity(B.gather(S, x), (B.gather(S, y))) end, fitted = m}
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
    local out = lps.full(#x, #y, -math.huge)
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
  if method.features then
    X = method.features(ids)
    local norms = (X * X):sum(2):sqrt()
    for i = 1, X:size(1) do X[i]:div_(math.max(norms[i], 1e-12)) end
  else
    X = eval.mds(method.sim(ids, ids), math.min(16, #ids - 1))
  end
  local assign = eval.kmeans(X, k, {generator = lps.generator(seed or 1), restarts = 10})
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
      if i ~= j then
        local s, t = y[i], y[j]
        sum[s][t] = sum[s][t] + sim:get(i, j)
        cnt[s][t] = cnt[s][t] + 1
      end
    end
  end
  for s = 1, ntasks do for t = 1, ntasks do sum[s][t] = cnt[s][t] > 0 and sum[s][t] / cnt[s][t] or 0 / 0 end end
  return sum
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
  return {tau_overlap = eval.kendall_tau(a, overlap), rho_overlap = eval.spearman(a, overlap),
          tau_transfer = eval.kendall_tau(a, gain), rho_transfer = eval.spearman(a, gain)}
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

-- Task labels 1..C of a list of raw task labels (tasks in increasing order).
function B.class_labels(y)
  local tasks, map = {}, {}
  for _, t in ipairs(y) do if not map[t] then map[t] = true; tasks[#tasks + 1] = t end end
  table.sort(tasks)
  for c, t in ipairs(tasks) do map[t] = c end
  local labels = {}
  for k, t in ipairs(y) do labels[k] = map[t] end
  return labels, #tasks
end

--- Options of lps.benchmark.evaluate and their defaults.
B.defaults = {
  seeds = 1,          -- fit seeds (methods with fit); metrics are means with *_std over them
  cross = {field = "optimizer", train = "sgd", test = "adam"}, -- cross-setting: fit on one value of a
                      -- metadata field, classify models of another (skipped if the set has none)
  log = nil,          -- function(fmt, ...) for progress lines; default: timestamped lines on stderr
}

local function stderr_log(fmt, ...)
  io.stderr:write(os.date("%H:%M:%S "), fmt:format(...), "\n")
  io.stderr:flush()
end

-- Fit (or take as is) the method on ids.
local function fitted(S, method, ids, seed, split)
  if not method.fit then return method end
  local models, y = B.gather(S, ids)
  return method:fit(models, y, {seed = seed, split = split, ids = ids})
end

--- Run every protocol the set defines for `method` (see the module's
-- header). `set` is a path or what lps.benchmark.load returned; opts as
-- lps.benchmark.defaults. Returns the metrics (top1, rank1, rank5, rank10,
-- map, nmi, ami, tau_overlap, rho_overlap, tau_transfer, rho_transfer,
-- cross_top1, train_seconds when the fit reports `seconds`; with several
-- seeds, means and *_std) and the details of the first seed: {task_similarity
-- = task x task matrix, fitted = the method fitted on the classification
-- training models, embeddings = their n x e embeddings of every model or nil,
-- runs = the per-seed metrics}.
function B.evaluate(set, method, opts)
  opts = opts or {}
  for k in pairs(opts) do
    if B.defaults[k] == nil and k ~= "log" then error(("benchmark.evaluate: unknown option '%s'"):format(tostring(k)), 2) end
  end
  if type(method) ~= "table" or not (method.embed or method.similarity or method.fit) then
    error("benchmark.evaluate: a method needs embed(self, models) or similarity(self, a, b) (and may have fit)", 2)
  end
  local S = type(set) == "string" and B.load(set) or set
  local log = opts.log or stderr_log
  local seeds = method.fit and (opts.seeds or B.defaults.seeds) or 1
  local cross = opts.cross or B.defaults.cross
  local cls, ret = S.splits.classification, S.splits.retrieval
  local ntasks = #S.splits.tasks
  local k = method.pairwise_per_task
  local unseen = {}
  for _, id in ipairs(ret.query) do unseen[#unseen + 1] = id end
  for _, id in ipairs(ret.gallery) do unseen[#unseen + 1] = id end
  local cross_train = cross and B.filter(S, cls.train, cross.field, cross.train) or {}
  local cross_test = cross and B.filter(S, cls.test, cross.field, cross.test) or {}
  local runs, details = {}, {}
  for seed = 1, seeds do
    local t0 = lps.now()
    -- an unfitted method is the same for every split: one view serves all
    local vc = view(S, fitted(S, method, cls.train, seed, "classification"))
    local vr = method.fit and view(S, fitted(S, method, ret.train, seed, "retrieval")) or vc
    local vx = #cross_train > 0 and #cross_test > 0 and
      (method.fit and view(S, fitted(S, method, cross_train, seed, "cross")) or vc)
    local r = {}
    local gallery = k and subsampled(S, vc, k) or vc
    r.top1 = B.classification(S, gallery, cls.train, cls.test)
    for key, v in pairs(B.retrieval(S, vr, ret.query, ret.gallery)) do r[key] = v end
    r.nmi, r.ami = B.clustering(S, vr, k and B.per_task(S, unseen, k + 1) or unseen, 1)
    local tsim = B.task_similarity(S, vc, k and B.per_task(S, cls.test, k) or cls.test, ntasks)
    if S.transfer then
      for key, v in pairs(B.task_relations(tsim, S.transfer)) do r[key] = v end
    end
    if vx then r.cross_top1 = B.classification(S, k and subsampled(S, vx, k) or vx, cross_train, cross_test) end
    r.train_seconds = vc.fitted.seconds
    runs[seed] = r
    if seed == 1 then details = {task_similarity = tsim, fitted = vc.fitted, embeddings = vc.E} end
    if method.fit then
      log("%s seed %d: top1 %.3f rank1 %.3f mAP %.3f NMI %.3f tau(transfer) %.3f  (%.1fs)", tostring(method.name),
        seed, r.top1, r.rank1, r.map, r.nmi, r.tau_transfer or 0 / 0, lps.now() - t0)
    end
  end
  details.runs = runs
  local out = seeds > 1 and B.mean_std(runs) or runs[1]
  return out, details
end

--- A description of the protocols on S, for the results' "protocol" entry.
function B.describe(S, opts)
  opts = opts or {}
  local cls, ret = S.splits.classification, S.splits.retrieval
  local k = opts.pairwise_per_task or 2
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

------------------------------------------------------------------ the methods of the paper's comparison

B.methods = {}

-- Row-normalized features of a list of models; standardized first with
-- mean/sd when given.
local function normalized_features(kind, models, mean, sd)
  local F = eval.feature_matrix(kind, models)
  if mean then eval.standardize(F, mean, sd) end
  local norms = (F * F):sum(2):sqrt()
  for i = 1, F:size(1) do F[i]:div_(math.max(norms[i], 1e-12)) end
  return F
end

-- mean and sd of the features of `models` (nil when models is nil).
local function feature_stats(kind, models)
  if not models then return nil end
  local _, mean, sd = eval.standardize(eval.feature_matrix(kind, models))
  return mean, sd
end

--- Unlearned feature baselines: kind "raw", "sorted", "stats" or "gram"
-- (lps.eval.features), compared by cosine. opts.standardize: a list of
-- models whose per-feature mean and sd standardize the features first
-- (stats: the training models).
function B.methods.features(kind, opts)
  opts = opts or {}
  local mean, sd = feature_stats(kind, opts.standardize)
  return {name = kind, metric = "dot",
          embed = function(_, models) return normalized_features(kind, models, mean, sd) end}
end

--- A learned head (projection, L2 normalization, classifier and the losses
-- of LPS) on fixed features, kind "stats" or "gram". opts: standardize (a
-- list of models fixing the mean and sd of the features), epochs (30).
function B.methods.feature_head(kind, opts)
  opts = opts or {}
  local mean, sd = feature_stats(kind, opts.standardize)
  local cache = setmetatable({}, {__mode = "k"}) -- model -> its feature row (fits share them)
  local function features(models)
    local missing = {}
    for _, m in ipairs(models) do if not cache[m] then missing[#missing + 1] = m end end
    if #missing > 0 then
      local F = eval.feature_matrix(kind, missing)
      if mean then eval.standardize(F, mean, sd) end
      for i, m in ipairs(missing) do cache[m] = F[i] end
    end
    local rows = {}
    for i, m in ipairs(models) do rows[i] = cache[m] end
    return rows
  end
  return {name = kind .. "_head", fit = function(_, models, y, ctx)
    local labels, C = B.class_labels(y)
    local rows = features(models)
    local head = lps.similarity.feature_head{in_dim = rows[1]:numel(), classes = C, seed = ctx.seed}
    local rep = lps.similarity.train_network(head, rows, labels, {epochs = opts.epochs or 30, seed = ctx.seed})
    return {name = kind .. "_head", metric = "dot", head = head, seconds = rep.seconds,
            embed = function(_, ms) return head:embed(features(ms)) end}
  end}
end

--- LPS (lps.similarity): fit trains a network on the split's models with
-- cross-entropy over their tasks (and the triplet term by default). opts:
-- any option of lps.similarity.network and lps.similarity.train_network
-- (epochs 30 here); `name`.
function B.methods.lps(opts)
  opts = opts or {}
  return {name = opts.name or "lps", fit = function(self, models, y, ctx)
    local labels, C = B.class_labels(y)
    local net_opts = {seed = ctx.seed, classes = C}
    local tr = {epochs = 30, seed = ctx.seed}
    for key, v in pairs(opts) do
      if key == "name" then -- not an option of the network
      elseif lps.similarity.defaults[key] ~= nil then net_opts[key] = v else tr[key] = v end
    end
    if tr.loss == "triplet" then net_opts.classes = 0 end
    local net = lps.similarity.network(net_opts)
    local rep = lps.similarity.train_network(net, models, labels, tr)
    return {name = self.name, metric = "dot", net = net, seconds = rep.seconds,
            embed = function(_, ms) return net:embed(ms) end}
  end}
end

--- Linear CKA of hidden activations on probe inputs (N x d): features whose
-- dot products are the layer-averaged CKA (lps.eval.cka_features).
function B.methods.cka(probe)
  return {name = "cka", metric = "dot", embed = function(_, models) return eval.cka_features(models, probe) end}
end

--- Git Re-Basin weight matching (pairwise only: opts.per_task models per
-- task are compared, default 2), computed pairs remembered across protocols.
function B.methods.matching(opts)
  opts = opts or {}
  local memo = setmetatable({}, {__mode = "k"})
  return {name = "matching", pairwise_per_task = opts.per_task or 2, similarity = function(_, a, b)
    local out = lps.zeros(#a, #b)
    local todo, n = {}, 0
    for i, x in ipairs(a) do
      memo[x] = memo[x] or setmetatable({}, {__mode = "k"})
      for j, y in ipairs(b) do
        local v = memo[x][y] or (memo[y] and memo[y][x])
        if v then out:set(i, j, v) else todo[i] = todo[i] or {}; table.insert(todo[i], j); n = n + 1 end
      end
    end
    local prog = n > 1000 and util.progress(n, {label = "matching", unit = "pairs"})
    local done = 0
    for i, js in pairs(todo) do
      local gal = {}
      for c, j in ipairs(js) do gal[c] = b[j] end
      local row = eval.similarity_matrix("matching", {a[i]}, gal, {})
      for c, j in ipairs(js) do
        local v = row:get(1, c)
        out:set(i, j, v)
        memo[a[i]][b[j]] = v
      end
      done = done + #js
      if prog then prog:update(done) end
    end
    if prog then prog:finish() end
    return out
  end}
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
-- metrics =, title =, intro =, lead =, extra =}
function B.write_report(out, name, r)
  local json = {methods = {}, ablations = {}, protocol = r.protocol}
  for key, v in pairs(r.methods) do json.methods[key] = finite(v) end
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
  local text = table.concat(md, "\n")
  util.write_file(out .. "/" .. name .. ".md", text)
  return text
end

return B
