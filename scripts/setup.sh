#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: apt packages, .venv, pinned torch, pcsym.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_apt=""
command -v gfortran >/dev/null 2>&1 || need_apt="$need_apt gfortran"
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
print(f"pcsym {pcsym.__version__} ready (torch {torch.__version__})")
PY
