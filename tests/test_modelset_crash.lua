-- Fault injection: a child process appends records in a loop and is killed
-- with SIGKILL at random moments (in a record, in an index write, while
-- opening). Every record whose append returned must read back bit-exact,
-- and repair must keep every intact record.
local lu = require "luaunit"
local lps = require "lualps"
local T = require "tests.helpers"
local MS = lps.modelset

-- The child appends record k (k = its number) with tensors drawn from seed k,
-- prints k once append has returned, and writes the index every 3 records.
local CHILD = [[
local lps = require "lualps"
local path = arg[1]
local ms = lps.modelset.open(path, "a")
for _ = 1, 100000 do
  local k = #ms + 1
  local g = lps.generator(k)
  ms:append_tensors({{name = "0.weight", tensor = lps.randn(64, 100, g)},
                     {name = "0.bias", tensor = lps.randn(64, g)}}, {id = k})
  io.stdout:write(k, "\n")
  io.stdout:flush()
  if k % 3 == 0 then ms:flush() end
end
]]

local function expected(k)
  local g = lps.generator(k)
  return lps.randn(64, 100, g), lps.randn(64, g)
end

local function same_bits(a, b)
  return a:numel() == b:numel() and lps.allclose(a, b, 0, 0)
end

local function check_records(path, acked, what)
  local ms <close> = MS.open(path)
  lu.assertTrue(#ms >= acked, string.format("%s: %d records, %d were acknowledged", what, #ms, acked))
  lu.assertTrue(#ms <= acked + 1, what .. ": more records than appends")
  for k = 1, #ms do
    lu.assertEquals(ms:meta(k).id, k, what)
    local m = ms:tensors(k)
    local w, b = expected(k)
    lu.assertTrue(same_bits(m["0.weight"], w) and same_bits(m["0.bias"], b),
      string.format("%s: record %d is not bit-exact", what, k))
  end
  return #ms
end

TestCrash = {}

function TestCrash:tearDown() T.cleanup() end

function TestCrash:test_kill_9_loses_at_most_the_record_being_written()
  local path = T.tmpname(".lpsm")
  local child = T.tmpname(".lua")
  local f = assert(io.open(child, "w"))
  f:write(CHILD)
  f:close()
  MS.create(path, {overwrite = true}):close()
  local rounds = T.scale == "small" and 4 or 8
  local g = lps.generator(2024)
  local acked, kills_mid_write = 0, 0
  for round = 1, rounds do
    -- `exec` keeps one pid from the shell's `echo $$` to the lua process
    -- slow chunked writes, so kills also land inside records and indexes
    local h = assert(io.popen(string.format(
      "echo $$; LUALPS_MSET_SLOW_WRITE=2048,400 exec lua5.4 %s %s 2>&1", child, path)))
    local pid = assert(tonumber(h:read("l")), "no child pid")
    local delay = 0.1 + g:uniform() * 0.3
    os.execute(string.format("sleep %.3f", delay))
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    local last
    for line in h:lines() do
      local k = tonumber(line)
      lu.assertNotNil(k, "child said: " .. line)
      last = k
    end
    h:close()
    if last then acked = last end
    local n = check_records(path, acked, "round " .. round)
    local _, _, rep = MS.verify(path)
    if rep.tail_bytes > 0 then kills_mid_write = kills_mid_write + 1 end
    if round % 2 == 0 then
      -- repair keeps every intact record; odd rounds leave the torn tail
      -- to the next writer's open(path, "a")
      rep = MS.repair(path)
      lu.assertEquals(rep.records, n)
      lu.assertFalse(rep.rewrote)
      lu.assertTrue((MS.verify(path)))
      lu.assertEquals(check_records(path, acked, "after repair " .. round), n)
    end
  end
  lu.assertTrue(acked > 0, "the child never appended")
  MS.repair(path)
  local ok, problems = MS.verify(path)
  lu.assertTrue(ok, problems[1] and problems[1].message)
  check_records(path, acked, "final")
  print(string.format("# %d rounds, %d records acknowledged, %d kills left a torn tail",
    rounds, acked, kills_mid_write))
end

os.exit(lu.LuaUnit.run("-o", "tap"), true)
