#!/usr/bin/env bash
# The main job on an embedded default: two nodes in network namespaces
# joined by a veth pair (shaped to $RATE Mbit/s), a replaymig node agent in
# each, Redis owned by node a under continuous client load, migrated to
# node b by replay; then the report, both nodes' status, and a check that
# every acknowledged write is on b. Cleans up everything it started.
#
#   tools/demo.sh                  # exec driver (redis SAVE + restart on the RDB)
#   DRIVER=criu tools/demo.sh      # CRIU checkpoint/restore of the process, carrying
#                                  # the client connections (the service under the
#                                  # socket holder; CARRY=0: --tcp-close instead;
#                                  # CRIU_STREAM=false: images sent after the dump)
#   RATE=100 tools/demo.sh         # shape the link (Mbit/s)
#   BIN=path/to/replaymig tools/demo.sh   # use that binary (tests do)
#   PRELOAD_MB=200 tools/demo.sh   # first write that much incompressible data through the proxy
#   LOAD_PAUSE_MS=1 tools/demo.sh  # clients pause between requests (default: as fast as they can)
#   QUIET_MS=20 tools/demo.sh      # the barrier's quiet window (default 10 ms)
#   BACK=1 tools/demo.sh           # then migrate it back to node a, under the same load
#   METHOD=iterative tools/demo.sh # the paper's baseline (pre-copy rounds) instead of replay
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

source tools/nodes.sh

nodes_up "rmdemo$$" "$RATE"
start=$REDIS_START snapshot=$REDIS_EXEC_SNAPSHOT
if [ "$DRIVER" = criu ]; then
  if [ "${CARRY:-1}" = 1 ]; then
    start="unshare --pid --fork {holder} $start"
    snapshot='driver = "criu"
carry_connections = true'
  else
    start="unshare --pid --fork setsid $start"
    snapshot='driver = "criu"'
  fi
  # CRIU_STREAM=false: the image files go after the dump, not while it runs.
  snapshot="$snapshot
stream = ${CRIU_STREAM:-true}"
fi
nodes_config redis "$start" "$snapshot" "$REDIS_READY"
nodes_start

echo "== redis on node a ($addr_a), clients on both nodes; some data first"
run_on a redis-benchmark -h "$addr_a" -p 6380 -t set -n 20000 -r 100000 -d 512 -q 2>/dev/null | tr '\r' '\n' | grep "per second" || true
if [ -n "${PRELOAD_MB:-}" ]; then
  echo "== preloading ${PRELOAD_MB} MB of random values through the proxy"
  redis_preload "$PRELOAD_MB"
fi
echo "== continuous load: 8 clients on node a (INCR on own keys, RPUSH to own lists; pipelined and not), redis-benchmark INCR on node b (tunneled, one connection)"
on a python3 - "$addr_a" "$work/migrated" >"$work/tally" <<'PY' &
import json, os, socket, sys, threading, time
addr, flag = sys.argv[1], sys.argv[2]
pause = float(os.environ.get("LOAD_PAUSE_MS") or 0) / 1000
end = time.time() + 300
tally, errors = {}, []
def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
def client(i):
    try:
        s = socket.create_connection((addr, 6380)); f = s.makefile("rb")
        kind = "incr" if i % 2 == 0 else "list"
        depth = 8 if i % 4 >= 2 else 1   # clients 2, 3, 6, 7 pipeline
        key = b"demo:%s:%d" % (kind.encode(), i)
        n = 0
        while time.time() < end and not os.path.exists(flag):
            if kind == "incr":
                cmds = [resp(b"INCR", key)] * depth
            else:
                cmds = [resp(b"RPUSH", key, b"%d" % (n + j)) for j in range(depth)]
            if pause:
                time.sleep(pause)
            s.sendall(b"".join(cmds))
            for _ in range(depth):
                line = f.readline()
                assert line == b":%d\r\n" % (n + 1), (key, line, n)
                n += 1
        tally[key.decode()] = n
    except Exception as e:
        errors.append("client %d: %r" % (i, e))
threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"tally": tally, "errors": errors}))
PY
tally_pid=$!
# One benchmark connection: redis-benchmark INCRs a single shared key, and
# several connections racing on one key are replayed faithfully only when
# Redis happened to execute them in arrival order — otherwise the answer
# check refuses the migration (docs/fidelity.md; tools/fidelity.sh measures
# that case).
on b redis-benchmark -h "$addr_b" -p 6380 -t incr -n 30000 -c 1 -q 2>/dev/null >"$work/bench-b" &
bench_pid=$!
# A client pinging every 1 ms through node a (its own process, so no other
# thread delays it): what the migration's holds cost one client, measured
# on its side, to set next to the report's interruption.
on a python3 - "$addr_a" "$work/migrated" >"$work/pings" <<'PY' &
import json, os, socket, sys, time
addr, flag = sys.argv[1], sys.argv[2]
s = socket.create_connection((addr, 6380)); f = s.makefile("rb")
gaps, last, end = [], time.monotonic(), time.time() + 300
while time.time() < end and not os.path.exists(flag):
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert f.readline() == b"+PONG\r\n"
    now = time.monotonic(); gaps.append(now - last); last = now
    time.sleep(0.001)
usual = sorted(gaps)[len(gaps) // 2]
# A stall: a gap of more than 5 ms beyond the usual one.
stalls = [g - usual for g in gaps if g - usual > 0.005]
print(json.dumps({"pings": len(gaps), "usual_ms": usual * 1e3, "longest_ms": max(gaps) * 1e3,
                  "stalls": [round(g * 1e3, 1) for g in stalls], "stalled_ms": sum(stalls) * 1e3}))
PY
ping_pid=$!
sleep 1.5
echo "== replaymig migrate redis --to b  (on node a, driver $DRIVER)"
run_on a "$BIN" migrate redis --to b ${METHOD:+--method "$METHOD"} | tee "$work/report"
sleep 1   # clients go on after the hand-over (through node b)
owner=b other=a
if [ "${BACK:-0}" = 1 ]; then
  echo "== replaymig migrate redis --to a  (on node b: back again)"
  run_on b "$BIN" migrate redis --to a | tee "$work/report-back"
  sleep 1
  owner=a other=b
fi
touch "$work/migrated"
wait "$tally_pid"
wait "$ping_pid"
wait "$bench_pid" || true
python3 - "$work/pings" "$work/report" <<'PY'
import json, re, sys
p = json.load(open(sys.argv[1]))
m = re.search(r"interruption\s+([0-9.]+) s \(hand-over hold ([0-9.]+) s\)", open(sys.argv[2]).read())
total, handover = (float(m.group(1)) * 1e3, float(m.group(2)) * 1e3) if m else (float("nan"),) * 2
print("== one client's view (PING every 1 ms, %d pings, usually %.2f ms apart): "
      "stalls of %s ms beyond the usual gap, %.1f ms in all; longest gap %.1f ms"
      % (p["pings"], p["usual_ms"], p["stalls"], p["stalled_ms"], p["longest_ms"]))
print("   the report: interruption %.1f ms (hand-over hold %.1f ms, the other holds %.1f ms)"
      % (total, handover, total - handover))
PY
echo "== status"
echo "node a:"; run_on a "$BIN" status
echo "node b:"; run_on b "$BIN" status
echo "== migration metrics on node a (curl 127.0.0.1:9100/metrics inside its namespace)"
run_on a curl -s 127.0.0.1:9100/metrics | grep -E '^replaymig_(migrations_total|migration_(duration|interruption|jitter)_seconds_(sum|count)|migration_link_bytes_total|ownership_epoch|service_owned)' || true
# Slow journal appends (a durable write waited for) on either node: the
# usual suspect when a hand-over's tail is slow.
for node in a b; do
  run_on "$node" curl -s 127.0.0.1:9100/metrics | python3 -c '
import re, sys
count = slow = 0.0
for line in sys.stdin:
    m = re.match(r"replaymig_journal_append_duration_seconds_(bucket|count)\{(.*)\} (\S+)", line)
    if not m:
        continue
    if m.group(1) == "count":
        count += float(m.group(3))
    elif "le=\"0.05\"" in m.group(2):
        slow -= float(m.group(3))
print("== node '"$node"': %d of %d journal appends took over 50 ms" % (count + slow, count))
' || true
done
# Every acknowledged write is on b exactly once: each counter equals its
# client's tally, each list holds 0..n-1 in order.
verdict=$(run_on "$owner" python3 - "$work/tally" <<'PY'
import json, socket, sys
t = json.load(open(sys.argv[1]))
s = socket.create_connection(("127.0.0.1", 6379)); f = s.makefile("rb")
def bulk(head):
    n = int(head[1:])
    return None if n < 0 else f.read(n + 2)[:-2]
def cmd(*args):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    head = f.readline()
    if head.startswith(b"$"):
        return bulk(head)
    if head.startswith(b"*"):
        return [bulk(f.readline()) for _ in range(int(head[1:]))]
    return head
acked = found = 0
bad = list(t["errors"])
for key, n in sorted(t["tally"].items()):
    acked += n
    if ":incr:" in key:
        got = int(cmd(b"GET", key.encode()) or 0)
        found += got
        if got != n:
            bad.append("%s: acked %d, b has %d" % (key, n, got))
    else:
        items = cmd(b"LRANGE", key.encode(), b"0", b"-1")
        found += len(items)
        if items != [b"%d" % i for i in range(n)]:
            bad.append("%s: list differs (acked %d, b has %d items)" % (key, n, len(items)))
if len(t["tally"]) != 8:
    bad.append("only %d of 8 clients finished" % len(t["tally"]))
print("%d %d %s" % (acked, found, "; ".join(bad)))
PY
)
read -r acked on_b problems <<<"$verdict"
echo "== the clients got $acked acknowledgements; node $owner's redis says $on_b"
[ -z "$problems" ] && [ "$acked" = "$on_b" ] || { echo "MISMATCH: $problems" >&2; exit 1; }
if run_on "$other" redis-cli -h 127.0.0.1 -p 6379 PING >/dev/null 2>&1; then echo "node $other's redis still runs" >&2; exit 1; fi
echo "== ok: every acknowledged write is on node $owner, node $other's copy is stopped"
