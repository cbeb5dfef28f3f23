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

# free_port: a free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

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
