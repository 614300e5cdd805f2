--- lualps.similarity.archnet: the second-order network of LPS for any ReLU network of
-- conv2d and linear layers: MLPs and CNNs, of any depth, in one embedding
-- space. Made through lps.similarity.network{families = {...}, ...}.
--
-- Per model: chain normalization of every hidden unit (a neuron or a conv
-- channel: max-pooling and flatten commute with positive per-channel
-- scale, so the function is unchanged). Units of the first layer are
-- encoded from their incoming weights (an MLP's whole-image template, a
-- CNN's kernel centred in a kernel x kernel window), bias and outgoing
-- importance, by a family-specific encoder. Every later layer, the head's
-- classes included, sees the previous layer through its unit embeddings:
-- U_l = M_l Z_(l-1), M_l the unit-to-unit mixing (lps_units_mixing: a
-- weight, or a kernel's sum over positions), so no layer's order matters.
-- Slots ("first", "last" hidden layer, "head") are pooled (second order,
-- weighted by importance), layer-normalized, concatenated and projected
-- to the L2-normalized embedding. Encoders are per family; pooling,
-- projection and classifier are shared, so both families share one space.
--
-- The "templates" slot reads what the weights compute rather than how they
-- are laid out (lualps.similarity.templates).
local core = require "lualps.core"
local util = require "lualps.util"
local data = require "lualps.data"
local base = require "lualps.similarity.base"
local templates = require "lualps.similarity.templates"
local models = require "lualps.similarity.models"
local K = core._lps

local A = base.class()

--- Options of an any-architecture network (lps.similarity.network with
-- `families`) and their defaults.
A.defaults = {
  families = {"mlp", "cnn"}, -- unit encoders to create
  slots = {"templates"}, -- pooled unit sets: "templates" (the classes' input-gradient templates),
                      -- "first" / "last" hidden layer, "head" (the head's classes as weight units)
  input_dim = 784,    -- an MLP's inputs
  kernel = 5,         -- first-layer conv kernels are centred in kernel x kernel (odd)
  width = 64,         -- unit embedding width d
  embed = 64,         -- embedding size e
  activation = "relu",
  pool = "power", pool_eps = 1e-4, pool_iters = 5,
  layer_norm = true,  -- L2-normalize each slot's pooled features
  noise = 6,          -- "templates": noise images per range the input gradients are averaged over
  noise_ranges = { {0, 0.2}, {0.8, 1} }, -- "templates": a segment per range of uniform noise (dark
                      -- and bright images: how a model sees either background tells its domain)
  template_extras = true, -- "templates": each template also carries its model's class count (one-hot
                      -- over 8 slots; 8 or more classes share the last) and its centred logit per noise range
  template_pool = 2,  -- "templates": average pooling of the 28x28 templates (2: 14x14)
  input_shape = {1, 28, 28}, -- a CNN's input (the templates' images)
  -- Unit supervision: a model's output unit c is its task's class c, seen in
  -- its domain. With unit_classes > 0, training also classifies every class
  -- template's unit embedding into its class (ids 0..unit_classes-1 from the
  -- model's `classes`) and its domain (index in `domains` of the model's
  -- `domain`), weight unit_weight: tasks are sets of (class, domain) units.
  unit_classes = 0,
  domains = {},
  unit_weight = 1,
  chain_norm = true,
  classes = 0, cosine_head = true, scale = 16,
  seed = 1,
}

local SLOT = {first = true, last = true, head = true, templates = true}

-- A new network (lps.similarity.network with `families`).
function A.new(opts)
  local o = util.options(opts, A.defaults, "similarity.network")
  for _, k in ipairs{"input_dim", "kernel", "width", "embed"} do base.check_int(o[k], 1, k) end
  base.check_int(o.classes, 0, "classes")
  base.check_int(o.seed, 0, "seed")
  if o.kernel % 2 == 0 then error("similarity.network: kernel must be odd", 3) end
  if type(o.families) ~= "table" or #o.families < 1 then error("similarity.network: families must be a non-empty list", 3) end
  for _, f in ipairs(o.families) do
    if f ~= "mlp" and f ~= "cnn" then error(("similarity.network: unknown family '%s' (mlp, cnn)"):format(tostring(f)), 3) end
  end
  if type(o.slots) ~= "table" or #o.slots < 1 then error("similarity.network: slots must be a non-empty list", 3) end
  for _, s in ipairs(o.slots) do
    if not SLOT[s] then error(("similarity.network: unknown slot '%s' (first, last, head, templates)"):format(tostring(s)), 3) end
  end
  local pool = {mode = o.pool, eps = o.pool_eps, iters = o.pool_iters}
  local per_slot = K.sopool_size(o.width, pool)
  local layered, weight = false, {}
  for _, sl in ipairs(o.slots) do
    if sl ~= "templates" then layered, weight[#weight + 1] = true, sl end
  end
  local self = setmetatable({opts = o, pool = pool, per_layer = per_slot, feat_dim = per_slot * #o.slots,
                             names = {}, P = {}, G = {}, layered = layered,
                             weight_slots = ("the weight-unit slot%s (%s)"):format(#weight > 1 and "s" or "",
                               table.concat(weight, ", ")),
                             prep_key = ("%s/%s/%d/%d/%d/%d/%s/%s"):format(tostring(o.template_extras),
                               tostring(o.chain_norm), o.kernel, o.input_dim, o.noise, o.template_pool,
                               table.concat(o.slots, "+"), (function()
                                 local r = {} for _, x in ipairs(o.noise_ranges) do r[#r + 1] = x[1] .. ":" .. x[2] end
                                 return table.concat(r, ",") end)())}, A)
  local add, d = base.param_adder(self, o.seed), o.width
  for _, f in ipairs(o.families) do
    local fan = (f == "mlp" and o.input_dim or o.kernel * o.kernel) + 2
    add(("enc_first.%s.weight"):format(f), {d, fan}, math.sqrt(2 / fan))
    add(("enc_first.%s.bias"):format(f), {d}, 0)
    add(("enc_deep.%s.weight"):format(f), {d, d + 2}, math.sqrt(2 / (d + 2)))
    add(("enc_deep.%s.bias"):format(f), {d}, 0)
    add(("enc_head.%s.weight"):format(f), {d, d + 2}, math.sqrt(2 / (d + 2)))
    add(("enc_head.%s.bias"):format(f), {d}, 0)
  end
  if self:has_slot("templates") then
    base.check_int(o.noise, 1, "noise")
    base.check_int(o.template_pool, 1, "template_pool")
    local side = o.input_shape[#o.input_shape]
    if side % o.template_pool ~= 0 or side * side ~= o.input_dim then
      error("similarity.network: templates need square inputs (input_dim = side^2) divisible by template_pool", 3)
    end
    self.seg = (side // o.template_pool) ^ 2
    self.tdim = self.seg * #o.noise_ranges + (o.template_extras and 8 + #o.noise_ranges or 0)
    add("enc_tmpl.weight", {d, self.tdim + 2}, math.sqrt(2 / (self.tdim + 2)))
    add("enc_tmpl.bias", {d}, 0)
    base.check_int(o.unit_classes, 0, "unit_classes")
    if o.unit_classes > 0 then
      add("units.class.weight", {o.unit_classes, d}, math.sqrt(1 / d))
      add("units.class.bias", {o.unit_classes}, 0)
      if #o.domains > 0 then
        add("units.domain.weight", {#o.domains, d}, math.sqrt(1 / d))
        add("units.domain.bias", {#o.domains}, 0)
      end
    end
  end
  base.add_embedding_layers(add, self.feat_dim, o)
  return self
end

function A:has_slot(name)
  for _, s in ipairs(self.opts.slots) do if s == name then return true end end
  return false
end

--- The class templates of a model (lualps.similarity.templates): k x
-- tdim rows, their norms and the mean centred logits.
function A:templates(model) return templates.compute(self, model) end

function A:__tostring()
  local n = 0
  for _, name in ipairs(self.names) do n = n + self.P[name]:numel() end
  local o = self.opts
  return ("lualps.similarity network (families %s, slots %s, width %d, embedding %d, %s pooling, "
    .. "chain norm %s, %d classes, %d parameters)"):format(table.concat(o.families, "+"),
    table.concat(o.slots, "+"), o.width, o.embed, o.pool, o.chain_norm and "on" or "off", o.classes, n)
end

--- Data-only preprocessing of one model (a list {W1, b1, ...} of an MLP or
-- a CNN; its `family` field, else 4-D first weights, tells which): chain
-- normalization, unit features, importances, mixing matrices.
-- Prepared models by preparation options, weakly keyed by the model's
-- weight list: preparation reads only the weights (never the encoders), so
-- every network with the same options shares it, across fits.
local prepared = setmetatable({}, {__mode = "k"})

function A:prepare(model)
  local o = self.opts
  if type(model) ~= "table" then error("similarity: a model is a list {W1, b1, W2, b2, ...}", 2) end
  if model.lps_prepared then
    if model.arch_prepared ~= self.prep_key then error("similarity: this model was prepared by a network with other options", 2) end
    return model
  end
  local hit = prepared[model] and prepared[model][self.prep_key]
  if hit then return hit end
  local p = self:prepare_new(model)
  prepared[model] = prepared[model] or {}
  prepared[model][self.prep_key] = p
  return p
end

function A:prepare_new(model)
  local o = self.opts
  if #model < 1 then error("similarity: a model needs its tensors ({W1, b1, W2, b2, ...})", 2) end
  for i = 1, #model do
    if not core.is_tensor(model[i]) then
      error(("similarity: entry %d of the model is a %s, expected a tensor"):format(i, type(model[i])), 2)
    end
  end
  local W1 = model[1]
  local family = model.family or (W1:dim() == 4 and "cnn" or "mlp")
  if self.layered then -- the weight units read MLPs and CNNs of (W, b) pairs, one encoder per family
    local ok, err = pcall(models.check_weight_space, model, self.weight_slots)
    if not ok then error(err, 3) end
    if #model < 4 or #model % 2 ~= 0 then
      error(("similarity: a model needs at least a hidden layer and a head ({W1, b1, W2, b2, ...}), got %d entries"):format(#model), 2)
    end
    local known = false
    for _, f in ipairs(o.families) do known = known or f == family end
    if not known then
      error(("similarity: this network's weight units read %s, not a %s (its templates read any model)")
        :format(table.concat(o.families, " and "), family), 2)
    end
    if family == "cnn" and (W1:dim() ~= 4 or W1:size(2) ~= 1 or W1:size(3) > o.kernel) then
      error(("similarity: a CNN's first weight should be (c x 1 x k x k), k <= %d, got (%s)"):format(o.kernel,
        table.concat(W1:shape(), "x")), 2)
    end
  end
  if W1:dim() == 2 and W1:size(2) ~= o.input_dim then
    error(("similarity: an MLP's first weight should be (h x %d), got (%s)"):format(o.input_dim,
      table.concat(W1:shape(), "x")), 2)
  end
  local n = #model // 2
  local p = {lps_prepared = true, arch_prepared = self.prep_key, family = family, n = n}
  if self.layered then -- the weight-unit slots: chain normalization, unit features, mixing
    local ok, r = pcall(K.net_prepare, model, o.chain_norm, o.kernel)
    if not ok then error(r, 2) end
    local fan = r.first:size(2)
    p.U1, p.bias, p.imp, p.mix = r.first:mul(math.sqrt(fan + 1)), {}, r.imp, r.mix
    for l = 1, n do
      local s = l == 1 and math.sqrt(fan + 1) or math.sqrt(r.mix[l]:size(2) + 1)
      p.bias[l] = r.bias[l]:mul(s)
    end
    p.imp[n] = core.ones(r.bias[n]:numel()) -- the head's classes weigh alike
  end
  if self:has_slot("templates") then
    p.T, p.tnorm, p.tlogit = self:templates(model)
    p.tw = core.ones(p.T:size(1))
    -- unit labels, when the model says its classes and domain
    if o.unit_classes > 0 and type(model.classes) == "table" and #model.classes == p.T:size(1) then
      p.unit_cls = {}
      for c, id in ipairs(model.classes) do
        if math.type(id) == "integer" and id >= 0 and id < o.unit_classes then p.unit_cls[c] = id + 1 end
      end
      if #p.unit_cls ~= #model.classes then p.unit_cls = nil end
      for k, dname in ipairs(o.domains) do if dname == model.domain then p.unit_dom = k end end
    end
  end
  return p
end

-- The unit-supervision loss over the template embeddings of a batch (a
-- list of {p =, ZT =}): mean cross-entropy of every labelled unit's class
-- and domain, times unit_weight; accumulates the classifiers' gradients and
-- returns the loss and each item's dZT (or nil).
function A:unit_loss(list)
  local o, P, G = self.opts, self.P, self.G
  local rows, cls, dom, owner = {}, {}, {}, {}
  for n, it in ipairs(list) do
    if it.p.unit_cls then
      for c = 1, it.ZT:size(1) do
        rows[#rows + 1], cls[#rows + 1], dom[#rows + 1], owner[#rows + 1] = it.ZT[c], it.p.unit_cls[c], it.p.unit_dom, n
      end
    end
  end
  if #rows == 0 then return 0, {} end
  local Z = core.zeros(#rows, rows[1]:numel())
  for r, z in ipairs(rows) do Z[r]:copy(z) end
  local total, dZ = 0, core.zeros(#rows, Z:size(2))
  local function head(name, labels)
    local W, b = P["units." .. name .. ".weight"], P["units." .. name .. ".bias"]
    local gW, gb = core.zeros(table.unpack(W:shape())), core.zeros(b:numel())
    local l, d = K.xent(Z, labels, W, b, {scale = 1}, gW, gb)
    G["units." .. name .. ".weight"]:add_(gW, o.unit_weight)
    G["units." .. name .. ".bias"]:add_(gb, o.unit_weight)
    dZ:add_(d, o.unit_weight)
    total = total + o.unit_weight * l
  end
  head("class", cls)
  if P["units.domain.weight"] and #dom == #rows then head("domain", dom) end
  local out = {}
  local r0 = {}
  for r, n in ipairs(owner) do
    if not r0[n] then r0[n] = r end
  end
  for n, r in pairs(r0) do out[n] = dZ:rows(r, r + list[n].ZT:size(1) - 1) end
  return total, out
end

-- The encoder of layer l of a prepared model.
local function encoder(p, l)
  local kind = l == 1 and "enc_first" or (l == p.n and "enc_head" or "enc_deep")
  return kind .. "." .. p.family
end

-- The layer each slot pools.
local function slot_layer(p, slot)
  if slot == "first" then return 1 elseif slot == "last" then return math.max(1, p.n - 1) end
  return p.n
end

--- Embeddings (B x embed) of a list of models (raw or prepared); keeps what
-- backward needs.
function A:forward(models)
  if type(models) ~= "table" or #models < 1 then error("similarity: forward needs a non-empty list of models", 2) end
  local o, P = self.opts, self.P
  local B, fd, pl, S = #models, self.feat_dim, self.per_layer, #o.slots
  local F = core.zeros(B, fd)
  local items = {}
  local units = {}
  local need_head = false
  for _, s in ipairs(o.slots) do need_head = need_head or s == "head" end
  for i = 1, B do
    local p = self:prepare(models[i])
    local top = self.layered and (need_head and p.n or p.n - 1) or 0
    local Z, U = {}, {}
    for l = 1, top do
      U[l] = l == 1 and p.U1 or core.matmul(p.mix[l], Z[l - 1])
      local e = encoder(p, l)
      Z[l] = K.neuron_forward(U[l], p.bias[l], p.imp[l], P[e .. ".weight"], P[e .. ".bias"], o.activation)
    end
    local ZT
    for k, s in ipairs(o.slots) do
      local pos = (i - 1) * fd + (k - 1) * pl + 1
      if s == "templates" then
        ZT = K.neuron_forward(p.T, p.tlogit, p.tnorm, P["enc_tmpl.weight"], P["enc_tmpl.bias"], o.activation)
        K.sopool_forward(ZT, p.tw, self.pool, F, pos)
        if self.training_units then units[#units + 1] = {p = p, ZT = ZT, i = i} end
      else
        local l = slot_layer(p, s)
        K.sopool_forward(Z[l], p.imp[l], self.pool, F, pos)
      end
    end
    items[i] = {p = p, Z = Z, U = U, top = top, ZT = ZT}
  end
  local norms = o.layer_norm and base.block_norm(F, B * S, pl) or nil
  local Y, Upre = K.embed_forward(F, P["proj.weight"], P["proj.bias"])
  local daux = {}
  self.aux_loss = nil
  if #units > 0 and o.unit_classes > 0 then
    local l, d = self:unit_loss(units)
    for n, g in pairs(d) do daux[units[n].i] = g end
    self.aux_loss = l
  end
  self.cache = {F = F, U = Upre, items = items, norms = norms, daux = daux}
  return Y
end

--- Accumulate parameter gradients for dL/dY of the last forward.
function A:backward(dY)
  local c = self.cache
  if not c then error("similarity: backward without a forward", 2) end
  local o, P, G = self.opts, self.P, self.G
  local fd, pl, S = self.feat_dim, self.per_layer, #o.slots
  local dF = K.embed_backward(dY, c.U, c.F, P["proj.weight"], G["proj.weight"], G["proj.bias"], true)
  if c.norms then base.block_norm_backward(c.F, dF, c.norms, #c.items * S, pl) end
  for i, it in ipairs(c.items) do
    local p = it.p
    local dZ = {}
    for k, s in ipairs(o.slots) do
      local pos = (i - 1) * fd + (k - 1) * pl + 1
      if s == "templates" then
        local dZT = K.sopool_backward(dF, it.ZT, p.tw, self.pool, pos)
        if c.daux[i] then dZT:add_(c.daux[i]) end
        K.neuron_backward(dZT, it.ZT, p.T, p.tlogit, p.tnorm, P["enc_tmpl.weight"], G["enc_tmpl.weight"],
          G["enc_tmpl.bias"], false, o.activation)
      else
        local l = slot_layer(p, s)
        local d = K.sopool_backward(dF, it.Z[l], p.imp[l], self.pool, pos)
        if dZ[l] then dZ[l]:add_(d) else dZ[l] = d end
      end
    end
    for l = it.top, 1, -1 do
      if dZ[l] then
        local e = encoder(p, l)
        local dU = K.neuron_backward(dZ[l], it.Z[l], it.U[l], p.bias[l], p.imp[l], P[e .. ".weight"],
          G[e .. ".weight"], G[e .. ".bias"], l > 1, o.activation)
        if l > 1 then
          local carry = core.matmul(p.mix[l], dU, true, false)
          if dZ[l - 1] then dZ[l - 1]:add_(carry) else dZ[l - 1] = carry end
        end
      end
    end
  end
  self.cache = nil
end

--- Transforms of the template features train_network can draw
-- (template_aug): the template block's noise, blur and mix, the logits' and
-- norms' scale. Strengths are numbers >= 0 (0: off).
A.template_aug_keys = {noise = true, blur = true, scale = true, mix = true}

-- Per image of side x side (row-major values x[o+1 .. o+side^2]): the 3x3
-- binomial blur ([1 2 1] x [1 2 1] / 16), weights renormalized over the
-- pixels inside the image.
local function binomial_blur(x, o, side)
  local out = {}
  local wt = {1, 2, 1}
  for r = 0, side - 1 do
    for c = 0, side - 1 do
      local s, ws = 0, 0
      for dr = -1, 1 do
        local rr = r + dr
        if rr >= 0 and rr < side then
          for dc = -1, 1 do
            local cc = c + dc
            if cc >= 0 and cc < side then
              local w = wt[dr + 2] * wt[dc + 2]
              s, ws = s + w * x[o + rr * side + cc + 1], ws + w
            end
          end
        end
      end
      out[r * side + c + 1] = s / ws
    end
  end
  return out
end

--- A prepared model's copy with its template features (T, tlogit, tnorm)
-- randomly transformed (train_network's template_aug; the prepared model
-- itself is not changed): aug = {noise =, blur =, scale =, mix =}
-- strengths, g a generator, partner (for mix) another prepared model of the
-- same task or nil. Per model, in this order: mix with the partner
-- (lambda ~ U(0, mix): the template block, the logits and the norms
-- interpolated), blur (a ~ U(-blur, blur): each noise range's image
-- t + a (B t - t), B the 3x3 binomial blur; a < 0 sharpens), noise (r ~
-- U(0, noise): t + r n / sqrt(dim), n standard normal per value), scale
-- (the centred logits times exp(scale z), each class's norm times
-- exp(scale z_c)). The template block is L2-normalized again and the norms
-- divided by their largest, as computed templates are. A model without
-- the templates slot is returned as it is.
function A:augment_templates(p, aug, g, partner)
  if not p.T then return p end
  local o = self.opts
  local k, R = p.T:size(1), #o.noise_ranges
  local seg, side = self.seg, o.input_shape[#o.input_shape] // o.template_pool
  local w = seg * R -- the template block; then 8 one-hot and R logit columns with extras
  local lcol = o.template_extras and w + 8 or nil
  local mix, blur, noise, scale = aug.mix or 0, aug.blur or 0, aug.noise or 0, aug.scale or 0
  if mix > 0 and not (partner and partner.T and partner.T:size(1) == k and partner.T:size(2) == p.T:size(2)) then
    mix = 0
  end
  if mix == 0 and blur == 0 and noise == 0 and scale == 0 then return p end
  -- The rows go through Lua tables only for a transform of the template
  -- block; scale alone changes the k x R logit columns of a copy in place.
  -- Either way each value is computed in double and rounded once.
  local T = (mix > 0 or blur > 0 or noise > 0) and p.T:totable() or nil
  local tl, tn = p.tlogit:totable(), p.tnorm:totable()
  local function renorm(row)
    local s = 0
    for j = 1, w do s = s + row[j] * row[j] end
    s = math.sqrt(s)
    if s > 1e-12 then for j = 1, w do row[j] = row[j] / s end end
  end
  if mix > 0 then
    local lam = g:uniform() * mix
    local T2, tl2, tn2 = partner.T:totable(), partner.tlogit:totable(), partner.tnorm:totable()
    for c = 1, k do
      for j = 1, w do T[c][j] = (1 - lam) * T[c][j] + lam * T2[c][j] end
      if lcol then for r = 1, R do T[c][lcol + r] = (1 - lam) * T[c][lcol + r] + lam * T2[c][lcol + r] end end
      tl[c], tn[c] = (1 - lam) * tl[c] + lam * tl2[c], (1 - lam) * tn[c] + lam * tn2[c]
      renorm(T[c])
    end
  end
  if blur > 0 then
    local a = (2 * g:uniform() - 1) * blur
    for c = 1, k do
      local row = T[c]
      for r = 0, R - 1 do
        local b = binomial_blur(row, r * seg, side)
        for j = 1, seg do row[r * seg + j] = row[r * seg + j] + a * (b[j] - row[r * seg + j]) end
      end
      renorm(row)
    end
  end
  if noise > 0 then
    local r = g:uniform() * noise / math.sqrt(w)
    for c = 1, k do
      local row = T[c]
      for j = 1, w do row[j] = row[j] + r * g:normal() end
      renorm(row)
    end
  end
  local f -- the logits' factor
  if scale > 0 then
    f = math.exp(scale * g:normal())
    for c = 1, k do
      tl[c] = tl[c] * f
      if T and lcol then for r = 1, R do T[c][lcol + r] = T[c][lcol + r] * f end end
      tn[c] = tn[c] * math.exp(scale * g:normal())
    end
  end
  local Tq = T and core.tensor(T) or p.T:clone()
  if f and not T and lcol then
    for c = 1, k do for r = 1, R do Tq:set(c, lcol + r, Tq:get(c, lcol + r) * f) end end
  end
  local mx = 0
  for c = 1, k do mx = math.max(mx, tn[c]) end
  if mx > 1e-12 then for c = 1, k do tn[c] = tn[c] / mx end end
  local q = {}
  for key, v in pairs(p) do q[key] = v end
  q.T, q.tlogit, q.tnorm = Tq, core.tensor(tl), core.tensor(tn)
  return q
end

--- A prepared model restricted to a random subset of `keep` of its
-- first-layer units (rows of U1, bias and importance, columns of M2).
function A:keep_units(p, keep, g)
  if not p.U1 then return p end -- the templates slot alone has no weight units
  local h = p.U1:size(1)
  local idx = {table.unpack(data.randperm(h, g), 1, math.max(1, math.floor(h * keep + 0.5)))}
  table.sort(idx)
  local q = {}
  for k, v in pairs(p) do q[k] = v end
  q.U1, q.bias, q.imp, q.mix = p.U1:index_rows(idx), {table.unpack(p.bias)}, {table.unpack(p.imp)}, {}
  q.bias[1], q.imp[1] = p.bias[1]:index_rows(idx), p.imp[1]:index_rows(idx)
  for l, m in pairs(p.mix) do q.mix[l] = m end
  q.mix[2] = p.mix[2]:t():index_rows(idx):t()
  return q
end

return A
