--- lualps.bench.zoo (lps.zoo): building model sets (many small models over related tasks).
-- Everything a model depends on (seed, optimizer, learning rate, batch size,
-- epochs, data subset) is drawn from its own generator, seeded from the
-- master seed and the model's position in the plan. So a model trains the
-- same whichever shard, process or machine builds it, and a sharded build
-- merges into the same set as a single-process build.
local core = require "lualps.core"
local util = require "lualps.util"
local nn = require "lualps.nn"
local optim = require "lualps.optim"
local data = require "lualps.data"
local modelset = require "lualps.modelset"

local zoo = {}

--- Check a task table ({ {id=, classes={a, b}}, ... }, classes 0-based) and
-- return the number of tasks each class appears in.
function zoo.check_tasks(tasks, nclasses)
  nclasses = nclasses or 10
  assert(type(tasks) == "table" and #tasks > 0, "zoo: the task table is empty")
  local seen, per_class = {}, {}
  for c = 0, nclasses - 1 do per_class[c] = 0 end
  for i, t in ipairs(tasks) do
    if t.id ~= i then error(("zoo: task %d has id %s, expected %d"):format(i, tostring(t.id), i), 2) end
    local a, b = t.classes and t.classes[1], t.classes and t.classes[2]
    for _, c in ipairs{a, b} do
      if math.type(c) ~= "integer" or c < 0 or c >= nclasses then
        error(("zoo: task %d has class %s, expected an integer 0..%d"):format(i, tostring(c), nclasses - 1), 2)
      end
    end
    if a == b then error(("zoo: task %d pairs class %d with itself"):format(i, a), 2) end
    local key = math.min(a, b) .. "-" .. math.max(a, b)
    if seen[key] then error(("zoo: tasks %d and %d use the same classes"):format(seen[key], i), 2) end
    seen[key] = i
    per_class[a] = per_class[a] + 1
    per_class[b] = per_class[b] + 1
  end
  return per_class
end

-- 64-bit FNV-1a over a string, as 16 hex digits: a fingerprint of a build's
-- configuration, stored with every model so a resumed build can refuse a
-- file made with another seed or task table.
local function fnv1a(s)
  local h = 0xcbf29ce484222325
  for i = 1, #s do
    h = h ~ s:byte(i)
    h = h * 0x100000001b3 -- wraps modulo 2^64, as FNV wants
  end
  return string.format("%016x", h)
end
zoo.fnv1a = fnv1a

--- Defaults of a build; every field may be overridden in zoo.plan's cfg,
-- which also holds `tasks` (the task table, required).
zoo.defaults = {
  master_seed = 500,
  per_task = 25,
  sizes = {784, 64, 64, 2},      -- the MLP's layer sizes
  epochs = {2, 5},               -- inclusive range, uniform
  batch_sizes = {32, 64, 128},
  fraction = 0.8,                -- of the task's training images
  sgd = {lr = {0.01, 0.1}, momentum = 0.9},   -- lr log-uniform in the range
  adam = {lr = {3e-4, 3e-3}},
  min_test_accuracy = 0.75,      -- below: retrain with the next seed
  max_attempts = 5,
}

local function config(cfg) return util.options(cfg, zoo.defaults, "zoo", {"tasks"}) end

--- A canonical text of everything that determines the set's models.
function zoo.fingerprint(cfg)
  cfg = config(cfg)
  local parts = {"master_seed=" .. cfg.master_seed, "per_task=" .. cfg.per_task,
    "arch=" .. table.concat(cfg.sizes, "-"), "epochs=" .. table.concat(cfg.epochs, "-"),
    "batch=" .. table.concat(cfg.batch_sizes, "-"), "fraction=" .. cfg.fraction,
    ("sgd=%g-%g/%g"):format(cfg.sgd.lr[1], cfg.sgd.lr[2], cfg.sgd.momentum),
    ("adam=%g-%g"):format(cfg.adam.lr[1], cfg.adam.lr[2]),
    "min_acc=" .. cfg.min_test_accuracy}
  for _, t in ipairs(cfg.tasks) do parts[#parts + 1] = t.classes[1] .. "/" .. t.classes[2] end
  return fnv1a(table.concat(parts, ";"))
end

local function log_uniform(g, lo, hi)
  return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * g:uniform())
end

--- The plan: one entry per model, task-major (task 1's models first), with
-- everything its training needs. cfg.tasks is required.
function zoo.plan(cfg)
  cfg = config(cfg)
  zoo.check_tasks(cfg.tasks)
  local plan, fp = {}, zoo.fingerprint(cfg)
  for ti, task in ipairs(cfg.tasks) do
    for k = 1, cfg.per_task do
      local index = #plan + 1
      -- A generator per model, from (master seed, position): independent of
      -- which process builds it.
      local seed = cfg.master_seed * 1000003 + index
      local g = core.generator(seed)
      local opt = (k % 2 == 1) and "sgd" or "adam" -- half and half within each task
      local range = cfg[opt].lr
      plan[index] = {
        index = index,
        id = string.format("t%02d-m%02d", ti, k),
        task = ti,
        classes = {task.classes[1], task.classes[2]},
        seed = seed,
        optimizer = opt,
        lr = log_uniform(g, range[1], range[2]),
        momentum = opt == "sgd" and cfg.sgd.momentum or nil,
        batch_size = cfg.batch_sizes[g:random(#cfg.batch_sizes)],
        epochs = g:random(cfg.epochs[1], cfg.epochs[2]),
        fraction = cfg.fraction,
        sizes = cfg.sizes,
        fingerprint = fp,
        master_seed = cfg.master_seed,
      }
    end
  end
  return plan
end

--- Parse "i/n" (1 <= i <= n); errors name the bad spec.
function zoo.parse_shard(spec)
  local i, n = tostring(spec):match("^(%d+)/(%d+)$")
  i, n = tonumber(i), tonumber(n)
  if not i or n < 1 or i < 1 or i > n then
    error(("bad shard spec '%s': expected i/n with 1 <= i <= n, e.g. 1/4"):format(tostring(spec)), 0)
  end
  return i, n
end

--- The models of shard i of n: a contiguous block of the plan, so that
-- concatenating shards 1..n in order gives the plan's order.
function zoo.shard(plan, i, n)
  local N = #plan
  local lo, hi = (i - 1) * N // n + 1, i * N // n
  local out = {}
  for g = lo, hi do out[#out + 1] = plan[g] end
  return out
end

--- A copy of the list t in the order of a random permutation from generator g.
function zoo.shuffled(t, g)
  local c = {}
  for k, i in ipairs(data.randperm(#t, g)) do c[k] = t[i] end
  return c
end
local shuffled = zoo.shuffled

--- The standard splits, fixed by the master seed:
-- classification: per task, `train_per_task` models to train on, the rest held out;
-- retrieval: `unseen` tasks whose models are split into `queries` queries and
-- the rest gallery; the other tasks' models are for training.
-- Returns lists of model ids.
function zoo.splits(cfg, opts)
  cfg = config(cfg)
  opts = util.options(opts, {}, "zoo.splits", {"train_per_task", "unseen", "queries"})
  local per_task = cfg.per_task
  local train_per_task = opts.train_per_task or math.floor(per_task * 0.6 + 0.5)
  local ntasks = #cfg.tasks
  local unseen_n = opts.unseen or math.floor(ntasks * 0.4 + 0.5)
  local queries = opts.queries or math.max(1, per_task // 5)
  assert(train_per_task >= 1 and train_per_task < per_task, "zoo.splits: bad train_per_task")
  assert(unseen_n >= 1 and unseen_n < ntasks, "zoo.splits: bad number of unseen tasks")
  local g = core.generator(cfg.master_seed * 7919 + 17)
  local function id(t, k) return string.format("t%02d-m%02d", t, k) end
  local ks = {}
  for k = 1, per_task do ks[k] = k end

  local cls = {train = {}, test = {}}
  for t = 1, ntasks do
    local order = shuffled(ks, g)
    for j, k in ipairs(order) do
      table.insert(j <= train_per_task and cls.train or cls.test, id(t, k))
    end
  end

  local task_ids = {}
  for t = 1, ntasks do task_ids[t] = t end
  local order = shuffled(task_ids, g)
  local ret = {train_tasks = {}, unseen_tasks = {}, train = {}, query = {}, gallery = {}}
  for j, t in ipairs(order) do
    table.insert(j <= unseen_n and ret.unseen_tasks or ret.train_tasks, t)
  end
  table.sort(ret.unseen_tasks)
  table.sort(ret.train_tasks)
  for _, t in ipairs(ret.train_tasks) do
    for k = 1, per_task do ret.train[#ret.train + 1] = id(t, k) end
  end
  for _, t in ipairs(ret.unseen_tasks) do
    for j, k in ipairs(shuffled(ks, g)) do
      table.insert(j <= queries and ret.query or ret.gallery, id(t, k))
    end
  end
  return {classification = cls, retrieval = ret, master_seed = cfg.master_seed,
          fingerprint = zoo.fingerprint(cfg)}
end

------------------------------------------------------------------ building

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end
zoo.file_exists = file_exists

-- The rendered letters of every glyphs task of a task list with the image
-- counts of task `t`: x, y, xt, yt of their labels (sorted), 1-based
-- glyph labels. Images are class-cyclic and a letter's k-th image does not
-- depend on the others rendered, so a task selects the same rows whichever
-- tasks the list holds.
local function glyphs_of(tasks, t)
  local n = math.tointeger(t.per_class)
  local nt = math.tointeger(t.test_per_class)
  if not n or not nt then
    error(("task_data_loader: glyphs task '%s' needs integer per_class and test_per_class"):format(tostring(t.name)), 0)
  end
  local seen, labels = {}, {}
  for _, u in ipairs(tasks) do
    if u.source == "glyphs" and u.per_class == t.per_class and u.test_per_class == t.test_per_class then
      for _, l in ipairs(u.labels) do
        if not seen[l] then seen[l], labels[#labels + 1] = true, math.tointeger(l) end
      end
    end
  end
  table.sort(labels)
  local x, y = data.glyphs("train", {per_class = n, classes = labels})
  local xt, yt = data.glyphs("test", {per_class = nt, classes = labels})
  data.glyphs_clear_cache() -- this loader keeps them
  return {x, y, xt, yt}
end

--- The images of the plan's tasks, their source loaded once per process:
-- task_data(t) -> {x, y, xt, yt} (labels 1..k = the task's classes in
-- order), the images in the task's `domain` (data.domain) when it has
-- one. A task's `source` is "fashion_mnist" (the default: Fashion-MNIST
-- from data_dir, class c is label c + 1, or the task's `labels`) or
-- "glyphs" (lps.data.glyphs: the task's `labels`, `per_class` training
-- and `test_per_class` test images per class). opts.max_test keeps the
-- first that many test images of a task.
function zoo.task_data_loader(tasks, data_dir, opts)
  local max_test = util.options(opts, {}, "task_data_loader", {"max_test"}).max_test
  local sources, cache = {}, {}
  local function source_of(t)
    local task = tasks[t]
    local src = task.source or "fashion_mnist"
    if src == "fashion_mnist" then
      if not sources.fm then
        local x, y = data.fashion_mnist("train", data_dir)
        local xt, yt = data.fashion_mnist("test", data_dir)
        sources.fm = {x, y, xt, yt}
      end
      return sources.fm
    elseif src == "glyphs" then
      local key = ("glyphs/%s/%s"):format(tostring(task.per_class), tostring(task.test_per_class))
      sources[key] = sources[key] or glyphs_of(tasks, task)
      return sources[key]
    end
    error(("task_data_loader: task %d has unknown source '%s' (fashion_mnist, glyphs)"):format(t, tostring(src)), 0)
  end
  return function(t)
    if not cache[t] then
      local x, y, xt, yt = table.unpack(source_of(t))
      local c = {}
      for k, cl in ipairs(tasks[t].classes) do c[k] = tasks[t].labels and tasks[t].labels[k] or cl + 1 end
      local a, b = data.select_classes(x, y, c)
      local at, bt = data.select_classes(xt, yt, c)
      if max_test and at:size(1) > max_test then at, bt = at:rows(1, max_test), bt:rows(1, max_test) end
      local d = tasks[t].domain
      if d and d ~= "identity" then a, at = data.domain(a, d), data.domain(at, d) end
      cache = {[t] = {x = a, y = b, xt = at, yt = bt}} -- tasks come in order: keep one
    end
    return cache[t]
  end
end

-- The optimizer of a plan entry (sgd with momentum, adam, adamw).
local function optimizer_of(m)
  if m.optimizer == "sgd" then
    return optim.sgd{lr = m.lr, momentum = m.momentum, weight_decay = m.weight_decay}
  elseif m.optimizer == "adamw" then
    return optim.adamw{lr = m.lr, weight_decay = m.weight_decay}
  end
  return optim.adam{lr = m.lr, weight_decay = m.weight_decay}
end

--- Train the model of plan entry m on its task's data; attempt 0 uses
-- m.seed, attempt a uses m.seed + a * 2^32 ("the next seed"). The model is
-- m.arch (an arch list: nn.from_arch, inputs reshaped to m.input_shape) or
-- an MLP of layer sizes m.sizes.
function zoo.train_one(m, td, attempt)
  local seed = m.seed + (attempt or 0) * 4294967296
  local g = core.generator(seed)
  local x, y = data.fraction(td.x, td.y, m.fraction, g)
  local xt = td.xt
  local model
  if m.arch then
    model = nn.from_arch(m.arch, g)
    if m.input_shape then
      x = x:reshape(x:size(1), table.unpack(m.input_shape))
      xt = xt:reshape(xt:size(1), table.unpack(m.input_shape))
    end
  else
    model = nn.mlp(table.move(m.sizes, 1, #m.sizes, 1, {generator = g}))
  end
  local rep = nn.train(model, {x = x, y = y}, {optimizer = optimizer_of(m), epochs = m.epochs,
    batch_size = m.batch_size, generator = g, progress = false})
  local train_acc = nn.evaluate(model, {x = x, y = y})
  local test_acc, test_loss = nn.evaluate(model, {x = xt, y = td.yt})
  local history = {}
  for _, e in ipairs(rep.epochs) do history[#history + 1] = {loss = e.loss, accuracy = e.accuracy} end
  return model, {seed = seed, train_accuracy = train_acc, test_accuracy = test_acc,
    test_loss = test_loss, history = history, n_train = x:size(1), seconds = rep.seconds}
end

-- Plan fields stored as they are when a plan has them (ModelSet-Hetero's).
local extra_fields = {"family", "source", "class_names", "domain", "subset", "widths", "heldout_arch", "weight_decay", "min_test_accuracy",
  "in_pool", "macs", "input_shape"}

-- The metadata stored with a model: the plan entry and what training gave.
local function model_meta(m, task, res, attempts)
  local meta = {
    id = m.id, index = m.index, task = m.task, task_name = task.name,
    classes = m.classes, master_seed = m.master_seed, fingerprint = m.fingerprint,
    seed = res.seed, base_seed = m.seed, attempts = attempts,
    architecture = m.architecture or ("mlp-" .. table.concat(m.sizes, "-")),
    optimizer = m.optimizer, lr = m.lr, momentum = m.momentum,
    batch_size = m.batch_size, epochs = m.epochs, fraction = m.fraction, n_train = res.n_train,
    train_accuracy = res.train_accuracy, test_accuracy = res.test_accuracy,
    test_loss = res.test_loss, history = res.history,
  }
  for _, k in ipairs(extra_fields) do meta[k] = m[k] end
  return meta
end

--- The ids a set holds (id -> record number), after checking that every
-- record was built from the configuration `fingerprint`; raises otherwise.
function zoo.stored_ids(ms, fingerprint)
  local have = {}
  for i = 1, #ms do
    local meta = ms:meta(i)
    if meta.fingerprint ~= fingerprint then
      error(("%s was built with another configuration (master seed or task table): "
        .. "fingerprint %s, expected %s; choose another --out"):format(ms:path(),
        tostring(meta.fingerprint), fingerprint), 0)
    end
    have[meta.id] = i
  end
  return have
end

--- Open `path` for appending (creating it if missing), after checking that
-- what it holds was built from the same configuration. A torn tail left by
-- a crash is repaired first (intact records are kept). Returns the set and
-- the set of stored ids. Raises before anything is written when the file
-- belongs to another configuration.
function zoo.open_for_build(path, fingerprint, opts)
  local o = util.options(opts, {}, "open_for_build", {"codec"})
  if not file_exists(path) then
    return modelset.create(path, {codec = o.codec}), {}
  end
  local ok, ms = pcall(modelset.open, path, "a")
  if not ok then
    local okv = modelset.verify(path)
    if okv then error(ms, 0) end -- not a torn tail: something else is wrong
    local rep = modelset.repair(path)
    io.stderr:write(("zoo: repaired %s after an interrupted build (kept %d records)\n")
      :format(path, rep.records or rep.kept or 0))
    ms = modelset.open(path, "a")
  end
  local ok_ids, have = pcall(zoo.stored_ids, ms, fingerprint)
  if not ok_ids then ms:close() error(have, 0) end
  return ms, have
end

--- Options of zoo.build and their defaults; also tasks (the task table,
-- required), data_dir (Fashion-MNIST; default lps.data's), codec (of a new
-- file) and max_test (test images per task; default all).
zoo.build_defaults = {
  progress = {label = "models", unit = "models"}, -- util.progress options, or false
  threads = 1,        -- BLAS threads: 1 gives the same bits whichever process builds a model
  min_test_accuracy = zoo.defaults.min_test_accuracy, -- below: retrain (a plan entry's own wins)
  max_attempts = zoo.defaults.max_attempts,
}

--- Build the models of `plan` (all of it, or one shard's part) into `path`,
-- resuming: models already stored are skipped and nothing stored is
-- rewritten. opts: zoo.build_defaults. Returns a summary table.
function zoo.build(plan, path, opts)
  opts = util.options(opts, zoo.build_defaults, "zoo.build", {"tasks", "data_dir", "codec", "max_test"})
  assert(opts.tasks, "zoo.build: opts.tasks (the task table) is required")
  if #plan == 0 then error("zoo.build: nothing to build", 2) end
  local fp = plan[1].fingerprint
  local ms, have = zoo.open_for_build(path, fp, {codec = opts.codec})
  local todo = {}
  for _, m in ipairs(plan) do if not have[m.id] then todo[#todo + 1] = m end end
  local summary = {stored_before = #plan - #todo, built = 0, retrained = 0, below = 0}
  if #todo == 0 then ms:close() return summary end
  local threads = core.get_num_threads()
  core.set_num_threads(opts.threads)
  local loader = zoo.task_data_loader(opts.tasks, opts.data_dir, {max_test = opts.max_test})
  local prog = opts.progress ~= false and util.progress(#todo, opts.progress)
  local cfg_min, max_attempts = opts.min_test_accuracy, opts.max_attempts
  local ok, err = pcall(function()
    for n, m in ipairs(todo) do
      local td = loader(m.task)
      local attempts, best, best_res = {}, nil, nil
      local floor = m.min_test_accuracy or cfg_min
      for a = 0, max_attempts - 1 do
        local model, res = zoo.train_one(m, td, a)
        attempts[#attempts + 1] = {seed = res.seed, test_accuracy = res.test_accuracy}
        if not best_res or res.test_accuracy > best_res.test_accuracy then best, best_res = model, res end
        if res.test_accuracy >= floor then break end
      end
      if #attempts > 1 then summary.retrained = summary.retrained + 1 end
      if best_res.test_accuracy < floor then summary.below = summary.below + 1 end
      local task = opts.tasks[m.task]
      local meta = model_meta(m, {name = task.name or table.concat(task.classes, " vs ")},
        best_res, attempts)
      ms:append(best, meta)
      summary.built = summary.built + 1
      if prog then prog:update(n, ("%s acc %.3f"):format(m.id, best_res.test_accuracy)) end
    end
  end)
  core.set_num_threads(threads)
  ms:close()
  if prog then summary.seconds = prog:finish() end
  if not ok then error(err, 0) end
  return summary
end

--- Print the per-task accuracy table of a built set (task, name, models,
-- min/median/max test accuracy, retrained) and return the lowest accuracy
-- and the number of retrained models.
function zoo.print_accuracy(ms, tasks)
  local per = zoo.accuracy_summary(ms)
  local w = 24
  for _, t in ipairs(tasks) do w = math.max(w, #t.name) end
  local head = "%-4s %-" .. w .. "s %4s %7s %7s %7s %9s"
  local row = "%-4d %-" .. w .. "s %4d %7.4f %7.4f %7.4f %9d"
  print(head:format("task", "classes", "n", "min", "median", "max", "retrained"))
  local all_min, n_retrained = 1, 0
  for t = 1, #tasks do
    local s = per[t]
    if s then
      print(row:format(t, tasks[t].name, s.n, s.min, s.median, s.max, s.retrained))
      all_min = math.min(all_min, s.min)
      n_retrained = n_retrained + s.retrained
    end
  end
  return all_min, n_retrained
end

--- Per-task accuracy summary of a set: {task -> {n, min, median, max, mean}}.
function zoo.accuracy_summary(ms)
  local per = {}
  for i = 1, #ms do
    local m = ms:meta(i)
    local t = per[m.task] or {accs = {}, retrained = 0}
    per[m.task] = t
    t.accs[#t.accs + 1] = m.test_accuracy
    if m.attempts and #m.attempts > 1 then t.retrained = t.retrained + 1 end
  end
  for _, t in pairs(per) do
    local s = 0
    for _, a in ipairs(t.accs) do s = s + a end
    table.sort(t.accs)
    t.n, t.min, t.max = #t.accs, t.accs[1], t.accs[#t.accs]
    t.median, t.mean = util.median(t.accs), s / #t.accs
  end
  return per
end

return zoo
