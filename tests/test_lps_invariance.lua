-- Invariances of the LPS embedding: permuting the hidden units of any layer
-- and rescaling ReLU units (a > 0 in, 1/a out) give models that compute the
-- same function, and must give the same embedding; models of any width work.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local sim = lps.similarity

local g = lps.generator(2024)
local small = T.scale == "small"

local function mlp(sizes)
  local m = {}
  for l = 2, #sizes do
    m[#m + 1] = lps.randn(sizes[l], sizes[l - 1], g):mul_(1 / math.sqrt(sizes[l - 1]))
    m[#m + 1] = lps.randn(sizes[l], g):mul_(0.1)
  end
  return m
end

local run, clone_model = T.mlp_forward, T.clone_list

local function randperm(n) return lps.data.randperm(n, g) end

-- Permute the units of hidden layer l: rows of W_l and b_l, columns of W_{l+1}.
local function permute(m, l, perm)
  local r = clone_model(m)
  r[2 * l - 1] = m[2 * l - 1]:index_rows(perm)
  r[2 * l] = m[2 * l]:index_rows(perm)
  r[2 * l + 1] = m[2 * l + 1]:t():index_rows(perm):t()
  return r
end

-- Scale every unit j of hidden layer l by a[j] > 0 in and 1/a[j] out.
local function rescale(m, l, a)
  local r = clone_model(m)
  local W, b, Wn = r[2 * l - 1], r[2 * l], r[2 * l + 1]
  for j = 1, #a do
    W[j]:mul_(a[j])
    b[j] = b[j] * a[j]
  end
  local inv = {}
  for j = 1, #a do inv[j] = 1 / a[j] end
  Wn:copy(Wn * lps.tensor(inv)) -- columns times 1/a (row broadcast)
  return r
end

local function rel_change(a, b)
  return (a - b):norm() / b:norm()
end

local sizes = small and {{40, 12, 9, 2}, {40, 7, 11, 2}} or {{784, 64, 64, 2}, {784, 40, 23, 2}}

local function check_invariance(opts)
  local net = sim.network(opts) -- options not given: the defaults
  local X = lps.randn(16, opts.input_dim, g)
  for _, sz in ipairs(sizes) do
    local m = mlp(sz)
    local ref = net:embed({m})
    local variants = {
      permute(m, 1, randperm(sz[2])),
      permute(m, 2, randperm(sz[3])),
      permute(permute(m, 1, randperm(sz[2])), 2, randperm(sz[3])),
    }
    if opts.chain_norm ~= false then
      local a1, a2 = {}, {}
      for j = 1, sz[2] do a1[j] = math.exp(2 * g:normal()) end
      for j = 1, sz[3] do a2[j] = math.exp(2 * g:normal()) end
      variants[#variants + 1] = rescale(m, 1, a1)
      variants[#variants + 1] = rescale(rescale(permute(m, 2, randperm(sz[3])), 2, a2), 1, a1)
    end
    local E = net:embed(variants)
    for i, v in ipairs(variants) do
      -- the variant is the same function ...
      lu.assertTrue(lps.allclose(run(v, X), run(m, X), 1e-4, 1e-5), "variant " .. i .. " function")
      -- ... and has the same embedding
      local rc = rel_change(E[i], ref[1])
      lu.assertTrue(rc < 1e-5, ("%s variant %d of %s: relative change %.3g"):format(opts.pool,
        i, table.concat(sz, "-"), rc))
    end
    -- while another model's embedding differs
    lu.assertTrue(rel_change(net:embed({mlp(sz)})[1], ref[1]) > 1e-3)
  end
end

TestInvariance = {}

function TestInvariance:test_defaults()
  check_invariance{input_dim = sizes[1][1], width = 16, embed = 8}
end

function TestInvariance:test_power_pooling()
  check_invariance{input_dim = sizes[1][1], width = 16, embed = 8, pool = "power", layers = 2}
end

function TestInvariance:test_sqrtm_pooling()
  check_invariance{input_dim = sizes[1][1], width = 16, embed = 8, pool = "sqrtm", activation = "tanh",
                   layers = 2}
end

function TestInvariance:test_layer_norm_and_uniform_weights()
  check_invariance{input_dim = sizes[1][1], width = 16, embed = 8, layer_norm = true,
                   pool_weights = "uniform", layers = 2}
end

function TestInvariance:test_mean_pooling_first_layer_only()
  check_invariance{input_dim = sizes[1][1], width = 16, embed = 8, pool = "mean", layers = 1,
                   activation = "linear"}
end

function TestInvariance:test_without_chain_norm_only_permutations()
  check_invariance{input_dim = sizes[1][1], width = 16, embed = 8, chain_norm = false, layers = 2}
  -- rescaling now changes the embedding: chain normalization is what removes it
  local net = sim.network{input_dim = sizes[1][1], width = 16, embed = 8, chain_norm = false, layers = 2}
  local m = mlp(sizes[1])
  local a = {}
  for j = 1, sizes[1][2] do a[j] = math.exp(g:normal()) end
  local E = net:embed({m, rescale(m, 1, a)})
  lu.assertTrue(rel_change(E[2], E[1]) > 1e-3)
end

function TestInvariance:test_rescaling_needs_chain_norm_for_the_features_only()
  -- with chain normalization the prepared features themselves are identical
  local net = sim.network{input_dim = sizes[1][1], width = 8, embed = 4, layers = 2}
  local m = mlp(sizes[1])
  local a = {}
  for j = 1, sizes[1][2] do a[j] = 2 ^ g:random(-3, 3) end -- powers of two: exact
  local p, q = net:prepare(m), net:prepare(rescale(m, 1, a))
  lu.assertEquals(q.U1:totable(), p.U1:totable())
  lu.assertEquals(q.imp[1]:totable(), p.imp[1]:totable())
  lu.assertEquals(q.W[2]:totable(), p.W[2]:totable())
end

function TestInvariance:test_deeper_models()
  -- layers = 2 on a 4-layer model: layer 3 is chain-normalized too (its
  -- rescaling must not move layer 2's importances), layer 4 does not enter
  local net = sim.network{input_dim = 20, width = 8, embed = 4, layers = 2}
  local m = mlp({20, 9, 7, 5, 2})
  local ref = net:embed({m})[1]
  local a = {}
  for j = 1, 5 do a[j] = math.exp(g:normal()) end
  local other = clone_model(m)
  other[7] = lps.randn(2, 5, g)
  local E = net:embed({rescale(m, 3, a), other})
  lu.assertTrue(rel_change(E[1], ref) < 1e-5)
  lu.assertTrue(lps.allclose(net:embed({other})[1], ref, 0, 0)) -- bit-identical alone
  lu.assertTrue(rel_change(E[2], ref) < 1e-6) -- in a batch: BLAS blocking may move the last bits
  -- layers = 3 uses layer 4 as layer 3's importance
  local net3 = sim.network{input_dim = 20, width = 8, embed = 4, layers = 3}
  local E3 = net3:embed({m, other})
  lu.assertTrue(rel_change(E3[1], E3[2]) > 1e-4)
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
