# lualps - build, test, run. `make help` lists the targets.
#   make        set up Debian packages if missing, build lualps/core.so
#   make test   the same, then every test (LuaUnit under prove)
#   make run    the same, then the main job
CC        ?= cc
CFLAGS    ?= -O2
LUA       ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
# Always on: C11, all warnings as errors, no FMA contraction (the compiler
# never fuses on its own: bit-identical results across machines with the
# same vector units; the conv products fuse explicitly where the core has
# FMA, csrc/nn/conv_gemm_fma.c), position-independent code.
# Includes name their folder ("core/internal.h"), so -Icsrc only.
# FreeType (csrc/data/) from pkg-config, or Debian's fixed path before
# setup has installed pkg-config.
FT_CFLAGS := $(shell pkg-config --cflags freetype2 2>/dev/null || echo -I/usr/include/freetype2)
LPS_CFLAGS = -std=c11 -Wall -Wextra -Werror -ffp-contract=off -fPIC -D_POSIX_C_SOURCE=200809L -Icsrc $(FT_CFLAGS)
LIBS      = -lopenblas -lzstd -lz -lfreetype -lm -lpthread

# One folder per subsystem, bottom to top (tests/test_layout.lua checks that
# no folder includes or calls into a folder above it): core; nn, data, store,
# io; lps, eval; lua (the binding, the only code that sees Lua headers).
SUBSYSTEMS = core nn data store io lps eval
CORE_SRC  = $(foreach d,$(SUBSYSTEMS),$(wildcard csrc/$(d)/*.c))
LUA_SRC   = $(wildcard csrc/lua/*.c)
CORE_OBJ  = $(CORE_SRC:csrc/%.c=build/obj/%.o)
LUA_OBJ   = $(LUA_SRC:csrc/%.c=build/obj/%.o)
ASAN_OBJ  = $(CORE_SRC:csrc/%.c=build/asan/obj/%.o) $(LUA_SRC:csrc/%.c=build/asan/obj/%.o)
SAN       = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1

.PHONY: all lib setup test test-asan run bench docs clean install help
all: setup lib

help:
	@sed -n '2,5p' Makefile

setup:
	@scripts/setup.sh

lib: lualps/core.so build/liblualps.a

build/obj/lua/%.o: csrc/lua/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LPS_CFLAGS) -I$(LUA_INCDIR) -MMD -MP -c $< -o $@

build/obj/%.o: csrc/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LPS_CFLAGS) -MMD -MP -c $< -o $@

# The C core alone, for plain C programs (no Lua needed).
build/liblualps.a: $(CORE_OBJ)
	ar rcs $@ $^

lualps/core.so: $(CORE_OBJ) $(LUA_OBJ)
	$(CC) -shared -o $@ $^ $(LIBS)

build/asan/obj/%.o: csrc/%.c
	@mkdir -p $(dir $@)
	$(CC) $(SAN) $(LPS_CFLAGS) -I$(LUA_INCDIR) -MMD -MP -c $< -o $@

build/asan/lualps/core.so: $(ASAN_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -shared -o $@ $^ $(LIBS)

test: all
	@scripts/run_tests.sh

# The same tests against an ASan+UBSan build of the module; the stock
# lua5.4 runs it with the sanitizer runtime preloaded.
test-asan: setup lib build/asan/lualps/core.so
	@LUALPS_ASAN=1 scripts/run_tests.sh

run: all
	$(LUA) recipes/main.lua

bench: all
	$(LUA) scripts/bench_tensor.lua

# docs/API.md from the doc comments of lualps/ (tests/test_docs.lua
# fails when it is out of date).
docs:
	$(LUA) scripts/gen_api.lua docs/API.md

# Used by `luarocks make` (rockspec/lualps-scm-1.rockspec).
INST_LIBDIR ?= /usr/local/lib/lua/5.4
INST_LUADIR ?= /usr/local/share/lua/5.4
INST_BINDIR ?= /usr/local/bin
# The Lua package: the library in lualps/, its subfolders (LUA_FOLDERS).
LUA_FOLDERS = similarity bench
install: lib
	mkdir -p $(INST_LIBDIR)/lualps $(foreach d,$(LUA_FOLDERS),$(INST_LUADIR)/lualps/$(d))
	cp lualps/core.so $(INST_LIBDIR)/lualps/core.so
	cp lualps/*.lua $(INST_LUADIR)/lualps/
	$(foreach d,$(LUA_FOLDERS),cp lualps/$(d)/*.lua $(INST_LUADIR)/lualps/$(d)/ &&) true
	mkdir -p $(INST_BINDIR) && cp scripts/lualps $(INST_BINDIR)/lualps

clean:
	rm -rf build lualps/core.so

-include $(CORE_OBJ:.o=.d) $(LUA_OBJ:.o=.d) $(ASAN_OBJ:.o=.d)

# libFuzzer harness of the safetensors reader, its JSON parser and the
# "lualps.arch" parser (clang, ASan+UBSan). `make fuzz-safetensors
# FUZZ_TIME=600` runs it that many seconds; the corpus grows in
# build/fuzz/corpus_safetensors.
FUZZ_TIME ?= 60
FUZZ_SEED ?= 0
FUZZ_ST_SRC = csrc/io/safetensors.c csrc/io/json.c $(wildcard csrc/nn/*.c) $(wildcard csrc/core/*.c)
build/fuzz/fuzz_safetensors: tests/fuzz/fuzz_safetensors.c $(FUZZ_ST_SRC) csrc/lualps.h csrc/io/json.h csrc/nn/nn_internal.h
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -std=c11 -D_POSIX_C_SOURCE=200809L -Icsrc tests/fuzz/fuzz_safetensors.c $(FUZZ_ST_SRC) \
	  -o $@ -lopenblas -lz -lpthread -lm
.PHONY: fuzz-safetensors
fuzz-safetensors: build/fuzz/fuzz_safetensors
	@mkdir -p build/fuzz/corpus_safetensors
	build/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_TIME) -seed=$(FUZZ_SEED) -dict=tests/fuzz/safetensors.dict \
	  -print_final_stats=1 -artifact_prefix=build/fuzz/ \
	  build/fuzz/corpus_safetensors tests/fuzz/seeds_safetensors

# libFuzzer harness of the ModelSet reader (clang, ASan+UBSan, checksums
# bypassed with -DLPS_FUZZING so the parsers behind them get fuzzed). Seeds
# are generated from valid files. `make fuzz-smoke` runs 30 s (CI);
# `make fuzz-modelset FUZZ_SECONDS=600` runs longer; findings land in build/fuzz/.
FUZZ_SECONDS ?= 600
FUZZ_MS_SRC = $(wildcard csrc/store/*.c) csrc/core/tensor.c csrc/core/rng.c csrc/core/error.c
build/fuzz/fuzz_modelset: tests/fuzz/fuzz_modelset.c $(FUZZ_MS_SRC) csrc/lualps.h csrc/store/mset_format.h
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -DLPS_FUZZING \
	  -std=c11 -D_POSIX_C_SOURCE=200809L -Icsrc tests/fuzz/fuzz_modelset.c $(FUZZ_MS_SRC) \
	  -o $@ -lopenblas -lzstd -lz -lm
build/fuzz/seeds_modelset/.done: tests/fuzz/make_modelset_seeds.lua lualps/core.so lualps/modelset.lua
	$(LUA) tests/fuzz/make_modelset_seeds.lua build/fuzz/seeds_modelset && touch $@
.PHONY: fuzz-modelset fuzz-smoke
fuzz-modelset: build/fuzz/fuzz_modelset build/fuzz/seeds_modelset/.done
	@mkdir -p build/fuzz/corpus_modelset
	build/fuzz/fuzz_modelset -max_total_time=$(FUZZ_SECONDS) -seed=$(FUZZ_SEED) -dict=tests/fuzz/modelset.dict \
	  -print_final_stats=1 -artifact_prefix=build/fuzz/ -rss_limit_mb=2048 \
	  build/fuzz/corpus_modelset build/fuzz/seeds_modelset
# The Lua API under hostile arguments (tests/fuzz/fuzz_lua_api.lua: every
# C-backed function and method with random argument lists, each under
# pcall) against the ASan+UBSan build; a crash or sanitizer report fails it
# and leaves the call log in the sandbox it names (its last line is the
# call; a hang is killed 2 min past the time). `make fuzz-lua
# FUZZ_LUA_SECONDS=600 FUZZ_SEED=7` runs longer; the seed fixes the calls.
FUZZ_LUA_SECONDS ?= 60
.PHONY: fuzz-lua
fuzz-lua: lib build/asan/lualps/core.so
	@timeout $$(( $(FUZZ_LUA_SECONDS) + 120 )) env LUA_BIN=$(LUA) \
	  ASAN_EXTRA="allocator_may_return_null=1:max_allocation_size_mb=1024" \
	  scripts/asan_lua.sh tests/fuzz/fuzz_lua_api.lua --seed $(FUZZ_SEED) --seconds $(FUZZ_LUA_SECONDS) --quiet

# CI: both readers and the Lua API briefly, from a fixed seed (FUZZ_SEED 0 elsewhere: libFuzzer
# picks one): on a clean clone (seeds only, no corpus yet) a CI run follows
# the same sequence of inputs as the last one on the same code, as far as
# its time allows, so a finding there is less luck of the draw; `make
# fuzz-safetensors` and `make fuzz-modelset` explore further. Findings
# join the seeds (tests/fuzz/seeds_safetensors), which every run replays first.
fuzz-smoke: lib
	@$(MAKE) --no-print-directory fuzz-modelset FUZZ_SECONDS=30 FUZZ_SEED=1
	@$(MAKE) --no-print-directory fuzz-safetensors FUZZ_TIME=20 FUZZ_SEED=1
	@$(MAKE) --no-print-directory fuzz-lua FUZZ_LUA_SECONDS=20 FUZZ_SEED=1
