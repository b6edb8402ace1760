#!/usr/bin/env bash
# Builds the release daemon and runs the benchmark (needs Postfix's smtp-source/smtp-sink).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --bench
scripts/build.sh release
exec /usr/bin/python3 bench/bench.py --bin build/portcullis "$@"
