--- Safetensors interop with PyTorch, both directions.
--   lua5.4 scripts/check_torch_interop.lua [--keep DIR]
-- 1. lualps builds an MLP and a CNN (strided and padded convolutions,
--    pooling with stride != kernel, tanh), exports them
--    (lualps_mlp/lualps_cnn.safetensors, architecture in "lualps.arch") with
--    inputs and outputs (lualps_io.safetensors).
-- 2. One python3 run of scripts/torch_interop.py rebuilds each
--    torch.nn.Sequential from "lualps.arch" and compares outputs, then trains
--    MLPs and a CNN with PyTorch and writes them (Sequential and fc1/fc2
--    naming; the CNN with its "lualps.arch"), their inputs/outputs, and
--    F16/BF16/F64 payloads.
-- 3. lualps imports the PyTorch models, runs forward on the same inputs and
--    compares with PyTorch's outputs; F16/BF16 must read bit-exactly.
-- Prints the maximum differences; exit status 1 if any exceeds 1e-5.
-- tests/test_safetensors.lua runs the same through M.run().
local lps = require "lualps"

local M = {TOL = 1e-5}

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- A python3 that can import torch (LUALPS_PYTHON, /usr/bin/python3, python3),
-- or nil. Child processes run with LD_PRELOAD dropped: under the ASan test
-- run it names the sanitizer runtime, which python, mktemp, rm must not load.
function M.find_python()
  local cands = {"/usr/bin/python3", "python3"}
  local env = os.getenv("LUALPS_PYTHON")
  if env and env ~= "" then table.insert(cands, 1, env) end
  for _, py in ipairs(cands) do
    do
      local ok = os.execute("env -u LD_PRELOAD " .. sh_quote(py) ..
        " -c 'import torch' >/dev/null 2>&1")
      if ok then return py end
    end
  end
  return nil
end

local function max_abs_diff(a, b)
  assert(table.concat(a:shape(), "x") == table.concat(b:shape(), "x"), "shape mismatch")
  return (a - b):abs():max()
end

-- Bit-for-bit equality of two float tensors (NaNs compared by bits).
local function same_bits(a, b)
  local fa, fb = a:reshape(-1), b:reshape(-1)
  if fa:numel() ~= fb:numel() then return false end
  for i = 1, fa:numel() do
    if string.pack("<f", fa[i]) ~= string.pack("<f", fb[i]) then return false end
  end
  return true
end

--- Run the whole check. opts: python (found if nil), dir (a fresh temporary
-- directory if nil, removed afterwards unless keep), log (function(line)).
-- Returns a table of results; raises on a broken file or a failed Python run.
function M.run(opts)
  opts = opts or {}
  local log = opts.log or function() end
  local py = opts.python or M.find_python()
  if not py then error("check_torch_interop: no python3 with torch found (apt-get install python3-torch)") end
  local dir = opts.dir
  if not dir then
    local p = io.popen("env -u LD_PRELOAD mktemp -d /tmp/lualps_interop.XXXXXX")
    dir = p:read("l")
    p:close()
  end
  local function path(name) return dir .. "/" .. name end
  local r = {dir = dir}

  -- 1. lualps -> PyTorch: a model with its own init and a short training run
  -- on random data, so the weights are not PyTorch's.
  local g = lps.generator(11)
  local model = lps.nn.mlp{784, 20, 12, 10, generator = g}
  local x = lps.rand(64, 784, g)
  local y = model:forward(x):clone()
  lps.export_safetensors(model, path("lualps_mlp.safetensors"), {source = "check_torch_interop.lua"})
  local nn = lps.nn
  -- 28 -conv3,stride2,pad1-> 14 -pool2-> 7 -conv3-> 5 -pool2,stride1-> 4: 6*4*4 = 96
  local cnn = nn.sequential{nn.conv2d(1, 4, 3, {stride = 2, padding = 1, generator = g}), nn.relu(),
    nn.maxpool2d(2), nn.conv2d(4, 6, 3, {generator = g}), nn.tanh(), nn.maxpool2d(2, {stride = 1}),
    nn.flatten(), nn.linear(96, 10, {generator = g})}
  local x_img = lps.rand(16, 1, 28, 28, g)
  local y_cnn = cnn:forward(x_img):clone()
  lps.export_safetensors(cnn, path("lualps_cnn.safetensors"), nil, {input = {1, 28, 28}})
  lps.safetensors.write(path("lualps_io.safetensors"), {x = x, y = y, x_img = x_img, y_cnn = y_cnn})

  -- 2. PyTorch: reverse check, then train and export.
  local script = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "torch_interop.py"
  local cmd = string.format("env -u LD_PRELOAD %s %s %s --tol %g 2>&1", sh_quote(py),
    sh_quote(script), sh_quote(dir), M.TOL)
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok = p:close()
  for line in out:gmatch("[^\n]+") do log("python: " .. line) end
  r.reverse = tonumber(out:match("reverse_max_abs_diff=(%S+)"))
  r.reverse_cnn = tonumber(out:match("reverse_cnn_max_abs_diff=(%S+)"))
  r.data = out:match("torch_data=([^\n]+)")
  if not r.reverse or not r.reverse_cnn or not out:match("torch_train_accuracy") then
    error("check_torch_interop: torch_interop.py failed:\n" .. out)
  end
  r.python_ok = ok and true or false

  -- 3. PyTorch -> lualps.
  local io_t = lps.safetensors.read(path("torch_io.safetensors"))
  local seq, meta = lps.import_safetensors(path("torch_seq.safetensors"))
  r.seq_meta = meta
  r.seq = max_abs_diff(seq:forward(io_t.x), io_t.y_seq)
  local fc = lps.import_safetensors(path("torch_fc.safetensors"))
  r.fc = max_abs_diff(fc:forward(io_t.x), io_t.y_fc)
  r.seq_arch, r.fc_arch = seq:arch(), fc:arch()
  local tcnn, cmeta = lps.import_safetensors(path("torch_cnn.safetensors"))
  r.cnn = max_abs_diff(tcnn:forward(io_t.x_img), io_t.y_cnn)
  r.cnn_arch, r.cnn_meta = tcnn:arch(), cmeta

  local h = lps.safetensors.read(path("torch_half.safetensors"))
  local hdr = lps.safetensors.header(path("torch_half.safetensors"))
  r.dtypes = {}
  for _, e in ipairs(hdr) do r.dtypes[e.name] = e.dtype end
  r.half_exact = same_bits(h.w_f16, h.w_f16_as_f32) and same_bits(h.special_f16, h.special_f16_as_f32)
  r.bf16_exact = same_bits(h.w_bf16, h.w_bf16_as_f32) and same_bits(h.special_bf16, h.special_bf16_as_f32)
  r.f64_exact = same_bits(h.x_f64, h.x_f64_as_f32)

  if not opts.dir and not opts.keep then os.execute("env -u LD_PRELOAD rm -rf " .. sh_quote(dir)) end
  return r
end

local function main(args)
  local keep
  if args[1] == "--keep" then keep = args[2] or error("--keep needs a directory") end
  if keep then os.execute("env -u LD_PRELOAD mkdir -p " .. sh_quote(keep)) end
  local r = M.run{dir = keep, log = print}
  print(string.format("data: %s", r.data))
  print(string.format("lualps -> torch  (784-20-12-10, exported by lualps):  max |diff| = %.3g", r.reverse))
  print(string.format("torch -> lualps  (Sequential 0./2./4. naming):        max |diff| = %.3g", r.seq))
  print(string.format("torch -> lualps  (fc1/fc2/fc3 naming, fc3 no bias):   max |diff| = %.3g", r.fc))
  print(string.format("lualps -> torch  (CNN conv/pool/tanh, lualps.arch):   max |diff| = %.3g", r.reverse_cnn))
  print(string.format("torch -> lualps  (CNN conv/pool/tanh, lualps.arch):   max |diff| = %.3g", r.cnn))
  print(string.format("F16 payloads bit-exact: %s; BF16: %s; F64 rounded exactly: %s",
    r.half_exact, r.bf16_exact, r.f64_exact))
  local good = r.python_ok and r.reverse <= M.TOL and r.seq <= M.TOL and r.fc <= M.TOL and
    r.reverse_cnn <= M.TOL and r.cnn <= M.TOL and
    r.half_exact and r.bf16_exact and r.f64_exact
  print(good and "interop: OK (tolerance 1e-5)" or "interop: FAILED")
  return good and 0 or 1
end

if arg and arg[0] and arg[0]:match("check_torch_interop%.lua$") then
  os.exit(main(arg))
end
return M
