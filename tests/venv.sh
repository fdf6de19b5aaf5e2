#!/usr/bin/env bash
# tests/venv.sh VENV CHECK PIP_ARGS...: a Python virtual environment for a
# test, with packages from PyPI (test-time tools only: tasam never needs
# Python at run time). CHECK is Python code that succeeds once VENV has what
# the test needs; PIP_ARGS go to `pip install` when it does not.
# Exits 0 when VENV passes CHECK, 1 when it cannot be set up (no python3 or
# venv module, no network: VENV.log says which); a failed attempt leaves
# VENV.failed so later test runs skip at once (delete it to retry).
set -u
venv=${1:?usage: tests/venv.sh VENV CHECK PIP_ARGS...}
check=${2:?usage: tests/venv.sh VENV CHECK PIP_ARGS...}
shift 2
log="$venv.log"
if [ -x "$venv/bin/python3" ] && "$venv/bin/python3" -c "$check" 2>/dev/null; then
    exit 0
fi
[ -f "$venv.failed" ] && exit 1
mkdir -p "$(dirname "$venv")"
{
    echo "setting up $venv: python3 -m venv, pip install $*"
    python3 -m venv "$venv" &&
        timeout 600 "$venv/bin/python3" -m pip install -q --disable-pip-version-check --timeout 20 \
            --retries 1 "$@" &&
        "$venv/bin/python3" -c "$check"
} >"$log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    date >"$venv.failed"
    exit 1
fi
exit 0
