"""benchmarks/accuracy/neardup.py: the distance to the nearest training shape is a true symmetric Chamfer distance,
taken over training shapes of the same class only, and the script writes its quartile table."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.accuracy import neardup

ROOT = Path(__file__).resolve().parents[1]


def _chamfer(a, b):
    d = ((a[:, None] - b[None]) ** 2).sum(-1)
    return d.min(1).mean() + d.min(0).mean()


def test_nearest_training_shape_distance_is_same_class_chamfer():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(7, 40, 3)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    pts[4] = pts[0]          # an exact copy of validation shape 0, but in another class: must not count
    pts[2] = pts[1] + 0.01   # validation shape 1 has a near twin (shape 2) in its own class
    va, tr = np.array([0, 1, 3]), np.array([2, 4, 5, 6])
    got = neardup.nearest_train_distance(SimpleNamespace(points=pts, labels=labels), va, tr, points=40)
    want = [min(_chamfer(pts[v], pts[t]) for t in tr if labels[t] == labels[v]) for v in va]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got[0] > 0.1 and got[1] < 1e-3
    assert neardup.accuracy(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1])) == (0.75, 0.75)


def _neardup(out, *args):
    """The script on the shipped ModelNet10 sample, 32 points per cloud in the Chamfer distance; ``args``:
    further options, then the models."""
    return subprocess.run([sys.executable, "-m", "benchmarks.accuracy.neardup", "--data",
                           str(ROOT / "sample_data" / "modelnet10_mini"), "--points", "32", "--out", str(out),
                           *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_neardup_writes_the_quartile_table(tmp_path):
    out = tmp_path / "nd"
    proc = _neardup(out, "--votes", "2", "--threads", "1", "o2-mn10:z=o2", "o2-mn10+o2-mn10:z=o2x2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.with_suffix(".json").read_text())
    row, pair = res["rows"]
    # an ensemble of a model with itself sees the same clouds and rotations: the same figures
    assert pair["model"] == "o2x2" and {k: v for k, v in pair.items() if k != "model"} == \
        {k: v for k, v in row.items() if k != "model"}
    n_q = [sum(v[q] for v in res["class_counts_by_quarter"].values()) for q in range(4)]
    assert sum(n_q) == res["n_val"] and min(n_q) >= 1
    assert row["model"] == "o2" and row["rotate"] == "z" and 0 <= row["far_half"][0] <= 1
    # the whole split's OA is the quarters' OAs weighted by their sizes
    assert abs(sum(row[f"q{q + 1}"][0] * n_q[q] for q in range(4)) / sum(n_q) - row["all"][0]) < 1e-9
    md = out.with_suffix(".md").read_text()
    assert res["votes"] == 2 and "OA / mAcc, 2 votes." in md and f"--out {out} --votes 2 --threads 1 o2-mn10:z=o2 o2-mn10+o2-mn10:z=o2x2" in md


def test_neardup_refuses_a_model_that_reads_another_cloud_size(tmp_path):
    """The clouds are loaded once, at the first model's point count: a later model with another count would
    be scored on clouds of the wrong size, so the script stops with a one-line reason instead."""
    import torch

    from pcsym.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint("o2-mn10")  # the ModelNet10 run: the script scores runs on their own split
    ckpt["model_config"] = {**ckpt["model_config"], "points": 512}
    other = tmp_path / "o2_512.pt"
    torch.save(ckpt, other)
    proc = _neardup(tmp_path / "nd", "o2-mn10:z=o2", f"{other}:z=o2-512")
    assert proc.returncode == 1
    seed = ckpt["train_config"]["seed"]  # the run's split seed (o2-mn10 since late 2026-12-06: seed 2)
    assert proc.stderr.strip().splitlines()[-1] == (f"{other}: split seed, fraction and points per cloud "
                                                    f"({seed}, 0.2, 512) differ from the first model's ({seed}, 0.2, "
                                                    "1024): score them in separate runs")
    assert not (tmp_path / "nd.md").exists()
    proc = _neardup(tmp_path / "nd", f"o2-mn10+{other}:z=ensemble")  # the same holds inside an ensemble
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(f"{other}: split seed")
