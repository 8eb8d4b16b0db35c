#!/usr/bin/env bash
# A/B comparison of two `cairn` binaries on one `cairn run` command line, alternated over
# ROUNDS rounds (default 7: 5-round gains have turned out to be noise on these machines). The
# order flips every round (A B, B A, ...) so drift of the machine hits both alike.
#
#   scripts/ab.sh <binary A> <binary B> -- <cairn run arguments>
#   e.g. scripts/ab.sh /tmp/cairn-before target/release/cairn -- --workload update \
#          --records 10000000 --keys 1000000
#
# Each run gets a fresh working and checkpoint directory; its JSON report is kept in $OUT
# (default: a new temporary directory) as a-<round>.json / b-<round>.json. Prints one line per
# run (records/s, p50 synchronous pause) and each binary's median records/s and B/A ratio.
set -euo pipefail
[ $# -ge 3 ] && [ "$3" = "--" ] || {
    echo "usage: $0 <binary A> <binary B> -- <cairn run arguments>" >&2
    exit 2
}
a=$1
b=$2
shift 3
rounds=${ROUNDS:-7}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "ab: $rounds rounds, reports in $out"
run() { # <label> <binary> <round>
    local work
    work=$(mktemp -d)
    "$2" run "${args[@]}" --working-dir "$work/work" --checkpoint-dir "file://$work/checkpoints" \
        --json "$out/$1-$3.json" >"$out/$1-$3.log" 2>&1 || {
        echo "ab: $1 round $3 failed (see $out/$1-$3.log)" >&2
        rm -rf "$work"
        return 1
    }
    rm -rf "$work"
    python3 - "$out/$1-$3.json" "$1" "$3" <<'EOF'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
pauses = [c.get("sync_ms") for c in r.get("checkpoints", []) if c.get("sync_ms") is not None]
p50 = f"{statistics.median(pauses):.1f} ms" if pauses else "-"
print(f"{sys.argv[2]} round {sys.argv[3]}: {r['records_per_sec']:,.0f} rec/s, sync pause p50 {p50}")
EOF
}
args=("$@")
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then
        run a "$a" "$r"
        run b "$b" "$r"
    else
        run b "$b" "$r"
        run a "$a" "$r"
    fi
done
python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
med = {}
for v in "ab":
    xs = [json.load(open(f"{out}/{v}-{r}.json"))["records_per_sec"] for r in range(1, rounds + 1)]
    med[v] = statistics.median(xs)
    print(f"{v}: median {med[v]:,.0f} rec/s (min {min(xs):,.0f}, max {max(xs):,.0f})")
print(f"b/a = {med['b'] / med['a']:.3f}")
EOF
