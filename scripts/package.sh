#!/usr/bin/env bash
# Builds the Debian package: a release build of its own in build-pkg/ (prefix
# /usr, no tests), then CPack's DEB generator (packaging/install.cmake).
# Prints the path of the .deb, alone on stdout (the build talks on stderr).
# Idempotent: run again, it rebuilds only what changed and writes the
# package anew.
#   scripts/package.sh            JOBS=N for the build (default nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --package
jobs="${JOBS:-$(nproc)}"
dir=build-pkg
# Every option explicitly, as scripts/build.sh does: a cached value from an
# earlier configure must not change what is packaged.
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DPORTCULLIS_TESTS=OFF \
  -DPORTCULLIS_SANITIZE=OFF -DPORTCULLIS_PURE_ONLY=OFF -DPORTCULLIS_FUZZ=OFF >/dev/null
cmake --build "$dir" -j "$jobs" >&2   # stdout: the path of the package alone
rm -f "$dir"/portcullis_*.deb
(cd "$dir" && cpack -G DEB >&2)
deb=$(ls "$dir"/portcullis_*.deb)
echo "$PWD/$deb"
