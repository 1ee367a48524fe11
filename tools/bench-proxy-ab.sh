#!/usr/bin/env bash
# Two builds of the proxy side by side, for a change to the relay path
# whose effect is smaller than this shared machine's noise between runs:
# both proxies (durability batch) in front of one Redis, ROUNDS rounds of
# redis-benchmark SETs in ABBA order, and per round the ratio B ÷ A of the
# throughput and of the CPU time the proxy process used (from /proc);
# prints every round and the medians.
#
#   tools/bench-proxy-ab.sh OLD_BINARY NEW_BINARY
#   P=1 N=60000 ROUNDS=8 tools/bench-proxy-ab.sh /tmp/replaymig-old target/release/replaymig
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 BINARY_A BINARY_B" >&2; exit 2; }
bin_a=$1 bin_b=$2
N=${N:-300000} P=${P:-16} ROUNDS=${ROUNDS:-10} CLIENTS=${CLIENTS:-50}
source tools/lib.sh

redis=$(free_port)
start_redis "$redis"
declare -A pid port
for side in a b; do
  bin=$bin_a
  [ "$side" = b ] && bin=$bin_b
  port[$side]=$(free_port)
  REPLAYMIG_LOG=warn "$bin" proxy --listen 127.0.0.1:"${port[$side]}" --backend 127.0.0.1:"$redis" \
    --journal "$work/journal-$side" --durability batch &
  pid[$side]=$!
  pids+=("${pid[$side]}")
  wait_listen "${port[$side]}"
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# run SIDE: "req/s cpu-ms" of one benchmark run through that side's proxy.
run() {
  local before after rps
  before=$(cpu_ticks "${pid[$1]}")
  rps=$(redis-benchmark -p "${port[$1]}" -t set -n "$N" -c "$CLIENTS" -P "$P" --csv 2>/dev/null \
    | tail -1 | cut -d, -f2 | tr -d '"')
  after=$(cpu_ticks "${pid[$1]}")
  echo "$rps $(( (after - before) * 1000 / $(getconf CLK_TCK) ))"
}
run a >/dev/null
run b >/dev/null
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(run a); b=$(run b); else b=$(run b); a=$(run a); fi
  echo "$a $b"
done | python3 -c '
import statistics as st, sys
rows = [list(map(float, line.split())) for line in sys.stdin]
for a_rps, a_cpu, b_rps, b_cpu in rows:
    print("A %9.0f req/s %5.0f ms   B %9.0f req/s %5.0f ms   B/A req/s %.3f cpu %.3f"
          % (a_rps, a_cpu, b_rps, b_cpu, b_rps / a_rps, b_cpu / a_cpu))
print("median B/A over %d rounds: req/s %.3f, CPU %.3f"
      % (len(rows), st.median(r[2] / r[0] for r in rows), st.median(r[3] / r[1] for r in rows)))
'
