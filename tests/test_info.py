"""``pcsym info`` says which kernels are active, and why not (issue 39): a missing compiler is never silent."""

import json
import os
import shutil
import subprocess
import sys

import pytest

HAS_CC = shutil.which(os.environ.get("CC") or "cc") is not None
PCSYM = [sys.executable, "-c", "import sys; from pcsym.cli import main; sys.argv[0] = 'pcsym'; main()"]


def _info(tmp_path, *args, **env):
    e = {k: v for k, v in os.environ.items() if k != "PCSYM_NATIVE"}
    e.update(PCSYM_CACHE_DIR=str(tmp_path / "cache"), **env)
    return subprocess.run([*PCSYM, "info", *args], capture_output=True, text=True, timeout=120, env=e)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_info_names_the_active_kernels_and_imports_no_torch(tmp_path):
    r = _info(tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("pcsym 0.") and lines[2].startswith("compiled kernels: active, ")
    assert str(tmp_path / "cache" / "native") in lines[2] and "shipped models: so3, o2, so3-mn10, o2-mn10" in lines
    facts = json.loads(_info(tmp_path, "--json").stdout)
    assert facts["kernels"]["active"] and facts["kernels"]["loops"] in ("AVX2+FMA", "baseline")
    code = "import sys; from pcsym.cli import main; sys.argv = ['pcsym', 'info']\ntry:\n    main()\nexcept SystemExit:\n" \
           "    pass\nassert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_info_and_a_warning_say_why_kernels_are_not_used(tmp_path):
    r = _info(tmp_path, CC=str(tmp_path / "no-such-compiler"))
    assert r.returncode == 0
    assert "compiled kernels: NOT active (no C compiler found (set CC)): the slower torch/numpy path" in r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("pcsym: warning: compiled kernels not used")
    off = _info(tmp_path, PCSYM_NATIVE="off")
    assert "compiled kernels: off (PCSYM_NATIVE=off)" in off.stdout and off.stderr == ""
