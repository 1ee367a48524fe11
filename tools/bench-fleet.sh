#!/usr/bin/env bash
# Fleet mode's registry at scale (issue #17): SERVICES services and NODES
# node agents (each its own client, lease, owner map and member map) on a
# real 3-member etcd cluster on loopback; prints agent memory, commit time,
# watch propagation to every agent, watch events per commit and the route
# lookup cost of a new connection, as a Markdown table.
#
#   tools/bench-fleet.sh                 # 1000 services, 10 agents, 200 commits
#   SERVICES=200 NODES=5 COMMITS=50 tools/bench-fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh >/dev/null
cargo run --release --quiet -p replaymig-fleet --example fleet_scale -- \
  "${SERVICES:-1000}" "${NODES:-10}" "${COMMITS:-200}"
