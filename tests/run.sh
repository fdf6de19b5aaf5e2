#!/usr/bin/env bash
# tests/run.sh BUILD_DIR [LABEL]: run every test binary in BUILD_DIR/tests,
# print their output, and add their "N passed, N failed, N skipped" lines.
# Exits non-zero if any test failed or any binary crashed.
set -u
dir=${1:?usage: tests/run.sh BUILD_DIR [LABEL]}
label=${2:-tests}
passed=0 failed=0 skipped=0 crashed=0
for t in "$dir"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "== $label: $name"
    t0=$(date +%s)
    out=$("$t" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    echo "  ($name took $(( $(date +%s) - t0 )) s)"
    line=$(printf '%s\n' "$out" | grep -E '^[a-z_0-9]+: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' | tail -n 1)
    if [ -z "$line" ]; then
        echo "  CRASH $name exited $rc without a summary"
        crashed=$((crashed + 1))
        continue
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -E 's/.* ([0-9]+) skipped/\1/')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "  CRASH $name exited $rc"
        crashed=$((crashed + 1))
    fi
done
failed=$((failed + crashed))
echo "$label: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
