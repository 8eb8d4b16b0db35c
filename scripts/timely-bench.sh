#!/usr/bin/env bash
# Measurements of the timely host against the in-process `cairn run` of a stream of the same
# size and keys (uniform words): throughput of the windowed word count and the keyed counter at
# 1x1, 1x2, 2x1, 2x2 (processes x workers), checkpoint durations per epoch, recovery time after a
# SIGKILL against state size. Writes benches/timely/{bench.json,throughput.csv,checkpoints.csv,
# recovery.csv,baseline.csv,throughput.svg}.
#   scripts/timely-bench.sh
#   OUT=dir PER_EPOCH=2500 EPOCHS=60 scripts/timely-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
. scripts/env.sh
OUT="${OUT:-benches/timely}"
PER_EPOCH="${PER_EPOCH:-2500}"
EPOCHS="${EPOCHS:-60}"
VOCAB="${VOCAB:-10000}"
KEYS="${KEYS:-100000}"
cargo build --release --quiet -p cairn-timely -p cairn-cli --bin cairn-timely --bin cairn
B="$CARGO_TARGET_DIR/release"
records=$((8 * PER_EPOCH * EPOCHS))
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$OUT"
echo "workload,slots,records,keys,records_per_sec" > "$OUT/baseline.csv"
for slots in 1 2 4; do
  for w in wordcount:$VOCAB update:$KEYS; do
    kind="${w%%:*}"; keys="${w##*:}"
    "$B/cairn" run --workload "$kind" --records "$records" --keys "$keys" --slots "$slots" \
      --working-dir "$scratch/work" --checkpoint-dir "file://$scratch/cp-$kind-$slots" \
      --json "$scratch/$kind-$slots.json" >/dev/null
    rps=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["records_per_sec"]))' "$scratch/$kind-$slots.json")
    echo "cairn run $kind, $slots slot(s): $rps records/s" >&2
    echo "$kind,$slots,$records,$keys,$rps" >> "$OUT/baseline.csv"
  done
done
"$B/cairn-timely" bench --out "$OUT" --per-epoch "$PER_EPOCH" --epochs "$EPOCHS" --vocab "$VOCAB" \
  --counter-keys "$KEYS" --baseline "$OUT/baseline.csv"
cat "$OUT/throughput.csv" "$OUT/baseline.csv" "$OUT/recovery.csv"
