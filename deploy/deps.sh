#!/usr/bin/env bash
# deploy/deps.sh: install the Debian packages that building, running and
# testing tasam need, when any is missing (haproxy, wrk and python3-venv are
# for the fleet and load-tester tests), and kubernetes-validate from PyPI
# into build/venv-deploy for the manifest check. Safe to run repeatedly:
# with everything present it only checks. Installing needs root: it uses
# sudo when run as another user, and when that is not possible it prints
# the one command to run and exits 1.
set -eu
# The last line is for the tests only: the fleet and load-tester tests
# (haproxy, wrk), the Python venvs, and the demo page's browser test
# (headless Chromium driven by Selenium).
pkgs=(make gcc clang libclang-rt-14-dev pkg-config curl ca-certificates
      libopenblas-dev libjpeg62-turbo-dev libpng-dev zlib1g-dev
      libjansson-dev libmicrohttpd-dev libuv1-dev libsqlite3-dev sqlite3
      haproxy wrk python3-venv chromium chromium-driver fonts-dejavu-core python3)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#pkgs[@]} build and test packages are installed"
else
    install="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    echo "deps: missing Debian packages: ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        # sudo -n: fail at once rather than wait for a password nobody types
        # (a terminal user is asked; a script without one gets the message)
        if command -v sudo >/dev/null && { [ -t 0 ] || sudo -n true 2>/dev/null; }; then
            sudo=sudo
        else
            echo "deps: installing them needs root; run this as root, then make again:" >&2
            echo "deps:     $install" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get update -qq || ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        echo "deps: apt-get failed (see above); as root, run: $install" >&2
        exit 1
    fi
    echo "deps: done"
fi

# kubernetes-validate (PyPI, pinned) checks deploy/k8s/ in make test. It is
# optional: where it cannot be installed (no route to PyPI) the check says
# so and skips, and no later run tries again until the stamp is removed.
kv="$(cd "$(dirname "$0")/.." && pwd)/build/venv-deploy"
kv_version=1.37.0
if [ ! -x "$kv/bin/kubernetes-validate" ] && [ ! -f "$kv.failed" ]; then
    echo "deps: installing kubernetes-validate $kv_version (PyPI) into build/venv-deploy"
    mkdir -p "$(dirname "$kv")"
    if /usr/bin/python3 -m venv "$kv" >"$kv.log" 2>&1 &&
        "$kv/bin/pip" install -q --disable-pip-version-check --timeout 20 --retries 1 \
            "kubernetes-validate==$kv_version" >>"$kv.log" 2>&1; then
        echo "deps: kubernetes-validate installed"
    else
        echo "deps: kubernetes-validate could not be installed (build/venv-deploy.log); the" \
             "manifest check will skip (rm build/venv-deploy.failed to try again)"
        rm -rf "$kv"
        touch "$kv.failed"
    fi
fi
