#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, and every test of the workspace (unit,
# integration, doc tests), all with --release (see scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --release"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== cargo test --release --workspace"
cargo test --release --workspace
