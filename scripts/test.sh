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
# Assigned first: a failing start must stop the script (`eval "$(...)"` would hide it).
s3_env="$(bash scripts/s3-server.sh start)"
eval "$s3_env"
trap 'bash scripts/s3-server.sh stop "$CAIRN_TEST_S3_PID"' EXIT
# Always required here, whatever the server script printed: a passing S3 test that skipped
# would only say so in a `SKIPPED:` line (tests/support/mod.rs), which CI must never rely on.
export CAIRN_TEST_S3=required
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --release"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --quiet
echo "== cargo test --release --workspace"
cargo test --release --workspace
echo "== the restore, rescale and crash suites again, restoring lazily"
# Above, every restore that does not choose its mode fetched eagerly (the default); these suites
# run again with checkpoint.restore-fetch = lazy, so a lazy restore passes every test an eager
# one passes (tests/support/mod.rs). crash_restore runs both modes itself.
export CAIRN_TEST_RESTORE_FETCH=lazy
lazy_suites=(checkpoint_restore rescale restore_hostile_metadata local_recovery savepoint ttl
  timers_checkpoint faults_checkpoint checkpoint_commit_final checkpoint_fencing rebase_policy
  state_cache_write_failure operator_state distributed_commit coordinator host_api)
cargo test --release -p cairn "${lazy_suites[@]/#/--test=}"
cargo test --release -p cairn-cli --test=rescale_cli --test=local_recovery_cli \
  --test=savepoint_cli --test=gc_across_jobs
cargo test --release -p cairn-timely --test=failover
unset CAIRN_TEST_RESTORE_FETCH
echo "== examples"
cargo run --release --example embed
cargo run --release --example checkpointing_modes
