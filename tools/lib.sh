# Shared by the tools/ scripts (sourced, not run): a temp dir and the PIDs
# of everything started, both cleaned up on exit (also on failure), a free
# loopback port, and waiting for a listener without connecting to it (a
# probe connection would be journaled by a proxy).

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # KEEP_LOGS=DIR: the node agents' logs survive the run there.
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A loopback port nobody holds, drawn below the kernel's ephemeral range
# (as crates/testkit's free_port): a port from that range can be taken by
# anyone's bind(0) or outgoing connect() before our process binds it.
free_port() {
  python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
while True:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(low - 12000, low) if low >= 16000 else 0))
    except OSError:
        continue
    print(s.getsockname()[1])
    break'
}

wait_listen() {
  local hex
  hex=$(printf ':%04X 00000000:0000 0A' "$1")
  for _ in $(seq 200); do
    grep -q "$hex" /proc/net/tcp && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

# start_redis PORT: a persistence-less redis-server in $work, tracked for cleanup.
start_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
  pids+=($!)
  wait_listen "$1"
}
