"""benchmarks/accuracy/groups_report.py: a seconds-long run end to end (two groups, 1 epoch of 1 step), its
resumable run folders, and the statistics of the report (Welch's test, significance colours, ranking)."""

import json
import shutil
from types import SimpleNamespace

import pytest
from scipy import stats

from benchmarks.accuracy import groups_report

ROOT = groups_report.ROOT


def _test_split_copy(tmp_path):
    """The mini dataset's shapes as a dataset with a test split (like a test-dev folder)."""
    src, dst = ROOT / "sample_data" / "modelnet10_mini", tmp_path / "testdev"
    dst.mkdir()
    shutil.copy(src / "ply_data_train0.h5", dst / "ply_data_test0.h5")
    shutil.copy(src / "shape_names.txt", dst / "shape_names.txt")
    (dst / "test_files.txt").write_text("data/testdev/ply_data_test0.h5\n")
    return dst


def test_groups_report_quick_with_test_data_and_runs_dir(tmp_path):
    out, runs, testdev = tmp_path / "rep", tmp_path / "runs", _test_split_copy(tmp_path)
    argv = ["--quick", "--groups", "trivial,so3", "--max-steps", "1", "--out", str(out), "--test-data", str(testdev),
            "--eval-seeds", "0,1", "--runs-dir", str(runs)]
    assert groups_report.main(argv) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["metric"] == "test_acc" and rep["command"].startswith("python -m benchmarks.accuracy.groups_report --quick")
    for g in ("trivial", "so3"):
        m = rep["parameter_matching"][g]
        assert m["matched"] and abs(m["ratio"] - 1) <= 0.10
        for kern in ("implicit", "basis"):
            assert rep["summary"][g][kern]["n"] == 1
            assert 0.0 <= rep["summary"][g][kern]["mean"] <= 1.0
            assert (runs / f"{g}-{kern}-s0" / "result.json").is_file()
    for r in rep["runs"]:  # the run's figure is the mean of its evaluation passes on the test split
        assert len(r["test_acc_per_eval_seed"]) == 2
        assert r["test_acc"] == pytest.approx(sum(r["test_acc_per_eval_seed"]) / 2)
    md = out.with_suffix(".md").read_text()
    assert rep["command"] in md and "| so3 |" in md and "test-dev OA" in md  # the folder is named testdev
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"

    # the same command again reads the finished runs back; a run without its result.json goes on from last.pt
    (runs / "so3-basis-s0" / "result.json").unlink()
    assert groups_report.main(argv) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    by_run = {(r["group"], r["kernel"]): r for r in again["runs"]}
    assert by_run[("trivial", "implicit")] == next(r for r in rep["runs"] if (r["group"], r["kernel"]) == ("trivial", "implicit"))
    assert by_run[("so3", "basis")]["resumed"] is True and by_run[("so3", "basis")]["ok"]


def test_welch_matches_scipy_and_handles_degenerate_cases():
    a, b = [0.81, 0.83, 0.80], [0.78, 0.79, 0.77]
    t, p = groups_report.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue) and p < 0.05
    assert groups_report.welch([0.8], [0.7, 0.71]) == (None, None)  # one run is not a result
    assert groups_report.welch([0.8, 0.8], [0.8, 0.8]) == (None, None)
    assert groups_report.significance_colour(0.02, 0.01, 0.05) == "#2ca02c"
    assert groups_report.significance_colour(-0.02, 0.01, 0.05) == "#d62728"
    assert groups_report.significance_colour(0.02, 0.2, 0.05) == "#7f7f7f"


def test_report_ranks_groups_and_tests_each_pair(tmp_path):
    accs = {("o2", "implicit"): [0.70, 0.71, 0.72], ("o2", "basis"): [0.60, 0.62, 0.61],
            ("so3", "implicit"): [0.50, 0.52, 0.51], ("so3", "basis"): [0.51, 0.50, 0.53]}
    results = [{"group": g, "kernel": k, "seed": s, "ok": True, "test_acc": a, "test_macc": a - 0.05, "val_acc": a,
                "train_seconds": 60.0} for (g, k), xs in accs.items() for s, a in enumerate(xs)]
    args = SimpleNamespace(groups=("o2", "so3"), test_data="x/modelnet40_testdev_hdf5_1024", points=256, epochs=8,
                           max_steps=0, batch_size=16, lr=2e-3, seeds=(0, 1, 2), k=10, widths=(16, 32, 64),
                           strides=(2, 4, 4), invariant_dims=64, head_dims=64, val_fraction=0.05, eval_seeds=(0, 1, 2),
                           threads=1, jobs=2)
    match = {"implicit_params": 100, "basis_params": 101, "implicit_widths": [16, 32, 64], "basis_widths": [9, 18, 35],
             "ratio": 1.01, "matched": True, "basis_at_reference_widths": 150}
    env = {"created_utc": "now", "pcsym": "0", "torch": "0", "escnn": "0", "cpus": 2}
    data = {"path": "train", "train": 90, "val": 10, "classes": 40, "test_shapes": 12, "shapes": 100}
    rep = groups_report.build_report(args, "cmd", {"o2": match, "so3": match}, results, 1.0, data, env)
    o2 = rep["summary"]["o2"]["test"]
    assert o2["diff"] == pytest.approx(0.10) and o2["p"] < 0.01
    assert rep["summary"]["so3"]["test"]["p"] > 0.05
    assert [r["group"] for r in rep["ranking_implicit"]] == ["o2", "so3"]
    assert rep["ranking_implicit"][1]["p_vs_best"] < 0.01
    md = tmp_path / "r.md"
    groups_report.write_markdown(md, rep, args.groups)
    text = md.read_text()
    assert "test-dev OA" in text and "**+10.0**" in text and "| so3 |" in text
    png = tmp_path / "r.png"
    groups_report.write_chart(png, list(args.groups), rep["summary"], "t", chance=0.025)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_groups_report_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        groups_report.parse_args(["--groups", "so4"])
    with pytest.raises(SystemExit):
        groups_report.parse_args(["--test-data", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        groups_report.parse_args(["--val-fraction", "0"])
