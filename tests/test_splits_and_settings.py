"""One split definition used by training and evaluation; honest evaluation defaults; class priors;
best-checkpoint selection; and the one function that merges defaults, --resume, --config and flags."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pcsym.cli import app
from pcsym.config import ModelConfig, TrainConfig, merge_settings
from pcsym.data.datasets import PointCloudData
from pcsym.data.splits import default_split, split_indices, train_val_split
from pcsym.errors import PcsymError
from pcsym.training.evaluate import metrics_from_predictions, read_prior

runner = CliRunner()
TINY = ["--points", "256", "--widths", "16,32", "--batch-size", "8", "--threads", "1"]


def _data(splits):
    n = len(splits)
    return PointCloudData(points=np.zeros((n, 4, 3), np.float32), normals=np.zeros((n, 4, 3), np.float32),
                          labels=np.arange(n) % 3, class_names=np.array(["a", "b", "c"]), split=np.array(splits))


def test_split_indices_partition_the_train_split_and_leave_test_alone():
    d = _data(["train"] * 30 + ["test"] * 9)
    tr, va = split_indices(d, "train", 0.2, 3), split_indices(d, "val", 0.2, 3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 30 and len(va) == 6
    np.testing.assert_array_equal(va, train_val_split(d.labels[:30], 0.2, 3)[1])
    np.testing.assert_array_equal(split_indices(d, "test", 0.2, 3), np.arange(30, 39))
    assert default_split(d) == "test" and default_split(_data(["train"] * 5)) == "val"
    with pytest.raises(PcsymError, match="no test split"):
        split_indices(_data(["train"] * 5), "test", 0.2, 0)
    for name in ("val", "train"):
        with pytest.raises(PcsymError, match=f"no train split, so no '{name}' split"):
            split_indices(_data(["test"] * 9), name, 0.2, 0)
    with pytest.raises(PcsymError, match="unknown split 'dev'"):
        split_indices(d, "dev", 0.2, 0)


def test_train_fraction_keeps_a_stratified_part_of_the_training_shapes_and_the_same_validation():
    d = _data(["train"] * 120)
    full, va = split_indices(d, "train", 0.2, 3), split_indices(d, "val", 0.2, 3)
    part = split_indices(d, "train", 0.2, 3, train_fraction=0.75)
    assert set(part) < set(full) and len(part) == 72  # 32 training shapes per class, 24 of each kept
    assert np.bincount(d.labels[part]).tolist() == [24, 24, 24]
    np.testing.assert_array_equal(part, split_indices(d, "train", 0.2, 3, train_fraction=0.75))  # seeded
    assert not np.array_equal(part, split_indices(d, "train", 0.2, 4, train_fraction=0.75)[: len(part)])
    np.testing.assert_array_equal(split_indices(d, "train", 0.2, 3, train_fraction=1.0), full)
    for bad in (0.0, 1.5):
        with pytest.raises(PcsymError, match="training fraction must be in \\(0, 1\\]"):
            split_indices(d, "train", 0.2, 3, train_fraction=bad)
    assert len(np.intersect1d(part, va)) == 0


def test_train_fraction_flag_is_checked_before_any_work(tmp_path):
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"),
                            "--train-fraction", "0"])
    assert r.exit_code == 2 and "--train-fraction must be in (0, 1], got 0" in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_prior_weighted_accuracy():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])  # per class 0.75, 0.5, 1.0
    uniform = read_prior("balanced", ["a", "b", "c"])
    m = metrics_from_predictions(y_true, y_pred, ["a", "b", "c"], uniform)
    assert m["prior_weighted_accuracy"] == pytest.approx(m["mean_class_accuracy"]) == pytest.approx(0.75)
    skewed = metrics_from_predictions(y_true, y_pred, ["a", "b", "c"], np.array([0.5, 0.25, 0.25]))
    assert skewed["prior_weighted_accuracy"] == pytest.approx(0.5 * 0.75 + 0.25 * 0.5 + 0.25 * 1.0)


def test_prior_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"a": 50, "b": 100, "c": 50}))
    np.testing.assert_allclose(read_prior(tmp_path / "p.json", ["a", "b", "c"]), [0.25, 0.5, 0.25])
    (tmp_path / "p.txt").write_text("# test counts\na 1\nb,1\nc 2\n")
    np.testing.assert_allclose(read_prior(tmp_path / "p.txt", ["a", "b", "c"]), [0.25, 0.25, 0.5])
    (tmp_path / "bad.txt").write_text("a 1\nb 1\n")
    with pytest.raises(PcsymError, match="missing \\['c'\\]"):
        read_prior(tmp_path / "bad.txt", ["a", "b", "c"])
    with pytest.raises(PcsymError, match="prior file not found"):
        read_prior(tmp_path / "nope.json", ["a"])


def test_merge_settings_precedence_and_parsing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    saved_m = ModelConfig(group="m", widths=(8, 16, 24), strides=(2, 4, 4), points=512, class_names=["x", "y"])
    saved_t = TrainConfig(epochs=7, lr=0.01, scale=(0.9, 1.1), seed=3, threads=4)
    (out / "config.json").write_text(json.dumps({"model": saved_m.to_dict(), "train": saved_t.to_dict()}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.05\n")
    flags = {**ModelConfig().to_dict(), **TrainConfig().to_dict(), "out": str(out), "epochs": 9, "data": "d",
             "widths": "32,64,128", "scale": "0.8,1.2", "resume": True, "force": False, "config": cfg}
    changes = []
    m, t = merge_settings(flags, explicit={"out", "epochs"}, config_file=cfg, resume=True,
                          aliases={"positions": "use_positions"}, changes=changes)
    assert (m.group, m.widths, m.strides, m.points, m.use_positions) == ("m", (8, 16, 24), (2, 4, 4), 512, True)
    assert (t.epochs, t.lr, t.scale, t.seed) == (9, 0.05, (0.9, 1.1), 3)  # flag > file > saved run
    assert t.threads == 0  # the machine's settings are not taken from the run
    assert changes == [{"setting": "lr", "from": 0.01, "to": 0.05}]  # reported and recorded; epochs silently
    # resuming keeps the run's model: a config file (or flag) that changes it is refused, naming the flag
    cfg.write_text("positions: false\n")  # a flag's spelling works in a config file
    with pytest.raises(PcsymError, match="^--positions off differs from the run in .*/run/, whose model has "
                                         "use_positions=on; drop it to resume the run"):
        merge_settings(flags, explicit={"out"}, config_file=cfg, resume=True, aliases={"positions": "use_positions"})
    m, _ = merge_settings({**flags, "resume": False}, explicit={"out"}, config_file=cfg,
                          aliases={"positions": "use_positions"})
    assert not m.use_positions
    m, _ = merge_settings({**flags, "widths": "16,32"}, explicit={"widths"})
    assert m.widths == (16, 32) and m.strides == (2, 4)
    with pytest.raises(PcsymError, match="--widths must be comma-separated numbers, got '16,x'"):
        merge_settings({**flags, "widths": "16,x"}, explicit={"widths"})


def test_legacy_run_config_is_read():
    t = TrainConfig.from_dict({"scale_low": 0.7, "scale_high": 1.3, "epochs": 2})
    assert t.scale == (0.7, 1.3) and t.select == "oa"


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory, sample_dataset):
    out = tmp_path_factory.mktemp("run") / "m"
    r = runner.invoke(app, [str(a) for a in ("-q", "train", "--data", sample_dataset, "--out", out, "--group", "m",
                                             "--epochs", "2", "--max-steps", "2", "--seed", "3",
                                             "--val-fraction", "0.1", "--train-fraction", "0.5", *TINY)])
    assert r.exit_code == 0, r.output
    return out


def test_evaluate_val_uses_the_runs_own_split(seeded_run, sample_dataset):
    """Trained with --seed 3 --val-fraction 0.1: evaluate scores exactly the 30 shapes it held out."""
    from pcsym.data.datasets import load_dataset

    r = runner.invoke(app, ["evaluate", str(seeded_run), "--data", str(sample_dataset), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert (m["split"], m["n"], m["split_seed"], m["val_fraction"]) == ("val", 30, 3, 0.1)
    held_out = split_indices(load_dataset(sample_dataset), "val", 0.1, 3)
    assert sum(m["support"].values()) == len(held_out) == 30


def test_evaluate_train_uses_the_runs_own_training_fraction(seeded_run, sample_dataset):
    """Trained with --train-fraction 0.5 of 27 training shapes per class: --split train scores the 13 of each
    it trained on (its checkpoint records the fraction)."""
    r = runner.invoke(app, ["evaluate", str(seeded_run), "--data", str(sample_dataset), "--split", "train", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["n"] == 130 and set(m["support"].values()) == {13}
    assert torch.load(seeded_run / "best.pt", weights_only=True)["train_config"]["train_fraction"] == 0.5


def test_best_checkpoint_is_selected_on_validation_macc(seeded_run):
    hist = torch.load(seeded_run / "last.pt", weights_only=True)["history"]
    best = torch.load(seeded_run / "best.pt", weights_only=True)
    assert best["train_config"]["select"] == "macc"
    assert best["best_val_acc"] == max(h["val_macc"] for h in hist)
    assert best["epoch"] == int(np.argmax([h["val_macc"] for h in hist]))


def test_select_last_keeps_the_last_epoch(tmp_path, sample_dataset):
    out = tmp_path / "last"
    r = runner.invoke(app, [str(a) for a in ("train", "--data", sample_dataset, "--out", out, "--group", "m",
                                             "--epochs", "3", "--max-steps", "1", "--select", "last", *TINY)])
    assert r.exit_code == 0, r.output
    hist = torch.load(out / "last.pt", weights_only=True)["history"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best_val_acc"] == hist[-1]["val_macc"]
    assert f"last epoch's val mean class accuracy {hist[-1]['val_macc']:.4f}" in r.output


def test_evaluate_defaults_to_test_and_refuses_val_without_train(tmp_path, seeded_run, sample_dataset):
    """A dataset with only a test split: evaluated on all of it by default; --split val is an error."""
    with np.load(sample_dataset) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["split"] = np.full(len(arrays["split"]), "test", dtype="<U5")
    test_only = tmp_path / "test_only.npz"
    np.savez(test_only, **arrays)
    r = runner.invoke(app, ["evaluate", str(seeded_run), "--data", str(test_only), "--json", "--prior", "balanced"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert (m["split"], m["n"]) == ("test", 300)
    assert m["prior_weighted_accuracy"] == pytest.approx(m["mean_class_accuracy"])
    r = runner.invoke(app, ["evaluate", str(seeded_run), "--data", str(test_only), "--split", "val"])
    assert r.exit_code == 2
    assert "has no train split, so no 'val' split" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_batches_predicted_side_by_side_give_the_same_probabilities(seeded_run, sample_dataset):
    """predict runs batches on torch's threads, one each: the same probabilities (bit for bit) as one
    batch at a time, torch's thread count restored, and a failing batch raises."""
    import pcsym.training.evaluate as E
    from pcsym.models.checkpoint import load_model
    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import eval_dataset

    model, _ = load_model(seeded_run)
    ds = eval_dataset(load_dataset(sample_dataset), np.arange(40), model.cfg.points, "so3", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        side_by_side = E.predict(model, ds, batch_size=8, votes=2)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)  # one thread: one batch at a time
        one_by_one = E.predict(model, ds, batch_size=8, votes=2)
        assert torch.equal(side_by_side[0], one_by_one[0]) and torch.equal(side_by_side[1], one_by_one[1])
        torch.set_num_threads(2)
        import threading

        with E.batch_workers(2) as submit:  # on worker threads, torch at one intra-op thread meanwhile
            seen = [submit(lambda: (threading.current_thread().name, torch.get_num_threads())).result()
                    for _ in range(4)]
        assert all(name.startswith("pcsym-batch") and n == 1 for name, n in seen), seen
        with pytest.raises(RuntimeError, match="boom"):
            with E.batch_workers(2) as submit:
                submit(lambda: (_ for _ in ()).throw(RuntimeError("boom"))).result()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
