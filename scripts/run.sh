#!/usr/bin/env bash
# Installs what the build needs (idempotent), then runs Cairn's main job on embedded defaults:
#   scripts/run.sh                      # cairn run with defaults
#   scripts/run.sh --workload update    # any `cairn run` flags
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
exec cargo run --release --quiet --bin cairn -- run "$@"
