--- scripts/bench_common.lua: what the benchmark scripts share: medians,
-- the machine's load, peak memory, and the JSON line a worker process
-- prints last.
local cjson = require "cjson"

local C = {}

--- Median of a list of numbers (the mean of the middle two for an even count).
function C.median(t)
  local s = table.move(t, 1, #t, 1, {})
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

--- Median wall-clock milliseconds of f() over reps calls, after one warm-up call.
function C.time_ms(reps, f)
  local now = require("lualps").now
  f()
  local ts = {}
  for r = 1, reps do
    local t0 = now()
    f()
    ts[r] = (now() - t0) * 1000
  end
  return C.median(ts)
end

--- The 1, 5 and 15 minute load averages, as /proc/loadavg says them.
function C.loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("l") or "?"
  if f then f:close() end
  return s:match("^(%S+ %S+ %S+)") or s
end

--- The kernels lualps runs on, as a line to print before the figures:
-- OpenBLAS's sgemm kernel and lualps's convolution kernels
-- (lps.build_info()). OpenBLAS picks Prescott, its generic kernel, on a
-- processor it does not recognize (seen on a virtual machine that reports
-- only "Intel(R) Xeon(R) Processor"), where OPENBLAS_CORETYPE=SkylakeX
-- cut LPS's training time by a third: said in the line.
function C.kernels()
  local info = require("lualps").build_info()
  local line = ("kernels: OpenBLAS %s, convolutions %s"):format(info.blas_kernel, info.conv_kernels)
  if info.blas_kernel == "Prescott" and not os.getenv("OPENBLAS_CORETYPE") then
    line = line .. " (OpenBLAS's generic fallback: it does not recognize this processor; "
      .. "OPENBLAS_CORETYPE=SkylakeX or Haswell may be faster)"
  end
  return line
end

--- Peak resident set size of this process in MB (NaN where unknown).
function C.vmhwm_mb()
  local f = io.open("/proc/self/status")
  if not f then return 0 / 0 end
  for line in f:lines() do
    local kb = line:match("^VmHWM:%s+(%d+)")
    if kb then f:close(); return tonumber(kb) / 1024 end
  end
  f:close()
  return 0 / 0
end

--- Run a worker command and decode the JSON object on its last line;
-- raises with the command and its output when it fails.
function C.run_json(cmd)
  local f = assert(io.popen(cmd))
  local out = f:read("a")
  local ok = f:close()
  local last
  for line in out:gmatch("[^\n]+") do last = line end
  if not ok or not last or not last:match("^{") then
    error("benchmark worker failed: " .. cmd .. "\n" .. out)
  end
  return cjson.decode(last)
end

return C
