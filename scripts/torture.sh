#!/usr/bin/env bash
# Long kill -9 torture of checkpoints (`cairn torture`) against the local directory and the
# loopback S3 server (started here, stopped on exit). Prints per-round progress and a JSON
# report per storage; exits non-zero if any round lost committed state or leaked files.
#   scripts/torture.sh                 # 200 rounds on each storage
#   ROUNDS=500 scripts/torture.sh      # more rounds
#   OUT=dir scripts/torture.sh         # where the JSON reports go (default target/torture)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
ROUNDS="${ROUNDS:-200}"
OUT="${OUT:-target/torture}"
mkdir -p "$OUT"
# Assigned first: a failing start must stop the script (`eval "$(...)"` would hide it).
s3_env="$(bash scripts/s3-server.sh start)"
eval "$s3_env"
trap 'bash scripts/s3-server.sh stop "$CAIRN_TEST_S3_PID"' EXIT
cargo build --release --quiet --bin cairn
CAIRN="$CARGO_TARGET_DIR/release/cairn"
scratch="$(mktemp -d)"
trap 'bash scripts/s3-server.sh stop "$CAIRN_TEST_S3_PID"; rm -rf "$scratch"' EXIT

echo "== torture: $ROUNDS rounds on file://"
"$CAIRN" torture --rounds "$ROUNDS" --checkpoint-dir "file://$scratch/checkpoints" \
  --work-dir "$scratch/work-file" --json "$OUT/torture-file.json" >/dev/null

echo "== torture: $ROUNDS rounds on s3:// ($CAIRN_TEST_S3_ENDPOINT)"
AWS_ENDPOINT_URL="$CAIRN_TEST_S3_ENDPOINT" AWS_ALLOW_HTTP=true \
  "$CAIRN" torture --rounds "$ROUNDS" --checkpoint-dir "s3://$CAIRN_TEST_S3_BUCKET/torture-$$" \
  --work-dir "$scratch/work-s3" --json "$OUT/torture-s3.json" >/dev/null

echo "== reports"
cat "$OUT/torture-file.json" "$OUT/torture-s3.json"
