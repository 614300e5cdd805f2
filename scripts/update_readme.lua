#!/usr/bin/env lua5.4
-- Put the headline table of an evaluation (results/lps_eval.md, written by
-- recipes/eval_lps.lua, or results/lps_hetero_eval.md by eval_hetero.lua)
-- into README.md between its markers, so the README shows measured numbers,
-- never typed ones.
--   lua5.4 scripts/update_readme.lua [results/lps_eval.md] [README.md] [TAG] [SECTION]
-- TAG names the block: <!-- TAG:begin --> ... <!-- TAG:end --> ("results");
-- SECTION, the first table after the heading "## SECTION" (default: the
-- file's first table, with its note). Either way with the line saying where
-- the figures come from.
local src, readme, tag, section = arg[1] or "results/lps_eval.md", arg[2] or "README.md", arg[3] or "results", arg[4]
local function read(p) local f = assert(io.open(p)) local s = f:read("a") f:close() return s end
local md, text = read(src), read(readme)
local origin = md:match("\n(Produced by lualps[^\n]+)\n")
local note = md:match("\n(%d+ models[^\n]+)\n") or ""
if section then
  local _, stop = md:find("\n## " .. section .. "\n", 1, true)
  assert(stop, src .. " has no section '## " .. section .. "'")
  md, note = md:sub(stop + 1), ""
end
local table_md = md:match("(| method |.-\n)\n") or md:match("(| method |.*)$")
assert(table_md, src .. " has no results table")
if origin then note = note ~= "" and note .. "\n" .. origin or origin end
local block = ("<!-- %s:begin -->\n"):format(tag) .. (note ~= "" and note .. "\n\n" or "") .. table_md
  .. ("<!-- %s:end -->"):format(tag)
local pat = ("<!%%-%%- %s:begin %%-%%->.-<!%%-%%- %s:end %%-%%->"):format(tag:gsub("%-", "%%-"), tag:gsub("%-", "%%-"))
local new, n = text:gsub(pat, function() return block end)
assert(n == 1, ("%s needs one <!-- %s:begin --> ... <!-- %s:end --> block"):format(readme, tag, tag))
local f = assert(io.open(readme, "w"))
f:write(new)
f:close()
print("updated " .. readme .. " from " .. src)
