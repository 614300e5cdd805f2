--- lualps.similarity.probe: probe matching, an unlearned and data-free
-- comparison of two models by what each answers on inputs the other
-- makes up. Each model "dreams" one input per output class (activation
-- maximization: from a fixed grey image with a little fixed noise, steps
-- of input-gradient ascent on that class's logit minus the mean logit,
-- each step normalized to unit RMS, the image kept in [0, 1]). Model a
-- then classifies b's dreams: P_ab (kb x ka) holds a's softmax
-- probabilities on each of b's dreams. Two models score
--   (best(P_ab) + best(P_ba)) / 2
-- where best is the largest sum over one-to-one assignments of classes
-- divided by max(ka, kb) (lualps.similarity.match.block_score): 1 when each
-- reads the other's dreams as one class each, whatever the class order.
-- A function of what the networks compute, it is invariant to permuted or
-- rescaled hidden units like template matching, and reads any
-- architecture the library can run (batch norm, residual blocks). Where
-- template matching reads input gradients at noise, which a network with
-- batch norm and global pooling shapes poorly (ResNets' templates match
-- even other ResNets' at rank-1 0.24 on ModelSet-Hetero 2), probing asks
-- each network about images it classifies with confidence.
local core = require "lualps.core"
local templates = require "lualps.similarity.templates"
local match = require "lualps.similarity.match"
local est = require "lualps.estimators"
local util = require "lualps.util"
local data = require "lualps.data"

local M = {}

--- Options of the dreams and their defaults.
M.defaults = {
  steps = 30,      -- gradient-ascent steps
  lr = 0.025,      -- step size (pixels, after normalizing the step to unit RMS). Chosen on ModelSet-Hetero 2's
                   -- training tasks (their ResNets reading 180 training MLPs and CNNs: rank-1 0.48 against
                   -- 0.38 at 0.05; their MLPs and CNNs 0.963 against 0.950), never on a test protocol
  start = 0.1,     -- the grey level every dream starts from
  noise = 0.02,    -- sd of the fixed Gaussian noise added to the start (seed 1907)
  temperature = 1, -- the reader's softmax temperature. On the validation split above, 4 reads better
                   -- (ResNets mAP 0.480 against 0.432, MLPs and CNNs 0.970 against 0.955) but selects
                   -- worse (regret 0.068 against 0.054 at p = 0.5 with template matching): left at 1
  starts = 1,      -- dreams per class, each from its own noise (the same for every class); a reader's
                   -- probabilities are averaged over a class's dreams
  smooth = 0,      -- passes of the 3x3 binomial blur over each step's gradient (square one-channel images
                   -- only): smooth steps give dreams of coarser structure, as translation-invariant attacks
                   -- smooth their gradients to transfer to other architectures. Measured on the validation
                   -- split above (scripts/probe_validation.lua): no gain beyond noise, so off
  jitter = 0,      -- each step's gradient is taken at the dream shifted by up to this many pixels each way
                   -- (a fixed sequence of shifts, the same for every model and class; square one-channel
                   -- images only): dreams that hold when moved, as feature visualization jitters them.
                   -- Measured there too: no gain (shifts in Lua, slow), so off
  adapt_bn = true, -- a reader with batch norm reads each dreamer's dreams with the batch statistics of
                   -- those dreams (nn Module:batch_stats; AdaBN), not the running statistics of its training
                   -- data: another model's dreams are a domain shift that renormalizing absorbs. On the
                   -- validation split (scripts/probe_validation.lua) ResNets read rank-1 0.478 against
                   -- 0.344, mAP 0.419 against 0.352; readers without batch norm are unchanged to the bit
  blur_bn = 1,     -- passes of the 3x3 binomial blur (lps.data.domain "blur") over the dreams a reader with
                   -- batch norm reads (square one-channel images only): the gradient ascent leaves pixel-level
                   -- patterns the dreamer answers to, which a network of another family reads as any class
                   -- it likes; blurred, the class's shape is left. On the validation split above (the
                   -- training tasks' ResNets reading 2 or 3 of each task's MLPs and CNNs) rank-1 0.478 to
                   -- 0.533 and 0.511 to 0.533, mAP 0.419 to 0.472 and 0.420 to 0.460; 2 or more passes read
                   -- worse (0.456, 0.389), a half-blurred mix 0.489. MLP and CNN readers gain nothing from it
                   -- (mAP 0.960 to 0.958), so they read the dreams as they are. 0: no blur (files saved before it).
                   -- Only dreams of one square channel (input_shape 1 x s x s, s >= 3) are blurred; others
                   -- (colour, non-square) are read as they are: the filter was validated on grey images only
  stat_prior = 0,  -- weight of the batch-norm prior (0: off): each step also descends the KL divergence of
                   -- every batch norm layer's statistics over the model's dreams from its running ones
                   -- (nn Module:stat_prior; DeepInversion's prior), so that a network with batch norm
                   -- dreams inputs like those it was trained on. No effect on models without batch norm.
                   -- Measured on the validation split (--direction rev): no gain (README)
  input_shape = {1, 28, 28}, -- an image model's input (a flat model reads their product)
}

-- Whether input shape sh is one square channel, 1 x s x s with s >= min_side
-- (the steps' smooth and jitter need 2, the dreams' blur_bn 3).
local function square_channel(sh, min_side)
  return #sh == 3 and sh[1] == 1 and sh[2] == sh[3] and sh[2] >= min_side
end

-- The options of op, checked: M.defaults with opts.
local function options(opts, op)
  local o = util.options(opts, M.defaults, op)
  local function bad(k, want) error(("%s: %s must be %s, got %s"):format(op, k, want, tostring(o[k])), 4) end
  if math.type(o.steps) ~= "integer" or o.steps < 1 then bad("steps", "a positive integer") end
  if type(o.lr) ~= "number" or not (o.lr > 0 and o.lr < math.huge) then bad("lr", "a positive number") end
  if type(o.start) ~= "number" or not (o.start >= 0 and o.start <= 1) then bad("start", "a number in [0, 1]") end
  if type(o.noise) ~= "number" or not (o.noise >= 0 and o.noise < math.huge) then bad("noise", "a number >= 0") end
  if math.type(o.starts) ~= "integer" or o.starts < 1 then bad("starts", "a positive integer") end
  if math.type(o.smooth) ~= "integer" or o.smooth < 0 then bad("smooth", "an integer >= 0") end
  if math.type(o.jitter) ~= "integer" or o.jitter < 0 then bad("jitter", "an integer >= 0") end
  if type(o.adapt_bn) ~= "boolean" then bad("adapt_bn", "a boolean") end
  if math.type(o.blur_bn) ~= "integer" or o.blur_bn < 0 then bad("blur_bn", "an integer >= 0") end
  if type(o.stat_prior) ~= "number" or not (o.stat_prior >= 0 and o.stat_prior < math.huge) then
    bad("stat_prior", "a number >= 0")
  end
  if type(o.temperature) ~= "number" or not (o.temperature > 0 and o.temperature < math.huge) then
    bad("temperature", "a positive number")
  end
  if type(o.input_shape) ~= "table" or #o.input_shape < 1 then bad("input_shape", "a list of sizes") end
  for _, n in ipairs(o.input_shape) do
    if math.type(n) ~= "integer" or n < 1 then bad("input_shape", "a list of positive integers") end
  end
  if (o.smooth > 0 or o.jitter > 0) and not square_channel(o.input_shape, 2) then
    bad("input_shape", "one square channel (1 x s x s) to smooth or jitter the steps")
  end
  return o
end

-- x clamped to [0, 1] in place: relu(x), then 1 - relu(1 - x).
local function clamp01(x)
  local y = x:relu()
  return x:copy(y:mul_(-1):add_(1):relu():mul_(-1):add_(1))
end

-- The starts of the dreams (starts x d): the same for every class and
-- model, so that a model's dreams follow any permutation of its classes
-- exactly; the first is the same whatever the number of starts.
local starts = {}
local function starts_of(d, o)
  local key = ("%d:%.17g:%.17g:%d"):format(d, o.start, o.noise, o.starts)
  if not starts[key] then
    local g, S = core.generator(1907), core.zeros(o.starts, d)
    for j = 1, o.starts do S[j]:copy(core.randn(1, d, g)[1]) end
    starts[key] = clamp01(S:mul_(o.noise):add_(o.start))
  end
  return starts[key]
end

-- The input of module m for its rows X (n x d): a function of X, reshaping
-- to images for a CNN (its first parameter is a convolution's).
local function input_of(m, o)
  local p = m:named_parameters()[1]
  if not (p and p.tensor:dim() == 4) then return function(X) return X end end
  return function(X) return X:reshape(X:size(1), table.unpack(o.input_shape)) end
end

-- Rows of X (n x s*s images) moved dy pixels down and dx right, zeros
-- filling what comes from outside; X itself when both are 0.
local function shifted(X, dy, dx)
  if dy == 0 and dx == 0 then return X end
  local n, d = X:size(1), X:size(2)
  local s = math.floor(math.sqrt(d) + 0.5)
  local src, out = X:totable(), {}
  for i = 1, n do
    local a, b = src[i], {}
    for r = 1, s do
      local rr = r - dy
      for c = 1, s do
        local cc = c - dx
        b[(r - 1) * s + c] = (rr >= 1 and rr <= s and cc >= 1 and cc <= s) and a[(rr - 1) * s + cc] or 0
      end
    end
    out[i] = b
  end
  return core.tensor(out)
end

--- A model's dreams (k starts x d: for each output class, its starts rows,
-- pixels in [0, 1]); false when they are not finite. opts: M.defaults.
function M.dreams(model, opts)
  local o = options(opts, "probe.dreams")
  templates.check_model(model, "probe.dreams")
  local d = 1
  for _, s in ipairs(o.input_shape) do d = d * s end
  local m, release = templates.function_of(model) -- flags cleared; release gives a user's back
  -- the dreams climb the logit: the prior's weight is negated to descend its KL
  if o.stat_prior > 0 then m:stat_prior(-o.stat_prior) end
  local ok, X = pcall(function()
    local input = input_of(m, o)
    local k = m:output_shape{1, table.unpack(input(core.zeros(1, d)):shape(), 2)}[2]
    local n, st = k * o.starts, starts_of(d, o)
    local gy = core.full(n, k, -1 / k)
    local X = core.zeros(n, d)
    for c = 1, k do
      for j = 1, o.starts do
        local r = (c - 1) * o.starts + j
        gy:set(r, c, 1 - 1 / k)
        X[r]:copy(st[j])
      end
    end
    local jg = core.generator(1907)
    for _ = 1, o.steps do
      local dy, dx = 0, 0
      if o.jitter > 0 then
        local w = 2 * o.jitter + 1
        dy, dx = jg:random(w) - o.jitter - 1, jg:random(w) - o.jitter - 1
      end
      local _, g = m:input_gradients(input(shifted(X, dy, dx)), gy)
      g = shifted(g:reshape(n, d), -dy, -dx)
      for _ = 1, o.smooth do g = data.domain(g, "blur") end
      local rms = (g * g):mean(2):sqrt()
      for r = 1, n do g[r]:div_(math.max(rms[r], 1e-12)) end
      clamp01(X:add_(g:mul_(o.lr)))
    end
    return X
  end)
  release()
  if not ok then error(X, 0) end
  local s = X:sum()
  return s == s and X
end

--- The complete dream options of opts (M.defaults with opts, checked): a
-- plain table to save beside a fitted model, so that it dreams as it was
-- fitted whatever later defaults say.
function M.settings(opts)
  local o = options(opts, "probe.settings")
  local out = {}
  for k, v in pairs(o) do out[k] = type(v) == "table" and {table.unpack(v)} or v end
  return out
end

-- The text of checked options o that names a matcher: every option, in key
-- order (an option added to M.defaults keys its matchers with no edit here).
local function key_of(o)
  local keys, parts = {}, {}
  for k in pairs(M.defaults) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do
    local v = o[k]
    parts[i] = k .. "=" .. (type(v) == "table" and table.concat(v, "x") or type(v) == "boolean" and tostring(v)
                            or ("%.17g"):format(v))
  end
  return table.concat(parts, " ")
end

--- A function model -> its dreams (M.dreams with opts), remembered per
-- model (weak keys), and one telling whether a model's are.
function M.dreams_of(opts)
  return util.memoize(function(model) return M.dreams(model, opts) end)
end

--- Whether a model (a weight record or {module = m}) has batch norm: its
-- module has running statistics, or the record carries buffers (only batch
-- norm layers have any).
function M.has_batch_norm(model)
  templates.check_model(model, "probe.has_batch_norm")
  if not model.module then
    if model.buffers ~= nil and type(model.buffers) ~= "table" then
      error(("probe.has_batch_norm: the model's buffers must be a list of tensors, got %s"):format(type(model.buffers)), 2)
    end
    return #(model.buffers or {}) > 0
  end
  for _, b in ipairs(model.module:named_buffers()) do
    if b.name:match("running_mean$") then return true end
  end
  return false
end

-- Model reader's outputs (logits) on the rows of X, checked options o;
-- a reader with batch norm reads them blurred o.blur_bn times (one square
-- channel only), and with
-- o.adapt_bn each block of rows (blocks: {first row - 1, rows} pairs, one
-- per dreamer) as its own batch.
local function outputs(reader, X, o, blocks)
  local bn = M.has_batch_norm(reader)
  local adapt = o.adapt_bn and bn
  if bn and o.blur_bn > 0 and square_channel(o.input_shape, 3) then
    for _ = 1, o.blur_bn do X = data.domain(X, "blur") end
  end
  local m, release = templates.function_of(reader) -- release gives a user's module its own flags back
  local ok, Y = pcall(function()
    local input = input_of(m, o)
    if not adapt then return m:forward(input(X)) end
    m:batch_stats(true)
    local Y
    for _, b in ipairs(blocks) do if b[2] > 0 then
      local Yb = m:forward(input(X:rows(b[1] + 1, b[1] + b[2])))
      Y = Y or core.zeros(X:size(1), Yb:size(2))
      Y:rows(b[1] + 1, b[1] + b[2]):copy(Yb)
    end end
    return Y
  end)
  release()
  if not ok then error(Y, 0) end
  return Y
end

--- Model reader's outputs (logits, a tensor) on the rows of X (stacked
-- dreams, n x d), read as probe matching reads them: a reader with batch
-- norm reads them blurred opts.blur_bn times (dreams of one square channel,
-- 1 x s x s; other shapes as they are), and with opts.adapt_bn each
-- block of rows (blocks: {first row - 1, rows} pairs, one per dreamer) as
-- its own batch. opts: M.defaults.
function M.outputs(reader, X, blocks, opts)
  templates.check_model(reader, "probe.outputs")
  if not core.is_tensor(X) or X:dim() ~= 2 then
    error(("probe.outputs: X must be an n x d tensor of dreams, got %s"):format(core.is_tensor(X)
      and table.concat(X:shape(), "x") or type(X)), 2)
  end
  local o = options(opts, "probe.outputs")
  if o.adapt_bn and M.has_batch_norm(reader) then
    local ok = type(blocks) == "table"
    for _, b in ipairs(ok and blocks or {}) do
      ok = ok and type(b) == "table" and math.type(b[1]) == "integer" and math.type(b[2]) == "integer" and b[1] >= 0
        and b[2] >= 0 and b[1] + b[2] <= X:size(1)
    end
    if not ok then
      error("probe.outputs: blocks must be a list of {first row - 1, rows} pairs within X's rows", 2)
    end
  end
  local Y = outputs(reader, X, o, blocks)
  return Y
end

-- Model reader's softmax probabilities on the rows of X, averaged over
-- each class's o.starts consecutive dreams (a nested table, the dreamed
-- classes by the reader's classes), or false when they are not finite.
local function read(reader, X, o, blocks)
  local Y = outputs(reader, X, o, blocks)
  local s = Y:sum()
  if not (s == s and s > -math.huge and s < math.huge) then return false end
  local P = est.softmax(o.temperature == 1 and Y or Y * (1 / o.temperature))
  if o.starts > 1 then P = P:reshape(P:size(1) // o.starts, o.starts, P:size(2)):mean(2):reshape(-1, P:size(2)) end
  return P:totable()
end

local matchers = {} -- one per distinct options: a score depends only on the two models and them

--- A probe matcher: an object remembering each model's dreams and each
-- (reader, dreamer) score it computed (weak keys; one object for equal
-- opts, so that every fit of a benchmark shares what was computed), with
-- directed(readers, dreamers): the |readers| x |dreamers| matrix of
-- best(P_rd) (NaN where a model's dreams or outputs are not finite), one
-- forward of each reader over the dreams it has not read yet;
-- scores(a, b): the symmetric score (directed(a, b) + directed(b, a)^T) / 2.
-- opts: M.defaults.
function M.matcher(opts)
  local o = options(opts, "probe.matcher")
  local key = key_of(o)
  if matchers[key] then return matchers[key] end
  local self = {opts = o, memo = setmetatable({}, {__mode = "k"})}
  self.dreams_of, self.has_dreams = M.dreams_of(o)
  matchers[key] = self
  function self.directed(readers, dreamers)
    if type(readers) ~= "table" or type(dreamers) ~= "table" then
      error(("probe matching: readers and dreamers must be lists of models, got %s and %s"):format(type(readers),
        type(dreamers)), 2)
    end
    for _, list in ipairs{readers, dreamers} do
      for _, m in ipairs(list) do templates.check_model(m, "probe matching") end
    end
    local out = core.full(#readers, #dreamers, 0 / 0)
    for i, r in ipairs(readers) do
      local known = self.memo[r]
      if not known then known = setmetatable({}, {__mode = "k"}); self.memo[r] = known end
      local todo, seen = {}, {}
      for _, d in ipairs(dreamers) do
        if known[d] == nil and not seen[d] then todo[#todo + 1], seen[d] = d, true end
      end
      local X, off, k = match.stack(self.dreams_of, todo)
      if X then
        local blocks = {}
        for j = 1, #todo do blocks[j] = {off[j], k[j]} end
        local P = read(r, X, o, blocks)
        for j = 1, #todo do off[j], k[j] = off[j] // o.starts, k[j] // o.starts end -- rows of P: classes
        for j, d in ipairs(todo) do
          known[d] = (P and k[j] > 0) and match.block_score(P, off[j], 0, k[j], #P[1]) or 0 / 0
        end
      else
        for _, d in ipairs(todo) do known[d] = 0 / 0 end
      end
      for j, d in ipairs(dreamers) do out:set(i, j, known[d]) end
    end
    return out
  end
  function self.scores(a, b)
    return (self.directed(a, b) + self.directed(b, a):t()) * 0.5
  end
  return self
end

--- The |a| x |b| probe-matching scores of two lists of models (a new
-- M.matcher(opts)'s scores).
function M.scores(a, b, opts)
  return M.matcher(opts).scores(a, b)
end

return M
