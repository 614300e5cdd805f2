--- lualps.estimators: data-based transferability estimators, what a
-- practitioner computes to choose which stored model to fine-tune: a
-- candidate's outputs on the target's few labelled images (its
-- penultimate features F, n x D, and its softmax over its own classes,
-- theta, n x Z), scored against the target labels. Higher is better for
-- every score. The heavy parts are C (csrc/eval/transferability.c, in
-- double; LAPACK's dsyevd through OpenBLAS).
--
-- Inputs: F and theta are 2-D tensors or nested tables (one row per
-- sample); labels y are 1-based integers (a table or a tensor), one per
-- row, with at least two distinct classes; the class count is the
-- largest label. Non-finite values, wrong shapes and bad labels are errors
-- naming the estimator.
local core = require "lualps.core"
local util = require "lualps.util"
local C = core._estimators

local M = {}

--- Options and their defaults.
M.defaults = {
  logme = {exact = false},              -- true: the log determinant over all D prior directions
  knn = {k = 1},                        -- neighbours voting (1: the plain nearest neighbour)
  linear_probe = {lambda = "auto"},     -- "auto" or a relative ridge in 1e-6..1e6 (see linear_probe)
  outputs = {batch = 256},              -- samples per forward chunk
}

-- A 2-D tensor from a tensor or a nested table.
local function matrix(op, what, x)
  if type(x) == "table" then
    local ok, t = pcall(core.tensor, x)
    if not ok then error(("%s: %s: %s"):format(op, what, t), 3) end
    x = t
  end
  if not core.is_tensor(x) then error(("%s: %s must be a tensor or a table of rows, got a %s"):format(op, what, type(x)), 3) end
  if x:dim() ~= 2 then
    error(("%s: %s must be 2-D (samples x columns), got shape (%s)"):format(op, what, table.concat(x:shape(), "x")), 3)
  end
  return x
end

-- Labels as a table of integers, and the class count (the largest label).
local function labels(op, y, n)
  if core.is_tensor(y) then
    if y:dim() ~= 1 then error(("%s: labels must be 1-D, got shape (%s)"):format(op, table.concat(y:shape(), "x")), 3) end
    y = y:totable()
  elseif type(y) ~= "table" then
    error(("%s: labels must be a table or a tensor, got a %s"):format(op, type(y)), 3)
  end
  if #y ~= n then error(("%s: %d labels for %d samples"):format(op, #y, n), 3) end
  local out, classes = {}, 0
  for i = 1, n do
    local v = math.tointeger(y[i])
    if not v or v < 1 then
      error(("%s: label %d is %s, not an integer >= 1 (labels are 1-based)"):format(op, i, tostring(y[i])), 3)
    end
    out[i], classes = v, math.max(classes, v)
  end
  return out, classes
end

--- logme(F, y[, {exact = false}]) -> score, {evidence = {...}, alpha =
-- {...}, beta = {...}}: LogME (You et al. 2021), as the reference
-- LogME.py computes it: for each class, the log marginal evidence of a
-- Bayesian linear model from F to the class's one-hot column (prior
-- precision alpha on the D weights, noise precision beta, both set by the
-- reference's fixed-point iteration, at most 11 steps) over the min(n, D)
-- singular values of F (from F'F when n > D, else from F F'), divided by
-- n; the score is the mean over classes. All-zero features score -inf.
-- When n < D the reference's log determinant leaves out the prior's D - n
-- null directions, which adds (D - n) log(alpha) / (2n) to each class's
-- evidence (about 2.6 log(alpha) for a CNN's 784 features on 128 images);
-- exact = true removes it: the true evidence, comparable across widths.
function M.logme(F, y, opts)
  local o = util.options(opts, M.defaults.logme, "logme")
  if type(o.exact) ~= "boolean" then error(("logme: exact must be a boolean, got %s"):format(tostring(o.exact)), 2) end
  F = matrix("logme", "features", F)
  local lab, classes = labels("logme", y, F:size(1))
  local score, ev, alpha, beta = C.logme(F, lab, classes, o.exact)
  return score, {evidence = ev, alpha = alpha, beta = beta}
end

--- leep(theta, y) -> score (<= 0): LEEP (Nguyen et al. 2020) from the
-- candidate's softmax over its source classes (rows >= 0 summing to 1
-- within 1e-3): the empirical joint P(y, z) = sum of theta_iz over the
-- samples of class y / n, P(y | z) = P(y, z) / P(z), and the score
-- mean_i log sum_z P(y_i | z) theta_iz.
function M.leep(theta, y)
  theta = matrix("leep", "source probabilities", theta)
  local lab, classes = labels("leep", y, theta:size(1))
  return C.leep(theta, lab, classes)
end

--- knn(F, y[, {k = 1}]) -> accuracy: leave-one-out accuracy of k-NN on the
-- rows of F by cosine similarity (L2-normalized features; a zero row has
-- cosine 0 to every row): each sample is classified by the majority label
-- of its k most similar other samples (equal votes: the larger summed
-- similarity, then the smaller label; equal similarities: the earlier
-- sample). 1 <= k <= n - 1.
function M.knn(F, y, opts)
  local o = util.options(opts, M.defaults.knn, "knn")
  F = matrix("knn", "features", F)
  local lab, classes = labels("knn", y, F:size(1))
  if math.type(o.k) ~= "integer" then error(("knn: k must be an integer, got %s"):format(tostring(o.k)), 2) end
  return C.knn(F, lab, classes, o.k)
end

--- linear_probe(F, y[, {lambda = "auto"}]) -> accuracy, info: a ridge
-- regression from the features (centred; an unpenalized intercept) to the
-- one-hot targets, scored by its exact leave-one-out accuracy, computed in
-- closed form from the hat matrix H = 11'/n + Fc (Fc'Fc + lambda I)^-1 Fc'
-- (the LOO prediction of sample i is (yhat_i - H_ii y_i) / (1 - H_ii),
-- what refitting without i predicts); a sample counts as right when its
-- LOO prediction is largest at its label (ties: the smaller label). The
-- ridge is relative: lambda = rho * trace(Fc'Fc) / D, rho times the mean
-- eigenvalue of Fc'Fc, so rescaling F changes nothing. opts.lambda: rho
-- (a number in 1e-6..1e6), or "auto": the rho of 10^-3, 10^-2.5, ..., 10^3
-- with the smallest LOO squared error (ties: the larger rho). info: mse
-- (mean squared LOO residual, summed over classes), rho, lambda (absolute),
-- rank (spectral components above 1e-12 of the largest), grid_mse ("auto": mse per grid value),
-- loo (n x classes tensor of the LOO predictions).
function M.linear_probe(F, y, opts)
  local o = util.options(opts, M.defaults.linear_probe, "linear_probe")
  F = matrix("linear_probe", "features", F)
  local lab, classes = labels("linear_probe", y, F:size(1))
  local rho = o.lambda
  if rho == "auto" then rho = 0
  elseif type(rho) ~= "number" or not (rho >= 1e-6 and rho <= 1e6) then
    error(("linear_probe: lambda must be \"auto\" or a number in 1e-6..1e6, got %s"):format(tostring(o.lambda)), 2)
  end
  local acc, info, loo = C.ridge(F, lab, classes, rho)
  info.loo = loo
  return acc, info
end

--- softmax(logits) -> probabilities: row-wise softmax of a 2-D tensor
-- (through double, stable for large logits).
function M.softmax(logits)
  return C.softmax(matrix("softmax", "logits", logits))
end

--- outputs(model, x[, {batch = 256}]) -> F, theta: a candidate's
-- penultimate features and its softmax outputs on the images x in one
-- forward pass. model is an lps.nn sequential whose last layer is linear
-- (the head, as lps.transfer_pool splits models into body and head): F =
-- the output of every layer but the head (an MLP: its last hidden
-- activations after ReLU; a CNN: its flattened last feature maps), theta =
-- softmax(head(F)). x: n x d rows (reshaped to n x c x s x s for a model
-- starting with a conv2d of c input channels) or n x c x s x s images.
-- Runs in evaluation mode (the model's mode is restored), in chunks of
-- opts.batch samples.
function M.outputs(model, x, opts)
  local o = util.options(opts, M.defaults.outputs, "outputs")
  if (getmetatable(model) or {}).__name ~= "lualps.Module" or model:type() ~= "sequential" then
    error("outputs: model must be an lps.nn sequential", 2)
  end
  local kids = model:children()
  if #kids < 2 or kids[#kids]:type() ~= "linear" then
    error("outputs: the model's last layer must be linear (the head), after at least one other", 2)
  end
  if not core.is_tensor(x) or x:dim() < 2 then error("outputs: x must be a tensor of n rows or n images", 2) end
  if math.type(o.batch) ~= "integer" or o.batch < 1 then
    error(("outputs: batch must be a positive integer, got %s"):format(tostring(o.batch)), 2)
  end
  local n, first = x:size(1), kids[1]:arch()[1]
  if first.type == "conv2d" and x:dim() == 2 then
    local c = first["in"]
    local s = math.tointeger(math.sqrt(x:size(2) // c) // 1)
    if not s or c * s * s ~= x:size(2) then
      error(("outputs: rows of %d values are not %d-channel square images"):format(x:size(2), c), 2)
    end
    x = x:reshape(n, c, s, s)
  elseif first.type ~= "conv2d" and x:dim() > 2 then
    x = x:reshape(n, -1)
  end
  local was = model:is_training()
  model:evaluate()
  local ok, F, P = pcall(function()
    local F, P
    for s = 1, n, o.batch do
      local h = x:rows(s, math.min(n, s + o.batch - 1))
      for k = 1, #kids - 1 do
        local nh = kids[k]:forward(h)
        if k > 1 then h:close() end -- activations are C memory: free them now
        h = nh
      end
      local logits <close> = kids[#kids]:forward(h)
      F = F or core.zeros(n, h:size(2))
      P = P or core.zeros(n, logits:size(2))
      F:rows(s, s + h:size(1) - 1):copy(h)
      P:rows(s, s + h:size(1) - 1):copy(C.softmax(logits))
      h:close()
    end
    return F, P
  end)
  model:train(was)
  if not ok then error("outputs: " .. tostring(F), 2) end
  return F, P
end

return M
