"""`pcsym ensemble`: models of one architecture combined into one checkpoint whose logits are the members' mean;
it evaluates, classifies, exports (same logits in every format), passes check-equivariance, calibrates its own
"unknown" threshold, and refuses what it cannot be."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pcsym.cli import app

from .conftest import SAMPLE

runner = CliRunner()
MESH = str(SAMPLE / "meshes" / "bed_0001.off")


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _train(out, data, seed, *extra):
    r = _invoke("-q", "train", "--data", data, "--out", out, "--group", "so2", "--epochs", "1", "--max-steps", "2",
                "--points", "256", "--widths", "8,16", "--k", "6", "--batch-size", "8", "--threads", "1",
                "--seed", seed, *extra)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_dataset):
    root = tmp_path_factory.mktemp("ens")
    return [_train(root / f"s{seed}", sample_dataset, seed) for seed in (0, 1)]


def _cloud(points=256):
    from pcsym.inference.predict import read_input

    pts, nrm = read_input(MESH, points)
    return torch.as_tensor(pts)[None].float(), torch.as_tensor(nrm)[None].float()


def test_the_ensemble_outputs_the_mean_of_its_members_logits(runs, tmp_path):
    from pcsym.models.checkpoint import load_model

    out = tmp_path / "e.pt"
    r = _invoke("ensemble", *runs, "--out", out)
    assert r.exit_code == 0, r.output
    assert "2 so2 members, 10 classes" in r.output and "no 'unknown' detector (pass --data)" in r.output
    ens, ckpt = load_model(out)
    assert ckpt["ensemble_members"] == 2 and [m["seed"] for m in ckpt["members"]] == [0, 1]
    # its training history is both members' epochs: training time (benchmarks' budgets) counts both
    hists = [torch.load(r / "best.pt", weights_only=True)["history"] for r in runs]
    assert [e["member"] for e in ckpt["history"]] == [0] * len(hists[0]) + [1] * len(hists[1])
    assert sum(e["cpu_seconds"] for e in ckpt["history"]) == pytest.approx(sum(e["cpu_seconds"] for h in hists for e in h))
    a, b = load_model(runs[0])[0], load_model(runs[1])[0]
    pos, nrm = _cloud()
    with torch.no_grad():
        la, lb, le = a(pos, nrm), b(pos, nrm), ens(pos, nrm)
        assert not torch.allclose(la, lb, atol=1e-3)  # two different members
        torch.testing.assert_close(le, (la + lb) / 2, atol=1e-5, rtol=1e-5)
        for vote in (1, 3):  # test-time votes: the members share each vote's downsampling order
            torch.testing.assert_close(ens(pos, nrm, vote=vote), (a(pos, nrm, vote=vote) + b(pos, nrm, vote=vote)) / 2,
                                       atol=1e-5, rtol=1e-5)
    # a setting changed on the ensemble (evaluate --sampling) reaches its members
    ens.cfg.sampling = a.cfg.sampling = b.cfg.sampling = "fps"
    with torch.no_grad():
        fps = ens(pos, nrm)
        assert not torch.allclose(fps, le, atol=1e-4)
        torch.testing.assert_close(fps, (a(pos, nrm) + b(pos, nrm)) / 2, atol=1e-5, rtol=1e-5)
    # an ensemble of an ensemble and a model: three members, flattened
    r = _invoke("ensemble", out, runs[0], "--out", tmp_path / "e3.pt")
    assert r.exit_code == 0 and "3 so2 members" in r.output, r.output
    e3 = torch.load(tmp_path / "e3.pt", weights_only=True)
    assert [m["seed"] for m in e3["members"]] == [0, 1, 0] and e3["ensemble_members"] == 3
    assert [e["member"] for e in e3["history"]] == [0] * len(hists[0]) + [1] * len(hists[1]) + [2] * len(hists[0])
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "e3.pt")[0](pos, nrm), (2 * la + lb) / 3, atol=1e-5, rtol=1e-5)


def test_every_export_and_classify_give_the_ensembles_logits(runs, tmp_path):
    from pcsym.inference.export import ScriptedClassifier
    from pcsym.inference.runtime import NumpyClassifier
    from pcsym.models.checkpoint import load_model

    out = tmp_path / "e.pt"
    assert _invoke("ensemble", *runs, "--out", out).exit_code == 0
    for fmt, suffix in (("numpy", ".npz"), ("torchscript", ".ts")):
        r = _invoke("export", out, "--format", fmt, "--out", tmp_path / f"e{suffix}")
        assert r.exit_code == 0, r.output
    ens = load_model(out)[0]
    pos, nrm = _cloud()
    with torch.no_grad():
        want = ens(pos, nrm).numpy()
    npz = NumpyClassifier(tmp_path / "e.npz")
    assert len(npz.members) == 2
    np.testing.assert_allclose(npz.logits(pos.numpy(), nrm.numpy()), want, atol=2e-4)
    np.testing.assert_allclose(ScriptedClassifier(tmp_path / "e.ts")(pos, nrm).detach().numpy(), want, atol=2e-4)
    tops = set()
    for model in (out, tmp_path / "e.npz", tmp_path / "e.ts"):
        r = _invoke("classify", MESH, "--model", model, "--json")
        assert r.exit_code == 0, r.output
        top = json.loads(r.stdout)["results"][0]["top"][0]
        tops.add((top["class"], round(top["probability"], 3)))
    assert len(tops) == 1


def test_check_equivariance_checks_every_members_layers(runs, tmp_path):
    out = tmp_path / "e.pt"
    assert _invoke("ensemble", *runs, "--out", out).exit_code == 0
    r = _invoke("check-equivariance", out, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["group"] == "so2"
    layers = next(row["layers"] for row in rep["rows"] if row["in_group"])
    assert {"m1.block1", "m2.block1", "m1.invariant", "m2.invariant"} <= set(layers)
    assert max(row["worst_rel"] for row in rep["rows"] if row["in_group"]) < 1e-6
    r = _invoke("check-equivariance", out)  # the table: one column per layer, the worst member's error
    assert r.exit_code == 0, r.output
    assert r.output.startswith("equivariance of an ensemble of 2 so2/implicit models on ")
    header = next(line for line in r.output.splitlines() if "element" in line)
    assert "block1" in header and "m1." not in header and "PASS" in r.output


def test_the_ensemble_calibrates_unknown_on_shapes_no_member_trained_on(tmp_path, sample_dataset):
    """Runs of one seed hold out the same shapes: the threshold keeps 95% of them. Runs of different seeds
    share too few held-out shapes on the small sample: refused, with the way out."""
    from pcsym.data.datasets import load_dataset
    from pcsym.data.splits import run_split
    from pcsym.data.transforms import eval_dataset
    from pcsym.inference.runtime import energy
    from pcsym.models.checkpoint import load_model, train_config_of
    from pcsym.training.unknown import logits_of

    a = _train(tmp_path / "a", sample_dataset, 3)
    b = _train(tmp_path / "b", sample_dataset, 3, "--lr", "0.01")  # same split, other weights
    out = tmp_path / "e.pt"
    r = _invoke("ensemble", a, b, "--out", out, "--data", sample_dataset)
    assert r.exit_code == 0, r.output
    assert "keeps 95% of 60 val shapes" in r.output
    ens, ckpt = load_model(out)
    run = train_config_of(ckpt)
    data = load_dataset(sample_dataset, points=256)
    idx = run_split(data, "val", run)
    scores = energy(logits_of(ens, eval_dataset(data, idx, 256, run.eval_rotate, run.seed)))
    assert abs((scores >= ckpt["unknown"]["threshold"]).mean() - 0.95) <= 1.0 / len(idx) + 1e-9
    r = _invoke("classify", MESH, "--model", out, "--json")
    res = json.loads(r.stdout)["results"][0]
    assert res["unknown_score"] == "energy" and res["threshold"] == round(ckpt["unknown"]["threshold"], 4)

    c = _train(tmp_path / "c", sample_dataset, 4)
    r = _invoke("ensemble", a, c, "--out", tmp_path / "ac.pt", "--data", sample_dataset)
    assert r.exit_code == 2
    assert r.output.startswith("error: the members held out only ") and "pass --split test" in r.output
    assert not (tmp_path / "ac.pt").exists()


def test_what_an_ensemble_refuses(runs, tmp_path, sample_dataset):
    out = tmp_path / "e.pt"
    r = _invoke("ensemble", runs[0], "--out", out)
    assert r.exit_code == 2 and r.output.strip() == "error: an ensemble needs at least two models"
    other = _train(tmp_path / "wide", sample_dataset, 0, "--k", "8")
    r = _invoke("ensemble", runs[0], other, "--out", out)
    assert r.exit_code == 2 and f"cannot ensemble {other} with {runs[0]}: their model configs differ in k" in r.output
    r = _invoke("ensemble", runs[0], tmp_path / "nope", "--out", out)
    assert r.exit_code == 2 and "checkpoint not found" in r.output
    assert not out.exists()
    out.write_text("keep me")
    r = _invoke("ensemble", *runs, "--out", out)
    assert r.exit_code == 2 and "already exists; pass --force" in r.output and out.read_text() == "keep me"
    assert _invoke("ensemble", *runs, "--out", out, "--force").exit_code == 0
    r = _invoke("evaluate", out, "--data", sample_dataset)  # no test split: the default would be val
    assert r.exit_code == 2 and "an ensemble has no --split val of its own" in r.output
    r = _invoke("evaluate", out, "--data", sample_dataset, "--split", "all", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == 300


def test_fine_tuning_an_ensemble_starts_from_its_first_member(runs, tmp_path, sample_dataset):
    """`--init so3` keeps working now that so3 is an ensemble: the trunk is its first member's."""
    out = tmp_path / "e.pt"
    assert _invoke("ensemble", *runs, "--out", out).exit_code == 0
    r = _invoke("-q", "train", "--data", sample_dataset, "--out", tmp_path / "ft", "--init", out, "--freeze-trunk",
                "--epochs", "1", "--max-steps", "2", "--points", "256", "--batch-size", "8", "--threads", "1")
    assert r.exit_code == 0, r.output
    ens = torch.load(out, weights_only=True)["state_dict"]
    ft = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert ft["model_config"]["widths"] == [8, 16] and "ensemble_members" not in ft
    trunk = [k for k in ft["state_dict"] if k.startswith("blocks.") and f"members.0.{k}" in ens]
    assert trunk and all(torch.equal(ft["state_dict"][k], ens[f"members.0.{k}"]) for k in trunk)


def test_a_model_cut_to_some_classes_keeps_their_logits_exactly(runs, tmp_path):
    """scripts/keep_classes.py's core (the 40-class so3 cut to ModelNet10's classes): one network or an ensemble."""
    from pcsym.errors import PcsymError
    from pcsym.models.checkpoint import load_model, save_checkpoint
    from pcsym.models.ensemble import combine, keep_classes

    one = load_model(runs[0])[0]
    ens = combine([one, load_model(runs[1])[0]])
    names = ["toilet", "bed", "chair"]
    own = list(one.cfg.class_names)
    pos, nrm = _cloud()
    for model in (one, ens):
        cut = keep_classes(model, names)
        assert cut.cfg.class_names == names and cut.cfg.num_classes == 3
        with torch.no_grad():
            torch.testing.assert_close(cut(pos, nrm), model(pos, nrm)[:, [own.index(n) for n in names]])
        save_checkpoint(tmp_path / "cut.pt", cut, cut.cfg)  # and it loads back as the same model
        with torch.no_grad():
            torch.testing.assert_close(load_model(tmp_path / "cut.pt")[0](pos, nrm), cut(pos, nrm))
    assert model.cfg.num_classes == 10  # the original is untouched
    with pytest.raises(PcsymError, match="does not know the classes teapot"):
        keep_classes(one, ["bed", "teapot"])
