-- Progress display and small helpers.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local util = lps.util

local function sink()
  local s = {buf = {}}
  function s:write(...) for _, x in ipairs{...} do self.buf[#self.buf + 1] = x end end
  function s:flush() end
  function s:text() return table.concat(self.buf) end
  return s
end

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

TestUtil = {}

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

os.exit(lu.LuaUnit.run("-o", "tap"), true)
