# Two replaymig node agents in the testbed's network namespaces (sourced by
# tools/demo.sh and tools/bench-one.sh, after tools/lib.sh): the testbed,
# both nodes' configs for one service, starting the agents, running
# commands "on" a node. Everything started is cleaned up on exit.
#
#   nodes_up NAME [RATE]                  testbed NAME (shaped to RATE Mbit/s)
#   nodes_config SERVICE START SNAPSHOT READY
#                                         a.toml / b.toml, owner a; START and
#                                         READY are commands with {port},
#                                         {data_dir}; SNAPSHOT the TOML body of
#                                         [service.snapshot]
#   nodes_start                           both agents, metrics on 127.0.0.1:9100
#   (QUIET_MS in the environment sets the services' barrier quiet window,
#   MAX_HANDOVER_MS the bound on a replay's hand-over hold)
#   on a|b CMD...  /  run_on a|b CMD...   exec / run CMD in a node's namespace

nodes_up() {
  testbed_name=$1
  trap 'cleanup; bash tools/testbed.sh --name "$testbed_name" down' EXIT
  bash tools/testbed.sh --name "$testbed_name" ${2:+--rate "$2"} up >&2
  addr_a=$(bash tools/testbed.sh --name "$testbed_name" addr a)
  addr_b=$(bash tools/testbed.sh --name "$testbed_name" addr b)
  head -c 32 /dev/urandom | base64 >"$work/secret"
}

nodes_config() {
  local service=$1 start=$2 snapshot=$3 ready=$4 node other other_addr my_addr
  for node in a b; do
    if [ "$node" = a ]; then other=b other_addr=$addr_b my_addr=$addr_a; else other=a other_addr=$addr_a my_addr=$addr_b; fi
    mkdir -p "$work/$node-data"
    cat >"$work/$node.toml" <<TOML
name = "$node"
peer_listen = "$my_addr:7100"
admin_listen = "127.0.0.1:7200"
secret_file = "$work/secret"
work_dir = "$work/$node-work"
[peers]
$other = "$other_addr:7100"
[[service]]
name = "$service"
listen = "0.0.0.0:6380"
backend = "127.0.0.1:6379"
journal = "$work/$node-journal"
owner = "a"
data_dir = "$work/$node-data"
# The demo's and benchmarks' clients keep no per-connection state (no
# SELECT/AUTH/SUBSCRIBE), so their long-lived connections may continue at
# the destination (docs/fidelity.md); CONNECTION_STATE=unknown refuses that.
connection_state = "${CONNECTION_STATE:-none}"
${QUIET_MS:+quiet_ms = $QUIET_MS}
${MAX_HANDOVER_MS:+max_handover_ms = $MAX_HANDOVER_MS}
start = "$start"
ready = "$ready"
[service.snapshot]
$snapshot
TOML
  done
}

# exec: a backgrounded `on` is then the node process itself, so cleanup's
# kill by PID reaches it.
on() { local node=$1; shift; exec nsenter --net="/run/netns/$testbed_name-$node" "$@"; }
run_on() { (on "$@"); }

nodes_start() {
  local node
  for node in a b; do
    on "$node" "$BIN" node --config "$work/$node.toml" --metrics 127.0.0.1:9100 2>"$work/$node.log" &
    pids+=($!)
  done
  for node in a b; do
    for _ in $(seq 100); do run_on "$node" "$BIN" status >/dev/null 2>&1 && break; sleep 0.1; done
    run_on "$node" "$BIN" status >/dev/null 2>&1 || { echo "node $node did not start:" >&2; cat "$work/$node.log" >&2; exit 1; }
  done
}

# Redis as a node service (for nodes_config): its start command, its
# readiness check, and the exec driver's BGSAVE snapshot — BGSAVE fixes
# the snapshot point at its fork, so input is held only that long; the
# child writes the RDB straight into the snapshot directory (CONFIG SET
# dir, allowed from loopback by --enable-protected-configs local) while the
# service serves again, and the node streams the file as it grows.
REDIS_START="redis-server --port {port} --bind 127.0.0.1 --dir {data_dir} --save '' --appendonly no --protected-mode no --enable-protected-configs local"
REDIS_READY="redis-cli -p {port} PING | grep -q PONG"
REDIS_EXEC_SNAPSHOT='driver = "exec"
dump = [
  "printf '"'"'CONFIG SET dir %s\\nBGSAVE\\n'"'"' {snapshot_dir} | redis-cli -p {port} | tr -d '"'"'\\n'"'"' | grep -q ^OKBackground.saving.started$",
  "while redis-cli -p {port} INFO persistence | grep -q rdb_bgsave_in_progress:1; do sleep 0.01; done; ok=$(redis-cli -p {port} INFO persistence | grep -c rdb_last_bgsave_status:ok); redis-cli -p {port} CONFIG SET dir {data_dir} >/dev/null; [ $ok = 1 ]",
]
point_fixed_after = 1
restore = ["cp {snapshot_dir}/dump.rdb {data_dir}/dump.rdb"]'

# redis_preload MB: that much incompressible data SET through node a's proxy.
redis_preload() {
  run_on a python3 - "$addr_a" "$1" <<'PY'
import os, socket, sys
s = socket.create_connection((sys.argv[1], 6380)); f = s.makefile("rb")
size, batch = 4096, 64
for i in range(int(sys.argv[2]) * 1024 * 1024 // size // batch):
    s.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$12\r\nbig:%08d\r\n$%d\r\n%s\r\n" % (i * batch + j, size, os.urandom(size)) for j in range(batch)))
    for _ in range(batch):
        assert f.readline() == b"+OK\r\n"
PY
}
