#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and runs the proxy on the
# bundled config (127.0.0.1:2525, delivering into examples/Maildir).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
exec build/portcullis --config "${1:-examples/portcullis.toml}"
