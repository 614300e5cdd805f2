#!/usr/bin/env lua5.4
-- Put the headline table of an evaluation (results/lps_eval.md, written by
-- recipes/eval_lps.lua) into README.md between its results markers, so the
-- README shows measured numbers, never typed ones.
--   lua5.4 scripts/update_readme.lua [results/lps_eval.md] [README.md]
local src, readme = arg[1] or "results/lps_eval.md", arg[2] or "README.md"
local function read(p) local f = assert(io.open(p)) local s = f:read("a") f:close() return s end
local md, text = read(src), read(readme)
local table_md = md:match("(| method |.-\n)\n") or md:match("(| method |.*)$")
assert(table_md, src .. " has no results table")
local note = md:match("\n(%d+ models, [^\n]+)\n") or ""
local block = "<!-- results:begin -->\n" .. note .. "\n\n" .. table_md .. "<!-- results:end -->"
local new, n = text:gsub("<!%-%- results:begin %-%->.-<!%-%- results:end %-%->", function() return block end)
assert(n == 1, readme .. " needs one <!-- results:begin --> ... <!-- results:end --> block")
local f = assert(io.open(readme, "w"))
f:write(new)
f:close()
print("updated " .. readme .. " from " .. src)
