#!/bin/sh
# Install the Debian packages lualps needs, only those missing. Idempotent:
# prints nothing and touches nothing when everything is present.
set -eu
PACKAGES="build-essential lua5.4 liblua5.4-dev libopenblas-dev libzstd-dev zlib1g-dev zstd
lua-unit luarocks dataset-fashion-mnist lua-argparse lua-cjson gnuplot-nox parallel
perl gzip clang libclang-rt-14-dev python3-torch python3-numpy
libfreetype-dev pkg-config fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-urw-base35"
missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "setup: installing missing Debian packages:$missing"
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "setup: not root and no sudo; install them with: apt-get install$missing" >&2
        exit 1
    fi
else SUDO=""; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
