"""'unknown' for shapes outside the model's classes: the energy score's threshold is calibrated on validation
data, stored with the model, carried into every export, and used by classify; older detectors still run."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pcsym.cli import app
from pcsym.training.unknown import unknown_threshold

from .conftest import SAMPLE

runner = CliRunner()


def test_threshold_keeps_the_requested_share_of_in_class_shapes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=1000)
    t = unknown_threshold(probs, 0.95)
    assert (probs.max(1) >= t).mean() == pytest.approx(0.95, abs=0.002)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sample_dataset):
    out = tmp_path_factory.mktemp("run") / "m"
    r = runner.invoke(app, ["-q", "train", "--data", str(sample_dataset), "--out", str(out), "--group", "m",
                            "--epochs", "1", "--max-steps", "2", "--points", "256", "--widths", "8,16",
                            "--batch-size", "8", "--threads", "1"])
    assert r.exit_code == 0, r.output
    return out


def _validation_of(run_dir):
    """(model, checkpoint, train config, the run's validation clouds as it calibrated on them, their count)."""
    from pcsym.data.datasets import load_dataset
    from pcsym.data.splits import run_split
    from pcsym.data.transforms import eval_dataset
    from pcsym.models.checkpoint import load_model, train_config_of

    model, ckpt = load_model(run_dir / "best.pt")
    run = train_config_of(ckpt)
    data = load_dataset(run.data, points=model.cfg.points)
    val_idx = run_split(data, "val", run)
    return model, ckpt, run, eval_dataset(data, val_idx, model.cfg.points, run.eval_rotate, run.seed), len(val_idx)


def test_neighbour_similarity_is_the_kth_largest_cosine():
    from pcsym.inference.runtime import neighbour_similarity

    rng = np.random.default_rng(1)
    bank = rng.normal(size=(50, 8))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    feats = rng.normal(size=(4, 8)) * 3.0
    cos = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ bank.T
    for k in (1, 5):
        np.testing.assert_allclose(neighbour_similarity(feats, bank, k), np.sort(cos, 1)[:, -k], atol=1e-6)
    assert neighbour_similarity(bank[:3] * 7.0, bank, 1) == pytest.approx(1.0, abs=1e-6)  # a training shape itself


def test_energy_is_the_log_sum_exp_of_the_logits():
    from pcsym.inference.runtime import energy

    logits = np.random.default_rng(1).normal(size=(5, 40)) * 8.0
    np.testing.assert_allclose(energy(logits), torch.logsumexp(torch.as_tensor(logits), 1).numpy(), rtol=1e-12)
    assert energy(np.array([[1000.0, 0.0]]))[0] == pytest.approx(1000.0)  # no overflow


def test_training_stores_the_energy_detector_and_every_export_carries_it(run_dir, tmp_path):
    from pcsym.inference.runtime import energy
    from pcsym.training.unknown import logits_of

    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert 0.0 < best["unknown_threshold"] <= 1.0
    unk = best["unknown"]
    assert unk["score"] == "energy" and "bank" not in unk and unk["keep"] == 0.95
    model, _, _, val, n_val = _validation_of(run_dir)
    # the threshold keeps 95% of the run's own validation shapes
    scores = energy(logits_of(model, val))
    assert abs((scores >= unk["threshold"]).mean() - 0.95) <= 1.0 / n_val + 1e-9

    for fmt, suffix in (("numpy", ".npz"), ("torchscript", ".ts")):
        r = runner.invoke(app, ["export", str(run_dir / "best.pt"), "--format", fmt, "--out", str(tmp_path / ("m" + suffix))])
        assert r.exit_code == 0, r.output
    mesh = str(SAMPLE / "meshes" / "bed_0001.off")
    got = {}
    for model_file in (str(run_dir / "best.pt"), str(tmp_path / "m.npz"), str(tmp_path / "m.ts")):
        r = runner.invoke(app, ["classify", mesh, "--model", model_file, "--json"])
        res = got[model_file[-3:]] = json.loads(r.stdout)["results"][0]
        assert res["unknown"] == (res["score"] < res["threshold"])
        # the same score and threshold in the checkpoint and in both exports (TorchScript outputs logits only)
        assert res["unknown_score"] == "energy" and res["threshold"] == round(unk["threshold"], 4)
    assert got[".pt"]["score"] == pytest.approx(got["npz"]["score"], abs=2e-4)
    assert got[".pt"]["score"] == pytest.approx(got[".ts"]["score"], abs=2e-4)
    r = runner.invoke(app, ["classify", mesh, "--model", str(run_dir / "best.pt"), "--json", "--no-unknown"])
    assert "unknown" not in json.loads(r.stdout)["results"][0]


def test_older_detectors_still_run(run_dir, tmp_path):
    """A checkpoint with the neighbour-similarity detector (models before 2026-12-06) is scored with it, in
    the checkpoint and its numpy export; one without any detector falls back to max probability."""
    from pcsym.data.datasets import load_dataset
    from pcsym.data.splits import run_split
    from pcsym.models.checkpoint import load_model, train_config_of
    from pcsym.training.unknown import calibrate

    model, ckpt = load_model(run_dir / "best.pt")
    run = train_config_of(ckpt)
    data = load_dataset(run.data, points=model.cfg.points)
    det = calibrate(model, data, run_split(data, "train", run), run_split(data, "val", run), run.eval_rotate, run.seed,
                    score="neighbour-similarity")
    raw = torch.load(run_dir / "best.pt", weights_only=True)
    raw["unknown"] = det
    torch.save(raw, tmp_path / "neighbour.pt")
    r = runner.invoke(app, ["export", str(tmp_path / "neighbour.pt"), "--format", "numpy", "--out", str(tmp_path / "n.npz")])
    assert r.exit_code == 0, r.output
    mesh = str(SAMPLE / "meshes" / "bed_0001.off")
    for model_file in (tmp_path / "neighbour.pt", tmp_path / "n.npz"):
        res = json.loads(runner.invoke(app, ["classify", mesh, "--model", str(model_file), "--json"]).stdout)["results"][0]
        assert res["unknown_score"] == "neighbour-similarity" and res["threshold"] == round(det["threshold"], 4)
    del raw["unknown"]  # as written before either detector existed
    torch.save(raw, tmp_path / "old.pt")
    r = runner.invoke(app, ["classify", mesh, "--model", str(tmp_path / "old.pt"), "--json"])
    res = json.loads(r.stdout)["results"][0]
    assert res["unknown_score"] == "max-probability" and res["threshold"] == round(raw["unknown_threshold"], 4)


def test_evaluate_reports_the_models_own_detector_on_the_shapes(run_dir, tmp_path):
    """evaluate gives the detector classify uses (score, threshold) and the share of the evaluated shapes it
    flags: on the validation shapes its threshold was calibrated on, the 5% it was set to give up."""
    from pcsym.inference.runtime import energy
    from pcsym.training.unknown import logits_of

    model, ckpt, run, val, n_val = _validation_of(run_dir)
    scores = energy(logits_of(model, val))
    threshold = ckpt["unknown"]["threshold"]

    def evaluate(model_file, *flags):
        r = runner.invoke(app, ["evaluate", str(model_file), "--data", str(run.data), "--split", "val",
                                "--rotate", run.eval_rotate, *flags])
        assert r.exit_code == 0, r.output
        return r

    unk = json.loads(evaluate(run_dir / "best.pt", "--json").stdout)["unknown"]
    assert unk["score"] == "energy" and unk["threshold"] == round(threshold, 4)
    assert abs(unk["flagged"] - (scores < threshold).mean()) <= 1.0 / n_val + 1e-9
    assert abs(unk["flagged"] - 0.05) <= 1.0 / n_val + 1e-9
    assert unk["mean_score"] == pytest.approx(scores.mean(), abs=1e-3)
    assert f'"unknown" {unk["flagged"]:.1%} of these shapes' in evaluate(run_dir / "best.pt").stdout

    raw = torch.load(run_dir / "best.pt", weights_only=True)
    del raw["unknown"]  # before the energy detector: classify falls back to the max probability
    torch.save(raw, tmp_path / "old.pt")
    unk = json.loads(evaluate(tmp_path / "old.pt", "--json").stdout)["unknown"]
    assert unk["score"] == "max-probability" and unk["threshold"] == round(raw["unknown_threshold"], 4)
    assert abs(unk["flagged"] - 0.05) <= 1.0 / n_val + 1e-9  # calibrated on the same shapes in training
    del raw["unknown_threshold"]  # no detector at all
    torch.save(raw, tmp_path / "none.pt")
    assert json.loads(evaluate(tmp_path / "none.pt", "--json").stdout)["unknown"] is None
    assert '"unknown"' not in evaluate(tmp_path / "none.pt").stdout


def test_evaluate_scores_unknown_from_all_the_models_classes(run_dir):
    """Scored on some of its classes (a dataset holding only those), a model's answers are the likeliest of
    them, but classify would read its energy from all its logits: evaluate's "unknown" reads the same."""
    from pcsym.inference.runtime import energy
    from pcsym.training.evaluate import predict, restrict_to_classes
    from pcsym.training.unknown import logits_of

    model, _, _, ds, _ = _validation_of(run_dir)
    full = logits_of(model, ds)
    keep = list(model.cfg.class_names[1::2])
    view, known = restrict_to_classes(model, keep)
    assert known == len(model.cfg.class_names)
    probs, _, energies = predict(view, ds, energies=True)
    np.testing.assert_allclose(energies, energy(full), atol=1e-4)
    cols = [model.cfg.class_names.index(n) for n in keep]
    np.testing.assert_allclose(probs.numpy(), torch.softmax(torch.as_tensor(full[:, cols]), 1).numpy(), atol=1e-5)
    assert np.abs(energy(full[:, cols]) - energies).max() > 1e-3  # the subset's own would differ


def _classify_teapot_and_bed(model: str = "so3"):
    r = runner.invoke(app, ["classify", str(SAMPLE / "meshes" / "teapot.stl"), str(SAMPLE / "meshes" / "bed_0001.off"),
                            "--json", "--model", model])
    return json.loads(r.stdout)["results"]


def test_shipped_models_know_modelnet40_and_keep_the_modelnet10_ones_by_name():
    from pcsym.inference.predict import load_classifier

    for name, n in (("so3", 40), ("o2", 40), ("so3-mn10", 10), ("o2-mn10", 10)):
        cfg = load_classifier(name).cfg
        assert len(cfg.class_names) == n and "bed" in cfg.class_names, name
    assert {"vase", "cup", "person"} <= set(load_classifier("so3").cfg.class_names)


def test_the_modelnet10_model_tells_a_teapot_from_its_classes():
    """so3-mn10 (the 40-class so3 ensemble cut to ModelNet10's classes) has small logits for every one of its 10
    classes on this teapot, which the 40-class so3 calls a vase: its energy score falls far under the threshold
    calibrated on ModelNet10 test-dev, while a bed's stays far above it."""
    teapot, bed = _classify_teapot_and_bed("so3-mn10")
    for res in (teapot, bed):
        assert res["unknown_score"] == "energy" and res["threshold"] == pytest.approx(3.979, abs=1e-3)
    assert teapot["unknown"] is True and teapot["score"] < teapot["threshold"] - 1.0
    assert bed["unknown"] is False and bed["score"] > bed["threshold"] + 3.0 and bed["top"][0]["class"] == "bed"


def test_a_bed_stays_a_bed():
    """The shipped so3 was trained on PCA normals; with the mesh's face normals it gave this bed 0.25
    (unknown). classify now estimates normals as in training (0.76 then; 0.98 with the so3 shipped 2026-12-04,
    and with the ModelNet40 so3 of 2026-12-06)."""
    for model in ("so3", "so3-mn10"):
        bed = _classify_teapot_and_bed(model)[1]
        assert bed["unknown"] is False and bed["top"][0]["class"] == "bed"


def test_models_trained_on_estimated_normals_are_fed_estimated_normals(sample_mesh):
    from pcsym.data.meshes import load_cloud
    from pcsym.inference.predict import load_classifier, read_input
    from pcsym.geometry.numpy_graph import estimate_normals

    assert load_classifier("so3").cfg.estimated_normals == load_classifier("o2").cfg.estimated_normals == 1024
    big, faces = load_cloud(sample_mesh, n_points=1024, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(read_input(sample_mesh, 1024, seed=3)[1], faces)  # a "given" model: faces
    pts, nrm = read_input(sample_mesh, 256, seed=3, estimated_normals=1024)
    np.testing.assert_array_equal(pts, big[:256])  # the first 256 of the 1024 samples the normals came from
    np.testing.assert_allclose(nrm, estimate_normals(big)[:256], atol=1e-6)
    assert not np.allclose(nrm, faces[:256], atol=1e-2)  # not the face normals


def test_unknown_is_printed_with_its_closest_class(capsys):
    from pcsym.cli.classify import _print_rows, _print_table

    row = {"file": "teapot.stl", "ok": True, "unknown": True, "score": 0.31, "threshold": 0.38,
           "top": [{"class": "toilet", "probability": 0.31}, {"class": "chair", "probability": 0.2}]}
    _print_table(row)
    _print_rows([row, {**row, "file": "bed.off", "unknown": False}])
    out = capsys.readouterr().out
    assert out.count("unknown (closest: toilet 0.31") == 2 and "toilet" in out.split("bed.off")[1]


def test_unknown_report_measures_the_stored_detector_as_classify_runs_it(run_dir, tmp_path):
    """benchmarks.accuracy.unknown_report: the in-class share kept per evaluation seed, and for each mesh the
    answer `pcsym classify MESH --model MODEL --seed S` gives."""
    from benchmarks.accuracy import unknown_report

    out = tmp_path / "unk_w0.1.md"  # PREFIX.md names the same files as PREFIX
    model = str(run_dir / "best.pt")
    assert unknown_report.main([model, "--data", str(SAMPLE / "modelnet10_mini"), "--meshes", str(SAMPLE / "meshes"),
                                "--eval-seeds", "0,1", "--out", str(out)]) == 0
    rep = json.loads((tmp_path / "unk_w0.1.json").read_text())
    assert (tmp_path / "unk_w0.1.md").exists()
    row = rep["models"][0]
    assert row["score"] == "energy" and row["split"] == "all" and len(row["kept_per_seed"]) == 2
    assert all(0.0 <= k <= 1.0 for k in row["kept_per_seed"])
    for mesh, answers in row["meshes"].items():
        for a in answers:
            r = runner.invoke(app, ["classify", str(SAMPLE / "meshes" / mesh), "--model", model, "--json",
                                    "--seed", str(a["seed"])])
            res = json.loads(r.stdout)["results"][0]
            assert (res["unknown"], res["top"][0]["class"]) == (a["unknown"], a["top"])
    assert row["flagged_count"] == sum(bool(v[0]["unknown"]) for v in row["meshes"].values())
    assert f"| {model} | energy |" in out.with_suffix(".md").read_text()


def test_chimeras_benchmark_scores_made_up_outliers_against_the_stored_threshold(run_dir, tmp_path):
    """benchmarks.accuracy.chimeras: the share of intact shapes kept and of chimeras flagged, at the
    threshold stored in the model, as the energies the model gives them say."""
    import torch

    from benchmarks.accuracy import chimeras as bench
    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import eval_dataset
    from pcsym.inference.runtime import energy
    from pcsym.models.checkpoint import load_model, train_config_of
    from pcsym.training.loader import make_loader

    model = str(run_dir / "best.pt")
    assert bench.main([model, "--data", str(SAMPLE / "modelnet10_mini"), "--seed", "1", "--out",
                       str(tmp_path / "ch_w0.1")]) == 0
    (row,) = json.loads((tmp_path / "ch_w0.1.json").read_text())["rows"]
    net, ckpt = load_model(model)
    data = load_dataset(SAMPLE / "modelnet10_mini", points=net.cfg.points)
    assert row["threshold"] == ckpt["unknown"]["threshold"] and row["shapes"] == len(data.labels)
    assert 0 < row["chimeras"] <= row["shapes"]
    ds = eval_dataset(data, np.arange(len(data.labels)), net.cfg.points, train_config_of(ckpt).eval_rotate,
                      train_config_of(ckpt).seed, eval_seed=1)
    with torch.no_grad():
        e = np.concatenate([energy(net(p, n).numpy()) for p, n, _ in make_loader(ds, 16, True, 1, 0, 0)])
    assert row["kept"] == pytest.approx(float((e >= row["threshold"]).mean()))
    assert "chimeras flagged" in (tmp_path / "ch_w0.1.md").read_text()
