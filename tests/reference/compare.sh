#!/usr/bin/env bash
# tests/reference/compare.sh [ARCH] [IMAGE]: check tasam against the official
# segment-anything reference on a checkpoint of another size than the
# fixtures' and another photo, through both checkpoint formats:
#   1. bench/mkweights writes random ARCH (default vit_b) weights (safetensors);
#   2. reference.py runs the official SamPredictor on IMAGE (default the
#      fixtures' groceries.jpg) and also torch.save()s the weights as .pth;
#   3. tasam segment runs the same prompts from the .pth and the .safetensors;
#   4. compare.py checks both dumps against the reference's (and, where fp32
#      rounding alone exceeds the tolerance, against a float64 reference run).
# Needs python3 with torch, torchvision, Pillow, numpy and segment-anything
# (`make reference-deps` installs them: Debian's python3-torch and
# python3-torchvision, segment-anything from PyPI in build/reference/venv).
set -eu
arch=${1:-vit_b}
fixtures=${TASAM_FIXTURES:-../shared/fixtures}
image=${2:-$fixtures/images/groceries.jpg}
build=${BUILD:-build}
dir=build/reference
py=${REFERENCE_PYTHON:-$dir/venv/bin/python3}
mkdir -p "$dir"
if ! "$py" -c "import torch, segment_anything, PIL, numpy" 2>/dev/null; then
    echo "reference: $py lacks torch/segment_anything (run make reference-deps); skipped"
    exit 0
fi
[ -f "$image" ] || { echo "reference: image $image not found; skipped"; exit 0; }
w="$dir/${arch}_random.safetensors"
[ -f "$w" ] || "$build/bench/mkweights" --arch "$arch" --out "$w" --seed 5
status=0
run_case() { # name, tasam/reference prompt args...
    local name=$1; shift
    echo "== $arch, $(basename "$image"), $name"
    "$py" tests/reference/reference.py --arch "$arch" --checkpoint "$w" --image "$image" "$@" \
        --dump "$dir/ref_$name.safetensors" --save-pth "$dir/${arch}_random.pth"
    "$py" tests/reference/reference.py --arch "$arch" --checkpoint "$w" --image "$image" "$@" \
        --dump "$dir/ref64_$name.safetensors" --fp64
    for fmt in pth safetensors; do
        "$build/tasam" segment --device cpu --checkpoint "$dir/${arch}_random.$fmt" --image "$image" \
            "$@" --dump "$dir/ours_${name}_$fmt.safetensors" 2>/dev/null
        echo "-- tasam from .$fmt"
        "$py" tests/reference/compare.py "$dir/ref_$name.safetensors" "$dir/ours_${name}_$fmt.safetensors" \
            "$dir/ref64_$name.safetensors" || status=1
    done
}
run_case points --point 300,200,1 --point 500,350,0
run_case box_single --box 100,80,420,400 --single-mask
exit $status
