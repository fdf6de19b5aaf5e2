#!/usr/bin/env bash
# tests/fuzz/run.sh SECONDS: build every tests/fuzz/fuzz_*.c as a libFuzzer
# target (with ASan+UBSan) and run each for SECONDS, seeded from
# tests/fuzz/corpus/NAME and, where present, the fixture files. A target that
# finds a crash fails; the crashing input is kept in build/fuzz/.
set -u
secs=${1:-15}
out=build/fuzz
mkdir -p "$out"
fixtures=${TASAM_FIXTURES:-../shared/fixtures}
src=$(ls engine/*.c hypernet/*.c adapters/*.c 2>/dev/null | tr '\n' ' ')
inc="-I. -I/usr/include/x86_64-linux-gnu/openblas-pthread"
libs="-lopenblas -ljpeg -lpng -lz -ljansson -lm -lpthread"
passed=0 failed=0
for f in tests/fuzz/fuzz_*.c; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .c)
    bin="$out/$name"
    if ! clang -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=fuzzer,address,undefined \
            -fno-sanitize-recover=undefined $inc -o "$bin" "$f" $src $libs 2>"$out/$name.build.log"; then
        echo "  FAIL $name: does not build (see $out/$name.build.log)"
        cat "$out/$name.build.log" | head -20
        failed=$((failed + 1))
        continue
    fi
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
