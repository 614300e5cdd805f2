--- The build policy of the model-set recipes (recipes/modelset500.lua,
-- modelset_hetero.lua) and of recipes/transfer_matrix.lua: their --jobs and
-- --shard options, running shard processes with GNU parallel, and merging
-- shard files. The library keeps the mechanism (lps.zoo: plan, shard
-- slicing, building plan entries into a file; lps.modelset.merge).
--   local shards = require "scripts.shards"   -- from the repository root
local lps = require "lualps"
local parts = require "scripts.parts" -- the command line rebuilt, shell words

local M = {}

local file_exists = lps.zoo.file_exists

--- Check a build recipe's common arguments a (out, jobs, shard, data)
-- before anything is trained; returns the data directory or raises with a
-- message for the user.
function M.check_args(a)
  if not a.jobs or a.jobs < 1 then error("--jobs must be an integer >= 1", 0) end
  if a.shard then
    lps.zoo.parse_shard(a.shard)
    if a.jobs > 1 then error("--shard and --jobs do not go together", 0) end
  end
  local dir = a.out:match("^(.*)/[^/]*$")
  if dir and not os.rename(dir, dir) then -- renaming to itself succeeds iff it exists
    error(("the output directory %s does not exist"):format(dir), 0)
  end
  local data_dir = a.data or os.getenv("LUALPS_DATA") or lps.data.default_dir
  for _, f in ipairs{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                     "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} do
    if not file_exists(data_dir .. "/" .. f) then
      error(("no Fashion-MNIST in %s (missing %s); install dataset-fashion-mnist or pass --data")
        :format(data_dir, f), 0)
    end
  end
  return data_dir
end

--- The files of the n shards of `out`: OUT.shard-i-of-n.
function M.paths(out, n)
  local paths = {}
  for i = 1, n do paths[i] = ("%s.shard-%d-of-%d"):format(out, i, n) end
  return paths
end

--- The command of shard {} of n (GNU parallel's placeholder) of the program
-- that runs: its command line, from `argv` (the program's `arg`: the
-- interpreter and its options at negative indices, the script at 0), as
-- shell words without --jobs and --out, then --shard {}/n --out
-- OUT.shard-{}-of-n.
function M.command(argv, n, out)
  return ("%s --shard {}/%d --out %s"):format(parts.command(argv, {"--jobs", "--out"}, {}), n,
    parts.quote(out .. ".shard-{}-of-" .. n))
end

--- Run `cmd` (a shell command with {} standing for the shard number) for
-- shards 1..n at once with GNU parallel; raises if any of them fails.
function M.run(cmd, n)
  local numbers = {}
  for i = 1, n do numbers[i] = i end
  local line = ("parallel --halt now,fail=1 --line-buffer -j %d %s ::: %s"):format(n, cmd,
    table.concat(numbers, " "))
  local ok, how, code = os.execute(line)
  if not ok then error(("a shard failed (%s %s): %s"):format(how, tostring(code), line), 0) end
end

--- Append to the set `out` (created if missing) the records of the shard
-- files (in order; missing ones are skipped) whose ids it does not hold
-- yet, byte for byte (lps.modelset.merge with skip_existing), after
-- checking that every shard was built from `fingerprint`; then remove the
-- shard files. Returns the number of records added.
function M.merge(out, paths, fingerprint)
  local present = {}
  for _, p in ipairs(paths) do
    if file_exists(p) then
      local ms <close> = lps.modelset.open(p)
      lps.zoo.stored_ids(ms, fingerprint)
      present[#present + 1] = p
    end
  end
  local added = #present > 0 and lps.modelset.merge(out, present, {skip_existing = true}) or 0
  for _, p in ipairs(paths) do os.remove(p) end
  return added
end

--- The build step of a model-set recipe from its parsed arguments a (out,
-- jobs, shard, quiet) and its `arg` table: refuse an existing file of
-- another configuration before training; with a.jobs > 1 run the recipe
-- again as that many shard processes and merge them; otherwise build the
-- shard a.shard, or everything, here. opts: those of lps.zoo.build (tasks,
-- data_dir, max_test, ...; progress is set from a.quiet). Returns the
-- seconds taken.
function M.build(a, argv, plan, opts)
  local fp = plan[1].fingerprint
  if file_exists(a.out) then -- another configuration is refused (a torn tail repaired) before training
    local ms = lps.zoo.open_for_build(a.out, fp)
    ms:close()
  end
  local t0 = lps.now()
  opts.progress = not a.quiet and {label = a.shard and ("shard " .. a.shard) or "modelset", unit = "models"}
  if a.jobs > 1 then
    -- one BLAS thread per process (lps.zoo.build's default): two of two threads would oversubscribe two cores
    if not a.quiet then io.stderr:write(("modelset: %d models in %d shards (%s)\n"):format(#plan, a.jobs, a.out)) end
    M.run(M.command(argv, a.jobs, a.out), a.jobs)
    M.merge(a.out, M.paths(a.out, a.jobs), fp)
  else
    local part = plan
    if a.shard then part = lps.zoo.shard(plan, lps.zoo.parse_shard(a.shard)) end
    local s = lps.zoo.build(part, a.out, opts)
    if not a.shard and s.stored_before > 0 and not a.quiet then
      io.stderr:write(("modelset: %d models were already stored, built %d\n"):format(s.stored_before, s.built))
    end
  end
  return lps.now() - t0
end

return M
