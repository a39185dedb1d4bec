"""Equivariance of the steerable layers and invariance of whole models, for every group."""

import numpy as np
import pytest
import torch

from pcsym.config import ModelConfig
from pcsym.inference.runtime import NumpyClassifier
from pcsym.models.equivariance import check_model
from pcsym.models.groups import GROUPS, get_group, gspace, resolve
from pcsym.models.classifier import build_model
from pcsym.models.layers import (BasisKernelConv, ImplicitKernelConv, channel_types, channels_for,
                                 direct_sum_matrix, type_size)

ALL_GROUPS = list(GROUPS)
# product groups with continuous factors take ~20-40 s of escnn basis building on a fresh cache
SLOW_GROUPS = {"so2xinv", "o2xinv"}
FAST_GROUPS = [g for g in ALL_GROUPS if g not in SLOW_GROUPS]


def _conv_error(conv_cls, name, dtype=torch.float64, n_elements=3):
    torch.manual_seed(0)
    np.random.seed(0)
    group = resolve(name)
    _, act_in, _ = channel_types(group, channels_for(group, 12))
    pre_out, _, _ = channel_types(group, channels_for(group, 20))
    conv = conv_cls(group, act_in, pre_out).to(dtype).eval()
    G = gspace(name).fibergroup
    rel = torch.randn(2, 6, 8, 3, dtype=dtype)
    f = torch.randn(2, 6, 8, type_size(act_in), dtype=dtype)
    with torch.no_grad():
        out = conv(rel, f)
        errs = []
        els = list(G.elements)[1:] if G.order() > 0 else [G.sample() for _ in range(n_elements)]
        for g in els:
            R = torch.tensor(gspace(name).basespace_action(g), dtype=dtype)
            rin = torch.tensor(direct_sum_matrix(act_in, g), dtype=dtype)
            rout = torch.tensor(direct_sum_matrix(pre_out, g), dtype=dtype)
            errs.append(float((conv(rel @ R.T, f @ rin.T) - out @ rout.T).abs().max() / out.abs().max()))
    return max(errs + [0.0]), conv, rel, f, out


@pytest.mark.parametrize("name", FAST_GROUPS + [pytest.param(g, marks=pytest.mark.slow) for g in SLOW_GROUPS])
def test_implicit_conv_is_equivariant(name):
    err, *_ = _conv_error(ImplicitKernelConv, name)
    assert err < 1e-10, err


@pytest.mark.parametrize("name", ["so2", "o2", "so3", "m", "inv"])
def test_basis_conv_is_equivariant(name):
    err, *_ = _conv_error(BasisKernelConv, name)
    assert err < 1e-6, err


def test_implicit_conv_equals_explicit_kernel_sum():
    """The fused contraction equals mean_j k(x_i - x_j) f_j with the materialised kernel."""
    _, conv, rel, f, out = _conv_error(ImplicitKernelConv, "so3")
    with torch.no_grad():
        K = conv.kernel(rel)  # (B, M, k, out, in)
        _, bias = conv.dense_weight()
        explicit = torch.einsum("bmkoc,bmkc->bmo", K, f) / rel.shape[2] + bias
    assert torch.allclose(explicit, out, atol=1e-10)


def test_implicit_conv_float32_error_is_small():
    err, *_ = _conv_error(ImplicitKernelConv, "o2", dtype=torch.float32)
    assert err < 1e-4, err


def test_conv_is_not_equivariant_to_elements_outside_the_group():
    """An so2 conv is not equivariant to a rotation about x (using the O(3) action on its fields)."""
    torch.manual_seed(0)
    name = "so3"  # build the so3 fields so rho(g) exists for any rotation, but a trivial-group kernel
    so2 = resolve("so2")
    _, act_in, _ = channel_types(so2, channels_for(so2, 12))
    pre_out, _, _ = channel_types(so2, channels_for(so2, 20))
    conv = ImplicitKernelConv(so2, act_in, pre_out).double().eval()
    rel = torch.randn(2, 6, 8, 3, dtype=torch.float64)
    f = torch.randn(2, 6, 8, type_size(act_in), dtype=torch.float64)
    c, s = np.cos(0.9), np.sin(0.9)
    Rx = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    with torch.no_grad():
        out, out_rot = conv(rel, f), conv(rel @ Rx.T, f)
    # only scalar (frequency-0) outputs could be compared: they change a lot
    assert float((out - out_rot).abs().max() / out.abs().max()) > 1e-2
    assert name == "so3"


def _cloud(n=256, seed=0):
    rng = np.random.default_rng(seed)
    # an anisotropic blob: no accidental symmetry
    p = rng.normal(size=(n, 3)) * np.array([1.0, 0.6, 0.3]) + np.array([0.2, -0.1, 0.05])
    nrm = rng.normal(size=(n, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    return torch.tensor(p), torch.tensor(nrm)


@pytest.mark.parametrize("name", FAST_GROUPS + [pytest.param(g, marks=pytest.mark.slow) for g in SLOW_GROUPS])
def test_model_is_invariant_and_layers_equivariant(name):
    torch.manual_seed(0)
    cfg = ModelConfig(group=name, points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                      class_names=[str(i) for i in range(5)])
    model = build_model(cfg)
    rows = check_model(model, *_cloud(), n_random=2)
    in_group = [r for r in rows if r.in_group]
    assert in_group or name == "trivial"
    for r in in_group:
        assert r.worst_rel < 1e-9, (r.element, r.logits_rel, r.layers)
    outside = [r for r in rows if not r.in_group]
    assert outside, "every group must have contrast elements"
    # at least one element outside the group changes the logits clearly
    assert max(r.logits_rel for r in outside) > 1e-3


@pytest.mark.parametrize("name", ["so3", "o2", "m", "trivial"])
def test_numpy_export_gives_the_models_logits(name, tmp_path):
    """The numpy runtime (classify's torch-free path) is a second forward pass: pin it to the model,
    with non-trivial batch-norm statistics, gated (continuous) and regular (finite) fields."""
    from pcsym.inference.export import export_model

    torch.manual_seed(1)
    cfg = ModelConfig(group=name, points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                      class_names=[str(i) for i in range(5)])
    model = build_model(cfg).train()
    with torch.no_grad():
        for seed in range(3):  # two clouds a batch: BatchNorm1d needs more than one sample
            p, n = (torch.stack([a, b]).float() for a, b in zip(_cloud(seed=2 * seed), _cloud(seed=2 * seed + 1)))
            model(p * (1 + seed), n)
    model.eval()
    _assert_numpy_export_gives_its_logits(model, export_model(model, tmp_path / "m.npz", "numpy"), cfg)


def _assert_numpy_export_gives_its_logits(model, path, cfg):
    """The numpy runtime of the export at ``path`` gives ``model``'s logits (eval mode) on a test cloud."""
    net = NumpyClassifier(path)
    assert net.cfg == cfg
    p, n = (x[None].float() for x in _cloud(seed=5))
    with torch.no_grad():
        ref = model(p, n).numpy()
    out = net(p.numpy(), n.numpy())
    assert np.abs(out - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())
    assert np.abs(ref).max() > 1e-3  # not a degenerate all-zero comparison


@pytest.mark.parametrize("sampling", ["random", "random-fps"])
def test_a_clouds_prediction_does_not_depend_on_its_batch(sampling, tmp_path):
    """Eval mode draws one seeded downsampling order for every cloud of a batch, so a cloud's logits are
    the same alone, at any batch position, under any ``--batch-size``, and equal the numpy export's (which
    holds that order) for every row, not only the first. Once each row drew its own order: ``evaluate``'s
    figures moved with ``--batch-size`` although its help said they did not."""
    from pcsym.inference.export import export_model

    torch.manual_seed(0)
    cfg = ModelConfig(group="o2", points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                      sampling=sampling, class_names=[str(i) for i in range(5)])
    model = build_model(cfg).eval()
    p, n = (torch.stack(xs).float() for xs in zip(*(_cloud(seed=s) for s in range(4))))
    with torch.no_grad():
        batch = model(p, n)
        alone = torch.cat([model(p[i:i + 1], n[i:i + 1]) for i in range(4)])
        flipped = model(p.flip(0), n.flip(0)).flip(0)
        voted = model(p, n, vote=3)
        voted_alone = torch.cat([model(p[i:i + 1], n[i:i + 1], vote=3) for i in range(4)])
    scale = float(batch.abs().max())
    assert scale > 1e-3
    for other in (alone, flipped):
        assert (other - batch).abs().max() < 1e-5 * scale
    assert (voted - voted_alone).abs().max() < 1e-5 * scale
    assert (voted - batch).abs().max() > 1e-4 * scale  # vote 3 really is another downsampling
    net = NumpyClassifier(export_model(model, tmp_path / "m.npz", "numpy"))
    assert np.abs(net(p.numpy(), n.numpy()) - batch.numpy()).max() < 1e-5 * scale


@pytest.mark.parametrize("name", ["so3", "m"])
def test_basis_kernel_model_is_invariant(name):
    torch.manual_seed(0)
    cfg = ModelConfig(group=name, kernel="basis", points=128, widths=(16,), strides=(2,), invariant_dims=8,
                      class_names=["a", "b"])
    rows = check_model(build_model(cfg), *_cloud(128), n_random=2)
    assert max(r.worst_rel for r in rows if r.in_group) < 1e-6


def test_group_membership_rules():
    c, s = np.cos(0.3), np.sin(0.3)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    mx = np.diag([-1.0, 1, 1])
    G = {name: get_group(name) for name in GROUPS}
    assert G["so2"].contains(rz) and not G["so2"].contains(rx) and not G["so2"].contains(mx)
    assert G["o2"].contains(mx) and G["o2"].contains(rz) and not G["o2"].contains(np.diag([1.0, 1, -1]))
    assert G["so3"].contains(rx) and not G["so3"].contains(-np.eye(3))
    assert G["m"].contains(mx) and not G["m"].contains(rz)
    assert G["f"].contains(np.diag([1.0, -1, -1])) and G["inv"].contains(-np.eye(3))
    assert G["mxinv"].contains(mx) and G["mxinv"].contains(-np.eye(3)) and G["mxinv"].contains(np.diag([1.0, -1, -1]))
    assert G["so2xinv"].contains(-rz) and not G["so2xinv"].contains(mx)
    assert not G["o3"].contains(np.diag([1.5, 1, 1]))  # not an isometry


def test_kernel_registry_matches_the_config_names():
    """config.KERNELS (torch-free, for validation and --help) names exactly the registered kernels."""
    from pcsym.config import KERNELS
    from pcsym.models.layers import KERNELS as REGISTRY

    assert tuple(REGISTRY) == KERNELS


def test_group_table_prints_the_constructor_the_code_calls():
    """The constructor string shown by `pcsym groups` is derived from the same row that builds the gspace."""
    f = get_group("f")
    assert f.constructor == "dihedralOnR3(n=1, axis=0.0)"
    gs = gspace("f")
    assert type(gs).__name__ == "GSpace3D" and gs.fibergroup.order() == 2
    assert get_group("so3").constructor == "rot3dOnR3()" and get_group("so3").continuous


@pytest.mark.parametrize("name,edges", [("so3", "ppf"), ("o2", "ppf"), ("m", "ppf"), ("so3", "ppf+normals"),
                                        ("o3", "ppf+normals"), ("o2", "ppf+normals"), ("m", "ppf+normals"),
                                        ("so3", "ppf-unsigned"), ("o2", "ppf-unsigned"), ("o3", "ppf-unsigned")])
def test_edge_feature_model_is_invariant_and_exports(name, edges, tmp_path):
    """--edge-features ppf (point-pair invariants fed to every kernel MLP) and ppf+normals (the two normals
    as vector fields besides) keep the model exactly invariant, change what it computes, and the numpy
    runtime reproduces it."""
    from pcsym.inference.export import export_model

    torch.manual_seed(0)
    base = dict(group=name, points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                class_names=[str(i) for i in range(5)])
    model = build_model(ModelConfig(**base, edge_features=edges))
    first = model.blocks[0].conv.mlp[0]
    assert first.in_size == model.blocks[0].conv.embed.size + {"ppf": 3, "ppf+normals": 9, "ppf-unsigned": 4}[edges]
    # the input field: centred position, the normal unless the edges are sign-blind, a constant
    assert model.blocks[0].conv.in_size == (4 if edges == "ppf-unsigned" else 7)
    rows = check_model(model, *_cloud(), n_random=2)
    for r in rows:
        if r.in_group:
            assert r.worst_rel < 1e-9, (r.element, r.logits_rel, r.layers)
    model.float().eval()  # check_model ran it in float64
    p, n = (x[None].float() for x in _cloud(seed=5))
    with torch.no_grad():
        ref = model(p, n)
        flipped = model(p, -n)  # the invariants see the normals, not only the input field
        signs = torch.where(torch.rand(n.shape[:-1] + (1,), generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
        some_flipped = model(p, n * signs)  # a random half of the normals turned around
        tilted = model(p, torch.nn.functional.normalize(n + 0.3 * torch.randn_like(n), dim=-1))
    if edges == "ppf-unsigned":  # blind to every normal's sign, not to its direction
        assert (ref - some_flipped).abs().max() < 1e-6 * max(1.0, ref.abs().max().item())
        assert (ref - tilted).abs().max() > 1e-4
    else:
        assert (ref - flipped).abs().max() > 1e-4 and (ref - some_flipped).abs().max() > 1e-4
    net = NumpyClassifier(export_model(model, tmp_path / "m.npz", "numpy"))
    assert net.cfg.edge_features == edges
    out = net(p.numpy(), n.numpy())
    assert np.abs(out - ref.numpy()).max() < 1e-5 * max(1.0, np.abs(ref.numpy()).max())


def test_edge_features_need_the_implicit_kernel_and_normals():
    from pcsym.errors import PcsymError

    for bad in (dict(kernel="basis"), dict(use_normals=False)):
        with pytest.raises(PcsymError, match="edge features 'ppf' need the implicit kernel and normals"):
            ModelConfig(edge_features="ppf", class_names=["a"], **bad).validate()
    with pytest.raises(PcsymError, match="unknown edge features 'pp'"):
        ModelConfig(edge_features="pp", class_names=["a"]).validate()


@pytest.mark.parametrize("sampling", ["random-fps", "fps"])
def test_farthest_point_sampling_models_are_invariant_end_to_end_and_export(sampling, tmp_path):
    """With farthest-point sampling the downsampled subsets depend on the coordinates, so the
    invariance check here lets each rotated copy choose its own order (no shared indices): the
    logits still agree to float64 rounding. The numpy runtime computes the same orders and logits."""
    from scipy.spatial.transform import Rotation

    from pcsym.inference.export import export_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(group="so3", points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                                    edge_features="ppf", sampling=sampling, class_names=[str(i) for i in range(5)]))
    model = model.double().eval()
    p, n = (x[None] for x in _cloud())
    with torch.no_grad():
        ref = model(p, n)
        for seed in range(3):
            R = torch.tensor(Rotation.random(random_state=seed).as_matrix())
            out = model(p @ R.T, n @ R.T)
            assert (out - ref).abs().max() < 1e-9 * max(1.0, float(ref.abs().max()))
        votes = [model(p, n, vote=v) for v in (1, 2)]
    if sampling == "random-fps":  # the votes' random subsets differ
        assert (votes[0] - votes[1]).abs().max() > 1e-6
    else:
        assert torch.equal(votes[0], votes[1])
    model.float()
    net = NumpyClassifier(export_model(model, tmp_path / "m.npz", "numpy"))
    assert net.cfg.sampling == sampling
    pf, nf = p.float(), n.float()
    for v in (0, 2):
        with torch.no_grad():
            want = model(pf, nf, vote=v).numpy()
        assert np.abs(net(pf.numpy(), nf.numpy(), vote=v) - want).max() < 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("name", ["so3", "o2", "m"])
def test_residual_blocks_keep_the_model_invariant_and_export(name, tmp_path, monkeypatch):
    """--depth 2: a residual block (f + block(f)) on each stage's own points after the downsampling one.
    Every layer stays equivariant, the shortcut changes what the model computes, and the numpy runtime
    reproduces it."""
    from pcsym.inference.export import export_model

    torch.manual_seed(0)
    cfg = ModelConfig(group=name, points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16, depth=(2,),
                      edge_features="ppf", sampling="random-fps", class_names=[str(i) for i in range(5)])
    assert cfg.block_points() == [(128, False), (128, True), (32, False), (32, True), (32, False)]
    model = build_model(cfg)
    assert len(model.blocks) == 5
    rows = check_model(model, *_cloud(), n_random=2)
    assert any(r.in_group for r in rows)
    for r in rows:
        if r.in_group:
            assert len(r.layers) == 5 and r.worst_rel < 1e-9, (r.element, r.logits_rel, r.layers)
    model.float().train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        p2, n2 = (torch.stack([a, b]).float() for a, b in zip(_cloud(seed=1), _cloud(seed=2)))
        model(p2, n2)
    model.eval()
    p, n = (x[None].float() for x in _cloud(seed=5))
    with torch.no_grad():
        ref = model(p, n).numpy()
        for i in (1, 3):  # the residual blocks add nothing: the shortcut alone; the logits must change
            monkeypatch.setattr(model.blocks[i], "forward", lambda ps, f, m, nr=None: (ps[:, :m], 0 * f[:, :m]))
        skipped = model(p, n).numpy()
        monkeypatch.undo()
    assert np.abs(ref - skipped).max() > 1e-4
    net = NumpyClassifier(export_model(model, tmp_path / "m.npz", "numpy"))
    assert net.cfg.depth == (2,)
    out = net(p.numpy(), n.numpy())
    assert np.abs(out - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())


def test_depth_counts_blocks_per_stage():
    from pcsym.errors import PcsymError

    for bad in ((0,), (1, 2), (1, 0, 2)):
        with pytest.raises(PcsymError, match="depth must be one count of steerable blocks per stage"):
            ModelConfig(depth=bad, class_names=["a"]).validate()
    assert ModelConfig().block_points(1024) == [(512, False), (128, False), (32, False), (32, False)]
    # a flag's string, a config file's list or scalar (`depth: 2`) all read as a tuple
    assert [ModelConfig.parse("depth", v) for v in ("1,2,2", [1, 2, 2], 2)] == [(1, 2, 2), (1, 2, 2), (2,)]
    assert ModelConfig(depth=(1, 2, 2)).block_points(1024) == [(512, False), (128, False), (128, True), (32, False),
                                                               (32, True), (32, False)]
