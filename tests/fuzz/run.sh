#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzz build for a while, each over a COPY of
# its seed corpus in a temporary folder: the committed corpus never grows.
# Targets run JOBS at a time (default: one per core). Builds nothing. Exits
# non-zero when any target crashes, hangs or breaks an invariant; the
# crashing inputs are kept in BUILD_DIR/fuzz-artifacts/NAME/.
#
#   CXX=clang++ cmake -S . -B build-fuzz -DPORTCULLIS_PURE_ONLY=ON -DPORTCULLIS_FUZZ=ON
#   cmake --build build-fuzz -j2 --target fuzzers
#   tests/fuzz/run.sh build-fuzz [SECONDS_PER_TARGET]    # default 30
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 BUILD_DIR [SECONDS_PER_TARGET]" >&2
  exit 2
fi
build=$1
seconds=${2:-30}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "$0: SECONDS_PER_TARGET must be a positive integer, not '$seconds'" >&2
  exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The targets are the fuzz_*.cpp files here (tests/CMakeLists.txt builds each), each with its corpus/ folder.
targets=()
for source in "$here"/fuzz_*.cpp; do
  targets+=("$(basename "$source" .cpp)")
done
per_input_timeout=10  # seconds; longer is a hang, reported as a failure

for target in "${targets[@]}"; do
  if [[ ! -x $build/tests/$target ]]; then
    echo "$0: no $build/tests/$target (configure with -DPORTCULLIS_FUZZ=ON and build)" >&2
    exit 2
  fi
  if [[ ! -d $here/corpus/${target#fuzz_} ]]; then
    echo "$0: $target has no seed corpus in $here/corpus/${target#fuzz_}" >&2
    exit 2
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One target: its summary in $work/NAME.report, its exit status in $work/NAME.status.
fuzz_one() {
  local target=$1 name=${1#fuzz_}
  local corpus=$work/$name artifacts log=$work/$name.log report=$work/$name.report
  artifacts=$(cd "$build" && pwd)/fuzz-artifacts/$name
  mkdir -p "$corpus" "$artifacts"
  cp -R "$here/corpus/$name/." "$corpus/"
  local dict=$here/$name.dict  # a target's own tokens when it has them, else SMTP's
  [[ -f $dict ]] || dict=$here/smtp.dict

  echo "== $target: ${seconds}s over a copy of tests/fuzz/corpus/$name ($(find "$corpus" -type f | wc -l) seeds)" >"$report"
  if "$build/tests/$target" -max_total_time="$seconds" -timeout="$per_input_timeout" \
      -dict="$dict" -artifact_prefix="$artifacts/" -print_final_stats=1 "$corpus" >"$log" 2>&1; then
    { grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
      grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true; } >>"$report"
    echo 0 >"$work/$name.status"
  else
    { echo "!! $target failed; the end of its log:"; tail -n 40 "$log"; echo "!! inputs kept in $artifacts"; } >>"$report"
    echo 1 >"$work/$name.status"
  fi
}

# Targets run side by side, one per core (each is single-threaded); reports print in order.
lanes=${JOBS:-$(nproc)}
for target in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= lanes)); do wait -n || true; done
  fuzz_one "$target" &
done
wait

failed=()
for target in "${targets[@]}"; do
  name=${target#fuzz_}
  cat "$work/$name.report"
  [[ $(cat "$work/$name.status" 2>/dev/null) == 0 ]] || failed+=("$target")
done

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all fuzz targets ran clean"
