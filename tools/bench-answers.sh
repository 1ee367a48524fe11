#!/usr/bin/env bash
# What journaling the service's answers costs the proxy (issue #16): two
# proxies (durability batch), one with --journal-responses digest (the
# default) and one with off, in front of one Redis; ROUNDS rounds of
# redis-benchmark SETs through each, alternating, at -P 1 and -P 16; the
# proxies' CPU time read from /proc around each run; then `replaymig
# journal stat` of both journals (records written). Prints a Markdown table.
#
#   tools/bench-answers.sh
#   N=50000 ROUNDS=3 tools/bench-answers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000} ROUNDS=${ROUNDS:-2} CLIENTS=${CLIENTS:-50}
bash tools/setup.sh >/dev/null
cargo build --release --quiet --bin replaymig
BIN=target/release/replaymig
source tools/lib.sh

redis=$(free_port)
start_redis "$redis"
declare -A pid port
for mode in digest off; do
  port[$mode]=$(free_port)
  REPLAYMIG_LOG=warn "$BIN" proxy --listen 127.0.0.1:"${port[$mode]}" --backend 127.0.0.1:"$redis" \
    --journal "$work/journal-$mode" --durability batch --journal-responses "$mode" &
  pid[$mode]=$!
  pids+=("${pid[$mode]}")
  wait_listen "${port[$mode]}"
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
echo "| -P | answers | round | req/s | proxy CPU ms per $N requests |"
echo "|---|---|---|---|---|"
for P in 1 16; do
  for round in $(seq "$ROUNDS"); do
    for mode in digest off; do
      before=$(cpu_ticks "${pid[$mode]}")
      rps=$(redis-benchmark -p "${port[$mode]}" -t set -n "$N" -c "$CLIENTS" -P "$P" -q 2>/dev/null \
        | tr '\r' '\n' | grep -a "requests per second" | tail -1 | sed 's/.*SET: \([0-9.]*\) requests.*/\1/')
      after=$(cpu_ticks "${pid[$mode]}")
      echo "| $P | $mode | $round | $rps | $(( (after - before) * 1000 / hz )) |"
    done
  done
done
echo
echo "| answers | journal records | of them answer records |"
echo "|---|---|---|"
for mode in digest off; do
  kill "${pid[$mode]}"
  wait "${pid[$mode]}" 2>/dev/null || true
  stat=$("$BIN" journal stat --journal "$work/journal-$mode")
  records=$(awk '/^records/ {print $2}' <<<"$stat")
  answers=$(awk '$1 == "answer" {print $2}' <<<"$stat")
  echo "| $mode | $records | ${answers:-0} |"
done
