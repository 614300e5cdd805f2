#!/bin/sh
# lua5.4 (or $LUA_BIN) against the ASan+UBSan build of the module
# (build/asan/lualps/core.so, from the repository root), the sanitizer
# runtime preloaded into lua alone. ASAN_EXTRA: more ASan options, after
# (and so over) the defaults.
exec env LD_PRELOAD="$(${CC:-cc} -print-file-name=libasan.so)" LUA_CPATH="./build/asan/?.so;;" \
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1${ASAN_EXTRA:+:$ASAN_EXTRA}" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "${LUA_BIN:-lua5.4}" "$@"
