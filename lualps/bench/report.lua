--- lualps.bench.report: the tables and figures of an evaluation (markdown,
-- the results' JSON, gnuplot figures). Its functions are lps.benchmark's.
local cjson = require "cjson"
local core = require "lualps.core"
local util = require "lualps.util"
local eval = require "lualps.eval"
local plot = require "lualps.bench.plot"

local B = {}

-- The first line of a command's output, or nil (no shell, no git).
local function first_line(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  if not p then return nil end
  local line = p:read("l")
  p:close()
  return line ~= "" and line or nil
end

--- Where figures come from: {version, commit (git's, when the code runs
-- from a checkout; dirty when it has uncommitted changes), blas_kernel
-- (OpenBLAS picks its sgemm kernel per processor: results are
-- bit-identical for a seed and thread count on one kernel, not across
-- kernels), blas_config, conv_kernels (the convolutions' products on this
-- core: "fma8", "wide16" or "unfused8", which decide their last bits too),
-- threads, cpu, date}.
function B.provenance()
  local info = core.build_info()
  local cpu
  local f = io.open("/proc/cpuinfo")
  if f then
    for line in f:lines() do
      cpu = cpu or line:match("^model name%s*:%s*(.-)%s*$")
    end
    f:close()
  end
  local commit = first_line("git rev-parse --short HEAD")
  local dirty = commit and first_line("git status --porcelain --untracked-files=no") ~= nil
  return {version = info.version, commit = commit, dirty = dirty or nil, blas_kernel = info.blas_kernel,
    blas_config = info.blas_config, conv_kernels = info.conv_kernels, threads = info.threads, cpu = cpu, date = os.date("!%Y-%m-%d")}
end

--- One line saying where figures come from (B.provenance()).
function B.provenance_line(p)
  p = p or B.provenance()
  return ("Produced by lualps %s%s with OpenBLAS's %s kernel (%d BLAS thread%s)%s on %s, %s."):format(p.version,
    p.commit and (" at commit " .. p.commit .. (p.dirty and " (with uncommitted changes)" or "")) or "",
    p.blas_kernel, p.threads, p.threads == 1 and "" or "s",
    p.conv_kernels and (" and the " .. p.conv_kernels .. " convolution kernels") or "", p.cpu or "an unknown CPU", p.date)
end

--- Markdown table of methods x metrics ("mean ± sd").
function B.markdown(results, order, metrics)
  local head = {"| method |"}
  local rule = {"|---|"}
  for _, m in ipairs(metrics) do head[#head + 1] = " " .. m .. " |"; rule[#rule + 1] = "---|" end
  local lines = {table.concat(head), table.concat(rule)}
  for _, name in ipairs(order) do
    local r = results[name]
    if r then
      local row = {"| " .. name .. " |"}
      for _, m in ipairs(metrics) do
        local v, sd = r[m], r[m .. "_std"]
        if v == nil or v ~= v then row[#row + 1] = " – |"
        elseif sd and sd > 0 then row[#row + 1] = (" %.3f ± %.3f |"):format(v, sd)
        else row[#row + 1] = (" %.3f |"):format(v) end
      end
      lines[#lines + 1] = table.concat(row)
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

-- A copy of t without NaN numbers (JSON has none).
local function finite(t)
  local o = {}
  for key, v in pairs(t) do if type(v) ~= "number" or v == v then o[key] = v end end
  return o
end

--- Write OUT/NAME.json ({methods, ablations, protocol, plus `extra` keys})
-- and OUT/NAME.md (a title line, `intro`, the methods table and, if any,
-- the ablations table led by `lead`). Returns the markdown text.
-- r = {methods =, ablations =, protocol =, order =, ablation_order =,
-- metrics =, title =, intro =, lead =, extra =, required = keys written as
-- null where a method has no value, sections = more markdown after the tables}
function B.write_report(out, name, r)
  local json = {methods = {}, ablations = {}, protocol = r.protocol}
  for key, v in pairs(r.methods) do
    json.methods[key] = finite(v)
    -- keys every method has, null where it cannot measure them
    for _, req in ipairs(r.required or {}) do
      if json.methods[key][req] == nil then json.methods[key][req] = cjson.null end
    end
  end
  for key, v in pairs(r.ablations or {}) do json.ablations[key] = finite(v) end
  for key, v in pairs(r.extra or {}) do json[key] = v end
  json.provenance = B.provenance()
  util.write_file(out .. "/" .. name .. ".json", cjson.encode(json))
  local md = {"# " .. r.title, "", r.intro, "", B.provenance_line(json.provenance), "",
    B.markdown(r.methods, r.order, r.metrics)}
  if r.ablations and next(r.ablations) then
    md[#md + 1] = "\n## Ablations of " .. (r.lead or "lps"):upper() .. "\n"
    local both, order = {}, {}
    if r.lead then both[r.lead], order[1] = r.methods[r.lead], r.lead end
    for key, v in pairs(r.ablations) do both[key] = v end
    for _, key in ipairs(r.ablation_order) do order[#order + 1] = key end
    md[#md + 1] = B.markdown(both, order, r.metrics)
  end
  for _, sec in ipairs(r.sections or {}) do md[#md + 1] = sec end
  local text = table.concat(md, "\n")
  util.write_file(out .. "/" .. name .. ".md", text)
  return text
end

--- The figures of an evaluation: OUT/task_similarity_vs_transfer.png
-- (the method's mean similarity between the models of two tasks next to
-- the transfer gain, over the tasks the relations were measured on) and
-- OUT/embedding_pca.png (PCA of every model's embedding, coloured by task,
-- marked by family). d: the details lps.benchmark.evaluate returned;
-- prefix names the files (default none). Returns true or false and why.
function B.figures(out, S, d, prefix)
  prefix = prefix or ""
  local tasks = S.splits.relations == "unseen" and S.splits.retrieval.unseen_tasks or nil
  if not tasks then tasks = {} for t = 1, #S.splits.tasks do tasks[t] = t end end
  local function sub(M)
    local o = {}
    for i, s in ipairs(tasks) do o[i] = {} for j, t in ipairs(tasks) do o[i][j] = M[s][t] end end
    return o
  end
  local ok, err = plot.heatmaps(out .. "/" .. prefix .. "task_similarity_vs_transfer.png", {
    {title = "Mean similarity of two tasks' models (" .. #tasks .. " tasks)", matrix = sub(d.task_similarity)},
    {title = "Transfer gain (row = source, column = target)", matrix = sub(S.transfer.gain)}})
  if not ok or not d.embeddings then return ok, err end
  local task, fam, names, marker = {}, {}, {"MLP", "CNN", "ResNet"}, {cnn = 2, resnet = 3}
  for i = 1, S.n do task[i], fam[i] = S.meta[i].task, marker[S.meta[i].family] or 1 end
  return plot.scatter(out .. "/" .. prefix .. "embedding_pca.png", eval.pca(d.embeddings, 2), task,
    S.meta[1].family and fam or nil, {marker_names = S.meta[1].family and names or nil,
    title = ("Embeddings of all %d models (PCA), coloured by task"):format(S.n)})
end

return B
