#!/usr/bin/env bash
# bench/run.sh BUILD_DIR: the engine and trainer-data benchmarks (`make
# bench`). Uses the fixture `tiny` model when ../shared/fixtures (or $TASAM_FIXTURES) exists,
# and ViT-B-sized random weights it generates into build/bench/. Prints the
# machine it ran on: figures are only comparable on the same machine.
set -eu
build=${1:-build}
fixtures=${TASAM_FIXTURES:-../shared/fixtures}
reps=${BENCH_REPS:-5}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr)"
if [ -f "$fixtures/sam_tiny.safetensors" ]; then
    echo "== tiny (fixture)"
    "$build/bench/bench_cpu" --checkpoint "$fixtures/sam_tiny.safetensors" --reps "$reps"
    "$build/bench/bench_cpu" --checkpoint "$fixtures/sam_tiny.safetensors" --reps "$reps" --prompts 16
    echo "== training step (decoder forward + backward with LoRA; the decoder is every SAM's)"
    "$build/bench/bench_train" --checkpoint "$fixtures/sam_tiny.safetensors" --reps "$reps"
    echo "== tasam-train run end to end (fixture model, synthetic set, embeddings cached)"
    bench/train_run.sh "$build" "$fixtures/sam_tiny.safetensors"
    echo "== everything mode, tiny (fixture), dog.jpg, 16x16 grid"
    "$build/bench/bench_amg" --checkpoint "$fixtures/sam_tiny.safetensors" \
        --image "$fixtures/images/dog.jpg" --points-per-side 16 --reps "${BENCH_REPS_AMG:-3}"
    echo "== tiny: a sporadic request against back to back (the CPU pool after idle)"
    "$build/bench/bench_idle" --checkpoint "$fixtures/sam_tiny.safetensors"
else
    echo "== tiny: fixtures not found at $fixtures (set TASAM_FIXTURES), skipped"
fi
vitb="$build/bench/sam_vit_b_random.safetensors"
[ -f "$vitb" ] || "$build/bench/mkweights" --arch vit_b --out "$vitb"
echo "== vit_b (random weights)"
"$build/bench/bench_cpu" --checkpoint "$vitb" --reps "${BENCH_REPS_VITB:-2}"
if [ ! -f "$fixtures/sam_tiny.safetensors" ]; then
    echo "== training step (decoder forward + backward with LoRA; the decoder is every SAM's)"
    "$build/bench/bench_train" --checkpoint "$vitb" --reps "$reps"
fi
echo "== trainer data: synth, COCO load, examples and targets, COCO evaluation (bench_data)"
"$build/bench/bench_data" --out "$build/bench/synth" --images "${BENCH_DATA_IMAGES:-200}"
echo "== tasamd over HTTP (tasam-bench)"
bench/serve_bench.sh "$build"
if [ -x "$build/bench/bench_gpu" ]; then
    echo "== GPU"
    "$build/bench/bench_gpu" || echo "bench_gpu: no GPU run (see its message)"
    vith="$build/bench/sam_vit_h_random.safetensors"
    [ -f "$vith" ] || "$build/bench/mkweights" --arch vit_h --out "$vith"
    img="$fixtures/images/dog.jpg"
    [ -f "$img" ] || img=deploy/example.png
    echo "== everything mode on the GPU, vit_h (random weights), 32x32 grid"
    "$build/bench/bench_amg" --device cuda --checkpoint "$vith" --image "$img" \
        --points-per-side 32 --reps 3 || echo "bench_amg: no GPU run (see its message)"
fi
