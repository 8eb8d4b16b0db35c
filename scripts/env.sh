# Sourced by the project's scripts: one cargo target directory outside the clone, shared by every
# clone and CI run on this machine, so RocksDB's C++ (~26 min cold on 2 cores) compiles once.
# Every cargo command uses --release: each cargo profile would compile RocksDB again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
mkdir -p "$CARGO_TARGET_DIR"
