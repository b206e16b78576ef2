#!/usr/bin/env bash
# The project's one test command (README, .ci/run). Installs with apt what the
# tests drive for real (zstd, util-linux logger, rsyslog, ansible, promtool),
# then runs the lints and every test. A missing tool fails a test; nothing skips.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v zstdcat >/dev/null 2>&1 || need+=(zstd)
command -v logger >/dev/null 2>&1 || need+=(bsdutils)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/omrelp.so ] || need+=(rsyslog-relp)
# tests/syslog_tls.rs: rsyslog's GnuTLS driver, openssl s_client for handshakes.
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || need+=(rsyslog-gnutls)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# tests/ops.rs: the Ansible roles, the systemd unit, promtool on rules and scrapes.
command -v ansible-playbook >/dev/null 2>&1 || need+=(ansible)
command -v ansible-lint >/dev/null 2>&1 || need+=(ansible-lint)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing test dependencies: ${need[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# syslog-ng conflicts with rsyslog: unpacked into target/syslog-ng, not installed.
./scripts/private-syslog-ng.sh

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
