#!/usr/bin/env bash
# Proxy benchmark, all in one run on loopback, so ratios compare like with
# like on a noisy shared machine: redis-benchmark direct, through HAProxy
# (TCP mode) and through replaymig with durability none / batch / sync (answer
# digests journaled, the default) and batch with answers off / full, at
# -P 1 and -P 16. Then journal append throughput vs a raw file with one
# fdatasync per batch. Prints Markdown tables.
#
#   tools/bench-proxy.sh            # full: -n 200000 per run
#   N=20000 tools/bench-proxy.sh    # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
CLIENTS=${CLIENTS:-50}
bash tools/setup.sh >/dev/null
cargo build --release --quiet --bin replaymig --example journal_append_bench -p replaymig -p replaymig-journal
BIN=target/release/replaymig

source tools/lib.sh

REDIS=$(free_port)
start_redis "$REDIS"

HAP=$(free_port)
cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  server redis 127.0.0.1:$REDIS
CFG
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
pids+=($!)
wait_listen "$HAP"

declare -A target_port=([direct]=$REDIS [haproxy]=$HAP)
for d in none batch sync; do
  p=$(free_port)
  REPLAYMIG_LOG=warn $BIN proxy --listen 127.0.0.1:"$p" --backend 127.0.0.1:"$REDIS" \
    --journal "$work/journal-$d" --durability "$d" &
  pids+=($!)
  wait_listen "$p"
  target_port[replaymig-$d]=$p
done
# The same batch proxy with answer journaling off and full (default: digest).
for a in off full; do
  p=$(free_port)
  REPLAYMIG_LOG=warn $BIN proxy --listen 127.0.0.1:"$p" --backend 127.0.0.1:"$REDIS" \
    --journal "$work/journal-answers-$a" --durability batch --journal-responses "$a" &
  pids+=($!)
  wait_listen "$p"
  target_port[replaymig-batch-answers-$a]=$p
done
targets=(direct haproxy replaymig-none replaymig-batch replaymig-batch-answers-off replaymig-batch-answers-full replaymig-sync)

results="$work/results.csv"
for P in 1 16; do
  for t in "${targets[@]}"; do
    redis-benchmark -p "${target_port[$t]}" -t set,get -n "$N" -c "$CLIENTS" -P "$P" --csv 2>/dev/null \
      | tail -n +2 | tr -d '"' | while IFS=, read -r test rps avg min p50 p95 p99 max; do
          echo "$t,$P,$test,$rps,$p50,$p99"
        done >>"$results"
  done
done

echo
echo "## redis-benchmark -t set,get -n $N -c $CLIENTS ($(date -u +%F), $(nproc) cores)"
echo
python3 - "$results" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
by = {(r[0], r[1], r[2]): (float(r[3]), float(r[4]), float(r[5])) for r in rows}
print("| target | -P | test | req/s | p50 ms | p99 ms | req/s vs HAProxy | p99 vs HAProxy | req/s vs direct |")
print("|---|---|---|---|---|---|---|---|---|")
for (t, p, test), (rps, p50, p99) in by.items():
    h = by[("haproxy", p, test)]
    d = by[("direct", p, test)]
    print(f"| {t} | {p} | {test} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {rps/h[0]:.2f} | {p99/h[2]:.2f} | {rps/d[0]:.2f} |")
PY

echo
echo "## journal append throughput (64-byte records, $CLIENTS concurrent appenders)"
echo
target/release/examples/journal_append_bench --dir "$work/append-bench" --appenders "$CLIENTS"
