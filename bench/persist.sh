#!/usr/bin/env bash
# The persistence benchmark (issue 5): Midge with its sled and PostgreSQL
# stores against Mosquitto with `persistence true`, one broker at a time, and
# writes the "Persistence" section of docs/BENCHMARKS.md (between the
# <!-- persistence:begin --> / <!-- persistence:end --> markers; the rest of
# the file is left alone; bench/run.sh keeps the section when it rewrites the file).
#
#   bench/persist.sh
#   MESSAGES=20000 SESSIONS=2000 DURATION=5 OUT=/tmp/p.md bench/persist.sh   # a quick try
#   REPORT_ONLY=results.jsonl bench/persist.sh   # rewrite the section from saved results
#                                                # (an empty file gives the TBD skeleton)
#
# Cells, each on a freshly started broker with an empty store:
#   throughput  offline-queue: PUBLISHERS QoS 1 publishers -> one offline persistent
#               subscriber for DURATION s, then its drain on reconnect
#   drain       offline-queue with MESSAGES queued (1,000,000), then the drain
#   restart     restart-sessions: SESSIONS persistent sessions are created, the broker
#               gets SIGTERM and is started again; timed from the new process's start
#               until a persistent client gets session present = 1
#
# Environment (all optional):
#   BROKERS="midge-sled midge-postgres mosquitto"   also: midge-sled-interval and
#                     midge-postgres-interval (persistence.sync = "interval")
#   DURATION=30  MESSAGES=1000000  SESSIONS=100000   (0 skips that cell)
#   PUBLISHERS=4  WINDOW=64  PAYLOAD=64   publishers, PUBACK window each, payload bytes
#   QUEUE_LIMIT=10000000  per-session queue limit given to every broker (Midge
#                     mqtt.max_queued_messages, Mosquitto max_queued_messages); the
#                     throughput cell stops publishing at this many messages
#   MAX_INFLIGHT=1024 messages in flight to the reconnected subscriber (Midge's
#                     default mqtt.max_inflight; Mosquitto max_inflight_messages)
#   MOSQ_AUTOSAVE=60  Mosquitto autosave_interval (seconds)
#   STALL=30          a drain gives up after this many seconds without a message
#   TIMEOUT=1800      bound on each midge-bench phase (publishing, drain, setup, probe)
#   SAMPLE=1000       sessions besides the first checked after the restart
#   CONNECT_CONCURRENCY=64   session setups in flight at once (below the listen
#                     backlogs: Midge 128, Mosquitto 100; a SYN beyond one waits 1 s)
#   BROKER_CPU=0  BENCH_CPU=1  PG_CPU=$BROKER_CPU   cores for taskset (PostgreSQL shares
#                     the broker's core: the broker and its store get one core together)
#   NICE=-10          niceness of broker and generator when run as root; NICE=0 disables
#   PG_URL="host=H port=P user=U"   use this PostgreSQL server (its databases
#                     mb_persist_*) instead of starting a private cluster (scripts/pg.sh)
#   OUT=docs/BENCHMARKS.md  SKIP_BUILD=1  MOSQUITTO=/usr/sbin/mosquitto
#
# Brokers that fail to build or start get 'n/a' with the reason; the run goes on.
# Every process this script starts is stopped by its PID (PostgreSQL by pg_ctl).

set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# Shared helpers (free_port, wait_ready, cpu_busy); this script keeps its
# own stop_pid (a longer wait, STOP_KILLED), defined below.
. bench/lib.sh
COMMAND="bench/persist.sh"
for v in OUT NICE PG_CPU BENCH_CPU BROKER_CPU CONNECT_CONCURRENCY SAMPLE TIMEOUT STALL MOSQ_AUTOSAVE MAX_INFLIGHT QUEUE_LIMIT PAYLOAD WINDOW PUBLISHERS SESSIONS MESSAGES DURATION BROKERS; do
    if printenv "$v" >/dev/null; then
        COMMAND="$v=\"$(printenv "$v")\" $COMMAND"
    fi
done
BROKERS=${BROKERS:-midge-sled midge-postgres mosquitto}
DURATION=${DURATION:-30}
MESSAGES=${MESSAGES:-1000000}
SESSIONS=${SESSIONS:-100000}
PUBLISHERS=${PUBLISHERS:-4}
WINDOW=${WINDOW:-64}
PAYLOAD=${PAYLOAD:-64}
QUEUE_LIMIT=${QUEUE_LIMIT:-10000000}
MAX_INFLIGHT=${MAX_INFLIGHT:-1024}
MOSQ_AUTOSAVE=${MOSQ_AUTOSAVE:-60}
STALL=${STALL:-30}
TIMEOUT=${TIMEOUT:-1800}
SAMPLE=${SAMPLE:-1000}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-64}
BROKER_CPU=${BROKER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
PG_CPU=${PG_CPU:-$BROKER_CPU}
NICE=${NICE:--10}
OUT=${OUT:-docs/BENCHMARKS.md}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
BENCH=$ROOT/target/release/midge-bench
MIDGE=$ROOT/target/release/midge
# A phase that has not finished after TIMEOUT plus this is killed.
CELL_TIMEOUT=$((TIMEOUT * 2 + 120))

log() { echo "[persist.sh] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

command -v jq >/dev/null || die "jq is required (apt-get install -y jq)"
command -v taskset >/dev/null || die "taskset is required (util-linux)"

TMP=$(mktemp -d /tmp/midge-persist.XXXXXX)
RESULTS=$TMP/results.jsonl
NOTES=$TMP/notes.md
: >"$NOTES"

# ---------------------------------------------------------------- report
# Everything below the report functions runs the benchmark; REPORT_ONLY skips it.
commas() { # 1000000 -> 1,000,000
    echo "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'
}
fmt_n() { # number -> "1234567" rounded, "TBD" when empty / null
    [[ -z $1 || $1 == null ]] && { echo "TBD"; return; }
    awk -v v="$1" 'BEGIN { printf "%.0f", v }'
}

# jqr CELL BROKER FILTER -> the filter applied to that cell's last result line
jqr() {
    jq -r --arg c "$1" --arg b "$2" "select(.cell == \$c and .broker == \$b) | $3" "$RESULTS" 2>/dev/null | tail -n1
}

offline_row() { # CELL BROKER -> table row
    local c=$1 b=$2 na err
    na=$(jq -r --arg b "$b" 'select(.broker == $b and .na != null) | .na' "$RESULTS" 2>/dev/null | head -n1)
    if [[ -n $na ]]; then
        echo "| $b | n/a | | | | | | | | | |"
        return
    fi
    err=$(jqr "$c" "$b" '.error // empty')
    if [[ -n $err ]]; then
        echo "| $b | error (see below) | | | | | | | | | |"
        return
    fi
    if [[ -z $(jqr "$c" "$b" '.broker') ]]; then
        echo "| $b | TBD | TBD | TBD | TBD | TBD | TBD | TBD | TBD | TBD | TBD |"
        return
    fi
    jq -r --arg c "$c" --arg b "$b" '
        def n: if . == null then "?" else (. | round | tostring) end;
        select(.cell == $c and .broker == $b)
        | "| \($b)\(if .autosaves != null then " (\(.autosaves) autosaves)" else "" end) | \(.acked) | \(.pub_msgs_per_s | n) | \(.ack_p50_us | n) | \(.ack_p99_us | n) | \(.pub_broker_cpu_pct | n) | \(if .rss_queued_kib then (.rss_queued_kib / 1024 | round | tostring) else "?" end) | \(.drain_s * 100 | round / 100) | \(.drain_msgs_per_s | n) | \(.drain_first_ms | n) | \(.loss)\(if .duplicates > 0 then " (+\(.duplicates) dup)" else "" end) |"' \
        "$RESULTS" | tail -n1
}

restart_row() { # BROKER -> table row
    local b=$1 na err
    na=$(jq -r --arg b "$b" 'select(.broker == $b and .na != null) | .na' "$RESULTS" 2>/dev/null | head -n1)
    if [[ -n $na ]]; then
        echo "| $b | n/a | | | | | | | |"
        return
    fi
    err=$(jq -r --arg b "$b" 'select(.cell == "restart" and .broker == $b and .error != null) | .error' "$RESULTS" 2>/dev/null | tail -n1)
    if [[ -n $err ]]; then
        echo "| $b | error (see below) | | | | | | | |"
        return
    fi
    if [[ -z $(jqr restart "$b" 'select(.phase == "probe") | .broker') ]]; then
        echo "| $b | TBD | TBD | TBD | TBD | TBD | TBD | TBD | TBD |"
        return
    fi
    local setup probe
    setup=$(jq -c --arg b "$b" 'select(.cell == "restart" and .broker == $b and .phase == "setup")' "$RESULTS" | tail -n1)
    probe=$(jq -c --arg b "$b" 'select(.cell == "restart" and .broker == $b and .phase == "probe")' "$RESULTS" | tail -n1)
    jq -rn --arg b "$b" --argjson s "$setup" --argjson p "$probe" '
        def n: if . == null then "?" else (. | round | tostring) end;
        def s2: if . == null then "?" else (. * 100 | round / 100 | tostring) end;
        "| \($b) | \($p.sessions) | \($s.sessions_per_s | n) | \($s.shutdown_s | s2) | \(if $s.store_kib then ($s.store_kib / 1024 * 10 | round / 10 | tostring) else "?" end) | \($p.listen_s | s2) | \($p.ready_s | s2)\(if $p.store_load_ms != null then " (read \($p.store_load_ms) ms, restore \($p.restore_ms) ms)" else "" end) | \(if $p.subscription_ok then "yes" else "**no**" end), \($p.sample_present)/\($p.sample) | \(if $p.broker_rss_kib then ($p.broker_rss_kib / 1024 | round | tostring) else "?" end) |"'
}

section() {
    local sled_rate mosq_rate ratio
    echo "<!-- persistence:begin (generated by bench/persist.sh; edit there) -->"
    echo "## Persistence (issue 5)"
    echo
    echo "Generated by:"
    echo
    echo '```'
    echo "$COMMAND"
    echo '```'
    echo
    if [[ -s $NOTES ]]; then
        cat "$NOTES"
    else
        echo "- Date, machine, brokers: TBD (filled in by the run)"
    fi
    if ! grep -q '"broker"' "$RESULTS" 2>/dev/null; then
        echo
        echo "> **TBD: no results yet.** This is the section's skeleton: every TBD below is filled in by"
        echo "> running the command above on a quiet machine (about 15 minutes)."
    fi
    echo
    echo "### Method"
    echo
    echo "Every cell starts the broker afresh on an empty store, pinned with \`taskset -c ${BROKER_CPU}\`;"
    echo "the generator (\`midge-bench\`) runs on core ${BENCH_CPU}. The private PostgreSQL cluster of"
    echo "\`midge-postgres\` (\`scripts/pg.sh\`: fsync on, synchronous_commit on) shares the broker's core,"
    echo "so each broker and its store get one core together. MQTT 3.1.1, ${PAYLOAD} B payloads."
    echo
    echo "- **Offline queue** (\`--scenario offline-queue\`): a subscriber connects with clean session 0,"
    echo "  subscribes with QoS 1 to \`bench/mb/oq/+\` and disconnects. ${PUBLISHERS} publishers then publish"
    echo "  QoS 1 to \`bench/mb/oq/<i>\`, each with at most ${WINDOW} messages without PUBACK (closed loop),"
    echo "  until the message count or the duration is reached and every PUBACK is back. *publish msgs/s* ="
    echo "  acknowledged messages / seconds from the first publish to the last PUBACK; *ack p50/p99* is"
    echo "  publish -> PUBACK latency (includes the wait for durability where the broker has one). Then the"
    echo "  subscriber reconnects with clean session 0 and acknowledges everything it gets: *drain s* is"
    echo "  from its TCP connect to the last acknowledged message received, *first ms* to the first one;"
    echo "  *loss* = acknowledged messages that never arrived (the drain gives up after ${STALL} s without"
    echo "  a message), *dup* = messages received twice. *RSS MiB* is the broker's resident memory with"
    echo "  everything queued. CPU % is the broker process's CPU during publishing (100 = one core; for"
    echo "  \`midge-postgres\` PostgreSQL's own CPU is not included but shares the core)."
    echo "  The throughput cell publishes for ${DURATION} s; the drain cell queues $(commas "$MESSAGES") messages."
    echo "- **Restart** (\`--scenario restart-sessions\`): $(commas "$SESSIONS") persistent sessions are created"
    echo "  (connect with clean session 0, one QoS 1 subscription each to \`bench/mb/rs/<i>\`, disconnect;"
    echo "  ${CONNECT_CONCURRENCY} at a time). The broker gets SIGTERM (*shutdown s*: until it exited; Mosquitto"
    echo "  writes its database then) and is started again. *accepting s* is from the new process's start"
    echo "  until its port accepts TCP (Midge binds before it restores, so this is about 0 for it), *back s*"
    echo "  until session \`mb-rs-0\` reconnects with session present = 1 (the time to compare). Then a"
    echo "  QoS 1 publish to that session's topic must reach it (its subscription survived) and ${SAMPLE}"
    echo "  other sessions spread over the range must reconnect with session present = 1."
    echo "  *store MiB* is the size on disk before the restart (sled directory, mosquitto.db, or"
    echo "  \`pg_database_size\`); *RSS MiB* is the broker's once the sessions are back. For Midge, *back s*"
    echo "  also shows what it logged: reading the store and rebuilding the sessions from it."
    echo
    echo "By hand (PID = the broker's pid; the script adds taskset/nice and checks every exit):"
    echo
    echo '```'
    echo "midge-bench --port PORT --scenario offline-queue --publishers ${PUBLISHERS} --window ${WINDOW} \\"
    echo "    --messages $MESSAGES --duration $TIMEOUT --drain $STALL --broker-pid PID --label NAME"
    echo "midge-bench --port PORT --scenario restart-sessions --phase setup --sessions $SESSIONS"
    echo "kill -TERM PID; T0=\$(date +%s%N); <start the broker again> &"
    echo "midge-bench --port PORT --scenario restart-sessions --phase probe --sessions $SESSIONS --t0-ns \$T0 --broker-pid \$!"
    echo '```'
    echo
    echo "Broker settings (the generated files are in the raw results' directory):"
    echo
    echo "- Midge: \`[persistence] enabled = true\`, \`backend = \"sled\"\` (\`data_dir\` on the local disk) or"
    echo "  \`\"postgres\"\`, \`sync = \"ack\"\` (the default: a QoS 1 publish is acknowledged only once it is"
    echo "  durable, fsynced, in group commits); \`[mqtt] max_queued_messages = ${QUEUE_LIMIT}\` (the default"
    echo "  10,000 would drop most of the queue), \`max_inflight = ${MAX_INFLIGHT}\`."
    echo "- Mosquitto $(
        "$MOSQUITTO" -h 2>/dev/null | head -n1 | awk '{print $3}'
    ): \`persistence true\`, \`persistence_location\` in a temporary directory,"
    echo "  \`autosave_interval ${MOSQ_AUTOSAVE}\`, \`autosave_on_changes false\`, \`max_queued_messages ${QUEUE_LIMIT}\`,"
    echo "  \`max_queued_bytes 0\`, \`memory_limit 0\` (no limits: with the default max_queued_messages of"
    echo "  1000 Mosquitto would acknowledge and then drop 99.9 % of a 1,000,000-message queue, and its"
    echo "  numbers would mean nothing), \`max_inflight_messages ${MAX_INFLIGHT}\`, \`set_tcp_nodelay true\`."
    echo "  Mosquitto keeps everything in memory and writes the whole in-memory database to"
    echo "  \`mosquitto.db\` every \`autosave_interval\` seconds (and on SIGTERM); it never syncs per message."
    echo "  A PUBACK from it therefore means \"in memory\": a crash or power loss loses everything since the"
    echo "  last autosave (up to ${MOSQ_AUTOSAVE} s of acknowledged messages and session changes), while Midge with"
    echo "  \`sync = \"ack\"\` loses nothing it acknowledged. Each autosave also blocks Mosquitto's single"
    echo "  thread for as long as writing the whole database takes (it grows with the queue). The"
    echo "  Mosquitto rows say how many autosaves fell inside the cell (often none: a cell is shorter than"
    echo "  the interval, so those numbers are of a broker that did not touch the disk at all)."
    echo "  \`midge-*-interval\` rows, if present, use \`sync = \"interval\"\` (acknowledge at once, write every"
    echo "  100 ms: the like-for-like durability class to Mosquitto's autosave, with a far smaller window)."
    echo
    echo "### Offline queue: sustained QoS 1 throughput (${DURATION} s) and drain"
    echo
    local header="| broker | acked | publish msgs/s | ack p50 µs | ack p99 µs | CPU % | RSS MiB | drain s | drain msgs/s | first ms | loss |"
    local sep="|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "$header"
    echo "$sep"
    for b in $BROKERS; do offline_row throughput "$b"; done
    echo
    echo "### Drain of $(commas "$MESSAGES") queued messages"
    echo
    echo "$header"
    echo "$sep"
    for b in $BROKERS; do offline_row drain "$b"; done
    echo
    echo "### Restart with $(commas "$SESSIONS") persistent sessions"
    echo
    echo "| broker | sessions | setup sessions/s | shutdown s | store MiB | accepting s | back s | subscription, sample present | RSS MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for b in $BROKERS; do restart_row "$b"; done
    echo
    echo "### Targets (issue 5)"
    echo
    sled_rate=$(jqr throughput midge-sled '.pub_msgs_per_s // empty')
    mosq_rate=$(jqr throughput mosquitto '.pub_msgs_per_s // empty')
    ratio=$(awk -v a="$sled_rate" -v b="$mosq_rate" 'BEGIN { if (a != "" && b > 0) printf "%.1fx", a / b; else print "TBD" }')
    echo "- sled-backed QoS 1 throughput at least 2x Mosquitto's with persistence on:"
    echo "  $(fmt_n "$sled_rate") vs $(fmt_n "$mosq_rate") msgs/s = **${ratio}** (throughput cell)."
    local d
    d=$(for b in $BROKERS; do
        v=$(jqr drain "$b" 'select(.error == null) | "\(.drain_s * 10 | round / 10) s\(if .loss > 0 then " (loss \(.loss))" else "" end)"')
        echo -n "$b ${v:-TBD}; "
    done)
    echo "- Reconnect drain of $(commas "$MESSAGES") queued messages in under 60 s: ${d%; }."
    d=$(for b in $BROKERS; do
        v=$(jqr restart "$b" 'select(.phase == "probe" and .error == null) | "\(.ready_s * 100 | round / 100) s"')
        echo -n "$b ${v:-TBD}; "
    done)
    echo "- Restart with $(commas "$SESSIONS") persistent sessions in under 10 s: ${d%; }."
    echo "- Verdicts and notes: TBD (written by whoever ran it)."
    echo
    if [[ -n $(jq -c 'select(.na != null or .error != null)' "$RESULTS" 2>/dev/null) ]]; then
        echo "### Not measured"
        echo
        jq -r 'select(.na != null) | "- \(.broker): n/a: \(.na)"' "$RESULTS"
        jq -r 'select(.error != null) | "- \(.broker) \(.cell // .scenario)\(if .phase then " " + .phase else "" end): \(.error)"' "$RESULTS"
        echo
    fi
    echo "<details><summary>raw results (one JSON object per midge-bench run, plus the script's fields)</summary>"
    echo
    echo '```json'
    cat "$RESULTS" 2>/dev/null
    echo '```'
    echo
    echo "</details>"
    echo "<!-- persistence:end -->"
}

# splice FILE SECTIONFILE: replaces the marked section of FILE, or inserts it
# before "## Raw results" (or at the end).
splice() {
    local file=$1 sec=$2 tmpf
    tmpf=$(mktemp "$TMP/splice.XXXXXX")
    if [[ ! -f $file ]]; then
        { echo "# Benchmarks"; echo; cat "$sec"; } >"$file"
        return
    fi
    if grep -q '^<!-- persistence:begin' "$file"; then
        awk -v sec="$sec" '
            /^<!-- persistence:begin/ { while ((getline l < sec) > 0) print l; skip = 1; next }
            /^<!-- persistence:end -->/ { skip = 0; next }
            !skip' "$file" >"$tmpf"
    elif grep -q '^## Raw results' "$file"; then
        awk -v sec="$sec" '
            /^## Raw results/ && !done { while ((getline l < sec) > 0) print l; print ""; done = 1 }
            { print }' "$file" >"$tmpf"
    else
        { cat "$file"; echo; cat "$sec"; } >"$tmpf"
    fi
    cat "$tmpf" >"$file"
}

write_report() {
    section >"$TMP/section.md"
    splice "$OUT" "$TMP/section.md"
    if [[ -n ${REPORT_ONLY:-} ]]; then
        log "wrote the persistence section of $OUT from $REPORT_ONLY"
    else
        log "wrote the persistence section of $OUT (raw files in $TMP)"
    fi
}

SETTINGS="COMMAND BROKERS DURATION MESSAGES SESSIONS PUBLISHERS WINDOW PAYLOAD QUEUE_LIMIT MAX_INFLIGHT MOSQ_AUTOSAVE STALL SAMPLE CONNECT_CONCURRENCY BROKER_CPU BENCH_CPU PG_CPU"
if [[ -n ${REPORT_ONLY:-} ]]; then
    # The settings and notes a run kept next to its results.
    [[ -f $REPORT_ONLY ]] || die "$REPORT_ONLY: no such file"
    RESULTS=$REPORT_ONLY
    dir=$(dirname "$REPORT_ONLY")
    # shellcheck disable=SC1091
    [[ -f $dir/settings.sh ]] && . "$dir/settings.sh"
    [[ -f $dir/notes.md ]] && cp "$dir/notes.md" "$NOTES"
    write_report
    rm -rf "$TMP"
    exit 0
fi
# shellcheck disable=SC2086
declare -p $SETTINGS >"$TMP/settings.sh"

# ---------------------------------------------------------------- setup
: >"$RESULTS"
BROKER_PID=""
PG_STARTED=""

# stop_pid PID [SECONDS]: SIGTERM, wait (default 120 s), then SIGKILL; sets
# STOP_KILLED=1 if it had to. Not in a subshell: PID must be this shell's child.
STOP_KILLED=""
stop_pid() {
    local pid=$1 wait_s=${2:-120} i
    STOP_KILLED=""
    [[ -z $pid ]] && return
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for ((i = 0; i < wait_s * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null
            STOP_KILLED=1
        fi
    fi
    wait "$pid" 2>/dev/null
}
cleanup() {
    stop_pid "$BROKER_PID" 10
    BROKER_PID=""
    if [[ -n $PG_STARTED ]]; then
        pg_stop
        PG_STARTED=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[[ $(ulimit -n) == unlimited || $(ulimit -n) -gt 65536 ]] && ulimit -n 65536

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

# PostgreSQL: a private cluster (scripts/pg.sh) unless PG_URL names one.
PG_ERR=""
if [[ " $BROKERS " == *" midge-postgres"* ]]; then
    if [[ -n ${PG_URL:-} ]]; then
        MIDGE_TEST_PG=$PG_URL
    else
        apt_install() {
            local sudo=""
            [[ $(id -u) == 0 ]] || sudo="sudo"
            $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
        }
        # shellcheck source=../scripts/pg.sh
        . "$ROOT/scripts/pg.sh"
        if pg_start >"$TMP/pg-start.log" 2>&1; then
            PG_STARTED=1
            log "$(cat "$TMP/pg-start.log")"
            # The postmaster and its current children onto PG_CPU; backends
            # forked later inherit it.
            pm=$(head -n1 "$MIDGE_PG_DIR/data/postmaster.pid")
            for p in $pm $(ps -o pid= --ppid "$pm"); do
                taskset -apc "$PG_CPU" "$p" >/dev/null 2>&1
            done
        else
            PG_ERR="PostgreSQL did not start: $(tail -n2 "$TMP/pg-start.log" | tr '\n' ' ' | cut -c1-200)"
            log "$PG_ERR"
        fi
    fi
    if [[ -z $PG_ERR ]] && ! command -v psql >/dev/null; then
        PG_ERR="psql not installed"
    fi
fi
PG_VERSION=""
pg_sql() { psql -X -q -t -A -d "$MIDGE_TEST_PG dbname=postgres" -c "$1"; }

# prepare BROKER CELL PORT -> writes the broker's config for a fresh, empty
# store into $CELL_DIR; sets PREP_ERR and fails when the broker cannot run.
PREP_ERR=""
CELL_DIR=""
STORE_DB=""
prepare() {
    local name=$1 cell=$2 port=$3
    CELL_DIR=$TMP/$name-$cell
    mkdir -p "$CELL_DIR"
    STORE_DB=""
    case $name in
    midge-sled | midge-sled-interval | midge-postgres | midge-postgres-interval)
        [[ -n $MIDGE_BUILD_ERR ]] && { PREP_ERR=$MIDGE_BUILD_ERR; return 1; }
        [[ -x $MIDGE ]] || { PREP_ERR="$MIDGE not built"; return 1; }
        local sync=ack backend=sled store
        [[ $name == *-interval ]] && sync=interval
        if [[ $name == midge-postgres* ]]; then
            [[ -n $PG_ERR ]] && { PREP_ERR=$PG_ERR; return 1; }
            backend=postgres
            STORE_DB=mb_persist_${name//-/_}_$cell
            pg_sql "DROP DATABASE IF EXISTS $STORE_DB" >/dev/null 2>&1
            if ! pg_sql "CREATE DATABASE $STORE_DB" >"$CELL_DIR/createdb.log" 2>&1; then
                PREP_ERR="CREATE DATABASE failed: $(head -c 200 "$CELL_DIR/createdb.log")"
                return 1
            fi
            store="postgres_url = \"$MIDGE_TEST_PG dbname=$STORE_DB\""
        else
            store="data_dir = \"$CELL_DIR/data\""
        fi
        cat >"$CELL_DIR/midge.toml" <<EOF
# bench/persist.sh: $name, cell $cell
[log]
level = "warn,midge::store=info,midge::server=info,midge::server::connection=warn"
json = true

[mqtt]
max_queued_messages = $QUEUE_LIMIT
max_inflight = $MAX_INFLIGHT

[persistence]
enabled = true
backend = "$backend"
$store
sync = "$sync"
EOF
        if ! "$MIDGE" check --config "$CELL_DIR/midge.toml" >"$CELL_DIR/check.log" 2>&1; then
            PREP_ERR="config rejected: $(head -c 200 "$CELL_DIR/check.log")"
            return 1
        fi
        ;;
    mosquitto)
        [[ -x $MOSQUITTO ]] || { PREP_ERR="$MOSQUITTO not installed"; return 1; }
        mkdir -p "$CELL_DIR/mosq"
        # Started as root, Mosquitto drops to its own user (if it exists), which
        # must be able to write the database.
        if [[ $(id -u) == 0 ]] && id mosquitto >/dev/null 2>&1; then
            chown mosquitto "$CELL_DIR/mosq"
            chmod o+x "$TMP" "$CELL_DIR"
        fi
        cat >"$CELL_DIR/mosquitto.conf" <<EOF
# bench/persist.sh: mosquitto, cell $cell
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_connections -1
persistence true
persistence_location $CELL_DIR/mosq/
autosave_interval $MOSQ_AUTOSAVE
autosave_on_changes false
max_queued_messages $QUEUE_LIMIT
max_queued_bytes 0
memory_limit 0
max_inflight_messages $MAX_INFLIGHT
log_dest stderr
log_type error
log_type warning
log_type information
connection_messages false
EOF
        ;;
    *)
        PREP_ERR="unknown broker $name"
        return 1
        ;;
    esac
}

# launch BROKER PORT -> starts the broker of $CELL_DIR in the background, sets BROKER_PID.
launch() {
    local name=$1 port=$2
    case $name in
    midge-*)
        "${PIN_BROKER[@]}" "$MIDGE" serve --config "$CELL_DIR/midge.toml" --listen "127.0.0.1:$port" \
            --no-ws --no-admin >>"$CELL_DIR/broker.log" 2>&1 &
        ;;
    mosquitto)
        "${PIN_BROKER[@]}" "$MOSQUITTO" -c "$CELL_DIR/mosquitto.conf" >>"$CELL_DIR/broker.log" 2>&1 &
        ;;
    esac
    BROKER_PID=$!
}

# start NAME PORT -> launch and wait until it accepts; sets START_ERR on failure.
START_ERR=""
start() {
    launch "$1" "$2"
    local why
    if ! why=$(wait_ready "$BROKER_PID" "$2" "$CELL_DIR/broker.log" 120); then
        stop_pid "$BROKER_PID" 10
        BROKER_PID=""
        START_ERR=$why
        return 1
    fi
}

store_kib() { # BROKER -> size of the cell's store on disk in KiB
    case $1 in
    midge-postgres*)
        local bytes
        bytes=$(pg_sql "SELECT pg_database_size('$STORE_DB')" 2>/dev/null)
        [[ -n $bytes ]] && echo $((bytes / 1024))
        ;;
    midge-*) du -sk "$CELL_DIR/data" 2>/dev/null | cut -f1 ;;
    mosquitto) du -sk "$CELL_DIR/mosq" 2>/dev/null | cut -f1 ;;
    esac
}

# bench CELL BROKER PORT ARGS... -> one JSON line (plus cell) appended to $RESULTS; 0 on success
bench() {
    local cell=$1 broker=$2 port=$3 line rc
    shift 3
    line=$(timeout "$CELL_TIMEOUT" "${PIN_BENCH[@]}" "$BENCH" \
        --host 127.0.0.1 --port "$port" --broker-pid "$BROKER_PID" --label "$broker" \
        --window "$WINDOW" --payload "$PAYLOAD" --timeout "$TIMEOUT" --drain "$STALL" \
        --connect-concurrency "$CONNECT_CONCURRENCY" "$@" 2>>"$TMP/human.log" | grep '^{' | tail -n1)
    rc=0
    if [[ -z $line ]]; then
        line=$(jq -cn --arg b "$broker" --arg a "$*" \
            '{broker:$b, args:$a, error:"midge-bench produced no result (timeout or crash)"}')
        rc=1
    fi
    jq -c --arg c "$cell" '. + {cell: $c}' <<<"$line" >>"$RESULTS"
    tail -n1 "$TMP/human.log" >&2
    jq -e '.error == null' <<<"$line" >/dev/null || rc=1
    return $rc
}

version_of() {
    case $1 in
    midge-*)
        local v
        v=$("$MIDGE" --version 2>/dev/null | head -n1)
        echo "${v:-midge} (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null))"
        ;;
    mosquitto) "$MOSQUITTO" -h 2>/dev/null | head -n1 ;;
    esac
}

# Average ms of a 4 KiB write + fsync in the store directories' file system
# (dd oflag=dsync): what every durable commit pays at least.
fsync_ms() {
    local out
    out=$(LC_ALL=C dd if=/dev/zero of="$TMP/fsync.probe" bs=4k count=200 oflag=dsync 2>&1 | tail -n1)
    rm -f "$TMP/fsync.probe"
    awk -v l="$out" 'BEGIN { n = split(l, f, ","); split(f[n - 1], t, " "); printf "%.2f", t[1] * 1000 / 200 }'
}

# ---------------------------------------------------------------- run
FSYNC_BEFORE=$(fsync_ms)
BUSY_BEFORE=$(cpu_busy)
START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
log "background CPU before the run: ${BUSY_BEFORE}%; 4 KiB write+fsync ${FSYNC_BEFORE} ms"
PORT_BASE=23883

for broker in $BROKERS; do
    log "== $broker"
    first=1
    for cell in throughput drain restart; do
        case $cell in
        throughput) [[ $DURATION == 0 ]] && continue ;;
        drain) [[ $MESSAGES == 0 ]] && continue ;;
        restart) [[ $SESSIONS == 0 ]] && continue ;;
        esac
        port=$(free_port $PORT_BASE)
        PORT_BASE=$((port + 1))
        if ! prepare "$broker" "$cell" "$port"; then
            log "$broker: n/a: $PREP_ERR"
            jq -cn --arg b "$broker" --arg r "$PREP_ERR" '{broker:$b, na:$r}' >>"$RESULTS"
            break
        fi
        if ! start "$broker" "$port"; then
            log "$broker: n/a: $START_ERR"
            jq -cn --arg b "$broker" --arg r "$START_ERR" '{broker:$b, na:$r}' >>"$RESULTS"
            break
        fi
        if [[ -n $first ]]; then
            first=""
            echo "  - $broker: $(version_of "$broker")" >>"$NOTES"
        fi
        log "$broker $cell on 127.0.0.1:$port (pid $BROKER_PID, $CELL_DIR)"
        case $cell in
        throughput)
            bench throughput "$broker" "$port" --scenario offline-queue --publishers "$PUBLISHERS" \
                --duration "$DURATION" --messages "$QUEUE_LIMIT"
            ;;
        drain)
            bench drain "$broker" "$port" --scenario offline-queue --publishers "$PUBLISHERS" \
                --duration "$TIMEOUT" --messages "$MESSAGES"
            ;;
        esac
        case $cell:$broker in
        throughput:mosquitto | drain:mosquitto)
            # How many autosaves fell inside the cell.
            n=$(grep -c 'Saving in-memory database' "$CELL_DIR/broker.log")
            last=$(tail -n1 "$RESULTS")
            sed -i '$d' "$RESULTS"
            jq -c --argjson n "${n:-0}" '. + {autosaves: $n}' <<<"$last" >>"$RESULTS"
            ;;
        esac
        case $cell in
        restart)
            if bench restart "$broker" "$port" --scenario restart-sessions --phase setup \
                --sessions "$SESSIONS"; then
                sleep 1 # let the last disconnects reach the store
                t=$(date +%s%N)
                stop_pid "$BROKER_PID" 300
                killed=$STOP_KILLED
                shutdown_s=$(awk -v a="$t" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
                BROKER_PID=""
                kib=$(store_kib "$broker")
                if grep -q 'Error saving' "$CELL_DIR/broker.log" 2>/dev/null; then
                    killed="mosquitto could not save its database: $(grep -m1 -A1 'Error saving' "$CELL_DIR/broker.log" | tr '\n' ' ' | cut -c1-200)"
                fi
                # Annotate the setup line with the shutdown and the store size.
                last=$(tail -n1 "$RESULTS")
                sed -i '$d' "$RESULTS"
                jq -c --argjson s "$shutdown_s" --arg k "${kib:-}" --arg killed "$killed" \
                    '. + {shutdown_s: $s, store_kib: (if $k == "" then null else ($k | tonumber) end)}
                     + (if $killed == "1" then {error: "broker needed SIGKILL at shutdown"}
                        elif $killed != "" then {error: $killed} else {} end)' \
                    <<<"$last" >>"$RESULTS"
                log "$broker stopped in $shutdown_s s${killed:+ ($killed)}; store ${kib:-?} KiB; restarting"
                echo "--- restart" >>"$CELL_DIR/broker.log"
                t0=$(date +%s%N)
                launch "$broker" "$port"
                bench restart "$broker" "$port" --scenario restart-sessions --phase probe \
                    --sessions "$SESSIONS" --sample "$SAMPLE" --t0-ns "$t0"
                # Midge's own restore timings, when it logged them.
                if [[ $broker == midge-* ]]; then
                    logged() { # MESSAGE -> its ms field, from the restarted broker's JSON log
                        sed -n '/^--- restart/,$p' "$CELL_DIR/broker.log" | grep '^{' |
                            jq -r --arg m "$1" 'select(.fields.message == $m) | .fields.ms' 2>/dev/null | head -n1
                    }
                    loaded=$(logged "store loaded")
                    restored=$(logged "persistent state restored")
                    last=$(tail -n1 "$RESULTS")
                    sed -i '$d' "$RESULTS"
                    jq -c --arg l "${loaded:-}" --arg r "${restored:-}" \
                        '. + {store_load_ms: (if $l == "" then null else ($l | tonumber) end),
                              restore_ms: (if $r == "" then null else ($r | tonumber) end)}' \
                        <<<"$last" >>"$RESULTS"
                fi
            fi
            ;;
        esac
        if [[ -n $BROKER_PID ]]; then
            stop_pid "$BROKER_PID" 300
            [[ -n $STOP_KILLED ]] && log "$broker needed SIGKILL at shutdown"
            BROKER_PID=""
        fi
        [[ -n $STORE_DB ]] && pg_sql "DROP DATABASE IF EXISTS $STORE_DB" >/dev/null 2>&1
        rm -rf "$CELL_DIR/data" "$CELL_DIR/mosq"
    done
done
if [[ -n $PG_STARTED ]]; then
    PG_VERSION=$("$MIDGE_PG_BIN/postgres" --version 2>/dev/null | awk '{print $3}')
fi
BUSY_AFTER=$(cpu_busy)
FSYNC_AFTER=$(fsync_ms)

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "- Date: $START_DATE"
    echo "- Machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r); store directories on $(df -h "$TMP" | awk 'NR == 2 {print $1}')"
    echo "- Background load: ${BUSY_BEFORE}% of all CPUs busy just before the run, ${BUSY_AFTER}% just after;"
    echo "  a 4 KiB write + fsync there took ${FSYNC_BEFORE} ms on average before the run, ${FSYNC_AFTER} ms after"
    echo "  (\`dd oflag=dsync\`; other processes writing to the disk make every durable commit slower)"
    echo "- Brokers:"
    cat "$NOTES"
    [[ -n $PG_VERSION ]] && echo "  - PostgreSQL $PG_VERSION (private cluster from scripts/pg.sh, pinned to core $PG_CPU)"
    [[ -n ${PG_URL:-} ]] && echo "  - PostgreSQL at $PG_URL (not started by the script)"
} >"$TMP/notes2.md"
mv "$TMP/notes2.md" "$NOTES"
write_report
