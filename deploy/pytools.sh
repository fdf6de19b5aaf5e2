#!/usr/bin/env bash
# deploy/pytools.sh [VENV]: the Python packages that tests compare tasam with,
# pinned, in a virtual environment (default build/venv) from PyPI:
#   tokenizers    Hugging Face's tokenizer, what sentence-transformers runs
#                 (tests/test_tokenizer_hf.c, make unicode-tables)
#   schemathesis  checks the running daemon against schema/openapi.yaml
#                 (tests/test_schema.c)
# Safe to run again: with the pinned versions present it only checks. Without
# PyPI (offline machine) it says so and exits 0; the tests that need these
# packages then skip, naming what is missing. Never touches the system
# Python's packages.
set -u
venv=${1:-build/venv}
pins=(tokenizers==0.22.1 schemathesis==4.32.5)
stamp="$venv/.tasam-pins"

say() { echo "pytools: $*"; }

if [ -x "$venv/bin/python3" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pins[*]}" ]; then
    say "${pins[*]} present in $venv"
    exit 0
fi
py=$(command -v /usr/bin/python3 || command -v python3 || true)
if [ -z "$py" ]; then
    say "no python3: the tests that compare with ${pins[*]} will skip"
    exit 0
fi
if [ ! -x "$venv/bin/python3" ]; then
    mkdir -p "$(dirname "$venv")"
    if ! "$py" -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        say "cannot create a virtual environment ($py -m venv; Debian: apt-get install python3-venv):"
        say "the tests that compare with ${pins[*]} will skip"
        exit 0
    fi
fi
say "installing ${pins[*]} into $venv (PyPI, about 60 MB)"
if ! "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --timeout 30 \
        --retries 1 "${pins[@]}"; then
    say "could not install from PyPI (offline, or PyPI unreachable; set PIP_INDEX_URL for a"
    say "mirror): the tests that compare with ${pins[*]} will skip"
    exit 0
fi
echo "${pins[*]}" >"$stamp"
say "done"
