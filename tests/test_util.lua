-- Progress display and small helpers.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local util = lps.util

local sink = T.sink

TestProgress = {}

function TestProgress:test_plain_lines_every_tenth()
  local out = sink()
  local p = util.progress(100, {label = "build", unit = "models", stream = out, tty = false})
  for i = 1, 100 do p:update(i) end
  p:finish()
  local lines = {}
  for l in out:text():gmatch("[^\n]+") do lines[#lines + 1] = l end
  lu.assertEquals(#lines, 10)
  lu.assertStrContains(lines[1], "build: 10/100 models")
  lu.assertStrContains(lines[10], "100/100 models")
  lu.assertStrContains(lines[10], "ETA 0s")
end

function TestProgress:test_terminal_redraws_in_place()
  local out = sink()
  local p = util.progress(4, {stream = out, tty = true, interval = 0})
  for i = 1, 4 do p:update(i, "loss 0.5") end
  p:finish()
  local text = out:text()
  lu.assertStrContains(text, "\r[")
  lu.assertStrContains(text, "100%")
  lu.assertStrContains(text, "loss 0.5")
  lu.assertEquals(select(2, text:gsub("\n", "")), 1) -- one newline, at the end
end

function TestProgress:test_quiet()
  local out = sink()
  local p = util.progress(3, {stream = out, quiet = true})
  p:update(3); p:finish()
  lu.assertEquals(out:text(), "")
end

-- A clock the test sets by hand, so the lines are known exactly.
local function fake_clock()
  local c = {t = 0}
  return function() return c.t end, c
end

function TestProgress:test_plain_line_text()
  local out = sink()
  local clock, c = fake_clock()
  local p = util.progress(100, {label = "build", unit = "models", stream = out, tty = false, clock = clock})
  c.t = 2
  p:update(9)
  lu.assertEquals(out:text(), "") -- not yet a tenth
  p:update(10, "x")
  lu.assertEquals(out:text(), "build: 10/100 models, 5.0 models/s, elapsed 2s, ETA 18s  x\n")
  -- slow units read as time per unit
  out = sink()
  p = util.progress(3, {unit = "epochs", stream = out, tty = false, clock = clock})
  c.t = c.t + 30
  p:update(1)
  lu.assertEquals(out:text(), "1/3 epochs, 30s per epoch, elapsed 30s, ETA 1m00s\n")
end

function TestProgress:test_terminal_line_text_and_stop()
  local out = sink()
  local clock, c = fake_clock()
  local p = util.progress(2, {label = "lps", stream = out, tty = true, interval = 0, clock = clock})
  c.t = 1
  p:update(0.5, "x") -- a fractional count fills the bar, the count shows whole units
  lu.assertEquals(out:text(),
    "\r[######..................]  25% lps: 0/2 items, 2s per item, elapsed 1s, ETA 3s  x\027[K")
  p:stop() -- stopped early: the line ends where it is
  lu.assertEquals(out:text():sub(-1), "\n")
  lu.assertEquals(p.done, 0.5)
  p:stop() -- once
  lu.assertEquals(select(2, out:text():gsub("\n", "")), 1)
  -- nothing drawn, nothing to end
  out = sink()
  util.progress(2, {stream = out, tty = true}):stop()
  lu.assertEquals(out:text(), "")
end

-- What lps.train passes mid-epoch and at an epoch's end.
local function step(epoch, epochs, s, steps)
  return {epoch = epoch, epochs = epochs, step = s, steps = steps, samples = 10 * s, seconds = s * 0.5,
    loss = 0.5, accuracy = 0.75, lr = 0.1, done = s == steps}
end

function TestProgress:test_epoch_progress_terminal()
  local out = sink()
  local clock, c = fake_clock()
  local cb, handle = util.epoch_progress{stream = out, tty = true, interval = 0, clock = clock}
  c.t = 1
  cb(step(1, 2, 5, 10))
  lu.assertEquals(out:text(), "\r[######..................]  25% train: 0/2 epochs, 2s per epoch, "
    .. "elapsed 1s, ETA 3s  loss 0.5000  acc 0.7500  20 samples/s\027[K")
  c.t = 2
  cb(step(1, 2, 10, 10))
  c.t = 4
  local last = step(2, 2, 10, 10)
  last.val_accuracy = 0.5
  cb(last)
  local text = out:text()
  lu.assertStrContains(text, "\r[########################] 100% train: 2/2 epochs, 2s per epoch, "
    .. "elapsed 4s, ETA 0s  loss 0.5000  acc 0.7500  val acc 0.5000  20 samples/s\027[K\n")
  lu.assertEquals(text:sub(-1), "\n")
  getmetatable(handle).__close(handle) -- already finished: nothing more
  lu.assertEquals(out:text(), text)
end

function TestProgress:test_epoch_progress_plain_and_early_stop()
  -- no terminal: one line per epoch (of up to 10), none within an epoch;
  -- similarity training passes epoch ends only
  local out = sink()
  local cb = util.epoch_progress{label = "lps", stream = out, tty = false}
  cb(step(1, 3, 4, 10))
  lu.assertEquals(out:text(), "")
  cb{epoch = 1, epochs = 3, loss = 0.25}
  cb{epoch = 2, epochs = 3, loss = 0.125, accuracy = 1}
  local lines = {}
  for l in out:text():gmatch("[^\n]+") do lines[#lines + 1] = l end
  lu.assertEquals(#lines, 2)
  lu.assertStrContains(lines[1], "lps: 1/3 epochs")
  lu.assertEquals(lines[1]:match("  loss.*$"), "  loss 0.2500")
  lu.assertEquals(lines[2]:match("  loss.*$"), "  loss 0.1250  acc 1.0000")
  -- on a terminal, the handle ends the line when training stops early
  out = sink()
  do
    local cb2, handle <close> = util.epoch_progress{stream = out, tty = true, interval = 0}
    cb2(step(1, 3, 10, 10))
    lu.assertEquals(select(2, out:text():gsub("\n", "")), 0)
  end
  lu.assertStrContains(out:text(), "1/3 epochs")
  lu.assertEquals(select(2, out:text():gsub("\n", "")), 1)
  lu.assertEquals(out:text():sub(-1), "\n")
end

TestUtil = {}

function TestUtil:test_options()
  local defaults = {a = 1, b = {2}, c = true}
  local o = util.options({a = 5, c = false, x = "given"}, defaults, "op", {"x", "y"})
  lu.assertEquals(o, {a = 5, b = {2}, c = false, x = "given"}) -- false overrides, y stays nil
  lu.assertEquals(util.options(nil, defaults, "op"), defaults)
  lu.assertNotIs(util.options(nil, defaults, "op"), defaults) -- a new table: defaults stay as they are
  lu.assertEquals(defaults, {a = 1, b = {2}, c = true})
  T.assert_error_contains("op: unknown option 'd' (a, b, c, x)", util.options, {d = 1}, defaults, "op", {"x"})
  T.assert_error_contains("op: options must be a table, got number", util.options, 3, defaults, "op")
  -- errors point at the caller of the function that reads the options
  local function f(opts)
    local o = util.options(opts, defaults, "f")
    return o
  end
  local ok, err = pcall(function() f{typo = 1} end)
  lu.assertFalse(ok)
  lu.assertStrMatches(err, "^tests/test_util%.lua:%d+: f: unknown option 'typo' %(a, b, c%)$")
  -- a helper's own option tables are checked alike
  T.assert_error_contains("progress: unknown option 'lable'", util.progress, 3, {lable = "x"})
  T.assert_error_contains("epoch_progress: unknown option 'colour'", util.epoch_progress, {colour = 1})
end

function TestUtil:test_finite()
  for _, x in ipairs{0, -1.5, 1e38, math.maxinteger} do lu.assertTrue(util.finite(x), tostring(x)) end
  for _, x in ipairs{0 / 0, math.huge, -math.huge, "1", {}} do lu.assertFalse(util.finite(x), tostring(x)) end
  lu.assertFalse(util.finite(nil))
end

function TestUtil:test_median_and_time()
  lu.assertEquals(util.median{3, 1, 2}, 2)
  lu.assertEquals(util.median{4, 1, 2, 3}, 2.5)
  lu.assertNil(util.median{})
  lu.assertEquals(util.fmt_time(59.6), "1m00s")
  lu.assertEquals(util.fmt_time(3725), "1h02m")
end

function TestUtil:test_files()
  local p = T.tmpname()
  util.write_file(p, "abc\0def")
  lu.assertEquals(util.read_file(p), "abc\0def")
  lu.assertNil(util.read_file(p .. ".missing"))
  lu.assertTrue(util.peak_rss_mb() > 1)
  T.cleanup()
end

TestMemoize = {}

function TestMemoize:test_once_per_key_false_included()
  local calls = {}
  local f = require("lualps.util").memoize(function(x)
    calls[x] = (calls[x] or 0) + 1
    return x.ok or false
  end)
  local a, b = {ok = 7}, {}
  lu.assertEquals({f(a), f(b), f(a), f(b)}, {7, false, 7, false})
  lu.assertEquals({calls[a], calls[b]}, {1, 1})
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
