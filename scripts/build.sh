#!/usr/bin/env bash
# Configures and builds one flavour of the tree. Idempotent: cmake rebuilds only what changed.
#   scripts/build.sh [release|asan|fuzz]
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-release}"
jobs="${JOBS:-$(nproc)}"
# Every option is set explicitly: a cached value from an earlier configure must not change the flavour.
case "$flavour" in
  release) dir=build;      args=(-DCMAKE_BUILD_TYPE=Release -DPORTCULLIS_SANITIZE=OFF -DPORTCULLIS_PURE_ONLY=OFF -DPORTCULLIS_FUZZ=OFF) ;;
  asan)    dir=build-asan; args=(-DCMAKE_BUILD_TYPE=Debug -DPORTCULLIS_SANITIZE=ON -DPORTCULLIS_PURE_ONLY=OFF -DPORTCULLIS_FUZZ=OFF) ;;
  fuzz)    dir=build-fuzz; args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPORTCULLIS_SANITIZE=OFF -DPORTCULLIS_PURE_ONLY=ON
                                 -DPORTCULLIS_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++) ;;
  *) echo "usage: $0 [release|asan|fuzz]" >&2; exit 2 ;;
esac
args+=(-DPORTCULLIS_TESTS=ON)
cmake -S . -B "$dir" "${args[@]}" >/dev/null
cmake --build "$dir" -j "$jobs"
