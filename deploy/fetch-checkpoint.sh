#!/usr/bin/env bash
# deploy/fetch-checkpoint.sh [DEST]: download Meta's official SAM ViT-H
# checkpoint and verify its size and SHA-256. Does nothing when DEST already
# holds the verified file. Exit 0 on success, 1 with a clear message if the
# download or the check fails (for example on a machine without internet).
#
# TASAM_VIA names the command that called this one ("make serve", "make
# run"), so the hint on failure says how to run that command with another
# checkpoint.
set -u
dest=${1:-checkpoints/sam_vit_h_4b8939.pth}
url=${SAM_CHECKPOINT_URL:-https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth}
want_sha=a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e
want_size=2564550879
via=${TASAM_VIA:-}

say() { echo "fetch-checkpoint: $*" >&2; }

verify() {
    local f=$1 size sha
    size=$(stat -c %s "$f" 2>/dev/null || echo 0)
    if [ "$size" != "$want_size" ]; then
        say "$f has $size bytes, expected $want_size"
        return 1
    fi
    say "verifying SHA-256 of $f ..."
    sha=$(sha256sum "$f" | cut -d' ' -f1)
    if [ "$sha" != "$want_sha" ]; then
        say "$f has SHA-256 $sha, expected $want_sha"
        return 1
    fi
}

# How to go on without this download, for the command that was run.
hint() {
    say "place sam_vit_h_4b8939.pth at $dest yourself, or use another SAM checkpoint:"
    if [ -n "$via" ]; then
        say "  $via CHECKPOINT=path/to/sam_checkpoint.pth"
    else
        say "  make serve CHECKPOINT=path/to/sam_checkpoint.pth   (or make run CHECKPOINT=...)"
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
    say "$dest is not the official file; remove it to download again"
    exit 1
fi

dir=$(dirname "$dest")
top="" # the outermost folder this run creates
d=$dir
while [ ! -d "$d" ]; do
    top=$d
    d=$(dirname "$d")
done
mkdir -p "$dir" || exit 1
log=$(mktemp "${TMPDIR:-/tmp}/tasam-fetch.XXXXXX")
# On failure: no empty folder and no empty partial file left behind (a
# partial download with data stays, and the next run resumes it).
cleanup() {
    rm -f "$log"
    [ -f "$dest.part" ] && [ ! -s "$dest.part" ] && rm -f "$dest.part"
    if [ -n "$top" ]; then
        d=$dir
        while rmdir "$d" 2>/dev/null && [ "$d" != "$top" ]; do
            d=$(dirname "$d")
        done
    fi
    return 0
}
trap cleanup EXIT

say "downloading the official SAM ViT-H checkpoint (2.4 GiB)"
say "  from $url"
say "  to   $dest"
# A quick look first, so an offline machine gets one clear line instead of
# a progress bar and retries: curl's exit codes for a name that does not
# resolve (6), no connection (7), a timeout (28) and TLS failures (35, 60).
# Any answer from the server, even an error, goes on to the download, which
# reports it.
curl -sSI --connect-timeout 15 --max-time 30 -o /dev/null "$url" 2>"$log"
case $? in
6 | 7 | 28 | 35 | 60)
    say "download failed: $(tail -n 1 "$log" | sed 's/^curl: ([0-9]*) //')"
    say "(no internet access, or the address is unreachable)"
    hint
    exit 1
    ;;
esac
# A progress bar on a terminal; in a log, only errors.
progress=(-sS)
[ -t 2 ] && progress=(--progress-bar)
if ! curl -fL --retry 2 --connect-timeout 20 "${progress[@]}" -C - -o "$dest.part" "$url"; then
    say "download failed (interrupted, or the server refused it); run the same command again"
    say "to resume it"
    hint
    exit 1
fi
if ! verify "$dest.part"; then
    say "the downloaded file is damaged; kept as $dest.part for inspection"
    exit 1
fi
mv "$dest.part" "$dest"
touch "$dest.verified"
say "$dest verified"
