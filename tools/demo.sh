#!/usr/bin/env bash
# The main job on an embedded default: a real redis-server behind the
# journaling proxy, in a temp dir, under some load; then what the journal
# recorded. Cleans up everything it started (by PID) and its temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo build --release --quiet --bin replaymig
BIN=$PWD/target/release/replaymig

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_listen() { for _ in $(seq 200); do grep -q ":$(printf %04X "$1") 00000000:0000 0A" /proc/net/tcp && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

REDIS=$(port); PROXY=$(port); METRICS=$(port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
wait_listen "$REDIS"
echo "== redis-server on 127.0.0.1:$REDIS; replaymig proxy on 127.0.0.1:$PROXY (journal $work/journal, metrics :$METRICS)"
"$BIN" proxy --listen 127.0.0.1:"$PROXY" --backend 127.0.0.1:"$REDIS" \
  --journal "$work/journal" --metrics 127.0.0.1:"$METRICS" &
proxy_pid=$!
pids+=($proxy_pid)
wait_listen "$PROXY"

echo "== load through the proxy: redis-benchmark (20 clients) and a few commands"
redis-benchmark -p "$PROXY" -t set,get,incr,lpush -n 20000 -c 20 -q 2>/dev/null | tr '\r' '\n' | grep -v "^$" | grep "requests per second" || true
redis-cli -p "$PROXY" SET greeting "hello through the journal" >/dev/null
redis-cli -p "$PROXY" GET greeting

echo "== metrics (curl 127.0.0.1:$METRICS/metrics)"
curl -s "127.0.0.1:$METRICS/metrics" | grep -E '^replaymig_(proxy_connections_total|proxy_bytes_total|journal_appends_total|journal_last_lsn|errors_total\{kind="backend_connect"\})' || true

echo "== graceful stop (SIGTERM), then the journal"
kill -TERM "$proxy_pid"
wait "$proxy_pid"
"$BIN" journal stat --journal "$work/journal"
