#!/usr/bin/env bash
# Installs, idempotently, what replaymig's demo, tests and benchmarks need on a
# fresh Debian 12 machine. Safe to run again: it installs only what is missing.
set -euo pipefail

# redis-server/redis-tools: the real service the tests and the demo journal.
# haproxy: the reference L4 proxy tools/bench-proxy.sh compares against.
# iproute2: namespaces and tc for the two-node testbed.
# iptables: CRIU locks the network with it while dumping.
# curl: scraping /metrics from scripts.
# tshark: tests/journal_export.rs checks `replaymig journal export`'s pcap with it.
# fonts-dejavu-core: DejaVuSans.ttf, the font replaymig-bench-report draws the
# figures' text with (crates/bench loads it at run time; no fontconfig needed).
# prometheus: tests/observability.rs scrapes two nodes with a real one.
# memcached: tests/fidelity.rs migrates a single-threaded one (`-t 1`) under
# a shared-key CAS / incr / append load.
# etcd-server/etcd-client: fleet mode's registry (crates/fleet): its tests and
# tools start real etcd members (3.4 in Debian 12) and check keys with etcdctl.
# protobuf-compiler, libprotobuf-dev (the well-known types it imports): the
# etcd-client crate's build compiles etcd's .proto files.
# nodejs/npm: tools/validate-grafana.sh checks the dashboard against
# Grafana's published schema (@grafana/schema, type-checked by tsc); the
# machine usually has them already.
packages=(redis-server redis-tools haproxy iproute2 iptables curl procps fonts-dejavu-core tshark prometheus memcached etcd-server etcd-client protobuf-compiler libprotobuf-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # wireshark-common (pulled in by tshark) asks whether non-root users may
  # capture; answer "no" up front so the install never waits for a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  # Debian's redis-server postinst tries to start a service; there is no init
  # system here, so tell invoke-rc.d not to (exit 101 = action forbidden).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  apt-get install -y -qq -t bookworm --no-install-recommends "${missing[@]}" >/dev/null \
    || apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
fi

# CRIU 4.2 in a private prefix (Debian 12's own does not work here).
if [ "$(id -u)" -eq 0 ]; then
  bash "$(dirname "$0")/install-criu.sh" >/dev/null
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "setup: need root to install nodejs npm" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

for tool in redis-server redis-cli redis-benchmark haproxy ip prometheus memcached etcd etcdctl protoc node npm; do
  command -v "$tool" >/dev/null || { echo "setup: $tool still missing" >&2; exit 1; }
done
echo "setup: ok ($(redis-server --version | awk '{print $3}'), $(haproxy -v | head -1 | awk '{print $1, $3}'))"
