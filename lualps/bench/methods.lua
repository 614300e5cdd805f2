--- lualps.bench.methods: the methods of the evaluation tables, as
-- lps.benchmark.methods: LPS, the unlearned feature baselines, learned heads
-- on fixed features, CKA, weight matching and template matching. Each is a
-- method in the sense of lps.benchmark (embed or similarity, optional fit).
-- Every method gives a row for every model: the baselines that read
-- weight layers (features, feature heads, CKA, matching) give NaN rows
-- (not comparable) for models without a weight view (batch norm, residual
-- blocks: csrc/lualps.h), LPS for families its network does not read.
local core = require "lualps.core"
local util = require "lualps.util"
local eval = require "lualps.eval"
local similarity = require "lualps.similarity"
local match = require "lualps.similarity.match"
local probe = require "lualps.similarity.probe"

local M = {}

-- Task labels 1..C of a list of raw task labels (tasks in increasing order).
local function class_labels(y)
  local tasks, map = {}, {}
  for _, t in ipairs(y) do if not map[t] then map[t] = true; tasks[#tasks + 1] = t end end
  table.sort(tasks)
  for c, t in ipairs(tasks) do map[t] = c end
  local labels = {}
  for k, t in ipairs(y) do labels[k] = map[t] end
  return labels, #tasks, tasks
end
M.class_labels = class_labels

-- Whether the weight-space methods can read a model (its weight layers
-- with biases, only channel-wise layers between them), remembered per model.
local readable = setmetatable({}, {__mode = "k"})
local function has_weight_view(m)
  local r = readable[m]
  if r == nil then
    r = (pcall(eval.features, "stats", m))
    readable[m] = r
  end
  return r
end

-- The positions and the models of a list that have a weight view.
local function with_weight_view(models)
  local idx, sub = {}, {}
  for k, m in ipairs(models) do
    if has_weight_view(m) then idx[#idx + 1], sub[#sub + 1] = k, m end
  end
  return idx, sub
end

-- embed(self, models) of a weight-space method, with NaN rows for the
-- models it cannot read.
local function embed_readable(embed)
  return function(self, models)
    local idx, sub = with_weight_view(models)
    if #sub == #models then return embed(self, models) end
    if #sub == 0 then return core.full(#models, 1, 0 / 0) end
    local Es = embed(self, sub)
    local E = core.full(#models, Es:size(2), 0 / 0)
    for r, k in ipairs(idx) do E[k]:copy(Es[r]) end
    return E
  end
end

-- similarity(self, a, b) of a weight-space method, NaN where either model
-- cannot be read.
local function similarity_readable(similarity)
  return function(self, a, b)
    local ia, sa = with_weight_view(a)
    local ib, sb = with_weight_view(b)
    if #sa == #a and #sb == #b then return similarity(self, a, b) end
    local out = core.full(#a, #b, math.abs(0 / 0))
    if #sa > 0 and #sb > 0 then core._eval.place(out, similarity(self, sa, sb), ia, ib) end
    return out
  end
end


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
-- With opts.pairwise (sets of many architectures) the cosines come from
-- lps.eval.similarity_matrix, NaN (not comparable) between models whose
-- features do not share a space: raw and sorted across architectures, gram
-- across families.
function M.features(kind, opts)
  opts = util.options(opts, {pairwise = false}, "features", {"standardize"})
  if opts.pairwise then
    return {name = kind,
            similarity = similarity_readable(function(_, a, b) return eval.similarity_matrix(kind, a, b) end)}
  end
  local mean, sd = feature_stats(kind, opts.standardize)
  return {name = kind, metric = "dot",
          embed = embed_readable(function(_, models) return normalized_features(kind, models, mean, sd) end)}
end

--- A learned head (projection, L2 normalization, classifier and the losses
-- of LPS) on fixed features, kind "stats" or "gram". opts: standardize (a
-- list of models fixing the mean and sd of the features), epochs (30).
function M.feature_head(kind, opts)
  opts = util.options(opts, {epochs = 30}, "feature_head", {"standardize"})
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
    local labels, C = class_labels(y)
    local rows = features(models)
    local head = similarity.feature_head{in_dim = rows[1]:numel(), classes = C, seed = ctx.seed}
    local rep = similarity.train_network(head, rows, labels, {epochs = opts.epochs, seed = ctx.seed})
    return {name = kind .. "_head", metric = "dot", head = head, seconds = rep.seconds,
            embed = embed_readable(function(_, ms) return head:embed(features(ms)) end)}
  end}
end

--- Targets of the relation objective between the training tasks (labels
-- 1..C = tasks[k] of the fit): "graded" = (shared classes / classes of the
-- larger task + domain match) / 2, 1 for a task with itself; "transfer" =
-- the transfer matrix's symmetrized gain ranked among the training pairs,
-- mapped to [-1, 1] (the diagonal 1). Tasks: the splits' task list.
function M.relation_targets(kind, tasks_of, info, transfer)
  local C = #tasks_of
  local T = core.zeros(C, C)
  if kind == "graded" then
    for a = 1, C do
      for b = 1, C do
        local s, t = info[tasks_of[a]], info[tasks_of[b]]
        local shared = 0
        for _, x in ipairs(s.classes) do for _, y in ipairs(t.classes) do if x == y then shared = shared + 1 end end end
        local v = (shared / math.max(#s.classes, #t.classes) + ((s.domain or "") == (t.domain or "") and 1 or 0)) / 2
        T:set(a, b, a == b and 1 or v)
      end
    end
  elseif kind == "transfer" then
    local pairs_ = {}
    for a = 1, C do
      for b = a + 1, C do
        local s, t = tasks_of[a], tasks_of[b]
        pairs_[#pairs_ + 1] = {a, b, (transfer.gain[s][t] + transfer.gain[t][s]) / 2}
      end
    end
    table.sort(pairs_, function(x, y) return x[3] < y[3] end)
    for r, pr in ipairs(pairs_) do
      local v = #pairs_ > 1 and 2 * (r - 1) / (#pairs_ - 1) - 1 or 0
      T:set(pr[1], pr[2], v)
      T:set(pr[2], pr[1], v)
    end
    for a = 1, C do T:set(a, a, 1) end
  else
    error(("lps method: relations must be 'graded', 'transfer' or false, got '%s'"):format(tostring(kind)), 3)
  end
  return T
end

--- LPS (lps.similarity): fit trains a network on the split's models with
-- cross-entropy over their tasks (and the triplet term by default). opts:
-- any option of similarity.network (with `families`: any architecture)
-- and similarity.train_network (epochs 30 here), and
--   name;
--   relations = "graded" | "transfer" | false: the relation objective's
--     targets (M.relation_targets; needs the splits' task list, and for
--     "transfer" the set's transfer matrix);
--   train_families: fit on models of these families only (default all the
--     network reads);
--   shuffle_labels: fit on task labels permuted at random (a control);
--   hybrid = false | true | options of lps.similarity.hybrid
--     (similarity.hybrid.defaults): the fitted method scores pairs with
--     template matching plus the gated learned residual
--     (lualps/similarity/hybrid.lua), w, lo and hi from an inner validation
--     on held-out classes; needs the templates slot and each model's
--     `classes` (lps.benchmark gives them to fit). Default false: the cosine.
--   prior = true | false: with the set's fine-tuning matrix (ctx.transfer),
--     also fit a transferability prior (lualps.similarity.prior) on the
--     training models that have fine-tuning results on every training task
--     (of every family, whatever train_families):
--     the fitted method's prior, transferability and out_of_task, which
--     lps.selection adds to its similarity as `<method>+prior` (default true).
-- Models of a family the network does not read embed as NaN (not
-- comparable): a network reads its `families`, and with the templates slot
-- alone also families that have no unit encoders (ResNets: the templates
-- are a function of any model).
function M.lps(opts)
  local own = {name = true, relations = true, train_families = true, shuffle_labels = true, hybrid = true, prior = true}
  local defaults = type(opts) == "table" and opts.families and similarity.arch_defaults or similarity.defaults
  local known = {}
  for _, t in ipairs{own, defaults, similarity.train_defaults} do
    for k in pairs(t) do known[#known + 1] = k end
  end
  opts = util.options(opts, {}, "lps method", known)
  local hopts = opts.hybrid
  if opts.prior ~= nil and type(opts.prior) ~= "boolean" then
    error(("lps method: prior must be a boolean, got %s"):format(tostring(opts.prior)), 2)
  end
  if hopts then -- checked now: a wrong key fails before any training
    hopts = util.options(hopts ~= true and hopts or nil, similarity.hybrid.defaults, "lps method: hybrid")
  end
  -- Train a network on models with task labels y (seed); returns it, its
  -- embed(models) and the training report.
  local function train(models, y, ctx)
    local labels, C, tasks_of = class_labels(y)
    if opts.shuffle_labels then
      labels = {table.unpack(labels)}
      local g = core.generator(104729 + ctx.seed)
      for k = #labels, 2, -1 do
        local j = g:random(k)
        labels[k], labels[j] = labels[j], labels[k]
      end
    end
    local net_opts = {seed = ctx.seed, classes = C}
    local tr = {epochs = 30, seed = ctx.seed}
    for key, v in pairs(opts) do
      if own[key] then -- not an option of the network or its training
      elseif defaults[key] ~= nil then net_opts[key] = v else tr[key] = v end
    end
    if tr.loss == "triplet" then net_opts.classes = 0 end
    if opts.relations then tr.relations = M.relation_targets(opts.relations, tasks_of, ctx.tasks, ctx.transfer) end
    local net = similarity.network(net_opts)
    local rep = similarity.train_network(net, models, labels, tr)
    local reads = {}
    for _, f in ipairs(net.opts.families or {"mlp"}) do reads[f] = true end
    local function read(f) -- a family without unit encoders (a ResNet's) only through the templates slot alone
      return reads[f] or (not net.layered and f ~= "mlp" and f ~= "cnn")
    end
    local function embed(ms)
      if not opts.families then return net:embed(ms) end
      local idx, sub = {}, {}
      for k, m in ipairs(ms) do
        if read(m.family or (m[1]:dim() == 4 and "cnn" or "mlp")) then idx[#idx + 1], sub[#sub + 1] = k, m end
      end
      local E = core.full(#ms, net.opts.embed, 0 / 0)
      if #sub > 0 then
        local Es = net:embed(sub)
        for r, k in ipairs(idx) do E[k]:copy(Es[r]) end
      end
      return E
    end
    return {net = net, embed = embed, seconds = rep.seconds, classes = tasks_of}
  end
  -- The transferability prior (lualps.similarity.prior.fit_zoo) of the
  -- training models (ids) with fine-tuning results (ft, keyed by id),
  -- targets over the training tasks; none with fewer than two tasks of such
  -- models, without ft, or with opts.prior false. Returns the fitted
  -- method's fields: prior, transferability(self, models) (the fit's
  -- predictions) and out_of_task (id -> the prediction of the fit on the
  -- other tasks' models, for each model the fit saw: what a benchmark
  -- gives them, never a prediction fitted on them).
  local function fit_prior(models, y, ids, ft)
    if opts.prior == false or type(ft) ~= "table" or #ids ~= #models then return {} end
    local P = similarity.prior
    local state, out_of_task = P.fit_zoo(models, ids, y, ft) -- targets: every training task
    if not state then return {} end
    return {prior = state, out_of_task = out_of_task,
            transferability = function(_, ms) return P.predict(state, ms) end}
  end
  -- fits: the hybrid's fitted {split, seed, w, lo, hi, held_class, maps}, one per fit
  return {name = opts.name or "lps", fits = hopts and {} or nil, fit = function(self, models, y, ctx)
    local keep = opts.train_families or opts.families
    local ids = ctx.ids or {}
    -- the prior reads any model's weight statistics: it fits on every training model
    local all_models, all_y, all_ids = models, y, ids
    if keep then -- only the families the network trains on
      local ok = {}
      for _, f in ipairs(keep) do ok[f] = true end
      local m2, y2, i2 = {}, {}, {}
      for k, m in ipairs(models) do
        if ok[m.family or (m[1]:dim() == 4 and "cnn" or "mlp")] then
          local n = #m2 + 1
          m2[n], y2[n], i2[n] = m, y[k], ids[k]
        end
      end
      models, y, ids = m2, y2, i2
    end
    local out
    if not hopts then
      local t = train(models, y, ctx)
      out = {name = self.name, metric = "dot", net = t.net, seconds = t.seconds, classes = t.classes,
             embed = function(_, ms) return t.embed(ms) end}
    else
      local t0 = core.now()
      local state, t = similarity.hybrid.fit(function(ms, ys) return train(ms, ys, ctx) end, models, y, hopts)
      local hy = similarity.hybrid.new(t.net, state, t.embed)
      self.fits[#self.fits + 1] = {split = ctx.split, seed = ctx.seed, w = state.w, lo = state.lo, hi = state.hi,
                                   held_class = state.held_class, maps = state.maps}
      out = {name = self.name, net = t.net, hybrid = state, seconds = core.now() - t0, classes = t.classes,
             similarity = function(_, a, b) return hy:similarity(a, b) end,
             rank = function(_, a, b) return (hy:rank(a, b)) end} -- nearest's order: one scale per kind
    end
    local t0 = core.now()
    for k, v in pairs(fit_prior(all_models, all_y, all_ids, ctx.transfer and ctx.transfer.finetune)) do out[k] = v end
    out.seconds = out.seconds + (core.now() - t0) -- the prior is part of training
    return out
  end}
end

--- Linear CKA of hidden activations on probe inputs (N x d): features whose
-- dot products are the layer-averaged CKA (lps.eval.cka_features).
-- The depths of the first models it embeds (the set) fix the layout of the
-- features, so later models (a probe model) land in the same space.
function M.cka(probe)
  local depths
  return {name = "cka", metric = "dot", embed = embed_readable(function(_, models)
    if not depths then
      local seen = {}
      depths = {}
      for _, m in ipairs(models) do
        local L = #m // 2 - 1
        if not seen[L] then seen[L] = true; depths[#depths + 1] = L end
      end
      return eval.cka_features(models, probe)
    end
    return eval.cka_features(models, probe, {depths = depths})
  end)}
end

--- Git Re-Basin weight matching (pairwise only: opts.per_task models per
-- task are compared, default 2), computed pairs remembered across protocols.
function M.matching(opts)
  opts = util.options(opts, {per_task = 2}, "matching")
  local memo = setmetatable({}, {__mode = "k"})
  return {name = "matching", pairwise_per_task = opts.per_task, similarity = similarity_readable(function(_, a, b)
    local out = core.zeros(#a, #b)
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
  end)}
end


--- The template-matching score of a ka x kb table of cosines (a tensor or a
-- nested Lua table): the largest sum of cosines over one-to-one
-- assignments of the rows to the columns, divided by max(ka, kb); NaN if
-- any cosine is NaN. Exact for any size.
function M.assignment_score(C)
  local G = core.is_tensor(C) and C:totable() or C
  if type(G) ~= "table" or type(G[1]) ~= "table" or #G[1] < 1 then
    error("assignment_score: needs a non-empty ka x kb table or 2-D tensor of cosines", 2)
  end
  local ka, kb = #G, #G[1]
  for r = 1, ka do
    if type(G[r]) ~= "table" or #G[r] ~= kb then
      error(("assignment_score: row %d has %s entries, row 1 has %d"):format(r, type(G[r]) == "table" and #G[r] or "no", kb), 2)
    end
    for c = 1, kb do
      local x = G[r][c]
      if type(x) ~= "number" then error(("assignment_score: entry (%d, %d) is a %s"):format(r, c, type(x)), 2) end
      if x ~= x then return 0 / 0 end
    end
  end
  return match.block_score(G, 0, 0, ka, kb)
end

--- Options of template matching and their defaults.
M.template_matching_defaults = {
  pool = 4,           -- template pooling (28x28 -> 7x7 per noise range)
  noise = match.noise, -- noise images per range (8)
  noise_ranges = match.noise_ranges, -- uniform noise ranges ({0, 0.2}, {0.4, 0.6}, {0.8, 1})
  name = "template_matching",
}

--- Template matching, an unlearned and data-free comparison of what two
-- models compute, for any architecture (pairwise). Each model's class
-- templates (lualps.similarity.templates: for each output class, the input
-- gradient of its logit minus the mean logit averaged over fixed noise
-- images, average-pooled, unit rows) are computed once; two models score
-- the best one-to-one assignment of a's templates to b's maximizing the
-- sum of cosines, divided by max(ka, kb) (assignment_score): 1 for the
-- same function up to the order of its classes. opts:
-- M.template_matching_defaults, and per_task (compare galleries with only
-- this many models per task: lps.benchmark's pairwise_per_task; default all).
-- Models with NaN templates are not comparable (NaN).
function M.template_matching(opts)
  opts = util.options(opts, M.template_matching_defaults, "template_matching", {"per_task"})
  local templates = match.templates_of(opts.pool, opts.noise, opts.noise_ranges)
  return {name = opts.name, pairwise_per_task = opts.per_task, similarity = function(_, a, b)
    return match.scores(templates, a, b)
  end}
end

--- Options of probe matching and their defaults.
M.probe_matching_defaults = {
  probe = 1,          -- weight of probe matching; template matching has the rest (0.5: the hybrid's anchor)
  directed = false,   -- true: only the query reads the gallery's dreams (an index of the gallery: cheap
                      -- per query; the score is not symmetric)
  name = "probe_matching",
}

--- Probe matching (lualps.similarity.probe), unlearned and data-free like
-- template matching: each model classifies the class dreams of the other
-- (pairwise). With probe < 1 the score is (1 - probe) template matching +
-- probe probe matching, the hybrid's anchor (lualps.similarity.hybrid.anchor).
-- opts: M.probe_matching_defaults, per_task (as template matching's) and
-- dreams (options of the dreams: lualps.similarity.probe.defaults).
function M.probe_matching(opts)
  opts = util.options(opts, M.probe_matching_defaults, "probe_matching", {"per_task", "dreams"})
  similarity.hybrid.check_probe(opts.probe, "probe_matching: probe")
  local pm = probe.matcher(opts.dreams)
  local templates = opts.probe < 1 and match.templates_of(M.template_matching_defaults.pool)
  return {name = opts.name, pairwise_per_task = opts.per_task, similarity = function(_, a, b)
    if not templates then return opts.directed and pm.directed(a, b) or pm.scores(a, b) end
    return similarity.hybrid.anchor(match.scores(templates, a, b), pm, a, b, opts.probe, opts.directed)
  end}
end

return M
