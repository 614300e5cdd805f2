--- lualps.bench.transfer_pool (lps.transfer_pool): the transfer ground truth of a set of many
-- architectures (ModelSet-Hetero), measured twice to know its reliability.
local core = require "lualps.core"
local cjson = require "cjson"
local nn = require "lualps.nn"
local arch = require "lualps.arch"
local optim = require "lualps.optim"
local data = require "lualps.data"
local eval = require "lualps.eval"
local transfer = require "lualps.bench.transfer"

local M = {}

-- For sets of many architectures: every task has a pool of source models
-- (records with in_pool, the first of each task: half MLPs, half CNNs of
-- one reference architecture per family), split into two halves of
-- disjoint models. Half h fine-tunes its models with its own budget draws
-- and seeds, and compares with from-scratch models of the same reference
-- architecture on budgets of the same size (the fine-tunes' draws and more:
-- the scratch CNN is the noisiest term), so the two halves are independent
-- measurements of the same gains and their agreement is the matrix's
-- reliability. Each source's frozen features of a target's test images are
-- computed once and shared by all its heads.

--- Options of the pool protocol and their defaults.
M.defaults = {
  images = 128,       -- training images of the target task per budget draw
  epochs = 5,         -- epochs over them (the scratch model; "full" fine-tuning)
  batch = 16,
  lr = 1e-3,          -- Adam
  finetune = "head",  -- "head": the new head on the source's frozen features; "full": every layer
  head_epochs = 30,   -- "head": epochs and Adam learning rate of the head
  head_lr = 1e-2,
  repeats = 2,        -- budget draws per half the sources are fine-tuned on (averaged)
  scratch_draws = 12, -- budget draws per half of the scratch baseline (averaged; at least repeats,
                      -- the first `repeats` are the fine-tunes' draws): a 40-step CNN from scratch
                      -- varies by 0.07 between draws, the fine-tunes by far less
  test_images = 1000, -- target test images that measure accuracy
  per_repeat = false, -- M.columns: also each draw's accuracies
}

-- Seeds are 31 h + r (scratch_draws_max keeps the halves' draws apart).
M.scratch_draws_max = 30

local function options(opts)
  local o, progress = transfer.options(opts, M.defaults)
  if math.max(o.repeats, o.scratch_draws) > M.scratch_draws_max then
    error(("transfer: at most %d budget draws per half"):format(M.scratch_draws_max), 3)
  end
  return o, progress
end

--- The pool of a set: pool[t] = list of {i =, id =, family =, half =} in id
-- order (half 1: the first half of the task's pool models).
function M.pool_of(ms)
  local pool = {}
  for i = 1, #ms do
    local m = ms:meta(i)
    if m.in_pool then
      pool[m.task] = pool[m.task] or {}
      table.insert(pool[m.task], {i = i, id = m.id, family = m.family, arch = arch.of_meta(m)})
    end
  end
  for _, list in pairs(pool) do
    table.sort(list, function(a, b) return a.id < b.id end)
    for k, e in ipairs(list) do e.half = k <= #list // 2 and 1 or 2 end
  end
  return pool
end

-- A copy of an arch list whose last linear layer gives k outputs.
local function with_classes(a, k)
  local copy, last = {}, nil
  for n, l in ipairs(a) do
    local c = {}
    for key, v in pairs(l) do c[key] = v end
    copy[n] = c
    if c.type == "linear" then last = c end
  end
  last.out = k
  return copy
end

local function inputs_for(a, x)
  local first = a[1].type == "input" and a[2] or a[1]
  if first.type == "conv2d" then return x:reshape(x:size(1), 1, 28, 28) end
  return x
end

--- The from-scratch model of one family on target t's budget draw
-- (half h, repeat r): trained, with its test accuracy and its initial last
-- layer (the head a fine-tuned source gets). It is also the model-selection
-- query: a probe of the task trained on its few images. `a` is the
-- family's reference architecture (an arch list), `td` the target's data.
function M.probe(a, t, k, h, r, td, opts)
  local o = options(opts)
  local g = core.generator(1000003 * t + 1009 * h + r)
  local bx, by = data.fraction(td.x, td.y, math.min(1, o.images / td.x:size(1)), g)
  local s = with_classes(a, k)
  local model = nn.from_arch(s, g)
  local named = model:named_parameters()
  local head = {weight = named[#named - 1].tensor:clone(), bias = named[#named].tensor:clone()}
  local budget = {x = inputs_for(s, bx), y = by, seed = 7777 * t + 31 * h + r}
  nn.train(model, budget, {optimizer = optim.adam{lr = o.lr}, epochs = o.epochs, batch_size = o.batch,
    generator = core.generator(budget.seed), progress = false})
  local xt, yt = td.xt, td.yt
  if xt:size(1) > o.test_images then xt, yt = xt:rows(1, o.test_images), yt:rows(1, o.test_images) end
  local acc = nn.evaluate(model, {x = inputs_for(s, xt), y = yt})
  return model, acc, head, budget, {x = inputs_for(s, xt), y = yt}
end

-- Outputs of every layer of model but the last (a sequential) for x, in
-- chunks of 64 samples through one sequential of those layers: its
-- workspaces are allocated once and stay in cache (fresh activations per
-- layer and chunk cost more in page faults and zeroing than the layers
-- themselves). A row's features can differ in the last bit with the chunk
-- size (BLAS blocking), so the chunk size is part of the protocol.
local function body_of(model)
  local kids = model:children()
  return nn.sequential(table.move(kids, 1, #kids - 1, 1, {})), kids
end

local function features(b, x)
  local n, out = x:size(1), nil
  for s = 1, n, 64 do
    local h = b:forward(x:rows(s, math.min(n, s + 63)))
    out = out or core.zeros(n, h:size(2))
    out:rows(s, s + h:size(1) - 1):copy(h)
    h:close()
  end
  return out
end
--- The frozen features of x a new head on `model` (a sequential) trains on:
-- the outputs of all its layers but the last, computed in chunks of 64.
function M.features(model, x)
  local b = body_of(model)
  local f = features(b, x)
  b:close()
  return f
end

-- Target test accuracy of a new head `head` (the scratch model's initial
-- last layer) trained on frozen features fx of the budget b, measured on
-- the test features ft.
local function head_accuracy(fx, ft, k, head, b, test_y, o)
  local lin = nn.linear(fx:size(2), k, core.generator(0))
  local p = lin:named_parameters()
  p[1].tensor:copy(head.weight)
  p[2].tensor:copy(head.bias)
  nn.train(lin, {x = fx, y = b.y}, {optimizer = optim.adam{lr = o.head_lr}, epochs = o.head_epochs,
    batch_size = o.batch, generator = core.generator(b.seed), progress = false})
  local acc = nn.evaluate(lin, {x = ft, y = test_y})
  lin:close()
  return acc
end

-- Full fine-tuning: every layer of the source, from its weights, with the new head.
local function finetuned_full(src, e, k, head, b, test, o)
  local srcp = src:state_dict()
  local m = nn.from_arch(with_classes(e.arch, k), core.generator(0))
  local dst = m:named_parameters()
  for n = 1, #dst - 2 do dst[n].tensor:copy(srcp[dst[n].name]) end
  dst[#dst - 1].tensor:copy(head.weight)
  dst[#dst].tensor:copy(head.bias)
  nn.train(m, b, {optimizer = optim.adam{lr = o.lr}, epochs = o.epochs, batch_size = o.batch,
    generator = core.generator(b.seed), progress = false})
  local acc = nn.evaluate(m, test)
  m:close()
  return acc
end

-- A decoded model's layers are C memory the collector does not see: free them now.
local function close_model(m)
  for _, kid in ipairs(m:children()) do kid:close() end
  m:close()
end

--- Columns `targets` of the pool transfer matrix of set ms (tasks: the
-- splits' task list; task_data(t) as lps.zoo.task_data_loader). opts: M.defaults
-- plus progress (function(done, total, text)) and per_repeat (true: also
-- each draw's accuracies, finetune_each[id][t][r] and
-- scratch_each[t][family][h][r], to study reliability against draws).
-- Returns {scratch = {[t] = {mlp = {half 1, half 2}, cnn = {...}}},
-- finetune = {[id] = {[t] = acc}}} (accuracies averaged over the draws:
-- `repeats` for the fine-tunes, `scratch_draws` for the scratch models).
--
-- Every target's probes (budget draws, scratch models, heads) come first;
-- then each pool model is decoded once and, for every target, its frozen
-- features of the test images are computed once for all the repeats, and
-- of each budget draw once: the same numbers as computing them per use.
function M.columns(ms, tasks, targets, task_data, opts)
  local o, progress = options(opts)
  local per_repeat = o.per_repeat
  local pool = M.pool_of(ms)
  local ref = {}
  for t = 1, #tasks do
    if not pool[t] or #pool[t] < 2 then error(("transfer: task %d has no pool models (in_pool)"):format(t), 2) end
    for _, e in ipairs(pool[t]) do ref[e.family] = ref[e.family] or e.arch end
  end
  local out = {scratch = {}, finetune = {}}
  local S = math.max(o.scratch_draws, o.repeats)
  if per_repeat then out.finetune_each, out.scratch_each = {}, {} end
  local npool = 0
  for s = 1, #tasks do npool = npool + #pool[s] end
  local total, done = #targets * (4 * S + npool), 0
  -- probes[t] = {k, test_y, test = {family = x}, draws[h][r][family] = {head, budget}}
  local probes = {}
  for _, t in ipairs(targets) do
    local td, k = task_data(t), #tasks[t].classes
    local sc, P = {mlp = {}, cnn = {}}, {k = k, test = {}, draws = {{}, {}}}
    if per_repeat then out.scratch_each[t] = {mlp = {{}, {}}, cnn = {{}, {}}} end
    for h = 1, 2 do
      for _, fam in ipairs{"mlp", "cnn"} do sc[fam][h] = 0 end
      for r = 1, S do
        if r <= o.repeats then P.draws[h][r] = {} end
        for _, fam in ipairs{"mlp", "cnn"} do
          local model, acc, head, budget, test = M.probe(ref[fam], t, k, h, r, td, o)
          model:close()
          sc[fam][h] = sc[fam][h] + acc / S
          if per_repeat then out.scratch_each[t][fam][h][r] = acc end
          if r <= o.repeats then
            -- copies: views would keep the target's whole training set alive
            budget.x = budget.x:clone()
            P.draws[h][r][fam] = {head = head, budget = budget}
            if not P.test_y then P.test_y = test.y:clone() end
            P.test[fam] = P.test[fam] or test.x:clone()
          end
          done = done + 1
        end
      end
    end
    out.scratch[t] = sc
    probes[t] = P
    if progress then progress(done, total, ("probes of target %d"):format(t)) end
  end
  collectgarbage("collect") -- the targets' full data sets
  for s = 1, #tasks do
    for _, e in ipairs(pool[s]) do
      local src = ms:get(e.i)
      local b, kids
      if o.finetune == "head" then b, kids = body_of(src) end
      local row = out.finetune[e.id] or {}
      out.finetune[e.id] = row
      if per_repeat then out.finetune_each[e.id] = {} end
      for _, t in ipairs(targets) do
        local P = probes[t]
        local ft = b and features(b, P.test[e.family])
        local sum, accs = 0, {}
        for r = 1, o.repeats do
          local d = P.draws[e.half][r][e.family]
          local acc
          if b then
            local fx = features(b, d.budget.x)
            acc = head_accuracy(fx, ft, P.k, d.head, d.budget, P.test_y, o)
            fx:close()
          else
            acc = finetuned_full(src, e, P.k, d.head, d.budget, {x = P.test[e.family], y = P.test_y}, o)
          end
          sum, accs[r] = sum + acc / o.repeats, acc
        end
        if ft then ft:close() end
        row[t] = sum
        if per_repeat then out.finetune_each[e.id][t] = accs end
        done = done + 1
      end
      if b then
        b:close()
        for _, kid in ipairs(kids) do kid:close() end
      end
      close_model(src)
      if progress then progress(done, total, ("source task %d"):format(s)) end
    end
  end
  for _, P in pairs(probes) do
    P.test_y:close()
    for _, x in pairs(P.test) do x:close() end
    for h = 1, 2 do for _, dr in ipairs(P.draws[h]) do for _, d in pairs(dr) do d.budget.x:close() end end end
  end
  return out
end

--- Gains of pool columns (merged over targets): gain_half[h][s][t] = mean
-- over half h's models of source task s of (fine-tuned minus the same
-- family's scratch accuracy of half h) on target t; gain = their mean.
function M.gains(r, tasks, pool_ids)
  local ntasks = #tasks
  local gain, halves = {}, {{}, {}}
  for s = 1, ntasks do
    gain[s], halves[1][s], halves[2][s] = {}, {}, {}
    for t = 1, ntasks do
      for h = 1, 2 do
        local sum, n = 0, 0
        for _, e in ipairs(pool_ids[s]) do
          if e.half == h then
            sum, n = sum + r.finetune[e.id][t] - r.scratch[t][e.family][h], n + 1
          end
        end
        halves[h][s][t] = sum / n
      end
      gain[s][t] = (halves[1][s][t] + halves[2][s][t]) / 2
    end
  end
  return gain, halves
end

-- Off-diagonal entries of square matrices, row by row.
local function offdiag(...)
  local Ms, out = {...}, {}
  for k = 1, #Ms do out[k] = {} end
  for s = 1, #Ms[1] do
    for t = 1, #Ms[1] do
      if s ~= t then for k, Mk in ipairs(Ms) do table.insert(out[k], Mk[s][t]) end end
    end
  end
  return table.unpack(out)
end

--- Reliability of a pool matrix and what explains it: the split-half
-- Spearman correlation of the off-diagonal gains (all pairs), the same per
-- target (sources ranked within each target column, averaged: free of how
-- warm or cold whole targets are), and Kendall tau of the gains with class
-- overlap (shared classes), domain match (0/1) and both (overlap + match).
function M.reliability(halves, gain, tasks)
  local n = #tasks
  local overlap, domain, both = transfer.overlap(tasks), {}, {}
  for s = 1, n do
    domain[s], both[s] = {}, {}
    for t = 1, n do
      domain[s][t] = tasks[s].domain == tasks[t].domain and 1 or 0
      both[s][t] = overlap[s][t] / #tasks[t].classes + domain[s][t]
    end
  end
  local a, b, g, ov, dm, bo = offdiag(halves[1], halves[2], gain, overlap, domain, both)
  local per, cnt = 0, 0
  for t = 1, n do
    local x, y = {}, {}
    for s = 1, n do if s ~= t then x[#x + 1], y[#y + 1] = halves[1][s][t], halves[2][s][t] end end
    local rho = eval.spearman(x, y)
    if rho == rho then per, cnt = per + rho, cnt + 1 end
  end
  local r = eval.spearman(a, b)
  -- the ground truth is the mean of both halves: Spearman-Brown gives its reliability
  return {split_half_spearman = r, spearman_brown = 2 * r / (1 + r),
          per_target_split_half_spearman = cnt > 0 and per / cnt or 0 / 0,
          tau_overlap = eval.kendall_tau(g, ov), tau_domain = eval.kendall_tau(g, dm),
          tau_overlap_and_domain = eval.kendall_tau(g, bo), pairs = #a},
    {overlap = overlap, domain_match = domain}
end

--- Merge pool columns of disjoint target sets.
function M.merge(parts)
  local null = cjson.null -- JSON fills a shard's other targets with null
  local out = {scratch = {}, finetune = {}}
  for _, part in ipairs(parts) do
    for t, v in pairs(part.scratch) do if v ~= null then out.scratch[tonumber(t)] = v end end
    for id, row in pairs(part.finetune) do
      out.finetune[id] = out.finetune[id] or {}
      for t, v in pairs(row) do if v ~= null then out.finetune[id][tonumber(t)] = v end end
    end
  end
  return out
end

--- The domain table of a gain matrix: domain_gain[a][b] = the mean gain
-- over ordered pairs (s, t) of tasks of the same class set, s in domain a
-- and t in domain b (s = t included: staying in b); pairs[a][b] their
-- number; domains in order of first appearance. Tasks without a domain are
-- left out, and with `source` those of other sources.
function M.domain_gain(gain, tasks, source)
  local function key(classes)
    local c = table.move(classes, 1, #classes, 1, {})
    table.sort(c)
    return table.concat(c, ",")
  end
  local sum, count, domains = {}, {}, {}
  for _, ts in ipairs(tasks) do
    if ts.domain and not sum[ts.domain] and (not source or ts.source == source) then
      sum[ts.domain], count[ts.domain] = {}, {}
      domains[#domains + 1] = ts.domain
    end
  end
  for s, ts in ipairs(tasks) do
    for t, tt in ipairs(tasks) do
      local a, b = ts.domain, tt.domain
      if a and b and key(ts.classes) == key(tt.classes) and (not source or (ts.source == source and tt.source == source)) then
        sum[a][b], count[a][b] = (sum[a][b] or 0) + gain[s][t], (count[a][b] or 0) + 1
      end
    end
  end
  local mean = {}
  for a, row in pairs(sum) do
    mean[a] = {}
    for b, v in pairs(row) do mean[a][b] = v / count[a][b] end
  end
  return mean, count, domains
end

--- Issue 18's criterion on a domain table dg (M.domain_gain): moving to
-- domain b from any other domain a gains at least `margin` (default 0.02)
-- less than staying in b. Returns {smallest = min over a ~= b of
-- dg[b][b] - dg[a][b], at = "a->b", margin, pass}.
function M.domain_criterion(dg, domains, margin)
  margin = margin or 0.02
  local smallest, at = math.huge, nil
  for _, a in ipairs(domains) do
    for _, b in ipairs(domains) do
      if a ~= b and dg[a] and dg[a][b] and dg[b][b] and dg[b][b] - dg[a][b] < smallest then
        smallest, at = dg[b][b] - dg[a][b], a .. "->" .. b
      end
    end
  end
  return {smallest = smallest < math.huge and smallest or nil, at = at, margin = margin,
          pass = smallest < math.huge and smallest >= margin}
end

-- The sources of a task list, in order of first appearance.
local function sources_of(tasks)
  local out, seen = {}, {}
  for _, t in ipairs(tasks) do
    if t.source and not seen[t.source] then seen[t.source], out[#out + 1] = true, t.source end
  end
  return out
end

--- The whole pool result written beside a set: gains (mean and per half),
-- per-model fine-tuned accuracies (finetune[id] = list over targets),
-- scratch accuracies, overlap and domain-match matrices, reliability and
-- the protocol.
function M.result(ms, tasks, cols, opts)
  local o = options(opts)
  local pool = M.pool_of(ms)
  local gain, halves = M.gains(cols, tasks, pool)
  local rel, mats = M.reliability(halves, gain, tasks)
  local finetune, scratch, ids = {}, {}, {}
  for id, row in pairs(cols.finetune) do
    finetune[id] = {}
    for t = 1, #tasks do finetune[id][t] = row[t] end
  end
  for t = 1, #tasks do scratch[t] = cols.scratch[t] end
  for t = 1, #tasks do
    ids[t] = {}
    for k, e in ipairs(pool[t]) do ids[t][k] = {id = e.id, family = e.family, half = e.half} end
  end
  local per_half = 0
  for _, e in ipairs(pool[1]) do if e.half == 1 then per_half = per_half + 1 end end
  local domain_gain, domain_pairs, domains = M.domain_gain(gain, tasks)
  local criterion = {all = M.domain_criterion(domain_gain, domains)}
  for _, src in ipairs(sources_of(tasks)) do
    local dg, _, ds = M.domain_gain(gain, tasks, src)
    criterion[src] = M.domain_criterion(dg, ds)
  end
  return {tasks = tasks, gain = gain, gain_halves = halves, finetune = finetune, scratch = scratch,
    domain_gain = domain_gain, domain_pairs = domain_pairs, domain_criterion = criterion,
    overlap = mats.overlap, domain_match = mats.domain_match, reliability = rel, pool = ids,
    layout = "gain[s][t]: source task s (row), target task t (column); finetune[id][t]: pool model id fine-tuned on t",
    protocol = {kind = "pool", budget_images = o.images, epochs = o.epochs, batch_size = o.batch, optimizer = "adam",
      lr = o.lr, head_epochs = o.finetune == "head" and o.head_epochs or nil,
      head_lr = o.finetune == "head" and o.head_lr or nil, finetune = o.finetune,
      repeats = o.repeats, scratch_draws = math.max(o.scratch_draws, o.repeats),
      test_images = o.test_images, models_per_half = per_half,
      halves = "two disjoint halves of each task's pool (half its MLPs and half its CNNs each), each with its own budget draws and seeds",
      head = "the source's last linear layer replaced by the scratch model's initial one (target's classes)",
      gain = "fine-tuned test accuracy on T (mean over the half's `repeats` budget draws) minus the from-scratch accuracy"
        .. " of the same reference architecture (mean over the half's `scratch_draws` budget draws of the same size,"
        .. " the first `repeats` of them the fine-tunes' own)",
      features = "each source's frozen features of T's test images computed once and shared by its heads",
      reliability = "Spearman correlation of the two halves' off-diagonal gains; per target: sources ranked within each target, averaged"}}
end

--- A few lines on a pool result: reliability, what explains the gains,
-- and mean gains by relation.
function M.report(r)
  local rel, lines = r.reliability, {}
  lines[1] = ("split-half reliability (Spearman, %d off-diagonal pairs): %.3f; per target: %.3f;"
    .. " of the mean of both halves (Spearman-Brown): %.3f")
    :format(rel.pairs, rel.split_half_spearman, rel.per_target_split_half_spearman,
      rel.spearman_brown or 2 * rel.split_half_spearman / (1 + rel.split_half_spearman))
  lines[2] = ("Kendall tau of the gains with class overlap %.3f, domain match %.3f, both %.3f")
    :format(rel.tau_overlap, rel.tau_domain, rel.tau_overlap_and_domain)
  local buckets = {}
  local function add(name, v) buckets[name] = buckets[name] or {0, 0}; buckets[name][1] = buckets[name][1] + v
    buckets[name][2] = buckets[name][2] + 1 end
  for s = 1, #r.gain do
    for t = 1, #r.gain do
      local v = r.gain[s][t]
      if s == t then add("same task", v)
      else
        local cls = r.overlap[s][t] == #r.tasks[t].classes and #r.tasks[s].classes == #r.tasks[t].classes
          and "same classes" or (r.overlap[s][t] > 0 and "shared classes" or "disjoint classes")
        add(cls .. (r.domain_match[s][t] == 1 and ", same domain" or ", other domain"), v)
      end
    end
  end
  local names = {}
  for k in pairs(buckets) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    lines[#lines + 1] = ("  mean gain %-36s %+.4f (%d pairs)"):format(k, buckets[k][1] / buckets[k][2], buckets[k][2])
  end
  -- same classes, by domain: which domains the gains can tell apart at all
  local sources = sources_of(r.tasks)
  local scopes = {{nil, "both sources"}}
  if #sources > 1 then for _, src in ipairs(sources) do scopes[#scopes + 1] = {src, src} end end
  for _, sc in ipairs(scopes) do
    local dg, dp, doms = M.domain_gain(r.gain, r.tasks, sc[1])
    if #doms > 1 then
      lines[#lines + 1] = ("  domain_gain%s: mean gain, same classes, source domain (row) to target domain (column) [pairs]:")
        :format(#sources > 1 and (" (" .. sc[2] .. ")") or "")
      local head = {("  %-10s"):format("")}
      for _, d in ipairs(doms) do head[#head + 1] = ("%14s"):format(d) end
      lines[#lines + 1] = table.concat(head)
      for _, a in ipairs(doms) do
        local row = {("  %-10s"):format(a)}
        for _, b in ipairs(doms) do
          row[#row + 1] = dg[a][b] and ("%+9.4f [%2d]"):format(dg[a][b], dp[a][b]) or ("%14s"):format("–")
        end
        lines[#lines + 1] = table.concat(row)
      end
      local c = M.domain_criterion(dg, doms)
      if c.smallest then
        lines[#lines + 1] = ("  criterion (staying in b gains >= %.2f more than moving in from any a): smallest margin %.4f (%s): %s")
          :format(c.margin, c.smallest, c.at, c.pass and "met" or "NOT met")
      end
    end
  end
  return table.concat(lines, "\n")
end

return M
