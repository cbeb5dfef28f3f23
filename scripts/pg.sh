# Sourced by scripts/test.sh and bench/run.sh: a private PostgreSQL cluster on
# 127.0.0.1 for the persistence tests and benchmarks.
#
#   pg_start   installs PostgreSQL (Debian) if missing, initialises a cluster in a
#              temporary directory, starts it on a free port and exports
#              MIDGE_TEST_PG="host=127.0.0.1 port=PORT user=postgres".
#   pg_stop    stops that cluster (by its data directory) and removes it.

pg_start() {
  local bin
  # (`|| true`: no PostgreSQL yet is not an error under `set -e -o pipefail`.)
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    apt_install postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  MIDGE_PG_DIR=$(mktemp -d /tmp/midge-pg.XXXXXX)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$MIDGE_PG_DIR"
    as=(runuser -u postgres --)
  fi
  chmod 700 "$MIDGE_PG_DIR"
  "${as[@]}" "$bin/initdb" -D "$MIDGE_PG_DIR/data" -A trust -U postgres >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$MIDGE_PG_DIR/data" -l "$MIDGE_PG_DIR/log" -w \
    -o "-p $port -k $MIDGE_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on" start >/dev/null
  MIDGE_PG_BIN=$bin
  export MIDGE_TEST_PG="host=127.0.0.1 port=$port user=postgres"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($MIDGE_PG_DIR)"
}

pg_stop() {
  [ -n "${MIDGE_PG_DIR:-}" ] || return 0
  local as=()
  [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$MIDGE_PG_BIN/pg_ctl" -D "$MIDGE_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$MIDGE_PG_DIR"
  MIDGE_PG_DIR=
}
