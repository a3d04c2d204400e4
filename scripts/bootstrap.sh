#!/usr/bin/env bash
# Puts a pinned `uv` into .tools/ using only the machine's Python 3.11+ (Debian's python3 lacks
# venv/ensurepip until python3-venv is installed; as root we install it).
set -euo pipefail
UV_VERSION=0.13.8
PY=${PYTHON:-python3}
if [ -x .tools/bin/uv ] && [ "$(.tools/bin/uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  exit 0
fi
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "wearemo needs Python >= 3.11"'
rm -rf .tools
if ! "$PY" -m venv .tools 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" || \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    rm -rf .tools
    "$PY" -m venv .tools
  else
    echo "python3 -m venv failed: install your distribution's python3-venv package" >&2
    exit 1
  fi
fi
.tools/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
