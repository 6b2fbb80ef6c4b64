#!/usr/bin/env bash
# Set up the project's virtual environment in .venv (idempotent).
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh dev
# Works as root on a fresh Debian 12 (Python 3.11): installs python3-venv when venv creation fails.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  if ! "$py" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    echo "setup: $py -m venv failed; installing Debian's python3-venv" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$py" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "setup: pip install -e '$spec'" >&2
.venv/bin/python -m pip install -q -e "$spec"
