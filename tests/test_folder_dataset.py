"""A folder per class of any meshes or clouds: detected, cached by file fingerprint, unreadable files
skipped with a warning, classes too small for a split refused; works with prepare, train, evaluate."""

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from pcsym.cli import app
from pcsym.data.datasets import detect_format, load_dataset
from pcsym.data.splits import split_indices
from pcsym.errors import PcsymError

from .conftest import SAMPLE

runner = CliRunner()
MESHES = SAMPLE / "meshes"


def _make(root, per_class=3, split_dirs=False):
    for cls, src in (("bed", MESHES / "bed_0001.off"), ("teapot", MESHES / "teapot.stl"),
                     ("tub", MESHES / "bathtub_0002.off")):
        for i in range(per_class):
            d = root / cls / (("train" if i else "test") if split_dirs else "")
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, d / f"{cls}_{i}{src.suffix}")
    return root


def test_folder_layout_is_detected_cached_and_skips_broken_files(tmp_path, caplog):
    root = _make(tmp_path / "mine")
    (root / "bed" / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 99999999\nend_header\n1 2 3\n")
    assert detect_format(root) == "folder"
    with caplog.at_level("WARNING", logger="pcsym"):
        d = load_dataset(root, points=256)
    assert list(d.class_names) == ["bed", "teapot", "tub"] and len(d.labels) == 9
    assert np.bincount(d.labels).tolist() == [3, 3, 3] and set(d.split) == {"train"}
    msgs = [r.getMessage() for r in caplog.records]
    assert any("skipped" in m and "broken.ply" in m for m in msgs)
    assert any("prepared 9 shapes in 3 classes; skipped 1 file(s)" in m for m in msgs)
    # cached: a second load reads the cache; a changed file rebuilds it
    assert load_dataset(root, points=256).points.tobytes() == d.points.tobytes()
    shutil.copy(MESHES / "bed_0001.off", root / "teapot" / "extra.off")
    assert len(load_dataset(root, points=256).labels) == 10


def test_folder_with_train_test_and_the_cli(tmp_path, sample_mesh):
    root = _make(tmp_path / "mine", per_class=4, split_dirs=True)
    r = runner.invoke(app, ["data", "prepare", str(root), "--points", "256", "--out", str(tmp_path / "c.npz")])
    assert r.exit_code == 0, r.output
    d = load_dataset(tmp_path / "c.npz")
    assert (d.split == "test").sum() == 3 and (d.split == "train").sum() == 9
    out = tmp_path / "run"
    r = runner.invoke(app, ["-q", "train", "--data", str(root), "--out", str(out), "--group", "m", "--epochs", "1",
                            "--max-steps", "1", "--points", "256", "--widths", "8,16", "--batch-size", "4",
                            "--val-fraction", "0.34"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(out), "--data", str(root), "--json"])
    assert r.exit_code == 0, r.output
    assert '"split": "test"' in r.stdout and '"n": 3' in r.stdout


def test_a_class_too_small_for_a_split_is_an_error(tmp_path):
    root = _make(tmp_path / "mine", per_class=2)
    for f in list((root / "tub").iterdir())[1:]:
        f.unlink()
    d = load_dataset(root, points=256)
    with pytest.raises(PcsymError, match="class 'tub' has only 1 shape in the train split"):
        split_indices(d, "val", 0.2, 0)
