#!/usr/bin/env bash
# Peak process RSS against the memory budget on the three runs issue 19 bounds (goal: peak RSS
# <= budget + 32 MiB per process): the default `cairn run`, the 1M-key counter (10M records) and
# a write-heavy run on a 64 MiB budget. Prints one line per run; the peak is the run's own
# sampled RSS (`memory.rss_peak_bytes` of its JSON summary).
#
#   benches/rss.sh [cairn binary]        (default: the release build; set MALLOC_ARENA_MAX to
#                                         compare allocator settings)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bin=${1:-$CARGO_TARGET_DIR/release/cairn}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { # <name> <cairn run arguments...>
    local name=$1
    shift
    "$bin" run "$@" --working-dir "$work/$name/w" --checkpoint-dir "file://$work/$name/cp" \
        --json "$work/$name.json" >/dev/null 2>&1
    python3 - "$work/$name.json" "$name" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["memory"]
rss, budget = m["rss_peak_bytes"] / 2**20, m["budget_bytes"] / 2**20
over = rss - budget
print(f"{sys.argv[2]:>12}: peak RSS {rss:7.1f} MiB, budget {budget:6.1f} MiB, "
      f"over by {over:6.1f} MiB ({'ok' if over <= 32 else 'NOT within budget + 32 MiB'})")
PY
    rm -rf "${work:?}/$name"
}
run default
run counter --workload update --records 10000000 --keys 1000000
run write-heavy --records 2000000 --keys 2000000 --value-size 512 --memory 64MiB
