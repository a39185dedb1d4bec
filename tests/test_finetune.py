"""Fine-tuning: the trunk comes from a model, the head is rebuilt for the new classes, the model
settings come from the model and contradicting flags are refused; --freeze-trunk keeps the trunk."""

import shutil

import torch
from typer.testing import CliRunner

from pcsym.cli import app

from .conftest import SAMPLE

runner = CliRunner()
TINY = ["--points", "256", "--batch-size", "4", "--threads", "1", "--max-steps", "2", "--epochs", "1"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _three_classes(root):
    meshes = SAMPLE / "meshes"
    for cls, src in (("bed", "bed_0001.off"), ("teapot", "teapot.stl"), ("tub", "bathtub_0002.off")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            shutil.copy(meshes / src, root / cls / f"{i}_{src}")
    return root


def test_fine_tune_loads_the_trunk_and_rebuilds_the_head(tmp_path, sample_dataset):
    base = tmp_path / "base"
    r = _invoke("-q", "train", "--data", sample_dataset, "--out", base, "--group", "m", "--widths", "8,16", "--k", "6",
                "--sampling", "random-fps", *TINY)
    assert r.exit_code == 0, r.output
    mine = _three_classes(tmp_path / "mine")
    ft = tmp_path / "ft"
    r = _invoke("-q", "train", "--data", mine, "--out", ft, "--init", base / "last.pt", "--freeze-trunk",
                "--val-fraction", "0.34", *TINY)
    assert r.exit_code == 0, r.output
    old = torch.load(base / "last.pt", weights_only=True)
    new = torch.load(ft / "last.pt", weights_only=True)
    assert new["model_config"]["group"] == "m" and new["model_config"]["widths"] == [8, 16]
    assert new["model_config"]["class_names"] == ["bed", "teapot", "tub"]
    # the neighbourhood and downsampling the trunk was trained with, not the defaults (k 10, random)
    assert (new["model_config"]["k"], new["model_config"]["sampling"]) == (6, "random-fps")
    # normals follow each run's data: PCA estimates in the sample's 1024-point h5 clouds, the meshes' own
    assert old["model_config"]["estimated_normals"] == 1024 and new["model_config"]["estimated_normals"] == 0
    assert new["state_dict"]["head.out.weight"].shape[0] == 3
    trunk = [k for k in old["state_dict"] if k.startswith("blocks.")]
    assert trunk and all(torch.equal(old["state_dict"][k], new["state_dict"][k]) for k in trunk)  # frozen
    # without --freeze-trunk the trunk starts from the model and then trains
    r = _invoke("-q", "train", "--data", mine, "--out", tmp_path / "ft2", "--init", base, "--val-fraction", "0.34",
                "--k", "8", *TINY)
    assert r.exit_code == 0, r.output
    ft2 = torch.load(tmp_path / "ft2" / "last.pt", weights_only=True)
    assert (ft2["model_config"]["k"], ft2["model_config"]["sampling"]) == (8, "random-fps")  # given: yours
    moved = ft2["state_dict"]
    assert any(not torch.equal(old["state_dict"][k], moved[k]) for k in trunk if k.endswith("weight"))


def test_fine_tune_refuses_contradicting_flags(tmp_path):
    r = _invoke("train", "--data", SAMPLE / "modelnet10_mini", "--out", tmp_path / "x", "--init", "so3",
                "--widths", "16,32")
    assert r.exit_code == 2
    assert "--widths 16,32 conflicts with --init so3" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _invoke("train", "--data", SAMPLE / "modelnet10_mini", "--out", tmp_path / "y", "--freeze-trunk", *TINY)
    assert r.exit_code == 2 and "--freeze-trunk needs --init" in r.stderr
    r = _invoke("train", "--data", SAMPLE / "modelnet10_mini", "--out", tmp_path / "z", "--init", tmp_path / "nope.pt")
    assert r.exit_code == 2 and "checkpoint not found" in r.stderr
