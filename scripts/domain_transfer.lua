#!/usr/bin/env lua5.4
--- Which image domains change what transfers (issue 18): the transfer pool
-- protocol (lps.transfer_pool) on a reduced ModelSet-Hetero with only the
-- pool models (8 per task: 4 MLPs, 4 CNNs of the reference architectures),
-- over class subsets of recipes/modelset_hetero_tasks.lua in every domain
-- asked for. Only pairs of tasks with the same classes (one subset) are
-- measured: each subset is one small set of its domains, with its own
-- pool matrix. Prints the domain table domain_gain[a][b] (mean over subsets)
-- with the subsets' spread, its split-half agreement, the pool models'
-- accuracies per domain, and the sets of identity + 3 or more transforms
-- that meet the criterion domain_gain[a][b] <= domain_gain[b][b] - 0.02 for
-- every pair a ~= b of the set.
--
--   lua5.4 scripts/domain_transfer.lua --dir /tmp/dt --jobs 2
--   lua5.4 scripts/domain_transfer.lua --dir /tmp/dt --subsets 1,3 --domains identity,rot90,edges,zoomout
-- Resumable: built models and finished subsets are kept in --dir.
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local argparse = require "argparse"
local cjson = require("cjson").new()
cjson.encode_invalid_numbers(true) -- a constant column (one class set) gives NaN taus
local zoo, util, H, TP, eval = lps.zoo, lps.util, lps.hetero, lps.transfer_pool, lps.eval
local TABLE = dofile("recipes/modelset_hetero_tasks.lua")

local p = argparse("domain_transfer.lua", "Measure how image domains change transfer (pool protocol).")
p:option("--dir", "Working directory (model sets and per-subset results).", "/tmp/domain_transfer")
p:option("--subsets", "Class subsets of the task table (comma-separated; default all).")
p:option("--domains", "Domains (comma-separated; default every domain of lps.data.domains).")
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
local all_subsets = {}
for s = 1, #TABLE.subsets do all_subsets[s] = s end
local subsets, domains = list(a.subsets, all_subsets), list(a.domains, lps.data.domains)
local domain_index = {}
for k, d in ipairs(lps.data.domains) do domain_index[d] = k end
if not a.jobs or a.jobs < 1 then fail("--jobs must be a positive integer") end
if not a.seed then fail("--seed must be an integer") end
os.execute("mkdir -p '" .. a.dir .. "'")
local data_dir = a.data or os.getenv("LUALPS_DATA") or lps.data.default_dir

-- The tasks of subset S: one per domain, in the order asked for.
local function subset_tasks(S)
  local tasks = {}
  for k, d in ipairs(domains) do
    local names = {}
    for j, c in ipairs(TABLE.subsets[S]) do names[j] = TABLE.class_names[c] end
    tasks[k] = {id = k, classes = TABLE.subsets[S], domain = d, subset = S,
                name = table.concat(names, "/") .. " (" .. d .. ")"}
  end
  return tasks
end

-- The pool models of (subset S, domain d): a one-task plan of its own
-- master seed, so every (subset, domain) has its own inits and data draws.
local function set_path(S, d) return ("%s/s%02d-%s-%d.lpsm"):format(a.dir, S, d, a.seed) end
local function build(S, d)
  local T = {}
  for k, v in pairs(TABLE) do T[k] = v end
  T.subsets, T.domains = {TABLE.subsets[S]}, {d}
  local plan, tasks = H.plan(T, {per_task = H.defaults.pool, master_seed = a.seed + 100 * S + domain_index[d]})
  zoo.build(plan, set_path(S, d), {tasks = tasks, data_dir = data_dir, max_test = 2000, progress = false})
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

local function result_path(S)
  return ("%s/s%02d-%d.%s.transfer.json"):format(a.dir, S, a.seed, table.concat(domains, "-"))
end

local function run_subset(S)
  if util.read_file(result_path(S)) then return end
  local t0 = lps.now()
  for _, d in ipairs(domains) do build(S, d) end
  local sets = {}
  for k, d in ipairs(domains) do sets[k] = lps.modelset.open(set_path(S, d)) end
  local tasks, ms = subset_tasks(S), view(sets)
  local targets = {}
  for t = 1, #tasks do targets[t] = t end
  local opts = {repeats = a.repeats}
  local cols = TP.columns(ms, tasks, targets, zoo.task_data_loader(tasks, data_dir), opts)
  local r = TP.result(ms, tasks, TP.merge{cjson.decode(cjson.encode(cols))}, opts)
  r.accuracy = {}
  for i = 1, #ms do
    local m = ms:meta(i)
    r.accuracy[m.id] = {domain = domains[m.task], family = m.family, test_accuracy = m.test_accuracy}
  end
  r.seconds = lps.now() - t0
  for _, s in ipairs(sets) do s:close() end
  util.write_file(result_path(S), cjson.encode(r))
  io.stderr:write(("domain_transfer: subset %d done in %.0f s\n"):format(S, r.seconds))
end

if a.part then
  local ok, i, n = pcall(zoo.parse_shard, a.part)
  if not ok then fail(i) end
  lps.set_num_threads(1)
  for k, S in ipairs(subsets) do if (k - 1) % n + 1 == i then run_subset(S) end end
  os.exit(0)
elseif a.jobs > 1 then
  local words = {"lua5.4", arg[0]}
  for _, w in ipairs(arg) do words[#words + 1] = "'" .. w .. "'" end
  zoo.run_shards(table.concat(words, " ") .. (" --part {}/%d"):format(a.jobs), a.jobs)
else
  lps.set_num_threads(1)
  for _, S in ipairs(subsets) do run_subset(S) end
end

-- The report, over the subsets.
local R = {}
for k, S in ipairs(subsets) do R[k] = cjson.decode(assert(util.read_file(result_path(S)))) end
local function mean(xs) local s = 0 for _, x in ipairs(xs) do s = s + x end return s / #xs end
local function sd(xs)
  local m, s = mean(xs), 0
  for _, x in ipairs(xs) do s = s + (x - m) ^ 2 end
  return #xs > 1 and math.sqrt(s / (#xs - 1)) or 0
end
-- per subset tables (one pair per cell), whole gains and each half's
local per, half = {}, {{}, {}}
for k, r in ipairs(R) do
  per[k] = TP.domain_gain(r.gain, r.tasks)
  for h = 1, 2 do half[h][k] = TP.domain_gain(r.gain_halves[h], r.tasks) end
end
local function over_subsets(tabs, x, y)
  local v = {}
  for k = 1, #tabs do v[k] = tabs[k][x][y] end
  return v
end
local dg, se, dg_half = {}, {}, {{}, {}}
for _, x in ipairs(domains) do
  dg[x], se[x], dg_half[1][x], dg_half[2][x] = {}, {}, {}, {}
  for _, y in ipairs(domains) do
    local v = over_subsets(per, x, y)
    dg[x][y], se[x][y] = mean(v), sd(v) / math.sqrt(#v)
    for h = 1, 2 do dg_half[h][x][y] = mean(over_subsets(half[h], x, y)) end
  end
end

print(("domain_gain[source][target], mean over %d subsets (%s), one pair per subset and cell; (se)")
  :format(#subsets, table.concat(subsets, ",")))
local line = {("%-9s"):format("")}
for _, y in ipairs(domains) do line[#line + 1] = ("%16s"):format(y) end
print(table.concat(line))
for _, x in ipairs(domains) do
  line = {("%-9s"):format(x)}
  for _, y in ipairs(domains) do line[#line + 1] = ("%+8.4f (%.4f)"):format(dg[x][y], se[x][y]) end
  print(table.concat(line))
end

-- How far the table is from noise: the two halves' tables (disjoint models,
-- own budget draws) against each other, and the pool matrices' reliability.
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

-- Pool models' test accuracy per domain (mean over subsets, by family), and
-- the from-scratch probes' (128 images) as the budget sees them.
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
  print(("  %-9s mlp %.3f  cnn %.3f  min subset %.3f  scratch %.3f"):format(d, mean(acc[d].mlp), mean(acc[d].cnn),
    acc[d].min, mean(acc[d].scratch)))
end

-- The criterion on every set of identity + 3 or more other domains: its
-- smallest margin dg[b][b] - margin - dg[a][b] over pairs a ~= b in the set.
local others = {}
for _, d in ipairs(domains) do if d ~= "identity" then others[#others + 1] = d end end
local function min_margin(set)
  local m, at = math.huge, nil
  for _, x in ipairs(set) do
    for _, y in ipairs(set) do
      if x ~= y then
        local v = dg[y][y] - dg[x][y]
        if v < m then m, at = v, x .. "->" .. y end
      end
    end
  end
  return m, at
end
local feasible = {}
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
print("margin dg[b][b] - dg[a][b] (row a, column b), with its se over subsets:")
line = {("%-9s"):format("")}
for _, y in ipairs(domains) do line[#line + 1] = ("%16s"):format(y) end
print(table.concat(line))
for _, x in ipairs(domains) do
  line = {("%-9s"):format(x)}
  for _, y in ipairs(domains) do
    if x == y then line[#line + 1] = ("%16s"):format("")
    else
      local v = {}
      for k = 1, #per do v[k] = per[k][y][y] - per[k][x][y] end
      line[#line + 1] = ("%+8.4f (%.4f)"):format(mean(v), sd(v) / math.sqrt(#v))
    end
  end
  print(table.concat(line))
end
util.write_file(a.dir .. "/domain_table.json", cjson.encode{subsets = subsets, domains = domains, domain_gain = dg,
  se = se, domain_gain_halves = dg_half, feasible = feasible})
