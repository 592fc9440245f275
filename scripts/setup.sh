#!/usr/bin/env bash
# Idempotent set-up of a machine for running or testing the service: the system packages the
# offline engines need, the virtualenv with the pinned requirements. Fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: espeak-ng (offline TTS, test utterances); chromium and a CJK font (avatar
# names and chat text in Chinese) for the browser tests.
packages=(espeak-ng)
[ "${WITH_BROWSER:-0}" = 1 ] && packages+=(chromium fonts-wqy-microhei)
# the simulated cluster (make cluster): the edge's proxy and TURN server, the NAT router
[ "${WITH_CLUSTER:-0}" = 1 ] && packages+=(iproute2 nginx coturn iptables redis-server postgresql)
installed() { command -v "$1" >/dev/null 2>&1 || dpkg -s "$1" >/dev/null 2>&1; }
missing=()
for pkg in "${packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq >/dev/null
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install ${missing[*]} with your package manager, then run again" >&2
    exit 1
  fi
fi

# Python 3.11 virtualenv with the pinned requirements, reinstalled only when they change.
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.requirements-$(cat requirements/*.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned requirements (requirements/dev.txt)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -r requirements/dev.txt
  .venv/bin/pip install -q --no-deps -r requirements/nodeps.txt
  rm -f .venv/.requirements-*
  touch "$stamp"
fi
