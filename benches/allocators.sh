#!/usr/bin/env bash
# glibc malloc (2 arenas, the `cairn` binary's setting), jemalloc and mimalloc side by side on
# the three runs issue 19 bounds (peak RSS <= budget + 32 MiB): the default `cairn run`, the
# 1M-key counter and the write-heavy run on a 64 MiB budget. The allocators replace malloc for
# the whole process (RocksDB's C++ allocations included) through LD_PRELOAD, swept by
# `cairn tune --sweep env.LD_PRELOAD=...` with repetitions alternated; peak RSS is the kernel's
# high-water mark of each run. Installs Debian's libjemalloc2 and libmimalloc2.0 if missing.
#
#   benches/allocators.sh [reps (default 7)] [out dir (default benches/allocators)]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
reps=${1:-7}
out=${2:-benches/allocators}
lib=/usr/lib/x86_64-linux-gnu
jemalloc=$lib/libjemalloc.so.2
mimalloc=$lib/libmimalloc.so.2
if [[ ! -e $jemalloc || ! -e $mimalloc ]]; then
    sudo_cmd=(); [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get install -y --no-install-recommends libjemalloc2 libmimalloc2.0 >/dev/null
fi
bin=${CAIRN_BIN:-$CARGO_TARGET_DIR/release/cairn}
[[ -x $bin ]] || cargo build --release -p cairn-cli
sweep=(--sweep "env.LD_PRELOAD=\"\",$jemalloc,$mimalloc" --reps "$reps" --objective rss)
"$bin" tune --out "$out/default" "${sweep[@]}" --
"$bin" tune --out "$out/counter" "${sweep[@]}" -- --workload update --records 10000000 --keys 1000000
"$bin" tune --out "$out/write-heavy" "${sweep[@]}" -- --records 2000000 --keys 2000000 --value-size 512 --memory 64MiB
