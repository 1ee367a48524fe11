#!/usr/bin/env bash
# The main job on an embedded default: two nodes in network namespaces
# joined by a veth pair (shaped to $RATE Mbit/s), a replaymig node agent in
# each, Redis owned by node a under continuous client load, migrated to
# node b by replay; then the report, both nodes' status, and a check that
# every acknowledged write is on b. Cleans up everything it started.
#
#   tools/demo.sh                  # exec driver (redis SAVE + restart on the RDB)
#   DRIVER=criu tools/demo.sh      # CRIU checkpoint/restore of the process
#   RATE=100 tools/demo.sh         # shape the link (Mbit/s)
#   BIN=path/to/replaymig tools/demo.sh   # use that binary (tests do)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 1; }
bash tools/setup.sh
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin replaymig
  BIN=$PWD/target/release/replaymig
fi
DRIVER=${DRIVER:-exec}
RATE=${RATE:-}
source tools/lib.sh

name=rmdemo$$
cleanup_testbed() { bash tools/testbed.sh --name "$name" down; }
trap 'cleanup; cleanup_testbed' EXIT
bash tools/testbed.sh --name "$name" ${RATE:+--rate "$RATE"} up
addr_a=$(bash tools/testbed.sh --name "$name" addr a)
addr_b=$(bash tools/testbed.sh --name "$name" addr b)
head -c 32 /dev/urandom | base64 >"$work/secret"

config() { # node other_node other_addr my_addr
  local node=$1 data="$work/$1-data"
  mkdir -p "$data"
  local start="redis-server --port {port} --bind 127.0.0.1 --dir {data_dir} --save '' --appendonly no --protected-mode no"
  local snapshot
  if [ "$DRIVER" = criu ]; then
    start="unshare --pid --fork setsid $start"
    snapshot='driver = "criu"'
  else
    snapshot='driver = "exec"
dump = ["redis-cli -p {port} SAVE", "cp {data_dir}/dump.rdb {snapshot_dir}/dump.rdb"]
restore = ["cp {snapshot_dir}/dump.rdb {data_dir}/dump.rdb"]'
  fi
  cat >"$work/$node.toml" <<TOML
name = "$node"
peer_listen = "$4:7100"
admin_listen = "127.0.0.1:7200"
secret_file = "$work/secret"
work_dir = "$work/$node-work"
[peers]
$2 = "$3:7100"
[[service]]
name = "redis"
listen = "0.0.0.0:6380"
backend = "127.0.0.1:6379"
journal = "$work/$node-journal"
owner = "a"
data_dir = "$data"
start = "$start"
ready = "redis-cli -p {port} PING | grep -q PONG"
[service.snapshot]
$snapshot
TOML
}
config a b "$addr_b" "$addr_a"
config b a "$addr_a" "$addr_b"

# exec: a backgrounded `on` is then the node process itself, so cleanup's
# kill by PID reaches it.
on() { local node=$1; shift; exec nsenter --net="/run/netns/$name-$node" "$@"; }
run_on() { (on "$@"); }
on a "$BIN" node --config "$work/a.toml" --metrics 127.0.0.1:9100 2>"$work/a.log" &
pids+=($!)
on b "$BIN" node --config "$work/b.toml" --metrics 127.0.0.1:9100 2>"$work/b.log" &
pids+=($!)
for node in a b; do
  for _ in $(seq 100); do run_on "$node" "$BIN" status >/dev/null 2>&1 && break; sleep 0.1; done
done

echo "== redis on node a ($addr_a), clients on both nodes; some data first"
run_on a redis-benchmark -h "$addr_a" -p 6380 -t set -n 20000 -r 100000 -d 512 -q 2>/dev/null | tr '\r' '\n' | grep "per second" || true
echo "== continuous load: a counter client on node a, redis-benchmark INCR on node b (tunneled)"
on a python3 - "$addr_a" >"$work/tally" <<'PY' &
import socket, sys, time
s = socket.create_connection((sys.argv[1], 6380)); f = s.makefile("rb")
n = 0; end = time.time() + 6
while time.time() < end:
    s.sendall(b"*2\r\n$4\r\nINCR\r\n$4\r\ndemo\r\n")
    line = f.readline()
    assert line == b":%d\r\n" % (n + 1), (line, n)
    n += 1
print(n)
PY
tally_pid=$!
on b redis-benchmark -h "$addr_b" -p 6380 -t incr -n 30000 -c 4 -q 2>/dev/null >"$work/bench-b" &
bench_pid=$!
sleep 1.5
echo "== replaymig migrate redis --to b  (on node a, driver $DRIVER)"
run_on a "$BIN" migrate redis --to b
wait "$tally_pid"
wait "$bench_pid" || true
echo "== status"
echo "node a:"; run_on a "$BIN" status
echo "node b:"; run_on b "$BIN" status
acked=$(cat "$work/tally")
on_b=$(run_on b redis-cli -h 127.0.0.1 -p 6379 GET demo)
echo "== migration metrics on node a (curl 127.0.0.1:9100/metrics inside its namespace)"
run_on a curl -s 127.0.0.1:9100/metrics | grep -E '^replaymig_(migrations_total|migration_(duration|interruption)_seconds_(sum|count)|migration_link_bytes_total|ownership_epoch|service_owned)' || true
echo "== the counter client got $acked acknowledgements; node b's redis says demo = $on_b"
[ "$acked" = "$on_b" ] || { echo "MISMATCH" >&2; exit 1; }
if run_on a redis-cli -h 127.0.0.1 -p 6379 PING >/dev/null 2>&1; then echo "node a's redis still runs" >&2; exit 1; fi
echo "== ok: every acknowledged write is on node b, node a's copy is stopped"
