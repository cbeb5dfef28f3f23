#!/usr/bin/env bash
# The bridge benchmark (issue 23), side by side in one run against the same
# remote (a Mosquitto on 127.0.0.1), and writes the "Bridges" section of
# docs/BENCHMARKS.md (between <!-- bridge:begin --> / <!-- bridge:end -->;
# the rest of the file is left alone).
#
#   bench/bridge.sh
#   DURATION=3 MESSAGES=20000 OUT=/tmp/b.md bench/bridge.sh        # a quick try
#   SKIP_BUILD=1 MIDGE=target/debug/midge BENCH=target/debug/midge-bench \
#       DURATION=2 MESSAGES=5000 OUT=/tmp/b.md bench/bridge.sh      # a dry run of the script
#
# Edges (EDGES), each bridging `bench/#` QoS 1 out to the remote:
#   midge        Midge, persistence off (its buffer in memory, as Mosquitto's)
#   midge-sled   Midge with [persistence] on sled, sync = "ack": every message is
#                in the store before the publisher's PUBACK
#   mosquitto    Mosquitto with its own bridge (`connection`, cleansession false)
#
# Cells, every broker freshly started, one edge at a time:
#   throughput  midge-bench fan-in, QoS 1, closed loop (WINDOW per publisher),
#               DURATION s: 8 publishers on the edge, the subscriber on the remote
#               (--sub-port): messages/s that crossed the bridge, loss,
#               duplicates, reordering.
#   drain       the remote is down; MESSAGES (1,000,000) QoS 1 messages are
#               published to the edge (midge-bench publish, PUBLISHERS x WINDOW)
#               and buffered; then the remote starts (its persistent subscriber
#               session restored from its database). Times from the remote's
#               start: until the edge's buffer is empty (every message
#               acknowledged by the remote; Midge's /metrics) and until the
#               remote's subscriber (mosquitto_sub -C MESSAGES) had them all.
#   bytes       midge-sled: the growth of the store directory while MESSAGES
#               were buffered, per message (PAYLOAD bytes each).
#
# Environment (all optional):
#   EDGES="midge midge-sled mosquitto"  DURATION=10  WARMUP=1  DRAIN=5  WINDOW=64
#   MESSAGES=1000000 (0 skips the drain cell)  PUBLISHERS=4  PAYLOAD=64
#   MAX_INFLIGHT=256  messages in flight over the bridge (Midge max_inflight,
#                     Mosquitto max_inflight_messages)
#   BROKER_CPU=0 BENCH_CPU=1  cores for taskset: the edge on BROKER_CPU, the
#                     remote Mosquitto and the generator on BENCH_CPU
#   TIMEOUT=600  bound on each phase   OUT=docs/BENCHMARKS.md
#   PORT_BASE=N  take the loopback ports from N upward (3 per cell: edge,
#                remote, admin) instead of free ones the kernel picks
#   SKIP_BUILD=1 (reuse the binaries)  MIDGE=... BENCH=... MOSQUITTO=/usr/sbin/mosquitto
#
# Every process this script starts is stopped by its PID.

set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
. bench/lib.sh
COMMAND="bench/bridge.sh"
for v in OUT TIMEOUT BENCH_CPU BROKER_CPU MAX_INFLIGHT PAYLOAD PUBLISHERS MESSAGES WINDOW DRAIN WARMUP DURATION EDGES; do
    if printenv "$v" >/dev/null; then
        COMMAND="$v=\"$(printenv "$v")\" $COMMAND"
    fi
done
EDGES=${EDGES:-midge midge-sled mosquitto}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-5}
WINDOW=${WINDOW:-64}
MESSAGES=${MESSAGES:-1000000}
PUBLISHERS=${PUBLISHERS:-4}
PAYLOAD=${PAYLOAD:-64}
MAX_INFLIGHT=${MAX_INFLIGHT:-256}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
TIMEOUT=${TIMEOUT:-600}
OUT=${OUT:-docs/BENCHMARKS.md}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
MIDGE=${MIDGE:-$ROOT/target/release/midge}
BENCH=${BENCH:-$ROOT/target/release/midge-bench}
TOKEN=bench-bridge-token

log() { echo "[bridge.sh] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
command -v jq >/dev/null || die "jq is required (apt-get install -y jq)"
command -v mosquitto_sub >/dev/null || die "mosquitto_sub is required (apt-get install -y mosquitto-clients)"
[[ -x $MOSQUITTO ]] || die "no Mosquitto at $MOSQUITTO (apt-get install -y mosquitto)"
if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release -p midge -p midge-bench || exit 1
fi
[[ -x $MIDGE && -x $BENCH ]] || die "no binaries at $MIDGE / $BENCH"

TMP=$(mktemp -d /tmp/midge-bridge-bench.XXXXXX)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PIN_EDGE=()
PIN_BENCH=()
if command -v taskset >/dev/null; then
    PIN_EDGE=(taskset -c "$BROKER_CPU")
    PIN_BENCH=(taskset -c "$BENCH_CPU")
fi

# wait_port PORT: until 127.0.0.1:PORT accepts (bounded, 30 s).
wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# remote DIR PORT PERSIST: writes the remote Mosquitto's config.
remote_conf() {
    local dir=$1 port=$2 persist=$3
    cat >"$dir/remote.conf" <<EOF
user root
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
memory_limit 0
persistence $persist
persistence_location $dir/
autosave_interval 3600
log_dest file $dir/remote.log
EOF
}

# start_remote DIR: starts the remote (pinned with the generator); sets REMOTE_PID.
start_remote() {
    "${PIN_BENCH[@]}" "$MOSQUITTO" -c "$1/remote.conf" >/dev/null 2>&1 &
    REMOTE_PID=$!
    PIDS+=("$REMOTE_PID")
}

# edge_conf EDGE DIR EDGE_PORT REMOTE_PORT ADMIN_PORT: the edge broker's config file.
edge_conf() {
    local edge=$1 dir=$2 port=$3 rport=$4 aport=$5
    case $edge in
    midge | midge-sled)
        local persist="enabled = false"
        [[ $edge == midge-sled ]] && persist="enabled = true
data_dir = \"$dir/data\""
        cat >"$dir/edge.toml" <<EOF
[listeners]
mqtt = "127.0.0.1:$port"
ws = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:$aport"
token = "$TOKEN"
[log]
level = "warn"
[sys]
interval = 0
[persistence]
$persist
[[bridges]]
name = "remote"
remote = "mqtt://127.0.0.1:$rport"
client_id = "bench-edge"
max_inflight = $MAX_INFLIGHT
[bridges.reconnect]
initial_ms = 20
max_ms = 100
jitter = 0.0
[bridges.buffer]
max_messages = 100000000
max_bytes = 0
[[bridges.out]]
filter = "bench/#"
qos = 1
EOF
        ;;
    mosquitto)
        cat >"$dir/edge.conf" <<EOF
user root
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages $MAX_INFLIGHT
memory_limit 0
persistence false
log_dest file $dir/edge.log
connection remote
address 127.0.0.1:$rport
remote_clientid bench-edge
cleansession false
topic bench/# out 1
restart_timeout 1
EOF
        ;;
    esac
}

# start_edge EDGE DIR: sets EDGE_PID.
start_edge() {
    case $1 in
    midge | midge-sled) "${PIN_EDGE[@]}" "$MIDGE" serve --config "$2/edge.toml" >"$2/edge.out" 2>"$2/edge.log" & ;;
    mosquitto) "${PIN_EDGE[@]}" "$MOSQUITTO" -c "$2/edge.conf" >/dev/null 2>&1 & ;;
    esac
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
}

# buffered APORT: Midge's buffered messages for the bridge (from /metrics).
buffered() {
    curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/metrics" |
        awk '/^midge_bridge_buffered_messages\{bridge="remote"\}/ { print $2 }'
}

now_ns() { date +%s%N; }

# cell_ports: sets port, rport, aport (the edge's MQTT, the remote's and the
# edge's admin port) for the next cell: from PORT_BASE upward when set.
PORT_NEXT=${PORT_BASE:-}
cell_ports() {
    if [[ -n $PORT_NEXT ]]; then
        port=$PORT_NEXT rport=$((PORT_NEXT + 1)) aport=$((PORT_NEXT + 2))
        PORT_NEXT=$((PORT_NEXT + 3))
    else
        port=$(free_port) rport=$(free_port) aport=$(free_port)
    fi
}

# ---------------------------------------------------------------- throughput
throughput() {
    local edge=$1 dir port rport aport line
    dir=$(mktemp -d "$TMP/$edge-tp.XXXX")
    cell_ports
    remote_conf "$dir" "$rport" false
    start_remote "$dir"
    wait_port "$rport" || { echo "{\"cell\":\"throughput\",\"edge\":\"$edge\",\"error\":\"remote did not start\"}" >>"$RESULTS"; cleanup; return; }
    edge_conf "$edge" "$dir" "$port" "$rport" "$aport"
    start_edge "$edge" "$dir"
    wait_port "$port" || { echo "{\"cell\":\"throughput\",\"edge\":\"$edge\",\"error\":\"edge did not start\"}" >>"$RESULTS"; cleanup; return; }
    sleep 1 # the bridge connects
    log "throughput: $edge"
    line=$(timeout "$TIMEOUT" "${PIN_BENCH[@]}" "$BENCH" --port "$port" --sub-port "$rport" --scenario fan-in \
        --qos 1 --payload "$PAYLOAD" --window "$WINDOW" --duration "$DURATION" --warmup "$WARMUP" \
        --drain "$DRAIN" --broker-pid "$EDGE_PID" --label "$edge" 2>>"$dir/bench.err" | tail -n1)
    if [[ -n $line ]]; then
        echo "$line" | jq -c --arg e "$edge" '. + {cell: "throughput", edge: $e}' >>"$RESULTS"
    else
        echo "{\"cell\":\"throughput\",\"edge\":\"$edge\",\"error\":\"midge-bench failed: $(tail -n1 "$dir/bench.err" | tr '"' "'")\"}" >>"$RESULTS"
    fi
    cleanup
}

# ---------------------------------------------------------------- drain
drain() {
    local edge=$1 dir port rport aport line t0 t_empty="" t_all="" before="" after="" sub_pid n
    dir=$(mktemp -d "$TMP/$edge-drain.XXXX")
    cell_ports
    # The remote's subscriber session, saved in its database: it is there
    # when the remote comes back.
    remote_conf "$dir" "$rport" true
    start_remote "$dir"
    wait_port "$rport" || { echo "{\"cell\":\"drain\",\"edge\":\"$edge\",\"error\":\"remote did not start\"}" >>"$RESULTS"; cleanup; return; }
    mosquitto_sub -h 127.0.0.1 -p "$rport" -c -i bench-drain -q 1 -t 'bench/#' -W 1 -C 1 >/dev/null 2>&1
    stop_pid "$REMOTE_PID"
    edge_conf "$edge" "$dir" "$port" "$rport" "$aport"
    start_edge "$edge" "$dir"
    wait_port "$port" || { echo "{\"cell\":\"drain\",\"edge\":\"$edge\",\"error\":\"edge did not start\"}" >>"$RESULTS"; cleanup; return; }
    [[ $edge == midge-sled ]] && before=$(du -sb "$dir/data" | cut -f1)
    log "drain: $edge: buffering $MESSAGES messages"
    line=$(timeout "$TIMEOUT" "${PIN_BENCH[@]}" "$BENCH" --port "$port" --scenario publish --publishers "$PUBLISHERS" \
        --window "$WINDOW" --payload "$PAYLOAD" --messages "$MESSAGES" --duration "$TIMEOUT" --timeout "$TIMEOUT" \
        --label "$edge" 2>>"$dir/bench.err" | tail -n1)
    [[ -n $line ]] || { echo "{\"cell\":\"drain\",\"edge\":\"$edge\",\"error\":\"publishing failed: $(tail -n1 "$dir/bench.err" | tr '"' "'")\"}" >>"$RESULTS"; cleanup; return; }
    if [[ $edge == midge* ]]; then
        # Everything acknowledged is in the buffer (and, for sled, in the store).
        n=$(buffered "$aport")
        [[ $edge == midge-sled ]] && after=$(du -sb "$dir/data" | cut -f1)
    fi
    log "drain: $edge: the remote returns"
    t0=$(now_ns)
    start_remote "$dir"
    # The subscriber connects once the remote listens (its start counts).
    wait_port "$rport" || { echo "{\"cell\":\"drain\",\"edge\":\"$edge\",\"error\":\"remote did not restart\"}" >>"$RESULTS"; cleanup; return; }
    mosquitto_sub -h 127.0.0.1 -p "$rport" -c -i bench-drain -q 1 -t 'bench/#' -C "$MESSAGES" -W "$TIMEOUT" >/dev/null 2>"$dir/sub.err" &
    sub_pid=$!
    PIDS+=("$sub_pid")
    while kill -0 "$sub_pid" 2>/dev/null; do
        if [[ $edge == midge* && -z $t_empty && $(buffered "$aport") == 0 ]]; then
            t_empty=$(now_ns)
        fi
        sleep 0.05
        (($(now_ns) - t0 > TIMEOUT * 1000000000)) && break
    done
    wait "$sub_pid" 2>/dev/null && t_all=$(now_ns)
    [[ $edge == midge* && -z $t_empty && $(buffered "$aport") == 0 ]] && t_empty=$(now_ns)
    echo "$line" | jq -c --arg e "$edge" --arg t0 "$t0" --arg te "$t_empty" --arg ta "$t_all" \
        --arg n "${n:-}" --arg b "${before:-}" --arg a "${after:-}" '
        {cell: "drain", edge: $e, messages: .acked, publish_msgs_per_s: .pub_msgs_per_s,
         buffered: (if $n == "" then null else ($n | tonumber) end),
         empty_s: (if $te == "" then null else (($te | tonumber) - ($t0 | tonumber)) / 1e9 end),
         all_s: (if $ta == "" then null else (($ta | tonumber) - ($t0 | tonumber)) / 1e9 end),
         store_bytes_per_msg: (if $a == "" then null else (($a | tonumber) - ($b | tonumber)) / .acked end)}' >>"$RESULTS"
    cleanup
}

for e in $EDGES; do throughput "$e"; done
if [[ $MESSAGES -gt 0 ]]; then
    for e in $EDGES; do drain "$e"; done
fi

# ---------------------------------------------------------------- report
row_tp() {
    jq -r --arg e "$1" 'select(.cell == "throughput" and .edge == $e)
        | if .error then "| \($e) | error: \(.error) | | | |"
          else "| \($e) | \(.msgs_per_s | round) | \(.p50_us | round) / \(.p99_us | round) | \(.loss) | \(.duplicates) / \(.reordered) |" end' "$RESULTS" | tail -n1
}
row_drain() {
    jq -r --arg e "$1" 'def s: if . == null then "n/a" else (. * 100 | round / 100 | tostring) end;
        select(.cell == "drain" and .edge == $e)
        | if .error then "| \($e) | error: \(.error) | | | | |"
          else "| \($e) | \(.messages) | \(.publish_msgs_per_s | round) | \(.empty_s | s) | \(.all_s | s) | \(if .store_bytes_per_msg == null then "" else (.store_bytes_per_msg | round | tostring) end) |" end' "$RESULTS" | tail -n1
}
SECTION=$TMP/section.md
{
    echo "<!-- bridge:begin (generated by bench/bridge.sh; edit there) -->"
    echo "## Bridges (issue 23)"
    echo
    echo "Generated by \`$COMMAND\` on $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r);"
    echo "Mosquitto $("$MOSQUITTO" -h 2>/dev/null | head -n1 | awk '{print $3}') as the remote (and as the other edge)."
    echo "Edge pinned to core $BROKER_CPU; the remote and midge-bench to core $BENCH_CPU. QoS 1, $PAYLOAD B payloads,"
    echo "\`bench/#\` bridged out, at most $MAX_INFLIGHT messages in flight over the bridge (Midge \`max_inflight\`,"
    echo "Mosquitto \`max_inflight_messages\`). \`midge-sled\` stores every message before the publisher's PUBACK;"
    echo "\`midge\` and Mosquitto keep the buffer in memory."
    echo
    echo "### Bridged QoS 1 throughput (fan-in, closed loop, ${DURATION} s)"
    echo
    echo "8 publishers on the edge, one subscriber on the remote; msgs/s = messages the remote's subscriber got per second."
    echo
    echo "| edge | msgs/s at the remote | latency p50 / p99 µs | loss | duplicates / reordered |"
    echo "|---|---:|---:|---:|---:|"
    for e in $EDGES; do row_tp "$e"; done
    if [[ $MESSAGES -gt 0 ]]; then
        echo
        echo "### Draining $(printf "%'d" "$MESSAGES") buffered messages when the remote returns"
        echo
        echo "Published to the edge while the remote was down ($PUBLISHERS publishers, window $WINDOW); seconds from the remote's start."
        echo "*buffer empty*: every message acknowledged by the remote (Midge's \`midge_bridge_buffered_messages\` = 0);"
        echo "*all at the subscriber*: the remote's subscriber (restored session) received them all."
        echo
        echo "| edge | buffered | publish msgs/s (remote down) | buffer empty s | all at the subscriber s | store bytes / message |"
        echo "|---|---:|---:|---:|---:|---:|"
        for e in $EDGES; do row_drain "$e"; done
    fi
    echo
    echo "<details><summary>raw results</summary>"
    echo
    echo '```json'
    cat "$RESULTS"
    echo '```'
    echo
    echo "</details>"
    echo "<!-- bridge:end -->"
} >"$SECTION"
write_section bridge "$SECTION" "$OUT"
log "wrote the bridge section of $OUT (raw files in $TMP)"
