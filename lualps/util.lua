--- lualps.util: progress display and small helpers shared by recipes.
local core = require "lualps.core"

local util = {}

--- Whether x is a finite number (not NaN, not infinite, not another type).
function util.finite(x) return type(x) == "number" and x == x and x > -math.huge and x < math.huge end

--- Options merged over their defaults, the one way every lualps function
-- reads an option table: a new table holding defaults[k] for each key of
-- `defaults`, replaced by opts[k] where opts gives a value, and opts[k] for
-- each key listed in `more` (options without a default, nil unless given).
-- opts may be nil. A key of opts that is neither in defaults nor in more is
-- an error naming `op`, the key and the known options; so is an opts that
-- is not a table. Errors point at the caller of the function that called
-- util.options. Each module keeps its defaults in a table beside the
-- function, one comment per option.
function util.options(opts, defaults, op, more)
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s: options must be a table, got %s"):format(op, type(opts)), 3)
  end
  local o, known = {}, {}
  for k, v in pairs(defaults) do o[k], known[k] = v, true end
  for _, k in ipairs(more or {}) do known[k] = true end
  for k, v in pairs(opts or {}) do
    if not known[k] then
      local names = {}
      for name in pairs(known) do names[#names + 1] = tostring(name) end
      table.sort(names)
      error(("%s: unknown option '%s' (%s)"):format(op, tostring(k), table.concat(names, ", ")), 3)
    end
    o[k] = v
  end
  return o
end

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

--- Options of util.progress and their defaults; also `tty` (default:
-- whether stderr is a terminal) and `every` (without a terminal: one line
-- per this many units; default total/10).
util.progress_defaults = {
  label = "",          -- shown before the counts
  unit = "items",      -- what is counted
  stream = io.stderr,  -- where the lines go
  interval = 0.25,     -- seconds between redraws on a terminal
  quiet = false,       -- true: print nothing
  clock = core.now,    -- a function giving seconds
}
local progress_more = {"tty", "every"}

--- The progress display for `total` units of work (builds, evaluations,
-- training epochs); opts: util.progress_defaults.
-- On a terminal it redraws one line (bar, done/total, rate, ETA); otherwise
-- it prints a plain line every `every` units, so logs stay short. `done` may
-- be fractional (part of an epoch): the bar and ETA follow it, the count
-- shows whole units.
function util.progress(total, opts)
  local o = util.options(opts, util.progress_defaults, "progress", progress_more)
  local self = setmetatable({
    total = total, done = 0, label = o.label, unit = o.unit, stream = o.stream, interval = o.interval,
    quiet = o.quiet, clock = o.clock, last_draw = -math.huge,
  }, Progress)
  self.t0 = self.clock()
  if o.tty == nil then self.tty = core.isatty(2) else self.tty = o.tty end
  self.every = o.every or math.max(1, total // 10)
  self.next_line = self.every
  return self
end

function Progress:rate()
  local dt = self.clock() - self.t0
  return dt > 0 and self.done / dt or 0
end

function Progress:line(extra)
  local rate = self:rate()
  local eta = rate > 0 and (self.total - self.done) / rate or math.huge
  -- slow units (epochs, big models) read better as time per unit
  local speed = (rate > 0 and rate < 1)
    and ("%s per %s"):format(fmt_time(1 / rate), (self.unit:gsub("s$", "")))
    or ("%.1f %s/s"):format(rate, self.unit)
  return string.format("%s%d/%d %s, %s, elapsed %s, ETA %s%s",
    self.label ~= "" and (self.label .. ": ") or "", math.floor(self.done), self.total, self.unit,
    speed, fmt_time(self.clock() - self.t0), fmt_time(eta), extra and ("  " .. extra) or "")
end

--- Record that `done` units are complete (absolute count); `extra` is a short
-- status string appended to the line.
function Progress:update(done, extra)
  self.done = done
  if self.quiet then return end
  local now = self.clock()
  if self.tty then
    if now - self.last_draw < self.interval and done < self.total then return end
    self.last_draw = now
    local width, frac = 24, self.total > 0 and math.min(1, done / self.total) or 1
    local fill = math.floor(frac * width + 0.5)
    self.stream:write(string.format("\r[%s%s] %3d%% %s\027[K", string.rep("#", fill),
      string.rep(".", width - fill), math.floor(frac * 100), self:line(extra)))
    self.stream:flush()
    self.drawn = true
  elseif done >= self.next_line or done >= self.total then
    while self.next_line <= done do self.next_line = self.next_line + self.every end
    self.stream:write(self:line(extra), "\n")
    self.stream:flush()
  end
end

--- Finish: on a terminal end the redrawn line; return the elapsed seconds.
function Progress:finish(extra)
  if self.done < self.total then self:update(self.total, extra) end
  return self:stop()
end

--- End the display where it is (work stopped early): on a terminal end the
-- redrawn line; return the elapsed seconds.
function Progress:stop()
  if self.tty and self.drawn and not self.quiet then self.stream:write("\n"); self.stream:flush() end
  self.drawn = false
  return self.clock() - self.t0
end

--- A progress callback for training loops (lps.train, similarity.train): a
-- util.progress bar over the epochs (opts as there; label `label` (default
-- "train") unless opts give one, unit "epochs") with the loss and accuracy,
-- and the validation accuracy and samples/s when given, as its text. It
-- takes the tables those loops pass ({epoch, epochs[, step, steps, samples,
-- seconds, done], loss, accuracy[, val_accuracy]}); calls within an epoch
-- fill the bar part-way. Returns the callback and a handle to close (`local
-- h <close> = ...`) that ends the line if training stops early.
function util.epoch_progress(opts, label)
  local defaults = util.options({label = label or "train", unit = "epochs"}, util.progress_defaults, "epoch_progress")
  local o = util.options(opts, defaults, "epoch_progress", progress_more)
  local bar, t0 = nil, o.clock()
  local function callback(p)
    if not bar then
      bar = util.progress(p.epochs, o)
      bar.t0 = t0 -- timed from the start of training, not from its first report
    end
    local frac = 1
    if p.steps and p.steps > 0 and not p.done then frac = p.step / p.steps end
    local extra = {("loss %.4f"):format(p.loss)}
    if p.accuracy then extra[#extra + 1] = ("acc %.4f"):format(p.accuracy) end
    if p.val_accuracy then extra[#extra + 1] = ("val acc %.4f"):format(p.val_accuracy) end
    if p.samples and p.seconds and p.seconds > 0 then
      extra[#extra + 1] = ("%.0f samples/s"):format(p.samples / p.seconds)
    end
    local done = p.epoch - 1 + frac
    bar:update(done, table.concat(extra, "  "))
    if done >= p.epochs then bar:finish() end
  end
  local handle = setmetatable({}, {__close = function() if bar then bar:stop() end end})
  return callback, handle
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

--- f memoized per argument (weak keys: a model's entry goes with the
-- model). f's false is remembered too; it must not return nil. Also
-- returns a function telling whether an argument's value is remembered.
function util.memoize(f)
  local memo = setmetatable({}, {__mode = "k"})
  return function(x)
    local v = memo[x]
    if v == nil then
      v = f(x)
      memo[x] = v
    end
    return v
  end, function(x) return memo[x] ~= nil end
end

return util
