#!/usr/bin/env bash
# Torture of the timely host: rounds of the supervised word count, each with 1-3 SIGKILLs of
# random processes at random moments (and a random shape after each failure: failover with
# rescale), each checked against the word count computed directly. Reports rounds, recoveries,
# committed epochs (checkpoints committed over all runs) and output mismatches (must be 0);
# exits non-zero on any mismatch or a job that did not complete.
#   scripts/timely-torture.sh                 # 10 rounds
#   ROUNDS=50 scripts/timely-torture.sh
#   OUT=dir scripts/timely-torture.sh         # per-round reports (default target/timely-torture)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. scripts/env.sh
ROUNDS="${ROUNDS:-10}"
OUT="${OUT:-target/timely-torture}"
mkdir -p "$OUT"
cargo build --release --quiet -p cairn-timely
BIN="$CARGO_TARGET_DIR/release/cairn-timely"
shapes=(1x1 1x2 2x1 2x2 1x3 3x1)
recoveries=0; commits=0; mismatches=0; failed=0
for round in $(seq 1 "$ROUNDS"); do
  dir="$(mktemp -d)"
  kills=$((RANDOM % 3 + 1))
  shape="${shapes[$((RANDOM % ${#shapes[@]}))]}"
  restart="${shapes[$((RANDOM % ${#shapes[@]}))]}"
  seed=$RANDOM
  if "$BIN" supervise --run-dir "$dir" --shape "$shape" --restart-as "$restart" --kills "$kills" \
      --kill-seed "$seed" --kill-min-ms 300 --kill-max-ms 4000 --per-epoch 500 --epochs 120 \
      --checkpoint-every 3 \
      --verify --report "$OUT/round-$round.json" >/dev/null 2>"$OUT/round-$round.err"; then
    ok=1
  else
    ok=0
  fi
  r=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["supervisor"]["recoveries"])' "$OUT/round-$round.json" 2>/dev/null || echo 0)
  exact=$(python3 -c '
import json,sys
o=json.load(open(sys.argv[1])).get("output",{})
print(int(o.get("duplicates",1)==0 and o.get("missing",1)==0 and o.get("wrong",1)==0 and o.get("checksum")==o.get("expected_checksum")))' "$OUT/round-$round.json" 2>/dev/null || echo 0)
  c=$(wc -l < "$dir/progress.jsonl" 2>/dev/null || echo 0)
  recoveries=$((recoveries + r)); commits=$((commits + c))
  [ "$exact" = 1 ] || mismatches=$((mismatches + 1))
  [ "$ok" = 1 ] || failed=$((failed + 1))
  echo "round $round: shape $shape then $restart, $kills kill(s) (seed $seed): recoveries $r, checkpoints committed $c, output exact $exact"
  [ "$ok" = 1 ] && rm -rf "$dir" || echo "  kept $dir"
done
echo "{\"rounds\": $ROUNDS, \"recoveries\": $recoveries, \"committed_checkpoints\": $commits, \"output_mismatches\": $mismatches, \"failed_rounds\": $failed}" | tee "$OUT/summary.json"
[ "$mismatches" = 0 ] && [ "$failed" = 0 ]
