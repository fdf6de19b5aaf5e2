#!/usr/bin/env bash
# deploy/fetch-checkpoint.sh [DEST]: download Meta's official SAM ViT-H
# checkpoint and verify its size and SHA-256. Does nothing when DEST already
# holds the verified file. Exit 0 on success, 1 with a clear message if the
# download or the check fails (for example on a machine without internet).
set -u
dest=${1:-checkpoints/sam_vit_h_4b8939.pth}
url=${SAM_CHECKPOINT_URL:-https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth}
want_sha=a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e
want_size=2564550879

verify() {
    local f=$1 size sha
    size=$(stat -c %s "$f" 2>/dev/null || echo 0)
    if [ "$size" != "$want_size" ]; then
        echo "fetch-checkpoint: $f has $size bytes, expected $want_size" >&2
        return 1
    fi
    echo "fetch-checkpoint: verifying SHA-256 of $f ..." >&2
    sha=$(sha256sum "$f" | cut -d' ' -f1)
    if [ "$sha" != "$want_sha" ]; then
        echo "fetch-checkpoint: $f has SHA-256 $sha, expected $want_sha" >&2
        return 1
    fi
}

if [ -f "$dest" ]; then
    if [ -f "$dest.verified" ] && [ "$dest.verified" -nt "$dest" ]; then
        exit 0
    fi
    if verify "$dest"; then
        touch "$dest.verified"
        exit 0
    fi
    echo "fetch-checkpoint: $dest is not the official file; remove it to download again" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
echo "fetch-checkpoint: downloading the official SAM ViT-H checkpoint (2.4 GiB)" >&2
echo "fetch-checkpoint:   from $url" >&2
echo "fetch-checkpoint:   to   $dest" >&2
if ! curl -fL --retry 2 --connect-timeout 20 --progress-bar -C - -o "$dest.part" "$url"; then
    echo "fetch-checkpoint: download failed (no internet access, or the address is unreachable)." >&2
    echo "fetch-checkpoint: place sam_vit_h_4b8939.pth at $dest yourself, or run with another" >&2
    echo "fetch-checkpoint: checkpoint: make run CHECKPOINT=path/to/sam_checkpoint.pth" >&2
    exit 1
fi
if ! verify "$dest.part"; then
    echo "fetch-checkpoint: the downloaded file is damaged; kept as $dest.part for inspection" >&2
    exit 1
fi
mv "$dest.part" "$dest"
touch "$dest.verified"
echo "fetch-checkpoint: $dest verified" >&2
