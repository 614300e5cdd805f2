--- lualps.similarity.match: the template-matching score of two sets of
-- unit rows (each model's class templates), shared by template matching
-- (lps.benchmark.methods.template_matching) and the hybrid similarity
-- (lualps.similarity.hybrid): the largest sum of cosines over one-to-one
-- assignments of a's rows to b's, divided by max(ka, kb).
local core = require "lualps.core"
local eval = require "lualps.eval"
local archnet = require "lualps.similarity.archnet"
local util = require "lualps.util"

local M = {}

--- Template matching's noise: 8 images in each of 3 ranges.
M.noise, M.noise_ranges = 8, {{0, 0.2}, {0.4, 0.6}, {0.8, 1}}

--- A function model -> its template-matching rows: the class templates
-- (lualps.similarity.templates) over `noise` images in each of
-- `noise_ranges` (default M.noise, M.noise_ranges), average-pooled
-- pool x pool, unit rows; false when they are not finite. Remembered per
-- model (weak keys).
function M.templates_of(pool, noise, noise_ranges)
  local net = archnet.new{families = {"mlp", "cnn"}, template_pool = pool, template_extras = false,
    noise = noise or M.noise, noise_ranges = noise_ranges or M.noise_ranges}
  return util.memoize(function(m)
    local T = net:templates(m)
    local s = T:sum()
    return s == s and T
  end)
end

-- Popcounts of 0 .. 2^DP_MAX - 1, for the assignment over column subsets.
local DP_MAX = 10
local POP = {[0] = 0}
for m = 1, (1 << DP_MAX) - 1 do POP[m] = POP[m >> 1] + (m & 1) end
local dp = {}

-- The largest sum of w[r][c] over one-to-one assignments of the kr rows to
-- the kc >= kr columns: exact dynamic programming over the subsets of used
-- columns (kc <= DP_MAX: at most 2^kc * kc steps, no permutations), else
-- the linear assignment of lps.eval.assign.
local function assign_total(w, kr, kc)
  if kc > DP_MAX then
    local C = core.zeros(kr, kc)
    for r = 1, kr do for c = 1, kc do C:set(r, c, w[r][c]) end end
    local _, total = eval.assign(C, true)
    return total
  end
  local full, ninf = (1 << kc) - 1, -math.huge
  dp[0] = 0
  for m = 1, full do dp[m] = ninf end
  local best = ninf
  for m = 0, full do
    local p, v = POP[m], dp[m]
    if p < kr then
      if v > ninf then
        local row = w[p + 1] -- row p + 1 goes next: masks of p columns hold rows 1..p
        for c = 1, kc do
          local bit = 1 << (c - 1)
          if m & bit == 0 then
            local x = v + row[c]
            if x > dp[m | bit] then dp[m | bit] = x end
          end
        end
      end
    elseif p == kr and v > best then best = v end
  end
  return best
end

-- The ka x kb block of a nested table G at rows r0 + 1.., columns c0 + 1..,
-- as w (the shorter side as rows, transposed when ka > kb): the score.
local wbuf = {}
local function block_score(G, r0, c0, ka, kb)
  local kr, kc = ka, kb
  if ka <= kb then
    for r = 1, ka do
      local src, dst = G[r0 + r], wbuf[r] or {}
      wbuf[r] = dst
      for c = 1, kb do dst[c] = src[c0 + c] end
    end
  else
    kr, kc = kb, ka
    for r = 1, kb do
      local dst = wbuf[r] or {}
      wbuf[r] = dst
      for c = 1, ka do dst[c] = G[r0 + c][c0 + r] end
    end
  end
  return assign_total(wbuf, kr, kc) / math.max(ka, kb)
end
M.block_score = block_score

-- The rows of a list of models stacked (rows_of(m): a k x d tensor of unit
-- rows, or false), with each one's offset and row count.
local function stack(rows_of, models)
  local Ts, off, k, rows = {}, {}, {}, 0
  for i, m in ipairs(models) do
    Ts[i] = rows_of(m)
    off[i], k[i] = rows, Ts[i] and Ts[i]:size(1) or 0
    rows = rows + k[i]
  end
  local width
  for _, T in ipairs(Ts) do if T then width = T:size(2) break end end
  local X = width and core.zeros(rows, width)
  for i, T in ipairs(Ts) do if T then X:rows(off[i] + 1, off[i] + k[i]):copy(T) end end
  return X, off, k
end
M.stack = stack

--- The |a| x |b| template-matching scores of two lists of models;
-- rows_of(m) gives a model's unit rows (k x d, unit norm) or false (not
-- comparable: NaN). One matmul per block of a's models.
function M.scores(rows_of, a, b)
  local out = core.full(#a, #b, 0 / 0)
  local Xb, offb, kb = stack(rows_of, b)
  if not Xb then return out end
  local nb = Xb:size(1)
  -- a block of a's models at a time: read back as a table of up to about 2^20 cosines
  local i0 = 1
  while i0 <= #a do
    local blk, rows = {}, 0
    repeat
      local T = rows_of(a[i0 + #blk])
      blk[#blk + 1], rows = a[i0 + #blk], rows + (T and T:size(1) or 0)
    until i0 + #blk > #a or (rows + 8) * nb > 1 << 20
    local Xa, offa, ka = stack(rows_of, blk)
    if Xa then
      local G = core.matmul(Xa, Xb, false, true):totable()
      for i = 1, #blk do
        if ka[i] > 0 then
          for j = 1, #b do
            if kb[j] > 0 then out:set(i0 + i - 1, j, block_score(G, offa[i], offb[j], ka[i], kb[j])) end
          end
        end
      end
    end
    i0 = i0 + #blk
  end
  return out
end

return M
