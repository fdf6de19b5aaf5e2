#!/usr/bin/env bash
# deploy/run-example.sh: the README's first command (`make run`). Segments an
# image with SAM and writes the masks as COCO RLE JSON and PNG overlays under
# out/. CHECKPOINT defaults to the official ViT-H file, downloaded and
# verified on first use; IMAGE to the bundled example; POINTS to one click.
set -eu
build=${BUILD:-build}
ckpt=${CHECKPOINT:-checkpoints/sam_vit_h_4b8939.pth}
image=${IMAGE:-deploy/example.png}
points=${POINTS:-330,330,1}
out=${OUT:-out}
if [ "$ckpt" = "checkpoints/sam_vit_h_4b8939.pth" ]; then
    deploy/fetch-checkpoint.sh "$ckpt" || exit 1
fi
mkdir -p "$out"
args=()
IFS=';' read -ra pts <<< "$points"
for p in "${pts[@]}"; do [ -n "$p" ] && args+=(--point "$p"); done
"$build/tasam" segment --checkpoint "$ckpt" --image "$image" "${args[@]}" \
    --json "$out/example.json" --png "$out/example"
echo "run: masks in $out/example.json, picture in $out/example_overlay.png"
