#!/usr/bin/env bash
# Runs every midge-bench scenario x QoS x payload against Midge, Mosquitto and
# (if on PATH) rumqttd, one broker at a time, and writes docs/BENCHMARKS.md.
#
#   bench/run.sh
#
# Environment (all optional):
#   DURATION=5        measured seconds per cell      WARMUP=1   warm-up seconds per cell
#   DRAIN=5           max seconds to drain per cell  WINDOW=64  closed-loop window per publisher
#   BROKERS="midge mosquitto rumqttd"   SCENARIOS="fan-in fan-out pairs"
#   QOS_LEVELS="0 1"  PAYLOADS="64 1024"  IDLE_CONNECTIONS=10000 (0 skips idle)
#   BROKER_CPU=0  BENCH_CPU=1   cores for taskset
#   NICE=-10          niceness of broker and generator when run as root (less
#                     interference from background jobs); NICE=0 disables
#   OUT=docs/BENCHMARKS.md   SKIP_BUILD=1 (reuse target/release binaries)
#   MOSQUITTO=/usr/sbin/mosquitto   RUMQTTD=rumqttd
#   QUIET_WAIT=0      before each cell wait up to this many seconds for other
#                     processes to use < 15 % CPU (shared machines); the share
#                     seen is kept as "background_cpu_pct" in the raw results
#   RULES=1           when midge is in BROKERS: fan-in with JSON payloads against
#                     Midge with no rules and with RULES_COUNT (10) rules that read
#                     the payload and republish ("Rules" section); RULES=0 skips
#   RULES_QOS="0 1"  RULES_PAYLOAD=64   QoS levels / payload size of those cells
#   RULES_VERIFY=1    two more cells per QoS with a connection subscribed to the
#                     rules' output topics, counting the republishes: at full load
#                     and at window 1 (light load: every message must come out)
#   RULES_CRITERION=1 also run `cargo bench -p midge --bench rules` and
#                     `cargo bench -p midge-rules --bench rules` (--quick); 0 skips
#   RATE=10000        "Latency at a fixed rate" section: on a freshly started broker
#                     each, every broker in BROKERS runs RATE_SCENARIOS x RATE_QOS at
#                     RATE_PAYLOAD open loop (`midge-bench --rate RATE`: RATE publishes/s
#                     in total, latency from each message's due time), for DURATION s;
#                     the issue 2 p99 target (Midge vs Mosquitto) comes from these cells.
#                     RATE=0 skips them and keeps that section (and its raw results)
#                     as it is in OUT
#   RATE_SCENARIOS="fan-in pairs"  RATE_QOS="0 1"  RATE_PAYLOAD=64
#   RATE_SPIN_US=1000 --spin-us of those cells: the generator waits the last 1 ms before
#                     each due time by yielding, not on tokio's 1 ms timer (it has a
#                     core of its own); 0 = timer only
#   RATE_REPEAT=3     runs of every fixed-rate cell (brokers alternate); the table
#                     shows median latencies, the lowest achieved rate, summed loss
#   PERSIST=0         1: afterwards run bench/persist.sh (Midge sled / PostgreSQL vs
#                     Mosquitto with persistence; long: see that script), with
#                     BROKERS=$PERSIST_BROKERS when set (its other settings from the
#                     environment, except DURATION and WINDOW). Without it the persistence
#                     section already in OUT is kept as it is.
#
# Brokers that fail to build or start get 'n/a' with the reason; the run goes on.
# Every broker this script starts is stopped by its PID.

set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# Shared helpers (mosquitto_conf, free_port, wait_ready, cpu_busy); this
# script keeps its own stop_broker, defined below.
. bench/lib.sh
# The exact command, with the environment overrides that were given.
COMMAND="bench/run.sh"
for v in PERSIST_BROKERS PERSIST RATE_REPEAT RATE_SPIN_US RATE_PAYLOAD RATE_QOS RATE_SCENARIOS RATE RULES_CRITERION RULES_VERIFY RULES_PAYLOAD RULES_QOS RULES_COUNT RULES OUT QUIET_WAIT NICE BENCH_CPU BROKER_CPU IDLE_CONNECTIONS PAYLOADS QOS_LEVELS SCENARIOS BROKERS WINDOW DRAIN WARMUP DURATION; do
    if printenv "$v" >/dev/null; then
        COMMAND="$v=\"$(printenv "$v")\" $COMMAND"
    fi
done
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-5}
WINDOW=${WINDOW:-64}
BROKERS=${BROKERS:-midge mosquitto rumqttd}
SCENARIOS=${SCENARIOS:-fan-in fan-out pairs}
QOS_LEVELS=${QOS_LEVELS:-0 1}
PAYLOADS=${PAYLOADS:-64 1024}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
NICE=${NICE:--10}
QUIET_WAIT=${QUIET_WAIT:-0}
OUT=${OUT:-docs/BENCHMARKS.md}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
RUMQTTD=${RUMQTTD:-rumqttd}
RULES=${RULES:-1}
RULES_COUNT=${RULES_COUNT:-10}
RULES_QOS=${RULES_QOS:-0 1}
RULES_PAYLOAD=${RULES_PAYLOAD:-64}
RULES_VERIFY=${RULES_VERIFY:-1}
RULES_CRITERION=${RULES_CRITERION:-1}
RATE=${RATE:-10000}
RATE_SCENARIOS=${RATE_SCENARIOS:-fan-in pairs}
RATE_QOS=${RATE_QOS:-0 1}
RATE_PAYLOAD=${RATE_PAYLOAD:-64}
RATE_SPIN_US=${RATE_SPIN_US:-1000}
RATE_REPEAT=${RATE_REPEAT:-3}
BENCH=$ROOT/target/release/midge-bench
MIDGE=$ROOT/target/release/midge


log() { echo "[run.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v jq >/dev/null || die "jq is required (apt-get install -y jq)"
command -v taskset >/dev/null || die "taskset is required (util-linux)"

TMP=$(mktemp -d /tmp/midge-bench.XXXXXX)
RESULTS=$TMP/results.jsonl
NOTES=$TMP/notes.md
: >"$RESULTS"
: >"$NOTES"
BROKER_PID=""

stop_broker() {
    local pid=$1
    [[ -z $pid ]] && return
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
}
cleanup() { stop_broker "$BROKER_PID"; BROKER_PID=""; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10,000 idle connections need that many descriptors in the broker and in
# the generator (both inherit this shell's limit).
HARD=$(ulimit -Hn)
WANT=$((IDLE_CONNECTIONS + 1024))
if [[ $HARD == unlimited || $HARD -ge 65536 ]]; then
    ulimit -n 65536
elif [[ $HARD -ge $WANT ]]; then
    ulimit -n "$HARD"
else
    ulimit -n "$HARD"
    log "warning: hard fd limit $HARD < $WANT; idle runs may fail (raise it with ulimit -Hn as root)"
fi
log "fd limit: $(ulimit -n)"

# PIN_BROKER / PIN_BENCH: command prefixes (taskset, and nice when allowed).
PIN_BROKER=(taskset -c "$BROKER_CPU")
PIN_BENCH=(taskset -c "$BENCH_CPU")
if [[ $NICE != 0 ]]; then
    if [[ $NICE -ge 0 || $(id -u) == 0 ]]; then
        PIN_BROKER=(nice -n "$NICE" "${PIN_BROKER[@]}")
        PIN_BENCH=(nice -n "$NICE" "${PIN_BENCH[@]}")
    else
        log "not root: running at normal priority (NICE=$NICE needs root)"
        NICE=0
    fi
fi

# ---------------------------------------------------------------- build
MIDGE_BUILD_ERR=""
if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --release --workspace --bin midge --bin midge-bench"
    if ! cargo build --release --workspace --bin midge --bin midge-bench 2>"$TMP/build.log"; then
        MIDGE_BUILD_ERR="build failed: $(grep -m1 '^error' "$TMP/build.log" || tail -n1 "$TMP/build.log")"
        log "$MIDGE_BUILD_ERR; building midge-bench alone"
        cargo build --release --workspace --bin midge-bench || die "midge-bench does not build"
    fi
fi
[[ -x $BENCH ]] || die "$BENCH missing (unset SKIP_BUILD)"

# ---------------------------------------------------------------- brokers
# start_broker NAME PORT -> sets BROKER_PID, or sets START_ERR and fails.
# Must not run in a subshell: the broker has to be this shell's child.
START_ERR=""
start_broker() {
    local name=$1 port=$2 logf=$TMP/$1.log
    case $name in
    midge)
        [[ -n $MIDGE_BUILD_ERR ]] && { START_ERR="$MIDGE_BUILD_ERR"; return 1; }
        [[ -x $MIDGE ]] || { START_ERR="$MIDGE not built"; return 1; }
        local ws cfg=()
        ws=$(free_port $((port + 1)))
        # MIDGE_CONFIG: a config file (the rules cells), else the defaults.
        [[ -n ${MIDGE_CONFIG:-} ]] && cfg=(--config "$MIDGE_CONFIG")
        "${PIN_BROKER[@]}" "$MIDGE" serve "${cfg[@]}" --listen "127.0.0.1:$port" \
            --ws-listen "127.0.0.1:$ws" --no-admin >"$logf" 2>&1 &
        ;;
    mosquitto)
        [[ -x $MOSQUITTO ]] || { START_ERR="$MOSQUITTO not installed"; return 1; }
        mosquitto_conf "$port" >"$TMP/mosquitto.conf"
        "${PIN_BROKER[@]}" "$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$logf" 2>&1 &
        ;;
    rumqttd)
        command -v "$RUMQTTD" >/dev/null || { START_ERR="rumqttd not on PATH (skipped)"; return 1; }
        # Untested here: rumqttd was not installed on the machine that wrote this.
        cat >"$TMP/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 65535
dynamic_filters = true
[console]
listen = "127.0.0.1:$(free_port $((port + 1)))"
EOF
        "${PIN_BROKER[@]}" "$RUMQTTD" --config "$TMP/rumqttd.toml" >"$logf" 2>&1 &
        ;;
    *)
        START_ERR="unknown broker $name"
        return 1
        ;;
    esac
    BROKER_PID=$!
    local why
    if ! why=$(wait_ready "$BROKER_PID" "$port" "$logf"); then
        stop_broker "$BROKER_PID"
        BROKER_PID=""
        START_ERR=$why
        return 1
    fi
}

version_of() {
    case $1 in
    midge)
        local v
        v=$("$MIDGE" --version 2>/dev/null | head -n1)
        echo "${v:-midge (workspace build)} (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null))"
        ;;
    mosquitto) "$MOSQUITTO" -h 2>/dev/null | head -n1 ;;
    rumqttd) "$RUMQTTD" --version 2>/dev/null | head -n1 ;;
    esac
}

# run_cell BROKER PORT ARGS... -> one JSON line appended to $RESULTS
# (--window $WINDOW unless WINDOW is empty: then midge-bench's default)
run_cell() {
    local broker=$1 port=$2
    shift 2
    local line rc bg="" win=()
    [[ -n $WINDOW ]] && win=(--window "$WINDOW")
    if [[ $QUIET_WAIT -gt 0 ]]; then
        # The broker is idle between cells, so this is other processes' load.
        local until=$((SECONDS + QUIET_WAIT))
        bg=$(cpu_busy)
        while [[ $bg -ge 15 && $SECONDS -lt $until ]]; do
            log "background CPU ${bg}%: waiting for a quiet machine"
            sleep 5
            bg=$(cpu_busy)
        done
    fi
    line=$(timeout "$CELL_TIMEOUT" "${PIN_BENCH[@]}" "$BENCH" \
        --host 127.0.0.1 --port "$port" --broker-pid "$BROKER_PID" --label "$broker" \
        --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" "${win[@]}" \
        "$@" 2>>"$TMP/human.log" | grep '^{' | tail -n1)
    rc=$?
    if [[ -z $line ]]; then
        line=$(jq -cn --arg b "$broker" --arg a "$*" \
            '{broker:$b, args:$a, error:"midge-bench produced no result (timeout or crash)"}')
    fi
    if [[ -n $bg ]]; then
        line=$(jq -c --argjson bg "$bg" '. + {background_cpu_pct: $bg}' <<<"$line")
    fi
    echo "$line" >>"$RESULTS"
    [[ -f $TMP/human.log ]] && tail -n1 "$TMP/human.log" >&2
    return $rc
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_BEFORE=$(cpu_busy)
log "background CPU use before the run: ${BUSY_BEFORE}%"
START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
# Generous bound per cell (connection setup + warm-up + run + drain).
CELL_TIMEOUT=$(awk -v d="$DURATION" -v w="$WARMUP" -v r="$DRAIN" 'BEGIN { print int(d + w + r + 120) }')
PORT_BASE=21883
for broker in $BROKERS; do
    port=$(free_port $PORT_BASE)
    PORT_BASE=$((port + 10))
    log "starting $broker on 127.0.0.1:$port (cpu $BROKER_CPU)"
    if ! start_broker "$broker" "$port"; then
        why=$START_ERR
        log "$broker: n/a: $why"
        jq -cn --arg b "$broker" --arg r "$why" '{broker:$b, na:$r}' >>"$RESULTS"
        continue
    fi
    echo "  - $broker: $(version_of "$broker"), pid $BROKER_PID, port $port" >>"$NOTES"
    # Idle first, on a fresh broker, so RSS per connection is not hidden by
    # memory the allocator kept from the load runs.
    if [[ $IDLE_CONNECTIONS -gt 0 ]]; then
        run_cell "$broker" "$port" --scenario idle --connections "$IDLE_CONNECTIONS"
    fi
    for s in $SCENARIOS; do
        for q in $QOS_LEVELS; do
            for p in $PAYLOADS; do
                if ! kill -0 "$BROKER_PID" 2>/dev/null; then
                    jq -cn --arg b "$broker" --arg s "$s" --argjson q "$q" --argjson p "$p" \
                        '{broker:$b, scenario:$s, qos:$q, payload:$p, error:"broker died"}' >>"$RESULTS"
                    continue
                fi
                run_cell "$broker" "$port" --scenario "$s" --qos "$q" --payload "$p"
            done
        done
    done
    log "stopping $broker (pid $BROKER_PID)"
    stop_broker "$BROKER_PID"
    BROKER_PID=""
done

# ---------------------------------------------------------------- fixed rate
# Open loop: RATE publishes/s whatever the broker does, latency measured from
# each message's due time. Each broker is started afresh (no queues or
# allocator state left from the saturation cells) and runs every cell.
# WINDOW is left to midge-bench, where it is then only a memory bound (100000).
RATE_RAN=""
if [[ $RATE != 0 ]]; then
    RATE_RAN=1
    # Repetitions alternate the brokers, so a noisy stretch of time (this is
    # a VM: scheduling hiccups of milliseconds) does not land on one broker.
    for rep in $(seq 1 "$RATE_REPEAT"); do
    for broker in $BROKERS; do
        port=$(free_port $PORT_BASE)
        PORT_BASE=$((port + 10))
        log "fixed rate: starting $broker on 127.0.0.1:$port (cpu $BROKER_CPU)"
        if ! start_broker "$broker" "$port"; then
            log "$broker: n/a: $START_ERR"
            jq -cn --arg b "$broker" --arg r "$START_ERR" --argjson rate "$RATE" \
                '{broker:$b, rate:$rate, rate_na:$r}' >>"$RESULTS"
            continue
        fi
        for s in $RATE_SCENARIOS; do
            for q in $RATE_QOS; do
                if ! kill -0 "$BROKER_PID" 2>/dev/null; then
                    jq -cn --arg b "$broker" --arg s "$s" --argjson q "$q" --argjson p "$RATE_PAYLOAD" \
                        --argjson rate "$RATE" \
                        '{broker:$b, scenario:$s, qos:$q, payload:$p, rate:$rate, error:"broker died"}' >>"$RESULTS"
                    continue
                fi
                WINDOW="" run_cell "$broker" "$port" --scenario "$s" --qos "$q" --payload "$RATE_PAYLOAD" \
                    --rate "$RATE" --spin-us "$RATE_SPIN_US"
            done
        done
        log "stopping $broker (pid $BROKER_PID)"
        stop_broker "$BROKER_PID"
        BROKER_PID=""
    done
    done
fi

# ---------------------------------------------------------------- rules
# Fan-in with JSON payloads against Midge without rules and with RULES_COUNT
# rules on the fan-in filter that read the payload and republish (to topics
# nobody subscribes to, so the cost is rule evaluation + actions + routing).
# Broker variants alternate per QoS so background drift hits both alike.
RULES_RAN=""
RULES_DIR=$TMP/rules
if [[ $RULES != 0 && " $BROKERS " == *" midge "* ]]; then
    RULES_RAN=1
    mkdir -p "$RULES_DIR"
    echo "# midge-bench rules cells: no rules" >"$RULES_DIR/none.toml"
    {
        echo "# midge-bench rules cells: $RULES_COUNT rules on the fan-in filter"
        for n in $(seq "$RULES_COUNT"); do
            echo
            echo "[[rules]]"
            echo "id = \"bench-$n\""
            echo "sql = 'SELECT payload.seq AS s, clientid FROM \"bench/+/in/+\" WHERE s >= 0'"
            echo "actions = [{ type = \"republish\", topic = \"rules-out/$n\", payload = \"\${s}\" }]"
        done
    } >"$RULES_DIR/rules.toml"
    if ! "$MIDGE" check --config "$RULES_DIR/rules.toml" >"$TMP/rules-check.log" 2>&1; then
        log "rules config rejected: $(head -c 300 "$TMP/rules-check.log")"
    fi
    port=$(free_port $PORT_BASE)
    PORT_BASE=$((port + 10))
    for q in $RULES_QOS; do
        variants=(none rules)
        [[ $RULES_VERIFY != 0 ]] && variants+=(verify verify-light)
        for v in "${variants[@]}"; do
            label=midge-rules-$v
            cfgf=$RULES_DIR/rules.toml
            [[ $v == none ]] && cfgf=$RULES_DIR/none.toml
            watch=()
            [[ $v == verify* ]] && watch=(--watch 'rules-out/#')
            window=$WINDOW
            [[ $v == verify-light ]] && window=1
            log "rules: $label qos $q on 127.0.0.1:$port"
            if ! MIDGE_CONFIG=$cfgf start_broker midge "$port"; then
                log "$label: n/a: $START_ERR"
                jq -cn --arg b "$label" --arg r "$START_ERR" --argjson q "$q" \
                    '{broker:$b, qos:$q, rules_na:$r}' >>"$RESULTS"
                continue
            fi
            WINDOW=$window run_cell "$label" "$port" --scenario fan-in --qos "$q" --payload "$RULES_PAYLOAD" \
                --json "${watch[@]}"
            stop_broker "$BROKER_PID"
            BROKER_PID=""
        done
    done
fi

# criterion: RuleEngine::on_message (broker/benches/rules.rs) and, cheaply,
# the midge-rules crate's own benches. Pinned to the broker's core.
CRIT_BROKER=$TMP/criterion-midge.txt
CRIT_CRATE=$TMP/criterion-midge-rules.txt
if [[ $RULES_CRITERION != 0 ]]; then
    for spec in "midge --bench rules:$CRIT_BROKER" "midge-rules --bench rules:$CRIT_CRATE"; do
        args=${spec%%:*}
        outf=${spec#*:}
        # shellcheck disable=SC2086
        log "cargo bench -p $args -- --quick"
        # shellcheck disable=SC2086
        if cargo bench -p $args --no-run >"$outf.build" 2>&1; then
            # shellcheck disable=SC2086
            "${PIN_BROKER[@]}" cargo bench -p $args -- --quick >"$outf" 2>"$outf.err" ||
                log "cargo bench -p $args failed (see $outf.err)"
        else
            log "cargo bench -p $args does not build (see $outf.build)"
        fi
    done
fi

# crit_rows FILE -> "name<TAB>time" rows from criterion's output: the
# middle (point) estimate of each "time: [low est high]".
crit_rows() {
    [[ -s $1 ]] || return
    awk '
        { sub(/.*\r/, "") }
        /^[^ \t]/ && $1 != "Benchmarking" && $1 != "Found" { name = $1 }
        /time:/ {
            sub(/.*time: *\[/, ""); sub(/\].*/, "")
            split($0, f, " ")
            print name "\t" f[3] " " f[4]
        }' "$1"
}
crit_time() { # FILE NAME -> "1.23 µs" or "-"
    local t
    t=$(crit_rows "$1" | awk -F'\t' -v n="$2" '$1 == n { print $2 }' | tail -n1)
    echo "${t:--}"
}

# ---------------------------------------------------------------- report
cell() { # broker scenario qos payload -> "msgs/s | p50 | p99 | loss | cpu"
    local na
    na=$(jq -r --arg b "$1" 'select(.broker == $b and .na != null) | .na' "$RESULTS" | head -n1)
    if [[ -n $na ]]; then
        echo "n/a | n/a | n/a | n/a | n/a"
        return
    fi
    jq -r --arg b "$1" --arg s "$2" --argjson q "$3" --argjson p "$4" '
        select(.broker == $b and .scenario == $s and .qos == $q and .payload == $p and .rate == null)
        | if .error then "error | | | | "
          else "\(.msgs_per_s) | \(.p50_us | round) | \(.p99_us | round) | \(.loss)"
            + (if .duplicates > 0 then " (+\(.duplicates) dup)" else "" end)
            + " | \(.broker_cpu_pct // "?" | if type == "number" then round else . end)"
          end' "$RESULTS" | tail -n1 | grep . || echo "- | - | - | - | -"
}

rate_cell() { # broker scenario qos -> "achieved msgs/s | p50 | p99 | p999 | loss"
    local na
    na=$(jq -r --arg b "$1" 'select(.broker == $b and (.na != null or .rate_na != null)) | .na // .rate_na' "$RESULTS" | head -n1)
    if [[ -n $na ]]; then
        echo "n/a | n/a | n/a | n/a | n/a"
        return
    fi
    # "(stalled)": publishers had to wait for the window bound or PUBACKs,
    # i.e. the broker did not keep up with the rate.
    # Over the repetitions: the lowest achieved rate, median latencies,
    # summed loss and duplicates.
    jq -rn --arg b "$1" --arg s "$2" --argjson q "$3" --argjson p "$RATE_PAYLOAD" "$RATE_JQ"'
        [inputs | select(.broker == $b and .scenario == $s and .qos == $q and .payload == $p and .rate != null)]
        | if length == 0 then empty
          elif any(.[]; .error) then "error | | | | "
          else "\(map(.achieved_rate) | min)"
            + (if any(.[]; (.window_stalls // 0) + (.ack_stalls // 0) > 0) then " (stalled)" else "" end)
            + " | \(med(.p50_us) | round) | \(med(.p99_us) | round) | \(med(.p999_us) | round) | \(map(.loss) | add)"
            + (if (map(.duplicates) | add) > 0 then " (+\(map(.duplicates) | add) dup)" else "" end)
          end' "$RESULTS" | grep . || echo "- | - | - | - | -"
}

# jq helpers for the fixed-rate cells: med(f) is the median of f over an
# array of runs (the lower middle one for an even count).
RATE_JQ='def med(f): map(f) | sort | .[(length - 1) / 2 | floor];'


# rate_target SCENARIO QOS -> "| scenario | QoS | Midge p99 | Mosquitto p99 | verdict |":
# issue 2's "p99 latency at 10k msgs/s no worse than Mosquitto's", per cell.
# Midge must also have sustained the rate (within 5 %, no stalls) without loss.
rate_target() {
    jq -rn --arg s "$1" --argjson q "$2" --argjson p "$RATE_PAYLOAD" --argjson rate "$RATE" "$RATE_JQ"'
        [inputs | select(.scenario == $s and .qos == $q and .payload == $p and .rate != null)] as $all
        # One summary per broker over its repetitions (median p99).
        | def summary: if length == 0 then null
              elif any(.[]; .error) then {error: true}
              else {p99_us: med(.p99_us), loss: (map(.loss) | add),
                    achieved_rate: (map(.achieved_rate) | min),
                    window_stalls: (map(.window_stalls // 0) | add),
                    ack_stalls: (map(.ack_stalls // 0) | add)} end;
          ($all | map(select(.broker == "midge")) | summary) as $m
        | ($all | map(select(.broker == "mosquitto")) | summary) as $o
        | def p99: if . == null or .error then "-" else "\(.p99_us | round)" end;
          def kept: .achieved_rate >= 0.95 * $rate and (.window_stalls // 0) + (.ack_stalls // 0) == 0;
          "| \($s) | \($q) | \($m | p99) | \($o | p99) | "
          + (if $m == null or $o == null or $m.error or $o.error then "not measured"
             elif ($m | kept | not) then "**not met** (Midge did not sustain \($rate) msgs/s)"
             elif $m.loss > 0 then "**not met** (Midge lost \($m.loss))"
             elif $m.p99_us <= $o.p99_us then "met"
             else "**not met**" end)
          + (if $o != null and ($o.error | not) and ($o | kept | not) then " (Mosquitto did not sustain the rate)" else "" end)
          + " |"' "$RESULTS"
}

# The persistence (bench/persist.sh), archive (bench/archive.sh), persist-kafka
# (bench/kafka.sh) and plugins (bench/plugin.sh) sections of the file being
# replaced are kept.
PERSIST_BLOCK=$TMP/persist-section.md
KAFKA_BLOCK=$TMP/kafka-section.md
if [[ -f $OUT ]]; then
    sed -n '/^<!-- persistence:begin/,/^<!-- persistence:end -->/p' "$OUT" >"$PERSIST_BLOCK"
    # And the archive section (bench/archive.sh).
    sed -n '/^<!-- archive:begin/,/^<!-- archive:end -->/p' "$OUT" >"$TMP/archive-section.md"
    sed -n '/^<!-- kafka:begin/,/^<!-- kafka:end -->/p' "$OUT" >"$KAFKA_BLOCK"
    sed -n '/^<!-- plugin:begin/,/^<!-- plugin:end -->/p' "$OUT" >"$TMP/plugin-section.md"
    # Hand-written analysis (targets against the figures, measured causes)
    # is kept as it is, to be revised by hand after a run.
    sed -n '/^<!-- notes-targets:begin/,/^<!-- notes-targets:end -->/p' "$OUT" >"$TMP/notes-targets.md"
    sed -n '/^<!-- notes-plugin:begin/,/^<!-- notes-plugin:end -->/p' "$OUT" >"$TMP/notes-plugin.md"
    # Memory per idle connection (bench/idle.sh) and its hand-written breakdown.
    sed -n '/^<!-- idle:begin/,/^<!-- idle:end -->/p' "$OUT" >"$TMP/idle-section.md"
    sed -n '/^<!-- notes-idle:begin/,/^<!-- notes-idle:end -->/p' "$OUT" >"$TMP/notes-idle.md"
    # Sections written by other scripts (bench/cluster.sh, bench/compare.sh,
    # bench/bridge.sh, ...) that this script does not know by name: kept as
    # they are, in their order, after the known ones.
    : >"$TMP/other-sections.md"
    for name in $(sed -n 's/^<!-- \([a-z0-9-]*\):begin.*/\1/p' "$OUT"); do
        case $name in
        rate | notes-targets | persistence | archive | kafka | plugin | notes-plugin | idle | notes-idle) ;;
        *)
            sed -n "/^<!-- $name:begin/,/^<!-- $name:end -->/p" "$OUT" >>"$TMP/other-sections.md"
            echo >>"$TMP/other-sections.md"
            ;;
        esac
    done
    # RATE=0: the fixed-rate section and its raw results stay as they were.
    if [[ -z $RATE_RAN ]]; then
        sed -n '/^<!-- rate:begin/,/^<!-- rate:end -->/p' "$OUT" >"$TMP/rate-section.md"
        sed -n '/^## Raw results/,$p' "$OUT" | grep '^{' |
            jq -c 'select(.rate != null)' 2>/dev/null >"$TMP/rate-raw.jsonl"
    fi
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_AFTER=$(cpu_busy)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
[[ -z $CPU_MODEL ]] && CPU_MODEL=$(grep -m1 -i 'Hardware\|CPU part' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "# Benchmarks"
    echo
    echo "Generated by:"
    echo
    echo '```'
    echo "$COMMAND"
    echo '```'
    echo
    echo "- Date: $START_DATE"
    echo "- Machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
    echo "- Per cell: ${WARMUP} s warm-up + ${DURATION} s measured, window ${WINDOW} per publisher, drain up to ${DRAIN} s; MQTT 3.1.1"
    echo "- Background load: ${BUSY_BEFORE}% of all CPUs busy just before the run, ${BUSY_AFTER}% just after;"
    echo "  load average (1/5/15 min) before $LOAD_BEFORE, after $LOAD_AFTER"
    if [[ $BUSY_BEFORE -gt 10 || $BUSY_AFTER -gt 10 ]]; then
        echo "- **Warning:** the machine was not idle (other processes compete with the pinned broker"
        echo "  and generator for their cores), so some figures are low and noisy; the broker CPU column"
        echo "  shows which cells did not get a full core. Re-run on a quiet machine before comparing."
    fi
    echo "- Brokers:"
    cat "$NOTES"
    echo
    echo "## Method"
    echo
    echo "\`midge-bench\` (crate \`bench/\`) is a closed-loop generator: each publisher may have at most"
    echo "${WINDOW} messages published but not yet received by *every* subscriber that should get them"
    echo "(for fan-out: all 100), so a broker that acknowledges faster than it delivers cannot look fast."
    echo "QoS 1 publishers are additionally limited to ${WINDOW} publishes without PUBACK. Payloads carry"
    echo "publisher id, sequence number and send time; latency is end to end (publish call to subscriber"
    echo "decode, same clock), loss is every sequence number a subscriber never received after the drain,"
    echo "duplicates and reordering are counted per publisher. msgs/s counts deliveries (a fan-out"
    echo "publish delivered to 100 subscribers counts 100) received during the measured seconds."
    echo "The windows stay full, so latency is queueing under saturation (by Little's law about"
    echo "outstanding messages / throughput), not the latency of an unloaded broker."
    echo "The broker is pinned with \`taskset -c ${BROKER_CPU}\` and the generator with \`taskset -c ${BENCH_CPU}\`,"
    echo "so each broker gets one core; brokers run one after another, never concurrently. Both run"
    echo "at niceness ${NICE} (0 = default) to keep unrelated background jobs from taking their cores."
    echo "Scenarios: fan-in = 8 publishers -> 1 subscriber on a \`+\` wildcard; fan-out = 1 publisher ->"
    echo "100 subscribers of one topic; pairs = 50 publisher/subscriber pairs on distinct topics;"
    echo "idle = ${IDLE_CONNECTIONS} connections that only CONNECT (keep-alive 0), connects/s and the broker's"
    echo "VmRSS growth per connection (measured before and 1 s after; then every connection is pinged)."
    echo "Idle runs first on a freshly started broker so memory kept from load runs does not hide it."
    echo "Latencies are in µs (log-linear histogram, <1.6 % bucket error). CPU % is the broker's CPU"
    echo "use during the measured seconds from /proc/PID/stat (about 100 = the broker was the"
    echo "bottleneck; well below 100 = it was starved or waiting). One cell by hand:"
    echo
    echo '```'
    echo "taskset -c ${BENCH_CPU} target/release/midge-bench --port PORT --scenario fan-in --qos 1 --payload 64 \\"
    echo "    --duration ${DURATION} --broker-pid PID --label NAME"
    echo '```'
    echo
    echo "## Throughput and latency"
    echo
    header="| scenario | QoS | payload |"
    sep="|---|---|---|"
    for b in $BROKERS; do
        header+=" $b msgs/s | p50 µs | p99 µs | loss | CPU % |"
        sep+="---:|---:|---:|---:|---:|"
    done
    echo "$header"
    echo "$sep"
    for s in $SCENARIOS; do
        for q in $QOS_LEVELS; do
            for p in $PAYLOADS; do
                row="| $s | $q | $p B |"
                for b in $BROKERS; do
                    row+=" $(cell "$b" "$s" "$q" "$p") |"
                done
                echo "$row"
            done
        done
    done
    echo
    if [[ -n $RATE_RAN ]]; then
        echo "<!-- rate:begin (generated by bench/run.sh; RATE=0 keeps it) -->"
        echo "## Latency at a fixed rate"
        echo
        echo "Open loop: \`midge-bench --rate ${RATE}\` publishes ${RATE} messages per second in total,"
        echo "whatever the broker does, shared evenly by the scenario's publishers on interleaved"
        echo "fixed schedules (one message every $(awk -v r="$RATE" 'BEGIN { printf "%g", 1e6 / r }') µs overall). Each payload carries the time"
        echo "its message was *due*, not when it went out, so when the broker stalls the generator,"
        echo "the wait still counts as latency (no coordinated omission); a publisher that fell"
        echo "behind sends what is due at once. Unlike the closed-loop table, this is latency at a"
        echo "given load, below saturation. The publish window is only a memory bound here"
        echo "(100,000 messages per publisher; QoS 1 at most 65,535 without PUBACK); \"(stalled)\""
        echo "marks a cell where a publisher had to wait for it, i.e. the broker did not keep up."
        echo "achieved msgs/s = publishes sent per measured second (should be ${RATE})."
        echo "${RATE_PAYLOAD} B payloads, ${WARMUP} s warm-up + ${DURATION} s measured, drain up to ${DRAIN} s, MQTT 3.1.1, same core"
        echo "pinning as above; each broker freshly started for these cells. The generator waits the last"
        echo "${RATE_SPIN_US} µs before each due time by yielding (\`--spin-us ${RATE_SPIN_US}\`; tokio's timer alone"
        echo "wakes up to ~1 ms late); how late it still published is in the raw results"
        echo "(\`send_lag_p99_us\`, worst cell: $(jq -s 'map(select(.rate != null and .send_lag_p99_us != null) | .send_lag_p99_us) | if length > 0 then max | round | tostring + " µs" else "-" end' -r "$RESULTS"))."
        echo "Every cell ran ${RATE_REPEAT} times, the brokers taking turns (each run on a freshly started"
        echo "broker): latencies are the median of the runs, achieved msgs/s the lowest, loss the sum."
        echo "On this VM a few milliseconds of scheduling delay now and then land in every broker's"
        echo "p99 and p999 alike; the median over runs keeps one bad stretch from deciding a cell."
        echo "Scenarios as above (fan-in: 8 publishers, pairs: 50). One cell by hand:"
        echo
        echo '```'
        echo "taskset -c ${BENCH_CPU} target/release/midge-bench --port PORT --scenario pairs --qos 1 --payload ${RATE_PAYLOAD} \\"
        echo "    --rate ${RATE} --spin-us ${RATE_SPIN_US} --duration ${DURATION} --label NAME"
        echo '```'
        echo
        header="| scenario | QoS |"
        sep="|---|---|"
        for b in $BROKERS; do
            header+=" $b achieved msgs/s | p50 µs | p99 µs | p999 µs | loss |"
            sep+="---:|---:|---:|---:|---:|"
        done
        echo "$header"
        echo "$sep"
        for s in $RATE_SCENARIOS; do
            for q in $RATE_QOS; do
                row="| $s | $q |"
                for b in $BROKERS; do
                    row+=" $(rate_cell "$b" "$s" "$q") |"
                done
                echo "$row"
            done
        done
        echo
        if [[ " $BROKERS " == *" midge "* && " $BROKERS " == *" mosquitto "* ]]; then
            echo "### Target (issue 2): p99 latency at ${RATE} msgs/s no worse than Mosquitto's"
            echo
            echo "Per cell: met when Midge's p99 is at most Mosquitto's, Midge sustained the rate"
            echo "(achieved within 5 %, no stalls) and lost nothing."
            echo
            echo "| scenario | QoS | Midge p99 µs | Mosquitto p99 µs | target |"
            echo "|---|---|---:|---:|---|"
            rows=$(for s in $RATE_SCENARIOS; do for q in $RATE_QOS; do rate_target "$s" "$q"; done; done)
            echo "$rows"
            echo
            met=$(grep -c '| met' <<<"$rows")
            echo "Met in ${met} of $(grep -c . <<<"$rows") cells."
            echo
        fi
        echo "<!-- rate:end -->"
        echo
    elif [[ -s $TMP/rate-section.md ]]; then
        cat "$TMP/rate-section.md"
        echo
    fi
    if [[ $IDLE_CONNECTIONS -gt 0 ]]; then
        echo "## Idle connections"
        echo
        echo "| broker | connections | connects/s | RSS before KiB | RSS after KiB | KiB/connection | alive |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for b in $BROKERS; do
            jq -r --arg b "$b" '
                select(.broker == $b and (.scenario == "idle" or .na != null))
                | if .na then "| \($b) | n/a | n/a | n/a | n/a | n/a | n/a |"
                  elif .error then "| \($b) | error | | | | | |"
                  else "| \($b) | \(.connections) | \(.connects_per_s) | \(.rss_before_kib) | \(.rss_after_kib) | \(.kib_per_conn) | \(.alive) |"
                  end' "$RESULTS"
        done
        echo
    fi
    if [[ -s $TMP/notes-targets.md ]]; then
        cat "$TMP/notes-targets.md"
        echo
    fi
    if [[ -n $RULES_RAN || $RULES_CRITERION != 0 ]]; then
        echo "## Rules"
        echo
    fi
    if [[ -n $RULES_RAN ]]; then
        echo "Midge only: fan-in (8 publishers -> 1 subscriber on \`bench/<run>/in/+\`) with"
        echo "\`midge-bench --json\` payloads (\`{\"p\":ID,\"seq\":N,\"ts\":NS,\"pad\":\"xx..\"}\` padded to"
        echo "${RULES_PAYLOAD} B), against Midge started with no rules and with ${RULES_COUNT} rules, each"
        echo
        echo '```toml'
        sed -n '/^\[\[rules\]\]/,/^$/p' "$RULES_DIR/rules.toml" | head -n4
        echo '```'
        echo
        echo "(\`rules-out/1\` ... \`rules-out/${RULES_COUNT}\`). Every message passes all ${RULES_COUNT} rules, so each"
        echo "publish costs ${RULES_COUNT} evaluations (one shared JSON decode) and ${RULES_COUNT} republishes,"
        echo "which run off the publisher's path on its action lane (a publisher whose lane is deep is held"
        echo "back, not its outputs dropped); nobody subscribes to \`rules-out/#\` in the measured cells, so republishes"
        echo "are routed but not delivered. Same core pinning, window and durations as above."
        if [[ $RULES_VERIFY != 0 ]]; then
            echo "The check columns run the ${RULES_COUNT}-rule cell again with one more connection subscribed"
            echo "(QoS 0) to \`rules-out/#\` (\`--watch\`), which also pays for delivering the republishes:"
            echo "republished = messages it received / (${RULES_COUNT} x messages published). Below 100 %,"
            echo "rule outputs were lost (QoS 0 delivery to the watching connection could not keep up)."
            echo "*delivered msgs/s* counts every message the broker delivered in that cell, inputs and"
            echo "republishes: msgs/s x (1 + received republishes / messages published), and its ratio to"
            echo "the no-rule msgs/s. The light check repeats it with \`--window 1\`"
            echo "(little load): there every message should come out ${RULES_COUNT} times (100 %)."
        fi
        echo "Target: ${RULES_COUNT} rules deliver at least 70 % of the no-rule msgs/s."
        echo
        echo "| QoS | payload | no rules msgs/s | p50 µs | p99 µs | CPU % | ${RULES_COUNT} rules msgs/s | p50 µs | p99 µs | CPU % | ${RULES_COUNT} rules / none |$([[ $RULES_VERIFY != 0 ]] && echo " check: msgs/s | republished | delivered msgs/s | / none | light check: msgs/s | republished |")"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|$([[ $RULES_VERIFY != 0 ]] && echo "---:|---:|---:|---:|---:|---:|")"
        for q in $RULES_QOS; do
            rcell() { # label -> "msgs/s | p50 | p99 | cpu" ; prints msgs/s to fd 3 too
                jq -r --arg b "$1" --argjson q "$q" '
                    select(.broker == $b and .qos == $q)
                    | if .rules_na then "n/a | | |"
                      elif .error then "error | | |"
                      else "\(.msgs_per_s) | \(.p50_us | round) | \(.p99_us | round) | \(.broker_cpu_pct // "?" | if type == "number" then round else . end)"
                        + (if .loss > 0 then " (loss \(.loss))" else "" end)
                      end' "$RESULTS" | tail -n1 | grep . || echo "- | - | - | -"
            }
            rate() { jq -r --arg b "$1" --argjson q "$q" 'select(.broker == $b and .qos == $q) | .msgs_per_s // empty' "$RESULTS" | tail -n1; }
            a=$(rate midge-rules-none)
            b=$(rate midge-rules-rules)
            pct=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0 && b != "") printf "%.0f %%", 100 * b / a; else print "-" }')
            row="| $q | $RULES_PAYLOAD B | $(rcell midge-rules-none) | $(rcell midge-rules-rules) | $pct |"
            if [[ $RULES_VERIFY != 0 ]]; then
                for c in midge-rules-verify midge-rules-verify-light; do
                    chk=$(jq -r --arg b "$c" --argjson q "$q" --argjson n "$RULES_COUNT" '
                        select(.broker == $b and .qos == $q)
                        | if .rules_na or .error then "error | -"
                          else "\(.msgs_per_s) | \(.watched // 0) / \(.sent * $n) = \(if .sent > 0 then ((.watched // 0) * 1000 / (.sent * $n) | round) / 10 else 0 end) %"
                          end' "$RESULTS" | tail -n1)
                    row+=" ${chk:-- | -} |"
                    if [[ $c == midge-rules-verify ]]; then
                        dl=$(jq -r --arg b "$c" --argjson q "$q" '
                            select(.broker == $b and .qos == $q and (.error | not) and (.rules_na | not) and .sent > 0)
                            | .msgs_per_s * (1 + (.watched // 0) / .sent) | round' "$RESULTS" | tail -n1)
                        dpct=$(awk -v a="$a" -v d="$dl" 'BEGIN { if (a > 0 && d != "") printf "%.0f %%", 100 * d / a; else print "-" }')
                        row+=" ${dl:--} | $dpct |"
                    fi
                done
            fi
            echo "$row"
        done
        echo
    fi
    if [[ $RULES_CRITERION != 0 ]]; then
        echo "Per-message cost of \`RuleEngine::on_message\` (criterion, \`broker/benches/rules.rs\`,"
        echo "\`cargo bench -p midge --bench rules -- --quick\`, pinned to core ${BROKER_CPU}): one publish on"
        echo "\`sensor/1/temp\` that matches exactly one rule; 1,000 rules are on distinct filters"
        echo "\`sensor/{i}/#\`, indexed in a trie. Rules have no actions (evaluation only)."
        echo "\`select_topic\`: \`SELECT topic, qos FROM \"sensor/{i}/#\"\`; \`json_where\`:"
        echo "\`SELECT payload.temp AS t FROM \"sensor/{i}/#\" WHERE t > 30\` (decodes the JSON payload)."
        echo "Times are criterion's point estimate of the mean (quick mode: short, noisier)."
        echo
        echo "| rule | no rules | 1 rule | 1,000 rules |"
        echo "|---|---:|---:|---:|"
        for g in select_topic json_where; do
            echo "| $g | $(crit_time "$CRIT_BROKER" "on_message/$g/none") | $(crit_time "$CRIT_BROKER" "on_message/$g/1_rule") | $(crit_time "$CRIT_BROKER" "on_message/$g/1000_rules") |"
        done
        echo
        if [[ -s $CRIT_CRATE ]]; then
            echo "The midge-rules crate alone (\`cargo bench -p midge-rules --bench rules -- --quick\`, \`rule-engine/benches/rules.rs\`):"
            echo
            echo "| bench | time |"
            echo "|---|---:|"
            crit_rows "$CRIT_CRATE" | awk -F'\t' '{ print "| " $1 " | " $2 " |" }'
            echo
        fi
    fi
    if jq -e 'select(.na != null or .rate_na != null or .error != null)' "$RESULTS" >/dev/null 2>&1; then
        echo "## Not measured"
        echo
        jq -r 'select(.na != null) | "- \(.broker): n/a: \(.na)"' "$RESULTS"
        jq -r 'select(.rate_na != null) | "- \(.broker) at \(.rate) msgs/s: n/a: \(.rate_na)"' "$RESULTS"
        jq -r 'select(.error != null) | "- \(.broker) \(.scenario // .args) qos \(.qos // "-") \(.payload // "-") B\(if .rate then " at \(.rate) msgs/s" else "" end): \(.error)"' "$RESULTS"
        echo
    fi
    if [[ -s $PERSIST_BLOCK ]]; then
        cat "$PERSIST_BLOCK"
        echo
    fi
    if [[ -s $TMP/archive-section.md ]]; then
        cat "$TMP/archive-section.md"
        echo
    fi
    if [[ -s $KAFKA_BLOCK ]]; then
        cat "$KAFKA_BLOCK"
        echo
    fi
    if [[ -s $TMP/plugin-section.md ]]; then
        cat "$TMP/plugin-section.md"
        echo
    fi
    if [[ -s $TMP/notes-plugin.md ]]; then
        cat "$TMP/notes-plugin.md"
        echo
    fi
    for f in idle-section notes-idle; do
        if [[ -s $TMP/$f.md ]]; then
            cat "$TMP/$f.md"
            echo
        fi
    done
    [[ -s $TMP/other-sections.md ]] && cat "$TMP/other-sections.md"
    echo "## Raw results"
    echo
    echo "<details><summary>one JSON object per run (midge-bench output)</summary>"
    echo
    echo '```json'
    cat "$RESULTS"
    [[ -z $RATE_RAN && -s $TMP/rate-raw.jsonl ]] && cat "$TMP/rate-raw.jsonl"
    echo '```'
    echo
    echo "</details>"
} >"$OUT"
log "wrote $OUT (raw files in $TMP)"
if [[ ${PERSIST:-0} != 0 ]]; then
    stop_broker "$BROKER_PID"
    BROKER_PID=""
    log "bench/persist.sh"
    # run.sh's DURATION / WINDOW / BROKERS mean other things there.
    env -u DURATION -u WINDOW SKIP_BUILD=1 OUT="$OUT" BROKER_CPU="$BROKER_CPU" BENCH_CPU="$BENCH_CPU" \
        NICE="$NICE" BROKERS="${PERSIST_BROKERS:-midge-sled midge-postgres mosquitto}" \
        "$ROOT/bench/persist.sh" ||
        log "bench/persist.sh failed"
fi
