#!/usr/bin/env bash
# The windowed word count on timely-dataflow across processes, supervised with failover:
# N processes x W workers on loopback (a host file per run), RocksDB state and timers,
# checkpoints every 4 epochs, exactly-once output. When a process dies the supervisor stops
# the others and restarts all of them from the latest committed checkpoint; at the end it
# checks the committed output against the word count computed directly.
#   scripts/timely-run.sh                               # 2 x 2, one process SIGKILLed mid-run
#   SHAPE=1x3 KILLS=0 scripts/timely-run.sh             # another shape, no kill
#   RESTART_AS=3x1 scripts/timely-run.sh                # restart after the kill as 3 x 1 (rescale)
#   RUN_DIR=dir scripts/timely-run.sh -- --epochs 240   # where logs/checkpoints/sink go; job flags
# Prints the supervisor's JSON report; exits non-zero if the job failed or the output differs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. scripts/env.sh
SHAPE="${SHAPE:-2x2}"
KILLS="${KILLS:-1}"
RUN_DIR="${RUN_DIR:-$(mktemp -d -t cairn-timely-XXXXXX)}"
[ "${1:-}" = "--" ] && shift
cargo build --release --quiet -p cairn-timely
restart=()
[ -n "${RESTART_AS:-}" ] && restart=(--restart-as "$RESTART_AS")
echo "== cairn-timely: $SHAPE, $KILLS kill(s), run directory $RUN_DIR" >&2
exec "$CARGO_TARGET_DIR/release/cairn-timely" supervise --shape "$SHAPE" --kills "$KILLS" \
  --kill-seed "${KILL_SEED:-$RANDOM}" --run-dir "$RUN_DIR" "${restart[@]}" --verify "$@"
