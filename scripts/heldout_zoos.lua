#!/usr/bin/env lua5.4
--- Models from elsewhere (issue 19): does the learned similarity read zoos
-- it never saw as well as template matching does? Three held-out zoos,
-- never used to train or tune anything, built once and cached under
-- --build (deterministic for a --seed; rebuilt when their recipe or the
-- training code changes):
--   torch   MLPs and CNNs trained with PyTorch (scripts/torch_zoo.py, run
--           by Debian's /usr/bin/python3; skipped with a message without
--           torch): its default initialization, SGD and Adam, idiomatic
--           nn.Sequential models, on 3-class Fashion-MNIST tasks of class
--           triples no ModelSet-Hetero task has, in the set's four domains;
--   digits  lualps MLPs and CNNs of the set's own recipe (lps.hetero.plan)
--           on rendered digits (lps.data.digits: in no training set);
--   recipe  lualps MLPs and CNNs of another recipe (seeds, optimizer
--           ranges, widths, channels, batch sizes, epochs, data fractions)
--           on 3-letter tasks no set task has, letters drawn with another seed.
-- Each zoo is read by leave-one-out retrieval by task (every model a query
-- against all the others): mAP and rank-1 of the learned model (--model:
-- the cosine of its embeddings), of template matching, and of any other
-- similarity the model file offers (a similarity object's optional
-- `similarities()` method: a list of {name =, similarity = function(models)
-- -> n x n tensor}). Writes OUT/heldout_zoos.json and .md (provenance
-- included) and prints the table.
--   lua5.4 scripts/heldout_zoos.lua [--model results/lps_hetero.model]
--     [--build build/heldout] [--out results] [--seed 1] [--zoos torch,digits,recipe] [--jobs 2]
--     [--scale full|tiny]
-- tests/test_heldout_zoos.lua runs it on tiny zoos through M.build and M.evaluate.
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local cjson = require "cjson"
local util, data, zoo, hetero = lps.util, lps.data, lps.zoo, lps.hetero

local M = {}

M.names = {"torch", "digits", "recipe"}
M.domains = {"identity", "rot90", "zoomout", "shift"} -- ModelSet-Hetero 2's (recipes/modelset_hetero_tasks.lua)

-- Class ids of one space, as the set's task table (Fashion-MNIST 0-9,
-- letters 10-61), with the digits after them (62-71).
local FIRST = {fashion_mnist = 0, glyphs = 10, digits = 62}
local function letter(l)
  for i, c in ipairs(data.glyph_classes) do if c == l then return FIRST.glyphs + i - 1 end end
  error("heldout_zoos: unknown letter " .. tostring(l))
end

--- The zoos: a source, class subsets (ids of the space above) seen in
-- M.domains, models per task, images per class (train, test), and for
-- the lualps zoos the task table and plan configuration of lps.hetero.plan.
M.specs = {
  torch = {
    what = "PyTorch-trained MLPs and CNNs (default init, SGD/Adam), Fashion-MNIST class triples no set task has",
    source = "fashion_mnist", subsets = {{0, 1, 2}, {3, 5, 7}, {4, 6, 8}}, per_task = 6,
    train_per_class = 1000, test_per_class = 200,
  },
  digits = {
    what = "lualps MLPs and CNNs of the set's recipe (lps.hetero.plan) on rendered digits",
    source = "digits", subsets = {{62, 63, 64}, {65, 66, 67}, {68, 69, 70}}, per_task = 6,
    train_per_class = 3000, test_per_class = 500,
    table = {mlp_widths = {32, 64, 96, 128, 256}, cnn_channels = {4, 8, 12, 16, 32}},
    plan = {},
  },
  recipe = {
    what = "lualps MLPs and CNNs of another recipe (optimizer ranges, widths, channels, batches, epochs) on new letter triples",
    source = "glyphs", subsets = {{letter"E", letter"K", letter"n"}, {letter"B", letter"T", letter"v"},
      {letter"F", letter"M", letter"z"}}, per_task = 6, train_per_class = 1000, test_per_class = 200,
    table = {mlp_widths = {40, 80, 160, 320, 512}, cnn_channels = {5, 10, 20, 40}},
    plan = {fraction = {0.3, 0.6}, epochs = {4, 6}, batch_sizes = {16, 256},
      sgd = {lr = {0.1, 0.3}, momentum = 0.5}, adam = {lr = {1e-4, 3e-4}},
      adamw = {lr = {3e-3, 1e-2}, weight_decay = {0.1, 0.3}}, min_steps = {mlp = 100, cnn = 100, resnet = 200}},
  },
}

--- Options of M.build and their defaults (the tests shrink them); also
-- subsets (use the first that many class subsets; default all), domains (a
-- list of M.domains; default all), per_task, train_per_class and
-- test_per_class (default the spec's), epochs (the torch models'; 2) and
-- python (a python3 with torch; default M.torch_python's).
M.build_defaults = {
  seed = 1,           -- master seeds, data draws and the torch models' seeds follow from it
  progress = true,
  background = false, -- torch: start the trainer and return a function that finishes the zoo
}
local BUILD_MORE = {"subsets", "domains", "per_task", "train_per_class", "test_per_class", "epochs", "python"}

--- --scale: "full" (the zoos above) or "tiny" (a smoke run of the whole
-- pipeline in seconds: the tests').
M.scales = {full = {}, tiny = {subsets = 2, domains = {"identity", "rot90"}, per_task = 2, train_per_class = 100,
  test_per_class = 20, epochs = 1}}

-- Everything a zoo's models depend on, after the options.
local function config(name, opts)
  local spec = M.specs[name] or error(("heldout_zoos: unknown zoo '%s' (%s)"):format(tostring(name),
    table.concat(M.names, ", ")), 3)
  local o = util.options(opts, M.build_defaults, "heldout_zoos", BUILD_MORE)
  local c = {name = name, source = spec.source, seed = o.seed, per_task = o.per_task or spec.per_task,
    train_per_class = o.train_per_class or spec.train_per_class, test_per_class = o.test_per_class or spec.test_per_class,
    epochs = o.epochs or 2, domains = o.domains or M.domains, subsets = {}}
  for k = 1, math.min(#spec.subsets, o.subsets or #spec.subsets) do c.subsets[k] = spec.subsets[k] end
  return c, o, spec
end

-- The task table of a zoo (lps.hetero.tasks' format) for its config.
local function task_table(name, c)
  local spec = M.specs[name]
  local src = c.source
  local names = {}
  for i, n in ipairs(data.fashion_classes) do names[FIRST.fashion_mnist + i - 1] = n end
  for i, n in ipairs(data.glyph_classes) do names[FIRST.glyphs + i - 1] = n end
  for i, n in ipairs(data.digit_classes) do names[FIRST.digits + i - 1] = n end
  local subsets = {}
  for k, s in ipairs(c.subsets) do subsets[k] = {source = src, classes = s} end
  local t = spec.table or {}
  return {class_names = names, domains = c.domains, subsets = subsets, heldout_classes = {},
    sources = {[src] = {first_class = FIRST[src], classes = src == "fashion_mnist" and 10 or src == "glyphs" and 52 or 10,
      per_class = c.train_per_class, test_per_class = c.test_per_class}},
    mlp_widths = t.mlp_widths or {64}, heldout_widths = {}, cnn_channels = t.cnn_channels or {8},
    heldout_channels = {}, resnet_channels = {8}}
end

-- The images of task t ({x, y, xt, yt}, labels 1..k in the task's class
-- order, in its domain): Fashion-MNIST (train_per_class * k training
-- images drawn with the zoo's seed, the first test_per_class * k test
-- images), or letters and digits rendered with the zoo's seed (not the
-- set's: other draws of the same classes).
local fm
local function task_data(t, c)
  local x, y, xt, yt
  if t.source == "fashion_mnist" then
    if not fm then
      local a, b = data.fashion_mnist("train")
      local at, bt = data.fashion_mnist("test")
      fm = {a, b, at, bt}
    end
    x, y = data.select_classes(fm[1], fm[2], t.labels)
    xt, yt = data.select_classes(fm[3], fm[4], t.labels)
    local n, nt = c.train_per_class * #t.labels, c.test_per_class * #t.labels
    if n < x:size(1) then x, y = data.fraction(x, y, n / x:size(1), lps.generator(c.seed * 7919 + t.id)) end
    if nt < xt:size(1) then xt, yt = xt:rows(1, nt), yt:rows(1, nt) end
  else
    local render, classes = data.digits, {}
    for k, l in ipairs(t.labels) do classes[k] = l - 1 end -- digits 0..9
    if t.source == "glyphs" then render, classes = data.glyphs, t.labels end
    local seed = 1000 + c.seed -- the set renders with seed 1
    local a, b = render("train", {per_class = c.train_per_class, classes = classes, seed = seed})
    local at, bt = render("test", {per_class = c.test_per_class, classes = classes, seed = seed})
    x, y = data.select_classes(a, b, t.labels)
    xt, yt = data.select_classes(at, bt, t.labels)
  end
  if t.domain ~= "identity" then x, xt = data.domain(x, t.domain), data.domain(xt, t.domain) end
  return {x = x, y = y, xt = xt, yt = yt}
end

-- Shell commands run without LD_PRELOAD (under the ASan tests it names the
-- sanitizer runtime, which ls, rm and python must not load).
local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The training code and what reads the data: a change rebuilds the zoos.
local function source_stamp(extra)
  local parts = {}
  local p = assert(io.popen("env -u LD_PRELOAD ls csrc/nn/*.c csrc/nn/*.h csrc/core/*.c csrc/data/*.c csrc/data/*.h lualps/data.lua "
    .. "lualps/bench/hetero.lua lualps/bench/zoo.lua " .. (extra or "") .. " 2>/dev/null"))
  for f in p:lines() do parts[#parts + 1] = f .. "=" .. (util.read_file(f) or "") end
  p:close()
  return zoo.fnv1a(table.concat(parts, "\0"))
end

-- A canonical text of a table (sorted keys, exact numbers).
local function ser(v) return require("lualps.json").encode({v = v}) end

--- The plan of a lualps zoo: lps.hetero.plan over its task table (MLPs at
-- odd positions, CNNs at even ones; no ResNets, no pool, no held-out
-- widths), with the spec's plan configuration and a master seed of its own.
local function lualps_plan(name, c)
  local spec = M.specs[name]
  local cfg = {master_seed = 100 * c.seed + (name == "digits" and 1 or 2), per_task = c.per_task, resnets = 0,
    pool = 0, heldout_arch_rate = 0}
  for k, v in pairs(spec.plan) do cfg[k] = v end
  return hetero.plan(task_table(name, c), cfg)
end

--- The plan of the torch zoo: per task, MLPs (1 or 2 hidden layers of
-- 64-256) and CNNs (two convs, 4-12 then 8-24 channels, max pooling or
-- stride 2) alternating, SGD (lr 0.05, momentum 0.9) and Adam (lr 1e-3)
-- by pairs, batch 64, on 1,500 or 3,000 images (at most the task's).
local function torch_plan(c)
  local TABLE = task_table("torch", c)
  local tasks = hetero.tasks(TABLE)
  local plan = {}
  local function pick(g, list) return list[g:random(#list)] end
  for _, t in ipairs(tasks) do
    for pos = 1, c.per_task do
      local seed = 1000003 * c.seed + 101 * t.id + pos
      local g = lps.generator(seed)
      local m = {id = ("t%02d-m%02d"):format(t.id, pos), task = t.id, seed = seed, family = pos % 2 == 1 and "mlp" or "cnn",
        optimizer = ((pos - 1) // 2) % 2 == 0 and "sgd" or "adam", batch_size = 64, epochs = c.epochs,
        n_train = math.min(pick(g, {1500, 3000}), c.train_per_class * #t.labels)}
      m.lr = m.optimizer == "sgd" and 0.05 or 1e-3
      if m.family == "mlp" then
        m.hidden = {}
        for l = 1, g:random(1, 2) do m.hidden[l] = pick(g, {64, 100, 128, 200, 256}) end
      else
        m.channels, m.kernel, m.down = {pick(g, {4, 8, 12}), pick(g, {8, 16, 24})}, pick(g, {3, 5}), pick(g, {"pool", "stride"})
      end
      plan[#plan + 1] = m
    end
  end
  return plan, tasks
end

--- The plan of zoo `name` for the options of M.build (one entry per model:
-- its seed, family, architecture, optimizer, ...) and its tasks.
function M.plan(name, opts)
  local c = config(name, opts)
  if name == "torch" then return torch_plan(c) end
  return lualps_plan(name, c)
end

-- The metadata a zoo's record keeps.
local function record_meta(name, m, t, extra)
  local meta = {zoo = name, id = m.id, task = m.task, task_name = t.name, classes = t.classes,
    class_names = t.class_names, source = t.source, domain = t.domain, family = m.family,
    architecture = m.architecture, widths = m.widths, optimizer = m.optimizer, lr = m.lr, batch_size = m.batch_size,
    epochs = m.epochs, fraction = m.fraction, n_train = m.n_train, seed = m.seed, fingerprint = m.fingerprint,
    input_shape = m.input_shape}
  for k, v in pairs(extra) do meta[k] = v end
  return meta
end

-- Train a lualps plan into path (resuming), as lps.zoo.build trains: up to
-- three attempts (the next seed) while below the plan's accuracy floor.
local function build_lualps(name, plan, tasks, c, path, progress)
  local ms, have = zoo.open_for_build(path, plan[1].fingerprint)
  local threads = lps.get_num_threads()
  lps.set_num_threads(1)
  local prog = progress and util.progress(#plan, {label = name, unit = "models"})
  local cur, td
  local ok, err = pcall(function()
    for n, m in ipairs(plan) do
      if not have[m.id] then
        if cur ~= m.task then cur, td = m.task, task_data(tasks[m.task], c) end
        local best, res, attempts = nil, nil, {}
        for a = 0, 2 do
          local model, r = zoo.train_one(m, td, a)
          attempts[#attempts + 1] = {seed = r.seed, test_accuracy = r.test_accuracy}
          if not res or r.test_accuracy > res.test_accuracy then best, res = model, r end
          if r.test_accuracy >= m.min_test_accuracy then break end
        end
        m.n_train = res.n_train
        ms:append(best, record_meta(name, m, tasks[m.task], {test_accuracy = res.test_accuracy,
          train_accuracy = res.train_accuracy, seed = res.seed, base_seed = m.seed, attempts = attempts}))
        if prog then prog:update(n, ("%s acc %.3f"):format(m.id, res.test_accuracy)) end
      end
    end
  end)
  lps.set_num_threads(threads)
  ms:close()
  if prog then prog:finish() end
  if not ok then error(err, 0) end
end

-- The torch zoo: task data files, the trainer (in the background when
-- asked), then every model imported into path, its test accuracy measured
-- again by lualps (the import must keep the function). Returns a function
-- that finishes the build.
local function build_torch(plan, tasks, c, o, path, fingerprint, stamp)
  local dir = path:gsub("%.lpsm$", "") .. ".d" -- the trainer's files, removed once imported
  if util.read_file(dir .. "/stamp") ~= stamp then os.execute("env -u LD_PRELOAD rm -rf " .. sh_quote(dir)) end
  assert(os.execute("env -u LD_PRELOAD mkdir -p " .. sh_quote(dir)))
  util.write_file(dir .. "/stamp", stamp)
  local models, files = {}, {}
  for _, m in ipairs(plan) do
    local t = tasks[m.task]
    files[m.task] = files[m.task] or ("%s/task%02d.safetensors"):format(dir, m.task)
    local e = {data = files[m.task], out = ("%s/%s.safetensors"):format(dir, m.id)}
    for k, v in pairs(m) do e[k] = v end
    models[#models + 1] = e
    if not zoo.file_exists(files[m.task]) then -- written atomically: there means complete
      local td = task_data(t, c)
      lps.safetensors.write(files[m.task], {x = td.x, y = td.y, xt = td.xt, yt = td.yt})
    end
  end
  local plan_path = dir .. "/plan.json"
  util.write_file(plan_path, cjson.encode({threads = 1, models = models}))
  local log = dir .. "/train.log"
  io.stderr:write(("heldout_zoos: training %d PyTorch models (%s; log %s)\n"):format(#plan, o.python, log))
  local cmd = ("env -u LD_PRELOAD %s scripts/torch_zoo.py %s > %s 2>&1"):format(sh_quote(o.python), sh_quote(plan_path),
    sh_quote(log))
  local proc = o.background and assert(io.popen(cmd .. "; echo $?", "r"))
  local function finish()
    local status
    if proc then status = proc:read("a"); proc:close() else status = os.execute(cmd) and "0" or "1" end
    if tonumber(status) ~= 0 then
      error(("heldout_zoos: the PyTorch trainer failed (%s):\n%s"):format(cmd, util.read_file(log) or ""), 0)
    end
    local ms = lps.modelset.create(path, {overwrite = true})
    local ok, err = pcall(function()
      local cur, td
      for _, e in ipairs(models) do
        local model, meta = lps.import_safetensors(e.out)
        local t = tasks[e.task]
        if cur ~= e.task then cur, td = e.task, lps.safetensors.read(e.data) end
        local xt = e.family == "cnn" and td.xt:reshape(td.xt:size(1), 1, 28, 28) or td.xt
        local acc = lps.nn.evaluate(model, {x = xt, y = td.yt})
        local torch_acc = tonumber(meta.test_accuracy)
        if math.abs(acc - torch_acc) > 0.005 then
          error(("%s: PyTorch measured test accuracy %.4f, lualps %.4f after import"):format(e.out, torch_acc, acc), 0)
        end
        e.fingerprint = fingerprint
        e.input_shape = e.family == "cnn" and {1, 28, 28} or nil
        e.architecture = e.family == "mlp" and ("mlp-784-%s-%d"):format(table.concat(e.hidden, "-"), #t.labels)
          or ("cnn-c%dk%d-c%dk3-%s-%d"):format(e.channels[1], e.kernel, e.channels[2], e.down, #t.labels)
        e.widths = e.hidden or e.channels
        ms:append(model, record_meta("torch", e, t, {test_accuracy = torch_acc, lualps_test_accuracy = acc,
          trainer = "pytorch"}))
      end
    end)
    ms:close()
    if not ok then os.remove(path) error(err, 0) end
    os.execute("env -u LD_PRELOAD rm -rf " .. sh_quote(dir))
  end
  return finish
end

local found = {}
--- A python3 that imports torch and torch's version, or nil: `python` if
-- given, else $LUALPS_PYTHON, Debian's /usr/bin/python3, python3 (one
-- start each, remembered for the process).
function M.torch_python(python)
  local cands = {python or os.getenv("LUALPS_PYTHON") or "", "/usr/bin/python3", "python3"}
  if python then cands = {python} end
  for _, py in ipairs(cands) do
    if py ~= "" then
      if found[py] == nil then
        local p = io.popen("env -u LD_PRELOAD " .. sh_quote(py) .. " -c 'import torch; print(torch.__version__)' 2>/dev/null")
        local v = p and p:read("l")
        if p then p:close() end
        found[py] = v and v ~= "" and v or false
      end
      if found[py] then return py, found[py] end
    end
  end
  return nil
end

--- Build zoo `name` into DIR/<name>.lpsm unless it is there with the same
-- stamp (plan, seed and training code). opts: M.build_defaults. Returns the
-- path, or nil and why (the torch zoo without a python3 that has torch);
-- with opts.background, the torch zoo returns a function instead, which
-- finishes the build and returns the path.
function M.build(name, dir, opts)
  local c, o = config(name, opts)
  assert(os.execute("env -u LD_PRELOAD mkdir -p " .. sh_quote(dir)))
  local path = ("%s/%s.lpsm"):format(dir, name)
  local plan, tasks, fingerprint, extra
  if name == "torch" then
    local version
    o.python, version = M.torch_python(o.python)
    if not o.python then return nil, "no python3 with torch (Debian's python3-torch): the PyTorch zoo is skipped" end
    plan, tasks = torch_plan(c)
    fingerprint = zoo.fnv1a(ser(plan) .. ser(c) .. version)
    extra = "scripts/torch_zoo.py scripts/torch_interop.py"
  else
    plan, tasks = lualps_plan(name, c)
    fingerprint = zoo.fnv1a(plan[1].fingerprint .. ser(c))
  end
  local stamp = fingerprint .. " " .. source_stamp(extra)
  local have = util.read_file(path .. ".stamp")
  if zoo.file_exists(path) and have == stamp then
    if o.background then return function() return path end end
    return path
  end
  -- built by another recipe or training code: start again (without a
  -- stamp, an interrupted build resumes what it finished of the same plan)
  if have then
    os.remove(path)
    os.remove(path .. ".stamp")
  end
  if name == "torch" then
    local finish = build_torch(plan, tasks, c, o, path, fingerprint, stamp)
    local function done() finish() util.write_file(path .. ".stamp", stamp) return path end
    if o.background then return done end
    return done()
  end
  for _, m in ipairs(plan) do m.fingerprint = fingerprint end
  if zoo.file_exists(path) then -- interrupted: resumed if of this plan
    local ms = lps.modelset.open(path)
    local same = #ms == 0 or ms:meta(1).fingerprint == fingerprint
    ms:close()
    if not same then os.remove(path) end
  end
  build_lualps(name, plan, tasks, c, path, o.progress)
  util.write_file(path .. ".stamp", stamp)
  return path
end

------------------------------------------------------------------ evaluation

--- The similarities a similarity object (lps.similarity.load) offers, each
-- {name, similarity = function(models) -> n x n}: "lps", the cosine of its
-- embeddings, then those of its optional similarities() method.
function M.model_methods(sim)
  local list = {{name = "lps", similarity = function(models)
    local E = sim.net:embed(models)
    return lps.matmul(E, E, false, true)
  end}}
  if type(sim.similarities) == "function" then
    for _, m in ipairs(sim:similarities()) do list[#list + 1] = m end
  end
  return list
end

--- An unlearned method of lps.benchmark.methods by name, with its
-- defaults: template_matching, or probe_matching (the hybrid's other anchor).
function M.unlearned(name)
  return {name = name, similarity = function(models)
    local m = lps.benchmark.methods[name]()
    return m.similarity(m, models, models)
  end}
end

function M.template_matching() return M.unlearned("template_matching") end

--- Leave-one-out retrieval by task over the models of a set: every model a
-- query against all the others. Returns {models, tasks, mean_accuracy,
-- labels, methods = {name = {map, rank1, ap = each query's AP}}} for the
-- methods ({name, similarity}).
function M.evaluate(path, methods)
  local ms <close> = lps.modelset.open(path)
  local models, labels, seen, acc = {}, {}, {}, 0
  for i = 1, #ms do
    local meta = ms:meta(i)
    models[i], labels[i] = lps.similarity.record(ms, i), meta.task
    seen[meta.task] = true
    acc = acc + (meta.test_accuracy or 0) / #ms
  end
  local ntasks = 0
  for _ in pairs(seen) do ntasks = ntasks + 1 end
  local out = {models = #ms, tasks = ntasks, mean_accuracy = acc, labels = labels, methods = {}}
  for _, m in ipairs(methods) do
    local r = lps.eval.retrieval(m.similarity(models), labels, labels, {exclude_self = true, ks = {1}})
    out.methods[m.name] = {map = r.map, rank1 = r.rank1, ap = r.ap}
  end
  return out
end

--- Each method against a reference (template matching), query by query:
-- the mAP difference with a 95% interval from resampling whole tasks
-- (lps.eval.paired_bootstrap), and the queries it reads better and worse.
-- Returns {zoo = {method = result}} and the report's lines.
function M.paired(zoos, names, methods, reference)
  local out, lines = {}, {("| zoo | method | mAP minus %s | 95%% interval (tasks resampled) | queries better / worse / equal |")
    :format(reference), "|---|---|---|---|---|"}
  for _, n in ipairs(names) do
    local z = zoos[n]
    local ref = z and z.methods[reference]
    if ref then
      out[n] = {}
      for _, name in ipairs(methods) do
        local m = z.methods[name]
        if name ~= reference and m then
          local r = lps.eval.paired_bootstrap(m.ap, ref.ap, z.labels)
          out[n][name] = {delta = r.delta, lo = r.lo, hi = r.hi, better = r.better, worse = r.worse, ties = r.ties}
          lines[#lines + 1] = ("| %s | %s | %+.3f | [%+.3f, %+.3f] | %d / %d / %d |"):format(n, name, r.delta, r.lo, r.hi,
            r.better, r.worse, r.ties)
        end
      end
    end
  end
  return out, lines
end

------------------------------------------------------------------ the script

local function main(args)
  local argparse = require "argparse"
  local p = argparse("heldout_zoos.lua", "Held-out zoos (models from elsewhere): the learned model against template matching.")
  p:option("--model", "A saved similarity (lps.similarity.load).", "results/lps_hetero.model")
  p:option("--build", "Cache directory of the zoos.", "build/heldout")
  p:option("--out", "Results directory.", "results")
  p:option("--seed", "Seed of the zoos.", "1"):convert(math.tointeger)
  p:option("--zoos", "Comma-separated zoos.", table.concat(M.names, ","))
  p:option("--jobs", "Processes: with 2, the PyTorch trainer runs beside the lualps builds.", "2"):convert(math.tointeger)
  p:option("--scale", "full, or tiny (a smoke run in seconds).", "full"):choices{"full", "tiny"}
  p:flag("--quiet", "No table on stdout, no progress.")
  local a = p:parse(args)
  if not a.seed then io.stderr:write("heldout_zoos: --seed must be an integer\n") return 2 end
  if not a.jobs or a.jobs < 1 then io.stderr:write("heldout_zoos: --jobs must be a positive integer\n") return 2 end
  local sim = lps.similarity.load(a.model)
  local t0 = lps.now()
  local names, paths, skipped, pending = {}, {}, {}, {}
  for n in a.zoos:gmatch("[^,]+") do names[#names + 1] = n end
  -- the PyTorch zoo first, in the background with --jobs 2
  local function opts(more)
    local o = {seed = a.seed, progress = not a.quiet}
    for k, v in pairs(M.scales[a.scale]) do o[k] = v end
    for k, v in pairs(more or {}) do o[k] = v end
    return o
  end
  for _, n in ipairs(names) do
    if not M.specs[n] then io.stderr:write(("heldout_zoos: unknown zoo '%s' (%s)\n"):format(n, table.concat(M.names, ", "))) return 2 end
  end
  for _, n in ipairs(names) do
    if n == "torch" then
      local r, why = M.build(n, a.build, opts{background = a.jobs >= 2})
      if not r then skipped[n] = why io.stderr:write("heldout_zoos: ", why, "\n")
      elseif type(r) == "function" then pending[n] = r else paths[n] = r end
    end
  end
  for _, n in ipairs(names) do
    if n ~= "torch" then paths[n] = M.build(n, a.build, opts()) end
  end
  for n, finish in pairs(pending) do paths[n] = finish() end
  local build_seconds = lps.now() - t0
  local methods = M.model_methods(sim)
  methods[#methods + 1] = M.template_matching()
  methods[#methods + 1] = M.unlearned("probe_matching")
  local results, zoos, metrics, order = {}, {}, {}, {}
  for _, m in ipairs(methods) do results[m.name], order[#order + 1] = {}, m.name end
  local total = 0
  for _, n in ipairs(names) do
    if paths[n] then
      local r = M.evaluate(paths[n], methods)
      total = total + r.models
      zoos[n] = {models = r.models, tasks = r.tasks, mean_accuracy = r.mean_accuracy, what = M.specs[n].what,
        path = paths[n], methods = r.methods, labels = r.labels}
      metrics[#metrics + 1], metrics[#metrics + 2] = n .. "_map", n .. "_rank1"
      for name, v in pairs(r.methods) do results[name][n .. "_map"], results[name][n .. "_rank1"] = v.map, v.rank1 end
    end
  end
  local lines = {"| zoo | models | tasks | mean test accuracy | what |", "|---|---|---|---|---|"}
  for _, n in ipairs(names) do
    local z = zoos[n]
    if z then lines[#lines + 1] = ("| %s | %d | %d | %.3f | %s |"):format(n, z.models, z.tasks, z.mean_accuracy, z.what)
    elseif skipped[n] then lines[#lines + 1] = ("| %s | – | – | – | skipped: %s |"):format(n, skipped[n]) end
  end
  local paired, plines = M.paired(zoos, names, order, "template_matching")
  for _, z in pairs(zoos) do -- the report keeps figures, not per-query lists
    z.labels = nil
    for _, m in pairs(z.methods) do m.ap = nil end
  end
  assert(os.execute("mkdir -p '" .. a.out .. "'")) -- a new results directory, as eval_hetero makes it
  local md = lps.benchmark.write_report(a.out, "heldout_zoos", {methods = results, order = order, metrics = metrics,
    title = "Models from elsewhere: held-out zoos",
    intro = ("%d models in %d held-out zoos no training set uses; leave-one-out retrieval by task within each zoo "
      .. "(mAP, rank-1) of %s and template matching. Generated by scripts/heldout_zoos.lua (seed %d)."):format(total,
      #metrics // 2, a.model, a.seed),
    protocol = {model = a.model, seed = a.seed, domains = M.domains, build_seconds = build_seconds},
    extra = {zoos = zoos, skipped = skipped, paired = paired},
    sections = {"\n## The zoos\n\n" .. table.concat(lines, "\n") .. "\n",
      "\n## Against template matching, query by query\n\nEach query's average precision minus template matching's, "
        .. "averaged; the interval resamples whole tasks (a task's queries are not independent), 2,000 times.\n\n"
        .. table.concat(plines, "\n") .. "\n"}})
  if a.quiet then return 0 end
  io.write(md, "\n")
  print(("Results: %s/heldout_zoos.json, %s/heldout_zoos.md (zoos built or found in %s)"):format(a.out, a.out,
    util.fmt_time(build_seconds)))
  return 0
end

M.main = main
if arg and arg[0] and (arg[0] == "heldout_zoos.lua" or arg[0]:match("/heldout_zoos%.lua$")) then os.exit(main(arg)) end
return M
