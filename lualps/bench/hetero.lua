--- lualps.bench.hetero (lps.hetero): the plan and splits of ModelSet-Hetero, a model set of
-- MLPs, CNNs and residual CNNs over multi-class tasks of two image sources
-- (Fashion-MNIST, rendered letters) in several image domains. As for
-- ModelSet500 (lps.zoo), everything a model depends on (family,
-- architecture, optimizer, learning rate, batch size, epochs, data subset)
-- is drawn from a generator seeded by (master seed, position), so shards,
-- resumes and merges give the same set bit for bit. lps.zoo.build trains
-- the plan; lps.hetero.splits gives its evaluation splits (a) to (g).
local core = require "lualps.core"
local util = require "lualps.util"
local data = require "lualps.data"
local zoo = require "lualps.bench.zoo"

local H = {}

--- Defaults of a plan; every field may be overridden in H.plan's cfg,
-- which may also hold `tasks` (use the first that many tasks).
H.defaults = {
  master_seed = 1907,
  per_task = 25,                 -- MLPs and CNNs per task: odd positions MLPs, even CNNs
  resnets = 2,                   -- then this many residual CNNs per task (the held-out family)
  fraction = {0.05, 0.25},       -- of the task's training images, uniform
  epochs = {1, 3},               -- inclusive range, uniform
  batch_sizes = {32, 64, 128},
  sgd = {lr = {0.01, 0.1}, momentum = 0.9}, -- lr log-uniform in the range
  adam = {lr = {3e-4, 3e-3}},
  adamw = {lr = {3e-4, 3e-3}, weight_decay = {1e-3, 1e-1}}, -- weight decay log-uniform
  heldout_arch_rate = 0.15,      -- models given a held-out width or channel count
  cnn_max_macs = 600000,         -- forward multiply-adds per image; larger draws are redrawn
  cnn_max_samples = 8000,        -- training images x epochs of a CNN or ResNet (build time)
  -- Optimizer steps at least, per family (more epochs; CNNs and ResNets
  -- within cnn_max_samples): with fewer, many models fall below the floor
  -- and retrain. Batch norm and global pooling learn slower.
  min_steps = {mlp = 50, cnn = 80, resnet = 200},
  resnet_batch_sizes = {32, 64},
  resnet_max_macs = 1000000,     -- a ResNet's forward multiply-adds per image
  images_per_class = 6000,       -- training images per class of a task without its own per_class
  floor = 0.35,                  -- min test accuracy: chance + floor * (1 - chance)
  -- The transfer pool: the first `pool` models of each task have these
  -- architectures (half MLPs, half CNNs), so one from-scratch model per
  -- family is the baseline of every source (lps.transfer_pool), and train
  -- on the most data for the most epochs (the experts of the zoo: their
  -- features vary less from model to model).
  pool = 8,
  reference_mlp = {128, 64},
  reference_cnn = { {out = 8, kernel = 5, down = "stride"}, {out = 16, kernel = 3, down = "stride"} },
}

local function config(cfg) return util.options(cfg, H.defaults, "hetero", {"tasks"}) end

local function log_uniform(g, r)
  return math.exp(math.log(r[1]) + (math.log(r[2]) - math.log(r[1])) * g:uniform())
end

local function pick(g, list) return list[g:random(#list)] end

local function minus(list, drop)
  local skip, out = {}, {}
  for _, v in ipairs(drop) do skip[v] = true end
  for _, v in ipairs(list) do if not skip[v] then out[#out + 1] = v end end
  return out
end

--- The task list of a task table (recipes/modelset_hetero_tasks.lua): every
-- subset ({source =, classes =}) in every domain (some of
-- lps.data.domains), subset-major. Task: {id, classes (ids of the table's
-- one class space), class_names, source, labels (the classes' 1-based
-- labels in the source's data), domain, subset, name}, and a glyphs task's
-- per_class and test_per_class (the images lps.zoo.task_data_loader
-- renders).
function H.tasks(TABLE)
  local known = {}
  for _, d in ipairs(data.domains) do known[d] = true end
  for _, d in ipairs(TABLE.domains) do
    if not known[d] then
      error(("hetero: unknown domain '%s' (lps.data.domains: %s)"):format(tostring(d), table.concat(data.domains, ", ")), 2)
    end
  end
  local tasks = {}
  for s, sub in ipairs(TABLE.subsets) do
    local src = TABLE.sources[sub.source]
    if not src then error(("hetero: subset %d has unknown source '%s'"):format(s, tostring(sub.source)), 2) end
    local names, labels = {}, {}
    for k, c in ipairs(sub.classes) do
      if math.type(c) ~= "integer" or c < src.first_class or c >= src.first_class + src.classes then
        error(("hetero: subset %d (%s) has class %s, expected an integer %d..%d"):format(s, sub.source, tostring(c),
          src.first_class, src.first_class + src.classes - 1), 2)
      end
      names[k], labels[k] = TABLE.class_names[c], c - src.first_class + 1
    end
    for _, d in ipairs(TABLE.domains) do
      tasks[#tasks + 1] = {id = #tasks + 1, classes = sub.classes, class_names = names, source = sub.source,
                           labels = labels, per_class = src.per_class, test_per_class = src.test_per_class,
                           domain = d, subset = s, name = table.concat(names, "/") .. " (" .. d .. ")"}
    end
  end
  return tasks
end

-- The arch of an MLP of hidden widths for k classes, and its name.
local function mlp_arch(widths, k)
  local layers, prev = {}, 784
  for _, w in ipairs(widths) do
    layers[#layers + 1] = {type = "linear", ["in"] = prev, out = w}
    layers[#layers + 1] = {type = "relu"}
    prev = w
  end
  layers[#layers + 1] = {type = "linear", ["in"] = prev, out = k}
  return layers, "mlp-784-" .. table.concat(widths, "-") .. "-" .. k
end

-- The arch of a CNN of conv layers {out, kernel, down = "stride" | "pool"}
-- on 28x28 images for k classes, its forward multiply-adds per image and its name.
local function cnn_arch(convs, k)
  local layers, cin, h, macs, parts = {}, 1, 28, 0, {}
  for _, c in ipairs(convs) do
    local pad = c.kernel // 2
    local stride = c.down == "stride" and 2 or 1
    local ho = (h + 2 * pad - c.kernel) // stride + 1
    layers[#layers + 1] = {type = "conv2d", ["in"] = cin, out = c.out, kernel = c.kernel, stride = stride,
                           padding = pad}
    layers[#layers + 1] = {type = "relu"}
    macs = macs + ho * ho * c.out * cin * c.kernel * c.kernel
    if c.down == "pool" then
      layers[#layers + 1] = {type = "maxpool2d", kernel = 2, stride = 2}
      ho = ho // 2
    end
    parts[#parts + 1] = ("c%dk%d%s"):format(c.out, c.kernel, c.down == "stride" and "s2" or "p2")
    cin, h = c.out, ho
  end
  layers[#layers + 1] = {type = "flatten"}
  layers[#layers + 1] = {type = "linear", ["in"] = cin * h * h, out = k}
  macs = macs + cin * h * h * k
  return layers, macs, "cnn-" .. table.concat(parts, "-") .. "-" .. k
end

-- A conv2d without a bias (batch norm follows) and a batchnorm2d.
local function conv_bn(cin, cout, kernel, stride)
  return {type = "conv2d", ["in"] = cin, out = cout, kernel = kernel, stride = stride, padding = kernel // 2,
          bias = false}, {type = "batchnorm2d", features = cout}
end

-- The arch of a residual CNN on 28x28 images for k classes: a stem (3x3
-- conv of stride 2, batch norm, relu) and blocks {out, stride} (conv, bn,
-- relu, conv, bn; the shortcut the identity, or a strided 1x1 conv and bn
-- when the channels or the size change; then relu), global average
-- pooling and a linear head; its forward multiply-adds per image and name.
local function resnet_arch(stem, blocks, k)
  local c, bn = conv_bn(1, stem, 3, 2)
  local layers, cin, h, parts = {c, bn, {type = "relu"}}, stem, 14, {("c%ds2"):format(stem)}
  local macs = h * h * stem * 9
  for _, b in ipairs(blocks) do
    local ho = (h - 1) // b.stride + 1
    local c1, bn1 = conv_bn(cin, b.out, 3, b.stride)
    local c2, bn2 = conv_bn(b.out, b.out, 3, 1)
    local shortcut = {}
    macs = macs + ho * ho * (cin + b.out) * b.out * 9
    if b.out ~= cin or b.stride ~= 1 then
      shortcut = {conv_bn(cin, b.out, 1, b.stride)}
      macs = macs + ho * ho * cin * b.out
    end
    layers[#layers + 1] = {type = "residual", body = {c1, bn1, {type = "relu"}, c2, bn2}, shortcut = shortcut}
    layers[#layers + 1] = {type = "relu"}
    parts[#parts + 1] = ("b%ds%d"):format(b.out, b.stride)
    cin, h = b.out, ho
  end
  layers[#layers + 1] = {type = "adaptive_avgpool2d", output = 1}
  layers[#layers + 1] = {type = "flatten"}
  layers[#layers + 1] = {type = "linear", ["in"] = cin, out = k}
  return layers, macs + cin * k, "resnet-" .. table.concat(parts, "-") .. "-" .. k
end

-- Hidden widths (or channels) from `seen`; with `held` one of them, at a
-- random layer, from `heldout`.
local function draw_sizes(g, n, seen, heldout, held)
  local sizes = {}
  for l = 1, n do sizes[l] = pick(g, seen) end
  if held then sizes[g:random(n)] = pick(g, heldout) end
  return sizes
end

-- Draw a CNN's conv layers within the cost cap (redrawn with the same generator).
local function draw_cnn(g, c, TABLE, held, k)
  local seen = minus(TABLE.cnn_channels, TABLE.heldout_channels)
  for _ = 1, 1000 do
    local n = g:random(2, 3)
    local chans = draw_sizes(g, n, seen, TABLE.heldout_channels, held)
    local convs = {}
    for l = 1, n do convs[l] = {out = chans[l], kernel = pick(g, {3, 5}), down = pick(g, {"stride", "pool"})} end
    local a, macs, name = cnn_arch(convs, k)
    if macs <= c.cnn_max_macs then return a, macs, name, chans end
  end
  error("hetero: no CNN within cnn_max_macs = " .. c.cnn_max_macs, 0)
end

-- Draw a ResNet within the cost cap: stem channels, then one or two
-- blocks (the first of stride 1 or 2, a second of stride 2), channels from
-- TABLE.resnet_channels.
local function draw_resnet(g, c, TABLE, k)
  for _ = 1, 1000 do
    local stem, blocks = pick(g, TABLE.resnet_channels), {}
    for b = 1, g:random(1, 2) do
      blocks[b] = {out = pick(g, TABLE.resnet_channels), stride = b == 1 and pick(g, {1, 2}) or 2}
    end
    local a, macs, name = resnet_arch(stem, blocks, k)
    if macs <= c.resnet_max_macs then
      local chans = {stem}
      for b, bl in ipairs(blocks) do chans[b + 1] = bl.out end
      return a, macs, name, chans
    end
  end
  error("hetero: no ResNet within resnet_max_macs = " .. c.resnet_max_macs, 0)
end

--- A canonical fingerprint of everything that determines the set's models.
function H.fingerprint(cfg, TABLE)
  local c = config(cfg)
  local keys = {}
  for k in pairs(H.defaults) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  local function ser(v)
    if type(v) ~= "table" then return tostring(v) end
    local out, ks = {}, {}
    for k in pairs(v) do ks[#ks + 1] = k end
    table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(ks) do out[#out + 1] = tostring(k) .. ":" .. ser(v[k]) end
    return "{" .. table.concat(out, ",") .. "}"
  end
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. ser(c[k]) end
  parts[#parts + 1] = "table=" .. ser(TABLE)
  return zoo.fnv1a(table.concat(parts, ";"))
end

--- The plan over the task table: one entry per model, task-major, with
-- everything its training needs (arch, input_shape, optimizer, ...) for
-- lps.zoo.build. Each task has per_task MLPs and CNNs (alternating, the
-- first `pool` the transfer pool), then `resnets` residual CNNs.
-- cfg.tasks (optional) restricts to the first N tasks.
function H.plan(TABLE, cfg)
  local c = config(cfg)
  local tasks = H.tasks(TABLE)
  local ntasks = math.min(#tasks, c.tasks or #tasks)
  local fp = H.fingerprint(cfg, TABLE)
  local seen_w = minus(TABLE.mlp_widths, TABLE.heldout_widths)
  local opts = {"sgd", "adam", "adamw"}
  local plan = {}
  for ti = 1, ntasks do
    local task = tasks[ti]
    local k = #task.classes
    for pos = 1, c.per_task + c.resnets do
      local index = #plan + 1
      local seed = c.master_seed * 1000003 + index
      local g = core.generator(seed)
      local family = pos > c.per_task and "resnet" or (pos % 2 == 1 and "mlp" or "cnn")
      local in_pool = pos <= c.pool
      local held = family ~= "resnet" and not in_pool and g:uniform() < c.heldout_arch_rate
      local a, name, widths, macs
      if family == "mlp" then
        widths = in_pool and c.reference_mlp or draw_sizes(g, g:random(1, 3), seen_w, TABLE.heldout_widths, held)
        a, name = mlp_arch(widths, k)
      elseif family == "resnet" then
        a, macs, name, widths = draw_resnet(g, c, TABLE, k)
      elseif in_pool then
        a, macs, name = cnn_arch(c.reference_cnn, k)
        widths = {}
        for l, cv in ipairs(c.reference_cnn) do widths[l] = cv.out end
      else
        a, macs, name, widths = draw_cnn(g, c, TABLE, held, k)
      end
      -- MLPs and CNNs: pairs of positions cycle through the optimizers; ResNets by task
      local opt = family == "resnet" and opts[(ti + pos - c.per_task) % 3 + 1] or opts[((pos - 1) // 2) % 3 + 1]
      local range = c[opt].lr
      local n_task = (task.per_class or c.images_per_class) * k
      local fraction = c.fraction[1] + (c.fraction[2] - c.fraction[1]) * g:uniform()
      local epochs = g:random(c.epochs[1], c.epochs[2])
      if in_pool then fraction, epochs = c.fraction[2], c.epochs[2] end
      local lr = log_uniform(g, range)
      local weight_decay = opt == "adamw" and log_uniform(g, c.adamw.weight_decay) or nil
      local batch = pick(g, family == "resnet" and c.resnet_batch_sizes or c.batch_sizes)
      local n = math.floor(fraction * n_task + 0.5)
      epochs = math.max(epochs, -(-c.min_steps[family] // -(-n // batch))) -- ceil(steps / batches per epoch)
      if family ~= "mlp" then -- within the CNNs' share of the build time
        if n * epochs > c.cnn_max_samples then epochs = math.max(1, c.cnn_max_samples // n) end
        if n > c.cnn_max_samples then fraction = c.cnn_max_samples / n_task end
      end
      plan[index] = {
        index = index, id = ("t%02d-m%02d"):format(ti, pos), task = ti, classes = task.classes,
        class_names = task.class_names, source = task.source,
        domain = task.domain, subset = task.subset, family = family, arch = a,
        input_shape = family ~= "mlp" and {1, 28, 28} or nil, architecture = name, widths = widths,
        heldout_arch = held, macs = macs, seed = seed, optimizer = opt, lr = lr,
        momentum = opt == "sgd" and c.sgd.momentum or nil, weight_decay = weight_decay,
        batch_size = batch, epochs = epochs, fraction = fraction,
        min_test_accuracy = 1 / k + c.floor * (1 - 1 / k), in_pool = in_pool,
        fingerprint = fp, master_seed = c.master_seed,
      }
    end
  end
  return plan, tasks
end

local shuffled = zoo.shuffled

--- The evaluation splits (lists of model ids), fixed by the master seed.
-- The residual CNNs (family "resnet") are a held-out family: in no split's
-- training models and in no queries or galleries but those of (g).
-- classification (a): per task and family, 60% of the MLPs and CNNs train,
--   the rest are held out;
-- retrieval (b): `unseen` tasks (30%) whose models are queries (20% per
--   family) and gallery; the other tasks' models train;
-- novel (c): every task with a held-out class is a test task (queries and
--   gallery as in b); the other tasks' models train;
-- heldout_arch (d): training models of (a) without a held-out width or
--   channel count train; the models with one are queries against the
--   held-out models of (a) without one;
-- cross_family (e): for the unseen tasks of (b), CNN queries against an
--   MLP gallery, trained as (b);
-- cross_source (f): with tasks of several sources, one sub-split per
--   source (train_source): its tasks' models train, the other sources'
--   tasks are test tasks (queries and gallery as in b);
-- heldout_family (g): the ResNets of the unseen tasks of (b) are queries
--   against those tasks' MLPs and CNNs, trained as (b).
function H.splits(TABLE, plan, tasks, cfg)
  local c = config(cfg)
  local g = core.generator(c.master_seed * 7919 + 17)
  local by_task = {}
  for _, m in ipairs(plan) do
    by_task[m.task] = by_task[m.task] or {mlp = {}, cnn = {}, resnet = {}}
    table.insert(by_task[m.task][m.family], m)
  end
  local ntasks = #by_task
  local cls = {train = {}, test = {}}
  for t = 1, ntasks do
    for _, fam in ipairs{"mlp", "cnn"} do
      local list = shuffled(by_task[t][fam], g)
      local ntrain = math.floor(#list * 0.6 + 0.5)
      for j, m in ipairs(list) do table.insert(j <= ntrain and cls.train or cls.test, m.id) end
    end
  end
  -- queries (20% of each family, at least one) and gallery of test tasks
  local function query_gallery(test_tasks, out)
    for _, t in ipairs(test_tasks) do
      for _, fam in ipairs{"mlp", "cnn"} do
        local list = shuffled(by_task[t][fam], g)
        local nq = math.max(1, math.floor(#list * 0.2 + 0.5))
        for j, m in ipairs(list) do table.insert(j <= nq and out.query or out.gallery, m.id) end
      end
    end
  end
  local function split_tasks(is_test)
    local s = {train_tasks = {}, unseen_tasks = {}, train = {}, query = {}, gallery = {}}
    for t = 1, ntasks do
      table.insert(is_test[t] and s.unseen_tasks or s.train_tasks, t)
      if not is_test[t] then
        for _, fam in ipairs{"mlp", "cnn"} do
          for _, m in ipairs(by_task[t][fam]) do s.train[#s.train + 1] = m.id end
        end
      end
    end
    query_gallery(s.unseen_tasks, s)
    return s
  end
  local order, unseen = shuffled((function() local t = {} for i = 1, ntasks do t[i] = i end return t end)(), g), {}
  for j = 1, math.max(1, math.floor(ntasks * 0.3 + 0.5)) do unseen[order[j]] = true end
  local ret = split_tasks(unseen)
  local heldout_class = {}
  for _, cl in ipairs(TABLE.heldout_classes) do heldout_class[cl] = true end
  local novel_tasks = {}
  for t = 1, ntasks do
    for _, cl in ipairs(tasks[t].classes) do novel_tasks[t] = novel_tasks[t] or heldout_class[cl] end
  end
  local novel = split_tasks(novel_tasks)
  novel.heldout_classes = TABLE.heldout_classes
  local held = {}
  for _, m in ipairs(plan) do held[m.id] = m.heldout_arch end
  local arch = {train = {}, query = {}, gallery = {}, heldout_widths = TABLE.heldout_widths,
                heldout_channels = TABLE.heldout_channels}
  for _, id in ipairs(cls.train) do if not held[id] then arch.train[#arch.train + 1] = id end end
  for _, id in ipairs(cls.test) do if not held[id] then arch.gallery[#arch.gallery + 1] = id end end
  for _, m in ipairs(plan) do if m.heldout_arch then arch.query[#arch.query + 1] = m.id end end
  local family = {}
  for _, m in ipairs(plan) do family[m.id] = m.family end
  local cross = {train = ret.train, unseen_tasks = ret.unseen_tasks, query = {}, gallery = {}}
  for _, id in ipairs(ret.query) do table.insert(family[id] == "cnn" and cross.query or cross.gallery, id) end
  for _, id in ipairs(ret.gallery) do table.insert(family[id] == "cnn" and cross.query or cross.gallery, id) end
  -- (f): the sources in order of first appearance
  local sources, seen = {}, {}
  for t = 1, ntasks do
    local src = tasks[t].source
    if src and not seen[src] then seen[src], sources[#sources + 1] = true, src end
  end
  local cross_source
  if #sources > 1 then
    cross_source = {}
    for _, src in ipairs(sources) do
      local other = {}
      for t = 1, ntasks do other[t] = tasks[t].source ~= src end
      local s = split_tasks(other)
      s.train_source = src
      cross_source[#cross_source + 1] = s
    end
  end
  -- (g)
  local heldout_family
  local fam_query = {}
  for _, t in ipairs(ret.unseen_tasks) do
    for _, m in ipairs(by_task[t].resnet) do fam_query[#fam_query + 1] = m.id end
  end
  if #fam_query > 0 then
    local gallery = {}
    for _, list in ipairs{ret.query, ret.gallery} do
      for _, id in ipairs(list) do gallery[#gallery + 1] = id end
    end
    heldout_family = {family = "resnet", train = ret.train, unseen_tasks = ret.unseen_tasks, query = fam_query,
                      gallery = gallery}
  end
  local task_list = {}
  for t = 1, ntasks do task_list[t] = tasks[t] end
  return {classification = cls, retrieval = ret, novel = novel, heldout_arch = arch, cross_family = cross,
          cross_source = cross_source, heldout_family = heldout_family,
          tasks = task_list, relations = "unseen", master_seed = c.master_seed, fingerprint = plan[1].fingerprint}
end

--- The composition of a built set: models per family, source, domain and
-- optimizer, per task (min, max), distinct classes (per source),
-- architectures, and test accuracy ranges per family, source and number of
-- classes.
function H.composition(ms)
  local c = {family = {}, source = {}, domain = {}, optimizer = {}, per_task = {}, accuracy = {}, heldout_arch = 0,
             retrained = 0, classes = {}}
  local acc, archs, tasks, classes = {}, {}, {}, {}
  for i = 1, #ms do
    local m = ms:meta(i)
    for _, k in ipairs{"family", "source", "domain", "optimizer"} do
      local v = tostring(m[k])
      c[k][v] = (c[k][v] or 0) + 1
    end
    tasks[m.task] = (tasks[m.task] or 0) + 1
    archs[m.architecture or "?"] = true
    for _, cl in ipairs(m.classes) do classes[tostring(m.source) .. "/" .. cl] = true end
    if m.heldout_arch then c.heldout_arch = c.heldout_arch + 1 end
    if m.attempts and #m.attempts > 1 then c.retrained = c.retrained + 1 end
    for _, key in ipairs{m.family or "?", tostring(m.source), ("%d classes"):format(#m.classes)} do
      acc[key] = acc[key] or {}
      table.insert(acc[key], m.test_accuracy)
    end
  end
  local lo, hi = math.huge, 0
  for _, n in pairs(tasks) do lo, hi = math.min(lo, n), math.max(hi, n) end
  c.per_task = {tasks = #tasks, min = lo, max = hi}
  c.architectures, c.distinct_classes = 0, 0
  for _ in pairs(archs) do c.architectures = c.architectures + 1 end
  for key in pairs(classes) do
    local src = key:match("^(.*)/")
    c.classes[src] = (c.classes[src] or 0) + 1
    c.distinct_classes = c.distinct_classes + 1
  end
  for key, v in pairs(acc) do
    table.sort(v)
    local s = 0
    for _, x in ipairs(v) do s = s + x end
    c.accuracy[key] = {n = #v, min = v[1], median = util.median(v), mean = s / #v, max = v[#v]}
  end
  return c
end

--- The composition (H.composition) as lines of text.
function H.composition_report(c)
  local function counts(t)
    local keys, out = {}, {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do out[#out + 1] = ("%s %d"):format(k, t[k]) end
    return table.concat(out, ", ")
  end
  local lines = {
    ("models per family: %s"):format(counts(c.family)),
    ("models per source: %s"):format(counts(c.source)),
    ("models per domain: %s"):format(counts(c.domain)),
    ("models per task: %d to %d over %d tasks; %d architectures; %d with a held-out width or channel count; "
      .. "%d retrained")
      :format(c.per_task.min, c.per_task.max, c.per_task.tasks, c.architectures, c.heldout_arch, c.retrained),
    ("distinct classes: %d (%s)"):format(c.distinct_classes, counts(c.classes)),
    "test accuracy (n, min, median, mean, max):",
  }
  local keys = {}
  for k in pairs(c.accuracy) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local a = c.accuracy[k]
    lines[#lines + 1] = ("  %-14s %5d  %.3f  %.3f  %.3f  %.3f"):format(k, a.n, a.min, a.median, a.mean, a.max)
  end
  return table.concat(lines, "\n")
end

--- Problems of splits against the models' metadata (meta_by_id: id ->
-- {task, classes, family, heldout_arch, source}); an empty list when clean:
-- no model in two roles, no training model of a test task, no held-out
-- class in (c)'s training models, no held-out architecture in (d)'s, no
-- ResNet in any training split nor in any queries or gallery but (g)'s;
-- (f) trains on its train_source only and tests on the others; (g)'s
-- queries are ResNets of its test tasks, its gallery MLPs and CNNs of them.
function H.check_splits(splits, meta_by_id)
  local problems = {}
  local function bad(fmt, ...) problems[#problems + 1] = fmt:format(...) end
  local function set_of(list) local s = {} for _, v in ipairs(list) do s[v] = true end return s end
  local function disjoint(name, a, b, an, bn)
    local sa = set_of(a)
    for _, id in ipairs(b) do if sa[id] then bad("%s: %s is in both %s and %s", name, id, an, bn) end end
  end
  local function test_tasks(name, s)
    local test_task = set_of(s.unseen_tasks)
    for _, id in ipairs(s.train) do
      if test_task[meta_by_id[id].task] then bad("%s: training model %s is of test task %d", name, id, meta_by_id[id].task) end
    end
    disjoint(name, s.query, s.gallery, "query", "gallery")
    for _, id in ipairs(s.query) do
      if not test_task[meta_by_id[id].task] then bad("%s: query %s is not of a test task", name, id) end
    end
  end
  -- every split but (g): {name, split} pairs, (f)'s sub-splits by their train source
  local named = {}
  for _, name in ipairs{"classification", "retrieval", "novel", "heldout_arch", "cross_family"} do
    named[#named + 1] = {name, splits[name]}
  end
  for _, s in ipairs(splits.cross_source or {}) do
    named[#named + 1] = {"cross_source from " .. tostring(s.train_source), s}
  end
  for _, ns in ipairs(named) do
    for _, role in ipairs{"train", "test", "query", "gallery"} do
      for _, id in ipairs(ns[2][role] or {}) do
        if meta_by_id[id].family == "resnet" then
          bad("%s: %s model %s is a ResNet (a held-out family: only split (g) holds them)", ns[1], role, id)
        end
      end
    end
  end
  disjoint("classification", splits.classification.train, splits.classification.test, "train", "test")
  for _, name in ipairs{"retrieval", "novel", "cross_family"} do test_tasks(name, splits[name]) end
  local held = set_of(splits.novel.heldout_classes)
  for _, id in ipairs(splits.novel.train) do
    for _, cl in ipairs(meta_by_id[id].classes) do
      if held[cl] then bad("novel: training model %s has held-out class %d", id, cl) end
    end
  end
  for _, id in ipairs(splits.heldout_arch.train) do
    if meta_by_id[id].heldout_arch then bad("heldout_arch: training model %s has a held-out architecture", id) end
  end
  for _, id in ipairs(splits.heldout_arch.gallery) do
    if meta_by_id[id].heldout_arch then bad("heldout_arch: gallery model %s has a held-out architecture", id) end
  end
  disjoint("heldout_arch", splits.heldout_arch.train, splits.heldout_arch.gallery, "train", "gallery")
  for _, id in ipairs(splits.cross_family.query) do
    if meta_by_id[id].family ~= "cnn" then bad("cross_family: query %s is not a CNN", id) end
  end
  for _, id in ipairs(splits.cross_family.gallery) do
    if meta_by_id[id].family ~= "mlp" then bad("cross_family: gallery model %s is not an MLP", id) end
  end
  for _, s in ipairs(splits.cross_source or {}) do
    local name = "cross_source from " .. tostring(s.train_source)
    test_tasks(name, s)
    for _, id in ipairs(s.train) do
      local src = meta_by_id[id].source
      if src ~= s.train_source then bad("%s: training model %s is of source %s", name, id, tostring(src)) end
    end
    for _, role in ipairs{"query", "gallery"} do
      for _, id in ipairs(s[role]) do
        if meta_by_id[id].source == s.train_source then
          bad("%s: %s model %s is of the training source", name, role, id)
        end
      end
    end
  end
  local f = splits.heldout_family
  if f then
    test_tasks("heldout_family", f)
    local test_task = set_of(f.unseen_tasks)
    for _, id in ipairs(f.train) do
      if meta_by_id[id].family == "resnet" then bad("heldout_family: training model %s is a ResNet", id) end
    end
    for _, id in ipairs(f.query) do
      if meta_by_id[id].family ~= "resnet" then bad("heldout_family: query %s is not a ResNet", id) end
    end
    for _, id in ipairs(f.gallery) do
      local m = meta_by_id[id]
      if m.family == "resnet" then bad("heldout_family: gallery model %s is a ResNet", id) end
      if not test_task[m.task] then bad("heldout_family: gallery model %s is not of a test task", id) end
    end
  end
  return problems
end

return H
