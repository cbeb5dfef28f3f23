#!/usr/bin/env bash
# The cluster benchmark (issue 22), side by side in one run on one 3-server
# NATS JetStream cluster (127.0.0.1), and writes the "Cluster" section of
# docs/BENCHMARKS.md (between <!-- cluster:begin --> / <!-- cluster:end -->;
# the rest of the file is left alone).
#
#   bench/cluster.sh
#   DURATION=2 SESSIONS=2000 OUT=/tmp/c.md bench/cluster.sh     # a quick try
#
# Throughput cells (midge-bench closed loop, PAYLOAD bytes, QoS in QOS_LEVELS,
# each SCENARIO), one target at a time, every broker freshly started:
#   midge-1         one Midge node, no cluster (the single-node baseline)
#   midge-same      publishers and subscribers on clustered node A (same-node
#                   traffic on a clustered node)
#   midge-cross     publishers on clustered node A, subscribers on node B
#   nats-mqtt       nats-server's own MQTT listeners on the same NATS cluster:
#                   publishers on server 1, subscribers on server 2 (3.1.1)
# Latency cells: the same targets (but midge-same) open loop at RATE msgs/s.
# Sessions cell: SESSIONS persistent sessions (each subscribed QoS 1 to its own
#   topic), half on each of two clustered Midge nodes, then: connect time, RSS
#   of the three nats-servers, JetStream consumers and streams (from their
#   monitoring endpoints); SESSIONS_NATS_MQTT=1 does the same against the
#   nats-server MQTT listeners (one consumer per session: slow, off by default).
#
# Environment (all optional):
#   DURATION=5 WARMUP=1 DRAIN=5 WINDOW=64   per cell, as bench/run.sh
#   SCENARIOS="pairs fan-in"  QOS_LEVELS="0 1"  PAYLOAD=64
#   TARGETS="midge-1 midge-same midge-cross nats-mqtt"
#   RATE=10000 (0 skips the latency cells)   SESSIONS=100000 (0 skips)
#   CONNECT_CONCURRENCY=64  TIMEOUT=1800
#   BROKER_CPU=0 BENCH_CPU=1  cores for taskset (the NATS servers share the broker's)
#   OUT=docs/BENCHMARKS.md  SKIP_BUILD=1 (reuse target/release binaries)
#   MIDGE=... BENCH=...  other binaries (e.g. target/debug/ ones for a dry run of the script)
#
# Every process this script starts is stopped by its PID.

set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
COMMAND="bench/cluster.sh"
for v in OUT BENCH_CPU BROKER_CPU TIMEOUT CONNECT_CONCURRENCY SESSIONS_NATS_MQTT SESSIONS RATE TARGETS PAYLOAD QOS_LEVELS SCENARIOS WINDOW DRAIN WARMUP DURATION; do
    if printenv "$v" >/dev/null; then
        COMMAND="$v=\"$(printenv "$v")\" $COMMAND"
    fi
done
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-5}
WINDOW=${WINDOW:-64}
SCENARIOS=${SCENARIOS:-pairs fan-in}
QOS_LEVELS=${QOS_LEVELS:-0 1}
PAYLOAD=${PAYLOAD:-64}
TARGETS=${TARGETS:-midge-1 midge-same midge-cross nats-mqtt}
RATE=${RATE:-10000}
SESSIONS=${SESSIONS:-100000}
SESSIONS_NATS_MQTT=${SESSIONS_NATS_MQTT:-0}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-64}
TIMEOUT=${TIMEOUT:-1800}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
OUT=${OUT:-docs/BENCHMARKS.md}

. bench/lib.sh
. scripts/nats.sh

WORK=$(mktemp -d /tmp/midge-cluster-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=()
NATS_PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}" "${NATS_PIDS[@]}"; do stop_pid "$p"; done
    rm -rf "$WORK"
    idle_poll_off
}
trap cleanup EXIT

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p midge -p midge-bench || exit 1
fi
MIDGE=${MIDGE:-$ROOT/target/release/midge}
BENCH=${BENCH:-$ROOT/target/release/midge-bench}
nats_install
{ ulimit -n 1000000 || ulimit -n 65536; } 2>/dev/null || true

# (Not shell functions for what runs in the background: `$!` must be the
# process itself, which taskset execs, so that stop_pid ends it.)
on_bench() { taskset -c "$BENCH_CPU" "$@"; }

# A 3-server NATS cluster with JetStream and an MQTT listener on each server.
NATS_CLIENT=() NATS_MQTT=() NATS_MON=()
nats_cluster_start() {
    local i routes="" route=() dir
    dir=$(mktemp -d "$WORK/nats.XXXXXX")
    NATS_CLIENT=() NATS_MQTT=() NATS_MON=() NATS_PIDS=()
    for i in 0 1 2; do
        NATS_CLIENT[$i]=$(free_port); NATS_MQTT[$i]=$(free_port)
        NATS_MON[$i]=$(free_port); route[$i]=$(free_port)
        routes+="nats://127.0.0.1:${route[$i]},"
    done
    for i in 0 1 2; do
        cat >"$dir/n$i.conf" <<EOF
server_name: bench-n$i
listen: 127.0.0.1:${NATS_CLIENT[$i]}
http: 127.0.0.1:${NATS_MON[$i]}
jetstream { store_dir: "$dir/n$i" }
cluster {
  name: midge-bench
  listen: 127.0.0.1:${route[$i]}
  routes: [${routes%,}]
}
mqtt { listen: 127.0.0.1:${NATS_MQTT[$i]} }
EOF
        taskset -c "$BROKER_CPU" "$MIDGE_NATS_SERVER" -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
        NATS_PIDS+=($!)
    done
    local deadline=$((SECONDS + 60)) ok
    while :; do
        ok=0
        for i in 0 1 2; do
            curl -sf "http://127.0.0.1:${NATS_MON[$i]}/healthz" >/dev/null 2>&1 && ok=$((ok + 1))
        done
        [[ $ok == 3 ]] && break
        if ((SECONDS > deadline)); then echo "NATS not healthy; logs in $dir" >&2; return 1; fi
        sleep 0.2
    done
    NATS_URLS="nats://127.0.0.1:${NATS_CLIENT[0]},nats://127.0.0.1:${NATS_CLIENT[1]},nats://127.0.0.1:${NATS_CLIENT[2]}"
}
nats_cluster_stop() {
    local p
    for p in "${NATS_PIDS[@]}"; do stop_pid "$p"; done
    NATS_PIDS=()
}

# midge_start NAME [cluster]: starts a Midge node on a free port; sets PORT_<NAME>.
midge_start() {
    local name=$1 clustered=${2:-} port cfg=$WORK/$1.toml
    port=$(free_port)
    {
        echo "[listeners]"
        echo "mqtt = \"127.0.0.1:$port\""
        echo "[admin]"
        echo "enabled = false"
        echo "[mqtt]"
        echo "max_queued_messages = 1000000"
        echo "max_session_expiry = 4294967295"
        if [[ -n $clustered ]]; then
            echo "[cluster]"
            echo "enabled = true"
            echo "node = \"$name\""
            echo "name = \"bench\""
            echo "nats = [\"${NATS_URLS//,/\", \"}\"]"
            echo "replicas = 3"
        fi
    } >"$cfg"
    taskset -c "$BROKER_CPU" "$MIDGE" serve --no-ws --config "$cfg" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q "mqtt listening on" "$WORK/$name.log" && break
        kill -0 "$pid" 2>/dev/null || { echo "$name did not start:" >&2; cat "$WORK/$name.log" >&2; return 1; }
        sleep 0.1
    done
    printf -v "PORT_${name//-/_}" '%s' "$port"
    printf -v "PID_${name//-/_}" '%s' "$pid"
}
midge_stop_all() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    PIDS=()
}

# cell TARGET PUB_PORT SUB_PORT SCENARIO QOS [--rate N]
cell() {
    local target=$1 pport=$2 sport=$3 scen=$4 qos=$5; shift 5
    local out
    out=$(on_bench "$BENCH" --port "$pport" --sub-port "$sport" --scenario "$scen" --qos "$qos" \
        --payload "$PAYLOAD" --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
        --window "$WINDOW" --label "$target" "$@" 2>"$WORK/bench.err")
    [[ -z $out ]] && out="{\"broker\":\"$target\",\"scenario\":\"$scen\",\"qos\":$qos,\"error\":\"$(tail -1 "$WORK/bench.err" | tr '"' "'")\"}"
    echo "$out" >>"$RESULTS"
    tail -1 "$WORK/bench.err" >&2
}

target_up() {
    case $1 in
        midge-1) midge_start single && PUB=$PORT_single SUB=$PORT_single ;;
        midge-same) midge_start a yes && PUB=$PORT_a SUB=$PORT_a ;;
        midge-cross) midge_start a yes && midge_start b yes && PUB=$PORT_a SUB=$PORT_b ;;
        nats-mqtt) PUB=${NATS_MQTT[0]} SUB=${NATS_MQTT[1]} ;;
    esac
}

run_cells() {
    local t scen qos
    for t in $TARGETS; do
        for scen in $SCENARIOS; do
            for qos in $QOS_LEVELS; do
                nats_cluster_start || return 1
                target_up "$t" || { echo "{\"broker\":\"$t\",\"scenario\":\"$scen\",\"qos\":$qos,\"error\":\"start failed\"}" >>"$RESULTS"; midge_stop_all; nats_cluster_stop; continue; }
                cell "$t" "$PUB" "$SUB" "$scen" "$qos"
                midge_stop_all
                nats_cluster_stop
            done
        done
        if [[ $RATE != 0 && $t != midge-same ]]; then
            for qos in $QOS_LEVELS; do
                nats_cluster_start || return 1
                target_up "$t" || { midge_stop_all; nats_cluster_stop; continue; }
                cell "$t" "$PUB" "$SUB" pairs "$qos" --rate "$RATE" --spin-us 1000
                midge_stop_all
                nats_cluster_stop
            done
        fi
    done
}

# NATS memory (sum of the three servers' RSS, KiB) and JetStream consumers / streams.
nats_state() {
    local rss=0 p kib consumers streams
    for p in "${NATS_PIDS[@]}"; do
        kib=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        rss=$((rss + kib))
    done
    read -r streams consumers < <(curl -sf "http://127.0.0.1:${NATS_MON[0]}/jsz" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("streams",0), d.get("consumers",0))' 2>/dev/null || echo "? ?")
    echo "\"nats_rss_kib\":$rss,\"streams\":\"$streams\",\"consumers\":\"$consumers\""
}

run_sessions() {
    [[ $SESSIONS == 0 ]] && return
    local half=$((SESSIONS / 2)) t0 t1
    nats_cluster_start || return 1
    midge_start a yes && midge_start b yes || { midge_stop_all; nats_cluster_stop; return; }
    t0=$(date +%s.%N)
    taskset -c "$BENCH_CPU" "$BENCH" --port "$PORT_a" --scenario restart-sessions --phase setup \
        --sessions "$half" --prefix sa --connect-concurrency "$CONNECT_CONCURRENCY" --timeout "$TIMEOUT" >/dev/null 2>"$WORK/sa.err" &
    local j1=$!
    on_bench "$BENCH" --port "$PORT_b" --scenario restart-sessions --phase setup \
        --sessions "$((SESSIONS - half))" --prefix sb --connect-concurrency "$CONNECT_CONCURRENCY" --timeout "$TIMEOUT" >/dev/null 2>"$WORK/sb.err"
    wait $j1
    tail -1 "$WORK/sa.err" >&2; tail -1 "$WORK/sb.err" >&2
    t1=$(date +%s.%N)
    sleep 2
    echo "{\"broker\":\"midge-cluster\",\"scenario\":\"sessions\",\"sessions\":$SESSIONS,\"connect_s\":$(python3 -c "print(round($t1 - $t0, 2))"),$(nats_state)}" >>"$RESULTS"
    midge_stop_all
    nats_cluster_stop
    if [[ $SESSIONS_NATS_MQTT == 1 ]]; then
        nats_cluster_start || return 1
        t0=$(date +%s.%N)
        on_bench "$BENCH" --port "${NATS_MQTT[0]}" --scenario restart-sessions --phase setup \
            --sessions "$SESSIONS" --prefix sn --connect-concurrency "$CONNECT_CONCURRENCY" --timeout "$TIMEOUT" >/dev/null 2>"$WORK/bench.err"
        t1=$(date +%s.%N)
        sleep 2
        echo "{\"broker\":\"nats-mqtt\",\"scenario\":\"sessions\",\"sessions\":$SESSIONS,\"connect_s\":$(python3 -c "print(round($t1 - $t0, 2))"),$(nats_state)}" >>"$RESULTS"
        nats_cluster_stop
    fi
}

run_cells
run_sessions

# The section: one table per kind of cell, from the JSON lines.
SECTION=$WORK/section.md
python3 - "$RESULTS" "$COMMAND" >"$SECTION" <<'EOF'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("<!-- cluster:begin (written by bench/cluster.sh) -->")
print("## Cluster (issue 22)\n")
print(f"`{sys.argv[2]}`, {datetime.date.today()}. 3 nats-server 2.15 (JetStream, R3) on 127.0.0.1; "
      "midge-1: one node without cluster; midge-same: publishers and subscribers on clustered node A; "
      "midge-cross: publishers on A, subscribers on B; nats-mqtt: nats-server's MQTT listeners "
      "(publishers on server 1, subscribers on server 2, MQTT 3.1.1).\n")
print("| target | scenario | QoS | msgs/s | p50 us | p99 us | loss | dup |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("scenario") == "sessions" or r.get("rate"):
        continue
    if "error" in r:
        print(f"| {r['broker']} | {r.get('scenario')} | {r.get('qos')} | n/a: {r['error']} | | | | |")
        continue
    print(f"| {r['broker']} | {r['scenario']} | {r['qos']} | {r.get('msgs_per_s', 0):,.0f} | "
          f"{r.get('p50_us', 0):.0f} | {r.get('p99_us', 0):.0f} | {r.get('loss')} | {r.get('duplicates')} |")
lat = [r for r in rows if r.get("rate")]
if lat:
    print("\nOpen loop (pairs, fixed rate):\n")
    print("| target | QoS | rate | achieved | p50 us | p99 us | p999 us | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in lat:
        if "error" in r:
            print(f"| {r['broker']} | {r.get('qos')} | | n/a: {r['error']} | | | | |")
            continue
        print(f"| {r['broker']} | {r['qos']} | {r['rate']:.0f} | {r.get('achieved_rate', 0):,.0f} | "
              f"{r.get('p50_us', 0):.0f} | {r.get('p99_us', 0):.0f} | {r.get('p999_us', 0):.0f} | {r.get('loss')} |")
ses = [r for r in rows if r.get("scenario") == "sessions"]
if ses:
    print("\nPersistent sessions (each subscribed QoS 1 to its own topic):\n")
    print("| target | sessions | connect s | NATS RSS MiB (3 servers) | JetStream streams | consumers |")
    print("|---|---|---|---|---|---|")
    for r in ses:
        print(f"| {r['broker']} | {r['sessions']:,} | {float(r['connect_s']):.1f} | "
              f"{r['nats_rss_kib'] / 1024:.0f} | {r['streams']} | {r['consumers']} |")
print("\n<!-- cluster:end -->")
EOF
write_section cluster "$SECTION" "$OUT"
echo "wrote the Cluster section of $OUT" >&2
