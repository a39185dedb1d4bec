"""benchmarks/accuracy/normals.py: estimated normals against known ones."""
import json
import shutil
from pathlib import Path

import numpy as np

from benchmarks.accuracy import normals

FIX = Path(__file__).parent / "fixtures"


def _torus(n=1024, R=1.0, r=0.45, seed=0):
    u, v = np.random.default_rng(seed).uniform(0, 2 * np.pi, (2, n))
    pos = np.stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u), r * np.sin(v)], -1)
    nrm = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], -1)
    return pos.astype(np.float32), nrm.astype(np.float32)


def test_sphere_is_oriented_right_by_both():
    p = np.random.default_rng(0).normal(size=(1024, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    m = normals.measure(p.astype(np.float32), p.astype(np.float32))
    assert m["abs_cos"] > 0.99 and m["sign_centroid"] == 1.0 and m["sign_mst"] == 1.0


def test_torus_inner_side_defeats_the_centroid_not_the_tree():
    # the inner half of the ring faces the centroid: the shipped orientation flips it, the tree does not
    pos, true = _torus()
    m = normals.measure(pos, true)
    assert m["abs_cos"] > 0.99
    assert 0.55 < m["sign_centroid"] < 0.8
    assert m["sign_mst"] > 0.99
    flipped = normals.mst_orient(pos, -true)  # the tree fixes the start, whatever the input signs
    assert ((flipped * true).sum(-1) > 0).mean() > 0.99


def test_main_writes_a_table_of_real_shapes(tmp_path, capsys):
    data = shutil.copytree(FIX / "modelnet_normal_resampled", tmp_path / "nr")
    out = tmp_path / "res" / "normals"
    assert normals.main(["--data", str(data), "--points", "512", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["shapes"] == 3 and len(result["rows"]) == 3
    assert {r["class"] for r in result["rows"]} == {"airplane", "bed", "chair"}
    for key in ("abs_cos", "sign_centroid", "sign_mst"):
        assert 0.5 < result["mean"][key] <= 1.0
    assert "| **mean** |" in out.with_suffix(".md").read_text()
    assert "sign agrees" in capsys.readouterr().out
