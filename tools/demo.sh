#!/usr/bin/env bash
# The main job on an embedded default: a real redis-server behind the
# journaling proxy, in a temp dir, under some load; then what the journal
# recorded. Cleans up everything it started (by PID) and its temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo build --release --quiet --bin replaymig
BIN=$PWD/target/release/replaymig

source tools/lib.sh

REDIS=$(free_port); PROXY=$(free_port); METRICS=$(free_port)
start_redis "$REDIS"
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
