#!/usr/bin/env bash
# Runs the deterministic simulation of the checkpoint protocol (crate `cairn-sim`) over many
# seeds for longer than the default test, and prints each seed's result and the totals.
#
#   scripts/sim.sh                 # seeds 1..16, 200,000 steps each
#   SEEDS=64 STEPS=2000000 scripts/sim.sh
#   FIRST=1000 SEEDS=8 scripts/sim.sh
#
# A failure prints its seed and step; rerun one seed with
#   CAIRN_SIM_SEED=<seed> CAIRN_SIM_STEPS=<step+1> CAIRN_SIM_VERBOSE=1 \
#     cargo test --release -p cairn-sim --test simulation checkpoint_protocol -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

FIRST="${FIRST:-1}"
SEEDS="${SEEDS:-16}"
STEPS="${STEPS:-200000}"

cargo test --release -p cairn-sim --test simulation --no-run >/dev/null
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed=0
start=$(date +%s)
for seed in $(seq "$FIRST" $((FIRST + SEEDS - 1))); do
  if CAIRN_SIM_SEED="$seed" CAIRN_SIM_STEPS="$STEPS" \
      cargo test --release -p cairn-sim --test simulation checkpoint_protocol -- --nocapture \
      >"$log" 2>&1; then
    grep -E '^seed ' "$log" || true
    # Keep the per-seed counters for the totals.
    sed -n '/^total:/,/^faults injected/p' "$log" >>"$log.all"
  else
    failed=$((failed + 1))
    echo "seed $seed FAILED:"
    grep -E 'simulation failed' "$log" | head -1 || tail -20 "$log"
  fi
done
end=$(date +%s)
echo
echo "== $SEEDS seeds x $STEPS steps in $((end - start)) s, $failed failed =="
if [[ -f "$log.all" ]]; then
  # Sum every number of every counter line over the seeds (same line layout per seed).
  python3 - "$log.all" <<'PY'
import re, sys
lines = [l.rstrip("\n") for l in open(sys.argv[1]) if not l.startswith("total:")]
blocks, cur = [], []
for l in lines:
    cur.append(l)
    if l.startswith("faults injected"):
        blocks.append(cur); cur = []
if blocks:
    out = blocks[0][:]
    for b in blocks[1:]:
        for i, l in enumerate(b):
            nums = [int(x) for x in re.findall(r"\d+", l)]
            j = iter(nums)
            out[i] = re.sub(r"\d+", lambda m: str(int(m.group()) + next(j)), out[i])
    print("\n".join(out))
PY
  rm -f "$log.all"
fi
exit $((failed > 0))
