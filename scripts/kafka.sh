# Sourced by scripts/test.sh and bench/run.sh: a private Kafka-protocol server
# (tansu, in-memory storage) on 127.0.0.1 for the persist-kafka tests and
# benchmark.
#
#   kafka_start  installs tansu into /opt/tansu if missing (from crates.io, ~20 min
#                once), starts it on a free port, waits until it accepts
#                connections and exports MIDGE_TEST_KAFKA=127.0.0.1:PORT.
#   kafka_stop   stops that server (by its PID) and removes its log.

MIDGE_TANSU_ROOT=/opt/tansu

kafka_start() {
  local tansu=$MIDGE_TANSU_ROOT/bin/tansu
  if [ ! -x "$tansu" ]; then
    echo "installing tansu into $MIDGE_TANSU_ROOT (cargo install, takes a while)"
    cargo install tansu --locked --features dynostore --root "$MIDGE_TANSU_ROOT" >/dev/null
  fi
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  MIDGE_KAFKA_LOG=$(mktemp /tmp/midge-tansu.XXXXXX.log)
  "$tansu" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" >"$MIDGE_KAFKA_LOG" 2>&1 &
  MIDGE_KAFKA_PID=$!
  local i
  for i in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      export MIDGE_TEST_KAFKA="127.0.0.1:$port"
      echo "tansu $("$tansu" --version 2>/dev/null | awk '{print $2}') on $MIDGE_TEST_KAFKA (pid $MIDGE_KAFKA_PID)"
      return 0
    fi
    if ! kill -0 "$MIDGE_KAFKA_PID" 2>/dev/null; then
      echo "tansu exited at start:" >&2
      cat "$MIDGE_KAFKA_LOG" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "tansu did not accept connections on 127.0.0.1:$port within 10 s" >&2
  kafka_stop
  return 1
}

kafka_stop() {
  [ -n "${MIDGE_KAFKA_PID:-}" ] || return 0
  kill "$MIDGE_KAFKA_PID" 2>/dev/null || true
  wait "$MIDGE_KAFKA_PID" 2>/dev/null || true
  rm -f "$MIDGE_KAFKA_LOG"
  MIDGE_KAFKA_PID=
}
