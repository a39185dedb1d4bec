"""PCA frame averaging (``--frames pca``): a model on a group with every rotation about z, seen through the six
views of each cloud's PCA frame, is invariant to every rotation (and reflection, where its group has one); the
exports, check-equivariance and training handle it."""

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from pcsym.cli import app
from pcsym.config import ModelConfig
from pcsym.errors import PcsymError
from pcsym.geometry import frames as npframes
from pcsym.geometry.graph import frame_views
from pcsym.models.classifier import build_model, invariance_group
from pcsym.models.equivariance import check_model

from .test_cli import TINY
from .test_equivariance import _cloud

SMALL = dict(points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16, edge_features="ppf",
             sampling="random-fps", class_names=[str(i) for i in range(5)])


def test_the_six_views_are_proper_rotations_taking_each_principal_axis_to_plus_and_minus_z():
    p, _ = _cloud()
    views = npframes.frame_views(p.numpy())
    assert views.shape == (6, 3, 3)
    assert np.allclose(views @ np.swapaxes(views, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(views), 1.0)
    axes = npframes.principal_axes(p.numpy())
    for i in range(3):  # view (i, s) takes the axis s * v_i to +z
        for s, view in zip((1, -1), views[2 * i:2 * i + 2]):
            assert np.allclose(view @ (s * axes[:, i]), [0, 0, 1], atol=1e-12)
    # the torch twin, batched, gives the same rotations
    assert np.allclose(frame_views(p[None]).numpy()[0], views, atol=1e-12)


def test_a_rotated_cloud_has_the_same_views_up_to_rotations_about_z():
    """What makes the average invariant: the views of g·x are the views of x, each turned about z, in some order."""
    p, _ = _cloud()
    R = Rotation.random(random_state=3).as_matrix()
    a = np.einsum("nj,vij->vni", p.numpy(), npframes.frame_views(p.numpy()))
    b = np.einsum("nj,vij->vni", p.numpy() @ R.T, npframes.frame_views(p.numpy() @ R.T))
    key = lambda v: (np.round(v[:, 2], 9).tolist(), np.round(np.linalg.norm(v[:, :2], axis=1), 9).tolist())  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))
    assert not np.allclose(a[:, :, 2], b[:, :, 2]) or not np.allclose(a, b)  # views do move (not a trivial pass)


@pytest.mark.parametrize("group,invariant_to", [("o2", "o3"), ("so2", "so3")])
def test_frames_make_a_z_rotation_model_invariant_to_every_rotation(group, invariant_to):
    torch.manual_seed(0)
    model = build_model(ModelConfig(group=group, frames="pca", **SMALL))
    assert invariance_group(model.cfg) == invariant_to
    rows = check_model(model, *_cloud(), n_random=3)
    in_group = [r for r in rows if r.in_group]
    assert len(in_group) >= 5 and all(r.worst_rel < 1e-9 for r in in_group), [(r.element, r.logits_rel) for r in rows]
    assert all(r.logits_rel > 1e-4 for r in rows if not r.in_group)  # what is outside still changes the logits
    # without frames the same weights are not invariant to a rotation about x
    plain = build_model(ModelConfig(group=group, **SMALL)).double().eval()
    plain.load_state_dict(model.state_dict())
    p, n = (x[None] for x in _cloud())
    R = torch.tensor(Rotation.from_euler("x", 0.9).as_matrix())
    with torch.no_grad():
        ref = plain(p, n)
        assert (plain(p @ R.T, n @ R.T) - ref).abs().max() > 1e-4 * max(1.0, float(ref.abs().max()))
        assert (model(p @ R.T, n @ R.T) - model(p, n)).abs().max() < 1e-9


def test_frames_need_every_rotation_about_z():
    for group in ("trivial", "c4", "m"):
        with pytest.raises(PcsymError, match=f"frames 'pca' need a group with every rotation about z .*not {group}$"):
            ModelConfig(group=group, frames="pca", class_names=["a"]).validate()
    with pytest.raises(PcsymError, match="unknown frames 'pcb'"):
        ModelConfig(frames="pcb", class_names=["a"]).validate()


def test_frame_models_export_to_numpy_and_torchscript_with_their_logits_and_refuse_onnx(tmp_path):
    from pcsym.inference.export import ScriptedClassifier, export_model
    from pcsym.inference.runtime import NumpyClassifier

    torch.manual_seed(0)
    model = build_model(ModelConfig(group="o2", frames="pca", depth=(1, 2), **SMALL))
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(*(torch.stack([a, b]).float() for a, b in zip(_cloud(seed=1), _cloud(seed=2))))
    model.eval()
    p, n = (x[None].float() for x in _cloud(seed=5))
    net = NumpyClassifier(export_model(model, tmp_path / "m.npz", "numpy"))
    assert net.cfg.frames == "pca"
    for v in (0, 2):
        with torch.no_grad():
            want, feats = model(p, n, vote=v, pooled=True)
        got, got_feats = net.logits(p.numpy(), n.numpy(), vote=v, pooled=True)
        assert got.shape == (1, 5) and got_feats.shape == feats.shape == (1, 32)
        assert np.abs(got - want.numpy()).max() < 1e-5 * max(1.0, float(want.abs().max()))
        assert np.abs(got_feats - feats.numpy()).max() < 1e-5 * max(1.0, float(feats.abs().max()))
    # TorchScript: three clouds at once (the traced graph holds for any batch size)
    p3, n3 = (torch.cat([x, y, z]).float() for x, y, z in zip(*(
        [t[None] for t in _cloud(seed=s)] for s in (5, 6, 7))))
    scripted = ScriptedClassifier(export_model(model, tmp_path / "m.ts", "torchscript"))
    with torch.no_grad():
        want3 = model(p3, n3)
        assert (scripted(p3, n3) - want3).abs().max() < 1e-5 * max(1.0, float(want3.abs().max()))
        R = torch.tensor(Rotation.random(random_state=2).as_matrix(), dtype=torch.float32)
        assert (scripted(p3 @ R.T, n3 @ R.T) - want3).abs().max() < 1e-3 * max(1.0, float(want3.abs().max()))
    with pytest.raises(PcsymError, match="a model with pca frames exports to torchscript or numpy, not ONNX"):
        export_model(model, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_torchscript_export_takes_any_batch_size(tmp_path):
    """The traced kNN once held the example's batch of one: three clouds read past its blocks."""
    from pcsym.inference.export import ScriptedClassifier, export_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(group="so3", **SMALL)).eval()
    p3, n3 = (torch.stack([a, b, c]).float() for a, b, c in zip(_cloud(seed=1), _cloud(seed=2), _cloud(seed=3)))
    scripted = ScriptedClassifier(export_model(model, tmp_path / "m.ts", "torchscript"))
    with torch.no_grad():
        want = model(p3, n3)
        assert (scripted(p3, n3) - want).abs().max() < 1e-5 * max(1.0, float(want.abs().max()))


def test_the_training_data_sees_each_shape_through_one_of_its_views(sample_dataset):
    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import FrameView, PointCloudDataset

    data = load_dataset(sample_dataset)
    plain = PointCloudDataset(data, points=256, seed=3)
    framed = PointCloudDataset(data, points=256, seed=3, frames="pca")
    assert isinstance(framed.transforms[-1], FrameView) and not plain.transforms
    drawn = set()
    for i in range(12):
        (p, n, y), (q, m, z) = plain[i], framed[i]
        assert y == z
        views = npframes.frame_views(p.numpy())
        match = [v for v in range(6) if np.allclose(p.numpy() @ views[v].T, q.numpy(), atol=1e-5)
                 and np.allclose(n.numpy() @ views[v].T, m.numpy(), atol=1e-5)]
        assert len(match) == 1
        drawn.add(match[0])
    assert len(drawn) >= 3  # drawn at random, not always the same view


def test_train_with_frames_writes_a_model_that_checks_as_o3_invariant(sample_dataset, tmp_path, sample_mesh):
    r = CliRunner().invoke(app, ["-q", "train", "--data", str(sample_dataset), "--out", str(tmp_path / "run"),
                                 "--group", "o2", "--frames", "pca", "--rotate", "so3", "--epochs", "1",
                                 "--max-steps", "2", *TINY])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["frames"] == "pca"
    r = CliRunner().invoke(app, ["check-equivariance", str(tmp_path / "run" / "best.pt"), "--input", str(sample_mesh),
                                 "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["frames"] == "pca" and out["checked_group"] == "o3" and out["passed"]
    r = CliRunner().invoke(app, ["-q", "train", "--data", str(sample_dataset), "--out", str(tmp_path / "bad"),
                                 "--group", "c4", "--frames", "pca", "--epochs", "1", *TINY])
    assert r.exit_code == 2  # a bad setting, like any other (nothing trained, no traceback)
    assert not (tmp_path / "bad" / "last.pt").exists() and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].endswith(
        "frames 'pca' need a group with every rotation about z (so2, o2, so2xinv, o2xinv, so3, o3), not c4")


def test_an_ensemble_of_frame_models_averages_views_and_members_and_exports(tmp_path):
    from pcsym.inference.export import export_model
    from pcsym.inference.runtime import NumpyClassifier
    from pcsym.models.ensemble import EnsembleClassifier

    torch.manual_seed(0)
    ens = EnsembleClassifier(ModelConfig(group="o2", frames="pca", **SMALL), 2).eval()
    p, n = (x[None].float() for x in _cloud(seed=4))
    R = torch.tensor(Rotation.random(random_state=5).as_matrix(), dtype=torch.float32)
    with torch.no_grad():
        want = ens(p, n)
        members = torch.stack([m(p, n) for m in ens.members]).mean(0)
        assert (want - members).abs().max() < 1e-5
        assert (ens(p @ R.T, n @ R.T) - want).abs().max() < 1e-3 * max(1.0, float(want.abs().max()))
    got = NumpyClassifier(export_model(ens, tmp_path / "e.npz", "numpy"))(p.numpy(), n.numpy())
    assert np.abs(got - want.numpy()).max() < 1e-5 * max(1.0, float(want.abs().max()))


def test_frames_on_a_group_already_invariant_to_every_rotation_is_a_note():
    from pcsym.config import model_notes

    assert model_notes(ModelConfig(group="so3", frames="pca")) == [
        "frames 'pca' add nothing under so3, already invariant to every rotation, at six passes per prediction "
        "(they are for so2, o2 and the other groups about z)"]
    assert model_notes(ModelConfig(group="o2", frames="pca")) == []
