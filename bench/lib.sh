# Sourced by the bench scripts (run.sh, compare.sh, kafka.sh, plugin.sh, ...): helpers they share.

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL; only that process.
stop_pid() {
    local pid=$1 i
    [[ -z $pid ]] && return
    kill "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

# port_open PORT: does 127.0.0.1:PORT accept a TCP connection now?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port [FROM]: a free TCP port on 127.0.0.1: one the kernel picks, or
# with FROM the first of FROM..FROM+100 that nothing listens on (fixed
# ports in a given range; FROM itself when all are taken).
free_port() {
    if [[ -n ${1:-} ]]; then
        local p
        for p in $(seq "$1" $(($1 + 100))); do
            port_open "$p" || { echo "$p"; return 0; }
        done
        echo "$1"
        return 0
    fi
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT [PID] [SECONDS]: waits until 127.0.0.1:PORT accepts a TCP
# connection (returns 0), for at most SECONDS (default 10). Returns 1 when
# the time runs out or PID (when given) exits first; WAIT_PORT_WHY says which.
WAIT_PORT_WHY=""
wait_port() {
    local port=$1 pid=${2:-} secs=${3:-10} i
    WAIT_PORT_WHY=""
    for ((i = 0; i < secs * 10; i++)); do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            WAIT_PORT_WHY="exited at startup"
            return 1
        fi
        port_open "$port" && return 0
        sleep 0.1
    done
    WAIT_PORT_WHY="not listening on $port after $secs s"
    return 1
}

# wait_ready PID PORT LOG [SECONDS]: wait_port for a process writing its
# output to LOG; when it fails, prints why on stdout (with the end of LOG
# when the process exited), for `why=$(wait_ready ...) || ...`.
wait_ready() {
    local pid=$1 port=$2 logf=$3 secs=${4:-10} out
    wait_port "$port" "$pid" "$secs" && return 0
    if [[ $WAIT_PORT_WHY == "exited at startup" ]]; then
        out=$(tail -n 3 "$logf" 2>/dev/null | tr '\n' ' ' | cut -c1-200)
        echo "exited at startup: ${out:-(no output)}"
    else
        echo "$WAIT_PORT_WHY"
    fi
    return 1
}

# cpu_busy: percentage of all CPUs busy over 2 s (run before the brokers
# start, it is the background load the figures were measured under).
cpu_busy() {
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

# cpu_ticks PID: the process's user + system CPU time so far, in clock
# ticks (getconf CLK_TCK per second); empty when it is gone.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # Fields after the command name (which may hold spaces): utime is the
    # 12th, stime the 13th.
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# mosquitto_conf PORT: the Mosquitto config of the throughput benches
# (run.sh, compare.sh), on stdout. Without nodelay, large queues and an
# unlimited inflight window Mosquitto 2.0 silently drops QoS 1 under load.
mosquitto_conf() {
    cat <<EOF
listener $1 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 100000
max_inflight_messages 0
max_connections -1
persistence false
log_dest stderr
log_type error
log_type warning
EOF
}

# write_section NAME SECTION_FILE OUT: replaces the lines between
# `<!-- NAME:begin` and `<!-- NAME:end -->` in OUT with SECTION_FILE (which
# carries both markers), or appends it when OUT has no such section.
write_section() {
    local name=$1 section=$2 out=$3 tmp
    if [[ -f $out ]] && grep -q "^<!-- $name:begin" "$out"; then
        tmp=$(mktemp)
        awk -v f="$section" -v b="^<!-- $name:begin" -v e="^<!-- $name:end -->" '
            $0 ~ b { while ((getline l < f) > 0) print l; skip = 1; next }
            $0 ~ e { skip = 0; next }
            !skip { print }' "$out" >"$tmp" && cat "$tmp" >"$out"
        rm -f "$tmp"
    else
        { [[ -f $out ]] && echo; cat "$section"; } >>"$out"
    fi
}

# idle_poll_on / idle_poll_off: hold /dev/cpu_dma_latency at 0 (and let it
# go), so that idle cores poll instead of halting. On this machine (a
# Firecracker VM, cpuidle "haltpoll", guest_halt_poll_ns=0) a halted vCPU is
# woken by an IPI that exits to the hypervisor, and over loopback the waker
# pays it: every time the broker hands data to a load generator that has
# gone idle. That cost lands on the broker's core and grows the less busy
# the generator is, i.e. the slower the broker. `idle_poll_on` returns
# non-zero when the device cannot be opened.
IDLE_POLL_FD=""
idle_poll_on() {
    [[ -n $IDLE_POLL_FD ]] && return 0
    [[ -w /dev/cpu_dma_latency ]] || return 1
    exec {IDLE_POLL_FD}>/dev/cpu_dma_latency || { IDLE_POLL_FD=""; return 1; }
    printf '\0\0\0\0' >&"$IDLE_POLL_FD"
}
idle_poll_off() {
    [[ -z $IDLE_POLL_FD ]] && return 0
    exec {IDLE_POLL_FD}>&-
    IDLE_POLL_FD=""
}
