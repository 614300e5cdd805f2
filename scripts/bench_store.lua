-- bench_store.lua: the ModelSet store against its peers, in one run.
--   lua5.4 scripts/bench_store.lua [--models 12] [--records 500] [--epochs 1]
-- Trains --models real MLPs (784-64-64-2, ModelSet500's architecture) on
-- Fashion-MNIST binary tasks with lps.nn, then reports per model: bytes and
-- ratio vs raw float32, vs the `zstd` CLI on the raw bytes, vs
-- torch.save (each peer at its best setting, printed); write and read MB/s
-- of decoded tensors next to zstd's own speeds; time to open a
-- --records-model set and read all metadata. A 500-record set repeats the
-- trained models (each record is compressed on its own, so sizes per record
-- are those of the trained models). All figures are medians.
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local MS = lps.modelset
local peers = require "scripts.peer_threads"

local opt = {models = 12, records = 500, epochs = 1, repeats = 5}
do
  local i = 1
  while arg[i] do
    local k = arg[i]:match("^%-%-(%w+)$")
    if not k or opt[k] == nil or not tonumber(arg[i + 1]) then
      io.stderr:write("usage: lua5.4 scripts/bench_store.lua [--models N] [--records N] [--epochs N] [--repeats N]\n")
      os.exit(2)
    end
    opt[k] = math.tointeger(tonumber(arg[i + 1]))
    i = i + 2
  end
end

local median = lps.util.median
local now = lps.now
local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p " .. tmpdir))

local function filesize(p)
  local f = assert(io.open(p, "rb"))
  local n = f:seek("end")
  f:close()
  return n
end

-- ------------------------------------------------------------ train
local tasks = dofile("recipes/modelset500_tasks.lua").tasks
local x, y = lps.data.fashion_mnist("train")
local models, metas = {}, {}
io.stderr:write(string.format("training %d models (784-64-64-2, %d epoch(s) each)...\n", opt.models, opt.epochs))
local t0 = now()
for k = 1, opt.models do
  local task = tasks[(k - 1) % #tasks + 1]
  local seed = 1000 + k
  local tx, ty = lps.data.select_classes(x, y, {task.classes[1] + 1, task.classes[2] + 1})
  local m = lps.nn.mlp{784, 64, 64, 2, generator = lps.generator(seed)}
  local rep = lps.nn.train(m, {x = tx, y = ty}, {optimizer = lps.optim.adam{lr = 1e-3},
    epochs = opt.epochs, batch_size = 64, generator = lps.generator(seed), progress = false})
  models[k] = m
  metas[k] = {task = "task" .. task.id, classes = task.classes, seed = seed, train_acc = rep.accuracy,
    epochs = opt.epochs, lr = 1e-3, arch = "784-64-64-2"}
end
io.stderr:write(string.format("trained in %.1f s\n", now() - t0))

local named = models[1]:named_parameters()
local nvalues = 0
local shapes = {}
for _, e in ipairs(named) do
  nvalues = nvalues + e.tensor:numel()
  shapes[#shapes + 1] = e.name .. ":" .. table.concat(e.tensor:shape(), "x")
end
local raw_bytes = nvalues * 4

-- raw float32 bytes of each model (little-endian, parameter order)
local raw_files = {}
for k, m in ipairs(models) do
  local parts = {}
  for _, e in ipairs(m:named_parameters()) do
    local flat = e.tensor:reshape(-1)
    local vals = {}
    for i = 1, flat:numel() do vals[i] = flat[i] end
    for i = 1, #vals, 4096 do
      local chunk = table.move(vals, i, math.min(i + 4095, #vals), 1, {})
      parts[#parts + 1] = string.pack("<" .. ("f"):rep(#chunk), table.unpack(chunk))
    end
  end
  local p = string.format("%s/model%03d.raw", tmpdir, k)
  local f = assert(io.open(p, "wb"))
  f:write(table.concat(parts))
  f:close()
  raw_files[k] = p
end

-- ------------------------------------------------------------ peers
-- The zstd CLI at its best over the levels comparable to ours (the store
-- writes level 1; 3 is the CLI's default) and its -T1/-T2 thread options:
-- the smallest size, and separately the fastest compression and
-- decompression of its in-memory benchmark (-b) on the raw bytes.
local zstd_settings = {}
for level = 1, 3 do
  for t = 1, 2 do
    zstd_settings[#zstd_settings + 1] = {level = level, T = t, label = ("-%d -T%d"):format(level, t)}
  end
end
local zstd_size_of = {} -- setting -> median bytes per model
for _, st in ipairs(zstd_settings) do
  local sizes = {}
  for k, p in ipairs(raw_files) do
    local h = io.popen(("zstd -%d -T%d -q -c %s | wc -c"):format(st.level, st.T, p))
    sizes[k] = tonumber(h:read("a"))
    h:close()
  end
  zstd_size_of[st] = median(sizes)
end
local zstd_best, neg = peers.best(zstd_settings, function(st) return -zstd_size_of[st] end)
local zstd_med = -neg
local zstd3 = zstd_size_of[zstd_settings[5]] -- -3 -T1, the goal's reference
local speed = {} -- setting -> {compress MB/s..., decompress MB/s...} over files
for _, st in ipairs(zstd_settings) do speed[st] = {c = {}, d = {}} end
for t = 1, 2 do
  for k = 1, math.min(#raw_files, 3) do
    local h = io.popen(("zstd -b1 -e3 -T%d -i1 %s 2>&1"):format(t, raw_files[k]))
    -- one line per level, ending "<compress> MB/s, <decompress> MB/s ... <level>#"
    for line in h:read("a"):gmatch("[^\n]+") do
      local level = tonumber(line:match("(%d+)#%s*$"))
      local c, d
      for c1, d1 in line:gmatch("([%d.]+) MB/s,%s*([%d.]+) MB/s") do c, d = tonumber(c1), tonumber(d1) end
      if level and c then
        local st = zstd_settings[(level - 1) * 2 + t]
        table.insert(speed[st].c, c)
        table.insert(speed[st].d, d)
      end
    end
    h:close()
  end
end
local function fastest(key)
  local st, v = peers.best(zstd_settings, function(x) return #speed[x][key] > 0 and median(speed[x][key]) or 0 end)
  if v > 0 then return st, v end
end
local zstd_cbest, zstd_cmbs = fastest("c")
local zstd_dbest, zstd_dmbs = fastest("d")
-- torch.save at its best: the smaller of its zip (default) and legacy formats
local torch_sizes, torch_best = {}, nil
do
  local by = {zip = {}, legacy = {}}
  local h = io.popen("/usr/bin/python3 scripts/bench_store_torch.py " .. table.concat(shapes, ",") .. " "
    .. table.concat(raw_files, " ") .. " 2>/dev/null")
  for line in h:lines() do
    local z, l = line:match("^(%d+) (%d+)$")
    table.insert(by.zip, tonumber(z))
    table.insert(by.legacy, tonumber(l))
  end
  h:close()
  if #by.zip > 0 then
    torch_best = median(by.zip) <= median(by.legacy) and "zip" or "legacy"
    torch_sizes = by[torch_best]
  end
end
local torch_med = #torch_sizes > 0 and median(torch_sizes) or nil

-- ------------------------------------------------------------ the store
local results = {}
for _, codec in ipairs{"shuffle", "plain", "bf16"} do
  local path = string.format("%s/set_%s.lpsm", tmpdir, codec)
  -- size per model (tensor frames and whole records)
  local write_s, write_nosync_s = {}, {}
  for rep = 1, opt.repeats do
    for _, sync in ipairs{true, false} do
      local t = now()
      local ms = MS.create(path, {codec = codec, overwrite = true, sync = sync})
      for r = 1, opt.records do
        local k = (r - 1) % #models + 1
        local meta = {}
        for kk, v in pairs(metas[k]) do meta[kk] = v end
        meta.id = "m" .. r
        ms:append(models[k], meta)
      end
      ms:close()
      local dt = now() - t
      if sync then write_s[rep] = dt else write_nosync_s[rep] = dt end
    end
  end
  local rec_bytes, frame_bytes = {}, {}
  local read_s, meta_s = {}, {}
  do
    local ms <close> = MS.open(path)
    for k = 1, #models do
      rec_bytes[k] = ms:info(k).bytes
      local s = 0
      for _, d in ipairs(ms:describe(k)) do s = s + d.stored_bytes end
      frame_bytes[k] = s
    end
  end
  for rep = 1, opt.repeats do
    local t = now()
    local ms = MS.open(path)
    for i = 1, #ms do local _ = ms:meta(i) end
    meta_s[rep] = now() - t
    t = now()
    for i = 1, #ms do local _ = ms._f:tensors(i) end
    read_s[rep] = now() - t
    ms:close()
    collectgarbage()
  end
  local decoded_mb = opt.records * raw_bytes / 1e6
  results[#results + 1] = {
    codec = codec, rec = median(rec_bytes), frames = median(frame_bytes),
    write = decoded_mb / median(write_s), write_nosync = decoded_mb / median(write_nosync_s),
    read = decoded_mb / median(read_s), meta_ms = median(meta_s) * 1000, file = filesize(path),
  }
end

-- ------------------------------------------------------------ report
print(string.format("ModelSet store benchmark: %d trained 784-64-64-2 MLPs (lps.nn, %d epoch(s), Adam), "
  .. "%d records per set, medians of %d runs", #models, opt.epochs, opt.records, opt.repeats))
print(string.format("raw float32 per model: %d bytes (%d values)", raw_bytes, nvalues))
print(string.format("zstd CLI on the raw bytes, smallest of -1..-3 x -T1/-T2: %.0f bytes per model at %s "
  .. "(%.3fx of raw; -3 -T1: %.0f)", zstd_med, zstd_best.label, zstd_med / raw_bytes, zstd3))
if zstd_dbest then
  print(string.format("zstd -b (in-memory) on the raw bytes, fastest of -1..-3 x -T1/-T2: compression %.0f MB/s "
    .. "at %s, decompression %.0f MB/s at %s", zstd_cmbs, zstd_cbest.label, zstd_dmbs, zstd_dbest.label))
end
if torch_med then
  print(string.format("torch.save, smaller of its zip and legacy formats: %.0f bytes per model at %s (%.3fx of raw)",
    torch_med, torch_best, torch_med / raw_bytes))
else
  print("torch.save: python3-torch not available")
end
print()
print(string.format("%-8s %12s %12s %9s %10s %10s %10s %12s %11s %10s %12s", "codec", "frames B",
  "record B", "raw/rec", "vs zstd", "vs torch", "write MB/s", "(no sync)", "read MB/s", "meta ms",
  "file MB"))
for _, r in ipairs(results) do
  print(string.format("%-8s %12.0f %12.0f %8.3fx %9.3fx %9s %10.0f %12.0f %11.0f %10.2f %12.2f", r.codec, r.frames,
    r.rec, raw_bytes / r.rec, r.frames / zstd_med,
    torch_med and string.format("%.3fx", r.rec / torch_med) or "n/a",
    r.write, r.write_nosync, r.read, r.meta_ms, r.file / 1e6))
end
print()
print("frames B: the tensors' zstd frames per model; record B adds the header, tensor table and")
print("metadata JSON (spec included). vs zstd compares frames; vs torch compares records.")
print("MB/s are of decoded float32 tensors; read = open + decode every tensor of every record;")
print(string.format("meta ms = open the %d-model set and decode every record's metadata.", opt.records))
local sh, bf = results[1], results[3]
print(string.format("goals: lossless %.3fx of zstd -3 (<= 0.93): %s; bf16 %.2fx smaller than raw (>= 2.7): %s; "
  .. "read %.2f GB/s (>= 1): %s", sh.frames / zstd3, sh.frames / zstd3 <= 0.93 and "met" or "NOT met",
  raw_bytes / bf.rec, raw_bytes / bf.rec >= 2.7 and "met" or "NOT met", sh.read / 1000,
  sh.read >= 1000 and "met" or "NOT met"))
if zstd_dbest then
  print(string.format("shuffle: read %.2fx zstd's fastest decompression, write (no sync) %.2fx its fastest "
    .. "compression, in this run", sh.read / zstd_dmbs, sh.write_nosync / zstd_cmbs))
end
os.execute("rm -rf " .. tmpdir)
