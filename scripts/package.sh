#!/usr/bin/env bash
# The Debian package, built and tried as an operator would: `cargo deb`,
# `dpkg -i`, `systemd-analyze verify` of the unit, `midge check` of the
# packaged config, a user added with `midge passwd`, then the packaged
# broker (as user midge, with /etc/midge/midge.toml, on loopback ports
# picked by the kernel) lets mosquitto_pub in with the right password and
# refuses a wrong one. The package is purged at the end.
#
# CI builds it from the dev profile: the test run has just built that
# binary, so this step only links and packs (a release build is ~14 min
# cold). Release packages: `cargo deb -p midge` (release profile; the
# binary is stripped, its debug info goes to the -dbgsym .ddeb).
#
#   ./scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
command -v mosquitto_pub >/dev/null || { apt-get update -qq && apt-get install -y -qq mosquitto-clients >/dev/null; }

# The shipped plugins (the plugin tests built them already; this is a no-op then).
(cd plugins && cargo build --quiet --target wasm32-wasip2 --release)
# The same feature set as the test build, so nothing but the binary links.
cargo build --quiet --workspace --bin midge
cargo deb -p midge --no-build --profile dev --output target/debian/midge-ci.deb

pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  dpkg --purge midge >/dev/null 2>&1 || true
}
trap cleanup EXIT

dpkg -i target/debian/midge-ci.deb
test -x /usr/bin/midge
# Stripped, with the debug info split into the -dbgsym package.
if readelf -S /usr/bin/midge | grep -Eq '\.debug_(info|line|str|abbrev)'; then
  echo "package check: /usr/bin/midge still has debug sections" >&2; exit 1
fi
dpkg-deb -c target/debian/midge-ci.ddeb | grep -q '/usr/lib/debug/.build-id/.*\.debug$' 
test -f /usr/lib/midge/plugins/auth_password.wasm
test -f /usr/share/man/man1/midge.1.gz
getent passwd midge >/dev/null
systemd-analyze verify /lib/systemd/system/midge.service
midge check --config /etc/midge/midge.toml
midge passwd -b /etc/midge/passwd ci-user 'right-password'
grep -q '^ci-user:\$7\$' /etc/midge/passwd

log=$(mktemp)
runuser -u midge -- /usr/bin/midge serve --config /etc/midge/midge.toml \
  --listen 127.0.0.1:0 --no-ws --admin-listen 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/^midge: mqtt listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$log")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "package check: the broker exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$log"; echo "package check: the broker did not start" >&2; exit 1; }

mosquitto_pub -h 127.0.0.1 -p "$port" -u ci-user -P 'right-password' -t ci/package -m ok -q 1 \
  || { cat "$log"; echo "package check: the right password was refused" >&2; exit 1; }
if mosquitto_pub -h 127.0.0.1 -p "$port" -u ci-user -P 'wrong-password' -t ci/package -m no -q 1 2>/dev/null; then
  cat "$log"; echo "package check: a wrong password got in" >&2; exit 1
fi
if mosquitto_pub -h 127.0.0.1 -p "$port" -t ci/package -m anon -q 1 2>/dev/null; then
  cat "$log"; echo "package check: an anonymous client got in" >&2; exit 1
fi
echo "package check: ok ($(dpkg-deb -f target/debian/midge-ci.deb Package Version), $(du -h target/debian/midge-ci.deb | cut -f1))"
