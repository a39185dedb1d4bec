"""Classifying many files: JSON-lines results written as they come, --resume, --workers, compact rows."""

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pcsym.cli import app

from .conftest import SAMPLE

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for f in sorted((SAMPLE / "meshes").glob("*")):
        shutil.copy(f, d / f.name)
    (d / "broken.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n")  # truncated: a vertex and the face are missing
    return d


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_out_writes_one_line_per_input_and_exit_2_for_a_failure(folder, tmp_path):
    out = tmp_path / "res.jsonl"
    r = runner.invoke(app, ["classify", str(folder), "--out", str(out)])
    assert r.exit_code == 2
    rows = _rows(out)
    files = sorted(str(p) for p in folder.iterdir())
    assert [row["file"] for row in rows] == files
    bad = [row for row in rows if not row["ok"]]
    assert len(bad) == 1 and bad[0]["file"].endswith("broken.off") and "broken.off" in bad[0]["error"]
    bed = next(row for row in rows if row["file"].endswith("bed_0001.off"))
    single = json.loads(runner.invoke(app, ["classify", str(folder / "bed_0001.off"), "--json"]).stdout)
    assert bed["top"][0]["class"] == "bed" and bed["top"] == single["results"][0]["top"]  # same as one by one
    # several inputs: one compact row each, not one table each
    assert r.stdout.count("┏") == 1 and "runner-up" in r.stdout and "failed" in r.stdout
    # an existing results file is never overwritten by accident
    r = runner.invoke(app, ["classify", str(folder), "--out", str(out)])
    assert r.exit_code == 2 and "pass --resume" in r.stderr
    assert len(_rows(out)) == len(files)


def test_resume_after_an_interrupted_write_completes_without_duplicates(folder, tmp_path):
    out = tmp_path / "res.jsonl"
    runner.invoke(app, ["classify", str(folder), "--out", str(out)])
    full = out.read_bytes()
    out.write_bytes(full[: len(full) // 2])  # a crash mid-line
    r = runner.invoke(app, ["classify", str(folder), "--out", str(out), "--resume"])
    assert r.exit_code == 2  # broken.off is still a failure
    rows = _rows(out)
    assert sorted(row["file"] for row in rows) == sorted(str(p) for p in folder.iterdir())
    assert "skipped" in r.stderr


def test_workers_give_the_same_results_in_the_same_order(folder, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    runner.invoke(app, ["classify", str(folder), "--out", str(a)])
    proc = subprocess.run([sys.executable, "-m", "pcsym", "-q", "classify", str(folder), "--out", str(b),
                           "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _rows(a) == _rows(b)


def test_resume_needs_out():
    r = runner.invoke(app, ["classify", str(SAMPLE / "meshes"), "--resume"])
    assert r.exit_code == 2 and "--resume and --force need --out FILE" in r.stderr
