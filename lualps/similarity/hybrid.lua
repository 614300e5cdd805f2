--- lualps.similarity.hybrid: LPS anchored on template matching, with a
-- gated learned residual (issue 19; the design of the research notes,
-- section 2). For models a and b:
--   s(a, b) = (1 - w g_a g_b) TM(a, b) + w g_a g_b cos(e_a, e_b)
-- TM: the unlearned anchor, (1 - p) TM_t + p PM: template matching
-- (lualps.similarity.match) over template matching's own class templates
-- (lps.benchmark.methods.template_matching: its noise, pooled tm_pool x
-- tm_pool) and, with weight p, probe matching (lualps.similarity.probe:
-- each model classifies the other's class dreams), which reads families
-- whose input gradients at noise say little (batch norm, residual blocks);
-- with p = 0 and no learned term the score is template matching's to the
-- bit, on any models;
-- e: the network's embedding; g in [0, 1]: how typical a model's embedding
-- is of the training tasks (its largest cosine with their mean embeddings,
-- the prototypes), ramped linearly from lo to hi. w, lo and hi come from an
-- inner validation on held-out classes (H.fit), so the learned term gets
-- weight only where it ranked models of unseen classes better than TM, and
-- only for models that look like the training ones: off its training
-- distribution the score falls back to TM.
local core = require "lualps.core"
local util = require "lualps.util"
local eval = require "lualps.eval"
local match = require "lualps.similarity.match"
local probe = require "lualps.similarity.probe"

local H = {}

--- Options of the hybrid (H.fit; lps.benchmark.methods.lps{hybrid = ...})
-- and their defaults.
H.defaults = {
  gate = true,          -- scale the learned term by the typicality gates g_a g_b (false: g = 1)
  w_grid = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1}, -- weights of the learned term the validation tries
  lo_quantile = 0.1,    -- the gate is 0 below this quantile of the held-out models' typicality,
  hi_quantile = 0.9,    -- and 1 above this one
  tm_pool = 4,          -- TM rows: templates average-pooled tm_pool x tm_pool (a multiple of template_pool)
  probe = 0,            -- weight p of probe matching in the anchor (0: template matching alone). 0.5 lifts
                        -- held-out family rank-1 from 0.36 to 0.62 but costs transfer tau (0.36 to 0.26) and
                        -- 30x the query cost (the hybrid_probe ablation, dream step 0.05; README); not
                        -- validated: the inner validation's held-out classes come from the training families
  probe_directed = false, -- true: probe matching only in the query's direction (the query reads the
                        -- stored models' dreams, an index computed once; the score is not symmetric). With
                        -- p = 0.5 (3 seeds, README): every retrieval protocol up (ResNets 0.56), selection
                        -- regret 0.048, but tau 0.25 and per-target tau 0.37, below gram's 0.39
  probe_bn = 1,         -- a pair where one model has batch norm is anchored on (1 - probe_bn) (the anchor above)
                        -- + probe_bn (the batch-norm model reading the other's dreams; pairs where both have
                        -- it: probe_bn_both), as its input gradients at noise (template matching) and its own dreams read
                        -- poorly. On the validation split (the training tasks' ResNets reading their MLPs and
                        -- CNNs, scripts/probe_validation.lua): rank-1 0.478 at 1, 0.444 at 0.75, 0.344 at 0.5,
                        -- 0.156 for template matching alone; the ResNets' own dreams read at 0.144
  probe_bn_both = 0.5,  -- the same where both models have batch norm (both directions' mean): on the validation
                        -- split's 90 ResNets among themselves (leave-one-out) rank-1 0.233 and mAP 0.342 at 0.5,
                        -- 0.156 and 0.304 at 1, template matching alone 0.144 and 0.249: neither model's
                        -- dreams are read well, and template matching adds what they miss
  bn_residual = false,  -- true: the learned term also where the anchor reads a model by probe (a batch-norm
                        -- model under probe_bn or probe_bn_both); false: such a model's gate is 0 and its pairs
                        -- keep the anchor's bits. w, lo and hi are validated against template matching on the
                        -- training families, and the network reads a ResNet from the same input gradients that
                        -- template matching reads poorly. On the validation split's 90 ResNets (the training
                        -- tasks', against two of their MLPs and CNNs each; scripts/probe_validation.lua
                        -- --residual) the residual cost rank-1 0.089, 0.122 and 0.056 over three fit seeds
  probe_gate = false,   -- true: the probe weight of query a is p (1 - g_a) (needs gate): typical queries
                        -- keep template matching's rows; measured, it costs tau (0.18; README)
  dreams = false,       -- options of probe matching's dreams (lualps.similarity.probe.defaults; false: those
                        -- defaults); the fit saves them complete (state.dreams), so a saved model dreams as fitted
  tm_templates = "matching", -- TM rows from template matching's own templates (its 8 noise images in each
                        -- of 3 ranges); "network": the network's (6 in 2 ranges, re-pooled), which rank
                        -- new data worse (rendered digits mAP 0.863 against 0.870 with no learned term)
  holdout = 0.25,       -- inner validation: hold out the tasks of the class found in the number of
                        -- training tasks nearest this fraction of them (ties: the smaller class id)
}

-- A value as float32: what a saved tensor gives back, so a loaded hybrid
-- scores the same bits.
local function f32(x) return core.tensor({x})[1] end

--- The gate of a typicality tau: clip((tau - lo) / (hi - lo), 0, 1); 0 for NaN.
function H.gate(tau, lo, hi)
  if tau ~= tau then return 0 end -- a model the network does not read: no learned term
  local x = (tau - lo) / math.max(hi - lo, 1e-6)
  return math.min(1, math.max(0, x))
end

--- Prototypes (C x e): the L2-normalized mean embedding of each label's
-- rows of E (labels 1..C).
function H.prototypes(E, labels)
  local C = 0
  for _, l in ipairs(labels) do C = math.max(C, l) end
  local mu, n = core.zeros(C, E:size(2)), {}
  for i, l in ipairs(labels) do
    mu[l]:add_(E[i])
    n[l] = (n[l] or 0) + 1
  end
  for c = 1, C do
    if not n[c] then error(("hybrid: label %d has no models"):format(c), 2) end
    mu[c]:div_(math.max(mu[c]:norm(), 1e-12))
  end
  return mu
end

--- Typicality of each row of E (unit rows): its largest cosine with a
-- prototype (a Lua list; NaN for a NaN row).
function H.typicality(E, mu)
  local S = core.matmul(E, mu, false, true):totable()
  local out = {}
  for i, row in ipairs(S) do
    local best = -math.huge
    for _, v in ipairs(row) do
      if v ~= v then best = 0 / 0 break end
      if v > best then best = v end
    end
    out[i] = best
  end
  return out
end

-- The q-quantile of a list (linear interpolation, as numpy's default), NaN ignored.
local function quantile(xs, q)
  local v = {}
  for _, x in ipairs(xs) do if x == x then v[#v + 1] = x end end
  if #v == 0 then error("hybrid: no finite typicality among the held-out models", 3) end
  table.sort(v)
  local pos = q * (#v - 1) + 1
  local i = math.floor(pos)
  if i >= #v then return v[#v] end
  return v[i] + (pos - i) * (v[i + 1] - v[i])
end
H.quantile = quantile

--- Raise (naming `what`, at the caller's caller, or at error level
-- `level` counted from here) unless p is a probe weight: a number in [0, 1].
function H.check_probe(p, what, level)
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then
    error(("%s must be a number in [0, 1], got %s"):format(what, tostring(p)), level or 3)
  end
end

-- The probe fields of t, fit options (prefix "", dreams false: the
-- defaults) or a saved state (prefix "state.", absent fields nil), named
-- "hybrid: <prefix><field>" in errors raised at the caller's caller.
local function check_probe_fields(t, prefix)
  local function fail(msg, ...) error(("hybrid: " .. msg):format(...), 4) end
  if t.probe ~= nil then H.check_probe(t.probe, "hybrid: " .. prefix .. "probe", 4) end
  if t.probe_bn ~= nil then H.check_probe(t.probe_bn, "hybrid: " .. prefix .. "probe_bn", 4) end
  if t.probe_bn_both ~= nil then H.check_probe(t.probe_bn_both, "hybrid: " .. prefix .. "probe_bn_both", 4) end
  for _, k in ipairs{"probe_directed", "probe_gate", "bn_residual"} do
    if t[k] ~= nil and type(t[k]) ~= "boolean" then fail("%s%s must be a boolean, got %s", prefix, k, tostring(t[k])) end
  end
  if t.probe_gate and t.gate == false then
    fail("%sprobe_gate needs gate = true (without the typicality gate every probe weight would be 0)", prefix)
  end
  -- what leaves the dreams at their defaults: false in options, nil in a state
  local options = prefix == ""
  local default = (options and t.dreams == false) or (not options and t.dreams == nil)
  if not default and type(t.dreams) ~= "table" then
    fail("%sdreams must be a table of dream options%s, got %s", prefix, options and " or false" or "", tostring(t.dreams))
  end
end

--- The anchor of two lists of models from their template-matching scores
-- TM: (1 - p) TM + p (probe matcher pm's scores; with directed, only a
-- reading b's dreams: pm.directed(a, b)); TM itself when p is 0 or nil.
-- p: a number, or a list of one weight in [0, 1] per model of a (row);
-- the rows of weight 0 are TM's bits, their probes never run.
function H.anchor(TM, pm, a, b, p, directed)
  if not p or p == 0 then return TM end
  local function probes(rows) return directed and pm.directed(rows, b) or pm.scores(rows, b) end
  if type(p) == "number" then return TM * (1 - p) + probes(a) * p end
  if type(p) ~= "table" or #p ~= #a then
    error(("hybrid.anchor: need one probe weight per query (%d), got %s"):format(#a, type(p) == "table" and #p or tostring(p)), 2)
  end
  local rows, at = {}, {}
  for i, x in ipairs(p) do
    if type(x) ~= "number" or not (x >= 0 and x <= 1) then
      error(("hybrid.anchor: probe weight %d must be in [0, 1], got %s"):format(i, tostring(x)), 2)
    end
    if x > 0 then rows[#rows + 1], at[#rows + 1] = a[i], i end
  end
  local out = TM:clone()
  if #rows == 0 then return out end
  local P = probes(rows)
  for k, i in ipairs(at) do out[i]:copy(TM[i] * (1 - p[i]) + P[k] * p[i]) end
  return out
end

-- The anchor's probe weight of a pair whose models have batch norm or not
-- (x, y): q2 where both have it, q where one has, 0 where neither.
local function bn_pair_weight(q, q2, x, y)
  if x and y then return q2 end
  return (x or y) and q or 0
end

--- The anchor TM (template matching's scores, or H.anchor's) with the pairs
-- where a model has batch norm (bn_a, bn_b: Lua lists of booleans, one per
-- model of a and b) replaced by (1 - q) TM + q P, P the batch-norm
-- model reading the other's dreams (pm.directed); where both have it, by
-- (1 - q2) TM + q2 (the mean of both directions), q2 = q when nil. Only
-- the readings a pair of positive weight needs run; TM itself (not a copy)
-- when no pair changes.
function H.anchor_bn(TM, pm, a, b, bn_a, bn_b, q, q2)
  H.check_probe(q, "hybrid.anchor_bn: q")
  if q2 == nil then q2 = q end
  H.check_probe(q2, "hybrid.anchor_bn: q2")
  if type(bn_a) ~= "table" or type(bn_b) ~= "table" or #bn_a ~= #a or #bn_b ~= #b then
    error(("hybrid.anchor_bn: need one flag per model, %d and %d, got %s and %s"):format(#a, #b,
      type(bn_a) == "table" and #bn_a or tostring(bn_a), type(bn_b) == "table" and #bn_b or tostring(bn_b)), 2)
  end
  local function weight(i, j) return bn_pair_weight(q, q2, bn_a[i], bn_b[j]) end
  -- who reads whom: a's batch-norm models read the dreams of the b models
  -- they pair with at a positive weight (rows ra, columns ca), and b's read a's
  local ra, ca, rb, cb = {}, {}, {}, {}
  for i = 1, #a do
    for j = 1, #b do
      if weight(i, j) > 0 then
        if bn_a[i] then ra[i], ca[j] = true, true end
        if bn_b[j] then rb[j], cb[i] = true, true end
      end
    end
  end
  local function read(readers, rows, dreamers, cols)
    local ri, ci, ro, co = {}, {}, {}, {}
    for i = 1, #readers do if rows[i] then ri[#ri + 1] = readers[i]; ro[i] = #ri end end
    for j = 1, #dreamers do if cols[j] then ci[#ci + 1] = dreamers[j]; co[j] = #ci end end
    if #ri == 0 then return nil end
    local D = pm.directed(ri, ci)
    return function(i, j) return D:get(ro[i], co[j]) end
  end
  local Da, Db = read(a, ra, b, ca), read(b, rb, a, cb)
  if not (Da or Db) then return TM end
  local out = TM:clone()
  for i = 1, #a do
    for j = 1, #b do
      local w = weight(i, j)
      if w > 0 then
        local P
        if bn_a[i] and bn_b[j] then P = (Da(i, j) + Db(j, i)) / 2
        elseif bn_a[i] then P = Da(i, j)
        else P = Db(j, i) end
        out:set(i, j, (1 - w) * TM:get(i, j) + w * P)
      end
    end
  end
  return out
end

-- Whether model m counts as a batch-norm model for anchor_bn under state or
-- options st (false when neither batch-norm weight is on: nothing to read).
local function bn_of(st, m)
  return ((st.probe_bn or 0) > 0 or (st.probe_bn_both or 0) > 0) and probe.has_batch_norm(m)
end

--- The gate of a model of typicality tau under state or options st: 1
-- without the typicality gate, else H.gate(tau, st.lo, st.hi); 0 for a
-- model the anchor reads by probe (bn: bn_of) unless st.bn_residual.
function H.model_gate(st, tau, bn)
  if bn and not st.bn_residual then return 0 end
  return H.typicality_gate(st, tau)
end

--- The typicality gate alone (no batch-norm rule): 1 without the gate,
-- else H.gate(tau, st.lo, st.hi). probe_gate weighs the anchor by it, so
-- that bn_residual changes the learned term and nothing of the anchor.
function H.typicality_gate(st, tau)
  return st.gate == false and 1 or H.gate(tau, st.lo, st.hi)
end

--- The probe weight of the anchor for a list of gates (the queries'
-- typicality gates, H.typicality_gate): p, or with probe_gate the list
-- p (1 - g_i).
function H.probe_weights(st, gates)
  if not st.probe_gate or not st.probe or st.probe == 0 then return st.probe end
  local out = {}
  for i, g in ipairs(gates) do out[i] = st.probe * (1 - g) end
  return out
end

--- The hybrid of pairwise scores: (1 - W) .* TM + W .* Cos with W = w g_a g_b^T
-- (ga, gb Lua lists). Where W is 0 the result is TM's bits, whatever Cos
-- holds there (NaN: a model the network does not read; or infinite).
function H.combine(TM, Cos, ga, gb, w)
  if w == 0 then return TM:clone() end
  local fa, fb = core.tensor(ga), core.tensor(gb) -- the gates as W has them (float32)
  local W = core.matmul(fa:reshape(#ga, 1), fb:reshape(#gb, 1), false, true):mul_(w)
  local s = Cos:sum()
  if not util.finite(s) then -- NaN or inf * 0 is NaN: pairs of weight 0 take 0 from Cos
    -- W is 0 on the rows and columns of a gate 0: zero those of Cos in C
    -- (a NaN cosine comes from a model's NaN embedding, whose typicality
    -- gate is 0); entrywise only if a product of nonzero gates underflows
    local za, zb, mina, minb = {}, {}, math.huge, math.huge
    for i = 1, #ga do local v = fa[i]; if v == 0 then za[#za + 1] = i elseif math.abs(v) < mina then mina = math.abs(v) end end
    for j = 1, #gb do local v = fb[j]; if v == 0 then zb[#zb + 1] = j elseif math.abs(v) < minb then minb = math.abs(v) end end
    Cos = Cos:clone()
    for _, i in ipairs(za) do Cos[i]:zero_() end
    if #zb > 0 then
      local Ct = Cos:t()
      for _, j in ipairs(zb) do Ct[j]:zero_() end
      Cos = Ct:t()
    end
    if mina < math.huge and minb < math.huge and core.tensor({mina * minb}):mul_(math.abs(w))[1] == 0 then
      local c, wf = Cos:reshape(-1), W:reshape(-1)
      for i = 1, c:numel() do if wf[i] == 0 and not util.finite(c[i]) then c[i] = 0 end end
    end
  end
  return TM * (-W + 1) + Cos * W
end

--- The w of grid with the best leave-one-out retrieval mAP of the models
-- (labels) among themselves under H.combine(TM, Cos, g, g, w) (ties: the
-- smaller w; a NaN pair, from a model the network does not read, ranks
-- last). Returns w and the mAP of every w (a list in grid order).
function H.choose_w(TM, Cos, g, labels, grid)
  local best, best_map, maps = nil, -math.huge, {}
  for k, w in ipairs(grid) do
    local S = H.combine(TM, Cos, g, g, w)
    local total = S:sum()
    if total ~= total then -- a NaN somewhere (a model the network does not read): it ranks last
      local flat = S:reshape(-1)
      for i = 1, flat:numel() do if flat[i] ~= flat[i] then flat[i] = -math.huge end end
    end
    maps[k] = eval.retrieval(S, labels, labels, {exclude_self = true}).map
    if maps[k] > best_map + 1e-9 then best, best_map = w, maps[k] end
  end
  return best, maps
end

--- The class whose held-out tasks validate the hybrid: models[i].classes
-- lists model i's task classes, y[i] its task. The class found in the
-- number of training tasks nearest fraction x their number (ties: the
-- smaller id) among those that leave at least 2 tasks on each side.
-- Returns it, the positions of the models whose task has it (held) and of
-- the others (keep); nil when no class does (too few tasks).
function H.holdout(models, y, fraction)
  local classes_of, ntasks, count = {}, 0, {}
  for i, m in ipairs(models) do
    if type(m.classes) ~= "table" or #m.classes == 0 then
      error(("hybrid: the inner validation needs each training model's task classes (model %d has no `classes`)"):format(i), 3)
    end
    if not classes_of[y[i]] then
      classes_of[y[i]], ntasks = m.classes, ntasks + 1
      for _, c in ipairs(m.classes) do count[c] = (count[c] or 0) + 1 end
    end
  end
  local ids = {}
  for c in pairs(count) do ids[#ids + 1] = c end
  local target = fraction * ntasks
  table.sort(ids, function(a, b)
    local da, db = math.abs(count[a] - target), math.abs(count[b] - target)
    if da ~= db then return da < db end
    return a < b
  end)
  for _, c in ipairs(ids) do
    if count[c] >= 2 and ntasks - count[c] >= 2 then
      local held, keep = {}, {}
      for i in ipairs(models) do
        local has = false
        for _, x in ipairs(classes_of[y[i]]) do has = has or x == c end
        if has then held[#held + 1] = i else keep[#keep + 1] = i end
      end
      return c, held, keep
    end
  end
  return nil
end

-- The pooling (a tdim x R*(side/tm_pool)^2 matrix) taking a network's
-- template rows (R ranges of (side/template_pool)^2 columns, then any
-- extras) to TM rows.
local function tm_pooling(net, tm_pool)
  net.tm_pooling = net.tm_pooling or {}
  local Q = net.tm_pooling[tm_pool]
  if Q then return Q end
  local o = net.opts
  local side = o.input_shape[#o.input_shape] // o.template_pool
  local f = tm_pool // o.template_pool
  if tm_pool % o.template_pool ~= 0 or side % f ~= 0 then
    error(("hybrid: tm_pool %d must be a multiple of the network's template_pool %d that divides the image side")
      :format(tm_pool, o.template_pool), 4)
  end
  local n, R = side // f, #o.noise_ranges
  Q = core.zeros(net.tdim, R * n * n)
  for r = 0, R - 1 do
    for i = 0, side - 1 do
      for j = 0, side - 1 do
        Q:set(r * side * side + i * side + j + 1, r * n * n + (i // f) * n + j // f + 1, 1 / (f * f))
      end
    end
  end
  net.tm_pooling[tm_pool] = Q
  return Q
end

-- Template matching's own rows, one memoizing function per tm_pool.
local matching_of = {}
local function matching_rows(model, tm_pool)
  matching_of[tm_pool] = matching_of[tm_pool] or match.templates_of(tm_pool)
  return matching_of[tm_pool](model)
end

--- The TM rows of a model (k x d, unit rows), or false when they are not
-- finite: with source "matching" (the default), template matching's own
-- (lps.benchmark.methods.template_matching's scores to the bit); with
-- "network", network net's class templates re-pooled to
-- R*(28/tm_pool)^2 columns.
function H.tm_rows(net, model, tm_pool, source)
  if (source or "matching") == "matching" then return matching_rows(model, tm_pool) end
  if not (net.has_slot and net:has_slot("templates")) then
    error("hybrid: needs a network with the templates slot (lps.similarity.network{families = ...})", 2)
  end
  local p = net:prepare(model)
  local X = core.matmul(p.T, tm_pooling(net, tm_pool))
  local norms = (X * X):sum(2):sqrt()
  for c = 1, X:size(1) do X[c]:div_(math.max(norms[c], 1e-12)) end
  local s = X:sum()
  return s == s and X or false
end

local Hybrid = {}
Hybrid.__index = Hybrid

--- A hybrid similarity of network net and state {w, lo, hi, gate, tm_pool,
-- tm_templates (default "network": what files saved before it used), probe
-- (default 0: what files saved before it used), probe_directed and
-- probe_gate (default false), probe_bn (default 0: what files saved before it
-- used), probe_bn_both (default probe_bn), bn_residual (default false),
-- dreams (default: probe matching's defaults), mu
-- (prototypes)}; embed(models) gives the embeddings (default
-- net:embed; NaN rows for models it does not read). Methods:
-- similarity(a, b) for two lists of models, describe(models).
function H.new(net, state, embed)
  if not (type(net) == "table" and type(net.opts) == "table" and type(net.embed) == "function") then
    error(("hybrid: expected a network (lps.similarity.network), got %s"):format(type(net)), 2)
  end
  if type(state) ~= "table" then error(("hybrid: state must be a table, got %s"):format(type(state)), 2) end
  if embed ~= nil and type(embed) ~= "function" then
    error(("hybrid: embed must be a function(models) -> embeddings, got %s"):format(type(embed)), 2)
  end
  for _, k in ipairs{"w", "lo", "hi", "tm_pool"} do
    if type(state[k]) ~= "number" or state[k] ~= state[k] then
      error(("hybrid: state.%s must be a number, got %s"):format(k, tostring(state[k])), 2)
    end
  end
  check_probe_fields(state, "state.")
  if state.tm_templates ~= nil and state.tm_templates ~= "matching" and state.tm_templates ~= "network" then
    error(("hybrid: state.tm_templates must be 'matching' or 'network', got %s"):format(tostring(state.tm_templates)), 2)
  end
  if not core.is_tensor(state.mu) or state.mu:dim() ~= 2 or state.mu:size(2) ~= net.opts.embed then
    error(("hybrid: state.mu must be a C x %d tensor of prototypes"):format(net.opts.embed), 2)
  end
  return setmetatable({net = net, state = state, embed = embed or function(ms) return net:embed(ms) end,
                       memo = setmetatable({}, {__mode = "k"}), probes = probe.matcher(state.dreams)}, Hybrid)
end

--- Each model's {e (its embedding row), tau (its typicality), g (its gate,
-- H.model_gate), gt (its typicality gate, H.typicality_gate: probe_gate's),
-- rows (its TM rows or false), bn}, computed once per model; step, if
-- given, is called after each new model's rows (a progress display).
function Hybrid:describe(models, step)
  if type(models) ~= "table" then error(("hybrid: describe needs a list of models, got %s"):format(type(models)), 2) end
  local st, missing = self.state, {}
  for _, m in ipairs(models) do if not self.memo[m] then missing[#missing + 1] = m end end
  if #missing > 0 then
    local E = self.embed(missing)
    local tau = H.typicality(E, st.mu)
    for i, m in ipairs(missing) do
      local bn = bn_of(st, m)
      self.memo[m] = {e = E[i]:clone(), tau = tau[i], g = H.model_gate(st, tau[i], bn), gt = H.typicality_gate(st, tau[i]),
                      rows = H.tm_rows(self.net, m, st.tm_pool, st.tm_templates or "network"), bn = bn}
      if step then step() end
    end
  end
  local out = {}
  for i, m in ipairs(models) do out[i] = self.memo[m] end
  return out
end

--- The |a| x |b| hybrid scores of two lists of models (NaN: not comparable,
-- where the anchor is NaN, or with gate = false where the network gives a
-- model a NaN embedding; with the gate such a model keeps the anchor's score).
function Hybrid:similarity(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then
    error(("hybrid: similarity needs two lists of models, got %s and %s"):format(type(a), type(b)), 2)
  end
  local da, db = self:describe(a), self:describe(b)
  local rows = {}
  for i, m in ipairs(a) do rows[m] = da[i].rows end
  for i, m in ipairs(b) do rows[m] = db[i].rows end
  local qg = {}
  for i, d in ipairs(da) do qg[i] = d.gt end -- the anchor's probe weights: typicality alone
  local TM = H.anchor(match.scores(function(m) return rows[m] end, a, b), self.probes, a, b,
                      H.probe_weights(self.state, qg), self.state.probe_directed)
  local bn_a, bn_b = {}, {}
  for i, d in ipairs(da) do bn_a[i] = d.bn end
  for j, d in ipairs(db) do bn_b[j] = d.bn end
  TM = H.anchor_bn(TM, self.probes, a, b, bn_a, bn_b, self.state.probe_bn or 0, self.state.probe_bn_both)
  local w = self.state.w
  if w == 0 then return TM end
  local Ea, Eb = core.zeros(#a, self.net.opts.embed), core.zeros(#b, self.net.opts.embed)
  local ga, gb = {}, {}
  for i, d in ipairs(da) do Ea[i]:copy(d.e); ga[i] = d.g end
  for j, d in ipairs(db) do Eb[j]:copy(d.e); gb[j] = d.g end
  return H.combine(TM, core.matmul(Ea, Eb, false, true), ga, gb, w)
end

--- The work a first comparison with models b does once (their TM rows
-- and embeddings, and their dreams where a batch-norm model of a will read
-- them), done ahead with step() after each model's part: how many steps
-- that is comes first (count_only = true returns it without the work).
function Hybrid:warm(a, b, step, count_only)
  if type(a) ~= "table" or type(b) ~= "table" then
    error(("hybrid: warm needs two lists of models, got %s and %s"):format(type(a), type(b)), 2)
  end
  if not count_only and type(step) ~= "function" then error(("hybrid: warm needs a step function, got %s"):format(type(step)), 2) end
  local st, new, reads = self.state, 0, false
  for _, d in ipairs(self:describe(a)) do reads = reads or d.bn end
  for _, m in ipairs(b) do if not self.memo[m] then new = new + 1 end end
  local dreams = {}
  if reads then -- a's batch-norm models read the dreams of b's models they pair with at a positive weight
    local q = st.probe_bn or 0
    local q2 = st.probe_bn_both == nil and q or st.probe_bn_both -- as Hybrid:similarity passes them to anchor_bn
    for _, m in ipairs(b) do
      if bn_pair_weight(q, q2, true, bn_of(st, m)) > 0 and not self.probes.has_dreams(m) then dreams[#dreams + 1] = m end
    end
  end
  if count_only then return new + #dreams end
  self:describe(b, step)
  for _, m in ipairs(dreams) do self.probes.dreams_of(m); step() end
  return new + #dreams
end

--- Scores S (|a| x |b|, a's rows over b) put on one scale per row for
-- ranking b: the anchor reads a pair by probe where a batch-norm model is in
-- it and by template matching elsewhere, two scales in one row (in a zoo of
-- MLPs, CNNs and ResNets, ResNets topped the lists of every family's
-- queries). So each row is z-scored within each group of b (bn_b[j]: the
-- batch-norm models, and the others), leaving out pair (i, j) where
-- a[i] == b[j] (a model against itself) and non-finite scores. A group of
-- one, or of equal scores, is placed at z 0. A row whose b is of one kind
-- is z-scored as one group: its order is its scores'. Returns a new tensor
-- (NaN and -inf stay as they are).
function H.group_z(S, a, b, bn_b)
  for k, x in ipairs{a, b, bn_b} do
    if type(x) ~= "table" then
      error(("hybrid.group_z: %s must be a list, got %s"):format(({"a", "b", "bn_b"})[k], type(x)), 2)
    end
  end
  if not (core.is_tensor(S) and S:dim() == 2 and S:size(1) == #a and S:size(2) == #b) then
    error(("hybrid.group_z: S must be a %d x %d tensor (|a| x |b|), got %s"):format(#a, #b,
      core.is_tensor(S) and table.concat(S:shape(), " x ") or type(S)), 2)
  end
  if #bn_b ~= #b then error(("hybrid.group_z: need one flag per gallery model, %d, got %d"):format(#b, #bn_b), 2) end
  local out = S:clone()
  for i = 1, #a do
    local row = S[i]:totable()
    local z = table.move(row, 1, #row, 1, {})
    for _, kind in ipairs{true, false} do
      local group, m, ss = {}, 0, 0 -- the kind's finite scores; the model itself counts in no mean or sd
      for j = 1, #b do
        if bn_b[j] == kind and util.finite(row[j]) then group[#group + 1] = j end
      end
      local n = 0
      for _, j in ipairs(group) do if a[i] ~= b[j] then n, m = n + 1, m + row[j] end end
      if n > 0 then
        m = m / n
        for _, j in ipairs(group) do if a[i] ~= b[j] then ss = ss + (row[j] - m) ^ 2 end end
        local sd = math.sqrt(ss / n)
        for _, j in ipairs(group) do z[j] = sd > 0 and (row[j] - m) / sd or 0 end
      end
    end
    if #b > 0 then out[i]:copy(core.tensor(z)) end
  end
  return out
end

--- The |a| x |b| scores by which each of a ranks b: the hybrid's scores
-- z-scored per row within b's batch-norm models and within the others
-- (H.group_z). On the training tasks of ModelSet-Hetero 2's retrieval
-- split, each model against every other model of those tasks (a zoo of
-- every family): ResNet queries rank-1 0.522 -> 0.644, MLP and CNN queries
-- 0.737 -> 0.986 (a ResNet had topped 534 of their 1125 lists).
-- Returns the ranking scores, the hybrid's scores and whether b holds
-- models of both kinds (else the ranking is the scores themselves).
function Hybrid:rank(a, b)
  local S = self:similarity(a, b)
  local bn, kinds = {}, {}
  for j, d in ipairs(self:describe(b)) do bn[j] = d.bn and true or false; kinds[bn[j]] = true end
  local mixed = (kinds[true] and kinds[false]) or false
  return mixed and H.group_z(S, a, b, bn) or S, S, mixed
end

--- Fit the hybrid: train(models, y) trains a network on models with task
-- labels y and returns {net =, embed = function(models) -> E}. The inner
-- validation holds out the tasks of one class (H.holdout), trains on the
-- others, sets lo and hi from the held-out models' typicality and chooses
-- w on their leave-one-out retrieval; then the network is trained on every
-- model and the prototypes are its task means. opts: H.defaults. Returns
-- the state {w, lo, hi, gate, tm_pool, tm_templates, probe, probe_directed, probe_gate, probe_bn, probe_bn_both,
-- bn_residual, dreams, mu, held_class, maps} and the main
-- training's result. With too few tasks to hold any class out (H.holdout),
-- w is 0 (template matching alone) and held_class nil.
function H.fit(train, models, y, opts)
  local o = util.options(opts, H.defaults, "hybrid")
  if type(o.w_grid) ~= "table" or #o.w_grid < 1 then error("hybrid: w_grid must be a non-empty list", 2) end
  for _, w in ipairs(o.w_grid) do
    if type(w) ~= "number" or not (w >= 0 and w <= 1) then error(("hybrid: w_grid values must be in [0, 1], got %s"):format(tostring(w)), 2) end
  end
  check_probe_fields(o, "")
  local dreams = probe.settings(o.dreams or nil)
  if o.tm_templates ~= "matching" and o.tm_templates ~= "network" then
    error(("hybrid: tm_templates must be 'matching' or 'network', got %s"):format(tostring(o.tm_templates)), 2)
  end
  if not (o.lo_quantile >= 0 and o.lo_quantile < o.hi_quantile and o.hi_quantile <= 1) then
    error(("hybrid: need 0 <= lo_quantile < hi_quantile <= 1, got %s and %s"):format(o.lo_quantile, o.hi_quantile), 2)
  end
  local function sub(list, idx)
    local out = {}
    for k, i in ipairs(idx) do out[k] = list[i] end
    return out
  end
  local function dense(labels) -- raw labels to 1..C
    local map, out, n = {}, {}, 0
    local sorted = {table.unpack(labels)}
    table.sort(sorted)
    for _, t in ipairs(sorted) do if not map[t] then n = n + 1; map[t] = n end end
    for k, t in ipairs(labels) do out[k] = map[t] end
    return out
  end
  local c, held, keep = H.holdout(models, y, o.holdout)
  if not c then
    local main = train(models, y)
    local mu = H.prototypes(main.embed(models), dense(y))
    local tau = H.typicality(main.embed(models), mu)
    return {w = 0, lo = f32(quantile(tau, o.lo_quantile)), hi = f32(quantile(tau, o.hi_quantile)), gate = o.gate,
            tm_pool = o.tm_pool, tm_templates = o.tm_templates, probe = o.probe, probe_directed = o.probe_directed,
            probe_gate = o.probe_gate, probe_bn = o.probe_bn, probe_bn_both = o.probe_bn_both, bn_residual = o.bn_residual,
            dreams = dreams, mu = mu, maps = {}}, main
  end
  local km, ky, hm, hy = sub(models, keep), sub(y, keep), sub(models, held), sub(y, held)
  local inner = train(km, ky)
  local mu = H.prototypes(inner.embed(km), dense(ky))
  local Eh = inner.embed(hm)
  local tau = H.typicality(Eh, mu)
  local lo, hi = f32(quantile(tau, o.lo_quantile)), f32(quantile(tau, o.hi_quantile))
  local bn, g, gt = {}, {}, {} -- w is chosen on the anchor and the gates the hybrid scores with
  local gst = {gate = o.gate, lo = lo, hi = hi, bn_residual = o.bn_residual}
  for i, m in ipairs(hm) do
    bn[i] = bn_of(o, m)
    g[i], gt[i] = H.model_gate(gst, tau[i], bn[i]), H.typicality_gate(gst, tau[i])
  end
  local rows = {}
  for _, m in ipairs(hm) do rows[m] = H.tm_rows(inner.net, m, o.tm_pool, o.tm_templates) end
  local pm = probe.matcher(dreams)
  local TM = H.anchor(match.scores(function(m) return rows[m] end, hm, hm), pm, hm, hm,
                      H.probe_weights(o, gt), o.probe_directed)
  TM = H.anchor_bn(TM, pm, hm, hm, bn, bn, o.probe_bn, o.probe_bn_both)
  local w, maps = H.choose_w(TM, core.matmul(Eh, Eh, false, true), g, dense(hy), o.w_grid)
  local main = train(models, y)
  local state = {w = f32(w), lo = lo, hi = hi, gate = o.gate, tm_pool = o.tm_pool, tm_templates = o.tm_templates, probe = o.probe,
                 probe_directed = o.probe_directed, probe_gate = o.probe_gate, probe_bn = o.probe_bn,
                 probe_bn_both = o.probe_bn_both, bn_residual = o.bn_residual, dreams = dreams,
                 mu = H.prototypes(main.embed(models), dense(y)), held_class = c, maps = maps}
  return state, main
end

return H
