-- bench_store.lua: the ModelSet store against its peers, in one run.
--   lua5.4 scripts/bench_store.lua [--models 12] [--records 500] [--epochs 1]
-- Trains --models real MLPs (784-64-64-2, ModelSet500's architecture) on
-- Fashion-MNIST binary tasks with lps.nn, then reports per model: bytes and
-- ratio vs raw float32, vs the `zstd -3` CLI on the raw bytes, vs
-- torch.save; write and read MB/s of decoded tensors; time to open a
-- --records-model set and read all metadata. A 500-record set repeats the
-- trained models (each record is compressed on its own, so sizes per record
-- are those of the trained models). All figures are medians.
package.path = "./?.lua;./?/init.lua;" .. package.path
local lps = require "lualps"
local MS = lps.modelset

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
local zstd_sizes = {}
for k, p in ipairs(raw_files) do
  local h = io.popen("zstd -3 -q -c " .. p .. " | wc -c")
  zstd_sizes[k] = tonumber(h:read("a"))
  h:close()
end
local torch_sizes = {}
do
  -- Debian's python3-torch lives under the system interpreter
  local py = io.open("/usr/bin/python3") and "/usr/bin/python3" or "python3"
  local h = io.popen(py .. " scripts/bench_store_torch.py " .. table.concat(shapes, ",") .. " "
    .. table.concat(raw_files, " ") .. " 2>/dev/null")
  for line in h:lines() do torch_sizes[#torch_sizes + 1] = tonumber(line) end
  h:close()
end
local zstd_med = median(zstd_sizes)
-- zstd's own decompression speed (its in-memory benchmark, level 1 and 3)
-- on a model's raw bytes, now, on this machine: the ceiling for "read"
local function zstd_bench(level)
  local speeds = {}
  for k = 1, math.min(#raw_files, 3) do
    local h = io.popen(string.format("zstd -b%d -e%d -i1 %s 2>&1", level, level, raw_files[k]))
    local text = h:read("a")
    h:close()
    local last
    -- lines read "... <compress> MB/s, <decompress> MB/s"
    for mbs in text:gmatch("MB/s,%s*([%d%.]+) MB/s") do last = tonumber(mbs) end
    speeds[#speeds + 1] = last
  end
  return #speeds > 0 and median(speeds) or nil
end
local zstd_dec1, zstd_dec3 = zstd_bench(1), zstd_bench(3)
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
print(string.format("zstd -3 CLI on the raw bytes: %.0f bytes per model (%.3fx of raw)", zstd_med, zstd_med / raw_bytes))
if zstd_dec1 then
  print(string.format("zstd -b (in-memory) decompression of the raw bytes: %.0f MB/s at -1, %.0f MB/s at -3",
    zstd_dec1, zstd_dec3 or 0))
end
if torch_med then
  print(string.format("torch.save (PyTorch %s): %.0f bytes per model (%.3fx of raw)", "zip", torch_med, torch_med / raw_bytes))
else
  print("torch.save: python3-torch not available")
end
print()
print(string.format("%-8s %12s %12s %9s %10s %10s %10s %12s %11s %10s %12s", "codec", "frames B",
  "record B", "raw/rec", "vs zstd-3", "vs torch", "write MB/s", "(no sync)", "read MB/s", "meta ms",
  "file MB"))
for _, r in ipairs(results) do
  print(string.format("%-8s %12.0f %12.0f %8.3fx %9.3fx %9s %10.0f %12.0f %11.0f %10.2f %12.2f", r.codec, r.frames,
    r.rec, raw_bytes / r.rec, r.frames / zstd_med,
    torch_med and string.format("%.3fx", r.rec / torch_med) or "n/a",
    r.write, r.write_nosync, r.read, r.meta_ms, r.file / 1e6))
end
print()
print("frames B: the tensors' zstd frames per model; record B adds the header, tensor table and")
print("metadata JSON (spec included). vs zstd-3 compares frames; vs torch compares records.")
print("MB/s are of decoded float32 tensors; read = open + decode every tensor of every record;")
print(string.format("meta ms = open the %d-model set and decode every record's metadata.", opt.records))
local sh, bf = results[1], results[3]
print(string.format("goals: lossless %.3fx of zstd -3 (<= 0.93): %s; bf16 %.2fx smaller than raw (>= 2.7): %s; "
  .. "read %.2f GB/s (>= 1): %s", sh.frames / zstd_med, sh.frames / zstd_med <= 0.93 and "met" or "NOT met",
  raw_bytes / bf.rec, raw_bytes / bf.rec >= 2.7 and "met" or "NOT met", sh.read / 1000,
  sh.read >= 1000 and "met" or "NOT met"))
if zstd_dec3 then
  print(string.format("read (shuffle) is %.2fx the speed of zstd's own decompression of the raw bytes "
    .. "(-3) in this run", sh.read / zstd_dec3))
end
os.execute("rm -rf " .. tmpdir)
