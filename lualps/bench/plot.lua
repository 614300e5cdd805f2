--- lualps.bench.plot (lps.plot): PNG figures through gnuplot (Debian's gnuplot-nox). Each
-- function writes its data and script beside the PNG (PATH.dat, PATH.gp),
-- so a figure can be restyled by hand, and returns true, or false and a
-- message when gnuplot fails.
local util = require "lualps.util"

local P = {}

local function run(png, script)
  local gp = png:gsub("%.png$", "") .. ".gp"
  util.write_file(gp, script)
  local ok = os.execute("gnuplot '" .. gp .. "' 2>/dev/null")
  if not ok then return false, "gnuplot failed on " .. gp end
  return true
end

local function matrix_text(M)
  local lines = {}
  for s = 1, #M do
    local row = {}
    for t = 1, #M[s] do row[t] = string.format("%.5f", M[s][t] == M[s][t] and M[s][t] or 0) end
    lines[s] = table.concat(row, " ")
  end
  return table.concat(lines, "\n") .. "\n"
end

--- Square matrices (Lua tables of rows) as heat maps side by side:
-- panels = { {title =, matrix =}, ... }; opts.label names the axes ("task").
function P.heatmaps(png, panels, opts)
  opts = opts or {}
  local base = png:gsub("%.png$", "")
  local parts = {("set terminal pngcairo size %d,620 font \",10\""):format(700 * #panels),
    ("set output \"%s\""):format(png), ("set multiplot layout 1,%d"):format(#panels), "set size ratio 1",
    ("set xlabel \"%s\"; set ylabel \"%s\""):format(opts.label or "task", opts.label or "task"),
    'set palette defined (0 "#313695", 0.5 "#ffffbf", 1 "#a50026")'}
  for i, p in ipairs(panels) do
    local dat = ("%s.%d.dat"):format(base, i)
    util.write_file(dat, matrix_text(p.matrix))
    local n = #p.matrix
    parts[#parts + 1] = ("set xrange [-0.5:%d.5]; set yrange [%d.5:-0.5]"):format(n - 1, n - 1)
    parts[#parts + 1] = ("set title \"%s\""):format(p.title or "")
    parts[#parts + 1] = ("plot \"%s\" matrix with image notitle"):format(dat)
  end
  parts[#parts + 1] = "unset multiplot"
  return run(png, table.concat(parts, "\n") .. "\n")
end

--- A 2-D scatter plot: xy (n x 2 tensor), color (n numbers, e.g. task
-- labels), optional marker (n small integers, e.g. 1 = MLP, 2 = CNN, with
-- opts.marker_names for the legend); opts.title, opts.xlabel, opts.ylabel.
function P.scatter(png, xy, color, marker, opts)
  opts = opts or {}
  local base = png:gsub("%.png$", "")
  local kinds, pts = {}, {}
  for i = 1, xy:size(1) do
    local m = marker and marker[i] or 1
    kinds[m] = true
    pts[#pts + 1] = ("%.5f %.5f %s %d"):format(xy:get(i, 1), xy:get(i, 2), tostring(color[i]), m)
  end
  util.write_file(base .. ".dat", table.concat(pts, "\n") .. "\n")
  local lo, hi = math.huge, -math.huge
  for _, c in ipairs(color) do lo, hi = math.min(lo, c), math.max(hi, c) end
  local plots, shapes = {}, {7, 5, 9, 11, 13}
  local list = {}
  for m in pairs(kinds) do list[#list + 1] = m end
  table.sort(list)
  for _, m in ipairs(list) do
    local title = opts.marker_names and opts.marker_names[m]
    plots[#plots + 1] = ("\"%s.dat\" using 1:2:($4 == %d ? $3 : 1/0) with points pt %d ps 0.8 palette %s")
      :format(base, m, shapes[(m - 1) % #shapes + 1], title and ("title \"" .. title .. "\"") or "notitle")
  end
  local script = table.concat({'set terminal pngcairo size 900,800 font ",10"', ("set output \"%s\""):format(png),
    ("set xlabel \"%s\"; set ylabel \"%s\""):format(opts.xlabel or "PC 1", opts.ylabel or "PC 2"),
    ("set title \"%s\""):format(opts.title or ""), "set palette rgbformulae 33,13,10",
    ("set cbrange [%g:%g]"):format(lo, math.max(hi, lo + 1)), "set key top left",
    "plot " .. table.concat(plots, ", ")}, "\n") .. "\n"
  return run(png, script)
end

return P
