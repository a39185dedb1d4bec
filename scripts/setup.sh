#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: apt packages (a C compiler among them), .venv, pinned torch,
# pcsym, and pcsym's compiled kernels, built now into the user cache; it fails if they do not build
# (CI runs this script first, so CI checks them). PCSYM_NATIVE=off skips the kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_apt=""
command -v gfortran >/dev/null 2>&1 || need_apt="$need_apt gfortran"
command -v gcc >/dev/null 2>&1 || need_apt="$need_apt gcc"  # the kernels' compiler (pcsym/geometry/native)
[ -e /usr/include/stdlib.h ] || need_apt="$need_apt libc6-dev"
ldconfig -p 2>/dev/null | grep -q "libgomp.so.1" || need_apt="$need_apt libgomp1"
if [ -n "$need_apt" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need_apt >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# CPU torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
python - <<'PY'
import pcsym, torch
from pcsym.geometry import native

if not native.disabled() and not native.available():  # available() builds them (once per source and compiler)
    raise SystemExit(f"error: pcsym's compiled kernels did not build: {native.status()}")
print(f"pcsym {pcsym.__version__} ready (torch {torch.__version__}); {native.status()}")
PY
