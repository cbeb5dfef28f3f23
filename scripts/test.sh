#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Rust: installs what
# the tests need (mosquitto and its clients, paho-mqtt, MQTT.js, Chromium and Selenium,
# cargo-nextest, PostgreSQL, tansu, nats-server), then builds
# and runs every test. `.ci/run` calls exactly this script.
#
#   ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Independent MQTT clients the interop tests drive.
command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null \
  || apt_install mosquitto-clients
# A real Mosquitto broker: the remote of the bridge tests (each test starts
# its own on a free loopback port and stops it by PID; the package's own
# service is not used).
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
# HAProxy in front of cluster nodes (tests/tests/e2e/cluster_faults.rs).
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || apt_install haproxy
python3 -c 'import paho.mqtt' 2>/dev/null \
  || python3 -m pip install -q 'paho-mqtt>=2,<3'
command -v openssl >/dev/null || apt_install openssl
# MQTT.js's CLI (over WebSocket), from npm into tests/js, pinned by its lock file.
command -v npm >/dev/null || apt_install npm
(cd tests/js && npm ci --no-audit --no-fund --silent)
# The dashboard's browser test: Debian's Chromium and its driver, Selenium
# from PyPI (never Selenium Manager: SE_AVOID_STATS, fixed driver path).
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || apt_install chromium chromium-driver
if ! python3 -c 'import selenium' 2>/dev/null; then
  # selenium 4.52 asks for certifi>=2026.10.23, newer than this registry may
  # hold; certifi only supplies CA roots, which a loopback-only test never
  # uses, so fall back to its other requirements and selenium without them.
  python3 -m pip install -q 'selenium==4.52.0' 2>/dev/null || {
    python3 -m pip install -q certifi 'trio>=0.31,<1' 'trio-websocket>=0.12.2,<1' \
      'typing_extensions>=4.15,<5' 'urllib3[socks]>=2.6.3,<3' 'websocket-client>=1.8,<2'
    python3 -m pip install -q --no-deps 'selenium==4.52.0'
  }
fi
export SE_AVOID_STATS=true
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# The plugin tests build the shipped plugins for this target.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# PostgreSQL for the persistence tests and a Kafka-protocol server (tansu) for
# persist-kafka (private instances, both stopped on exit).
. scripts/pg.sh
. scripts/kafka.sh
# A 3-server NATS JetStream cluster for the cluster tests (MIDGE_TEST_NATS);
# tests that kill NATS servers start their own (MIDGE_NATS_SERVER).
. scripts/nats.sh
trap 'pg_stop; kafka_stop; nats_stop' EXIT
pg_start
kafka_start
nats_start

cargo fmt --all -- --check
# No import loop between the modules of a crate (ARCHITECTURE.md "Layers").
# (broker/cluster/src still has one: membership/node/remote/retained.)
python3 scripts/acyclic.py broker/src broker/protocol/src broker/plugin/src rule-engine/src sdk/src
cargo clippy --workspace --all-targets -- -D warnings
# The plugins workspace (wasm32-wasip2): SDK, shipped plugins, test plugins.
(cd plugins && cargo fmt --all -- --check && cargo clippy --workspace --target wasm32-wasip2 -- -D warnings)
# The SDK's own unit tests (pure helpers such as midge_sdk::binary) run on the host.
(cd plugins && cargo test -p midge-sdk --lib --target "$(rustc -vV | sed -n 's/^host: //p')")
cargo nextest run --workspace --no-fail-fast
# The end-to-end suite again with persistence on (sled): durable sessions must
# not change what any client sees.
# `--workspace` with a filter, not `-p midge-e2e`: the same feature set as the
# run above, so nothing is rebuilt.
# (The cluster tests that stop or kill NATS, race or go through HAProxy are
# about NATS, not the store: once is enough.)
MIDGE_E2E_PERSIST=sled cargo nextest run --workspace --no-fail-fast \
  -E 'package(midge-e2e) and not test(/^cluster_faults::(all_nats|kill9_of_a_nats|through_haproxy|racing)/)'
# The Debian package: built (from the binary just tested), installed with
# dpkg -i, its unit verified, started with its packaged config and a
# password file made by `midge passwd`, tried with mosquitto_pub, purged.
bash scripts/package.sh
