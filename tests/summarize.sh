#!/usr/bin/env bash
# tests/summarize.sh LOG: add up the per-stage "LABEL: N passed, N failed,
# N skipped" lines of a `make test` log into the final summary line, and
# exit non-zero when anything failed, when a stage did not report, or when
# no test ran at all.
set -u
log=${1:?usage: tests/summarize.sh LOG}
stages="plain format sanitizers cuda-compile fuzz"
pat='^(plain|format|sanitizers|cuda-compile|fuzz|tsan|tsan-races): [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped'
read -r p f s < <(grep -E "$pat" "$log" |
    sed -E 's/^[a-z-]+: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*$/\1 \2 \3/' |
    awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}')
for st in $stages; do
    if ! grep -qE "^$st: [0-9]+ passed" "$log"; then
        echo "summary: stage '$st' did not report (build failure?)"
        f=$((f + 1))
    fi
done
echo "$p passed, $f failed, $s skipped"
[ "$f" -eq 0 ] && [ "$p" -gt 0 ]
