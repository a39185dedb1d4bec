"""benchmarks/accuracy/peers.py: the DGCNN and PointNet peers are real point-cloud classifiers (permutation
invariant, trainable on pcsym's data pipeline), and a --quick run writes its table."""

import json
import sys
from pathlib import Path

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


def _test_split_copy(tmp_path):
    """The mini dataset's shapes as a dataset with a test split (like a test-dev folder)."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "sample_data" / "modelnet10_mini"
    dst = tmp_path / "mini_testdev"
    dst.mkdir()
    shutil.copy(src / "ply_data_train0.h5", dst / "ply_data_test0.h5")
    shutil.copy(src / "shape_names.txt", dst / "shape_names.txt")
    (dst / "test_files.txt").write_text("data/testdev/ply_data_test0.h5\n")
    return dst


def test_peers_on_test_data_beside_a_shipped_model_and_read_back(sample_dataset, tmp_path, monkeypatch):
    """--test-data scores the peers and the --pcsym models on its test split (mean ± std over the evaluation
    seeds, labelled test-dev for a *testdev* folder); --runs-dir keeps finished trainings, read back by the same
    command with the same figures."""
    testdev, runs = _test_split_copy(tmp_path), tmp_path / "runs"
    argv = ["peers.py", "--quick", "--data", str(sample_dataset), "--test-data", str(testdev), "--minutes", "z=0.2",
            "--train-rotations", "z", "--models", "pointnet", "--runs-dir", str(runs), "--stem", "peers_t",
            "--pcsym", "so3-mn10", "--eval-seeds", "0,1", "--select", "last", "--val-fraction", "0.1",
            "--threads", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert peers.main() == 0
    res = json.loads((tmp_path / "peers_t_quick.json").read_text())
    assert res["split_label"] == "test-dev" and res["budgets"] == {"z": 0.2}
    assert {(r["model"], r["protocol"]) for r in res["rows"]} == {
        ("pointnet", "z/z"), ("pointnet", "z/so3"), ("pcsym so3 (so3-mn10)", "so3/so3")}
    test = res["results"][0]["test"]
    assert set(test) == {"z/z", "z/so3"} and len(test["z/z"]["oa_seeds"]) == 2
    shipped = next(r for r in res["pcsym_test_rows"])
    assert 0.5 < shipped["oa"] <= 1.0 and shipped["epochs"] > 0  # a trained model on shapes of its own classes
    md = (tmp_path / "peers_t_quick.md").read_text()
    assert "test-dev OA" in md and "±" in md and "Test-dev figures" in md
    assert (runs / "pointnet-z-s0" / "result.pt").exists() and not (runs / "pointnet-z-s0" / "state.pt").exists()

    monkeypatch.setattr(sys, "argv", [a for a in argv if a not in ("--pcsym", "so3-mn10")])  # the same run again
    assert peers.main() == 0
    again = json.loads((tmp_path / "peers_t_quick.json").read_text())
    assert again["results"][0]["resumed"] is True and again["results"][0]["test"] == test
    assert again["pcsym_test_rows"] == res["pcsym_test_rows"]  # kept from the earlier invocation


def test_an_interrupted_peer_training_goes_on_from_its_last_epoch(sample_dataset, tmp_path):
    from types import SimpleNamespace

    from pcsym.data.datasets import load_dataset

    data = load_dataset(str(sample_dataset), points=1024)
    args = SimpleNamespace(minutes=10.0, clock="cpu", data="mini", seed=0, val_fraction=0.1, select="best",
                           max_epochs=2, quick=False, test=None)
    run = tmp_path / "pointnet-z-s0"

    def stop_at_epoch_2(line):
        if "epoch 2:" in line:
            raise KeyboardInterrupt

    with __import__("pytest").raises(KeyboardInterrupt):
        peers.train_peer("pointnet", data, args, "z", stop_at_epoch_2, run_dir=run)
    assert (run / "state.pt").exists() and not (run / "result.pt").exists()
    lines = []
    r = peers.train_peer("pointnet", data, args, "z", lines.append, run_dir=run)
    assert r["resumed"] and r["epochs"] == 2 and [h["epoch"] for h in r["history"]] == [1, 2]
    assert any("resumed" in line and "epoch 1" in line for line in lines)
    assert (run / "result.pt").exists() and not (run / "state.pt").exists()
    # another budget is another training: the folder's state is not reused
    lines.clear()
    args.minutes = 5.0
    r = peers.train_peer("pointnet", data, args, "z", lines.append, run_dir=run)
    assert not r["resumed"] and any("another configuration" in line for line in lines)


def test_budget_minutes_of_a_shipped_model_is_its_own_training_time():
    from pcsym.models.checkpoint import load_model

    _, ckpt = load_model("so3-mn10")
    cpu = sum(h["cpu_seconds"] for h in ckpt["history"]) / 60
    wall = sum(h["epoch_seconds"] for h in ckpt["history"]) / 60
    assert peers.budget_minutes("z=so3-mn10,so3=12.5", "cpu") == {"z": round(cpu, 2), "so3": 12.5}
    assert peers.budget_minutes("z=so3-mn10", "wall") == {"z": round(wall, 2)}
    assert peers.budget_minutes("30", "cpu") == {"*": 30.0}
    for bad in ("x=3", "z3"):
        with __import__("pytest").raises(ValueError):
            peers.budget_minutes(bad, "cpu")


def test_dense_edge_conv_is_torch_geometrics_edgeconv():
    """peers.edge_conv (dense, first linear layer per point) computes torch_geometric's EdgeConv(h, aggr="max")
    on the same kNN graph, in training and evaluation mode, with and without the per-point shortcut."""
    from torch_geometric.nn import EdgeConv

    from pcsym.geometry.graph import knn

    torch.manual_seed(0)
    b, n, k = 2, 64, 10
    pos = torch.randn(b, n, 3)
    x = torch.cat([pos, torch.randn(b, n, 3)], -1)
    idx = knn(pos, pos, k)
    edges = torch.stack([(idx + (torch.arange(b) * n)[:, None, None]).reshape(-1),  # messages j -> i
                         torch.arange(b * n).repeat_interleave(k)])
    h = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.BatchNorm1d(32), torch.nn.LeakyReLU(0.2))
    conv = EdgeConv(torch.nn.Identity(), aggr="max")
    conv.nn = h  # (EdgeConv(h) would re-initialise h)

    class Wrapped(torch.nn.Module):  # the same h, hidden from the shortcut
        def forward(self, e):
            return h(e)

    for mode in ("train", "eval"):
        getattr(h, mode)()
        want = conv(x.reshape(b * n, -1), edges).view(b, n, -1)
        assert torch.allclose(peers.edge_conv(x, idx, h), want, atol=1e-5)
        assert torch.allclose(peers.edge_conv(x, idx, Wrapped()), want, atol=1e-6)


def test_dgcnn_graph_is_dynamic():
    """After its first layer the DGCNN's neighbours are nearest in feature space, not in xyz."""
    torch.manual_seed(0)
    x = torch.randn(1, 50, 8)
    idx = peers.feature_knn(x, 5)
    d = torch.cdist(x[0], x[0])
    assert (idx[0, :, 0] == torch.arange(50)).all()  # itself first
    assert torch.equal(idx[0].sort(-1).values, d.topk(5, largest=False).indices.sort(-1).values)
    pos = torch.randn(2, 64, 3)
    nrm = torch.nn.functional.normalize(torch.randn(2, 64, 3), dim=-1)
    dyn, static = peers.build_peer("dgcnn", 5), peers.build_peer("dgcnn", 5, dynamic=False)
    static.load_state_dict(dyn.state_dict())
    with torch.no_grad():
        assert not torch.allclose(dyn.eval()(pos, nrm), static.eval()(pos, nrm))
