#!/usr/bin/env bash
# bench/cluster_sweep.sh [BUILD_DIR [OUT_DIR]]: the scale-out figures of the
# README (make bench-cluster). For each fleet shape in SHAPES (default "1x2
# 3x1": 1 replica with 2 CPU threads, then 3 replicas with 1 thread each),
# starts deploy/local-cluster.sh with the fixture model on the CPU, runs an
# open-loop rate sweep of tasam-bench through HAProxy (segment requests with
# a random point over 48 cached images: 3 fixture photos x 16 variants, so
# every replica holds some), writes OUT_DIR/<shape>.json and .svg, prints the
# table, and stops the cluster. The machine and its load average are printed
# first and last: on a shared machine the figures move with its load.
# Environment: RATES (default 2,4,6,8,10,12,14,16), STEP_SECONDS (15),
# STOP_P99_MS (5000), SHAPES.
set -eu
build=${1:-build}
out=${2:-$build/bench/cluster}
fixtures=${TASAM_FIXTURES:-../shared/fixtures}
rates=${RATES:-2,4,6,8,10,12,14,16}
step=${STEP_SECONDS:-15}
stop_p99=${STOP_P99_MS:-5000}
shapes=${SHAPES:-1x2 3x1}
model="$fixtures/sam_tiny.safetensors"
img="$fixtures/images"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
echo "load:    $(uptime | sed 's/.*load average/load average/')"
if [ ! -f "$model" ]; then
    echo "cluster sweep: fixtures not found at $fixtures (set TASAM_FIXTURES), skipped"
    exit 0
fi
for f in "$build/tasamd" "$build/bench/tasam-bench"; do
    [ -x "$f" ] || { echo "cluster sweep: $f is not built (make $f)"; exit 1; }
done
command -v haproxy >/dev/null || { echo "cluster sweep: haproxy is not installed (make deps)"; exit 1; }
mkdir -p "$out"

cpid=
cleanup() {
    if [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null; then
        kill -TERM "$cpid"
        wait "$cpid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

for shape in $shapes; do
    n=${shape%x*}
    threads=${shape#*x}
    root=$(mktemp -d "${TMPDIR:-/tmp}/tasam-cluster-sweep.XXXXXX")
    port=$(free_port)
    echo "== $n replica(s), --cpu-threads $threads each, behind HAProxy on 127.0.0.1:$port" \
        "($(uptime | sed 's/.*load average/load average/'))"
    deploy/local-cluster.sh --replicas "$n" --port "$port" --checkpoint "$model" --state-root "$root" \
        --device cpu --tasamd "$build/tasamd" -- --cpu-threads "$threads" >"$out/$shape.cluster.log" 2>&1 &
    cpid=$!
    for _ in $(seq 600); do
        grep -q 'local-cluster: ready' "$out/$shape.cluster.log" && break
        kill -0 "$cpid" 2>/dev/null || { cat "$out/$shape.cluster.log"; exit 1; }
        sleep 0.2
    done
    "$build/bench/tasam-bench" --url "http://127.0.0.1:$port" --quiet \
        --image "$img/dog.jpg" --image "$img/groceries.jpg" --image "$img/truck.jpg" --variants 16 \
        --sweep "rate=$rates" --duration "$step" --warmup 12 --stop-p99 "$stop_p99" \
        --plot "$out/$shape.svg" --save "$out/$shape.json" \
        --title "tasamd x $n (fixture model, CPU, $threads thread(s) each) behind HAProxy" || true
    cleanup
    cpid=
    rm -rf "$root"
done
echo "load:    $(uptime | sed 's/.*load average/load average/')"
echo "results: $out/*.json, $out/*.svg"
