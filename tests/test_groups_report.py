"""Smoke test of benchmarks/accuracy/groups_report.py (a few seconds: two groups, 1 epoch of 1 step)."""

import json

import pytest

from benchmarks.accuracy import groups_report


def test_groups_report_quick(tmp_path):
    out = tmp_path / "rep"
    rc = groups_report.main(["--quick", "--groups", "trivial,so3", "--max-steps", "1", "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["reduced_budget"] is True
    assert rep["command"].startswith("python -m benchmarks.accuracy.groups_report --quick")
    for g in ("trivial", "so3"):
        m = rep["parameter_matching"][g]
        assert m["matched"] and abs(m["ratio"] - 1) <= 0.10
        for kern in ("implicit", "basis"):
            assert rep["summary"][g][kern]["n"] == 1
            assert 0.0 <= rep["summary"][g][kern]["mean"] <= 1.0
    md = out.with_suffix(".md").read_text()
    assert "Reduced budget" in md and rep["command"] in md and "| so3 |" in md
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_groups_report_rejects_unknown_group():
    with pytest.raises(SystemExit):
        groups_report.parse_args(["--groups", "so4"])
