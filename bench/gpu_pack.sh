#!/usr/bin/env bash
# bench/gpu_pack.sh [PACK_DIR]: prepare, on a machine without a GPU, what
# bench/gpu_check.sh needs on a GPU machine that cannot build the project
# (no Debian packages, no network): PACK_DIR (default build/gpu-pack, under
# the ignored build/) receives
#   bins.tar.xz      the CUDA test and bench binaries and tasamd (built here
#                    for CUDA_ARCHS, default 90, plus the sm_75 kernels'
#                    compute_75 code), stripped, and the shared libraries they
#                    need beyond glibc and CUDA (OpenBLAS, libjpeg, ...);
#   fixtures.tar.xz  the reference fixtures the CUDA tests read (sam_tiny,
#                    golden_tiny, golden_tiny_input, images/dog.jpg) from
#                    $TASAM_FIXTURES or ../shared/fixtures;
#   *.whl            segment-anything, for bench/torch_sam_bench.py (the GPU
#                    machine has torch but not it).
# About 50 MB in all: under the 64 MiB a device call carries. Then, on the
# GPU machine: bench/gpu_check.sh PACK_DIR.
set -eu
pack=${1:-build/gpu-pack}
archs=${CUDA_ARCHS:-90}
fixtures=${TASAM_FIXTURES:-../shared/fixtures}
build=build/gpu
jobs=${JOBS:-$(nproc)}

make --no-print-directory -j"$jobs" CUDA=1 CUDA_ARCHS="$archs" BUILD=$build \
    $build/tasamd $build/tests/test_cuda_ops $build/tests/test_cuda_sam \
    $build/bench/bench_gpu $build/bench/mkweights $build/bench/memplan $build/bench/tasam-bench

rm -rf "$pack"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$pack" "$stage/bin" "$stage/lib"
for b in tasamd tests/test_cuda_ops tests/test_cuda_sam bench/bench_gpu bench/mkweights \
         bench/memplan bench/tasam-bench; do
    strip -o "$stage/bin/$(basename "$b")" "$build/$b"
done
# every shared library but glibc's, the C++ runtime and CUDA's (the GPU
# machine has newer ones of those)
for b in "$stage"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcu[A-Za-z]*)\.so' |
    while read -r lib; do cp -L "$lib" "$stage/lib/"; done
tar -C "$stage" -cf - bin lib | xz -6 -T0 > "$pack/bins.tar.xz"

if [ -f "$fixtures/sam_tiny.safetensors" ]; then
    tar -C "$fixtures" -cf - sam_tiny.safetensors golden_tiny.safetensors \
        golden_tiny_input.safetensors images/dog.jpg | xz -6 -T0 > "$pack/fixtures.tar.xz"
else
    echo "gpu_pack: no fixtures at $fixtures (set TASAM_FIXTURES): test_cuda_sam will skip"
fi
python3 -m pip download -q --no-deps --only-binary=:all: -d "$pack" segment-anything ||
    echo "gpu_pack: segment-anything not downloaded: the torch comparison will be skipped"
du -sh "$pack"/*
echo "gpu_pack: carry $pack; on the GPU machine: bench/gpu_check.sh $pack"
