-- The transferability prior (lps.similarity.prior): its targets by hand,
-- its ridge and out-of-task predictions against lps.eval's, models it cannot
-- read; the similarity API's transferability and select, and the prior
-- through save and load; an LPS method's fit of it.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local P = lps.similarity.prior

-- An MLP (6-8-3) whose weights are scaled by s: the stats features see s.
local function mlp(g, s)
  local w = lps.similarity.weights(lps.nn.mlp{6, 8, 3, generator = g})
  for _, t in ipairs(w) do t:mul_(s) end
  return w
end

-- 4 tasks of 3 models; a model's target grows with its scale.
local function zoo()
  local g = lps.generator(3)
  local models, y, tasks, scales = {}, {}, {}, {}
  for k = 1, 12 do
    local s = 0.4 + 0.15 * ((k * 7) % 12)
    models[k], y[k], tasks[k], scales[k] = mlp(g, s), 0.2 * s, 1 + (k - 1) // 3, s
  end
  return models, y, tasks, scales
end

TestPrior = {}

function TestPrior:test_targets_by_hand()
  local ft = {a = {0.5, 0.6, 0.7}, b = {0.4, 0.9, 0.3}, c = {0.8, 0.2, 0.1}}
  local y = P.targets({"a", "b", "c"}, {1, 2, 3}, ft, {1, 2, 3})
  -- column means over the other tasks' models: c(1) = (0.4 + 0.8) / 2 = 0.6,
  -- c(2) = (0.6 + 0.2) / 2 = 0.4, c(3) = (0.7 + 0.3) / 2 = 0.5;
  -- a: ((0.6 - 0.4) + (0.7 - 0.5)) / 2 = 0.2; b: ((0.4 - 0.6) + (0.3 - 0.5)) / 2 = -0.2;
  -- c: ((0.8 - 0.6) + (0.2 - 0.4)) / 2 = 0
  lu.assertAlmostEquals(y[1], 0.2, 1e-12)
  lu.assertAlmostEquals(y[2], -0.2, 1e-12)
  lu.assertAlmostEquals(y[3], 0, 1e-12)
  -- targets beyond the models' tasks: only the given ones count
  y = P.targets({"a", "b"}, {1, 2}, ft, {3})
  lu.assertAlmostEquals(y[1], 0.7 - 0.5, 1e-12)
  lu.assertAlmostEquals(y[2], 0.3 - 0.5, 1e-12)
  T.assert_error_contains("no fine-tuned accuracy of model a on task 4", P.targets, {"a", "b"}, {1, 2}, ft, {4})
  T.assert_error_contains("2 ids and 1 tasks", P.targets, {"a", "b"}, {1}, ft, {1})
  -- a NaN or infinite accuracy is no result: named, not a NaN target
  local bad = {a = {0.5, 0.6, 0.7}, b = {0 / 0, 0.9, 0.3}, c = {0.8, 0.2, 0.1}}
  T.assert_error_contains("accuracy of model b on task 1 is", P.targets, {"a", "b", "c"}, {1, 2, 3}, bad, {1, 2, 3})
  bad.b[1], bad.c[1] = 0.4, math.huge
  T.assert_error_contains("accuracy of model c on task 1 is inf", P.targets, {"a", "b", "c"}, {1, 2, 3}, bad, {1, 2, 3})
  T.assert_error_contains("no fine-tuned accuracy of model b on task 1", P.targets, {"a", "b"}, {1, 2}, {a = {1, 1}, b = 3}, {1, 2})
end

function TestPrior:test_fit_is_the_ridge_and_out_of_task_is_the_fit_without_the_task()
  local models, y, tasks, scales = zoo()
  local state, oof = P.fit(models, y, tasks)
  local X = lps.eval.feature_matrix("stats", models)
  lps.eval.standardize(X)
  -- the fit's own models, predicted by the full fit: lps.eval.ridge_predict's
  -- (summed in double precision, and the float32 mean of y, what a saved file keeps)
  local full, want = P.predict(state, models), lps.eval.ridge_predict(X, y, X, P.rho)
  for k = 1, 12 do lu.assertAlmostEquals(full[k], want[k], 1e-6) end
  -- out of task: the fit on the other tasks' models
  for t = 1, 4 do
    local keep, yk, mine = {}, {}, {}
    for k = 1, 12 do
      if tasks[k] ~= t then keep[#keep + 1], yk[#yk + 1] = k, y[k] else mine[#mine + 1] = k end
    end
    local p = lps.eval.ridge_predict(X:index_rows(keep), yk, X:index_rows(mine), P.rho)
    for n, k in ipairs(mine) do lu.assertAlmostEquals(oof[k], p[n], 1e-6) end
  end
  -- it learns: on fresh models the prior follows the scale
  local g, fresh, s = lps.generator(11), {}, {}
  for k = 1, 10 do s[k] = 0.5 + 0.1 * k; fresh[k] = mlp(g, s[k]) end
  lu.assertTrue(lps.eval.kendall_tau(P.predict(state, fresh), s) > 0.7)
  -- errors
  T.assert_error_contains("models of 1 task(s) (need 2)", P.fit, {models[1], models[2]}, {1, 2}, {1, 1})
  T.assert_error_contains("2 models, 1 targets and 2 task labels", P.fit, {models[1], models[2]}, {1}, {1, 2})
  local bad = mlp(g, 1)
  bad[1]:set(1, 1, 0 / 0)
  T.assert_error_contains("non-finite", P.fit, {models[1], models[4], bad}, {1, 2, 3}, {1, 2, 3})
end

function TestPrior:test_unreadable_models_predict_nan_and_leave_the_others_alone()
  local models, y, tasks = zoo()
  local state = P.fit(models, y, tasks)
  local g = lps.generator(5)
  local a, b, bad = mlp(g, 1), mlp(g, 2), mlp(g, 1)
  bad[3]:set(1, 1, 1 / 0)
  local both = P.predict(state, {a, b})
  local with_bad = P.predict(state, {a, bad, b})
  lu.assertEquals(with_bad[1], both[1])
  lu.assertNaN(with_bad[2])
  lu.assertEquals(with_bad[3], both[2])
  lu.assertNaN(P.predict(state, {bad})[1])
  lu.assertEquals(#P.predict(state, {}), 0)
end

-- A small set file of MLPs (10-6-5-2) of 3 tasks, 5 models each, scaled per model.
local function set_file(path)
  local ms <close> = lps.modelset.create(path, {overwrite = true})
  local g = lps.generator(5)
  for t = 1, 3 do
    for k = 1, 5 do
      local s = 0.5 + 0.2 * ((t * 5 + k * 3) % 7)
      local named = {
        {name = "0.weight", tensor = lps.randn(6, 10, g):mul_(s)}, {name = "0.bias", tensor = lps.randn(6, g):mul_(0.1)},
        {name = "2.weight", tensor = lps.randn(5, 6, g):mul_(s)}, {name = "2.bias", tensor = lps.randn(5, g)},
        {name = "4.weight", tensor = lps.randn(2, 5, g):mul_(s)}, {name = "4.bias", tensor = lps.randn(2, g)},
      }
      ms:append_tensors(named, {id = ("t%d-m%d"):format(t, k), task = t, scale = s})
    end
  end
end

function TestPrior:test_select_ranks_by_similarity_plus_prior_and_survives_save_and_load()
  local path = T.tmpname(".lpsm")
  set_file(path)
  local ms <close> = lps.modelset.open(path)
  local models, y, tasks = {}, {}, {}
  for i = 1, #ms do
    models[i], tasks[i] = lps.similarity.record(ms, i), ms:meta(i).task
    y[i] = ms:meta(i).scale
  end
  local state = P.fit(models, y, tasks)
  local net = lps.similarity.network{input_dim = 10, width = 8, embed = 8, classes = 3, seed = 2}
  local sim = lps.similarity.wrap(net, {1, 2, 3}, nil, state)
  -- select: z(cosine) + z(prior) over the set but the query, best first
  local r = sim:select(ms, 4, 14)
  lu.assertEquals(#r, 14)
  local sc, ps, at = {}, {}, {}
  local pr = P.predict(state, models)
  for i = 1, #ms do
    if i ~= 4 then
      sc[#sc + 1], ps[#sc + 1], at[#sc + 1] = sim:similarity(ms:tensors(4), ms:tensors(i)), pr[i], i
    end
  end
  local z = P.combine(sc, ps)
  local order = {}
  for j = 1, #at do order[j] = j end
  table.sort(order, function(a, b) return z[a] > z[b] end)
  for rank, j in ipairs(order) do
    lu.assertEquals(r[rank].index, at[j])
    lu.assertAlmostEquals(r[rank].score, z[j], 1e-5)
    lu.assertAlmostEquals(r[rank].similarity, sc[j], 1e-5)
    lu.assertEquals(r[rank].prior, pr[at[j]])
  end
  lu.assertStrContains(tostring(sim:select(ms, 4, 2)), "prior")
  local shown = sim:select(ms, 4, 2)
  shown[2].prior = 0 / 0 -- a model without weight statistics: printed "nan", never C's "-nan"
  lu.assertStrContains(tostring(shown), "        nan")
  lu.assertNotStrContains(tostring(shown), "-nan")
  -- transferability: one model, or a list
  lu.assertEquals(sim:transferability(ms:tensors(2)), pr[2])
  lu.assertEquals(sim:transferability({models[1], models[2]}), {pr[1], pr[2]})
  -- a saved copy predicts and selects the same bits
  local p = T.tmpname(".lps")
  sim:save(p)
  local s2 = lps.similarity.load(p)
  for i = 1, #ms do lu.assertEquals(s2:transferability(models[i]), pr[i]) end
  local r2 = s2:select(ms, 4, 14)
  for k = 1, 14 do lu.assertEquals(r2[k].index, r[k].index); lu.assertEquals(r2[k].score, r[k].score) end
  -- without a prior
  local bare = lps.similarity.wrap(net, {1, 2, 3})
  T.assert_error_contains("no transferability prior", bare.select, bare, ms, 1, 3)
  T.assert_error_contains("no transferability prior", bare.transferability, bare, models[1])
  T.assert_error_contains("select: k must be a positive integer, got 0", sim.select, sim, ms, 1, 0)
  T.assert_error_contains("select: k must be a positive integer, got 2.5", sim.select, sim, ms, 1, 2.5)
  T.assert_error_contains("select: k must be a positive integer, got 3", sim.select, sim, ms, 1, "3")
  local r3 = sim:select(ms, 4, 3.0) -- 3.0 is 3, as record 4.0 is record 4
  lu.assertEquals(#r3, 3)
  for j = 1, 3 do lu.assertEquals(r3[j].index, r[j].index) end
  -- transferability names itself and the model; no models, no values
  T.assert_error_contains("transferability: expected a model", sim.transferability, sim, 7)
  T.assert_error_contains("transferability: model 2: expected a model", sim.transferability, sim, {models[1], 7})
  lu.assertEquals(sim:transferability({}), {})
  -- another prior on the same object and set: select reads the new one, not the set's cached values
  local flipped = {}
  for key, v in pairs(sim.prior) do flipped[key] = v end
  flipped.w = sim.prior.w * -1
  local keep = sim.prior
  sim.prior = flipped
  local rflip = sim:select(ms, 4, 14)
  local want = P.predict(flipped, {models[rflip[1].index]})[1]
  lu.assertEquals(rflip[1].prior, want)
  lu.assertNotEquals(rflip[1].prior, pr[rflip[1].index])
  sim.prior = keep
  T.assert_error_contains("out of range 1..15", sim.select, sim, ms, 16, 3)
  -- record 4.0 is record 4; an embedding with a NaN was a list of -inf scores in record order
  local rf = sim:select(ms, 4.0, 14)
  for j = 1, 14 do lu.assertEquals(rf[j].index, r[j].index) end
  local e = sim:embed(models[4])
  e[2] = 0 / 0
  T.assert_error_contains("select: the query embedding is not finite", sim.select, sim, ms, e, 3)
  T.assert_error_contains("select: expected an open model set, got nil", sim.select, sim, nil, 4, 3)
  T.assert_error_contains("similarity.wrap: prior: mean, sd, center and w must have", function()
    lps.similarity.wrap(net, {1}, nil, {mean = state.mean, sd = state.sd, center = state.center, w = lps.zeros(3, 1), ymean = 0})
  end)
  T.cleanup()
end

function TestPrior:test_an_lps_fit_makes_the_prior_of_its_training_models()
  local g = lps.generator(9)
  local models, y, ids, ft = {}, {}, {}, {}
  for k = 1, 12 do
    local s = 0.4 + 0.15 * ((k * 5) % 12)
    models[k], y[k], ids[k] = mlp(g, s), 1 + (k - 1) // 3, "m" .. k
    -- models 1..9 have fine-tuning results (the pool), 10..12 not
    if k <= 9 then ft[ids[k]] = {0.5 + 0.1 * s, 0.52 + 0.1 * s, 0.48 + 0.1 * s, 0.5 + 0.1 * s} end
  end
  local method = lps.benchmark.methods.lps{input_dim = 6, width = 8, embed = 8, epochs = 1}
  local f = method:fit(models, y, {seed = 1, ids = ids, transfer = {finetune = ft}})
  lu.assertNotNil(f.prior)
  -- the same fit by hand: the pool models, targets over all four training tasks
  local rows, tasks, rids = {}, {}, {}
  for k = 1, 9 do rows[k], tasks[k], rids[k] = models[k], y[k], ids[k] end
  local state, oof = P.fit(rows, P.targets(rids, tasks, ft, {1, 2, 3, 4}), tasks)
  for k = 1, 9 do lu.assertEquals(f.out_of_task[ids[k]], oof[k]) end -- by id: the fit on the other tasks
  for k = 10, 12 do lu.assertNil(f.out_of_task[ids[k]]) end
  lu.assertEquals(f:transferability(models), P.predict(state, models)) -- the fit itself, for any model
  -- no prior without the matrix, or with prior = false
  lu.assertNil(method:fit(models, y, {seed = 1, ids = ids}).prior)
  local off = lps.benchmark.methods.lps{input_dim = 6, width = 8, embed = 8, epochs = 1, prior = false}
  lu.assertNil(off:fit(models, y, {seed = 1, ids = ids, transfer = {finetune = ft}}).transferability)
end

function TestPrior:test_fit_zoo_keeps_the_usable_rows()
  local models, y, tasks = zoo()
  -- fine-tuning results on tasks 1..4 growing with the target: y as the
  -- targets' centred mean; the own task's result is never needed
  local ids, ft = {}, {}
  for k = 1, 12 do
    ids[k] = "m" .. k
    ft[ids[k]] = {}
    for t = 1, 4 do if t ~= tasks[k] then ft[ids[k]][t] = 0.5 + y[k] + 0.01 * t end end
  end
  local state, oof, n = P.fit_zoo(models, ids, tasks, ft)
  lu.assertEquals(n, 12)
  local want, woof = P.fit(models, P.targets(ids, tasks, ft, {1, 2, 3, 4}), tasks)
  lu.assertEquals(P.predict(state, models), P.predict(want, models))
  for k = 1, 12 do lu.assertEquals(oof[ids[k]], woof[k]) end
  -- a model without a result on some other task, or with a NaN weight, is no row
  ft.m2[4] = nil
  local bad = {}
  for j, x in ipairs(models[5]) do bad[j] = x:clone() end
  bad[1]:set(1, 1, 0 / 0)
  local ms = {table.unpack(models)}
  ms[5] = bad
  local s2, o2, n2 = P.fit_zoo(ms, ids, tasks, ft)
  lu.assertEquals(n2, 10)
  lu.assertNil(o2.m2)
  lu.assertNil(o2.m5)
  lu.assertEquals(s2.n, 10)
  -- a NaN or infinite result is no result either: its row is left out
  ft.m7[1], ft.m8[4] = 0 / 0, -math.huge
  local s3, o3, n3 = P.fit_zoo(ms, ids, tasks, ft)
  lu.assertEquals(n3, 8)
  lu.assertNil(o3.m7)
  lu.assertNil(o3.m8)
  lu.assertEquals(s3.n, 8)
  ft.m7[1], ft.m8[4] = 0.5 + y[7] + 0.01, 0.5 + y[8] + 0.04
  -- rows of one task: no prior; no results at all: none
  lu.assertNil(P.fit_zoo({models[1], models[2]}, {"m1", "m2"}, {1, 1}, ft))
  lu.assertNil(P.fit_zoo(models, ids, tasks, {}))
  T.assert_error_contains("prior.fit_zoo: 12 models, 2 ids and 12 tasks", P.fit_zoo, models, {"a", "b"}, tasks, ft)
  -- lps.selection.shipped_prior: the fit of every pool model of a set
  local S = {n = 12, meta = {}, models = models, transfer = {finetune = ft}}
  for k = 1, 12 do S.meta[k] = {id = ids[k], task = tasks[k], in_pool = k ~= 12} end
  local shipped = lps.selection.shipped_prior(S)
  local direct = P.fit_zoo({table.unpack(models, 1, 11)}, {table.unpack(ids, 1, 11)}, {table.unpack(tasks, 1, 11)}, ft)
  lu.assertEquals(shipped.n, direct.n)
  lu.assertEquals(P.predict(shipped, models), P.predict(direct, models))
  for k = 1, 12 do S.meta[k].in_pool = false end
  lu.assertNil(lps.selection.shipped_prior(S))
  S.transfer = {}
  lu.assertNil(lps.selection.shipped_prior(S))
end

-- A model file whose prior is damaged: load raises, naming the file.
function TestPrior:test_a_damaged_prior_fails_to_load()
  local models, y, tasks = zoo()
  local state = P.fit(models, y, tasks)
  local net = lps.similarity.network{input_dim = 6, width = 8, embed = 8, classes = 4, seed = 2}
  local function saved(edit_named, edit_meta)
    local named = net:named_parameters()
    local meta = {kind = "lualps.similarity", version = 1, spec = net:spec(), classes = {1, 2, 3, 4}, label = "task",
                  prior = P.to_saved(state, named)}
    if edit_named then edit_named(named) end
    if edit_meta then edit_meta(meta) end
    local path = T.tmpname(".lps")
    local out <close> = lps.modelset.create(path, {overwrite = true})
    out:append_tensors(named, meta)
    return path
  end
  local ok = lps.similarity.load(saved())
  lu.assertEquals(ok:transferability(models[1]), P.predict(state, {models[1]})[1])
  T.assert_error_contains("without its parameters (ymean, rho)", lps.similarity.load,
    saved(function(n) n["prior.params"] = nil end))
  T.assert_error_contains("has a prior on features 'raw'", lps.similarity.load,
    saved(nil, function(m) m.prior.features = "raw" end))
  T.assert_error_contains("'s prior: w must", lps.similarity.load, saved(function(n) n["prior.w"] = nil end))
  T.assert_error_contains("must have 42 features (the stats features), got 3", lps.similarity.load,
    saved(function(n) for _, k in ipairs{"prior.mean", "prior.sd", "prior.center"} do n[k] = lps.ones(3) end
      n["prior.w"] = lps.ones(3, 1) end))
  T.assert_error_contains("ymean must be a finite number", lps.similarity.load,
    saved(function(n) n["prior.params"] = lps.tensor({0 / 0, 1e-3}) end))
  T.assert_error_contains("sd must be positive", lps.similarity.load,
    saved(function(n) n["prior.sd"] = lps.zeros(42) end))
  T.assert_error_contains("mean has a non-finite value", lps.similarity.load,
    saved(function(n) local m = state.mean:clone(); m[2] = 0 / 0; n["prior.mean"] = m end))
  T.assert_error_contains("center has a non-finite value", lps.similarity.load,
    saved(function(n) local c = state.center:clone(); c[3] = 1 / 0; n["prior.center"] = c end))
  T.assert_error_contains("sd must be positive and finite", lps.similarity.load,
    saved(function(n) local d = state.sd:clone(); d[1] = 1 / 0; n["prior.sd"] = d end))
  T.assert_error_contains("w has a non-finite value", lps.similarity.load,
    saved(function(n) local w = state.w:clone(); w:set(1, 1, 0 / 0); n["prior.w"] = w end))
  T.assert_error_contains("malformed prior entry", lps.similarity.load, saved(nil, function(m) m.prior = 3 end))
  T.assert_error_contains("has prior tensors but no prior metadata", lps.similarity.load,
    saved(nil, function(m) m.prior = nil end))
  T.assert_error_contains("whose model count is table", lps.similarity.load, saved(nil, function(m) m.prior.n = {} end))
  -- the check names the tensor of the wrong size, and reads rho
  T.assert_error_contains("must have 42 features (the stats features), got 41 in sd", lps.similarity.load,
    saved(function(n) n["prior.sd"] = lps.ones(41) end))
  T.assert_error_contains("got 30 in w", lps.similarity.load, saved(function(n) n["prior.w"] = n["prior.w"]:rows(1, 30):clone() end))
  T.assert_error_contains("rho must be a positive number", lps.similarity.load,
    saved(function(n) n["prior.params"] = lps.tensor({state.ymean, 0 / 0}) end))
  -- a prior a saved file could not carry is refused when wrapped or saved, not
  -- written to a file that does not load
  local norho = {mean = state.mean, sd = state.sd, center = state.center, w = state.w, ymean = state.ymean}
  T.assert_error_contains("similarity.wrap: prior: rho must be a positive number", lps.similarity.wrap, net, {1}, nil, norho)
  local copy = {}
  for k, v in pairs(state) do copy[k] = v end
  local sim = lps.similarity.wrap(net, {1, 2, 3, 4}, nil, copy)
  copy.w = state.w:clone()
  copy.w:set(1, 1, 0 / 0)
  local p = T.tmpname(".lps")
  os.remove(p)
  T.assert_error_contains("save: prior: w has a non-finite value", sim.save, sim, p)
  lu.assertNil(io.open(p))
  -- targets beyond float32: an error, not a prior of NaN
  local huge = {}
  for k = 1, #y do huge[k] = 1e39 * y[k] end
  T.assert_error_contains("prior.fit: the ridge fit is not finite", P.fit, models, huge, tasks)
  -- the public functions' arguments
  T.assert_error_contains("prior.predict: models must be a list", P.predict, state, nil)
  T.assert_error_contains("prior.predict: not a prior", P.predict, {}, models)
  T.assert_error_contains("prior.fit: tasks must be a list", P.fit, models, y, nil)
  -- a NaN task label (no table key), named
  T.assert_error_contains("prior.fit: task label 2 is ", P.fit, {models[1], models[4], models[7]}, {1, 2, 3}, {1, 0 / 0, 3})
  T.assert_error_contains("prior.fit_zoo: task label 1 is ", P.fit_zoo, {models[1], models[4]}, {"a", "b"}, {0 / 0, 2},
    {a = {1, 1}, b = {1, 1}}, {1, 2})
  T.assert_error_contains("prior.fit: target 2 is ", P.fit, {models[1], models[4]}, {1, 0 / 0}, {1, 2})
  T.assert_error_contains("need a finite number", P.fit, {models[1], models[4]}, {1, 1 / 0}, {1, 2})
  T.assert_error_contains("prior.targets: targets must be a list", P.targets, {"a"}, {1}, {a = {1}}, nil)
  T.assert_error_contains("prior.combine: 2 scores and 1 prior values", P.combine, {1, 2}, {1})
  T.assert_error_contains("prior.combine: score 1 is a string", P.combine, {"a", 2}, {1, 2})
  T.assert_error_contains("prior.combine: prior value 2 is a boolean", P.combine, {1, 2}, {1, true})
  -- predict checks the whole prior: without mean and sd it standardized by the models' own
  local partial = {center = state.center, w = state.w, ymean = state.ymean, rho = state.rho}
  T.assert_error_contains("prior.predict: mean must be a 1-D tensor", P.predict, partial, models)
  partial.mean, partial.sd, partial.w = state.mean, state.sd, lps.zeros(3, 1)
  T.assert_error_contains("prior.predict: mean, sd, center and w must have 42 features", P.predict, partial, models)
  T.cleanup()
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
