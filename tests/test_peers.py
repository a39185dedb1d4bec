"""benchmarks/accuracy/peers.py: the DGCNN and PointNet peers are real point-cloud classifiers (permutation
invariant, trainable on pcsym's data pipeline), and a --quick run writes its table."""

import json
import sys

import torch

from benchmarks.accuracy import peers


def test_peers_are_permutation_invariant_classifiers():
    torch.manual_seed(0)
    pos = torch.randn(2, 64, 3)
    nrm = torch.nn.functional.normalize(torch.randn(2, 64, 3), dim=-1)
    perm = torch.randperm(64)
    for name in ("dgcnn", "pointnet"):
        model = peers.build_peer(name, 5).eval()
        with torch.no_grad():
            out = model(pos, nrm)
            shuffled = model(pos[:, perm], nrm[:, perm])
        assert out.shape == (2, 5)
        assert torch.allclose(out, shuffled, atol=1e-5)
        assert (out[0] - out[1]).abs().max() > 1e-4  # different clouds, different logits


def test_peers_quick_run_writes_its_table(sample_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["peers.py", "--quick", "--data", str(sample_dataset), "--minutes", "0.2",
                                      "--train-rotations", "z", "--out", str(tmp_path)])
    assert peers.main() == 0
    res = json.loads((tmp_path / "peers_quick.json").read_text())
    protos = {(r["model"], r["protocol"]) for r in res["rows"]}
    assert protos == {("dgcnn", "z/z"), ("dgcnn", "z/so3"), ("pointnet", "z/z"), ("pointnet", "z/so3")}
    for r in res["rows"]:
        assert 0.0 <= r["macc"] <= 1.0 and r["params"] > 1000
    # a later invocation (the SO(3) half, trained at another time) adds its rows and keeps the earlier ones
    monkeypatch.setattr(sys, "argv", ["peers.py", "--quick", "--data", str(sample_dataset), "--minutes", "0.2",
                                      "--train-rotations", "so3", "--models", "pointnet", "--beside", "a test",
                                      "--clock", "wall",
                                      "--out", str(tmp_path)])
    assert peers.main() == 0
    res = json.loads((tmp_path / "peers_quick.json").read_text())
    assert {(r["model"], r["protocol"]) for r in res["rows"]} == protos | {("pointnet", "so3/so3")}
    assert [r["beside"] for r in res["rows"] if r["protocol"] == "so3/so3"] == ["a test"]
    assert "a test" in (tmp_path / "peers_quick.md").read_text()


def test_pcsym_rows_count_cpu_time_where_the_run_recorded_it(tmp_path):
    """With --clock cpu a pcsym run's budget is its epochs' CPU time (cpu_seconds); runs that predate
    that column fall back to wall time, and the row says which it used."""
    import csv

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"group": "so3"}, "train": {"rotate": "so3", "eval_rotate": "so3"}}))
    epochs = [(60, 30, 0.5), (60, 30, 0.6), (60, 30, 0.7), (60, 30, 0.65)]  # wall s, cpu s, val mAcc
    with (run / "metrics.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "val_acc", "val_macc", "epoch_seconds", "cpu_seconds"])
        for i, (wall, cpu, macc) in enumerate(epochs):
            w.writerow([i + 1, macc, macc, wall, cpu])
    wall = peers.pcsym_rows([str(run)], 2.5, "wall")[0]
    cpu = peers.pcsym_rows([str(run)], 2.5, "cpu")[0]
    assert (wall["macc"], wall["train_minutes"]) == (0.6, 2.0) and "wall time" in wall["beside"]
    assert (cpu["macc"], cpu["train_minutes"]) == (0.7, 1.5) and "CPU time" in cpu["beside"]
