#!/usr/bin/env bash
# The persist-kafka benchmark (issue 4): QoS 1 messages published through Midge
# with the persist-kafka plugin archiving every one of them to a Kafka-protocol
# server (tansu, in memory, from scripts/kafka.sh), timed until Kafka has
# acknowledged every record. Writes the "persist-kafka" section of
# docs/BENCHMARKS.md (between <!-- kafka:begin --> / <!-- kafka:end -->; the
# rest of the file is left alone, bench/run.sh keeps the section).
#
#   bench/kafka.sh
#   MESSAGES=20000 OUT=/tmp/k.md bench/kafka.sh    # a quick try
#
# Environment (all optional):
#   MESSAGES=200000  PUBLISHERS=4  WINDOW=64  PAYLOAD=64
#   FORMATS="json raw"   persist-kafka's `format` per cell
#   LINGER_MS=5          [plugins.kafka] linger_ms
#   KAFKA=HOST:PORT      use this Kafka server instead of starting tansu
#   TIMEOUT=300  OUT=docs/BENCHMARKS.md  SKIP_BUILD=1
#
# Every process this script starts is stopped by its PID.

set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
COMMAND="bench/kafka.sh"
for v in OUT TIMEOUT LINGER_MS FORMATS PAYLOAD WINDOW PUBLISHERS MESSAGES; do
    if printenv "$v" >/dev/null; then
        COMMAND="$v=\"$(printenv "$v")\" $COMMAND"
    fi
done
MESSAGES=${MESSAGES:-200000}
PUBLISHERS=${PUBLISHERS:-4}
WINDOW=${WINDOW:-64}
PAYLOAD=${PAYLOAD:-64}
FORMATS=${FORMATS:-json raw}
LINGER_MS=${LINGER_MS:-5}
TIMEOUT=${TIMEOUT:-300}
OUT=${OUT:-docs/BENCHMARKS.md}
BENCH=$ROOT/target/release/midge-bench
MIDGE=$ROOT/target/release/midge
WASM=$ROOT/plugins/target/wasm32-wasip2/release/persist_kafka.wasm

# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"

log() { echo "[kafka.sh] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
command -v jq >/dev/null || die "jq is required (apt-get install -y jq)"

TMP=$(mktemp -d /tmp/midge-kafka-bench.XXXXXX)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
BROKER_PID=""
KAFKA_STARTED=""

cleanup() {
    stop_pid "$BROKER_PID"
    [[ -n $KAFKA_STARTED ]] && kafka_stop
}
trap cleanup EXIT

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building midge, midge-bench (release) and the plugins"
    cargo build --release --workspace --bin midge --bin midge-bench >"$TMP/build.log" 2>&1 || die "build failed: $TMP/build.log"
    (cd plugins && cargo build --target wasm32-wasip2 --release -p persist-kafka) >>"$TMP/build.log" 2>&1 ||
        die "plugin build failed: $TMP/build.log"
fi
[[ -x $MIDGE && -x $BENCH && -f $WASM ]] || die "$MIDGE, $BENCH or $WASM missing (unset SKIP_BUILD)"

# shellcheck source=../scripts/kafka.sh
. "$ROOT/scripts/kafka.sh"
if [[ -z ${KAFKA:-} ]]; then
    kafka_start >&2 || die "tansu did not start"
    KAFKA_STARTED=1
    KAFKA=$MIDGE_TEST_KAFKA
fi
KAFKA_VERSION=$("$MIDGE_TANSU_ROOT/bin/tansu" --version 2>/dev/null | awk '{print $2}')


cpu_busy() { # % of all CPUs busy over 2 s
    local a b
    a=$(head -n1 /proc/stat)
    sleep 2
    b=$(head -n1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); t = 0
        for (i = 2; i <= n; i++) t += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}

START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
BUSY_BEFORE=$(cpu_busy)
for format in $FORMATS; do
    topic="midge-bench-$format-$$"
    # A one-partition topic (tansu's CLI; another Kafka must auto-create it).
    if [[ -x $MIDGE_TANSU_ROOT/bin/tansu ]]; then
        "$MIDGE_TANSU_ROOT/bin/tansu" topic create --broker "tcp://$KAFKA" --partitions 1 "$topic" \
            >"$TMP/topic-$format.log" 2>&1 || log "topic create: $(cat "$TMP/topic-$format.log")"
    fi
    port=$(free_port)
    admin=$(free_port)
    dir=$TMP/$format
    mkdir -p "$dir"
    cat >"$dir/midge.toml" <<EOF
# bench/kafka.sh: persist-kafka, format $format
[log]
level = "warn"

[admin]
listen = "127.0.0.1:$admin"
metrics_public = true

[plugins.kafka]
brokers = "$KAFKA"
linger_ms = $LINGER_MS

[[plugins.plugin]]
name = "kafka"
path = "$WASM"
grants = { kafka = ["$topic"] }
config = { topic = "$topic", filters = ["bench/#"], key = "clientid", format = "$format" }
EOF
    "$MIDGE" serve --config "$dir/midge.toml" --listen "127.0.0.1:$port" --no-ws >"$dir/broker.log" 2>&1 &
    BROKER_PID=$!
    ok=""
    for ((i = 0; i < 300; i++)); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then ok=1; break; fi
        sleep 0.1
    done
    if [[ -z $ok ]]; then
        jq -cn --arg f "$format" --arg e "broker did not start: $(tail -n3 "$dir/broker.log" | tr '\n' ' ')" \
            '{format:$f, error:$e}' >>"$RESULTS"
        stop_pid "$BROKER_PID"
        BROKER_PID=""
        continue
    fi
    log "format $format: midge on 127.0.0.1:$port (pid $BROKER_PID), Kafka $KAFKA topic $topic"
    line=$("$BENCH" --port "$port" --scenario kafka-archive --label "midge+persist-kafka" \
        --publishers "$PUBLISHERS" --window "$WINDOW" --payload "$PAYLOAD" --messages "$MESSAGES" \
        --metrics "127.0.0.1:$admin" --timeout "$TIMEOUT" --broker-pid "$BROKER_PID" \
        2>>"$TMP/human.log" | grep '^{' | tail -n1)
    tail -n1 "$TMP/human.log" >&2
    [[ -z $line ]] && line='{"error":"midge-bench produced no result"}'
    jq -c --arg f "$format" '. + {format: $f}' <<<"$line" >>"$RESULTS"
    stop_pid "$BROKER_PID"
    BROKER_PID=""
done
BUSY_AFTER=$(cpu_busy)

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
SECTION=$TMP/section.md
{
    echo "<!-- kafka:begin (generated by bench/kafka.sh; edit there) -->"
    echo "## persist-kafka (issue 4)"
    echo
    echo "Generated by:"
    echo
    echo '```'
    echo "$COMMAND"
    echo '```'
    echo
    echo "- Date: $START_DATE"
    echo "- Machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, Linux $(uname -r); broker, generator and Kafka server share it"
    echo "- Background load: ${BUSY_BEFORE}% of all CPUs busy just before the run, ${BUSY_AFTER}% just after"
    echo "- Midge $("$MIDGE" --version 2>/dev/null | head -n1 | awk '{print $2}') (git $(git rev-parse --short HEAD 2>/dev/null)), Kafka server: tansu ${KAFKA_VERSION:-?} (in-memory storage)$([[ -z $KAFKA_STARTED ]] && echo " at $KAFKA")"
    echo
    echo "$PUBLISHERS MQTT 3.1.1 publishers publish $MESSAGES QoS 1 messages of $PAYLOAD B in total (closed loop,"
    echo "$WINDOW without PUBACK each; nobody subscribes). persist-kafka (\`filters = [\"bench/#\"]\`,"
    echo "\`key = \"clientid\"\`) produces one record per message through the broker's librdkafka"
    echo "producer (\`linger_ms = $LINGER_MS\`, one-partition topic). *archived msgs/s* = messages / seconds from"
    echo "the first publish until the broker's \`midge_plugin_kafka_delivered_total\` counted every record"
    echo "as acknowledged by Kafka (\`midge-bench --scenario kafka-archive\` polls \`/metrics\`)."
    echo "Target: at least 20,000 msgs/s."
    echo
    echo "| format | messages | publish s | archived s | archived msgs/s | ack p50 us | ack p99 us | broker CPU % | failed |"
    echo "|---|---|---|---|---|---|---|---|---|"
    jq -r 'if .error then "| \(.format) | error: \(.error) | | | | | | | |"
           else "| \(.format) | \(.acked) | \(.publish_s) | \(.archived_s) | **\(.archived_msgs_per_s)** | \(.ack_p50_us | round) | \(.ack_p99_us | round) | \(.broker_cpu_pct // "?" | if type == "number" then round else . end) | \(.failed) |" end' "$RESULTS"
    echo
    echo "<details><summary>raw results</summary>"
    echo
    echo '```json'
    cat "$RESULTS"
    echo '```'
    echo
    echo "</details>"
    echo "<!-- kafka:end -->"
} >"$SECTION"

write_section kafka "$SECTION" "$OUT"
log "wrote the persist-kafka section of $OUT (raw files in $TMP)"
if jq -e 'select(.error != null or (.archived_msgs_per_s // 0) < 20000)' "$RESULTS" >/dev/null; then
    log "below 20,000 msgs/s or failed"
    exit 2
fi
