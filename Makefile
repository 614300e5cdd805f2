# lualps - build, test, run. `make help` lists the targets.
#   make        set up Debian packages if missing, build lualps/core.so
#   make test   the same, then every test (LuaUnit under prove)
#   make run    the same, then the main job
CC        ?= cc
CFLAGS    ?= -O2
LUA       ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
# Always on: C11, all warnings as errors, no FMA contraction (bit-identical
# results across machines of one architecture), position-independent code.
LPS_CFLAGS = -std=c11 -Wall -Wextra -Werror -ffp-contract=off -fPIC -D_POSIX_C_SOURCE=200809L
LIBS      = -lopenblas -lzstd -lz -lm -lpthread

CORE_SRC  = $(wildcard csrc/*.c)
LUA_SRC   = $(wildcard csrc/lua/*.c)
CORE_OBJ  = $(CORE_SRC:csrc/%.c=build/obj/%.o)
LUA_OBJ   = $(LUA_SRC:csrc/lua/%.c=build/obj/lua/%.o)
ASAN_OBJ  = $(CORE_SRC:csrc/%.c=build/asan/obj/%.o) $(LUA_SRC:csrc/lua/%.c=build/asan/obj/lua/%.o)
SAN       = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1

.PHONY: all lib setup test test-asan test-rock run bench clean install help
all: setup lib

help:
	@sed -n '2,5p' Makefile

setup:
	@scripts/setup.sh

lib: lualps/core.so build/liblualps.a

build/obj/%.o: csrc/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LPS_CFLAGS) -MMD -MP -c $< -o $@

build/obj/lua/%.o: csrc/lua/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LPS_CFLAGS) -I$(LUA_INCDIR) -MMD -MP -c $< -o $@

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
test-asan: setup build/asan/lualps/core.so
	@LUALPS_ASAN=1 scripts/run_tests.sh

# Install through LuaRocks into a scratch tree and use it from elsewhere.
test-rock: setup
	@scripts/test_rock.sh

run: all
	$(LUA) recipes/main.lua

bench: all
	$(LUA) scripts/bench_tensor.lua

# Used by `luarocks make` (rockspec/lualps-scm-1.rockspec).
INST_LIBDIR ?= /usr/local/lib/lua/5.4
INST_LUADIR ?= /usr/local/share/lua/5.4
INST_BINDIR ?= /usr/local/bin
install: lib
	mkdir -p $(INST_LIBDIR)/lualps $(INST_LUADIR)/lualps
	cp lualps/core.so $(INST_LIBDIR)/lualps/core.so
	cp lualps/*.lua $(INST_LUADIR)/lualps/

clean:
	rm -rf build lualps/core.so

-include $(CORE_OBJ:.o=.d) $(LUA_OBJ:.o=.d) $(ASAN_OBJ:.o=.d)
