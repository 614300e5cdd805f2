#!/bin/sh
# Run every LuaUnit test file under prove (TAP). With LUALPS_ASAN=1, run them
# against build/asan/lualps/core.so with the ASan runtime preloaded.
set -eu
cd "$(dirname "$0")/.."
LUA=${LUA:-lua5.4}
if [ "${LUALPS_ASAN:-0}" = 1 ]; then
    # Preload into lua only: prove (perl) must not run under ASan.
    LUA="env LD_PRELOAD=$(${CC:-cc} -print-file-name=libasan.so) $LUA"
    export LUA_CPATH="./build/asan/?.so;;"
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export LUALPS_TEST_SCALE="${LUALPS_TEST_SCALE:-small}"
    echo "== tests under AddressSanitizer + UndefinedBehaviorSanitizer"
fi
exec prove --exec "$LUA" ${PROVE_FLAGS:-} tests/test_*.lua
