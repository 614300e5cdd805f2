--- Independent jobs of a recipe in several processes: the policy behind
-- recipes/eval_hetero.lua's --jobs. Part 1 (the process the user started)
-- starts parts 2..n as copies of its own command line with `--part k/n`,
-- runs its share, waits for them and reads their results back; every part
-- computes the same assignment of jobs to parts. A job's result is a plain
-- table (numbers, strings, booleans, tables): it travels as a Lua data file
-- with every bit of its numbers, NaN and infinities included.
--   local parts = require "scripts.parts"   -- from the repository root
local M = {}

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.quote = quote

--- Assign jobs ({name, cost, pinned}) to n parts: pinned jobs to part 1,
-- then the others by decreasing cost (ties by name), each to the part with
-- the least work so far (the lowest number on ties). Returns name -> part
-- and the parts' summed costs.
function M.assign(jobs, n)
  local part, load, rest = {}, {}, {}
  for k = 1, n do load[k] = 0 end
  for _, j in ipairs(jobs) do
    if type(j.cost) ~= "number" then error(("parts: job '%s' has no cost"):format(tostring(j.name)), 2) end
    if j.pinned then part[j.name], load[1] = 1, load[1] + j.cost else rest[#rest + 1] = j end
  end
  table.sort(rest, function(x, y) if x.cost ~= y.cost then return x.cost > y.cost end return x.name < y.name end)
  for _, j in ipairs(rest) do
    local best = 1
    for k = 2, n do if load[k] < load[best] then best = k end end
    part[j.name], load[best] = best, load[best] + j.cost
  end
  return part, load
end

--- Parse "k/n" (1 <= k <= n); returns k, n or raises with a message.
function M.parse(s)
  local k, n = tostring(s):match("^(%d+)/(%d+)$")
  k, n = tonumber(k), tonumber(n)
  if not k or k < 1 or k > n then error(("--part must be k/n with 1 <= k <= n, got '%s'"):format(tostring(s)), 0) end
  return math.tointeger(k), math.tointeger(n)
end

--- The shell command that runs the program of `argv` (a script's `arg`)
-- again, without the options named in `drop` (and their values), plus the
-- words `more`.
function M.command(argv, drop, more)
  local first, skip, words, dropped = 0, false, {}, {}
  for _, d in ipairs(drop) do dropped[d] = true end
  while argv[first - 1] ~= nil do first = first - 1 end
  for i = first, 0 do words[#words + 1] = quote(argv[i]) end
  for _, w in ipairs(argv) do
    local opt = w:match("^(%-%-[%w-]+)=")
    if skip then skip = false
    elseif dropped[w] then skip = true
    elseif not (opt and dropped[opt]) then words[#words + 1] = quote(w) end
  end
  for _, w in ipairs(more) do words[#words + 1] = quote(w) end
  return table.concat(words, " ")
end

-- A plain value as a Lua expression that reads back bit for bit (floats in
-- hexadecimal, NaN and infinities as divisions, keys sorted for a stable file).
local function serialize(v, out)
  local t = type(v)
  if t == "number" then
    if math.type(v) == "integer" then out[#out + 1] = ("%d"):format(v)
    elseif v ~= v then out[#out + 1] = "(0/0)"
    elseif v == math.huge or v == -math.huge then out[#out + 1] = v > 0 and "(1/0)" or "(-1/0)"
    else out[#out + 1] = ("%a"):format(v) end
  elseif t == "string" then out[#out + 1] = ("%q"):format(v)
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "table" then
    local keys = {}
    for k in pairs(v) do
      if type(k) ~= "string" and math.type(k) ~= "integer" then error("parts: a result key must be a string or an integer", 0) end
      keys[#keys + 1] = k
    end
    table.sort(keys, function(x, y)
      if type(x) ~= type(y) then return type(x) == "number" end
      return x < y
    end)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      out[#out + 1] = type(k) == "string" and ("[%q]="):format(k) or ("[%d]="):format(k)
      serialize(v[k], out)
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
  else
    error("parts: a result holds a " .. t .. ", not a plain value", 0)
  end
end

--- Write a plain table (numbers, strings, booleans, tables) to `path` so
-- that M.read gives it back bit for bit.
function M.write(path, t)
  local out = {"return "}
  serialize(t, out)
  local f = assert(io.open(path, "wb"))
  f:write(table.concat(out))
  f:close()
end

--- Read what M.write wrote (as data: the chunk sees no globals).
function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return assert(load(s, "=" .. path, "t", {}))()
end

--- Run jobs over n processes. o: jobs (list of {name, cost, pinned, ...}),
-- n (parts; 1 runs everything here), part ("k/n" in a started part, else
-- nil), argv (the script's `arg`), path(k) (part k's result file),
-- run(job) -> plain result[, local value] (the local value stays in part 1:
-- a fitted network, say). Each part runs its jobs in list order (pin a
-- job others in part 1 depend on, and list it first). In a started part, writes its results to
-- path(k) and returns nil. In part 1, returns results and local values by
-- job name, after every part finished; raises if one failed.
function M.run(o)
  local me, n = 1, o.n
  if o.part then me, n = M.parse(o.part) end
  local part = M.assign(o.jobs, n)
  local kids = {}
  if me == 1 then
    for k = 2, n do
      os.remove(o.path(k))
      local cmd = M.command(o.argv, {"--jobs", "--part"}, {"--part", k .. "/" .. n})
      -- the part's stdout goes to our stderr: the pipe never fills, and closing it waits for the part
      kids[k] = {cmd = cmd, h = assert(io.popen(cmd .. " 1>&2", "r"))}
    end
  end
  local out, locals = {}, {}
  for _, j in ipairs(o.jobs) do
    if part[j.name] == me then out[j.name], locals[j.name] = o.run(j) end
  end
  if me ~= 1 then M.write(o.path(me), out) return nil end
  for k = 2, n do
    kids[k].h:read("a")
    local ok, how, code = kids[k].h:close()
    if not ok then error(("part %d/%d failed (%s %s): %s"):format(k, n, how, tostring(code), kids[k].cmd), 0) end
    for name, v in pairs(M.read(o.path(k))) do out[name] = v end
    os.remove(o.path(k))
  end
  return out, locals
end

return M
