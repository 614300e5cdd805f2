--- lualps.benchmark: the evaluation protocols of a model set (ModelSet500):
-- classification, retrieval on unseen tasks, clustering, task relations and
-- the cross-setting test, for any method that gives a similarity matrix.
--
-- A method is a table {name =, sim = function(a, b) -> |a| x |b| tensor,
-- features = function(ids) -> n x f tensor (optional)} where a, b are lists
-- of model ids of the loaded set.
local lps = require "lualps"
local eval = require "lualps.eval"
local cjson = require "cjson"
local util = require "lualps.util"

local B = {}

--- Load every model of a set (weights as lists, metadata) and its splits
-- (path .. ".splits.json"). Returns S = {path, n, models, meta, byid, splits}.
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

local function labels_of(S, ids)
  local _, y = B.gather(S, ids)
  return y
end

--- Top-1 task accuracy of the held-out models by their nearest training model.
function B.classification(S, method, train_ids, test_ids)
  local sim = method.sim(test_ids, train_ids)
  return (eval.classify(sim, labels_of(S, train_ids), labels_of(S, test_ids), {rule = "knn", k = 1}))
end

--- CMC rank-1/5/10 and mAP of queries against the gallery (unseen tasks).
function B.retrieval(S, method, query_ids, gallery_ids)
  local sim = method.sim(query_ids, gallery_ids)
  -- ranks 1, 5, 10 that fit the gallery (a small test set has fewer)
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
-- list of result tables: {k = mean, k_std = sd}.
function B.mean_std(runs)
  local out = {}
  if #runs == 0 then return out end
  for k, v in pairs(runs[1]) do
    if type(v) == "number" then
      local s, n = 0, 0
      for _, r in ipairs(runs) do if r[k] == r[k] then s, n = s + r[k], n + 1 end end
      local m = n > 0 and s / n or 0 / 0
      local ss = 0
      for _, r in ipairs(runs) do if r[k] == r[k] then ss = ss + (r[k] - m) ^ 2 end end
      out[k], out[k .. "_std"] = m, n > 1 and math.sqrt(ss / (n - 1)) or 0
    end
  end
  return out
end

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

return B
