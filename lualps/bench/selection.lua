--- lualps.bench.selection (lps.selection): the model-selection protocol, the question LPS exists
-- for: which stored model should I fine-tune for a new task? On each unseen
-- target task (split b), a probe model trained on the target's small budget
-- of images is the query; a method ranks the transfer pool's models of the
-- other tasks by similarity to it; the top one is "fine-tuned", and its
-- accuracy on the target is the one the transfer ground truth measured
-- (lps.transfer_pool: finetune[id][t]). Regret = the best pool model's
-- accuracy minus the chosen one's; a random pick's regret is the best
-- minus the mean. No data of the zoo is used, only the probe's weights.
local core = require "lualps.core"
local arch = require "lualps.arch"
local similarity = require "lualps.similarity"
local zoo = require "lualps.bench.zoo"
local TP = require "lualps.bench.transfer_pool"

local M = {}

--- The probes of a loaded set S (lps.benchmark.load): probes[t][family] =
-- weight list of the from-scratch reference model of that family trained
-- on target t's budget (lps.transfer_pool.probe, half 1, first draw, the
-- transfer protocol's budget), for every unseen task t of split (b).
-- Cached in S.
function M.probes(S, data_dir)
  if S.probes then return S.probes end
  local p = S.transfer.protocol
  local o = {images = p.budget_images, epochs = p.epochs, batch = p.batch_size, lr = p.lr, test_images = p.test_images}
  local ref = {}
  for i = 1, S.n do
    local m = S.meta[i]
    if m.in_pool then ref[m.family] = ref[m.family] or arch.of_meta(m) end
  end
  local loader = zoo.task_data_loader(S.splits.tasks, data_dir)
  local probes = {}
  for _, t in ipairs(S.splits.retrieval.unseen_tasks) do
    probes[t] = {}
    local td = loader(t)
    for _, fam in ipairs{"mlp", "cnn"} do
      local model = TP.probe(ref[fam], t, #S.splits.tasks[t].classes, 1, 1, td, o)
      local w = similarity.weights(model)
      w.family, w.module = fam, nil -- a weight list (with its arch), as the set's models
      probes[t][fam] = w
    end
  end
  S.probes = probes
  return probes
end

-- Scores of the candidates (ids) for one query model under view v.
local function scores(S, v, query, ids)
  local f = v.fitted
  local out
  if f.embed and v.features then
    local q = f:embed({query})
    if f.metric ~= "dot" then q:div_(math.max(q:norm(), 1e-12)) end
    out = core.matmul(q, v.features(ids), false, true)
  else
    local models = {}
    for k, id in ipairs(ids) do models[k] = S.models[S.byid[id]] end
    out = f:similarity({query}, models)
  end
  local list = out:reshape(-1):totable()
  for k, x in ipairs(list) do if x ~= x then list[k] = -math.huge end end
  return list
end

--- Model-selection metrics of view v (a fitted method as lps.benchmark
-- sees it, trained without the unseen tasks): means over unseen targets
-- and both probe families of selection_accuracy (the chosen model's
-- accuracy), selection_regret, random_regret, oracle_accuracy,
-- task_oracle_regret (with the set's gain matrix: a model at random of the
-- source task whose measured gain on the target is highest), and
-- selection_regret_mlp / _cnn per probe family. A method that compares no
-- candidate with a probe picks at random (its expected regret).
function M.evaluate(S, v, opts)
  local probes = M.probes(S, opts and opts.data)
  local ft = S.transfer.finetune
  local gain = S.transfer.gain
  local sum = {selection_accuracy = 0, selection_regret = 0, random_regret = 0, oracle_accuracy = 0,
               selection_regret_mlp = 0, selection_regret_cnn = 0, task_oracle_regret = gain and 0 or nil}
  local n, nf = 0, {mlp = 0, cnn = 0}
  for _, t in ipairs(S.splits.retrieval.unseen_tasks) do
    local ids, acc = {}, {}
    for i = 1, S.n do
      local m = S.meta[i]
      if m.in_pool and m.task ~= t then ids[#ids + 1], acc[#ids + 1] = m.id, ft[m.id][t] end
    end
    local best, mean = -math.huge, 0
    for _, a in ipairs(acc) do best, mean = math.max(best, a), mean + a / #acc end
    -- the task oracle: a pool model at random of the source with the highest measured gain on t
    local oracle_mean
    if gain then
      local src, top, sum_a, cnt = nil, -math.huge, {}, {}
      for k, id in ipairs(ids) do
        local s = S.meta[S.byid[id]].task
        if gain[s][t] > top or (gain[s][t] == top and s < src) then src, top = s, gain[s][t] end
        sum_a[s], cnt[s] = (sum_a[s] or 0) + acc[k], (cnt[s] or 0) + 1
      end
      oracle_mean = src and sum_a[src] / cnt[src]
    end
    for _, fam in ipairs{"mlp", "cnn"} do
      local sc = scores(S, v, probes[t][fam], ids)
      local pick, top = nil, -math.huge
      for k, x in ipairs(sc) do if x > top then pick, top = k, x end end
      local chosen = pick and acc[pick] or mean
      sum.selection_accuracy = sum.selection_accuracy + chosen
      sum.selection_regret = sum.selection_regret + best - chosen
      sum.random_regret = sum.random_regret + best - mean
      if oracle_mean then sum.task_oracle_regret = sum.task_oracle_regret + best - oracle_mean end
      sum.oracle_accuracy = sum.oracle_accuracy + best
      sum["selection_regret_" .. fam] = sum["selection_regret_" .. fam] + best - chosen
      n, nf[fam] = n + 1, nf[fam] + 1
    end
  end
  local out = {}
  for k, x in pairs(sum) do
    local fam = k:match("_(%a+)$")
    out[k] = x / ((fam == "mlp" or fam == "cnn") and nf[fam] or n)
  end
  return out
end

return M
