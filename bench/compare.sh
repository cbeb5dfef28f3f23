#!/usr/bin/env bash
# Two Midge builds side by side with Mosquitto, in one run: the "before and
# after" a change that could cost speed (issue 21 asks it of the broker-core
# restructuring). Every throughput cell of bench/run.sh (closed loop) and the
# idle cell, for the build before (BASE_MIDGE), the build after
# (target/release/midge) and Mosquitto, REPEAT rounds with the broker order
# reversed every other round so neither build always runs first. Writes the
# "compare" section of docs/BENCHMARKS.md (bench/run.sh keeps it).
#
#   git worktree add --detach /tmp/base REV && (cd /tmp/base && cargo build --release --bin midge)
#   BASE_MIDGE=/tmp/base/target/release/midge BASE_REV=REV bench/compare.sh
#
# Rules cells (RULES=1, the default): fan-in with JSON payloads (64 B) against
# Midge with no rules, with 10 republishing rules that read the payload (the
# rules cell of bench/run.sh) and, on the build after only, with 10 rules that
# do the same through jq(); the build before them is RULES_BASE_MIDGE
# (default BASE_MIDGE): issue 27 measures its value model against the build
# before it. RULES_CRITERION=1 adds the per-message cost of a jq rule and of
# the same rule in SQL (`cargo bench -p midge-rules --bench rules`, pinned).
#
# Environment (optional): REPEAT=2 DURATION=5 WARMUP=1 DRAIN=5 WINDOW=64
#   SCENARIOS="fan-in fan-out pairs" QOS_LEVELS="0 1" PAYLOADS="64 1024"
#   IDLE_CONNECTIONS=10000  BROKER_CPU=0 BENCH_CPU=1 NICE=-10  SKIP_BUILD=1
#   OUT=docs/BENCHMARKS.md  MOSQUITTO=/usr/sbin/mosquitto
# Every broker this script starts is stopped by its PID.

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. bench/lib.sh

log() { echo "[compare.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

BASE_MIDGE=${BASE_MIDGE:-}
[[ -x $BASE_MIDGE ]] || die "BASE_MIDGE must name the build before the change (an executable midge)"
BASE_REV=${BASE_REV:-unknown}
RULES=${RULES:-1}
RULES_BASE_MIDGE=${RULES_BASE_MIDGE:-$BASE_MIDGE}
RULES_BASE_REV=${RULES_BASE_REV:-$BASE_REV}
RULES_QOS=${RULES_QOS:-0 1}
RULES_CRITERION=${RULES_CRITERION:-1}
REPEAT=${REPEAT:-2}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-5}
WINDOW=${WINDOW:-64}
SCENARIOS=${SCENARIOS:-fan-in fan-out pairs}
QOS_LEVELS=${QOS_LEVELS:-0 1}
PAYLOADS=${PAYLOADS:-64 1024}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
NICE=${NICE:--10}
OUT=${OUT:-docs/BENCHMARKS.md}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
MIDGE=$ROOT/target/release/midge
BENCH=$ROOT/target/release/midge-bench
command -v jq >/dev/null || die "jq is required"

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --release --bin midge --bin midge-bench"
    cargo build --release --workspace --bin midge --bin midge-bench || die "the build failed"
fi
[[ -x $MIDGE && -x $BENCH ]] || die "$MIDGE or $BENCH missing (unset SKIP_BUILD)"
TIP_REV=$(git rev-parse --short HEAD)

ulimit -n "$(ulimit -Hn)" 2>/dev/null
PIN_BROKER=(taskset -c "$BROKER_CPU")
PIN_BENCH=(taskset -c "$BENCH_CPU")
if [[ $NICE != 0 && $(id -u) == 0 ]]; then
    PIN_BROKER=(nice -n "$NICE" "${PIN_BROKER[@]}")
    PIN_BENCH=(nice -n "$NICE" "${PIN_BENCH[@]}")
fi

TMP=$(mktemp -d /tmp/midge-compare.XXXXXX)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
PID=""
trap 'stop_pid "$PID"' EXIT
trap 'exit 130' INT TERM

# start NAME PORT: sets PID, or fails with the reason on stderr.
start() {
    local name=$1 port=$2 logf=$TMP/$1.log
    case $name in
    midge-base | midge | rules-*)
        local bin=$MIDGE cfg=()
        [[ $name == midge-base ]] && bin=$BASE_MIDGE
        [[ $name == rules-before-* ]] && bin=$RULES_BASE_MIDGE
        [[ $name == rules-* ]] && cfg=(--config "$TMP/${name##*-}.toml")
        "${PIN_BROKER[@]}" "$bin" serve "${cfg[@]}" --listen "127.0.0.1:$port" \
            --ws-listen "127.0.0.1:$(free_port)" --no-admin >>"$logf" 2>&1 &
        ;;
    mosquitto)
        mosquitto_conf "$port" >"$TMP/mosquitto.conf"
        "${PIN_BROKER[@]}" "$MOSQUITTO" -c "$TMP/mosquitto.conf" >>"$logf" 2>&1 &
        ;;
    esac
    PID=$!
    local why
    why=$(wait_ready "$PID" "$port" "$logf") && return 0
    log "$name: $why"
    return 1
}

cell() {
    local broker=$1 port=$2 round=$3 line
    shift 3
    line=$(timeout $((DURATION + WARMUP + DRAIN + 120)) "${PIN_BENCH[@]}" "$BENCH" \
        --host 127.0.0.1 --port "$port" --broker-pid "$PID" --label "$broker" \
        --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" --window "$WINDOW" \
        "$@" 2>>"$TMP/human.log" | grep '^{' | tail -n1)
    [[ -z $line ]] && line=$(jq -cn --arg b "$broker" --arg a "$*" '{broker:$b, args:$a, error:"no result"}')
    jq -c --argjson r "$round" '. + {round: $r}' <<<"$line" >>"$RESULTS"
    tail -n1 "$TMP/human.log" >&2
}

START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
ORDER=(midge-base midge mosquitto)
for ((round = 1; round <= REPEAT; round++)); do
    brokers=("${ORDER[@]}")
    if ((round % 2 == 0)); then brokers=(mosquitto midge midge-base); fi
    for broker in "${brokers[@]}"; do
        port=$(free_port)
        log "round $round: $broker on 127.0.0.1:$port"
        start "$broker" "$port" || { stop_pid "$PID"; PID=""; continue; }
        [[ $IDLE_CONNECTIONS -gt 0 ]] && cell "$broker" "$port" "$round" --scenario idle --connections "$IDLE_CONNECTIONS"
        for s in $SCENARIOS; do
            for q in $QOS_LEVELS; do
                for p in $PAYLOADS; do
                    kill -0 "$PID" 2>/dev/null || break 3
                    cell "$broker" "$port" "$round" --scenario "$s" --qos "$q" --payload "$p"
                done
            done
        done
        stop_pid "$PID"
        PID=""
    done
done

# Rules cells: build x config, alternating order per round.
if [[ $RULES != 0 ]]; then
    [[ -x $RULES_BASE_MIDGE ]] || die "RULES_BASE_MIDGE is not an executable"
    echo "# compare.sh: no rules" >"$TMP/none.toml"
    : >"$TMP/sql.toml"
    : >"$TMP/jq.toml"
    for n in $(seq 10); do
        cat >>"$TMP/sql.toml" <<EOF
[[rules]]
id = "bench-$n"
sql = 'SELECT payload.seq AS s, clientid FROM "bench/+/in/+" WHERE s >= 0'
actions = [{ type = "republish", topic = "rules-out/$n", payload = "\${s}" }]

EOF
        cat >>"$TMP/jq.toml" <<EOF
[[rules]]
id = "bench-$n"
sql = "SELECT jq('.seq', payload) AS s, clientid FROM \\"bench/+/in/+\\""
actions = [{ type = "republish", topic = "rules-out/$n", payload = "\${s}" }]

EOF
    done
    for f in sql jq; do
        "$MIDGE" check --config "$TMP/$f.toml" >"$TMP/check-$f.log" 2>&1 || die "$f rules refused: $(head -c 300 "$TMP/check-$f.log")"
    done
    for ((round = 1; round <= REPEAT; round++)); do
        builds=(before after)
        ((round % 2 == 0)) && builds=(after before)
        for q in $RULES_QOS; do
            for b in "${builds[@]}"; do
                variants=(none sql)
                [[ $b == after ]] && variants+=(jq)
                for v in "${variants[@]}"; do
                    port=$(free_port)
                    label=rules-$b-$v
                    log "round $round: $label qos $q on 127.0.0.1:$port"
                    start "$label" "$port" || { stop_pid "$PID"; PID=""; continue; }
                    cell "$label" "$port" "$round" --scenario fan-in --qos "$q" --payload 64 --json
                    stop_pid "$PID"
                    PID=""
                done
            done
        done
    done
fi
CRIT=$TMP/criterion.txt
: >"$CRIT"
if [[ $RULES_CRITERION != 0 ]]; then
    log "cargo bench -p midge-rules --bench rules -- --quick evaluate/"
    cargo bench -p midge-rules --bench rules --no-run >"$CRIT.build" 2>&1 || die "the rules bench does not build"
    "${PIN_BROKER[@]}" cargo bench -p midge-rules --bench rules -- --quick 'evaluate/' >"$CRIT" 2>"$CRIT.err" ||
        log "cargo bench failed (see $CRIT.err)"
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Per cell and broker: the mean over the rounds (every round, so a bad round shows).
SECTION=$TMP/section.md
{
    echo "<!-- compare:begin (generated by bench/compare.sh) -->"
    echo "## Before and after: two Midge builds side by side"
    echo
    echo '```'
    echo "BASE_MIDGE=<build of $BASE_REV> BASE_REV=$BASE_REV REPEAT=$REPEAT bench/compare.sh"
    echo '```'
    echo
    echo "- Date: $START_DATE; before = git $BASE_REV, after = git $TIP_REV, Mosquitto $("$MOSQUITTO" -h 2>/dev/null | head -n1 | awk '{print $3}')"
    echo "- $REPEAT rounds, broker order reversed every other round; each figure is the mean over the rounds"
    echo "  (min-max in brackets); per cell ${WARMUP} s warm-up + ${DURATION} s, window ${WINDOW}, MQTT 3.1.1,"
    echo "  broker pinned to core $BROKER_CPU, generator to core $BENCH_CPU, as in bench/run.sh."
    echo "- Load average before $LOAD_BEFORE, after $LOAD_AFTER."
    echo
    echo "| scenario | QoS | payload | before msgs/s | after msgs/s | after/before | before p99 µs | after p99 µs | mosquitto msgs/s |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
    jq -rn '
        [inputs | select(.scenario != "idle" and .scenario != null and (.error | not))] as $all
        | def stat(b; s; q; p): [$all[] | select(.broker == b and .scenario == s and .qos == q and .payload == p)];
          def mean(f): if length == 0 then null else (map(f) | add / length) end;
          def rng(f): if length < 2 then "" else " (\(map(f) | min | round)-\(map(f) | max | round))" end;
          ($all | map({scenario, qos, payload}) | unique | sort_by(.scenario, .qos, .payload))[]
        | . as $c
        | stat("midge-base"; $c.scenario; $c.qos; $c.payload) as $b
        | stat("midge"; $c.scenario; $c.qos; $c.payload) as $t
        | stat("mosquitto"; $c.scenario; $c.qos; $c.payload) as $m
        | ($b | mean(.msgs_per_s)) as $bm | ($t | mean(.msgs_per_s)) as $tm
        | "| \($c.scenario) | \($c.qos) | \($c.payload) B | \($bm // 0 | round)\($b | rng(.msgs_per_s)) | \($tm // 0 | round)\($t | rng(.msgs_per_s)) | "
          + (if $bm and $tm and $bm > 0 then "\(($tm / $bm * 1000 | round) / 10) %" else "-" end)
          + " | \($b | mean(.p99_us) // 0 | round) | \($t | mean(.p99_us) // 0 | round) | \($m | mean(.msgs_per_s) // 0 | round) |"
    ' "$RESULTS"
    echo
    echo "Idle connections ($IDLE_CONNECTIONS, CONNECT only, keep-alive 0; VmRSS growth per connection):"
    echo
    echo "| broker | KiB per connection | connects/s |"
    echo "|---|---:|---:|"
    jq -rn '
        [inputs | select(.scenario == "idle" and (.error | not))] as $all
        | ["midge-base", "midge", "mosquitto"][] as $b
        | [$all[] | select(.broker == $b)] as $r
        | select($r | length > 0)
        | "| \(if $b == "midge-base" then "midge before" elif $b == "midge" then "midge after" else $b end) | "
          + "\(($r | map(.kib_per_conn) | add / length) * 100 | round / 100) | \($r | map(.connects_per_s) | add / length | round) |"
    ' "$RESULTS"
    if [[ $RULES != 0 ]]; then
        echo
        echo "Rules (fan-in, 8 publishers, JSON payloads of 64 B, 10 rules on the fan-in filter that read"
        echo "\`payload.seq\` and republish it to a topic nobody subscribes to; before = git $RULES_BASE_REV):"
        echo
        echo "| QoS | rules | before msgs/s | after msgs/s | after/before | after p99 µs |"
        echo "|---|---|---:|---:|---:|---:|"
        jq -rn '
            [inputs | select(.broker != null and (.broker | startswith("rules-")) and (.error | not))] as $all
            | def mean(f): if length == 0 then null else (map(f) | add / length) end;
              ($all | map(.qos) | unique)[] as $q
            | ["none", "sql", "jq"][] as $v
            | [$all[] | select(.qos == $q and .broker == "rules-before-\($v)")] as $b
            | [$all[] | select(.qos == $q and .broker == "rules-after-\($v)")] as $t
            | select(($t | length) > 0)
            | ($b | mean(.msgs_per_s)) as $bm | ($t | mean(.msgs_per_s)) as $tm
            | "| \($q) | \(if $v == "none" then "none" elif $v == "sql" then "10 SQL" else "10 jq(\u0027.seq\u0027, payload)" end) | "
              + "\($bm // "-" | if type == "number" then round else . end) | \($tm | round) | "
              + (if $bm then "\(($tm / $bm * 1000 | round) / 10) %" else "-" end)
              + " | \($t | mean(.p99_us) | round) |"
        ' "$RESULTS"
    fi
    if [[ -s $CRIT ]]; then
        echo
        echo "Cost of one rule per message (criterion, \`cargo bench -p midge-rules --bench rules -- --quick evaluate/\`,"
        echo "pinned to core $BROKER_CPU; the jq rule is \`jq('{t_f: (.temp * 1.8 + 32), loc}', payload)\`,"
        echo "the SQL rule computes the same):"
        echo
        echo '```'
        grep -A1 '^evaluate/' "$CRIT" | grep -v '^--' | sed 's/  */ /g'
        echo '```'
    fi
    echo
    echo "<details><summary>raw results (one JSON object per cell and round)</summary>"
    echo
    echo '```json'
    cat "$RESULTS"
    echo '```'
    echo
    echo "</details>"
    echo
    echo "<!-- compare:end -->"
} >"$SECTION"
write_section compare "$SECTION" "$OUT"
log "wrote the compare section of $OUT (raw files in $TMP)"
