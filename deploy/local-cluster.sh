#!/usr/bin/env bash
# deploy/local-cluster.sh: a tasamd fleet on one machine, the same shape as
# the Kubernetes one (deploy/k8s/): N replicas on loopback ports, each with
# its own state directory (its own cache), behind HAProxy with
# deploy/haproxy.cfg (consistent hashing on the image, health checks on
# /readyz, retries on another replica). Runs in the foreground; SIGTERM or
# Ctrl-C stops everything it started (replicas drain first) and leaves no
# process behind. Used by tests/test_cluster.c and to try a fleet locally.
set -u

usage() {
    cat <<'EOF'
usage: deploy/local-cluster.sh --replicas N --port P --checkpoint CK --state-root DIR
                               [--device D] [--tasamd PATH] [--stats-port S]
                               [--ready-timeout SEC] [-- TASAMD_OPTIONS...]

Starts N tasamd replicas on free loopback ports (replica K: instance rK, state
in DIR/rK/state, log DIR/rK/tasamd.log) and HAProxy on 127.0.0.1:P in front of
them, then waits. Prints "ready" once every replica's /readyz answers 200 and
the proxy listens.

  --replicas N        replicas, 1 to 64
  --port P            the proxy's port on 127.0.0.1
  --checkpoint CK     SAM checkpoint for every replica
  --state-root DIR    one folder per replica under it (created)
  --device D          auto, cpu or cuda (default auto); each replica gets the
                      whole device: on one GPU, prefer one replica
  --tasamd PATH       the daemon (default: build/tasamd beside this script)
  --stats-port S      HAProxy's stats page and /metrics on 127.0.0.1:S
  --ready-timeout SEC how long the replicas may take to load (default 300)
  -- OPTIONS          passed to every tasamd (e.g. -- --cpu-threads 1)

Files under DIR: rK/port, rK/pid, rK/tasamd.log, haproxy-servers.cfg,
haproxy.pid, haproxy.log. Exit status: 0 after SIGTERM/SIGINT, 1 when
something failed to start or HAProxy died, 2 for bad usage.
EOF
}

here=$(cd "$(dirname "$0")" && pwd)
replicas= port= ckpt= root= device=auto stats= ready_timeout=300
tasamd="$here/../build/tasamd"
extra=()
die_usage() { echo "local-cluster: $*" >&2; echo "(see deploy/local-cluster.sh --help)" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
    --replicas) replicas=${2-}; shift 2 || die_usage "--replicas needs a value" ;;
    --port) port=${2-}; shift 2 || die_usage "--port needs a value" ;;
    --checkpoint) ckpt=${2-}; shift 2 || die_usage "--checkpoint needs a value" ;;
    --state-root) root=${2-}; shift 2 || die_usage "--state-root needs a value" ;;
    --device) device=${2-}; shift 2 || die_usage "--device needs a value" ;;
    --tasamd) tasamd=${2-}; shift 2 || die_usage "--tasamd needs a value" ;;
    --stats-port) stats=${2-}; shift 2 || die_usage "--stats-port needs a value" ;;
    --ready-timeout) ready_timeout=${2-}; shift 2 || die_usage "--ready-timeout needs a value" ;;
    --help|-h) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die_usage "unknown argument: $1" ;;
    esac
done
is_int() { case $1 in ''|*[!0-9]*) return 1 ;; *) [ ${#1} -le 6 ] ;; esac; }
[ -n "$replicas" ] && [ -n "$port" ] && [ -n "$ckpt" ] && [ -n "$root" ] ||
    die_usage "--replicas, --port, --checkpoint and --state-root are required"
is_int "$replicas" && [ "$replicas" -ge 1 ] && [ "$replicas" -le 64 ] ||
    die_usage "--replicas: '$replicas' is not 1 to 64"
is_int "$port" && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die_usage "--port: '$port' is not a port"
[ -z "$stats" ] || { is_int "$stats" && [ "$stats" -ge 1 ] && [ "$stats" -le 65535 ]; } ||
    die_usage "--stats-port: '$stats' is not a port"
is_int "$ready_timeout" && [ "$ready_timeout" -ge 1 ] || die_usage "--ready-timeout: '$ready_timeout' is not a number of seconds"
case $device in auto|cpu|cuda) ;; *) die_usage "--device: '$device' is not auto, cpu or cuda" ;; esac
[ -f "$ckpt" ] || die_usage "--checkpoint: no file '$ckpt'"
[ -x "$tasamd" ] || die_usage "--tasamd: '$tasamd' is not an executable (build it: make build/tasamd)"
command -v haproxy >/dev/null || die_usage "haproxy is not installed (make deps installs it)"
command -v curl >/dev/null || die_usage "curl is not installed (make deps installs it)"
mkdir -p "$root" || die_usage "--state-root: cannot create '$root'"
root=$(cd "$root" && pwd)
ckpt=$(cd "$(dirname "$ckpt")" && pwd)/$(basename "$ckpt")

pids=()      # every process started, replicas then the proxy
names=()     # their names, same order
hpid=
stopping=0

log() { echo "local-cluster: $*" >&2; }

# Stop everything: replicas drain on SIGTERM (tasamd's shutdown-timeout-ms),
# HAProxy stops at once; anything still there after 30 s is killed.
stop_all() {
    stopping=1
    local i
    for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}" 2>/dev/null; done
    local t=0
    while [ $t -lt 300 ]; do
        local alive=0
        for i in "${!pids[@]}"; do kill -0 "${pids[$i]}" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.1
        t=$((t + 1))
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            log "${names[$i]} (pid ${pids[$i]}) did not stop in 30 s: killed"
            kill -KILL "${pids[$i]}" 2>/dev/null
        fi
    done
    wait 2>/dev/null
}

on_signal() {
    [ $stopping -eq 1 ] && return
    log "stopping ${#pids[@]} processes"
    stop_all
    log "stopped"
    exit 0
}
trap on_signal TERM INT HUP
fail() {
    log "$*"
    stop_all
    exit 1
}

ports=()
for k in $(seq 1 "$replicas"); do
    dir="$root/r$k"
    mkdir -p "$dir/state" || fail "cannot create $dir/state"
    rm -f "$dir/port" "$dir/pid"
    "$tasamd" --checkpoint "$ckpt" --device "$device" --listen 127.0.0.1:0 --port-file "$dir/port" \
        --state-dir "$dir/state" --instance "r$k" "${extra[@]}" >"$dir/tasamd.log" 2>&1 &
    pids+=($!)
    names+=("r$k")
    echo $! >"$dir/pid"
done

# Each replica's port, then readiness (the model loads in the background).
deadline=$((SECONDS + ready_timeout))
for k in $(seq 1 "$replicas"); do
    dir="$root/r$k"
    until [ -s "$dir/port" ]; do
        kill -0 "${pids[$((k - 1))]}" 2>/dev/null ||
            fail "replica r$k exited before listening; its log ($dir/tasamd.log):
$(tail -n 20 "$dir/tasamd.log")"
        [ $SECONDS -lt $deadline ] || fail "replica r$k did not listen in ${ready_timeout} s"
        sleep 0.05
    done
    ports+=("$(cat "$dir/port")")
done

servers="$root/haproxy-servers.cfg"
{
    echo "# written by deploy/local-cluster.sh: the replicas for deploy/haproxy.cfg"
    echo "backend tasamd from tasam"
    for k in $(seq 1 "$replicas"); do
        echo "    server r$k 127.0.0.1:${ports[$((k - 1))]}"
    done
} >"$servers"
export TASAM_BIND="127.0.0.1:$port"
if [ -n "$stats" ]; then export TASAM_STATS_BIND="127.0.0.1:$stats"; else unset TASAM_STATS_BIND; fi
haproxy -c -q -f "$here/haproxy.cfg" -f "$servers" >"$root/haproxy.log" 2>&1 ||
    fail "the HAProxy configuration does not load: $(cat "$root/haproxy.log")"
haproxy -db -f "$here/haproxy.cfg" -f "$servers" >>"$root/haproxy.log" 2>&1 &
hpid=$!
pids+=($hpid)
names+=(haproxy)
echo $hpid >"$root/haproxy.pid"

for k in $(seq 1 "$replicas"); do
    until curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:${ports[$((k - 1))]}/readyz"; do
        kill -0 "${pids[$((k - 1))]}" 2>/dev/null ||
            fail "replica r$k exited while loading; its log:
$(tail -n 20 "$root/r$k/tasamd.log")"
        [ $SECONDS -lt $deadline ] || fail "replica r$k not ready in ${ready_timeout} s"
        sleep 0.1
    done
done
until curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/healthz"; do
    kill -0 "$hpid" 2>/dev/null || fail "HAProxy exited; its log:
$(tail -n 20 "$root/haproxy.log")"
    [ $SECONDS -lt $deadline ] || fail "HAProxy does not answer on 127.0.0.1:$port"
    sleep 0.05
done
for k in $(seq 1 "$replicas"); do
    log "r$k: http://127.0.0.1:${ports[$((k - 1))]} (pid ${pids[$((k - 1))]}, state $root/r$k/state)"
done
[ -n "$stats" ] && log "HAProxy stats: http://127.0.0.1:$stats/ and /metrics"
log "ready: $replicas replica(s) behind http://127.0.0.1:$port (HAProxy pid $hpid)"

# Wait. A replica that dies is reported and left dead (HAProxy routes
# around it, as a fleet would until the orchestrator replaces it); the
# cluster ends when HAProxy dies or on a signal.
while :; do
    dead=
    wait -n -p dead
    rc=$?
    [ -z "$dead" ] && continue
    for i in "${!pids[@]}"; do
        if [ "${pids[$i]}" = "$dead" ]; then
            if [ "$dead" = "$hpid" ]; then
                fail "HAProxy exited with status $rc; its log: $(tail -n 20 "$root/haproxy.log")"
            fi
            log "${names[$i]} (pid $dead) exited with status $rc; the others keep serving"
            unset "pids[$i]" "names[$i]" # never signalled again (its pid may be reused)
        fi
    done
done
