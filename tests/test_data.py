"""Tests for pcsym.data.datasets: layout detection, the three readers, the cache, splits, augmentation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pcsym.data import datasets as D
from pcsym.data.datasets import PointCloudData, detect_format, load_dataset, prepare
from pcsym.data.splits import train_val_split
from pcsym.errors import PcsymError
from pcsym.data.meshes import Y_UP_TO_Z_UP, normalize, read_geometry, read_point_table
from pcsym.data.transforms import PointCloudDataset, rotation_matrix

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    """Never write into ~/.cache during tests."""
    monkeypatch.setenv("PCSYM_CACHE_DIR", str(tmp_path / "user_cache"))


@pytest.fixture
def h5_dir(tmp_path):
    return Path(shutil.copytree(FIX / "modelnet_h5", tmp_path / "h5"))


@pytest.fixture
def nr_dir(tmp_path):
    return Path(shutil.copytree(FIX / "modelnet_normal_resampled", tmp_path / "nr"))


@pytest.fixture
def off_dir(tmp_path):
    return Path(shutil.copytree(FIX / "ModelNet40_off", tmp_path / "off"))


def unit(x, atol=1e-5):
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, atol=atol)


# ------------------------------------------------------------------------------------------
# detection
# ------------------------------------------------------------------------------------------


def test_detect_each_layout(h5_dir, nr_dir, off_dir):
    assert detect_format(h5_dir) == "h5"
    assert detect_format(nr_dir) == "normal_resampled"
    assert detect_format(off_dir) == "off"  # folder holding ModelNet40/
    assert detect_format(off_dir / "ModelNet40") == "off"  # the ModelNet40 folder itself


def test_detect_errors(tmp_path, h5_dir):
    with pytest.raises(PcsymError, match="no known dataset layout.*did you mean h5"):
        detect_format(tmp_path)
    with pytest.raises(PcsymError, match="no such dataset directory"):
        detect_format(tmp_path / "nope")
    with pytest.raises(PcsymError, match="not a directory"):
        detect_format(h5_dir / "shape_names.txt")


# ------------------------------------------------------------------------------------------
# readers against the source files
# ------------------------------------------------------------------------------------------


def test_h5_reader(h5_dir):
    d = load_dataset(h5_dir, points=128)
    with h5py.File(h5_dir / "ply_data_train0.h5") as f:
        tr_pts, tr_lab = f["data"][:], f["label"][:, 0]
    with h5py.File(h5_dir / "ply_data_test0.h5") as f:
        te_pts, te_lab, te_nrm = f["data"][:], f["label"][:, 0], f["normal"][:]
    assert d.source_format == "h5" and d.up_axis == "z"
    assert list(d.class_names) == (h5_dir / "shape_names.txt").read_text().split()
    np.testing.assert_array_equal(d.labels, np.concatenate([tr_lab, te_lab]))
    assert d.labels.dtype == np.int64
    assert list(d.split) == ["train"] * 30 + ["test"] * 10
    # all 256 points kept in source order (fewer than 2048 available), normalized
    assert d.points.shape == d.normals.shape == (40, 256, 3) and d.points.dtype == np.float32
    np.testing.assert_allclose(d.points, normalize(np.concatenate([tr_pts, te_pts])), atol=1e-6)
    np.testing.assert_allclose(d.normals[30:], te_nrm, atol=1e-6)  # given normals used
    unit(d.normals)  # estimated for the train file (which has none): unit and outward
    outward = np.einsum("spi,spi->sp", d.normals[:30], d.points[:30] - d.points[:30].mean(1, keepdims=True))
    assert (outward >= 0).all()
    assert d.normals_estimated and d.estimated_normals == 256  # most shapes (30 of 40): what a model records


def test_h5_entries_resolved_by_file_name(h5_dir):
    assert (h5_dir / "train_files.txt").read_text().startswith("data/modelnet40_ply_hdf5_2048/")
    (h5_dir / "ply_data_test0.h5").unlink()
    with pytest.raises(PcsymError, match="lists 'data/modelnet40_ply_hdf5_2048/ply_data_test0.h5'"):
        load_dataset(h5_dir)


def test_normal_resampled_reader(nr_dir):
    d = load_dataset(nr_dir, points=128)
    names = (nr_dir / "modelnet40_shape_names.txt").read_text().split()
    assert list(d.class_names) == names and len(names) == 40
    ids = ["bed_0026", "chair_0391", "airplane_0703"]
    np.testing.assert_array_equal(d.labels, [names.index(i.rsplit("_", 1)[0]) for i in ids])
    assert list(d.split) == ["train", "train", "test"]
    assert d.points.shape == (3, 800, 3)  # every row of the 800-row files kept, in file order
    for k, shape_id in enumerate(ids):
        table = read_point_table(nr_dir / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt")
        np.testing.assert_allclose(d.points[k], normalize(table[:, :3]), atol=1e-6)
        np.testing.assert_allclose(d.normals[k], table[:, 3:] / np.linalg.norm(table[:, 3:], axis=1, keepdims=True), atol=1e-6)


def test_normal_resampled_subsamples_large_files(nr_dir):
    d = load_dataset(nr_dir, points=128)
    # make one shape "bigger than 2048 points" and check a seeded random subset is kept
    for shape_id in ("bed_0026", "chair_0391", "airplane_0703"):
        f = nr_dir / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt"
        f.write_text(f.read_text() * 3)  # 2400 rows (duplicates)
    out = prepare(nr_dir, out=nr_dir.parent / "big.npz", points=128)
    big = load_dataset(out)
    assert big.points.shape == (3, 2048, 3)
    # the kept rows are rows of the file (normals are untouched by normalization)
    src = {tuple(np.round(n, 4)) for n in d.normals[0]}
    assert all(tuple(np.round(n, 4)) in src for n in big.normals[0])
    np.testing.assert_allclose(np.linalg.norm(big.points, axis=-1).max(1), 1.0, atol=1e-6)


def test_off_reader_samples_surfaces(off_dir):
    d = load_dataset(off_dir, points=256)
    assert list(d.class_names) == ["bathtub", "bed"]
    np.testing.assert_array_equal(d.labels, [0, 1])
    assert list(d.split) == ["train", "train"]
    assert d.points.shape == (2, 2048, 3)
    unit(d.normals)
    np.testing.assert_allclose(np.linalg.norm(d.points, axis=-1).max(1), 1.0, atol=1e-5)
    # sampled points lie inside the (normalized) bounding box of the mesh
    g = read_geometry(off_dir / "ModelNet40/bathtub/train/bathtub_0002.off")
    pts = np.asarray(sample_surface_reference(g), np.float64)
    lo, hi = pts.min(0) - 0.05, pts.max(0) + 0.05
    assert ((d.points[0] >= lo) & (d.points[0] <= hi)).all()
    # seeded: the same seed gives identical arrays, another seed does not
    a = load_dataset(prepare(off_dir, out=off_dir / "a.npz", seed=1))
    b = load_dataset(prepare(off_dir, out=off_dir / "b.npz", seed=1))
    c = load_dataset(prepare(off_dir, out=off_dir / "c.npz", seed=2))
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(a.points, c.points)


def sample_surface_reference(g):
    """Normalized mesh vertices (the bbox of the normalized surface samples is within theirs)."""
    from pcsym.data.meshes import sample_surface

    pts, _ = sample_surface(g.vertices, g.faces, 20000, np.random.default_rng(0))
    centred = pts - pts.mean(0)
    return centred / np.linalg.norm(centred, axis=1).max()


def test_off_test_split_and_models_root(off_dir):
    bed = off_dir / "ModelNet40/bed"
    (bed / "test").mkdir()
    shutil.move(bed / "train/bed_0001.off", bed / "test/bed_0001.off")
    d = load_dataset(off_dir / "ModelNet40", points=64)
    assert list(d.split) == ["train", "test"]


def test_up_axis_y(nr_dir):
    z = load_dataset(nr_dir, up_axis="z")
    y = load_dataset(nr_dir, up_axis="y")
    assert y.up_axis == "y" and np.linalg.det(Y_UP_TO_Z_UP) == pytest.approx(1.0)
    np.testing.assert_allclose(y.points, np.stack([z.points[..., 0], -z.points[..., 2], z.points[..., 1]], -1), atol=1e-6)
    np.testing.assert_allclose(y.normals, z.normals @ Y_UP_TO_Z_UP.T, atol=1e-6)


# ------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------


def test_cache_round_trip_and_reuse(nr_dir, monkeypatch):
    path = prepare(nr_dir, points=128)
    assert path == nr_dir / ".pcsym_cache_normal_resampled_128_z.npz"
    with np.load(path, allow_pickle=False) as z:
        assert z["points"].dtype == np.float32 and z["labels"].dtype == np.int64
        assert str(z["source_format"]) == "normal_resampled" and int(z["points_per_shape"]) == 800
        raw = {k: z[k] for k in ("points", "normals", "labels", "class_names", "split")}
    d = load_dataset(path)
    for k, v in raw.items():
        np.testing.assert_array_equal(getattr(d, k), v)
    assert not d.normals_estimated and d.estimated_normals == 0  # the files' own normals

    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("source re-read")

    monkeypatch.setitem(D._SOURCES, "normal_resampled", boom)
    monkeypatch.setattr(D, "read_point_table", boom)
    again = load_dataset(nr_dir, points=128)  # folder -> finds the cache, never reads the source
    np.testing.assert_array_equal(again.points, raw["points"])
    assert again.path == path and path.stat().st_mtime_ns == mtime


def test_cache_goes_to_user_dir_for_read_only_source(nr_dir, tmp_path):
    os.chmod(nr_dir, 0o555)
    try:
        d = load_dataset(nr_dir, points=64)
    finally:
        os.chmod(nr_dir, 0o755)
    assert not list(nr_dir.glob(".pcsym_cache*"))
    assert d.path.parent == tmp_path / "user_cache" and d.path.name.endswith("_normal_resampled_64_z.npz")


def test_corrupt_caches(nr_dir, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PcsymError, match="corrupt dataset cache") as exc:
        load_dataset(bad)
    assert str(bad) in str(exc.value)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(PcsymError, match="not a pcsym dataset cache"):
        load_dataset(other)
    # a corrupt automatic cache inside a dataset folder is rebuilt
    auto = nr_dir / ".pcsym_cache_normal_resampled_1024_z.npz"
    auto.write_bytes(b"garbage")
    assert load_dataset(nr_dir).points.shape == (3, 800, 3)


def test_load_dataset_errors(tmp_path, nr_dir):
    with pytest.raises(PcsymError, match="no such dataset"):
        load_dataset(tmp_path / "missing")
    txt = tmp_path / "x.txt"
    txt.write_text("1")
    with pytest.raises(PcsymError, match="not a dataset"):
        load_dataset(txt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PcsymError, match="no known dataset layout"):
        load_dataset(tmp_path / "empty")
    cache = prepare(nr_dir, points=64, up_axis="y")
    assert load_dataset(cache).up_axis == "y"
    with pytest.raises(PcsymError, match="prepared with --up-axis y"):
        load_dataset(cache, up_axis="z")
    with pytest.raises(PcsymError, match="unknown up axis"):
        load_dataset(nr_dir, up_axis="x")


# ------------------------------------------------------------------------------------------
# split, rotations, dataset
# ------------------------------------------------------------------------------------------


def test_train_val_split_stratified():
    labels = np.repeat(np.arange(4), [100, 50, 10, 1])
    tr, va = train_val_split(labels, 0.2, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert [int((labels[va] == c).sum()) for c in range(4)] == [20, 10, 2, 0]
    tr2, va2 = train_val_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, train_val_split(labels, 0.2, seed=4)[1])
    with pytest.raises(PcsymError):
        train_val_split(labels, 1.0)


@pytest.mark.parametrize("kind", ["z", "so3"])
def test_rotation_matrix(kind):
    rng = np.random.default_rng(0)
    rs = np.stack([rotation_matrix(kind, rng) for _ in range(2000)])
    assert rs.dtype == np.float32
    np.testing.assert_allclose(rs @ rs.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rs.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rs), 1.0, atol=1e-5)
    if kind == "z":
        np.testing.assert_allclose(rs[:, 2], np.broadcast_to([0, 0, 1], (2000, 3)), atol=1e-6)
        np.testing.assert_allclose(rs[:, :2, :2].mean(0), 0, atol=0.05)
    else:
        np.testing.assert_allclose(rs.mean(0), 0, atol=0.05)  # Haar measure has zero mean
    np.testing.assert_array_equal(rotation_matrix("none", rng), np.eye(3))


def small_data(n_shapes=6, n_points=300, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n_shapes, n_points, 3)).astype(np.float32)
    nrm = rng.normal(size=(n_shapes, n_points, 3)).astype(np.float32)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    return PointCloudData(pts, nrm, np.arange(n_shapes) % 3, np.array(["a", "b", "c"]), np.array(["train"] * n_shapes))


@pytest.mark.parametrize("kind", ["z", "so3"])
def test_dataset_rotation_preserves_norms_and_rotates_normals(kind):
    data = small_data()
    plain = PointCloudDataset(data, points=200, resample=False)
    rot = PointCloudDataset(data, points=200, resample=False, rotate=kind, seed=5)
    for i in range(3):
        p0, n0, l0 = plain[i]
        p1, n1, l1 = rot[i]
        assert l0 == l1 == int(data.labels[i]) and p1.dtype == torch.float32 and p1.shape == (200, 3)
        np.testing.assert_allclose(p1.norm(dim=1), p0.norm(dim=1), atol=1e-5)
        r = np.linalg.lstsq(p0.numpy(), p1.numpy(), rcond=None)[0].T  # p1 = p0 @ R.T
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(n1.numpy(), n0.numpy() @ r.T, atol=1e-4)
        if kind == "z":
            np.testing.assert_allclose(p1[:, 2], p0[:, 2], atol=1e-6)


def test_dataset_subsets_seeding_and_epochs():
    data = small_data()
    fixed = PointCloudDataset(data, points=100, resample=False)
    np.testing.assert_array_equal(fixed[0][0].numpy(), data.points[0, :100])
    ds = PointCloudDataset(data, indices=[4, 1], points=100, resample=True, seed=1)
    assert len(ds) == 2 and ds[0][2] == int(data.labels[4])
    a = ds[0][0]
    np.testing.assert_array_equal(a, PointCloudDataset(data, indices=[4, 1], points=100, seed=1)[0][0])
    rows = {tuple(r) for r in data.points[4]}
    assert all(tuple(r) in rows for r in a.numpy()) and len({tuple(r) for r in a.numpy()}) == 100
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], a)
    padded = PointCloudDataset(data, points=400)[0][0]  # more than stored: padded with repeats
    assert padded.shape == (400, 3)
    np.testing.assert_array_equal(padded[:300].numpy(), data.points[0])


def test_dataset_jitter_scale_dropout():
    data = small_data()
    base = PointCloudDataset(data, points=300, resample=False)[0][0]
    jit = PointCloudDataset(data, points=300, resample=False, jitter=0.01, jitter_clip=0.02)[0][0]
    assert 0 < (jit - base).abs().max() <= 0.02 + 1e-6
    sc = PointCloudDataset(data, points=300, resample=False, scale=(2.0, 3.0))[0][0]
    ratio = sc.norm(dim=1) / base.norm(dim=1)
    assert 2.0 <= ratio.min() and torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-4) and ratio[0] <= 3.0
    drops = [PointCloudDataset(data, points=300, resample=False, point_dropout=0.9, seed=s)[0] for s in range(5)]
    for p, n, _ in drops:
        dropped = (p == p[0]).all(1)
        assert torch.equal(n[dropped], n[0].expand(int(dropped.sum()), 3))
    assert max(int((p == p[0]).all(1).sum()) for p, _, _ in drops) > 10


def test_dataset_anisotropic_scale_keeps_normals_perpendicular():
    rng = np.random.default_rng(0)
    normal = np.array([1.0, 2.0, 2.0]) / 3.0
    basis = np.linalg.svd(normal[None])[2][1:]  # two tangent directions
    pts = (rng.normal(size=(300, 2)) @ basis).astype(np.float32)[None]
    nrm = np.tile(normal, (1, 300, 1)).astype(np.float32)
    data = PointCloudData(pts, nrm, np.zeros(1, np.int64), np.array(["plane"]), np.array(["train"]))
    p, n, _ = PointCloudDataset(data, points=300, resample=False, anisotropic_scale=(0.5, 2.0), rotate="so3")[0]
    unit(n.numpy())
    tangents = (p[1:] - p[0]).numpy()
    assert np.abs(tangents @ n[0].numpy()).max() < 1e-4  # still the plane's normal


def test_dataset_in_dataloader(h5_dir):
    d = load_dataset(h5_dir, points=128)
    ds = PointCloudDataset(d, d.indices("train"), points=128, rotate="z", jitter=0.01)
    p, n, lab = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert p.shape == n.shape == (8, 128, 3) and lab.dtype == torch.int64
    assert len(d.indices("test")) == 10 and d.num_classes == 10


def test_estimated_normals_for_data_with_its_own(nr_dir):
    """What evaluate feeds a model trained on estimated normals: a seeded subset of the model's cloud
    size with PCA normals estimated in it; the loaded data is left as it was."""
    from pcsym.data.datasets import with_estimated_normals
    from pcsym.geometry.numpy_graph import estimate_normals

    d = load_dataset(nr_dir, points=128)
    given = d.normals.copy()
    e = with_estimated_normals(d, points=300, seed=1)
    assert e.points.shape == (len(d.points), 300, 3) and e.normals_estimated and e.estimated_normals == 300
    np.testing.assert_array_equal(d.normals, given)
    # each kept point is one of the shape's points, none twice; normals are the estimate in the subset
    for s in range(len(d.points)):
        rows = {tuple(p) for p in d.points[s]}
        assert all(tuple(p) in rows for p in e.points[s]) and len({tuple(p) for p in e.points[s]}) == 300
    np.testing.assert_allclose(e.normals, estimate_normals(e.points), atol=1e-6)
    # the estimate agrees with the files' normals up to orientation on most points of these real shapes
    kept = d.points[:, :, None, :] == e.points[:, None, :, :]
    match = kept.all(-1).argmax(1)  # index in d of each kept point
    agree = np.abs((e.normals * np.take_along_axis(given, match[..., None], axis=1)).sum(-1))
    assert np.median(agree) > 0.8, np.median(agree)  # 0.89 here; random directions: 0.5
    np.testing.assert_allclose(np.linalg.norm(e.normals, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(with_estimated_normals(d, points=300, seed=1).points, e.points)
    sub = with_estimated_normals(d, points=300, seed=1, rows=[2, 0])  # only the shapes evaluate scores
    assert sub.points.shape == (2, 300, 3) and list(sub.labels) == list(d.labels[[2, 0]])
    assert list(sub.split) == list(d.split[[2, 0]])
    assert {tuple(p) for p in sub.points[0]} <= {tuple(p) for p in d.points[2]}
    np.testing.assert_allclose(sub.normals, estimate_normals(sub.points), atol=1e-6)
