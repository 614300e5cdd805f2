#!/usr/bin/env lua5.4
--- Which image domains change what transfers (issue 18): the transfer pool
-- protocol (lps.transfer_pool) on a reduced ModelSet-Hetero with only the
-- pool models (8 per task: 4 MLPs, 4 CNNs of the reference architectures),
-- over class subsets of one or both sources in every domain asked for:
-- Fashion-MNIST (the ten subsets of ModelSet-Hetero 1, FASHION below) or
-- rendered letters (lps.data.glyphs, the subsets in LETTERS below), with
-- the architectures and class ids of recipes/modelset_hetero_tasks.lua. Only
-- pairs of tasks with the same classes (one subset) are measured: each
-- subset is one small set of its domains, with its own pool matrix. Prints,
-- per source and pooled over both, the domain table domain_gain[a][b] (mean
-- over subsets) with the subsets' spread, its split-half agreement, the
-- pool models' accuracies per domain, and the sets of identity + 3 or more
-- transforms that meet the criterion domain_gain[a][b] <= domain_gain[b][b]
-- - 0.02 for every pair a ~= b of the set; --set prints one set's margins.
--
--   lua5.4 scripts/domain_transfer.lua --dir /tmp/dt --jobs 2
--   lua5.4 scripts/domain_transfer.lua --source glyphs --subsets 1,3 --domains identity,rot90,edges,zoomout
--   lua5.4 scripts/domain_transfer.lua --source both --set identity,rot90,zoomout,edges,shift
-- Resumable: built models and finished subsets are kept in --dir.
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require("cjson").new()
cjson.encode_invalid_numbers(true) -- a constant column (one class set) gives NaN taus
local zoo, util, H, TP, eval = lps.zoo, lps.util, lps.hetero, lps.transfer_pool, lps.eval
local TABLE = dofile("recipes/modelset_hetero_tasks.lua")

-- The Fashion-MNIST subsets measured: ModelSet-Hetero 1's (0-based classes).
local FASHION = {{0, 1}, {2, 4, 6}, {5, 7}, {0, 2, 3}, {1, 3, 4, 5}, {0, 6, 7}, {1, 2, 5, 6, 7}, {3, 8, 9}, {4, 5, 8},
  {0, 1, 7, 9}}

-- Letter subsets of 2 to 5 letters over 18 letters, each in two subsets.
-- One case per letter (no o/O, s/S, x/X, l/I look-alikes), and no letter
-- with its upside-down twin (b/p, d/q, n/u, M/W), which vflip would swap.
local LETTERS = {
  {"A", "d"}, {"E", "F", "H"}, {"g", "y"}, {"B", "R", "K", "s"}, {"M", "n", "i"},
  {"c", "s", "z", "T"}, {"A", "E", "g", "v", "y"}, {"d", "i", "F", "K"}, {"H", "M", "v", "R"},
  {"B", "c", "n", "T", "z"},
}
local GLYPH_TEST_PER_CLASS = 500 -- the pool protocol's 1,000 test images even for 2 letters

local p = argparse("domain_transfer.lua", "Measure how image domains change transfer (pool protocol).")
p:option("--dir", "Working directory (model sets and per-subset results).", "/tmp/domain_transfer")
p:option("--source", "Data: fashion_mnist, glyphs, or both (pooled report).", "fashion_mnist")
  :choices{"fashion_mnist", "glyphs", "both"}
p:option("--subsets", "Class subsets of each source's table (comma-separated; default all).")
p:option("--domains", "Domains (comma-separated; default every domain of lps.data.domains).")
p:option("--set", "A domain set whose criterion margins are printed per source and pooled.")
-- 3000: at lps.data.glyphs' 1,000 the pool models trained on 250 letters per class
-- (MLP / CNN identity 0.956 / 0.911, edges 0.837 / 0.851); at 3,000: 0.990 / 0.971, 0.965 / 0.942
p:option("--per-class", "Letters: training images per class.", "3000"):convert(math.tointeger)
p:option("--seed", "Master seed (subset S, domain k: seed + 100 S + k).", "1907"):convert(math.tointeger)
p:option("--repeats", "Budget draws per half (pool protocol).", tostring(TP.defaults.repeats)):convert(math.tointeger)
p:option("--margin", "Criterion margin.", "0.02"):convert(tonumber)
p:option("--jobs", "Processes at once (subsets are shared out).", "1"):convert(math.tointeger)
p:option("--part", "Only the subsets of part i/n (used by --jobs).")
p:option("--data", "Fashion-MNIST directory (default: $LUALPS_DATA or Debian's).")
local a = p:parse()
local function fail(msg) io.stderr:write("domain_transfer: ", msg, "\n") os.exit(1) end

local function list(text, all)
  if not text then return all end
  local out, known = {}, {}
  for _, v in ipairs(all) do known[tostring(v)] = v end
  for w in text:gmatch("[^,]+") do
    if known[w] == nil then fail(("unknown '%s' (%s)"):format(w, table.concat(all, ","))) end
    out[#out + 1] = known[w]
  end
  return out
end

-- The task table of a source: the Hetero task table with that source's
-- subsets above (class ids of the table: letters 10 + 0-based glyph label)
-- and --per-class letters.
local function source_table(src, lists)
  local T = {}
  for k, v in pairs(TABLE) do T[k] = v end
  T.subsets, T.heldout_classes = {}, {}
  T.sources = {fashion_mnist = TABLE.sources.fashion_mnist, glyphs = {}}
  for k, v in pairs(TABLE.sources.glyphs) do T.sources.glyphs[k] = v end
  T.sources.glyphs.per_class = a.per_class
  local id = {}
  for c, name in pairs(TABLE.class_names) do if c >= TABLE.sources.glyphs.first_class then id[name] = c end end
  for s, list in ipairs(lists) do
    local classes = {}
    for j, c in ipairs(list) do classes[j] = id[c] or c end
    T.subsets[s] = {source = src, classes = classes}
  end
  return T
end
local TABLES = {fashion_mnist = source_table("fashion_mnist", FASHION), glyphs = source_table("glyphs", LETTERS)}
local FASHION_T, GLYPHS_T = TABLES.fashion_mnist, TABLES.glyphs
local sources = a.source == "both" and {"fashion_mnist", "glyphs"} or {a.source}

local all_subsets = {}
for s = 1, math.max(#FASHION_T.subsets, #GLYPHS_T.subsets) do all_subsets[s] = s end
local subsets, domains = list(a.subsets, all_subsets), list(a.domains, lps.data.domains)
local domain_index = {}
for k, d in ipairs(lps.data.domains) do domain_index[d] = k end
local check_set = a.set and list(a.set, domains)
if not a.jobs or a.jobs < 1 then fail("--jobs must be a positive integer") end
if not a.seed then fail("--seed must be an integer") end
if not a.per_class or a.per_class < 1 then fail("--per-class must be a positive integer") end
os.execute("mkdir -p '" .. a.dir .. "'")
local data_dir = a.data or os.getenv("LUALPS_DATA") or lps.data.default_dir
-- the (source, subset) pairs measured: every source's subsets that exist
local units = {}
for _, src in ipairs(sources) do
  for _, S in ipairs(subsets) do
    if TABLES[src].subsets[S] then units[#units + 1] = {src = src, S = S} end
  end
end

-- The name of a source's data in file names (letters: with their count).
local function tag(src) return src == "glyphs" and ("glyphs%d"):format(a.per_class) or "fm" end

-- The tasks of subset S: one per domain, in the order asked for.
local function subset_tasks(src, S)
  local T, tasks = TABLES[src], {}
  for k, d in ipairs(domains) do
    local names = {}
    for j, c in ipairs(T.subsets[S].classes) do names[j] = T.class_names[c] end
    tasks[k] = {id = k, classes = T.subsets[S].classes, domain = d, subset = S, source = src,
                name = table.concat(names, "/") .. " (" .. d .. ")"}
  end
  return tasks
end

-- A task's images {x, y, xt, yt} (labels 1..k, the task's classes in
-- order) in its domain, at most 2,000 test images (as the Hetero build).
local fm
local function task_data(task)
  local x, y, xt, yt
  if task.source == "fashion_mnist" then
    if not fm then
      fm = {lps.data.fashion_mnist("train", data_dir)}
      fm[3], fm[4] = lps.data.fashion_mnist("test", data_dir)
    end
    local c = {}
    for k, cl in ipairs(task.classes) do c[k] = cl + 1 end -- dataset labels are 1-based
    x, y = lps.data.select_classes(fm[1], fm[2], c)
    xt, yt = lps.data.select_classes(fm[3], fm[4], c)
  else
    local labels = {} -- lps.data.glyphs' 1-based labels
    for k, cl in ipairs(task.classes) do labels[k] = cl - TABLE.sources.glyphs.first_class + 1 end
    x, y = lps.data.glyphs("train", {per_class = a.per_class, classes = labels})
    xt, yt = lps.data.glyphs("test", {per_class = GLYPH_TEST_PER_CLASS, classes = labels})
    x, y = lps.data.select_classes(x, y, labels)
    xt, yt = lps.data.select_classes(xt, yt, labels)
  end
  if xt:size(1) > 2000 then xt, yt = xt:rows(1, 2000), yt:rows(1, 2000) end
  if task.domain ~= "identity" then x, xt = lps.data.domain(x, task.domain), lps.data.domain(xt, task.domain) end
  return {x = x, y = y, xt = xt, yt = yt}
end

-- The pool models of (subset S, domain d): a one-task plan of its own
-- master seed, so every (subset, domain) has its own inits and data draws;
-- trained as lps.zoo.build does (a model below its floor is retrained with
-- the next seed, the best kept), written whole or not at all.
local function set_path(src, S, d) return ("%s/%s-s%02d-%s-%d.lpsm"):format(a.dir, tag(src), S, d, a.seed) end
local function build(src, S, d)
  local path = set_path(src, S, d)
  if zoo.file_exists(path) then return end
  local T = {}
  for k, v in pairs(TABLES[src]) do T[k] = v end
  T.subsets, T.domains = {T.subsets[S]}, {d}
  -- no ResNets, and no minimum of steps: the pool as measured before the Hetero 2 plan had one
  local plan = H.plan(T, {per_task = H.defaults.pool, resnets = 0, master_seed = a.seed + 100 * S + domain_index[d],
    min_steps = {mlp = 0, cnn = 0, resnet = 0}})
  local td = task_data{source = src, classes = T.subsets[1].classes, domain = d}
  local ms = lps.modelset.create(path .. ".tmp", {overwrite = true})
  for _, m in ipairs(plan) do
    local best, res
    for attempt = 0, zoo.defaults.max_attempts - 1 do
      local model, r = zoo.train_one(m, td, attempt)
      if not res or r.test_accuracy > res.test_accuracy then best, res = model, r end
      if r.test_accuracy >= m.min_test_accuracy then break end
    end
    ms:append(best, {id = m.id, task = 1, classes = m.classes, domain = d, source = src, family = m.family,
      architecture = m.architecture, in_pool = m.in_pool, seed = res.seed, fingerprint = m.fingerprint,
      train_accuracy = res.train_accuracy, test_accuracy = res.test_accuracy})
  end
  ms:close()
  assert(os.rename(path .. ".tmp", path))
end

-- One model set over the per-domain sets of a subset (what transfer_pool
-- reads: #ms, ms:meta(i), ms:get(i)), task k = domain k, ids made unique.
local function view(sets)
  local recs = {}
  for k, ms in ipairs(sets) do for i = 1, #ms do recs[#recs + 1] = {ms = ms, i = i, k = k} end end
  local v = {}
  function v.meta(_, i)
    local r = recs[i]
    local m = r.ms:meta(r.i)
    m.task, m.id = r.k, ("t%02d-%s"):format(r.k, m.id:match("m%d+$"))
    return m
  end
  function v.get(_, i) return recs[i].ms:get(recs[i].i) end
  return setmetatable(v, {__len = function() return #recs end})
end

local function result_path(src, S)
  return ("%s/%s-s%02d-%d.%s.transfer.json"):format(a.dir, tag(src), S, a.seed, table.concat(domains, "-"))
end

local function run_subset(src, S)
  if util.read_file(result_path(src, S)) then return end
  local t0 = lps.now()
  for _, d in ipairs(domains) do build(src, S, d) end
  local sets = {}
  for k, d in ipairs(domains) do sets[k] = lps.modelset.open(set_path(src, S, d)) end
  local tasks, ms = subset_tasks(src, S), view(sets)
  local targets = {}
  for t = 1, #tasks do targets[t] = t end
  local opts = {repeats = a.repeats}
  local cache = {}
  local function data(t)
    if not cache[t] then cache = {[t] = task_data(tasks[t])} end -- targets come in order: keep one
    return cache[t]
  end
  local cols = TP.columns(ms, tasks, targets, data, opts)
  local r = TP.result(ms, tasks, TP.merge{cjson.decode(cjson.encode(cols))}, opts)
  r.accuracy = {}
  for i = 1, #ms do
    local m = ms:meta(i)
    r.accuracy[m.id] = {domain = domains[m.task], family = m.family, test_accuracy = m.test_accuracy}
  end
  r.source, r.seconds = src, lps.now() - t0
  for _, s in ipairs(sets) do s:close() end
  util.write_file(result_path(src, S), cjson.encode(r))
  io.stderr:write(("domain_transfer: %s subset %d done in %.0f s\n"):format(src, S, r.seconds))
end

if a.part then
  local ok, i, n = pcall(zoo.parse_shard, a.part)
  if not ok then fail(i) end
  lps.set_num_threads(1)
  for k, u in ipairs(units) do if (k - 1) % n + 1 == i then run_subset(u.src, u.S) end end
  os.exit(0)
elseif a.jobs > 1 then
  local words = {"lua5.4", arg[0]}
  for _, w in ipairs(arg) do words[#words + 1] = "'" .. w .. "'" end
  zoo.run_shards(table.concat(words, " ") .. (" --part {}/%d"):format(a.jobs), a.jobs)
else
  lps.set_num_threads(1)
  for _, u in ipairs(units) do run_subset(u.src, u.S) end
end

-- The report, over the subsets of one source or of both.
local function mean(xs) local s = 0 for _, x in ipairs(xs) do s = s + x end return s / #xs end
local function sd(xs)
  local m, s = mean(xs), 0
  for _, x in ipairs(xs) do s = s + (x - m) ^ 2 end
  return #xs > 1 and math.sqrt(s / (#xs - 1)) or 0
end
local function header()
  local line = {("%-9s"):format("")}
  for _, y in ipairs(domains) do line[#line + 1] = ("%16s"):format(y) end
  print(table.concat(line))
end
-- a domains x domains table of "mean (se)" over the subsets' tables
local function print_table(cell)
  header()
  for _, x in ipairs(domains) do
    local line = {("%-9s"):format(x)}
    for _, y in ipairs(domains) do
      local v = cell(x, y)
      if not v then line[#line + 1] = ("%16s"):format("")
      else line[#line + 1] = ("%+8.4f (%.4f)"):format(mean(v), sd(v) / math.sqrt(#v)) end
    end
    print(table.concat(line))
  end
end

local function report(R, title)
  -- per subset tables (one pair per cell), whole gains and each half's
  local per, half = {}, {{}, {}}
  for k, r in ipairs(R) do
    per[k] = TP.domain_gain(r.gain, r.tasks)
    for h = 1, 2 do half[h][k] = TP.domain_gain(r.gain_halves[h], r.tasks) end
  end
  local function over(tabs, x, y)
    local v = {}
    for k = 1, #tabs do v[k] = tabs[k][x][y] end
    return v
  end
  local dg, dg_half = {}, {{}, {}}
  for _, x in ipairs(domains) do
    dg[x], dg_half[1][x], dg_half[2][x] = {}, {}, {}
    for _, y in ipairs(domains) do
      dg[x][y] = mean(over(per, x, y))
      for h = 1, 2 do dg_half[h][x][y] = mean(over(half[h], x, y)) end
    end
  end
  print(("== %s: domain_gain[source][target], mean over %d subsets, one pair per subset and cell; (se)")
    :format(title, #R))
  print_table(function(x, y) return over(per, x, y) end)

  -- How far the table is from noise: the two halves' tables (disjoint
  -- models, own budget draws) against each other, and the pool matrices'.
  local c1, c2, rel, rel_t, all1, all2 = {}, {}, {}, {}, {}, {}
  for _, x in ipairs(domains) do
    for _, y in ipairs(domains) do c1[#c1 + 1], c2[#c2 + 1] = dg_half[1][x][y], dg_half[2][x][y] end
  end
  for k, r in ipairs(R) do
    rel[k], rel_t[k] = r.reliability.split_half_spearman, r.reliability.per_target_split_half_spearman
    for s = 1, #r.tasks do
      for t = 1, #r.tasks do
        if s ~= t then all1[#all1 + 1], all2[#all2 + 1] = r.gain_halves[1][s][t], r.gain_halves[2][s][t] end
      end
    end
  end
  print(("split-half Spearman of the domain table (%d cells): %.3f; of the pooled off-diagonal pairs (%d): %.3f; "
    .. "transfer_pool.reliability per subset: mean %.3f (min %.3f), per target %.3f")
    :format(#c1, eval.spearman(c1, c2), #all1, eval.spearman(all1, all2), mean(rel), math.min(table.unpack(rel)),
      mean(rel_t)))

  -- Pool models' test accuracy per domain (mean over subsets, by family),
  -- and the from-scratch probes' (128 images) as the budget sees them.
  print("test accuracy by domain: pool models (MLP, CNN), min over subsets of their mean; scratch on 128 images")
  local acc = {}
  for _, d in ipairs(domains) do acc[d] = {mlp = {}, cnn = {}, min = 1, scratch = {}} end
  for _, r in ipairs(R) do
    local per_sub = {}
    for _, e in pairs(r.accuracy) do
      table.insert(acc[e.domain][e.family], e.test_accuracy)
      per_sub[e.domain] = per_sub[e.domain] or {}
      table.insert(per_sub[e.domain], e.test_accuracy)
    end
    for d, v in pairs(per_sub) do acc[d].min = math.min(acc[d].min, mean(v)) end
    for t, task in ipairs(r.tasks) do
      local sc = r.scratch[t]
      table.insert(acc[task.domain].scratch, (sc.mlp[1] + sc.mlp[2] + sc.cnn[1] + sc.cnn[2]) / 4)
    end
  end
  for _, d in ipairs(domains) do
    print(("  %-9s mlp %.3f  cnn %.3f  min subset %.3f  scratch %.3f"):format(d, mean(acc[d].mlp),
      mean(acc[d].cnn), acc[d].min, mean(acc[d].scratch)))
  end

  -- The criterion on every set of identity + 3 or more other domains: its
  -- smallest margin dg[b][b] - dg[a][b] over pairs a ~= b in the set.
  local function min_margin(set, t)
    local m, at = math.huge, nil
    t = t or dg
    for _, x in ipairs(set) do
      for _, y in ipairs(set) do
        if x ~= y and t[y][y] - t[x][y] < m then m, at = t[y][y] - t[x][y], x .. "->" .. y end
      end
    end
    return m, at
  end
  local others, feasible = {}, {}
  for _, d in ipairs(domains) do if d ~= "identity" then others[#others + 1] = d end end
  if domain_index.identity and dg.identity then
    for mask = 1, (1 << #others) - 1 do
      local set = {"identity"}
      for j, d in ipairs(others) do if mask & (1 << (j - 1)) ~= 0 then set[#set + 1] = d end end
      if #set >= 4 then
        local m, at = min_margin(set)
        if m >= a.margin then feasible[#feasible + 1] = {set = set, margin = m, at = at} end
      end
    end
  end
  table.sort(feasible, function(x, y) if #x.set ~= #y.set then return #x.set > #y.set end return x.margin > y.margin end)
  print(("sets of identity + >= 3 domains meeting the criterion (margin >= %.3f): %d"):format(a.margin, #feasible))
  for k = 1, math.min(#feasible, 15) do
    local f = feasible[k]
    print(("  %-60s smallest margin %.4f (%s)"):format(table.concat(f.set, ","), f.margin, f.at))
  end
  -- per domain: margins against every other domain (staying minus moving in)
  local function margins(x, y)
    if x == y then return nil end
    local v = {}
    for k = 1, #per do v[k] = per[k][y][y] - per[k][x][y] end
    return v
  end
  print("margin dg[b][b] - dg[a][b] (row a, column b), with its se over subsets:")
  print_table(margins)
  if check_set then
    local m, at = min_margin(check_set)
    local m1, at1 = min_margin(check_set, dg_half[1])
    local m2, at2 = min_margin(check_set, dg_half[2])
    print(("set %s: smallest margin %.4f (%s)%s; in each half's table %.4f (%s), %.4f (%s)")
      :format(table.concat(check_set, ","), m, at, m >= a.margin and "" or " FAILS the criterion", m1, at1, m2, at2))
  end
  return {subsets = #R, domain_gain = dg, domain_gain_halves = dg_half, feasible = feasible}
end

local by_source, all, out = {}, {}, {domains = domains, subsets = subsets}
for _, u in ipairs(units) do
  local r = cjson.decode(assert(util.read_file(result_path(u.src, u.S))))
  by_source[u.src] = by_source[u.src] or {}
  table.insert(by_source[u.src], r)
  all[#all + 1] = r
end
for _, src in ipairs(sources) do out[src] = report(by_source[src], src .. (src == "glyphs" and
  (" (%d training images per class)"):format(a.per_class) or "")) end
if #sources > 1 then out.pooled = report(all, "both sources pooled (each subset weighs the same)") end
util.write_file(("%s/domain_table.%s.json"):format(a.dir, a.source), cjson.encode(out))
