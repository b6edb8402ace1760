#!/usr/bin/env bash
# Every test tier: installs what is missing, builds, and runs
#   1. C++ table tests of the pure layer and the config (release build)
#   2. the same under ASan/UBSan
#   3. pytest of the Python package (python/portcullis) and the policy engine, and of
#      the test DNS server against independent clients (tests/dns)
#   4. libFuzzer on the command parser, address parser and DATA decoder (bounded time)
#   5. end-to-end tests: the built daemon between real clients and real upstreams
#      (release and ASan/UBSan builds), Python policies included
# Environment: FUZZ_SECONDS (per target, default 10), JOBS (default nproc),
# E2E_WORKERS (parallel end-to-end test processes, pytest-xdist; default 3:
# the tests spend most of their time waiting on sockets and daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test

step() { printf '\n=== %s (at %d s)\n' "$*" "$SECONDS"; }  # the clock: a full run must stay well under 25 min

step "build (release)"
scripts/build.sh release
step "C++ tests (release)"
ctest --test-dir build --output-on-failure

step "build (ASan/UBSan)"
scripts/build.sh asan
step "C++ tests (ASan/UBSan)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure

# The example policies and the tests' helpers byte-compiled too (scripts/build.sh did the
# package): where the environment sets PYTHONDONTWRITEBYTECODE, every daemon and helper
# process the tests start would compile them again (the package: 150 ms a daemon under ASan).
/usr/bin/python3 -m compileall -q examples tests >/dev/null

step "Python API and engine (pytest, tests/python)"
PYTHONPATH="$PWD/python:$PWD/build/python" /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/python

step "the test DNS server and the reference SPF implementation (pytest, tests/dns)"
/usr/bin/python3 -m pytest -q -p no:cacheprovider tests/dns

step "fuzz (${FUZZ_SECONDS:-10}s per target)"
scripts/build.sh fuzz
tests/fuzz/run.sh build-fuzz "${FUZZ_SECONDS:-10}"

step "end-to-end (release daemon)"
e2e_workers=${E2E_WORKERS:-3}
PORTCULLIS_BIN="$PWD/build/portcullis" /usr/bin/python3 -m pytest -q -p no:cacheprovider -n "$e2e_workers" --durations=10 tests/e2e

step "end-to-end (ASan/UBSan daemon)"
# PYTHONMALLOC=malloc: LeakSanitizer cannot see into pymalloc's arenas, so
# the embedded interpreter (never finalised, by design) would read as leaks.
PORTCULLIS_BIN="$PWD/build-asan/portcullis" PORTCULLIS_SANITIZED=1 PYTHONMALLOC=malloc \
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  /usr/bin/python3 -m pytest -q -p no:cacheprovider -n "$e2e_workers" --durations=10 tests/e2e
