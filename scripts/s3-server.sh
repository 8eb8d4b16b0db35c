#!/usr/bin/env bash
# A local S3-compatible server (moto) on 127.0.0.1 for tests, in a project-local virtualenv.
#
#   scripts/s3-server.sh install        # create the venv and install moto[server] (idempotent)
#   eval "$(scripts/s3-server.sh start)"  # start on a free port; prints the env exports
#   scripts/s3-server.sh stop [PID]     # stop the server `start` started (PID or $CAIRN_TEST_S3_PID)
#
# `start` prints `export` lines for the tests:
#   CAIRN_TEST_S3_ENDPOINT   http://127.0.0.1:<port>
#   CAIRN_TEST_S3_BUCKET     the bucket created for the tests (object_store cannot create buckets)
#   CAIRN_TEST_S3=required   S3 tests must FAIL (not skip) when the server is unreachable
#   CAIRN_TEST_S3_PID        the server's pid (what `stop` kills)
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION: moto accepts any signed request;
#                            unsigned requests get 403.
# The server keeps its state in memory: stopping it discards every object.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CAIRN_VENV:-$HOME/.cache/cairn-venv}"
MOTO_SPEC="moto[server]>=5.1,<6"
BUCKET="${CAIRN_TEST_S3_BUCKET:-cairn-test}"
STATE_DIR="${CAIRN_S3_STATE_DIR:-${TMPDIR:-/tmp}/cairn-s3-$(id -u)}"

install() {
  if [ -x "$VENV/bin/moto_server" ]; then
    return 0
  fi
  echo "s3-server: installing $MOTO_SPEC into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$MOTO_SPEC"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  install
  mkdir -p "$STATE_DIR"
  local port pid log url i
  port="$(free_port)"
  log="$STATE_DIR/moto-$port.log"
  # setsid: the server gets its own process group, so `stop` ends exactly it and its children.
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  pid=$!
  url="http://127.0.0.1:$port"
  for i in $(seq 1 100); do
    if curl -fsS -o /dev/null "$url/moto-api/" 2>/dev/null; then
      break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "s3-server: moto exited; log:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if ! curl -fsS -o /dev/null -X PUT "$url/$BUCKET"; then
    echo "s3-server: moto did not answer on $url within 10 s; log:" >&2
    cat "$log" >&2
    kill -- -"$pid" 2>/dev/null || true
    exit 1
  fi
  echo "s3-server: moto (pid $pid) on $url, bucket $BUCKET" >&2
  cat <<EOT
export CAIRN_TEST_S3_ENDPOINT=$url
export CAIRN_TEST_S3_BUCKET=$BUCKET
export CAIRN_TEST_S3=required
export CAIRN_TEST_S3_PID=$pid
export AWS_ACCESS_KEY_ID=cairn-test
export AWS_SECRET_ACCESS_KEY=cairn-test
export AWS_REGION=us-east-1
EOT
}

stop() {
  # Several clones may run tests on one machine at once: stop only the pid given, never by name.
  local pid="${1:-${CAIRN_TEST_S3_PID:-}}"
  [ -n "$pid" ] || { echo "s3-server: no pid to stop" >&2; return 0; }
  kill -- -"$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  echo "s3-server: stopped pid $pid" >&2
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
