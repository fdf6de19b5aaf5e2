#!/usr/bin/env bash
# bench/gpu_check.sh [PACK_DIR]: the one GPU session script for issues 15
# (the T4 path) and 16 (GPU speed). Run from the repository root on a
# machine with an NVIDIA GPU; every result lands in $OUT (default
# build/gpu-check), at most 8 files:
#   log.txt        everything the runs printed
#   figures.txt    the GPU, driver and clocks, then every "FIG label metric
#                  value" line (bench_gpu, torch_sam_bench.py, t4_estimate.py)
#   summary.md     the figures the two issues ask for, as tables (gpu_summary.py)
#   tests.txt      test_cuda_ops and test_cuda_sam, whole
#   profile_encoder.txt, profile_decoder.txt
#                  the sm_75 path's device time per op (TASAM_CUDA_PROFILE)
#   t4_estimate.md the T4 estimate (t4_estimate.py), encoder and decoder
#
# Binaries: PACK_DIR (bench/gpu_pack.sh made it on a machine without a GPU:
# build/gpu-pack by default) when it has bins.tar.xz, else built here for
# the GPU present (needs the project's build dependencies). Stages, in
# order (GPU_CHECK_STAGES, default all of them; about 10 minutes on an
# H100-class GPU, so a session short of device time runs them in two calls,
# "tests bench estimate" then "torch serve"):
#   tests     test_cuda_ops (every op, each storage type, the sm_75 kernels
#             against the CPU reference) and test_cuda_sam (the fixtures end
#             to end, the T4 configuration, decoder graphs)
#   bench     ViT-H random weights: fp32 reference outputs; bf16 (served
#             default: fp16 decoder) with kernels, ceilings, agreement and
#             memory per batch; the same with decoder graphs; fp16 native;
#             fp16 on the sm_75 kernels under a T4's occupancy (agreement,
#             kernels), with graphs; profile runs of its encoder and decoder
#   estimate  the T4 estimate from those profiles and ceilings
#   torch     the official PyTorch SAM on the same weights (bf16 eager and
#             torch.compile), for the ratio on one machine
#   serve     tasamd + tasam-bench, 1, 8 and 64 concurrent clients
set -u
pack=${1:-build/gpu-pack}
out=${OUT:-build/gpu-check}
stages=${GPU_CHECK_STAGES:-tests bench estimate torch serve}
mkdir -p "$out"
log=$out/log.txt
figs=$out/figures.txt
: > "$log"
: > "$figs"
say() { echo "== $*" | tee -a "$log"; }
has() { case " $stages " in *" $1 "*) return 0 ;; esac; return 1; }
# run NAME SECONDS CMD...: CMD's output to the log (and FIG lines to figures)
run() {
    local name=$1 secs=$2 t0
    shift 2
    say "$name: $*"
    t0=$(date +%s)
    timeout "$secs" "$@" 2>> "$log" | tee -a "$log" | { grep '^FIG ' >> "$figs" || true; }
    local rc=${PIPESTATUS[0]}
    say "$name: exit $rc after $(($(date +%s) - t0)) s"
    return $rc
}

# ---- the machine ----
{
    echo "INFO date $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm,clocks.sm,power.limit \
        --format=csv,noheader | sed 's/^/INFO gpu /'
    echo "INFO nvcc $(nvcc --version 2>/dev/null | tail -1)"
    echo "INFO cpu $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
} | tee -a "$figs" "$log" >/dev/null

# ---- binaries ----
bin=build/gpu-check-bin
if [ -f "$pack/bins.tar.xz" ]; then
    rm -rf "$bin" && mkdir -p "$bin" && tar -C "$bin" -xJf "$pack/bins.tar.xz"
    # CUDA's libraries: the toolkit's, else the Python packages' (nvidia-*)
    lt=$(ldconfig -p 2>/dev/null | awk '/libcublasLt\.so\.13 /{print $NF; exit}')
    [ -n "$lt" ] || lt=$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13' 2>/dev/null | head -1)
    cudalib=$(dirname "${lt:-/usr/local/cuda/lib64/x}")
    rt=$(find "$cudalib" /usr/local /opt -name 'libcudart.so.13' 2>/dev/null | head -1)
    export LD_LIBRARY_PATH=$PWD/$bin/lib:$cudalib:$(dirname "${rt:-$cudalib/x}"):${LD_LIBRARY_PATH:-}
    B=$bin/bin
    T=$bin/bin
else
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
    say "build for sm_$cc"
    make -j"$(nproc)" CUDA=1 CUDA_ARCHS="$cc" BUILD=build/gpu build/gpu/tasamd \
        build/gpu/tests/test_cuda_ops build/gpu/tests/test_cuda_sam build/gpu/bench/bench_gpu \
        build/gpu/bench/mkweights build/gpu/bench/memplan build/gpu/bench/tasam-bench >> "$log" 2>&1 ||
        { say "build failed (see log.txt)"; exit 1; }
    B=build/gpu/bench
    T=build/gpu/tests
    [ -x build/gpu/tasamd ] && ln -sf "$PWD/build/gpu/tasamd" build/gpu/bench/tasamd
fi
fx=${TASAM_FIXTURES:-}
if [ -z "$fx" ] && [ -f "$pack/fixtures.tar.xz" ]; then
    fx=$PWD/build/gpu-check-fixtures
    mkdir -p "$fx" && tar -C "$fx" -xJf "$pack/fixtures.tar.xz"
fi
[ -n "$fx" ] && export TASAM_FIXTURES=$fx

# ---- tests ----
if has tests; then
    for t in test_cuda_ops test_cuda_sam; do
        run "$t" 300 "$T/$t"
    done
    grep -E '^(ok|not ok|skip) |: [0-9]+ passed|FAIL|SKIP' "$log" > "$out/tests.txt"
fi

# ---- benchmarks ----
w=build/gpu-check-weights
vith=$w/sam_vit_h_random.safetensors
if has bench || has torch || has serve; then
    mkdir -p "$w"
    [ -f "$vith" ] || run mkweights 240 "$B/mkweights" --arch vit_h --out "$vith"
fi
bg() { run "bench_gpu $*" 240 "$B/bench_gpu" --checkpoint "$vith" "$@"; }
ref=$w/ref_fp32.bin
if has bench; then
    bg --dtype fp32 --reps 3 --decoder-only --save "$ref"
    bg --dtype bf16 --reps 20 --batch 8 --attention --peaks --compare "$ref" --memory-batches 1,2,4,8
    TASAM_CUDA_GRAPHS=1 bg --dtype bf16 --reps 20 --decoder-only
    bg --dtype fp16 --reps 20 --batch 8 --attention
    export TASAM_CUDA_KERNELS=sm75 TASAM_CUDA_EMULATE_SMEM=65536
    bg --dtype fp16 --reps 20 --batch 8 --attention --compare "$ref"
    TASAM_CUDA_GRAPHS=1 bg --dtype fp16 --reps 20 --decoder-only
    for s in encoder decoder; do
        # the profile table is on stderr: into its own file, then the log
        say "profile run ($s)"
        TASAM_CUDA_PROFILE=1 TASAM_NO_WARMUP=1 timeout 240 "$B/bench_gpu" --checkpoint "$vith" \
            --dtype fp16 --reps 5 --profile-run $s 2> "$out/profile_$s.txt" |
            tee -a "$log" | grep '^FIG ' >> "$figs"
        cat "$out/profile_$s.txt" >> "$log"
    done
    unset TASAM_CUDA_KERNELS TASAM_CUDA_EMULATE_SMEM
fi

if has estimate && [ -s "$out/profile_encoder.txt" ]; then
    : > "$out/t4_estimate.md"
    for s in encoder decoder; do
        python3 bench/t4_estimate.py --stage $s --profile "$out/profile_$s.txt" --figures "$figs" \
            >> "$out/t4_estimate.md" 2>> "$log"
        echo >> "$out/t4_estimate.md"
    done
    grep '^FIG ' "$out/t4_estimate.md" >> "$figs"
fi

# ---- the official PyTorch SAM on the same weights ----
if has torch; then
    if ! python3 -c "import segment_anything" 2>/dev/null && ls "$pack"/segment_anything*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/site "$pack"/segment_anything*.whl &&
            export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    fi
    PYTHONUNBUFFERED=1 run torch_sam_bench 420 python3 bench/torch_sam_bench.py --arch vit_h \
        --checkpoint "$vith" --dtype bf16 --compile --batch 8 --reps 10
fi

# ---- tasamd over HTTP ----
if has serve && [ -x "$B/tasamd" ] && [ -x "$B/tasam-bench" ] && [ -n "$fx" ]; then
    st=$(mktemp -d)
    "$B/tasamd" --checkpoint "$vith" --listen 127.0.0.1:0 --port-file "$st/port" \
        --state-dir "$st" >> "$log" 2>&1 &
    pid=$!
    for i in $(seq 120); do [ -s "$st/port" ] && break; sleep 1; done
    port=$(cat "$st/port" 2>/dev/null)
    for i in $(seq 120); do
        if command -v curl >/dev/null; then
            curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        elif [ -n "$port" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 5 && break # listening; the model may still be loading: tasam-bench warms up
        fi
        sleep 1
    done
    for c in 1 8 64; do
        # one point a request: requests/s are prompts/s
        say "tasam-bench $c clients"
        timeout 60 "$B/tasam-bench" --url "http://127.0.0.1:$port" --image "$fx/images/dog.jpg" \
            --points "400,300,1" --concurrency "$c" --duration 8 --warmup 8 --json --quiet |
            tee -a "$log" | python3 -c "
import json, sys
j = json.load(sys.stdin)
l = 'serve/vit_h/bf16/c$c'
print(f'FIG {l} prompts_per_s {j[\"throughput_rps\"]:.4g}')
print(f'FIG {l} latency_p50_ms {j[\"latency_ms\"][\"p50\"]:.4g}')
print(f'FIG {l} errors {j[\"errors\"]}')" >> "$figs" 2>> "$log"
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rm -rf "$st"
fi

python3 bench/gpu_summary.py "$figs" > "$out/summary.md" 2>> "$log"
say "done: $out"
ls -la "$out" | tee -a "$log"
