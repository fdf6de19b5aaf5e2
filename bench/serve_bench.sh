#!/usr/bin/env bash
# bench/serve_bench.sh BUILD_DIR: the daemon's piece of `make bench`. Starts
# BUILD_DIR/tasamd on a free loopback port with the fixture model on the
# CPU and measures it with BUILD_DIR/bench/tasam-bench over real HTTP:
#   (a) cached-embedding segment requests (one point on images/dog.jpg, the
#       image sent once to /v1/embeddings, then only its image_id), at
#       concurrency 1 and 4, and the same with the image in every request;
#   (b) GET /healthz, the floor of HTTP on this machine.
# The bench reports the server's own timings_ms next to its latency, so the
# HTTP+JSON overhead (latency minus queue and model stages) is printed for
# each run. Figures compare only on the same machine: the machine and its
# load are printed first. About a minute on 2 cores.
set -eu
build=${1:-build}
fixtures=${TASAM_FIXTURES:-../shared/fixtures}
model="$fixtures/sam_tiny.safetensors"
image="$fixtures/images/dog.jpg"
bench="$build/bench/tasam-bench"
tasamd="$build/tasamd"
# Small counts by default; SERVE_BENCH_REQUESTS scales the segment runs.
n=${SERVE_BENCH_REQUESTS:-60}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
echo "load:   $(uptime | sed 's/.*load average/load average/')"
if [ ! -f "$model" ] || [ ! -f "$image" ]; then
    echo "== tasamd: fixtures not found at $fixtures (set TASAM_FIXTURES), skipped"
    exit 0
fi
for f in "$tasamd" "$bench"; do
    if [ ! -x "$f" ]; then
        echo "== tasamd: $f is not built (make $f), skipped"
        exit 0
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tasam-serve-bench.XXXXXX")
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Port 0 and --port-file: never collides with anything already listening.
"$tasamd" --checkpoint "$model" --device cpu --listen 127.0.0.1:0 \
    --port-file "$tmp/port" --state-dir "$tmp/state" 2>"$tmp/tasamd.log" &
pid=$!

# Ready = /readyz answers 200 (the model loads on the worker thread).
ready() {
    local port=$1
    if command -v curl >/dev/null 2>&1; then
        curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz"
    else
        exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
        printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
        local line
        IFS= read -r -t 2 line <&3 || line=
        exec 3<&- 3>&-
        case $line in "HTTP/1."?" 200"*) return 0 ;; *) return 1 ;; esac
    fi
}
port=
for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "== tasamd exited before it was ready:"; cat "$tmp/tasamd.log"; exit 1
    fi
    [ -z "$port" ] && [ -s "$tmp/port" ] && port=$(cat "$tmp/port")
    [ -n "$port" ] && ready "$port" && break
    sleep 0.1
done
if [ -z "$port" ] || ! ready "$port"; then
    echo "== tasamd not ready after 60 s:"; cat "$tmp/tasamd.log"; exit 1
fi
url="http://127.0.0.1:$port"
echo "== tasamd: $model on the CPU, $url"

status=0
run() {
    echo "-- tasam-bench $*"
    "$bench" --url "$url" --quiet "$@" || { rc=$?; echo "   (tasam-bench exited $rc)"; status=1; }
}
seg=(--image "$image" --points "400,294,1")
run "${seg[@]}" --concurrency 1 --warmup 3 --requests "$n"
run "${seg[@]}" --concurrency 4 --warmup 4 --requests "$n"
run "${seg[@]}" --no-cache --concurrency 1 --warmup 2 --requests $((n / 2))
run --route healthz --concurrency 1 --duration 2
run --route healthz --concurrency 4 --duration 2

kill -TERM "$pid"
if wait "$pid"; then
    echo "== tasamd stopped cleanly"
else
    rc=$?
    echo "== tasamd exited $rc after SIGTERM:"; tail -n 20 "$tmp/tasamd.log"; status=1
fi
pid=
exit $status
