--- lualps.nn: layers (Torch nn contract), cross-entropy, and the C training loop.
--   local m = lps.nn.mlp{784, 64, 64, 2}
--   local y = m:forward(x)              -- x: batch x 784
--   local gx = m:backward(x, gy)        -- accumulates parameter gradients
--   local params, grads = m:parameters()
--   local report = lps.train(m, {x = x, y = y}, {optimizer = lps.optim.adam{}, epochs = 3})
local core = require "lualps.core"
local arch = require "lualps.arch"
local util = require "lualps.util"
local C = core._nn

local nn = {}
local Module = C.Module -- the method table of every module

local function is_generator(v)
  local mt = getmetatable(v)
  return type(v) == "userdata" and type(mt) == "table" and mt.__name == "lualps.Generator"
end

-- opts may be a generator or a table with a `generator` field.
local function generator_of(opts)
  if is_generator(opts) then return opts end
  if type(opts) == "table" then return opts.generator end
  return nil
end

--- linear(in, out[, {generator=}]): y = x W^T + b, W is out x in.
function nn.linear(inf, outf, opts)
  if type(opts) == "table" then util.options(opts, {}, "linear", {"generator"}) end
  return C.linear(inf, outf, generator_of(opts))
end
function nn.relu() return C.relu() end
function nn.tanh() return C.tanh() end
--- flatten(): (B, ...) -> (B, rest).
function nn.flatten() return C.flatten() end

--- Options of nn.conv2d and their defaults (and a generator; a generator
-- alone may stand for the table).
nn.conv2d_defaults = {stride = 1, padding = 0}

--- conv2d(cin, cout, k[, opts]); input B x cin x H x W; opts: nn.conv2d_defaults.
function nn.conv2d(cin, cout, k, opts)
  local o = util.options(not is_generator(opts) and opts or nil, nn.conv2d_defaults, "conv2d", {"generator"})
  return C.conv2d(cin, cout, k, o.stride, o.padding, generator_of(opts))
end

--- maxpool2d(k[, {stride = k}]).
function nn.maxpool2d(k, opts)
  local o = util.options(opts, {}, "maxpool2d", {"stride"})
  return C.maxpool2d(k, o.stride or 0)
end

--- sequential{m1, m2, ...}: modules applied in order (each may appear once).
function nn.sequential(list) return C.sequential(list) end

--- mlp{784, 64, 64, 2[, generator = g, activation = "relu"|"tanh"]}: linear
-- layers between the sizes with the activation between them, none after the last.
function nn.mlp(sizes)
  if type(sizes) ~= "table" or #sizes < 2 then error("mlp: expected at least two sizes, e.g. {784, 64, 10}", 2) end
  for k in pairs(sizes) do
    if math.type(k) ~= "integer" and k ~= "generator" and k ~= "activation" then
      error(("mlp: unknown option '%s' (activation, generator)"):format(tostring(k)), 2)
    end
  end
  local act = sizes.activation or "relu"
  if act ~= "relu" and act ~= "tanh" then error("mlp: activation must be 'relu' or 'tanh'", 2) end
  local layers = {}
  for i = 1, #sizes - 1 do
    layers[#layers + 1] = C.linear(sizes[i], sizes[i + 1], sizes.generator)
    if i < #sizes - 1 then layers[#layers + 1] = C[act]() end
  end
  return C.sequential(layers)
end

------------------------------------------------------------------ specs

local builders = {
  linear = function(s, g) return C.linear(s.in_features, s.out_features, g) end,
  conv2d = function(s, g)
    return C.conv2d(s.in_channels, s.out_channels, s.kernel_size, s.stride or 1, s.padding or 0, g)
  end,
  maxpool2d = function(s) return C.maxpool2d(s.kernel_size, s.stride or 0) end,
  relu = function() return C.relu() end,
  tanh = function() return C.tanh() end,
  flatten = function() return C.flatten() end,
}

--- A fresh module (new weights from the generator) with the architecture of
-- spec, as returned by m:spec().
function nn.from_spec(spec, gen)
  if type(spec) ~= "table" then error("from_spec: expected a spec table", 2) end
  if spec.type == "sequential" then
    if type(spec.layers) ~= "table" then error("from_spec: a sequential spec needs a layers list", 2) end
    local layers = {}
    for i, s in ipairs(spec.layers) do layers[i] = nn.from_spec(s, gen) end
    return C.sequential(layers)
  end
  local b = builders[spec.type]
  if not b then error(("from_spec: unknown layer type '%s'"):format(tostring(spec.type)), 2) end
  local ok, m = pcall(b, spec, gen)
  if not ok then error(("from_spec: bad %s spec: %s"):format(spec.type, m), 2) end
  return m
end

------------------------------------------------------------------ arch lists

--- The architecture as an arch list, the form it travels in through
-- safetensors files (metadata "lualps.arch"; see lps.arch.check): one
-- table per layer of the Sequential (a single layer gives a list of one),
-- e.g. `{{type = "conv2d", ["in"] = 1, out = 8, kernel = 5, stride = 2,
-- padding = 2}, {type = "relu"}, ...}`. opts.input (default none) is the
-- input shape without the batch, e.g. {1, 28, 28}: it becomes a first entry
-- {type = "input", shape = ...} and every layer's shape is checked against
-- it. Returns the list and its JSON text. Nested Sequentials have no arch
-- list (an error).
function Module:arch(opts)
  local o = util.options(opts, {}, "arch", {"input"})
  local ok, list, json = pcall(arch.of_spec, self:spec(), o.input)
  if not ok then error((tostring(list):gsub("^.-:%d+: ", "")), 2) end
  return list, json
end

--- A fresh Sequential (new weights from the generator, or opts.generator)
-- with the architecture of an arch list (a Lua list or its JSON text, see
-- lps.arch.check); the inverse of m:arch().
function nn.from_arch(a, gen)
  local ok, list = pcall(arch.check, a)
  if not ok then error("from_arch: " .. tostring(list):gsub("^.-:%d+: ", ""):gsub("^arch: ", ""), 2) end
  gen = generator_of(gen)
  local layers = {}
  for _, e in ipairs(list) do
    local m
    if e.type == "linear" then m = C.linear(e["in"], e.out, gen)
    elseif e.type == "conv2d" then m = C.conv2d(e["in"], e.out, e.kernel, e.stride, e.padding, gen)
    elseif e.type == "maxpool2d" then m = C.maxpool2d(e.kernel, e.stride)
    elseif e.type ~= "input" then m = C[e.type]() end
    layers[#layers + 1] = m
  end
  return C.sequential(layers)
end

--- Parameters named as PyTorch's state_dict for the same nn.Sequential:
-- { {name = "0.weight", tensor = W}, {name = "0.bias", tensor = b}, ... }
-- (0-based child positions; tensors share memory with the module).
function Module:named_parameters()
  local out = {}
  local function walk(m, prefix)
    if m:type() == "sequential" then
      for i, c in ipairs(m:children()) do walk(c, prefix .. (i - 1) .. ".") end
    else
      local p = m:parameters()
      if #p == 2 then
        out[#out + 1] = {name = prefix .. "weight", tensor = p[1]}
        out[#out + 1] = {name = prefix .. "bias", tensor = p[2]}
      end
    end
  end
  walk(self, "")
  return out
end

--- name -> tensor (shares memory), like PyTorch's state_dict().
function Module:state_dict()
  local map = {}
  for _, e in ipairs(self:named_parameters()) do map[e.name] = e.tensor end
  return map
end

local function shape_str(t) return "(" .. table.concat(t:shape(), "x") .. ")" end

--- Copy parameters in by name (map: name -> tensor). Every name must be
-- present with the right shape and no other name may appear; nothing is
-- copied unless all fit.
function Module:load_named(map)
  if type(map) ~= "table" then error("load_named: expected a table of name -> tensor", 2) end
  local named, known = self:named_parameters(), {}
  for _, e in ipairs(named) do
    known[e.name] = true
    local src = map[e.name]
    if src == nil then error(("load_named: parameter '%s' is missing"):format(e.name), 2) end
    if not core.is_tensor(src) then error(("load_named: '%s' is a %s, expected a tensor"):format(e.name, type(src)), 2) end
    local a, b = src:shape(), e.tensor:shape()
    local same = #a == #b
    for i = 1, #a do same = same and a[i] == b[i] end
    if not same then
      error(("load_named: '%s' has shape %s, expected %s"):format(e.name, shape_str(src), shape_str(e.tensor)), 2)
    end
  end
  for name in pairs(map) do
    if not known[name] then error(("load_named: unexpected parameter '%s'"):format(tostring(name)), 2) end
  end
  for _, e in ipairs(named) do e.tensor:copy(map[e.name]) end
  return self
end

--- An independent copy: same architecture and weights, fresh gradients.
function Module:clone()
  local c = nn.from_spec(self:spec(), core.generator(0))
  return c:load_named(self:state_dict())
end

------------------------------------------------------------------ loss

local CrossEntropy = {}
CrossEntropy.__index = CrossEntropy
CrossEntropy.__tostring = function() return "CrossEntropyLoss()" end

--- crit:forward(logits, labels) -> mean loss; labels 1-based (tensor or table).
function CrossEntropy:forward(logits, labels)
  self.output = C.cross_entropy(logits, labels)
  return self.output
end

--- crit:backward(logits, labels) -> dloss/dlogits.
function CrossEntropy:backward(logits, labels)
  local _, g = C.cross_entropy(logits, labels, true)
  self.grad_input = g
  return g
end

function nn.cross_entropy() return setmetatable({}, CrossEntropy) end

------------------------------------------------------------------ training

local function unpack_data(d, what)
  if type(d) ~= "table" then error(what .. ": data should be {x = tensor, y = labels}", 3) end
  local x, y = d.x or d[1], d.y or d[2]
  if not core.is_tensor(x) then error(what .. ": data.x should be a tensor", 3) end
  if y == nil then error(what .. ": data.y (labels) is missing", 3) end
  return x, y
end

--- Options of lps.train and their defaults; also optimizer (required),
-- schedule (lps.optim.step_lr or cosine; none), generator (shuffling;
-- default the default generator), validation ({x =, y =}, evaluated after
-- each epoch) and progress (see lps.train).
nn.train_defaults = {
  epochs = 1,
  batch_size = 32,
  shuffle = true,          -- a new order every epoch
  drop_last = false,       -- true: skip a last, smaller batch
  progress_interval = 0.25, -- seconds between progress calls within an epoch
  eval_batch = 256,        -- batch size of the validation pass
}
local train_more = {"optimizer", "schedule", "generator", "validation", "progress"}

--- lps.train(model, {x =, y =}, opts) runs the whole loop in C and returns a report:
-- {epochs = {{epoch, loss, accuracy, seconds, lr[, val_loss, val_accuracy]}, ...},
--  loss, accuracy, seconds, samples_per_second[, val_loss, val_accuracy]}.
-- opts: nn.train_defaults, the optimizer and the others named there;
-- progress is a function called with a table {epoch, epochs, step, steps,
-- samples, loss, accuracy, seconds, lr, done[, val_loss, val_accuracy]} at
-- most every progress_interval seconds and at each epoch's end (done =
-- true, with validation results) - return false to stop; true/false forces
-- the lps.util.epoch_progress bar on or off, a table turns it on with those
-- util.progress options, e.g. {stream = f, tty = false}; by default the bar
-- shows when stderr is a terminal.
function nn.train(model, d, opts)
  local o = util.options(opts, nn.train_defaults, "train", train_more)
  local x, y = unpack_data(d, "train")
  if not o.optimizer then error("train: opts.optimizer is required, e.g. lps.optim.adam{lr = 1e-3}", 2) end
  local progress, display = o.progress, nil
  if progress == nil then progress = core.isatty(2) end
  if progress == true or type(progress) == "table" then
    progress, display = util.epoch_progress(progress ~= true and progress or nil)
  elseif progress == false then
    progress = nil
  end
  local _ <close> = display -- ends the bar's line however training ends
  local c = {epochs = o.epochs, batch_size = o.batch_size, shuffle = o.shuffle, drop_last = o.drop_last,
    generator = o.generator, schedule = o.schedule, eval_batch = o.eval_batch,
    progress_interval = o.progress_interval}
  if o.validation then c.val_x, c.val_y = unpack_data(o.validation, "train (validation)") end
  local t0 = core.now()
  local epochs = C.train(model, x, y, o.optimizer, c, progress)
  local seconds = core.now() - t0
  local last = epochs[#epochs] or {}
  local samples = x:size(1) * #epochs
  return {epochs = epochs, loss = last.loss, accuracy = last.accuracy, seconds = seconds,
    val_loss = last.val_loss, val_accuracy = last.val_accuracy,
    samples_per_second = seconds > 0 and samples / seconds or nil}
end

--- lps.evaluate(model, {x =, y =}[, {batch_size = 256}]) -> accuracy, mean loss.
function nn.evaluate(model, d, opts)
  local o = util.options(opts, {batch_size = 256}, "evaluate")
  local x, y = unpack_data(d, "evaluate")
  return C.evaluate(model, x, y, o.batch_size)
end

return nn
