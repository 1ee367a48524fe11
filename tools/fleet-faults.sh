#!/usr/bin/env bash
# Fleet mode's fault rows (issue #17). The scenarios (three node agents on a
# real 3-member etcd, Redis under checked INCR load; crates/chaos/src/fleet)
# run RUNS times each through the chaos campaign binary, which prints one
# Markdown row per scenario (runs, failures); then the two namespaced demos
# of tests/fleet.rs (root) run DEMO_RUNS times each. Every run asserts
# exactly one owner serving, every acknowledged write present, and what
# `migrate` said.
#
#   RUNS=20 tools/fleet-faults.sh
#   RUNS=5 SCENARIOS=quorum-lost,stale-owner DEMO_RUNS=0 tools/fleet-faults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
DEMO_RUNS=${DEMO_RUNS:-5}
bash tools/setup.sh >/dev/null
cargo build --release --quiet -p replaymig -p replaymig-chaos --bin replaymig --bin replaymig-chaos
failed=0
scenarios=()
[ -n "${SCENARIOS:-}" ] && scenarios=(--fleet-scenarios "$SCENARIOS")
target/release/replaymig-chaos --only fleet --fleet-runs "$RUNS" "${scenarios[@]}" || failed=1
[ "$DEMO_RUNS" -gt 0 ] || exit "$failed"
bin=$(cargo test --quiet --test fleet --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "fleet" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$bin" ] || { echo "fleet-faults: the test binary was not built" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo
echo "| namespaced demo (tests/fleet.rs) | runs | passed |"
echo "|---|---:|---:|"
for t in the_fleet_demo_moves_redis_across_five_namespaced_nodes \
         a_source_cut_off_from_etcd_at_the_commit_ends_as_the_registry_says; do
  pass=0
  for _ in $(seq "$DEMO_RUNS"); do
    if "$bin" --exact "$t" >"$log" 2>&1; then
      pass=$((pass + 1))
    else
      failed=1
      echo "--- $t failed:" >&2
      tail -30 "$log" >&2
    fi
  done
  echo "| \`$t\` | $DEMO_RUNS | $pass |"
done
exit "$failed"
