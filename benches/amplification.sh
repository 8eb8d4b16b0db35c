#!/usr/bin/env bash
# Incremental-checkpoint upload amplification of `cairn run`.
#
#   amplification = sum(checkpoints[].incremental_bytes) / checkpoints[-1].full_bytes
#
# i.e. what Flink's UI shows as the sum of "Checkpointed Data Size" over the run divided by the
# final "Full Checkpoint Data Size" (Flink 2.3, benches/RESULTS.md: 6.5-16.5x on the keyed counter, 4.0x on the
# 8M-key load).
#
# Usage:
#   benches/amplification.sh run LABEL WORKLOAD [CONFIG.toml]   # one run -> $OUT/LABEL-WORKLOAD-<n>.json
#   benches/amplification.sh table                              # one row per JSON in $OUT
#
#   WORKLOAD: update (10M records over 1M keys) or load (8M keys x 200 B values), both with
#             3 s checkpoints, as in the Flink comparison; mixed (4M records over 2M keys, 200 B
#             values) to see what a compaction setting costs in reads.
#   Environment: CAIRN (binary, default ~/.cache/cairn-target/release/cairn), OUT (results,
#             default /tmp/amp/results), SCRATCH (checkpoint + working dirs, default /tmp/amp),
#             REPS (runs per `run`, default 1), INTERVAL (default 3s).
#
# The config file is a CairnConfig TOML, e.g.
#   [rocksdb]
#   compaction-style = "universal"
#   universal-max-size-amplification-percent = 400
#
# Column notes for `table`:
#   amp       the figure above (depends on where the last compaction fell: the final full size
#             varies with the number of L0 files / sorted runs alive at the end)
#   up MB     total bytes uploaded by all checkpoints
#   full MB   final checkpoint size; max full MB: largest checkpoint of the run (space amplification)
#   sync      longest slot pause per checkpoint (memtable flush + hard links), p50 / max over the run
#   load      1-minute load average before the run (2 cores: above ~1 something else competed)
set -euo pipefail

CAIRN=${CAIRN:-$HOME/.cache/cairn-target/release/cairn}
OUT=${OUT:-/tmp/amp/results}
SCRATCH=${SCRATCH:-/tmp/amp}
REPS=${REPS:-1}
INTERVAL=${INTERVAL:-3s}

run_one() {
    local label=$1 workload=$2 config=${3:-}
    local args
    case $workload in
        update) args=(--workload update --records 10000000 --keys 1000000) ;;
        load) args=(--workload load --keys 8000000 --records 8000000 --value-size 200) ;;
        # Read-heavy check (value rmw, lists, maps) on a state larger than the block cache: the
        # read-amplification side of the compaction trade-off.
        mixed) args=(--workload mixed --records 4000000 --keys 2000000 --value-size 200) ;;
        *) echo "unknown workload $workload (update | load | mixed)" >&2; exit 2 ;;
    esac
    [[ -n $config ]] && args+=(--config "$config")
    mkdir -p "$OUT"
    local n=1
    while [[ -e $OUT/$label-$workload-$n.json ]]; do n=$((n + 1)); done
    local json=$OUT/$label-$workload-$n.json
    # Fresh directories: nothing left from an earlier run may be reused or counted.
    rm -rf "$SCRATCH/cp" "$SCRATCH/work"
    # Other processes on the machine change throughput, hence the number of checkpoints.
    cut -d' ' -f1 /proc/loadavg >"${json%.json}.load"
    RUST_LOG=${RUST_LOG:-error} "$CAIRN" run "${args[@]}" --checkpoint-interval "$INTERVAL" --no-checksum \
        --checkpoint-dir "$SCRATCH/cp" --working-dir "$SCRATCH/work" --json "$json" >/dev/null
    [[ -n $config ]] && cp "$config" "${json%.json}.toml"
    # Bottom-level file sizes of the final checkpoint, for reading the full size.
    find "$SCRATCH/cp" -path '*/shared/*' -type f -printf '%s\n' | sort -rn >"${json%.json}.files"
    rm -rf "$SCRATCH/cp" "$SCRATCH/work"
    table "$json"
}

table() {
    python3 - "$@" <<'EOF'
import json, statistics, sys, os, glob
files = sys.argv[1:] or sorted(glob.glob(os.path.join(os.environ.get("OUT", "/tmp/amp/results"), "*.json")))
print(f"{'run':34} {'amp':>6} {'up MB':>8} {'full MB':>8} {'max full':>8} {'ckpts':>5} {'rec/s':>9} {'sync p50':>8} {'sync max':>8} {'async p50':>9} {'load':>5}")
for f in files:
    r = json.load(open(f))
    cps = r.get("checkpoints") or []
    if not cps:
        continue
    up = sum(c["incremental_bytes"] for c in cps)
    full = cps[-1]["full_bytes"]
    sync = [c["sync_ms"] for c in cps]
    asy = [c["async_ms"] for c in cps]
    try:
        load = open(f[:-5] + ".load").read().strip()
    except OSError:
        load = "-"
    print(f"{os.path.basename(f)[:-5]:34} {up / full:6.2f} {up / 1e6:8.1f} {full / 1e6:8.1f} "
          f"{max(c['full_bytes'] for c in cps) / 1e6:8.1f} {len(cps):5d} {r['records_per_sec']:9.0f} "
          f"{statistics.median(sync):8.0f} {max(sync):8.0f} {statistics.median(asy):9.0f} {load:>5}")
EOF
}

case ${1:-} in
    run)
        shift
        [[ $# -ge 2 ]] || { echo "usage: $0 run LABEL WORKLOAD [CONFIG.toml]" >&2; exit 2; }
        for _ in $(seq "$REPS"); do run_one "$@"; done
        ;;
    table) shift; table "$@" ;;
    *) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//' | head -n -1; exit 2 ;;
esac
