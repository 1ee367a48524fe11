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
# With --nodes N (fleet mode): N node namespaces NAME-a, NAME-b, ... and
# --etcd M etcd namespaces NAME-etcd0 ... on one bridge (in its own
# namespace NAME-br), nodes at 10.77.X.1, .2, ..., etcd members at
# 10.77.X.101, .102, ...; each node's link shaped to --rate. `exec` and
# `addr` then take any node or etcd member name (a, c, etcd1).
#   tools/testbed.sh --name rmfl --nodes 5 --etcd 3 up
#
# Idempotent: `up` first removes a testbed of the same name; `down` removes
# only what this script names (its namespaces; the veth pair goes with them).
set -euo pipefail

name=rmtb
rate=""
nodes=""
etcd=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --etcd) etcd=$2; shift 2 ;;
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
  # A bridge testbed's namespaces: exactly the names this script gives.
  local ns
  for ns in $(ip netns list | awk '{print $1}'); do
    case "$ns" in
      "$name-br" | "$name"-etcd[0-9]* | "$name"-[a-z]) ip netns del "$ns" 2>/dev/null || true ;;
    esac
  done
}

# Bridge mode: member names in order (nodes a, b, ..., then etcd0, ...).
members() {
  local i
  for i in $(seq 0 $((nodes - 1))); do printf "\\$(printf '%03o' $((97 + i)))\n"; done
  for i in $(seq 0 $((etcd - 1))); do echo "etcd$i"; done
}

# member_addr NAME: a node's or etcd member's address on the bridge.
member_addr() {
  case "$1" in
    etcd*) echo "10.77.$octet.$((101 + ${1#etcd}))" ;;
    [a-z]) echo "10.77.$octet.$(( $(printf '%d' "'$1") - 96 ))" ;;
    *) echo "no member $1" >&2; return 1 ;;
  esac
}

up_bridge() {
  down
  local br="$name-br" m ns i=0
  ip netns add "$br"
  ip -n "$br" link add br0 type bridge
  ip -n "$br" link set br0 up
  ip -n "$br" link set lo up
  for m in $(members); do
    ns="$name-$m"
    ip netns add "$ns"
    # Created inside the bridge's namespace, one end moved to the member's.
    ip -n "$br" link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n "$br" link set "v$i" master br0
    ip -n "$br" link set "v$i" up
    ip -n "$ns" addr add "$(member_addr "$m")/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    if [ -n "$rate" ] && [ "${m#etcd}" = "$m" ]; then
      shape "$ns" eth0
      shape "$br" "v$i"
    fi
    i=$((i + 1))
  done
  echo "testbed $name: $nodes nodes, $etcd etcd members on a bridge (10.77.$octet.0/24)${rate:+, nodes at ${rate} Mbit/s each way}"
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

if [ -n "$nodes" ]; then
  case "$cmd" in
    up) up_bridge ;;
    down) down ;;
    exec) m=$1; shift; member_addr "$m" >/dev/null && exec ip netns exec "$name-$m" "$@" ;;
    addr) member_addr "${1:-}" ;;
    *) echo "usage: $0 --nodes N [--etcd M] up|down|exec|addr [--name N] [--rate MBIT]" >&2; exit 2 ;;
  esac
  exit 0
fi

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
