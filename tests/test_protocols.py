"""benchmarks/accuracy/protocols.py: the one command that scores shipped models on the official test split (the
split issue 14's targets are measured on) or, without one, on each run's own validation split."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from pcsym.training.evaluate import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "sample_data" / "modelnet10_mini"


def _protocols(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.accuracy.protocols", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def _test_only_copy(dest: Path, per_class: int = 3) -> Path:
    """The h5 layout with only a test split (like the official ModelNet10 test release): a few shapes
    of each class of the shipped sample."""
    dest.mkdir()
    with h5py.File(MINI / "ply_data_train0.h5") as f:
        labels = f["label"][:, 0]
        idx = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
        with h5py.File(dest / "ply_data_test0.h5", "w") as g:
            g["data"], g["label"] = f["data"][idx], f["label"][idx]
    (dest / "shape_names.txt").write_text((MINI / "shape_names.txt").read_text())
    (dest / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n")
    return dest


def test_protocols_score_the_official_test_split_by_default(tmp_path):
    data = _test_only_copy(tmp_path / "mn10_test")
    out = tmp_path / "prot"
    proc = _protocols("--data", str(data), "--votes", "2", "--out", str(out), "o2-mn10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["split"] == "test" and res["n_shapes"] == 30
    (row,) = res["rows"]
    # the same figures as `pcsym evaluate o2-mn10 --data DIR --rotate z` (its default split is test here too)
    want = evaluate_checkpoint("o2-mn10", data, rotate="z")
    assert want["split"] == "test"
    assert (row["oa_z"], row["macc_z"]) == (want["overall_accuracy"], want["mean_class_accuracy"])
    want = evaluate_checkpoint("o2-mn10", data, rotate="z", votes=2)
    assert (row["oa_z_votes"], row["macc_z_votes"]) == (want["overall_accuracy"], want["mean_class_accuracy"])
    md = out.with_suffix(".md").read_text()
    assert md.startswith(f"# Rotation protocols on the official test split (30 shapes of {data})")
    assert "Official-test figures." in md and "z-rotated, 2 votes" in md


def test_protocols_refuse_a_split_the_dataset_lacks_in_one_line(tmp_path):
    data = _test_only_copy(tmp_path / "mn10_test")
    proc = _protocols("--data", str(data), "--split", "val", "--out", str(tmp_path / "prot"), "o2-mn10")
    assert proc.returncode == 1
    err = proc.stderr.strip()  # names the dataset (its cache file, which says where the data came from)
    assert err.startswith(f"error: {data}") and "\n" not in err
    assert err.endswith(": the dataset has no train split, so no 'val' split (use --split test or all)")
    assert not (tmp_path / "prot.md").exists()


def test_protocols_eval_seeds_report_mean_and_std_over_evaluation_seeds(tmp_path):
    """--eval-seeds 0,1: every figure is the mean (± std) of `pcsym evaluate --seed 0` and `--seed 1`."""
    import statistics

    data = _test_only_copy(tmp_path / "mn10_test", per_class=2)
    out = tmp_path / "prot_lr0.1"  # a dot in the prefix is part of its name: prot_lr0.1.json, not prot_lr0.json
    proc = _protocols("--data", str(data), "--eval-seeds", "0,1", "--out", str(out), "o2-mn10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "prot_lr0.1.json").read_text())
    assert (tmp_path / "prot_lr0.1.md").exists() and not (tmp_path / "prot_lr0.json").exists()
    assert res["eval_seeds"] == [0, 1]
    (row,) = res["rows"]
    runs = [evaluate_checkpoint("o2-mn10", data, rotate="so3", seed=s) for s in (0, 1)]
    assert row["oa_so3_seeds"] == [m["overall_accuracy"] for m in runs]
    assert row["oa_so3"] == statistics.fmean(row["oa_so3_seeds"])
    assert row["macc_so3_std"] == statistics.pstdev(m["mean_class_accuracy"] for m in runs)
    md = (tmp_path / "prot_lr0.1.md").read_text()
    assert "mean ± std over evaluation seeds 0,1" in md and f"{row['oa_so3']:.4f} ± {row['oa_so3_std']:.4f}" in md
    assert "--eval-seeds 0,1" in md
    proc = _protocols("--data", str(data), "--eval-seeds", "0,x", "--out", str(out), "o2-mn10")
    assert proc.returncode == 1 and proc.stderr.strip() == \
        "error: --eval-seeds must be comma-separated integers 0 or more, got '0,x'"


def test_protocols_score_a_model_on_data_with_some_of_its_classes_like_evaluate(tmp_path):
    """A test-dev folder named *testdev* is labelled test-dev; a dataset holding some of the model's classes
    (ModelNet10 for a 40-class model) is scored on those, matched by name, with the figures of `pcsym evaluate`."""
    src = _test_only_copy(tmp_path / "full")
    dest = tmp_path / "mn3_testdev"
    dest.mkdir()
    names = (MINI / "shape_names.txt").read_text().split()
    some = ["toilet", "bed", "sofa"]
    with h5py.File(src / "ply_data_test0.h5") as f:
        labels = f["label"][:, 0]
        keep = np.isin(labels, [names.index(n) for n in some])
        with h5py.File(dest / "ply_data_test0.h5", "w") as g:
            g["data"] = f["data"][keep]
            g["label"] = np.array([[some.index(names[c])] for c in labels[keep]], dtype="uint8")
    (dest / "shape_names.txt").write_text("\n".join(some) + "\n")
    (dest / "test_files.txt").write_text("data/x/ply_data_test0.h5\n")
    out = tmp_path / "prot"
    proc = _protocols("--data", str(dest), "--out", str(out), "so3-mn10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.with_suffix(".json").read_text())
    (row,) = res["rows"]
    assert res["split_label"] == "test-dev" and res["n_shapes"] == 9 and row["model_classes"] == 10
    want = evaluate_checkpoint("so3-mn10", dest, rotate="so3")
    assert (row["oa_so3"], row["macc_so3"]) == (want["overall_accuracy"], want["mean_class_accuracy"])
    md = out.with_suffix(".md").read_text()
    assert md.startswith(f"# Rotation protocols on the test-dev half of the official test split (9 shapes of {dest})")
    assert "Test-dev figures" in md and "so3-mn10 (10 classes, scored on the data's)" in md


def test_protocols_rotations_score_only_the_rotations_asked_for(tmp_path):
    """--rotations so3: the SO(3) figures alone (what an SO(3)-invariant model needs), the same as the full run's;
    a name outside none/z/so3 is one line and exit 1, nothing written."""
    data = _test_only_copy(tmp_path / "mn10_test", per_class=1)
    out = tmp_path / "prot"
    proc = _protocols("--data", str(data), "--votes", "2", "--rotations", "so3", "--out", str(out), "so3-mn10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert not any(k.startswith(("oa_none", "oa_z", "macc_none", "macc_z")) for k in row)
    want = evaluate_checkpoint("so3-mn10", data, rotate="so3")
    assert (row["oa_so3"], row["macc_so3"]) == (want["overall_accuracy"], want["mean_class_accuracy"])
    want = evaluate_checkpoint("so3-mn10", data, rotate="so3", votes=2)
    assert (row["oa_so3_votes"], row["macc_so3_votes"]) == (want["overall_accuracy"], want["mean_class_accuracy"])
    md = out.with_suffix(".md").read_text()
    assert "| SO(3)-rotated | SO(3)-rotated, 2 votes |" in md and "z-rotated" not in md and "no rotation" not in md
    assert "--votes 2 --rotations so3 --out" in md
    bad = tmp_path / "bad"
    for value in ("so3,x", "", "z,z"):
        proc = _protocols("--data", str(data), "--rotations", value, "--out", str(bad), "so3-mn10")
        assert proc.returncode == 1 and proc.stderr.strip() == ("error: --rotations must be distinct names among "
                                                                f"none, z, so3, comma-separated, got '{value}'")
    assert not bad.with_suffix(".md").exists()
