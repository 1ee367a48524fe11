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
#   (QUIET_MS in the environment sets the services' barrier quiet window)
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
${QUIET_MS:+quiet_ms = $QUIET_MS}
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
