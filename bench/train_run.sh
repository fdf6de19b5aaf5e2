#!/usr/bin/env bash
# bench/train_run.sh BUILD_DIR CHECKPOINT: the trainer's piece of `make
# bench`: `tasam-train run` end to end (examples drawn, embeddings read from
# the cache, decoder forward + backward with LoRA, hypernetwork backward,
# AdamW) on a synthetic set, as samples a second, after `tasam-train embed`
# has filled the embedding cache (its images/s is printed too). Where a GPU
# and a CUDA build are present it also measures the embedding precompute on
# the GPU with ViT-H-sized random weights (images/s). Figures compare only on
# the same machine: the machine and its load are printed first.
#   BENCH_TRAIN_STEPS (20), BENCH_TRAIN_BATCH (8), BENCH_TRAIN_THREADS (0: all)
#   BENCH_EMBED_IMAGES (64: images for the GPU precompute)
set -eu
build=${1:-build}
ck=${2:?usage: bench/train_run.sh BUILD_DIR CHECKPOINT}
steps=${BENCH_TRAIN_STEPS:-20}
batch=${BENCH_TRAIN_BATCH:-8}
threads=${BENCH_TRAIN_THREADS:-0}
dir="$build/bench/train-run"
train="$build/tasam-train"
mkdir -p "$dir"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
echo "load:   $(uptime | sed 's/.*load average/load average/')"
[ -f "$dir/data/train/instances.json" ] ||
    "$train" synth --out "$dir/data" --seed 1 --train-images 16 --val-images 4 --quiet
[ -f "$dir/hn0.safetensors" ] ||
    "$build/tasam" hypernet init --out "$dir/hn0.safetensors" --text-model hashed >/dev/null
# the CPU encoder's rate (only images not cached yet are computed)
rm -rf "$dir/cache"
"$train" embed --checkpoint "$ck" --data "$dir/data/train" --cache "$dir/cache" --device cpu \
    --threads "$threads" 2>/dev/null
t0=$(date +%s.%N)
"$train" run --checkpoint "$ck" --data "$dir/data/train" --init "$dir/hn0.safetensors" \
    --out "$dir/hn1.safetensors" --cache "$dir/cache" --steps "$steps" --batch "$batch" \
    --threads "$threads" --log "$dir/run.jsonl" --quiet
t1=$(date +%s.%N)
# the last step event's samples_per_s: batch / mean step time of the run
sps=$(grep '"event":"step"' "$dir/run.jsonl" | tail -n 1 | sed -E 's/.*"samples_per_s":([0-9.eE+-]+).*/\1/')
awk -v s="$sps" -v n="$steps" -v b="$batch" -v t="$threads" -v t0="$t0" -v t1="$t1" \
    'BEGIN { w = t1 - t0; printf "run: %.2f samples/s end to end (%d steps x %d examples, %s threads; %.1f s for the whole command, loading included)\n", s, n, b, t == 0 ? "all" : t, w }'
# the GPU's precompute, where there is one
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    vith="$build/bench/sam_vit_h_random.safetensors"
    [ -f "$vith" ] || "$build/bench/mkweights" --arch vit_h --out "$vith"
    n=${BENCH_EMBED_IMAGES:-64}
    [ -f "$dir/gpu-data/train/instances.json" ] ||
        "$train" synth --out "$dir/gpu-data" --seed 2 --train-images "$n" --val-images 0 \
            --size 1024x768 --quiet
    rm -rf "$dir/gpu-cache"
    if "$train" embed --checkpoint "$vith" --data "$dir/gpu-data/train" --cache "$dir/gpu-cache" \
        --device cuda --batch 8 --json "$dir/embed-gpu.json" 2>"$dir/embed-gpu.log"; then
        echo "embed (ViT-H, GPU): $(sed -nE 's/.*"images_per_s": ([0-9.]+).*/\1/p' "$dir/embed-gpu.json") images/s precompute ($n images of 1024x768, decode + resize + encoder + f16 cache write)"
    else
        echo "embed (ViT-H, GPU): no GPU run: $(tail -n 1 "$dir/embed-gpu.log")"
    fi
fi
