#!/usr/bin/env bash
# Fleet mode's fault rows (issue #17), RUNS times each: every test of
# tests/fleet.rs (three node agents on a real 3-member etcd, Redis under
# checked INCR load) run on its own, one after another; prints per test how
# many runs passed, as Markdown rows for docs/reliability.md. Each test
# asserts exactly one owner serving, every acknowledged write present, and
# what `migrate` said.
#
#   RUNS=20 tools/fleet-faults.sh
#   RUNS=5 TESTS="quorum_lost_mid_migration_ends_with_the_owner_migrate_reports" tools/fleet-faults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
bash tools/setup.sh >/dev/null
bin=$(cargo test --quiet --test fleet --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "fleet" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$bin" ] || { echo "fleet-faults: the test binary was not built" >&2; exit 1; }
if [ -n "${TESTS:-}" ]; then
  read -r -a tests <<<"$TESTS"
else
  mapfile -t tests < <("$bin" --list 2>/dev/null | sed -n 's/: test$//p')
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "| fleet fault (tests/fleet.rs) | runs | passed |"
echo "|---|---:|---:|"
failed=0
for t in "${tests[@]}"; do
  pass=0
  for _ in $(seq "$RUNS"); do
    if (cd "$(pwd)" && "$bin" --exact "$t" >"$log" 2>&1); then
      pass=$((pass + 1))
    else
      failed=1
      echo "--- $t failed:" >&2
      tail -30 "$log" >&2
    fi
  done
  echo "| \`$t\` | $RUNS | $pass |"
done
exit "$failed"
