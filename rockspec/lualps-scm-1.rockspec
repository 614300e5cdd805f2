-- LuaRocks spec: `luarocks --lua-version 5.4 make --tree DIR rockspec/lualps-scm-1.rockspec`
-- builds with the project's Makefile (target `lib`) and installs through `make install`:
-- lualps/core.so, the Lua package in lualps/ with its folders similarity/ and bench/,
-- and the `lualps` command.
rockspec_format = "3.0"
package = "lualps"
version = "scm-1"
source = {
   url = "git+file://./lualps",  -- a local build; `luarocks make` uses the working tree
}
description = {
   summary = "Learnable Parameter Similarity: compare trained neural networks from their weights",
   detailed = [[
A C11 library with a Lua 5.4 binding: float32 tensors over OpenBLAS, layers and a
training loop, a compressed checksummed store of trained models, and the second-order
network of Learnable Parameter Similarity (arXiv 1907.11943).]],
   license = "MIT",
   labels = { "machine-learning", "tensor", "similarity" },
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
-- OpenBLAS, zstd, zlib, FreeType and the fonts come from Debian (scripts/setup.sh); lua-cjson and
-- lua-argparse too, so no rock dependencies are fetched.
build = {
   type = "make",
   build_target = "lib",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
      LUA_INCDIR = "$(LUA_INCDIR)",
   },
   install_target = "install",
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
      INST_LUADIR = "$(LUADIR)",
      INST_BINDIR = "$(BINDIR)",
   },
}
