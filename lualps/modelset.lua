--- lps.modelset: a compressed, checksummed, crash-safe archive of trained models.
--
-- The file format (docs/MODELSET_FORMAT.md) and its checks live in C
-- (csrc/store/modelset.c); this module adds JSON metadata (lualps.json), models
-- (the lps.nn spec contract) and iteration.
--
--   local ms <close> = lps.modelset.create("runs.lpsm")        -- codec "shuffle"
--   local i = ms:append(model, {id = "t1-s7", task = "t1", seed = 7, test_acc = 0.97})
--   local ms = lps.modelset.open("runs.lpsm")                    -- read-only
--   for i, meta in ipairs(ms) do ... end                         -- metadata only
--   local model, meta = ms:get(3)                                -- ready to forward
--
-- Options of create(path, opts) and open(path, "a", opts), with defaults:
--   codec = "shuffle"  lossless: byte planes, then zstd (as Blosc); "plain" is zstd
--                      of the float32 bytes; "bf16" (lossy, relative error <= 2^-8)
--                      only when asked for. open(path, "a") keeps the file's codec.
--   level = 1          zstd level 1..19 (on byte planes of trained weights, 1 is
--                      smaller and decodes faster than 3)
--   sync = true        fdatasync after every record (a power cut loses at most the
--                      record being written); false syncs only at flush/close
--   overwrite = false  create: replace an existing file instead of refusing
--
-- Metadata is a JSON object, written with sorted keys (same metadata, same
-- bytes) and numbers that read back exactly; read with lua-cjson, whole
-- numbers come back as integers (exact up to 2^53). `spec` is reserved:
-- append(model, meta) stores model:spec() there. The model id that merge
-- checks is meta.id.
local core = require "lualps.core"
local util = require "lualps.util"
local mjson = require "lualps.json"
local nn = require "lualps.nn"
local arch = require "lualps.arch"

local C = core._modelset
local M = {}

M.CODECS = {"shuffle", "plain", "bf16"}
M.ID_FIELD = "id"

local ModelSet = {}

local function wrap(f)
  return setmetatable({_f = f}, ModelSet)
end

local function file(self)
  local f = rawget(self, "_f")
  if not f then error("modelset: the set has been closed", 3) end
  return f
end

ModelSet.__index = function(self, k)
  if math.type(k) == "integer" then
    -- ms[i] is the metadata of record i, so ipairs(ms) walks the metadata
    if k >= 1 and k <= #file(self) then return self:meta(k) end
    return nil
  end
  return ModelSet[k]
end

function ModelSet.__len(self) return #file(self) end

function ModelSet.__tostring(self)
  if not self._f then return "lualps.ModelSet (closed)" end
  local st = file(self):state()
  local extra = ""
  if not st.indexed then extra = ", opened by scanning (no index)" end
  if st.tail_bytes > 0 then extra = extra .. string.format(", %d torn tail bytes ignored", st.tail_bytes) end
  return string.format("lualps.ModelSet %s (%d models, codec %s, %s%s)", st.path, st.count,
    st.codec, st.mode == "a" and "append" or "read-only", extra)
end

function ModelSet.__pairs(self) return self:iter() end

function ModelSet.__close(self) self:close() end

--- Close the file (a writer writes its index first). Safe to call twice.
function ModelSet:close()
  if self._f then
    local f = self._f
    self._f = nil
    f:close()
  end
end

--- Writers: write the index now, so readers open without a scan.
function ModelSet:flush() file(self):flush() end

--- Number of records, path, default codec, mode, and how the index was found.
function ModelSet:state() return file(self):state() end
function ModelSet:path() return file(self):state().path end

local function check_i(self, i)
  if math.type(i) ~= "integer" then
    error("modelset: record number must be an integer, got " .. tostring(i), 3)
  end
end

-- A one-line summary of a record's metadata, for the REPL: `ms[17]`.
local function summary(i, m)
  local parts = {("record %d"):format(i)}
  local function add(fmt, v) if v ~= nil then parts[#parts + 1] = fmt:format(v) end end
  add("%s", m.id ~= nil and tostring(m.id) or nil)
  add("task %s", m.task ~= nil and tostring(m.task) or nil)
  add("(%s)", m.task_name)
  local acc = m.test_accuracy or m.test_acc
  add("test accuracy %.4f", type(acc) == "number" and acc or nil)
  local name = m.architecture
  if not name then
    local ok, list = pcall(arch.of_meta, m)
    if ok and list then name = arch.name(list) end
  end
  add("%s", name)
  if m.optimizer then add("%s", m.optimizer .. (type(m.lr) == "number" and (" lr %.3g"):format(m.lr) or "")) end
  return table.concat(parts, "  ")
end

--- The metadata of record i (a table), read without touching its tensors.
-- It prints as a one-line summary (id, task, accuracy, architecture).
function ModelSet:meta(i)
  check_i(self, i)
  local json = file(self):meta(i)
  local m = mjson.decode(json, string.format("%s: record %d", self:path(), i))
  return setmetatable(m, {__tostring = function(t) return summary(i, t) end})
end

--- The raw JSON text of record i; with keys (at most 8), the raw text of
-- each of those top-level fields instead, nil where absent (the rest is not
-- decoded: ms:meta_json(i, "arch", "family")).
function ModelSet:meta_json(i, ...)
  check_i(self, i)
  return file(self):meta(i, ...)
end

--- Index facts of record i: offset, bytes, decoded_bytes, meta_bytes, ntensors, codecs.
function ModelSet:info(i)
  check_i(self, i)
  return file(self):info(i)
end

--- Descriptions of record i's tensors (name, shape, codec, offset, stored_bytes,
-- crc) without decoding them; `offset`/`stored_bytes` locate each zstd frame.
function ModelSet:describe(i)
  check_i(self, i)
  return file(self):table(i)
end

--- The tensors of record i: a map name -> tensor, and the names in stored order.
function ModelSet:tensors(i)
  check_i(self, i)
  local list = file(self):tensors(i)
  local map, names = {}, {}
  for k, d in ipairs(list) do
    map[d.name] = d.tensor
    names[k] = d.name
  end
  return map, names
end

--- The model of record i, built with lps.nn.from_arch(meta.arch) (older
-- records: their legacy spec) and its stored parameters and buffers loaded;
-- also returns the metadata.
function ModelSet:get(i)
  local meta = self:meta(i)
  local ok, model = pcall(function()
    local list = arch.of_meta(meta)
    if not list then return nil end
    local m = nn.from_arch(list, core.generator(0))
    m:load_named((self:tensors(i)))
    return m
  end)
  if not ok then -- a stored arch or tensors that do not build: name the record
    error(string.format("%s: record %d%s: %s", self:path(), i, meta.id ~= nil and " (" .. tostring(meta.id) .. ")" or "",
      tostring(model):gsub("^[^\n]-%.lua:%d+: ", "")), 2)
  end
  if not model then
    error(string.format("%s: record %d has no arch (it was stored with append_tensors); "
      .. "use ms:tensors(i)", self:path(), i), 2)
  end
  return model, meta
end

-- named: an array of {name=, tensor=[, codec=]} (order kept) or a map
-- name -> tensor (stored in name order).
local function entries(named, codec)
  if type(named) ~= "table" then error("modelset: tensors must be a table", 3) end
  local list = {}
  if #named > 0 then
    for k, e in ipairs(named) do
      if type(e) ~= "table" then error("modelset: tensor entry " .. k .. " is not a table", 3) end
      list[k] = {name = e.name, tensor = e.tensor, codec = e.codec or codec}
    end
  else
    local names = {}
    for name in pairs(named) do
      if type(name) ~= "string" then error("modelset: tensor names must be strings", 3) end
      names[#names + 1] = name
    end
    table.sort(names)
    for k, name in ipairs(names) do list[k] = {name = name, tensor = named[name], codec = codec} end
  end
  return list
end

--- Append raw named tensors with metadata; returns the new record's number.
-- opts.codec overrides the set's codec for this record.
function ModelSet:append_tensors(named, meta, opts)
  local o = util.options(opts, {}, "append_tensors", {"codec"})
  local json = mjson.encode(meta)
  return file(self):append(json, entries(named, o.codec))
end

--- Append a model (an lps.nn module) with its metadata: its arch list is
-- stored as meta.arch, its parameters and buffers (PyTorch's state_dict
-- names) as the record's tensors. Returns the new record's number.
function ModelSet:append(model, meta, opts)
  local o = util.options(opts, {}, "append", {"codec"})
  if (getmetatable(model) or {}).__name ~= "lualps.Module" then
    error("modelset: append needs an lps.nn module (use append_tensors for raw tensors)", 2)
  end
  meta = meta or {}
  if type(meta) ~= "table" then error(("modelset: append's meta must be a table, got %s"):format(type(meta)), 2) end
  if meta.arch ~= nil then error("modelset: meta.arch is reserved for the model's architecture", 2) end
  local m = {}
  for k, v in pairs(meta) do m[k] = v end
  local ok, list = pcall(model.arch, model)
  if not ok then error("modelset: " .. tostring(list):gsub("^.-:%d+: ", ""), 2) end
  m.arch = list
  local named = model:named_parameters()
  for _, e in ipairs(model:named_buffers()) do named[#named + 1] = e end
  local json = mjson.encode(m)
  return file(self):append(json, entries(named, o.codec))
end

--- for i, meta in ms:iter() do ... end   (metadata only)
function ModelSet:iter()
  local i, n = 0, #self
  return function()
    i = i + 1
    if i <= n then return i, self:meta(i) end
  end
end

--- for i, model, meta in ms:models() do ... end
function ModelSet:models()
  local i, n = 0, #self
  return function()
    i = i + 1
    if i <= n then
      local model, meta = self:get(i)
      return i, model, meta
    end
  end
end

--- Create a new set (refuses an existing file unless opts.overwrite).
function M.create(path, opts)
  return wrap(C.create(path, opts))
end

--- Open read-only (mode "r", the default) or for appending (mode "a").
-- Readers see the records complete when they open; only the index is read.
function M.open(path, mode, opts)
  return wrap(C.open(path, mode or "r", opts))
end

--- A read-only set over a string holding a whole file image.
function M.open_string(s)
  return wrap(C.open_string(s))
end

local function json_problems(path_or_ms, rep)
  -- C checks bytes; a record whose bytes are intact may still hold bad JSON.
  local bad = {}
  for _, p in ipairs(rep.problems) do if p.record then bad[p.record] = true end end
  local ok, ms = pcall(function()
    if type(path_or_ms) == "string" then return M.open(path_or_ms) end
    return path_or_ms
  end)
  if not ok then return end
  for i = 1, #ms do
    if not bad[i] then
      local okj, json = pcall(ms._f.meta, ms._f, i)
      if okj then
        local okd, err = pcall(mjson.decode, json, string.format("record %d", i))
        if not okd then
          rep.problems[#rep.problems + 1] = {record = i, message = err}
          rep.nproblems = rep.nproblems + 1
          rep.ok = false
        end
      end
    end
  end
  if type(path_or_ms) == "string" then ms:close() end
end

--- Check every byte of a set. Returns ok, problems (each {record=, offset=,
-- message=}; record is nil for the header, index or damage between records)
-- and the full report. Raises only when the file cannot be opened.
function M.verify(path)
  if math.type(path) then path = tostring(path) end -- a number names a file, as for C.verify (not an open set)
  local rep = C.verify(path)
  if rep.ok or rep.records > 0 then json_problems(path, rep) end
  return rep.ok, rep.problems, rep
end

--- verify() over a string holding a whole file image.
function M.verify_string(s)
  local rep = C.verify_string(s)
  return rep.ok, rep.problems, rep
end

--- Keep every intact record: a torn tail is truncated and the index
-- rewritten in place; if records inside are damaged, a new file with the
-- intact ones replaces it and the original is kept as path .. ".damaged".
-- Returns the report (records kept, problems found, truncated, rewrote, backup).
function M.repair(path)
  return C.repair(path)
end

--- Options of lps.modelset.merge and their defaults; also codec and level
-- (those of create, for a new `out`).
M.merge_defaults = {
  id_field = M.ID_FIELD,  -- the metadata field of a model's id (records without one are always copied)
  overwrite = false,      -- replace an existing `out` instead of refusing it
  skip_existing = false,  -- copy only the records whose id `out` does not hold yet: an existing out
                          -- is appended to, and of records sharing an id the first one is copied;
                          -- false: two records sharing an id are refused
}

--- Concatenate sets into `out`, records copied byte for byte after their
-- checksums are checked; opts: M.merge_defaults. By default `out` must not
-- exist (unless overwrite) and records sharing an id are refused, before
-- anything is written; with skip_existing (resuming a sharded build) the
-- records whose id out already holds are skipped. Returns the number of
-- records written.
function M.merge(out, inputs, opts)
  local o = util.options(opts, M.merge_defaults, "merge", {"codec", "level"})
  if type(out) ~= "string" then error(("merge: out must be a path, got %s"):format(type(out)), 2) end
  if type(inputs) ~= "table" or #inputs == 0 then error("merge: no input sets", 2) end
  for k, path in ipairs(inputs) do
    if type(path) ~= "string" then error(("merge: input %d must be a path, got %s"):format(k, type(path)), 2) end
  end
  if type(o.id_field) ~= "string" then error(("merge: id_field must be a string, got %s"):format(type(o.id_field)), 2) end
  local existing = io.open(out, "rb")
  if existing then existing:close() end
  local append = existing ~= nil and o.skip_existing and not o.overwrite
  local seen, sets, copy = {}, {}, {}
  local function closeall() for _, s in ipairs(sets) do s:close() end end
  -- the key of a record's id, or nil; records sharing a key share an id
  local function key_of(ms, i)
    local okm, meta = pcall(ms.meta, ms, i)
    if not okm then closeall() error("merge: " .. tostring(meta), 3) end
    local id = meta[o.id_field]
    return id ~= nil and type(id) .. ":" .. tostring(id) or nil, id
  end
  if append then -- what out holds already (closed again before out is opened to append)
    local ok, have = pcall(M.open, out)
    if not ok then error(have, 2) end
    sets[1] = have
    for i = 1, #have do
      local key = key_of(have, i)
      if key then seen[key] = {out, i} end
    end
    have:close()
  end
  for _, path in ipairs(inputs) do
    if path == out then closeall() error("merge: output " .. out .. " is also an input", 2) end
    local ok, ms = pcall(M.open, path)
    if not ok then closeall() error(ms, 2) end
    sets[#sets + 1] = ms
    for i = 1, #ms do
      local key, id = key_of(ms, i)
      if key and seen[key] and not o.skip_existing then
        closeall()
        error(string.format("merge: duplicate model id %s: %s record %d and %s record %d",
          tostring(id), seen[key][1], seen[key][2], path, i), 2)
      end
      if not (key and seen[key]) then
        if key then seen[key] = {path, i} end
        copy[#copy + 1] = {ms, i}
      end
    end
  end
  local okc, dst = pcall(function()
    if append then return M.open(out, "a", {sync = false}) end
    return M.create(out, {overwrite = o.overwrite, codec = o.codec, level = o.level, sync = false})
  end)
  if not okc then closeall() error(dst, 2) end
  local ok, err = pcall(function()
    for _, c in ipairs(copy) do dst._f:copy_from(c[1]._f, c[2]) end
    dst:close() -- writes the index and syncs
  end)
  closeall()
  if not ok then
    pcall(dst.close, dst)
    if not append then os.remove(out) end -- an appended-to out keeps every record written
    error(err, 2)
  end
  return #copy
end

M.ModelSet = ModelSet
return M
