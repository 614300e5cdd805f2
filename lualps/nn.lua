--- lualps.nn: layers (Torch nn contract), cross-entropy, and the C training loop.
--   local m = lps.nn.mlp{784, 64, 64, 2}
--   local y = m:forward(x)              -- x: batch x 784
--   local gx = m:backward(x, gy)        -- accumulates parameter gradients
--   local params, grads = m:parameters()
--   local report = lps.train(m, {x = x, y = y}, {optimizer = lps.optim.adam{}, epochs = 3})
-- Methods in C (csrc/lua/lua_nn.c): forward, backward, parameters,
-- named_parameters, named_buffers, zero_grad, train, evaluate, freeze([on])
-- (input gradients only), batch_stats([on]) (eval-mode batch norm by each
-- batch's statistics, AdaBN), stat_prior(w) (eval-mode batch norm's dream
-- prior: lualps.h), is_training, children, arch, num_parameters,
-- close; m:output_shape{batch, ...} -> the output's sizes;
-- m:input_gradients(x, gy[, group]) -> y, gx: one forward of x (n samples),
-- then the input gradient of each block of n rows of gy (k*n x out),
-- averaged over consecutive groups of `group` samples (default 1; a frozen
-- first conv or linear layer then maps the means, not every sample); an
-- unfrozen module also adds each block's parameter gradients.
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

--- linear(in, out[, {generator =, bias = true}]): y = x W^T + b, W is out x in.
function nn.linear(inf, outf, opts)
  local o = util.options(not is_generator(opts) and opts or nil, {bias = true}, "linear", {"generator"})
  return C.layer("linear", {["in"] = inf, out = outf, bias = o.bias}, generator_of(opts))
end
function nn.relu() return C.layer("relu") end
function nn.tanh() return C.layer("tanh") end
--- flatten(): (B, ...) -> (B, rest).
function nn.flatten() return C.layer("flatten") end

--- Options of nn.conv2d and their defaults (and a generator; a generator
-- alone may stand for the table).
nn.conv2d_defaults = {stride = 1, padding = 0, bias = true}

--- conv2d(cin, cout, k[, opts]); input B x cin x H x W; opts: nn.conv2d_defaults.
function nn.conv2d(cin, cout, k, opts)
  local o = util.options(not is_generator(opts) and opts or nil, nn.conv2d_defaults, "conv2d", {"generator"})
  return C.layer("conv2d", {["in"] = cin, out = cout, kernel = k, stride = o.stride, padding = o.padding,
    bias = o.bias}, generator_of(opts))
end

--- maxpool2d(k[, {stride = k}]).
function nn.maxpool2d(k, opts)
  local o = util.options(opts, {}, "maxpool2d", {"stride"})
  return C.layer("maxpool2d", {kernel = k, stride = o.stride})
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
    layers[#layers + 1] = C.layer("linear", {["in"] = sizes[i], out = sizes[i + 1]}, sizes.generator)
    if i < #sizes - 1 then layers[#layers + 1] = C.layer(act) end
  end
  return C.sequential(layers)
end

--- Every layer type of the registry (csrc/nn/registry.c) is a constructor,
-- lps.nn.<type>(...): its fields' values in their declared order, then
-- optionally a table of the others by name (and `generator`), e.g.
-- lps.nn.batchnorm2d(16, {eps = 1e-3}); lps.nn.layer(type, fields) takes
-- them all by name. lps.nn.layer_types() lists the types and fields.
function nn.layer(type_name, fields, gen)
  return C.layer(type_name, fields, generator_of(gen) or generator_of(fields))
end

function nn.layer_types() return C.layer_types() end

for _, t in ipairs(C.layer_types()) do
  if nn[t.name] == nil then
    nn[t.name] = function(...)
      local args, fields = table.pack(...), {}
      local k = 0
      for i = 1, args.n do
        local v = args[i]
        if type(v) == "table" and getmetatable(v) == nil then
          for key, val in pairs(v) do fields[key] = val end
        elseif type(v) == "number" or type(v) == "boolean" then
          k = k + 1
          local f = t.fields[k]
          if not f then error(("%s: takes %d values, got %d"):format(t.name, #t.fields, k), 2) end
          fields[f.key] = v
        elseif is_generator(v) then
          fields.generator = v
        else
          error(("%s: argument %d is a %s; expected its fields' values or a table of them"):format(
            t.name, i, type(v)), 2)
        end
      end
      return C.layer(t.name, fields, fields.generator)
    end
  end
end

------------------------------------------------------------------ architectures

local C_arch = Module.arch

--- The architecture as an arch list, the form it travels in through
-- safetensors files and model sets (see lps.arch.check): one table per
-- layer of the Sequential (a single layer gives a list of one), e.g.
-- `{{type = "conv2d", ["in"] = 1, out = 8, kernel = 5, stride = 2,
-- padding = 2}, {type = "relu"}, ...}`. opts.input (default none) is the
-- input shape without the batch, e.g. {1, 28, 28}: it becomes a first entry
-- {type = "input", shape = ...} and every layer's shape is checked against
-- it. Returns the list and its JSON text. Nested Sequentials have no arch
-- list (an error).
function Module:arch(opts)
  local o = util.options(opts, {}, "arch", {"input"})
  local ok, list, json = pcall(C_arch, self)
  if not ok then error((tostring(list):gsub("^.-:%d+: ", "")), 2) end
  if o.input ~= nil then
    table.insert(list, 1, {type = "input", shape = o.input})
    local ok2, checked, j = pcall(arch.check, list)
    if not ok2 then error((tostring(checked):gsub("^.-:%d+: ", "")), 2) end
    list, json = checked, j
  end
  return list, json
end

--- A fresh Sequential (new weights from the generator, or opts.generator;
-- gen = false: zeros, for weights about to be copied in) with the
-- architecture of an arch list (a Lua list or its JSON text, see
-- lps.arch.check); the inverse of m:arch().
function nn.from_arch(a, gen)
  local g = generator_of(gen)
  if gen == false then g = false end
  local ok, m = pcall(C.from_arch, a, g)
  if not ok then error((tostring(m):gsub("^.-:%d+: ", ""):gsub("^from_arch: arch: ", "from_arch: ")), 2) end
  return m
end

--- name -> tensor (shares memory), parameters and buffers, like PyTorch's state_dict().
function Module:state_dict()
  local map = {}
  for _, e in ipairs(self:named_parameters()) do map[e.name] = e.tensor end
  for _, e in ipairs(self:named_buffers()) do map[e.name] = e.tensor end
  return map
end

local function shape_str(t) return "(" .. table.concat(t:shape(), "x") .. ")" end

-- "layer 4 (residual) body layer 2 (batchnorm2d): " for a name of m's
-- state_dict, or "" (errors name the layer as arch errors do).
local function owner(m, name)
  local ok, list = pcall(C_arch, m)
  if not ok then return "" end
  local who = arch.layer_of(list, m:type() == "sequential" and name or "0." .. name)
  return who and who .. ": " or ""
end

--- Copy parameters and buffers in by name (map: name -> tensor). Every name
-- must be present with the right shape and no other name may appear
-- (opts.ignore: a list of Lua patterns of names to pass over, e.g.
-- "num_batches_tracked$"); nothing is copied unless all fit.
function Module:load_named(map, opts)
  if type(map) ~= "table" then error("load_named: expected a table of name -> tensor", 2) end
  local o = util.options(opts, {ignore = {}}, "load_named")
  local named, known = self:named_parameters(), {}
  local nparams = #named
  for _, e in ipairs(self:named_buffers()) do named[#named + 1] = e end
  for k, e in ipairs(named) do
    known[e.name] = true
    local src = map[e.name]
    if src == nil then
      error(("load_named: %s%s '%s' is missing"):format(owner(self, e.name), k > nparams and "buffer" or "parameter",
        e.name), 2)
    end
    if not core.is_tensor(src) then error(("load_named: '%s' is a %s, expected a tensor"):format(e.name, type(src)), 2) end
    local a, b = src:shape(), e.tensor:shape()
    local same = #a == #b
    for i = 1, #a do same = same and a[i] == b[i] end
    if not same then
      error(("load_named: %s%s '%s' has shape %s, expected %s"):format(owner(self, e.name),
        k > nparams and "buffer" or "parameter", e.name, shape_str(src), shape_str(e.tensor)), 2)
    end
  end
  for name in pairs(map) do
    local skip = false
    for _, pat in ipairs(o.ignore) do skip = skip or tostring(name):find(pat) ~= nil end
    if not known[name] and not skip then
      error(("load_named: unexpected parameter '%s'"):format(tostring(name)), 2)
    end
  end
  for _, e in ipairs(named) do e.tensor:copy(map[e.name]) end
  return self
end

--- An independent copy: same architecture, weights and buffers, fresh gradients.
function Module:clone()
  local c = C.from_arch((C_arch(self)), core.generator(0))
  if self:type() ~= "sequential" then c = c[1] end
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
