-- Shared test helpers: error assertions and finite-difference gradient checks.
local lu = require "luaunit"

local M = {}

--- Assert that f(...) raises an error whose message contains `needle`.
function M.assert_error_contains(needle, f, ...)
  local ok, err = pcall(f, ...)
  lu.assertFalse(ok, "expected an error containing '" .. needle .. "'")
  lu.assertStrContains(tostring(err), needle)
end

--- "small" under sanitizers and in CI smoke runs, "full" otherwise.
M.scale = os.getenv("LUALPS_TEST_SCALE") or "full"

--- A temporary file path removed by M.cleanup().
local tmpfiles = {}
function M.tmpname(suffix)
  local p = os.tmpname() .. (suffix or "")
  tmpfiles[#tmpfiles + 1] = p
  return p
end
function M.cleanup()
  for _, p in ipairs(tmpfiles) do os.remove(p) end
  tmpfiles = {}
end

--- Numerical gradient of a scalar function f() with respect to tensor x,
-- by central differences (x is perturbed in place and restored). f must
-- recompute from x each call and return a Lua number.
function M.numgrad(f, x, eps)
  eps = eps or 1e-3
  local flat = x:reshape(-1)
  local g = require("lualps").zeros(table.unpack(x:shape()))
  local gflat = g:reshape(-1)
  for i = 1, flat:numel() do
    local old = flat[i]
    flat[i] = old + eps
    local fp = f()
    flat[i] = old - eps
    local fm = f()
    flat[i] = old
    gflat[i] = (fp - fm) / (2 * eps)
  end
  return g
end

--- Assert analytic and numeric gradients agree: max |a - n| relative to
-- max(1, |a|max, |n|max) below tol (float32 central differences: 1e-2).
function M.assert_grad_close(analytic, numeric, tol, what)
  tol = tol or 1e-2
  lu.assertEquals(analytic:shape(), numeric:shape(), what)
  local diff = (analytic - numeric):abs():max()
  local scale = math.max(1, analytic:abs():max(), numeric:abs():max())
  if diff / scale > tol then
    lu.fail(string.format("%s: gradient mismatch, max abs diff %.3g (scale %.3g, tol %.3g)",
      what or "gradient", diff, scale, tol))
  end
end

return M
