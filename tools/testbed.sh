#!/usr/bin/env bash
# The two-node testbed: network namespaces NAME-a and NAME-b joined by a veth
# pair (10.77.X.1 <-> 10.77.X.2), both directions shaped with htb to a rate
# (the paper's Wondershaper does the same; netem is not available here).
#
#   tools/testbed.sh [--name rmtb] [--rate 100] up   # rate in Mbit/s; omit = unshaped
#   tools/testbed.sh [--name rmtb] down
#   tools/testbed.sh [--name rmtb] exec a|b CMD...
#   tools/testbed.sh [--name rmtb] addr a|b         # prints the node's address
#
# Idempotent: `up` first removes a testbed of the same name; `down` removes
# only what this script names (its namespaces; the veth pair goes with them).
set -euo pipefail

name=rmtb
rate=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) break ;;
  esac
done
cmd=${1:-}
shift || true
# The subnet's third octet derives from the name, so testbeds of different
# names can coexist.
octet=$(( $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 200 + 20 ))
ns_a="$name-a"; ns_b="$name-b"
addr_a="10.77.$octet.1"; addr_b="10.77.$octet.2"

down() {
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
}

shape() { # ns dev
  # r2q 100 keeps htb's quantum sane at low rates (no kernel warning).
  ip netns exec "$1" tc qdisc add dev "$2" root handle 1: htb default 10 r2q 100
  ip netns exec "$1" tc class add dev "$2" parent 1: classid 1:10 htb rate "${rate}mbit" ceil "${rate}mbit"
}

up() {
  down
  ip netns add "$ns_a"
  ip netns add "$ns_b"
  # Create the pair inside A so no interface is ever left in the root namespace.
  ip -n "$ns_a" link add va type veth peer name vb netns "$ns_b"
  ip -n "$ns_a" addr add "$addr_a/24" dev va
  ip -n "$ns_b" addr add "$addr_b/24" dev vb
  for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
  ip -n "$ns_a" link set va up
  ip -n "$ns_b" link set vb up
  if [ -n "$rate" ]; then
    shape "$ns_a" va
    shape "$ns_b" vb
  fi
  echo "testbed $name: $ns_a ($addr_a) <-> $ns_b ($addr_b)${rate:+, ${rate} Mbit/s each way}"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  exec)
    node=$1; shift
    case "$node" in a) ns=$ns_a ;; b) ns=$ns_b ;; *) echo "node must be a or b" >&2; exit 2 ;; esac
    exec ip netns exec "$ns" "$@"
    ;;
  addr)
    case "${1:-}" in a) echo "$addr_a" ;; b) echo "$addr_b" ;; *) echo "node must be a or b" >&2; exit 2 ;; esac
    ;;
  *) echo "usage: $0 up|down|exec|addr [--name N] [--rate MBIT]" >&2; exit 2 ;;
esac
