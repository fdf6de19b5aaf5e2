#!/usr/bin/env bash
# tests/summarize.sh LOG: add up the per-stage "LABEL: N passed, N failed,
# N skipped" lines of a `make test` log into the final summary line, and
# exit non-zero when anything failed (or when no test ran at all).
set -u
log=${1:?usage: tests/summarize.sh LOG}
read -r p f s < <(grep -E '^(plain|sanitizers|fuzz): [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" |
    sed -E 's/^[a-z]+: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/' |
    awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}')
stages=$(grep -cE '^(plain|sanitizers|fuzz): [0-9]+ passed' "$log")
if [ "$stages" -lt 3 ]; then
    echo "summary: a test stage did not report (build failure?)"
    f=$((f + 3 - stages))
fi
echo "$p passed, $f failed, $s skipped"
[ "$f" -eq 0 ] && [ "$p" -gt 0 ]
