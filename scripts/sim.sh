#!/usr/bin/env bash
# Runs the deterministic simulation of the checkpoint protocol (crate `cairn-sim`, see its crate
# doc) over many seeds for much longer than the default test, spread over the cores, and prints
# each seed's result and the totals.
#
#   scripts/sim.sh                          # seeds 1..16, 200,000 steps each
#   SEEDS=1..64 STEPS=2000000 scripts/sim.sh
#
# Other knobs (environment, see `SimConfig::from_env`): CAIRN_SIM_PARTIAL_EVERYWHERE=1,
# CAIRN_SIM_WORLD_STEPS=<n>. A failure prints its seed and step;
# replay it with every step printed:
#   CAIRN_SIM_SEED=<seed> CAIRN_SIM_STEPS=<step+1> CAIRN_SIM_VERBOSE=1 \
#     cargo test --release -p cairn-sim --test simulation checkpoint_protocol -- --nocapture
# (CAIRN_SIM_TRACE=1 also prints every storage effect.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

export CAIRN_SIM_SEEDS="${SEEDS:-1..16}"
export CAIRN_SIM_STEPS="${STEPS:-200000}"
echo "cairn-sim: seeds $CAIRN_SIM_SEEDS, $CAIRN_SIM_STEPS steps each"
cargo test --release -p cairn-sim --test simulation checkpoint_protocol -- --nocapture 2>&1 |
  grep -vE '^(running|test result|\s*$)|^\s+Running|^\s+Finished'
