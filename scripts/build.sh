#!/usr/bin/env bash
# Configures and builds one flavour of the tree. Idempotent: cmake rebuilds only what changed.
#   scripts/build.sh [release|asan|fuzz]
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-release}"
targets=()  # what to build (all when empty)
jobs="${JOBS:-$(nproc)}"
# Every option is set explicitly: a cached value from an earlier configure must not change the flavour.
case "$flavour" in
  release) dir=build;      args=(-DCMAKE_BUILD_TYPE=Release -DPORTCULLIS_SANITIZE=OFF -DPORTCULLIS_PURE_ONLY=OFF -DPORTCULLIS_FUZZ=OFF) ;;
  # Line tables only (-g1): a sanitizer's or fuzzer's report still names function, file
  # and line, and the build takes a sixth less time than with full debug information.
  # (Configure a build of your own with -g to step through it in a debugger.)
  asan)    dir=build-asan; args=(-DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-g1
                                 -DPORTCULLIS_SANITIZE=ON -DPORTCULLIS_PURE_ONLY=OFF -DPORTCULLIS_FUZZ=OFF) ;;
  # The fuzzers only: the table tests beside them run in the release and ASan builds.
  fuzz)    dir=build-fuzz; args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
                                 -DPORTCULLIS_SANITIZE=OFF -DPORTCULLIS_PURE_ONLY=ON
                                 -DPORTCULLIS_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++)
           targets=(--target fuzzers) ;;
  *) echo "usage: $0 [release|asan|fuzz]" >&2; exit 2 ;;
esac
args+=(-DPORTCULLIS_TESTS=ON)
cmake -S . -B "$dir" "${args[@]}" >/dev/null
cmake --build "$dir" -j "$jobs" "${targets[@]}"
# The Python the daemon loads from this tree, byte-compiled as the installed package is
# (its postinst): where the environment sets PYTHONDONTWRITEBYTECODE, every daemon
# would compile it again (40 ms and 3 MiB of RSS per process).
/usr/bin/python3 -m compileall -q python policies >/dev/null
