#!/usr/bin/env bash
# Installs what building and testing Cairn needs on a fresh Debian machine.
# Idempotent and quiet when everything is already present.
#   - clang + libclang-dev: rust-rocksdb's bindgen needs libclang; RocksDB's C++ is compiled by cc.
#   - python3-venv + curl: the tests' local S3-compatible server (moto, from PyPI into a
#     project-local virtualenv under ~/.cache/cairn-venv); see scripts/s3-server.sh.
set -euo pipefail

need_pkgs=()
for pkg in clang libclang-dev g++ make python3-venv curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust via rustup first" >&2; exit 1; }

bash scripts/s3-server.sh install
