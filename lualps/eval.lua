--- lualps.eval: the baselines LPS is compared with, and the evaluation metrics.
--
-- A model is a Lua array of tensors in PyTorch layout, {W1, b1, W2, b2, ...,
-- WL, bL}, L >= 2 weight layers, ReLU between them. Without a `.spec` field
-- it is an MLP (W_l is h_l x h_{l-1}). A CNN also carries `.spec`, its lps.nn
-- sequential spec (and may carry `.family`, "mlp" or "cnn", checked against
-- the spec): conv2d layers (W cout x cin x k x k) each followed by ReLU and
-- optionally max-pooling, one flatten (channel-major, as PyTorch), then
-- linear layers with ReLU between; the last layer (the head) is linear.
-- A CNN's inputs are rows of cin*s*s values (square images: N x 784 for
-- Fashion-MNIST is N x 1 x 28 x 28). The hidden layers are 1..L-1; a conv
-- layer's units are its output channels.
--
-- Every baseline gives, through `similarity_matrix`, a queries x gallery
-- matrix (larger = more similar), so the evaluation treats them alike. NaN
-- marks a pair the baseline cannot compare (callers exclude such pairs):
--
--   raw       cosine of the flattened parameters (W1, b1, W2, b2, ... row-major).
--             Same architecture only (layer shapes, strides, padding and
--             pooling): NaN between different architectures
--   sorted    units of each hidden layer sorted by decreasing norm of (incoming
--             weights, bias), next layer's columns following; then as raw.
--             CNNs: channels by the norm of (kernel, bias); the next conv's
--             input channels or the next linear layer's block of h*w columns
--             of the channel follow. Same architecture only (NaN otherwise)
--   stats     any architecture (Unterthiner et al. 2020): per tensor, mean,
--             variance (population), quantiles 0, .25, .5, .75, 1 (linear
--             interpolation), of three slots: the first layer (W, b), the
--             last hidden layer (W, b), the head (W, b); 42 features for
--             every model. One hidden layer fills both first slots with it;
--             two hidden layers give exactly W1, b1, W2, b2, W3, b3 (as
--             before the slots: ModelSet500's features are unchanged); deeper
--             models skip their middle layers. Cosine after standardizing
--             each feature (fit on the union of the two sets, or opts.mean /
--             opts.sd, e.g. from training models)
--   gram      first layer. MLP: Gram matrix W1n' W1n of the row-normalized
--             first layer, the input pixels average-pooled pool x pool first
--             (opts.pool, default 2: 28x28 -> 14x14 -> 196 x 196). CNN: each
--             output channel's kernel (cin x k x k, odd k <= 5) centred in
--             cin x 5 x 5 zeros and scaled to unit norm, rows of K (cout x
--             25 cin); G = K' K (25 cin x 25 cin; 325 features for cin 1),
--             invariant to the order of the channels; opts.pool is ignored.
--             Features are the upper triangle with the diagonal, off-diagonal
--             entries times sqrt 2, so their dot product is the Frobenius
--             product of the Grams (MLP pool 2: 19,306 features; pool 1:
--             307,720; pool 4: 1,225). MLP and CNN Grams live in different
--             spaces: NaN between the families
--   matching  Git Re-Basin weight matching of each gallery model to the query
--             model (alternating linear assignment over hidden layers, own
--             solver; started from a layer-by-layer match on incoming weights,
--             and from the identity too when that scores higher), then cosine
--             of the aligned parameters (no data). CNNs: over conv channels,
--             a layer's permutation acting on the next conv's input channels
--             or the next linear layer's column blocks. Same architecture
--             only (NaN otherwise)
--   cka       linear CKA of the hidden activations on opts.probe (N x d):
--             post-ReLU, and for conv layers post-pooling maps flattened per
--             image (any architecture, an MLP against a CNN too; needs
--             data). Hidden layer l of a model with L of them covers
--             ((l-1)/L, l/L] of the depth; two models' CKA is the mean over
--             depth of the CKA of the layers covering it: sum over (l, m) of
--             overlap * CKA(l, m). Same depth: the mean over layers of
--             CKA(layer l, layer l); 2 vs 3 hidden layers: 1/3 (1,1) + 1/6
--             (1,2) + 1/6 (2,2) + 1/3 (2,3). cka_features gives the same
--             values as dot products: one slot per piece of the depth cut at
--             every k/L of the depths present
--
-- Indices and cluster ids are 1-based; labels are any integers.
local core = require "lualps.core"
local util = require "lualps.util"
local C = core._eval

local M = {}

M.methods = {"raw", "sorted", "stats", "gram", "matching", "cka"}
local feature_methods = {raw = true, sorted = true, stats = true, gram = true}

--- Fixed-length feature vector (1-D tensor) of one model (MLP or CNN);
-- method is one of raw, sorted, stats, gram. opts.pool applies to an MLP's gram.
function M.features(method, model, opts)
  return C.features(method, model, opts)
end

--- Features of many models as an (n x f) tensor. raw and sorted need one
-- architecture, gram one family (an error otherwise; similarity_matrix
-- compares mixed sets); stats takes any models.
function M.feature_matrix(method, models, opts)
  return C.feature_matrix(method, models, opts)
end

M.standardize = C.standardize     -- (x [, mean, sd]) -> x, mean, sd
M.cosine_matrix = C.cosine_matrix -- (A (na x f), B (nb x f)) -> na x nb
M.forward = C.forward             -- (model, x (N x d)) -> N x out
M.hidden = C.hidden               -- (model, x) -> {post-ReLU (conv: and pooled, flattened) acts per hidden layer}
M.permute = C.permute             -- (model, perms) -> new model, same function (perms: units / conv channels)
M.sort_perm = C.sort_perm         -- (model) -> perms of the `sorted` order
M.linear_cka = C.linear_cka       -- (X (N x p), Y (N x q)) -> number

--- Linear CKA of two models given their layers' activations on the same N
-- inputs (acts_a, acts_b: lists of N x p matrices, shallow to deep; any
-- layer kind, e.g. flattened conv maps), paired by relative depth: layer l
-- of L covers ((l-1)/L, l/L] of the depth, and the result is the mean over
-- depth of linear_cka of the two covering layers. Same depth: the mean over
-- l of linear_cka(acts_a[l], acts_b[l]). Layers wider than N go through
-- their N x N Gram matrices (the same value, less work).
function M.cka_layers(acts_a, acts_b) return C.cka_layers(acts_a, acts_b) end
M.symeig = C.symeig               -- (A) -> eigenvalues (increasing), vectors (columns)

local finite = util.finite

--- Ridge regression fitted on the rows of X (n x e) with targets y (a list
-- of n numbers): X centred by its column means and y by its mean; lambda =
-- rho * trace / e (rho default 1e-3) plus 1e-9. Solved in the smaller of
-- the feature and the sample space (the same solution). Returns {center
-- (1 x e), w (e x 1), ymean} for M.ridge_apply. Raises, naming it, on a bad
-- argument: X not a non-empty matrix or not finite, a y value not a finite
-- number, rho not a number >= 0.
function M.ridge_fit(X, y, rho)
  if not (core.is_tensor(X) and X:dim() == 2 and X:numel() > 0) then
    error(("ridge_fit: X must be a non-empty n x e tensor, got %s"):format(core.is_tensor(X)
      and table.concat(X:shape(), "x") or type(X)), 2)
  end
  local n, e = X:size(1), X:size(2)
  if type(y) ~= "table" then error(("ridge_fit: y must be a list of %d numbers, got %s"):format(n, type(y)), 2) end
  if #y ~= n then error(("ridge_fit: X is %dx%d, y has %d values"):format(n, e, #y), 2) end
  for k = 1, n do
    if not finite(y[k]) then error(("ridge_fit: y[%d] is %s (need a finite number)"):format(k, tostring(y[k])), 2) end
  end
  if rho ~= nil and not (finite(rho) and rho >= 0) then
    error(("ridge_fit: rho must be a number >= 0, got %s"):format(tostring(rho)), 2)
  end
  if not finite(X:sum()) then error("ridge_fit: X has a non-finite value", 2) end
  local mean, ymean = X:mean(1), 0
  for _, a in ipairs(y) do ymean = ymean + a / #y end
  X = X - mean
  local yc = core.tensor(y):reshape(n, 1) - ymean
  local primal = e <= n
  local G = primal and core.matmul(X, X, true, false) or core.matmul(X, X, false, true)
  local m = G:size(1)
  local tr = 0
  for i = 1, m do tr = tr + G:get(i, i) end
  if not finite(G:sum()) then -- finite X whose products overflow float32
    error("ridge_fit: X's values are too large for float32 (its Gram matrix overflows)", 2)
  end
  for i = 1, m do G:set(i, i, G:get(i, i) + (rho or 1e-3) * tr / e + 1e-9) end
  local rhs = primal and core.matmul(X, yc, true, false) or yc
  local vals, vecs = M.symeig(G)
  local c = core.matmul(vecs, rhs, true, false)
  for i = 1, m do c:set(i, 1, c:get(i, 1) / vals[i]) end
  local sol = core.matmul(vecs, c) -- primal: w (e x 1); dual: alpha (n x 1), w = X^T alpha
  return {center = mean, w = primal and sol or core.matmul(X, sol, true, false), ymean = ymean}
end

--- Predictions of a ridge fit (M.ridge_fit) for the rows of Xt (m x e): a
-- list of m numbers.
function M.ridge_apply(fit, Xt)
  if not (type(fit) == "table" and core.is_tensor(fit.w) and fit.w:dim() == 2 and fit.w:size(2) == 1
      and core.is_tensor(fit.center) and fit.center:numel() == fit.w:size(1) and finite(fit.ymean)) then
    error("ridge_apply: not a ridge fit (ridge_fit's center (1 x e), w (e x 1) and finite ymean)", 2)
  end
  if not (core.is_tensor(Xt) and Xt:dim() == 2) then
    error(("ridge_apply: Xt must be an m x e tensor, got %s"):format(core.is_tensor(Xt)
      and table.concat(Xt:shape(), "x") or type(Xt)), 2)
  end
  if Xt:size(2) ~= fit.w:size(1) then
    error(("ridge_apply: the fit has %d features, Xt has %d columns"):format(fit.w:size(1), Xt:size(2)), 2)
  end
  local pred = core.matmul(Xt - fit.center, fit.w):reshape(-1):totable()
  for k = 1, #pred do pred[k] = pred[k] + fit.ymean end
  return pred
end

--- Ridge regression: predictions for the rows of Xt (m x e) of the linear
-- model of targets y on the rows of X (M.ridge_fit, then M.ridge_apply).
function M.ridge_predict(X, y, Xt, rho)
  if not (core.is_tensor(X) and X:dim() == 2 and type(y) == "table" and core.is_tensor(Xt) and Xt:dim() == 2) then
    error(("ridge_predict: expected X (an n x e tensor), y (a list of n numbers) and Xt (an m x e tensor), got %s, %s "
      .. "and %s"):format(core.is_tensor(X) and "a tensor" or type(X), type(y), core.is_tensor(Xt) and "a tensor" or type(Xt)), 2)
  end
  if #y ~= X:size(1) or Xt:size(2) ~= X:size(2) then
    error(("ridge_predict: X is %dx%d, y has %d values, Xt has %d columns"):format(X:size(1), X:size(2), #y, Xt:size(2)), 2)
  end
  return M.ridge_apply(M.ridge_fit(X, y, rho), Xt)
end

--- Linear assignment: cost (n x m tensor) -> assignment (1-based column of
-- each row; 0 when n > m leaves the row out) and its total. Minimizes unless
-- maximize is true.
function M.assign(cost, maximize) return C.assign(cost, maximize) end

--- Git Re-Basin weight matching of model b to model a (one architecture;
-- CNNs over conv channels): perms (one array per hidden layer;
-- M.permute(b, perms) is b aligned to a), the cosine of a and aligned b,
-- and the sweeps used. opts.max_iter (100), opts.generator (visit layers in
-- random order; default in order).
function M.weight_matching(a, b, opts) return C.weight_matching(a, b, opts) end

-- Group indices by key: key -> list of indices, and the keys in first-seen order.
local function groups(keys)
  local g, order = {}, {}
  for i, k in ipairs(keys) do
    if not g[k] then g[k] = {}; order[#order + 1] = k end
    table.insert(g[k], i)
  end
  return g, order
end

-- Cosine of raw, sorted or gram features where comparable (equal keys:
-- same architecture, or same gram space), NaN elsewhere.
local function feature_cosine(method, models_a, models_b, opts)
  local ka = C.feature_keys(method, models_a, opts)
  local kb = C.feature_keys(method, models_b, opts)
  local one = true
  for _, k in ipairs(ka) do one = one and k == ka[1] end
  for _, k in ipairs(kb) do one = one and k == ka[1] end
  if one then
    return C.cosine_matrix(C.feature_matrix(method, models_a, opts),
      C.feature_matrix(method, models_b, opts))
  end
  local out = core.full(#models_a, #models_b, math.abs(0 / 0)) -- a NaN without sign
  local ga, order = groups(ka)
  local gb = groups(kb)
  for _, k in ipairs(order) do
    if gb[k] then
      local sa, sb = {}, {}
      for c, i in ipairs(ga[k]) do sa[c] = models_a[i] end
      for c, j in ipairs(gb[k]) do sb[c] = models_b[j] end
      C.place(out, C.cosine_matrix(C.feature_matrix(method, sa, opts),
        C.feature_matrix(method, sb, opts)), ga[k], gb[k])
    end
  end
  return out
end

--- Similarity of two sets of models (queries x gallery tensor) by a baseline.
-- opts: pool (gram), mean/sd (stats), max_iter/generator (matching),
-- probe (cka, required; models of any depths and families, paired as in
-- cka_layers). Sets may mix architectures and families (MLPs and CNNs):
-- raw, sorted and matching give NaN between different architectures, gram
-- between an MLP and a CNN (see the header); stats and cka compare all.
function M.similarity_matrix(method, models_a, models_b, opts)
  opts = opts or {}
  if method == "stats" then
    local fa = C.feature_matrix(method, models_a, opts)
    local fb = C.feature_matrix(method, models_b, opts)
    local mean, sd = opts.mean, opts.sd
    if not mean then
      -- standardize on both sets together: stack rows of fa and fb
      local na, nb, f = fa:size(1), fb:size(1), fa:size(2)
      local all = core.zeros(na + nb, f)
      all:rows(1, na):copy(fa)
      all:rows(na + 1, na + nb):copy(fb)
      local _
      _, mean, sd = C.standardize(all)
    end
    C.standardize(fa, mean, sd)
    C.standardize(fb, mean, sd)
    return C.cosine_matrix(fa, fb)
  elseif feature_methods[method] then
    return feature_cosine(method, models_a, models_b, opts)
  elseif method == "matching" then
    return C.matching_matrix(models_a, models_b, opts)
  elseif method == "cka" then
    if not opts.probe then error("similarity_matrix: cka needs opts.probe (an N x d tensor of inputs)", 2) end
    return C.cka_matrix(models_a, models_b, opts.probe)
  end
  error("similarity_matrix: unknown method '" .. tostring(method) ..
    "' (raw, sorted, stats, gram, matching, cka)", 2)
end

-- Relative-depth slots: the union of the breakpoints k/L (k = 0..L) of every
-- depth L, as exact fractions {num, den}, in increasing order. Consecutive
-- breakpoints bound a slot that lies within one layer of every such depth.
local function depth_slots(depths)
  local pts = {}
  for _, L in ipairs(depths) do
    for k = 0, L do pts[#pts + 1] = {k, L} end
  end
  table.sort(pts, function(x, y) return x[1] * y[2] < y[1] * x[2] end)
  local slots = {}
  for i = 2, #pts do
    local a, b = pts[i - 1], pts[i]
    local num, den = b[1] * a[2] - a[1] * b[2], a[2] * b[2]
    if num > 0 then
      -- inv = 1 / length, exact for one depth (L*L / L = L): today's 1/sqrt(L) scaling
      slots[#slots + 1] = {start = a, inv = den / num}
    end
  end
  return slots
end

-- The slots of the depths present, or of opts.depths (which must hold them).
local function layout_slots(depths, opts, op, level)
  if opts.depths then
    local ok = type(opts.depths) == "table" and #opts.depths > 0
    for _, D in ipairs(ok and opts.depths or {}) do ok = ok and math.type(D) == "integer" and D >= 1 end
    if not ok then error(("%s: opts.depths must be a non-empty list of positive integers"):format(op), level) end
    for _, L in ipairs(depths) do
      local ok = false
      for _, D in ipairs(opts.depths) do ok = ok or D == L end
      if not ok then
        error(("%s: a model has %d layers, not among opts.depths"):format(op, L), level)
      end
    end
    depths = opts.depths
  end
  return depth_slots(depths)
end

-- Row i of F: in each slot the covering layer's centred Gram matrix
-- K = Xc Xc^T, normalized to unit Frobenius norm, times sqrt(slot length).
local function fill_cka_row(F, i, list, slots, op, level)
  local L = #list
  local n = list[1]:size(1)
  local n2 = n * n
  local K, nrm, cur = nil, nil, 0
  for s, slot in ipairs(slots) do
    local l = slot.start[1] * L // slot.start[2] + 1 -- the layer covering the slot
    if l ~= cur then
      local Xc = list[l] - list[l]:mean(1)
      K = core.matmul(Xc, Xc, false, true)
      nrm, cur = K:norm(), l
      if nrm ~= nrm or nrm == math.huge then
        error(("%s: model %d layer %d has non-finite activations"):format(op, i, l), level)
      end
    end
    F[i]:rows((s - 1) * n2 + 1, s * n2):copy(K:reshape(n2))
      :mul_(nrm > 0 and 1 / (nrm * math.sqrt(slot.inv)) or 0)
  end
end

--- Features whose dot products are the linear CKA of models given by their
-- layers' activations: acts[i] is model i's list of N x p_l matrices (same N
-- for all, shallow to deep; any layer kind, e.g. flattened conv maps). Models
-- of different depths are paired by relative depth as in cka_layers: the depth
-- is cut into slots at every k/L of every depth L present (or opts.depths,
-- to lay out features comparable across calls), and a model's slot holds its
-- covering layer's centred Gram matrix K = Xc Xc^T, normalized to unit
-- Frobenius norm and scaled by sqrt(slot length), flattened (N^2 values per
-- slot). One depth L: L slots, layer l in slot l, scaled by 1/sqrt(L).
function M.cka_layer_features(acts, opts)
  opts = util.options(opts, {}, "cka_layer_features", {"depths"})
  if type(acts) ~= "table" or #acts < 1 then
    error("cka_layer_features: needs a non-empty list of models' activation lists", 2)
  end
  local np
  local seen, depths = {}, {}
  for i = 1, #acts do
    local list = acts[i]
    if type(list) ~= "table" or #list < 1 then
      error(("cka_layer_features: model %d must be a non-empty list of N x p tensors"):format(i), 2)
    end
    for l = 1, #list do
      local X = list[l]
      if not core.is_tensor(X) or X:dim() ~= 2 then
        error(("cka_layer_features: model %d layer %d must be a 2-D N x p tensor"):format(i, l), 2)
      end
      np = np or X:size(1)
      if X:size(1) ~= np or np < 2 then
        error(("cka_layer_features: model %d layer %d has %d rows; every layer needs the same N >= 2 (%d)")
          :format(i, l, X:size(1), np), 2)
      end
    end
    if not seen[#list] then seen[#list] = true; depths[#depths + 1] = #list end
  end
  local slots = layout_slots(depths, opts, "cka_layer_features", 3)
  local F = core.zeros(#acts, #slots * np * np)
  for i = 1, #acts do fill_cka_row(F, i, acts[i], slots, "cka_layer_features", 3) end
  return F
end

--- Features whose dot product is the linear CKA of two models (cka_layers
-- pairing of their hidden layers by relative depth), on the probe inputs
-- (N x d): cka_layer_features of their hidden activations (M.hidden; MLPs
-- and CNNs alike, so an MLP and a CNN compare), one model at a time. For
-- many pairs this is far cheaper than similarity_matrix("cka"), which runs
-- the probe through both models of every pair. opts.depths as there.
function M.cka_features(models, probe, opts)
  if type(models) ~= "table" or #models < 1 then
    error("cka_features: needs a non-empty list of models", 2)
  end
  if not core.is_tensor(probe) or probe:dim() ~= 2 or probe:size(1) < 2 then
    error("cka_features: the probe must be an N x d tensor with N >= 2", 2)
  end
  opts = util.options(opts, {}, "cka_features", {"depths"})
  local seen, depths = {}, {}
  for i, model in ipairs(models) do
    if type(model) ~= "table" or #model < 4 or #model % 2 ~= 0 then
      error(("cka_features: model %d must be an array of tensors {W1, b1, W2, b2, ...}"):format(i), 2)
    end
    local L = #model // 2 - 1
    if not seen[L] then seen[L] = true; depths[#depths + 1] = L end
  end
  local slots = layout_slots(depths, opts, "cka_features", 3)
  local n = probe:size(1)
  local F = core.zeros(#models, #slots * n * n)
  -- activations of one model at a time: a CNN's maps are large
  for i, model in ipairs(models) do
    fill_cka_row(F, i, C.hidden(model, probe), slots, "cka_features", 3)
  end
  return F
end

--- Similarity of two models (a number).
function M.similarity(method, a, b, opts)
  return M.similarity_matrix(method, {a}, {b}, opts):get(1, 1)
end

local function default_ks(ngallery)
  local ks = {}
  for _, k in ipairs({1, 5, 10}) do if k <= ngallery then ks[#ks + 1] = k end end
  return ks
end

--- Retrieval metrics from sim (queries x gallery). Each query ranks the
-- gallery by decreasing similarity; equal similarities keep increasing
-- gallery order. opts.ks: CMC ranks (default those of 1, 5, 10 within the
-- gallery size); opts.exclude_self: query i ignores gallery item i (square
-- sim of a set against itself). Queries with no same-label gallery item are
-- skipped. Returns {cmc = {...}, rank<k> = ..., map = ..., queries = n,
-- ap = {each query's average precision; NaN for a skipped query}}.
function M.retrieval(sim, qlabels, glabels, opts)
  opts = util.options(opts, {exclude_self = false}, "retrieval", {"ks"})
  if not (core.is_tensor(sim) and sim:dim() == 2) then
    error(("retrieval: sim must be a queries x gallery tensor, got %s"):format(core.is_tensor(sim)
      and table.concat(sim:shape(), "x") or type(sim)), 2)
  end
  local ng = sim:size(2) - (opts.exclude_self and 1 or 0)
  local ks = opts.ks or default_ks(ng)
  local cmc, map, nvalid, ap = C.retrieval(sim, qlabels, glabels, ks, opts.exclude_self)
  local r = {cmc = cmc, map = map, queries = nvalid, ks = ks, ap = ap}
  for i, k in ipairs(ks) do r["rank" .. k] = cmc[i] end
  return r
end

--- A paired comparison of two methods, query by query: a and b are lists
-- of the same queries' scores (e.g. retrieval's r.ap), groups each query's
-- cluster (its task: queries of one task are not independent). Returns
-- {delta = mean(a - b), lo, hi = the opts.level (default 0.95) percentile
-- interval of that mean over opts.reps (default 2000) bootstrap resamples
-- of whole groups (generator seed opts.seed, default 1), better, worse,
-- ties = query counts, n = queries}. Pairs with a NaN are left out.
function M.paired_bootstrap(a, b, groups_of, opts)
  opts = util.options(opts, {reps = 2000, seed = 1, level = 0.95}, "paired_bootstrap")
  local lists = {a, b, groups_of}
  for k, name in ipairs{"a", "b", "groups"} do
    if type(lists[k]) ~= "table" then error(("paired_bootstrap: %s must be a list, got %s"):format(name, type(lists[k])), 2) end
  end
  if #a ~= #b or #a ~= #groups_of then
    error(("paired_bootstrap: %d, %d and %d entries (scores a, scores b, groups) must agree"):format(#a, #b,
      #groups_of), 2)
  end
  if type(opts.level) ~= "number" or not (opts.level > 0 and opts.level < 1) then
    error(("paired_bootstrap: level must be in (0, 1), got %s"):format(tostring(opts.level)), 2)
  end
  local reps = math.tointeger(opts.reps)
  if not reps or reps < 1 then error(("paired_bootstrap: reps must be a positive integer, got %s"):format(tostring(opts.reps)), 2) end
  if not math.tointeger(opts.seed) then
    error(("paired_bootstrap: seed must be an integer, got %s"):format(tostring(opts.seed)), 2)
  end
  local by, keys = {}, {}
  local out = {better = 0, worse = 0, ties = 0, n = 0}
  local sum = 0
  for i = 1, #a do
    local x, y, g = a[i], b[i], groups_of[i]
    if type(x) ~= "number" or type(y) ~= "number" then
      error(("paired_bootstrap: query %d's scores must be numbers, got %s and %s"):format(i, type(x), type(y)), 2)
    end
    if g == nil or g ~= g then error(("paired_bootstrap: query %d has no group (%s)"):format(i, g == nil and "nil" or "NaN"), 2) end
    local d = x - y
    if d == d then
      if by[g] == nil then by[g] = {0, 0}; keys[#keys + 1] = g end
      by[g][1], by[g][2] = by[g][1] + d, by[g][2] + 1
      sum, out.n = sum + d, out.n + 1
      if d > 0 then out.better = out.better + 1 elseif d < 0 then out.worse = out.worse + 1 else out.ties = out.ties + 1 end
    end
  end
  if out.n == 0 then error("paired_bootstrap: no query has both scores", 2) end
  out.delta = sum / out.n
  local gen, means = core.generator(math.tointeger(opts.seed)), {}
  for r = 1, reps do
    local s, n = 0, 0
    for _ = 1, #keys do
      local g = by[keys[gen:random(#keys)]]
      s, n = s + g[1], n + g[2]
    end
    means[r] = s / n
  end
  table.sort(means)
  local tail = (1 - opts.level) / 2
  out.lo = means[math.max(1, math.floor(tail * reps + 0.5))]
  out.hi = means[math.min(reps, math.ceil((1 - tail) * reps - 0.5))]
  return out
end

--- Top-1 task classification from sim (queries x gallery with known labels).
-- opts.rule: "knn" (default; majority of the opts.k = 1 most similar, vote
-- ties to the larger summed similarity, then the smaller label) or
-- "centroid" (the label with the largest mean similarity; for cosine of
-- unit embeddings, the dot product with the class mean). Returns accuracy
-- (if qlabels given) and the predictions.
function M.classify(sim, glabels, qlabels, opts)
  opts = util.options(opts, {rule = "knn", k = 1, exclude_self = false}, "classify")
  local pred
  if opts.rule == "knn" then
    pred = C.knn_classify(sim, glabels, opts.k, opts.exclude_self)
  elseif opts.rule == "centroid" then
    pred = C.centroid_classify(sim, glabels, opts.exclude_self)
  else
    error("classify: rule must be 'knn' or 'centroid', got '" .. tostring(opts.rule) .. "'", 2)
  end
  if not qlabels then return nil, pred end
  if type(qlabels) ~= "table" then error(("classify: qlabels must be a list of labels, got %s"):format(type(qlabels)), 2) end
  if #qlabels ~= #pred then
    error(string.format("classify: %d query labels for %d queries", #qlabels, #pred), 2)
  end
  local hit = 0
  for i = 1, #pred do if pred[i] == qlabels[i] then hit = hit + 1 end end
  return hit / #pred, pred
end

--- k-means of the rows of x (n x d): k-means++ seeding from opts.generator
-- (default: the module generator), opts.restarts (10) runs of at most
-- opts.max_iter (300) Lloyd steps, the lowest inertia kept. Returns cluster
-- ids (1..k), centres (k x d) and the inertia.
function M.kmeans(x, k, opts) return C.kmeans(x, k, opts) end

--- NMI (arithmetic mean normalization) and AMI (Vinh et al. 2010) of two
-- labelings, as scikit-learn's defaults; emi is the expected MI.
M.nmi, M.ami, M.emi = C.nmi, C.ami, C.emi

--- Kendall tau-b and Spearman rho (average ranks for ties) of two vectors
-- (arrays or 1-D tensors); NaN when one is constant.
M.kendall_tau, M.spearman = C.kendall_tau, C.spearman

--- 2-D (or k-D) projections: pca(x, k) -> n x k scores, variances;
-- mds(sim, k) -> n x k coordinates (classical MDS, squared distances
-- s_ii + s_jj - 2 s_ij). Each axis is signed so its largest |entry| is positive.
M.pca, M.mds = C.pca, C.mds

--- The k rows of emb (N x e, unit rows) most similar to query (e) by dot
-- product: 1-based indices and scores, best first, equal scores by index.
function M.topk(emb, query, k) return C.topk(emb, query, k) end

return M
