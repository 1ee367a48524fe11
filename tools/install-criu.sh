#!/usr/bin/env bash
# Provides a working CRIU on this kind of machine (Debian 12, kernel 6.x),
# following docs/ENVIRONMENT.md: Debian 12's criu 3.17 fails here, trixie's
# 4.1 cannot dump TCP sockets; unstable's 4.2.x works but needs glibc >= 2.38.
# So: *download* (never install) criu and its libraries from trixie/sid
# with a private apt list/state dir (the system's apt stays untouched),
# unpack them into a private prefix, and run criu through that prefix's
# own loader. Idempotent; prints the wrapper's path.
#
#   tools/install-criu.sh            # -> /opt/replaymig/criu/bin/criu
#   CRIU_PREFIX=/somewhere tools/install-criu.sh
set -euo pipefail
PREFIX=${CRIU_PREFIX:-/opt/replaymig/criu}
WRAPPER=$PREFIX/bin/criu

# CRIU probes the kernel on every run unless it finds its cache
# /run/criu.kdat — ~25 ms here, more than its whole freeze of a small
# service (it even creates a veth pair in a scratch namespace), and it runs
# while clients' input is held. It writes that cache only on a tmpfs, and
# /run is ext4 on these machines. So the cache is made under a private
# tmpfs and copied into /run; again after each boot, since a cache from
# another kernel would mislead CRIU (one from another CRIU build it
# discards by itself).
keep_kdat_cache() {
  local cache=/run/criu.kdat boot made=$PREFIX/criu.kdat.new
  [ "$(id -u)" -eq 0 ] || return 0
  [ "$(stat -f -c %T /run)" != tmpfs ] || return 0
  boot=$(awk '/^btime/ {print $2}' /proc/stat)
  if [ -s "$cache" ] && [ "$(stat -c %Y "$cache")" -ge "$boot" ]; then return 0; fi
  rm -f "$made"
  unshare --mount sh -c 'mount -t tmpfs kdat /run && "$1" check >/dev/null 2>&1; cp /run/criu.kdat "$2"' \
    sh "$WRAPPER" "$made" 2>/dev/null || true
  if [ -s "$made" ]; then mv "$made" "$cache"; else echo "install-criu: no kdat cache made (CRIU will probe the kernel on each run)" >&2; fi
}

if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  keep_kdat_cache
  echo "$WRAPPER"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "install-criu: needs root" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
uri=${uri:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$work/sources.list" <<SRC
deb [signed-by=$keyring] $uri trixie main
deb [signed-by=$keyring] $uri sid main
SRC
mkdir -p "$work/lists/partial" "$work/debs"
O=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
   -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
apt-get "${O[@]}" -qq update

# From sid: criu itself and what only sid has; the rest from trixie.
sid=(criu libcompel1 libnet9 libnl-3-200)
trixie=(libc6 libgnutls30t64 libnftables1 libprotobuf-c1 libbsd0 libuuid1 libunistring5
        libidn2-0 libtasn1-6 libp11-kit0 libhogweed6t64 libnettle8t64 libgmp10 libjansson4
        libmnl0 libnftnl11 libxtables12 libffi8 libmd0)
cd "$work/debs"
for p in "${sid[@]}"; do apt-get "${O[@]}" -qq download "$p/sid"; done
for p in "${trixie[@]}"; do apt-get "${O[@]}" -qq download "$p/trixie"; done
mkdir -p "$PREFIX"
for deb in *.deb; do dpkg -x "$deb" "$PREFIX"; done

lib=$PREFIX/usr/lib/x86_64-linux-gnu
mkdir -p "$PREFIX/bin"
cat >"$WRAPPER" <<WRAP
#!/bin/sh
# CRIU from Debian unstable, run with its own glibc (see tools/install-criu.sh).
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib:/usr/lib/x86_64-linux-gnu" "$PREFIX/usr/sbin/criu" "\$@"
WRAP
chmod +x "$WRAPPER"
"$WRAPPER" --version >&2
keep_kdat_cache
echo "$WRAPPER"
