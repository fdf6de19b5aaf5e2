#!/usr/bin/env bash
# deploy/deps.sh: install the Debian packages that building, running and
# testing tasam need, when any is missing. Safe to run repeatedly: with
# everything present it only checks. Needs root (or sudo) to install.
set -eu
pkgs=(make gcc clang libclang-rt-14-dev pkg-config curl ca-certificates python3 python3-venv
      libopenblas-dev libjpeg62-turbo-dev libpng-dev zlib1g-dev
      libjansson-dev libmicrohttpd-dev libuv1-dev libsqlite3-dev sqlite3)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#pkgs[@]} build and test packages are installed"
    exit 0
fi
echo "deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "deps: done"
