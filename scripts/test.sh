#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, and every test of the workspace (unit,
# integration, doc tests), all with --release (see scripts/env.sh).
# The S3 legs of the tests run against a local S3-compatible server (moto) on a free loopback port,
# started here and stopped on exit; CAIRN_TEST_S3=required makes them fail if it is unreachable.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
echo "== scripts/s3-server.sh start"
eval "$(bash scripts/s3-server.sh start)"
trap 'bash scripts/s3-server.sh stop "$CAIRN_TEST_S3_PID"' EXIT
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --release"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== cargo test --release --workspace"
cargo test --release --workspace
