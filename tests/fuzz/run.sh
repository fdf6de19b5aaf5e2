#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS BINDIR: run every libFuzzer target built from
# tests/fuzz/fuzz_*.c (`make fuzz` builds them into BINDIR with ASan+UBSan)
# for SECONDS each, seeded from tests/fuzz/corpus/NAME and, where present,
# the fixture files. A target that is missing (did not build) or finds a
# crash fails; the crashing input is kept in build/fuzz/.
set -u
secs=${1:-15}
bindir=${2:-build/fuzz/bin}
out=build/fuzz
mkdir -p "$out"
fixtures=${TASAM_FIXTURES:-../shared/fixtures}
passed=0 failed=0
for f in tests/fuzz/fuzz_*.c; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .c)
    if [ ! -x "$bindir/$name" ]; then
        echo "  FAIL $name: not built (see the make fuzz output above)"
        failed=$((failed + 1))
        continue
    fi
    cp -f "$bindir/$name" "$out/$name"
    corpus="$out/$name.corpus"
    mkdir -p "$corpus"
    [ -d "tests/fuzz/corpus/$name" ] && cp -n tests/fuzz/corpus/"$name"/* "$corpus"/ 2>/dev/null
    # Optional seeds from the fixtures, listed one glob per line in the corpus folder.
    if [ -f "tests/fuzz/corpus/$name.seeds" ] && [ -d "$fixtures" ]; then
        while read -r g; do
            for s in $fixtures/$g; do [ -f "$s" ] && cp -n "$s" "$corpus/" ; done
        done < "tests/fuzz/corpus/$name.seeds"
    fi
    if (cd "$out" && ASAN_OPTIONS=detect_leaks=1 ./"$name" -max_total_time="$secs" -max_len=1048576 \
            -rss_limit_mb=4096 -timeout=20 -print_final_stats=0 "$name.corpus" >"$name.log" 2>&1); then
        echo "ok     $name ($(grep -c . "$out/$name.log") log lines, ${secs}s)"
        passed=$((passed + 1))
    else
        echo "not ok $name: crash or leak, see $out/$name.log"
        tail -30 "$out/$name.log"
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
