#!/usr/bin/env bash
# tests/pycoco/setup.sh [VENV]: a Python virtual environment holding
# pycocotools (and numpy) from PyPI, for the cross-check in
# tests/test_cocoeval.c. Test-only: tasam never needs Python at run time.
# Exits 0 when VENV can import pycocotools, 1 when it cannot be set up (no
# venv module, no network); a failed attempt leaves VENV.failed so later
# test runs skip at once (delete it to retry).
set -u
venv=${1:-build/pycocotools}
log="$venv.log"
if [ -x "$venv/bin/python3" ] && "$venv/bin/python3" -c "import pycocotools.cocoeval" 2>/dev/null; then
    exit 0
fi
[ -f "$venv.failed" ] && exit 1
mkdir -p "$(dirname "$venv")"
{
    echo "setting up $venv: python3 -m venv, pip install pycocotools"
    python3 -m venv "$venv" &&
        timeout 300 "$venv/bin/python3" -m pip install -q --disable-pip-version-check --timeout 20 --retries 1 \
            --only-binary :all: numpy pycocotools &&
        "$venv/bin/python3" -c "import pycocotools.cocoeval"
} >"$log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    date >"$venv.failed"
    exit 1
fi
exit 0
