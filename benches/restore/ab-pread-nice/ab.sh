#!/usr/bin/env bash
# Old (0be38c6) against new (pread + nice) binary, alternated, 7 rounds each, 1.7 GB file://.
set -u
cd /work/wip
out=/tmp/ab; mkdir -p $out
for r in 1 2 3 4 5 6 7; do
  if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
  for v in $order; do
    bin=/tmp/cairn-bench; [ $v = new ] && bin=/tmp/cairn-new
    $bin bench restore --sizes 1.7 --rounds 1 --dir /work/benchdata --out $out/$v-$r > $out/$v-$r.txt 2> $out/$v-$r.log
    echo "round $r $v rc=$?"
  done
done
