--- lualps.util: progress display and small helpers shared by recipes.
local core = require "lualps.core"

local util = {}

local function fmt_time(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, s % 3600 // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return string.format("%ds", s)
end
util.fmt_time = fmt_time

local Progress = {}
Progress.__index = Progress

--- A progress display for `total` units of work.
-- opts: label (""), unit ("items"), stream (io.stderr), tty (auto: whether
-- stderr is a terminal), interval (seconds between redraws on a terminal,
-- 0.25), every (without a terminal: one line per this many units, default
-- total/10), quiet (false: print nothing).
-- On a terminal it redraws one line (bar, done/total, rate, ETA); otherwise
-- it prints a plain line every `every` units, so logs stay short.
function util.progress(total, opts)
  opts = opts or {}
  local self = setmetatable({
    total = total, done = 0, label = opts.label or "", unit = opts.unit or "items",
    stream = opts.stream or io.stderr, interval = opts.interval or 0.25,
    quiet = opts.quiet or false, t0 = core.now(), last_draw = -math.huge,
  }, Progress)
  if opts.tty == nil then self.tty = core.isatty(2) else self.tty = opts.tty end
  self.every = opts.every or math.max(1, total // 10)
  self.next_line = self.every
  return self
end

function Progress:rate()
  local dt = core.now() - self.t0
  return dt > 0 and self.done / dt or 0
end

function Progress:line(extra)
  local rate = self:rate()
  local eta = rate > 0 and (self.total - self.done) / rate or math.huge
  return string.format("%s%d/%d %s, %.1f %s/s, elapsed %s, ETA %s%s",
    self.label ~= "" and (self.label .. ": ") or "", self.done, self.total, self.unit, rate,
    self.unit, fmt_time(core.now() - self.t0), fmt_time(eta), extra and ("  " .. extra) or "")
end

--- Record that `done` units are complete (absolute count); `extra` is a short
-- status string appended to the line.
function Progress:update(done, extra)
  self.done = done
  if self.quiet then return end
  local now = core.now()
  if self.tty then
    if now - self.last_draw < self.interval and done < self.total then return end
    self.last_draw = now
    local width, frac = 24, self.total > 0 and done / self.total or 1
    local fill = math.floor(frac * width + 0.5)
    self.stream:write(string.format("\r[%s%s] %3d%% %s\027[K", string.rep("#", fill),
      string.rep(".", width - fill), math.floor(frac * 100), self:line(extra)))
    self.stream:flush()
  elseif done >= self.next_line or done >= self.total then
    while self.next_line <= done do self.next_line = self.next_line + self.every end
    self.stream:write(self:line(extra), "\n")
    self.stream:flush()
  end
end

--- Finish: on a terminal end the redrawn line; return the elapsed seconds.
function Progress:finish(extra)
  if self.done < self.total then self:update(self.total, extra) end
  if self.tty and not self.quiet then self.stream:write("\n") end
  return core.now() - self.t0
end

--- Median of a list of numbers (copied before sorting).
function util.median(xs)
  local c = table.move(xs, 1, #xs, 1, {})
  table.sort(c)
  local n = #c
  if n == 0 then return nil end
  if n % 2 == 1 then return c[(n + 1) // 2] end
  return (c[n // 2] + c[n // 2 + 1]) / 2
end

--- Peak resident set size of this process in MB (Linux /proc), or nil.
function util.peak_rss_mb()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  for line in f:lines() do
    local kb = line:match("^VmHWM:%s+(%d+)")
    if kb then f:close(); return tonumber(kb) / 1024 end
  end
  f:close()
end

--- Read a whole file, or nil and a message.
function util.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

--- Write a file atomically: to path.tmp, then rename over path.
function util.write_file(path, data)
  local tmp = path .. ".tmp"
  local f = assert(io.open(tmp, "wb"))
  f:write(data)
  assert(f:close())
  assert(os.rename(tmp, path))
end

return util
