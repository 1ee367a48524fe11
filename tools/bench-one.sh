#!/usr/bin/env bash
# One measured migration, for tools/bench-migration.sh:
#
#   tools/bench-one.sh METHOD WORKLOAD RATE RUN OUTDIR
#
# METHOD replay|iterative, WORKLOAD redis|detector, RATE in Mbit/s. Builds
# the two-node testbed shaped to RATE, starts the workload on node a under
# client load, migrates it to node b, checks the clients saw no error, and
# prints one CSV row (the columns of tools/bench-migration.sh); the report
# is kept as OUTDIR/runs/METHOD-WORKLOAD-RATE-RUN.json and the node logs
# next to it. Sizes come from the environment (defaults in
# tools/bench-migration.sh). Cleans up everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
method=$1 workload=$2 rate=$3 run=$4 out=$5
: "${BIN:?}" "${WORKLOAD_BIN:?}"
source tools/lib.sh
source tools/nodes.sh
tag="$method-$workload-$rate-$run"
mkdir -p "$out/runs"
save_logs() { cp "$work/a.log" "$out/runs/$tag-a.log" 2>/dev/null || true; cp "$work/b.log" "$out/runs/$tag-b.log" 2>/dev/null || true; }

nodes_up "rmb$$" "$rate"
case $workload in
  redis)
    nodes_config redis "$REDIS_START" "$REDIS_EXEC_SNAPSHOT" "$REDIS_READY"
    ;;
  detector)
    nodes_config detector \
      "unshare --pid --fork setsid $WORKLOAD_BIN serve --listen 127.0.0.1:{port} --model-mb $DET_MODEL_MB --cpu-us $DET_CPU_US --dirty-kb $DET_DIRTY_KB --working-mb $DET_WORKING_MB" \
      "driver = \"criu\"
stream = ${CRIU_STREAM:-true}" \
      "true"
    ;;
  *) echo "unknown workload $workload" >&2; exit 2 ;;
esac
nodes_start

# Load on node a until the flag file appears; its verdict in $work/load.
flag="$work/migrated"
if [ "$workload" = redis ]; then
  redis_preload "$REDIS_MB"
  on a python3 - "$addr_a" "$flag" "$REDIS_PAUSE_MS" >"$work/load" <<'PY' &
import os, socket, sys, threading, time
addr, flag, pause = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000
errors, acked = [], [0] * 4
def client(i):
    try:
        s = socket.create_connection((addr, 6380)); f = s.makefile("rb")
        n, end = 0, time.time() + 600
        while time.time() < end and not os.path.exists(flag):
            s.sendall(b"*2\r\n$4\r\nINCR\r\n$5\r\nctr:%d\r\n" % i)
            line = f.readline()
            assert line == b":%d\r\n" % (n + 1), (line, n)
            n += 1
            time.sleep(pause)
        acked[i] = n
    except Exception as e:
        errors.append("client %d: %r" % (i, e))
threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("errors=%d acked=%d %s" % (len(errors), sum(acked), "; ".join(errors)))
PY
  load_pid=$!
else
  on a "$WORKLOAD_BIN" client --addr "$addr_a:6380" --interval-ms "$DET_INTERVAL_MS" \
    --requests 1000000 --request-kb "$DET_REQUEST_KB" --connections "${DET_CONNECTIONS:-1}" >"$work/load" 2>"$work/load.err" &
  load_pid=$!
fi
pids+=("$load_pid")
sleep "${WARMUP_S:-2}"

args=(migrate "$workload" --to b --json --method "$method")
[ "$method" = iterative ] && args+=(--dirty-threshold "$DIRTY_THRESHOLD_MBPS" --max-iterations "$MAX_ITERATIONS")
ok=true
run_on a "$BIN" "${args[@]}" >"$out/runs/$tag.json" 2>"$out/runs/$tag.progress" || ok=false
sleep 1
# The load's verdict: every answer checked, no error.
if [ "$workload" = redis ]; then
  touch "$flag"; wait "$load_pid" || true
  grep -q '^errors=0 ' "$work/load" || { echo "$tag: client errors: $(cat "$work/load")" >&2; ok=false; }
else
  if kill -0 "$load_pid" 2>/dev/null; then kill "$load_pid"; wait "$load_pid" 2>/dev/null || true
  else echo "$tag: the detector client stopped: $(cat "$work/load.err")" >&2; ok=false; fi
fi
save_logs

python3 - "$out/runs/$tag.json" "$method" "$workload" "$rate" "$run" "$ok" <<'PY'
import json, sys
path, method, workload, rate, run, ok = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception:
    r = None
if r is None or ok != "true":
    print(",".join([method, workload, rate, run, "false"] + ["0"] * 12))
    sys.exit(0)
ph = dict((k, v) for k, v in r["phase_seconds"])
pre = ph.get("pre_copying", 0.0)
pre_dump = sum(i["dump_seconds"] for i in r.get("iterations", []))
catch = ph.get("catching_up", 0.0)
restore = min(r.get("destination_restore_seconds", 0.0), catch)
row = [method, workload, rate, run, "true",
       r["total_seconds"], r["interruption_seconds"], r["jitter_seconds"],
       r["snapshot_bytes"], r["log_bytes"], r["control_bytes"], len(r.get("iterations", [])),
       ph.get("dumping", 0.0) + pre_dump,
       ph.get("transferring", 0.0) + pre - pre_dump,
       restore, catch - restore,
       ph.get("connecting", 0.0) + ph.get("quiescing", 0.0) + ph.get("handing_over", 0.0) + ph.get("stopping", 0.0)]
print(",".join(str(round(x, 6)) if isinstance(x, float) else str(x) for x in row))
PY
