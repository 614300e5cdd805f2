--- lualps.bench.benchmark (lps.benchmark): the evaluation protocols of a
-- model set, run for any method of comparing models. `lps.benchmark.evaluate(set, method)` runs
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
--     local E = lps.zeros(#models, 784)
--     for i, w in ipairs(models) do E[i]:copy(w[1]:abs():mean(1)) end
--     return E
--   end}
--   local r = lps.benchmark.evaluate("build/modelset500.lpsm", m)
--   print(r.top1, r.map, r.tau_transfer)
local core = require "lualps.core"
local util = require "lualps.util"
local sets = require "lualps.bench.set"
local protocols = require "lualps.bench.protocols"
local report = require "lualps.bench.report"

local B = {}

-- lps.benchmark gathers the loaded set (lualps/bench/set.lua), the
-- protocols and their metrics (protocols.lua) and the reports (report.lua).
B.load, B.gather, B.filter, B.per_task = sets.load, sets.gather, sets.filter, sets.per_task
B.protocols = protocols.protocols
B.classification, B.retrieval, B.clustering = protocols.classification, protocols.retrieval, protocols.clustering
B.task_similarity, B.task_relations = protocols.task_similarity, protocols.task_relations
B.unseen_relations, B.accuracy_prediction = protocols.unseen_relations, protocols.accuracy_prediction
B.markdown, B.write_report, B.figures = report.markdown, report.write_report, report.figures
local view, fitted = sets.view, sets.fitted

--- The methods of the evaluation tables (lualps/bench/methods.lua):
-- lps, features, feature_head, cka, matching, template_matching.
B.methods = require "lualps.bench.methods"

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

local function concat(a, b)
  local out = {table.unpack(a)}
  for _, v in ipairs(b) do out[#out + 1] = v end
  return out
end

--- Run every protocol the set defines for `method` (see the module's
-- header), lps.benchmark.protocols in their order. `set` is a path or what
-- lps.benchmark.load returned; opts as lps.benchmark.defaults. Returns the metrics and the details of the first
-- seed ({task_similarity, fitted (on the classification training models),
-- embeddings (of every model, or nil), runs (per-seed metrics)}).
-- Metrics, as the set allows: top1 (a: held-out models of training tasks);
-- rank1, rank5, rank10, map, nmi, ami (b: unseen tasks); novel_rank1,
-- novel_map (c); heldout_arch_rank1, heldout_arch_map (d);
-- cross_family_rank1, cross_family_map (e); cross_source_map,
-- cross_source_rank1 (f: the mean over its directions) and per direction
-- cross_source_map_from_<source>, cross_source_rank1_from_<source>;
-- heldout_family_rank1, heldout_family_map (g); mixed_rank1, mixed_map,
-- mixed_resnet_rank1, mixed_resnet_map (h: (g)'s tasks as one zoo of every
-- family, each model a query against all the others; the ResNet queries
-- apart), by the method's rank where it ranks by other scores than its
-- similarity (the hybrid, hybrid.group_z), and then mixed_raw_* by its
-- similarity; tau_overlap, rho_overlap,
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
  local unseen = concat(ret.query, ret.gallery)
  local cross_train = cross and B.filter(S, cls.train, cross.field, cross.train) or {}
  local cross_test = cross and B.filter(S, cls.test, cross.field, cross.test) or {}
  local runs, details = {}, {}
  for seed = 1, seeds do
    local t0 = core.now()
    -- an unfitted method is the same for every split: one view serves all
    local vc = view(S, fitted(S, method, cls.train, seed, "classification"))
    local function fit_view(train, split) return method.fit and view(S, fitted(S, method, train, seed, split)) or vc end
    local c = {S = S, sp = sp, opts = opts, k = method.pairwise_per_task, vc = vc,
      vr = fit_view(ret.train, "retrieval"), fit_view = fit_view, unseen = unseen,
      cross_train = cross_train, cross_test = cross_test}
    local r = {}
    for _, p in ipairs(B.protocols) do
      for key, v in pairs(p.run(c) or {}) do r[key] = v end
    end
    r.train_seconds = vc.fitted.seconds
    runs[seed] = r
    if seed == 1 then
      details = {task_similarity = c.task_similarity, fitted = vc.fitted, embeddings = vc.E, fitted_unseen = c.vr.fitted}
    end
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
    cross_source = S.splits.cross_source and (function()
      local parts = {}
      for _, s in ipairs(S.splits.cross_source) do
        parts[#parts + 1] = ("trained on the %d models of the %d %s tasks, %d queries against %d gallery models of the %d other tasks")
          :format(#s.train, #s.train_tasks, s.train_source, #s.query, #s.gallery, #s.unseen_tasks)
      end
      return table.concat(parts, "; ") .. "; cross_source_map is the mean over both directions"
    end)() or nil,
    heldout_family = S.splits.heldout_family and
      ("%d ResNet queries (a family in no training split) against the %d MLPs and CNNs of the %d unseen tasks of retrieval, trained as retrieval")
        :format(#S.splits.heldout_family.query, #S.splits.heldout_family.gallery, #S.splits.heldout_family.unseen_tasks) or nil,
  }
end

return B
