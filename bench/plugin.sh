#!/usr/bin/env bash
# The plugin-throughput benchmark (issue 4): Midge with no plugin and with the
# shipped `transform` plugin on every message (JSON payload parsed, the client
# id added, re-serialized), side by side in one run, for fan-in and pairs at
# QoS 0 and 1. Also runs the on-publish per-call criterion bench
# (`cargo bench --workspace --bench on_publish`). Writes the "plugins"
# section of docs/BENCHMARKS.md (between <!-- plugin:begin --> / <!-- plugin:end -->).
#
#   bench/plugin.sh
#   DURATION=2 OUT=/tmp/p.md bench/plugin.sh     # a quick try
#
# Every cell runs twice: with idle cores halting (the machine as it is) and
# with idle cores polling (/dev/cpu_dma_latency held at 0, see idle_poll_on
# in lib.sh): here a halted core is woken through the hypervisor, and the
# broker pays for waking the load generator each time it has gone idle,
# which it does more the slower the broker is.
#
# Environment (all optional): DURATION=5 PAYLOAD=128 OUT=docs/BENCHMARKS.md
#   SKIP_BUILD=1 (use the release binaries as they are)  CRITERION=0 (skip it)
#   BROKER_CPU=0 BENCH_CPU=1: cores for taskset, as in bench/run.sh
#   IDLE_MODES="halt poll": which idle modes to run
# Every process this script starts is stopped by its PID.

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COMMAND="bench/plugin.sh"
for v in OUT PAYLOAD DURATION CRITERION BROKER_CPU BENCH_CPU IDLE_MODES; do
    if printenv "$v" >/dev/null; then COMMAND="$v=\"$(printenv "$v")\" $COMMAND"; fi
done
DURATION=${DURATION:-5}
PAYLOAD=${PAYLOAD:-128}
CRITERION=${CRITERION:-1}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
OUT=${OUT:-docs/BENCHMARKS.md}
IDLE_MODES=${IDLE_MODES:-halt poll}
BENCH=$ROOT/target/release/midge-bench
MIDGE=$ROOT/target/release/midge
WASM=$ROOT/plugins/target/wasm32-wasip2/release/transform.wasm

# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"

log() { echo "[plugin.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }
command -v jq >/dev/null || die "jq is required (apt-get install -y jq)"

TMP=$(mktemp -d /tmp/midge-plugin-bench.XXXXXX)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
BROKER_PID=""
trap 'stop_pid "$BROKER_PID"; idle_poll_off' EXIT

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building midge, midge-bench (release) and the plugins"
    cargo build --release --workspace --bin midge --bin midge-bench >"$TMP/build.log" 2>&1 || die "build failed: $TMP/build.log"
    (cd plugins && cargo build --target wasm32-wasip2 --release -p transform) >>"$TMP/build.log" 2>&1 ||
        die "plugin build failed: $TMP/build.log"
fi
[[ -x $MIDGE && -x $BENCH && -f $WASM ]] || die "$MIDGE, $BENCH or $WASM missing (unset SKIP_BUILD)"


cat >"$TMP/none.toml" <<EOF
# bench/plugin.sh: no plugin
[log]
level = "warn"
EOF
cat >"$TMP/transform.toml" <<EOF
# bench/plugin.sh: transform on every message
[log]
level = "warn"

[[plugins.plugin]]
name = "tx"
path = "$WASM"
config = { rules = [ { filter = "#", format = "json", add_client_id = "client" } ] }
EOF

START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
MODES_RUN=""
for idle in $IDLE_MODES; do
    if [[ $idle == poll ]]; then
        idle_poll_on || { log "cannot hold /dev/cpu_dma_latency: idle mode poll skipped"; continue; }
    fi
    MODES_RUN="$MODES_RUN $idle"
    for scenario in fan-in pairs; do
        for qos in 0 1; do
            for variant in none transform; do
                port=$(free_port)
                taskset -c "$BROKER_CPU" "$MIDGE" serve --config "$TMP/$variant.toml" --listen "127.0.0.1:$port" --no-ws --no-admin \
                    >"$TMP/broker-$variant.log" 2>&1 &
                BROKER_PID=$!
                ok=""
                for ((i = 0; i < 300; i++)); do
                    kill -0 "$BROKER_PID" 2>/dev/null || break
                    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then ok=1; break; fi
                    sleep 0.1
                done
                [[ -n $ok ]] || die "broker ($variant) did not start: $(tail -n3 "$TMP/broker-$variant.log")"
                line=$(taskset -c "$BENCH_CPU" "$BENCH" --port "$port" --scenario "$scenario" --qos "$qos" --payload "$PAYLOAD" --json \
                    --duration "$DURATION" --label "midge-$variant" --broker-pid "$BROKER_PID" \
                    2>>"$TMP/human.log" | grep '^{' | tail -n1)
                tail -n1 "$TMP/human.log" >&2
                [[ -z $line ]] && line="{\"broker\":\"midge-$variant\",\"error\":\"no result\"}"
                jq -c --arg s "$scenario" --argjson q "$qos" --arg i "$idle" '. + {cell: $s, qos: $q, idle: $i}' <<<"$line" >>"$RESULTS"
                stop_pid "$BROKER_PID"
                BROKER_PID=""
            done
        done
    done
    idle_poll_off
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

CRIT=$TMP/criterion.txt
: >"$CRIT"
if [[ $CRITERION != 0 ]]; then
    log "cargo bench --workspace --bench on_publish"
    cargo bench --workspace --bench on_publish -- --quick 2>/dev/null | grep -E '^on_publish/|time:|thrpt:' >"$CRIT" || true
fi

SECTION=$TMP/section.md
{
    echo "<!-- plugin:begin (generated by bench/plugin.sh; edit there) -->"
    echo "## Plugins: on-publish cost and throughput with transform (issue 4)"
    echo
    echo '```'
    echo "$COMMAND"
    echo '```'
    echo
    echo "- Date: $START_DATE; broker pinned to core $BROKER_CPU, load generator to core $BENCH_CPU (\`taskset\`, as in the tables above); load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
    echo "- Midge $("$MIDGE" --version 2>/dev/null | awk '{print $2}') (git $(git rev-parse --short HEAD 2>/dev/null)), release build"
    echo "- Payload: $PAYLOAD B JSON (\`midge-bench --json\`); transform validates it and adds the publisher's client id"
    echo "  (\`add_client_id = \"client\"\`), for every message (\`filter = \"#\"\`); the PUBLISHes of one read reach it"
    echo "  in one \`on-publish-batch\` call."
    echo "- Target: with the plugin at least 60 % of the no-plugin throughput."
    echo "- Idle modes: *halt* is the machine as it is (an idle core halts and is woken through the"
    echo "  hypervisor, which the waker pays: over loopback, the broker waking an idle load generator);"
    echo "  *poll* holds \`/dev/cpu_dma_latency\` at 0 during the runs so idle cores poll instead"
    echo "  (\`idle_poll_on\` in bench/lib.sh). Modes run here:$MODES_RUN."
    echo
    echo "| idle | scenario | QoS | no plugin msg/s | transform msg/s | ratio | p99 us (none / transform) | loss |"
    echo "|---|---|---|---|---|---|---|---|"
    for idle in $MODES_RUN; do
        for scenario in fan-in pairs; do
            for qos in 0 1; do
                sel='select(.cell == $s and .qos == $q and .idle == $i'
                a=$(jq -r --arg s "$scenario" --argjson q "$qos" --arg i "$idle" "$sel"' and .broker == "midge-none") | .msgs_per_s // 0' "$RESULTS")
                b=$(jq -r --arg s "$scenario" --argjson q "$qos" --arg i "$idle" "$sel"' and .broker == "midge-transform") | .msgs_per_s // 0' "$RESULTS")
                pa=$(jq -r --arg s "$scenario" --argjson q "$qos" --arg i "$idle" "$sel"' and .broker == "midge-none") | .p99_us // 0 | round' "$RESULTS")
                pb=$(jq -r --arg s "$scenario" --argjson q "$qos" --arg i "$idle" "$sel"' and .broker == "midge-transform") | .p99_us // 0 | round' "$RESULTS")
                loss=$(jq -r --arg s "$scenario" --argjson q "$qos" --arg i "$idle" "$sel"') | .loss // "?"' "$RESULTS" | paste -sd/)
                pct=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.0f %%", 100 * b / a; else print "?" }')
                echo "| $idle | $scenario | $qos | $a | $b | **$pct** | $pa / $pb | $loss |"
            done
        done
    done
    echo
    if [[ -s $CRIT ]]; then
        echo "Per-call cost of one warm on-publish call through the host (criterion, \`--quick\`;"
        echo "\`cargo bench --workspace --bench on_publish\`): *transform* reshapes a JSON payload,"
        echo "*reverse* (test-misbehave) reverses the bytes; *batch-32x64B* is one on-publish-batch call with 32"
        echo "messages of 64 B (its \`thrpt\` line: messages per second)."
        echo
        echo '```'
        cat "$CRIT"
        echo '```'
        echo
    fi
    echo "<details><summary>raw results</summary>"
    echo
    echo '```json'
    cat "$RESULTS"
    echo '```'
    echo
    echo "</details>"
    echo "<!-- plugin:end -->"
} >"$SECTION"

write_section plugin "$SECTION" "$OUT"
log "wrote the plugins section of $OUT (raw files in $TMP)"
