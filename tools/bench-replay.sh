#!/usr/bin/env bash
# Replay benchmark (issue #5), all in one run on loopback: record
# `redis-benchmark -t set -n N -c 50 -P 1` through the journaling proxy
# (answers journaled as digests, the default), then replay the journal with
# `--speed max` onto a fresh redis, without and with `--compare` (and
# `--settled`, as a migration catches up), and run
# the same redis-benchmark straight at a fresh redis, with 50 connections and
# with one (a serial client: the ceiling of any replay that, like the
# settled one, lets the service hold one unanswered record at a time).
# Prints a Markdown table of rates and the ratios replay ÷ redis-benchmark.
#
#   tools/bench-replay.sh            # N=200000
#   N=50000 tools/bench-replay.sh    # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
bash tools/setup.sh >/dev/null
cargo build --release --quiet --bin replaymig -p replaymig
BIN=target/release/replaymig

source tools/lib.sh

# Record through the proxy.
original=$(free_port)
start_redis "$original"
listen=$(free_port)
REPLAYMIG_LOG=warn $BIN proxy --listen 127.0.0.1:"$listen" --backend 127.0.0.1:"$original" \
  --journal "$work/journal" &
proxy=$!
pids+=($proxy)
wait_listen "$listen"
redis-benchmark -p "$listen" -t set -n "$N" -c 50 -P 1 -q >/dev/null
kill "$proxy"
wait "$proxy" 2>/dev/null || true

# redis-benchmark straight at redis: the same commands, the reference rate.
direct=$(free_port)
start_redis "$direct"
direct_rps=$(redis-benchmark -p "$direct" -t set -n "$N" -c 50 -P 1 --csv 2>/dev/null \
  | tail -n 1 | tr -d '"' | cut -d, -f2)
serial_rps=$(redis-benchmark -p "$direct" -t set -n "$N" -c 1 -P 1 --csv 2>/dev/null \
  | tail -n 1 | tr -d '"' | cut -d, -f2)

# replay_json ARGS...: onto a fresh redis, the JSON summary in $work/replay.json.
replay_run() {
  local port
  port=$(free_port)
  start_redis "$port"
  $BIN replay --journal "$work/journal" --target 127.0.0.1:"$port" --speed max --json "$@" \
    >"$work/replay.json"
}
replay_run
cp "$work/replay.json" "$work/plain.json"
replay_run --compare
cp "$work/replay.json" "$work/compare.json"
replay_run --compare --settled
cp "$work/replay.json" "$work/settled.json"

echo
echo "## replay --speed max vs redis-benchmark -t set -n $N -c 50 -P 1 ($(date -u +%F), $(nproc) cores)"
echo
python3 - "$work/plain.json" "$work/compare.json" "$work/settled.json" "$direct_rps" "$serial_rps" <<'PY'
import json, sys
plain, compare, settled = (json.load(open(p)) for p in sys.argv[1:4])
direct, serial = float(sys.argv[4]), float(sys.argv[5])
print("| run | records | data records | records/s | requests/s | MB/s | ÷ redis-benchmark -c 50 | ÷ redis-benchmark -c 1 | divergences |")
print("|---|---|---|---|---|---|---|---|---|")
print(f"| redis-benchmark -c 50 direct | - | {int(plain['data_records'])} | - | {direct:,.0f} | - | 1.00 | {direct / serial:.2f} | - |")
print(f"| redis-benchmark -c 1 direct | - | {int(plain['data_records'])} | - | {serial:,.0f} | - | {serial / direct:.2f} | 1.00 | - |")
for name, r in (("replay", plain), ("replay --compare", compare), ("replay --compare --settled (a migration's catch-up)", settled)):
    req = r["data_records"] / r["elapsed_seconds"]
    print(f"| {name} | {r['records']} | {r['data_records']} | {r['records_per_second']:,.0f} | {req:,.0f} "
          f"| {r['megabytes_per_second']:.2f} | {req / direct:.2f} | {req / serial:.2f} | {r['divergence_count']} |")
PY
echo
echo "records = every journaled record (opened, data, answer digests, closed); requests = data records."
