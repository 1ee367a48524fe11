#!/usr/bin/env bash
# Proxy benchmark, all in one run on loopback, so ratios compare like with
# like on a noisy shared machine: redis-benchmark direct, through HAProxy
# (TCP mode) and through replaymig with durability none / batch / sync (answer
# digests journaled, the default) and batch with answers off / full, at
# -P 1 and -P 16. The targets run interleaved, ALT rounds of all of them
# (default 3), and each ratio to HAProxy is taken within a round (the runs
# seconds apart) and then the median over the rounds, so a slow spell of
# the shared machine hits both sides of a ratio. Then journal append
# throughput vs a raw file with one fdatasync per batch. Prints Markdown
# tables.
#
#   tools/bench-proxy.sh            # full: -n 200000 per run, 3 rounds
#   N=20000 ALT=5 tools/bench-proxy.sh
#   TARGETS="haproxy replaymig-batch" tools/bench-proxy.sh   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
CLIENTS=${CLIENTS:-50}
ALT=${ALT:-3}
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
all_targets=(direct haproxy replaymig-none replaymig-batch replaymig-batch-answers-off replaymig-batch-answers-full replaymig-sync)
read -r -a targets <<<"${TARGETS:-${all_targets[*]}}"
case " ${targets[*]} " in *" haproxy "*) ;; *) targets=(haproxy "${targets[@]}") ;; esac

results="$work/results.csv"
for P in 1 16; do
  for round in $(seq "$ALT"); do
    for t in "${targets[@]}"; do
      redis-benchmark -p "${target_port[$t]}" -t set,get -n "$N" -c "$CLIENTS" -P "$P" --csv 2>/dev/null \
        | tail -n +2 | tr -d '"' | while IFS=, read -r test rps avg min p50 p95 p99 max; do
            echo "$t,$P,$test,$round,$rps,$p50,$p99"
          done >>"$results"
    done
  done
done

echo
echo "## redis-benchmark -t set,get -n $N -c $CLIENTS, $ALT interleaved rounds ($(date -u +%F), $(nproc) cores)"
echo
python3 - "$results" <<'PY'
import csv, statistics, sys
from collections import defaultdict
runs = defaultdict(dict)  # (target, P, test) -> round -> (rps, p50, p99)
for t, p, test, rnd, rps, p50, p99 in csv.reader(open(sys.argv[1])):
    runs[(t, p, test)][rnd] = (float(rps), float(p50), float(p99))
med = statistics.median
print("| target | -P | test | req/s | p50 ms | p99 ms | req/s ÷ HAProxy | p99 ÷ HAProxy | req/s ÷ direct | rounds (req/s ÷ HAProxy) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (t, p, test), by_round in runs.items():
    hap = runs[("haproxy", p, test)]
    direct = runs.get(("direct", p, test), {})
    paired = [r for r in by_round if r in hap]
    rps_ratio = [by_round[r][0] / hap[r][0] for r in paired]
    p99_ratio = [by_round[r][2] / hap[r][2] for r in paired if hap[r][2] > 0]
    d_ratio = [by_round[r][0] / direct[r][0] for r in by_round if r in direct]
    rps, p50, p99 = (med(v[i] for v in by_round.values()) for i in range(3))
    fmt = lambda xs: f"{med(xs):.2f}" if xs else "–"
    print(f"| {t} | {p} | {test} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {fmt(rps_ratio)} | "
          f"{fmt(p99_ratio)} | {fmt(d_ratio)} | {' '.join(f'{x:.2f}' for x in rps_ratio)} |")
PY

echo
echo "## journal append throughput (64-byte records, $CLIENTS concurrent appenders)"
echo
target/release/examples/journal_append_bench --dir "$work/append-bench" --appenders "$CLIENTS"
