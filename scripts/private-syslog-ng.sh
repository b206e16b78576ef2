#!/usr/bin/env bash
# Unpack Debian's syslog-ng-core and the libraries it needs into a private
# prefix (default: target/syslog-ng), without installing it: it conflicts with
# rsyslog, which the tests also drive. tests/syslog_tls.rs runs it from there
# with its own --module-path and LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-target/syslog-ng}"
[ -x "$root/usr/sbin/syslog-ng" ] && exit 0
pkgs=(syslog-ng-core libivykis0 libnet1 libwrap0 libjson-c5 libpcre3)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp" # apt's _apt user downloads into it
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
if ! (cd "$tmp" && apt-get download -q "${pkgs[@]}"); then
  $sudo apt-get update -q
  (cd "$tmp" && apt-get download -q "${pkgs[@]}")
fi
mkdir -p "$root"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$root"; done
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib/syslog-ng" \
    "$root/usr/sbin/syslog-ng" --version | head -1
echo "syslog-ng unpacked into $root"
