#!/bin/sh
# Run every LuaUnit test file under prove (TAP). With LUALPS_ASAN=1, run them
# against build/asan/lualps/core.so with the ASan runtime preloaded.
set -eu
cd "$(dirname "$0")/.."
LUA=${LUA:-lua5.4}
if [ "${LUALPS_ASAN:-0}" = 1 ]; then
    # The runtime preloaded into lua only: prove (perl) must not run under ASan.
    LUA_BIN=$LUA
    export LUA_BIN
    LUA=scripts/asan_lua.sh
    export LUALPS_TEST_SCALE="${LUALPS_TEST_SCALE:-small}"
    echo "== tests under AddressSanitizer + UndefinedBehaviorSanitizer"
fi
exec prove --exec "$LUA" ${PROVE_FLAGS:-} tests/test_*.lua
