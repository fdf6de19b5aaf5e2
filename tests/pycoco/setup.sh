#!/usr/bin/env bash
# tests/pycoco/setup.sh [VENV]: a Python virtual environment holding
# pycocotools (and numpy) from PyPI, for the cross-check in
# tests/test_cocoeval.c (tests/venv.sh: exits 0 when VENV can import
# pycocotools, 1 when it cannot be set up; VENV.failed makes later runs skip
# at once).
exec "$(dirname "$0")/../venv.sh" "${1:-build/pycocotools}" "import pycocotools.cocoeval" \
    --only-binary :all: numpy pycocotools
