--- lualps.eval: the baselines LPS is compared with, and the evaluation metrics.
--
-- A model is an MLP as a Lua array of tensors in PyTorch layout,
-- {W1 (h1 x d), b1 (h1), W2 (h2 x h1), b2, ..., WL, bL}, any depth >= 2.
-- Every baseline gives, through `similarity_matrix`, a queries x gallery
-- matrix (larger = more similar), so the evaluation treats them alike:
--
--   raw       cosine of the flattened parameters (W1, b1, W2, b2, ... row-major)
--   sorted    units of each hidden layer sorted by decreasing norm of (incoming
--             weights, bias), next layer's columns following; then as raw
--   stats     per tensor (W1, b1, W2, ...): mean, variance (population),
--             quantiles 0, .25, .5, .75, 1 (linear interpolation); 14 per layer.
--             Cosine after standardizing each feature (fit on the union of the
--             two sets, or opts.mean / opts.sd, e.g. from training models)
--   gram      Gram matrix W1n' W1n of the row-normalized first layer, the
--             input pixels average-pooled pool x pool first (opts.pool,
--             default 2: 28x28 -> 14x14 -> 196 x 196). Features are the upper
--             triangle with the diagonal, off-diagonal entries times sqrt 2,
--             so their dot product is the Frobenius product of the Grams
--             (pool 2: 19,306 features; pool 1: 307,720; pool 4: 1,225)
--   matching  Git Re-Basin weight matching of each gallery model to the query
--             model (alternating linear assignment over hidden layers, own
--             solver; started from a layer-by-layer match on incoming weights,
--             and from the identity too when that scores higher), then cosine
--             of the aligned parameters (no data)
--   cka       linear CKA of the hidden activations on opts.probe (N x d),
--             averaged over the hidden layers (needs data)
--
-- Indices and cluster ids are 1-based; labels are any integers.
local core = require("lualps.core")._eval

local M = {}

M.methods = {"raw", "sorted", "stats", "gram", "matching", "cka"}
local feature_methods = {raw = true, sorted = true, stats = true, gram = true}

--- Fixed-length feature vector (1-D tensor) of one model; method is one of
-- raw, sorted, stats, gram. opts.pool applies to gram.
function M.features(method, model, opts)
  return core.features(method, model, opts)
end

--- Features of many models as an (n x f) tensor.
function M.feature_matrix(method, models, opts)
  return core.feature_matrix(method, models, opts)
end

M.standardize = core.standardize     -- (x [, mean, sd]) -> x, mean, sd
M.cosine_matrix = core.cosine_matrix -- (A (na x f), B (nb x f)) -> na x nb
M.forward = core.forward             -- (model, x (N x d)) -> N x out
M.hidden = core.hidden               -- (model, x) -> {post-ReLU acts per hidden layer}
M.permute = core.permute             -- (model, perms) -> new model, same function
M.sort_perm = core.sort_perm         -- (model) -> perms of the `sorted` order
M.linear_cka = core.linear_cka       -- (X (N x p), Y (N x q)) -> number
M.symeig = core.symeig               -- (A) -> eigenvalues (increasing), vectors (columns)

--- Linear assignment: cost (n x m tensor) -> assignment (1-based column of
-- each row; 0 when n > m leaves the row out) and its total. Minimizes unless
-- maximize is true.
function M.assign(cost, maximize) return core.assign(cost, maximize) end

--- Git Re-Basin weight matching of model b to model a: perms (one array per
-- hidden layer; M.permute(b, perms) is b aligned to a), the cosine of a and
-- aligned b, and the sweeps used. opts.max_iter (100), opts.generator (visit
-- layers in random order; default in order).
function M.weight_matching(a, b, opts) return core.weight_matching(a, b, opts) end

--- Similarity of two sets of models (queries x gallery tensor) by a baseline.
-- opts: pool (gram), mean/sd (stats), max_iter/generator (matching),
-- probe (cka, required).
function M.similarity_matrix(method, models_a, models_b, opts)
  opts = opts or {}
  if feature_methods[method] then
    local fa = core.feature_matrix(method, models_a, opts)
    local fb = core.feature_matrix(method, models_b, opts)
    if method == "stats" then
      local mean, sd = opts.mean, opts.sd
      if not mean then
        -- standardize on both sets together: stack rows of fa and fb
        local na, nb, f = fa:size(1), fb:size(1), fa:size(2)
        local all = require("lualps").zeros(na + nb, f)
        all:rows(1, na):copy(fa)
        all:rows(na + 1, na + nb):copy(fb)
        local _
        _, mean, sd = core.standardize(all)
      end
      core.standardize(fa, mean, sd)
      core.standardize(fb, mean, sd)
    end
    return core.cosine_matrix(fa, fb)
  elseif method == "matching" then
    return core.matching_matrix(models_a, models_b, opts)
  elseif method == "cka" then
    if not opts.probe then error("similarity_matrix: cka needs opts.probe (an N x d tensor of inputs)", 2) end
    return core.cka_matrix(models_a, models_b, opts.probe)
  end
  error("similarity_matrix: unknown method '" .. tostring(method) ..
    "' (raw, sorted, stats, gram, matching, cka)", 2)
end

--- Features whose dot product is the linear CKA of two models averaged over
-- their hidden layers, on the probe inputs (N x d): per layer the Gram
-- matrix K = Xc Xc^T of the column-centered activations, normalized to unit
-- Frobenius norm and scaled by 1/sqrt(layers), flattened (N^2 values per
-- layer). For many pairs this is far cheaper than similarity_matrix("cka"),
-- which runs the probe through both models of every pair.
function M.cka_features(models, probe)
  local lps = require "lualps"
  local np = probe:size(1)
  local F
  for i, model in ipairs(models) do
    local acts = core.hidden(model, probe)
    if not F then F = lps.zeros(#models, #acts * np * np) end
    for l, X in ipairs(acts) do
      local Xc = X - X:mean(1)
      local K = lps.matmul(Xc, Xc, false, true)
      local nrm = K:norm()
      K:mul_(nrm > 0 and 1 / (nrm * math.sqrt(#acts)) or 0)
      F[i]:rows((l - 1) * np * np + 1, l * np * np):copy(K:reshape(np * np))
    end
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
-- skipped. Returns {cmc = {...}, rank<k> = ..., map = ..., queries = n}.
function M.retrieval(sim, qlabels, glabels, opts)
  opts = opts or {}
  local ng = sim:size(2) - (opts.exclude_self and 1 or 0)
  local ks = opts.ks or default_ks(ng)
  local cmc, map, nvalid = core.retrieval(sim, qlabels, glabels, ks, opts.exclude_self)
  local r = {cmc = cmc, map = map, queries = nvalid, ks = ks}
  for i, k in ipairs(ks) do r["rank" .. k] = cmc[i] end
  return r
end

--- Top-1 task classification from sim (queries x gallery with known labels).
-- opts.rule: "knn" (default; majority of the opts.k = 1 most similar, vote
-- ties to the larger summed similarity, then the smaller label) or
-- "centroid" (the label with the largest mean similarity; for cosine of
-- unit embeddings, the dot product with the class mean). Returns accuracy
-- (if qlabels given) and the predictions.
function M.classify(sim, glabels, qlabels, opts)
  opts = opts or {}
  local pred
  if (opts.rule or "knn") == "knn" then
    pred = core.knn_classify(sim, glabels, opts.k or 1, opts.exclude_self)
  elseif opts.rule == "centroid" then
    pred = core.centroid_classify(sim, glabels, opts.exclude_self)
  else
    error("classify: rule must be 'knn' or 'centroid', got '" .. tostring(opts.rule) .. "'", 2)
  end
  if not qlabels then return nil, pred end
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
function M.kmeans(x, k, opts) return core.kmeans(x, k, opts) end

--- NMI (arithmetic mean normalization) and AMI (Vinh et al. 2010) of two
-- labelings, as scikit-learn's defaults; emi is the expected MI.
M.nmi, M.ami, M.emi = core.nmi, core.ami, core.emi

--- Kendall tau-b and Spearman rho (average ranks for ties) of two vectors
-- (arrays or 1-D tensors); NaN when one is constant.
M.kendall_tau, M.spearman = core.kendall_tau, core.spearman

--- 2-D (or k-D) projections: pca(x, k) -> n x k scores, variances;
-- mds(sim, k) -> n x k coordinates (classical MDS, squared distances
-- s_ii + s_jj - 2 s_ij). Each axis is signed so its largest |entry| is positive.
M.pca, M.mds = core.pca, core.mds

--- The k rows of emb (N x e, unit rows) most similar to query (e) by dot
-- product: 1-based indices and scores, best first, equal scores by index.
function M.topk(emb, query, k) return core.topk(emb, query, k) end

return M
