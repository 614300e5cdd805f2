-- Template matching (lps.benchmark.methods.template_matching): the
-- assignment against known answers and lps.eval.assign, and the invariances
-- of a function-based score (output classes, hidden units) on MLPs and a CNN.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local TM = lps.benchmark.methods

local permute_classes, perms = T.permute_classes, T.all_perms

TestTemplateMatching = {}

function TestTemplateMatching:test_assignment_beats_greedy()
  -- greedy takes 0.9 and then 0 (0.45); the assignment 0.8 + 0.8
  lu.assertAlmostEquals(TM.assignment_score({{0.9, 0.8}, {0.8, 0}}), 0.8, 1e-12)
  lu.assertAlmostEquals(TM.assignment_score({{0.5, 0.9, 0.1}, {0.4, 0.85, 0}, {0, 0.8, 0.7}}), (0.5 + 0.85 + 0.7) / 3, 1e-12)
end

function TestTemplateMatching:test_unequal_class_counts_divide_by_the_larger()
  lu.assertAlmostEquals(TM.assignment_score({{1, 0, 0}, {0, 1, 0}}), 2 / 3, 1e-12)
  lu.assertAlmostEquals(TM.assignment_score({{0.2, 1}, {1, 0.3}, {0, 0}}), 2 / 3, 1e-12) -- more rows than columns
  lu.assertAlmostEquals(TM.assignment_score(lps.tensor({{0.6, -0.2, 0.4}})), 0.2, 1e-7)
end

function TestTemplateMatching:test_assignment_agrees_with_brute_force_and_eval_assign()
  local g = lps.generator(5)
  for _, kk in ipairs{{1, 1}, {2, 5}, {5, 2}, {4, 4}, {6, 6}, {3, 7}} do
    local ka, kb = kk[1], kk[2]
    local C = lps.randn(ka, kb, g):totable()
    local small, large = math.min(ka, kb), math.max(ka, kb)
    local best = -math.huge
    for _, p in ipairs(perms(large)) do -- the shorter side's entries 1..small go to p[1..small]
      local s = 0
      for r = 1, small do s = s + (ka <= kb and C[r][p[r]] or C[p[r]][r]) end
      best = math.max(best, s)
    end
    lu.assertAlmostEquals(TM.assignment_score(C), best / large, 1e-12)
    local _, total = lps.eval.assign(lps.tensor(C), true)
    lu.assertAlmostEquals(TM.assignment_score(C), total / large, 1e-6)
  end
  -- beyond the dynamic programme's 10 columns: the linear assignment
  local C = lps.randn(12, 11, g)
  local _, total = lps.eval.assign(C:t():clone(), true)
  lu.assertAlmostEquals(TM.assignment_score(C), total / 12, 1e-6)
end

function TestTemplateMatching:test_bad_input_is_refused()
  T.assert_error_contains("unknown option 'pol'", TM.template_matching, {pol = 2})
  T.assert_error_contains("needs a non-empty", TM.assignment_score, {})
  T.assert_error_contains("row 2 has 1 entries", TM.assignment_score, {{1, 2}, {3}})
  local s = TM.assignment_score({{1, 0 / 0}})
  lu.assertTrue(s ~= s)
end

function TestTemplateMatching:test_permuted_classes_score_one()
  local g = lps.generator(11)
  local tm = TM.template_matching()
  local a = T.random_mlp(g, {784, 24, 5})
  local wide = T.random_mlp(g, {784, 16, 12}) -- 12 classes: the linear assignment
  local cnn = T.small_cnn_record(g)
  local models = {a, wide, cnn}
  local copies = {permute_classes(a, {3, 5, 1, 2, 4}), permute_classes(wide, lps.data.randperm(12, g)),
                  permute_classes(cnn, {2, 4, 3, 1})}
  local S = tm:similarity(models, copies)
  lu.assertEquals(S:shape(), {3, 3})
  for i = 1, 3 do lu.assertAlmostEquals(S:get(i, i), 1, 1e-6) end
  -- different functions score less (so the ones above measure something)
  lu.assertTrue(S:get(1, 3) < 0.9)
  lu.assertTrue(S:get(3, 1) < 0.9)
  lu.assertAlmostEquals(S:get(1, 3), S:get(3, 1), 1e-6) -- symmetric
end

function TestTemplateMatching:test_hidden_unit_permutation_changes_nothing()
  local g = lps.generator(3)
  local tm = TM.template_matching{noise = 4}
  local a = T.random_mlp(g, {784, 20, 12, 3})
  local p1, p2 = lps.data.randperm(20, g), lps.data.randperm(12, g)
  local b = {a[1]:index_rows(p1), a[2]:index_rows(p1), a[3]:index_rows(p2):t():index_rows(p1):t():clone(),
             a[4]:index_rows(p2), a[5]:t():index_rows(p2):t():clone(), a[6]:clone()}
  local other = T.random_mlp(g, {784, 20, 12, 3})
  local S = tm:similarity({a}, {b, other})
  lu.assertAlmostEquals(S:get(1, 1), 1, 1e-6)
  lu.assertTrue(S:get(1, 2) < 0.9)
end

function TestTemplateMatching:test_a_class_more_divides_by_three()
  -- b adds a third class (the mean of a's two): a's two templates are b's
  -- first two (b's third is ~0), so the score is (1 + 1) / 3
  local g = lps.generator(8)
  local a = T.random_mlp(g, {784, 16, 2})
  local W, bias = lps.zeros(3, 16), lps.zeros(3)
  W:rows(1, 2):copy(a[3])
  W[3]:copy((a[3][1] + a[3][2]) * 0.5)
  bias:rows(1, 2):copy(a[4])
  bias[3] = (a[4][1] + a[4][2]) / 2
  local b = {a[1], a[2], W, bias}
  lu.assertAlmostEquals(TM.template_matching():similarity({a}, {b}):get(1, 1), 2 / 3, 1e-6)
end

local code = lu.LuaUnit.run("-o", "tap")
T.cleanup()
os.exit(code, true)
