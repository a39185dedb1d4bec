"""The fast basis kernel (pcsym.models.basis, ``--kernel basis``) against escnn's own basis sampler.

The reference is :class:`pcsym.models.layers.BasisKernelConv`, which calls escnn's ``R3PointConv`` basis
sampler on the edges: same basis elements, same parameters, same messages, for every group of the paper's
comparison; equivariance, parameter counts, old checkpoints and the exports follow."""

import numpy as np
import pytest
import torch

from pcsym.config import ModelConfig
from pcsym.models.equivariance import check_model
from pcsym.models.groups import resolve
from pcsym.models import layers
from pcsym.models.basis import FastBasisKernelConv, harmonic_cobs
from pcsym.models.classifier import build_model, count_parameters
from pcsym.models.layers import BasisKernelConv, channel_types, channels_for, type_size

from .test_equivariance import _assert_numpy_export_gives_its_logits, _cloud, _conv_error

#: the groups of the paper's comparison (Zhdanov et al. 2023, Fig. 3)
PAPER_GROUPS = ["so2", "o2", "so3", "o3", "m", "inv", "f", "trivial"]


def _pair(name, seed=0, in_dims=12, out_dims=20):
    """(escnn-sampled conv, fast conv) with the same field types and the same parameters."""
    torch.manual_seed(seed)
    group = resolve(name)
    _, act_in, _ = channel_types(group, channels_for(group, in_dims))
    pre_out, _, _ = channel_types(group, channels_for(group, out_dims))
    ref, fast = BasisKernelConv(group, act_in, pre_out), FastBasisKernelConv(group, act_in, pre_out)
    with torch.no_grad():
        fast.contract.weight.copy_(ref.pc.weights)
        ref.pc.bias.normal_()
        fast.contract.bias.copy_(ref.pc.bias)
    return ref, fast


def _edges(n=240, seed=0):
    """Random edge vectors over the basis' support (rings at 0, 1.5, 3), a few of them at the origin
    (a point is its own nearest neighbour) and on the rings' radii."""
    g = torch.Generator().manual_seed(seed)
    rel = torch.randn(n, 3, generator=g) * 1.3
    rel[:8] = 0.0
    for i, r in enumerate((1.5, 3.0, 0.01, 4.0)):
        rel[8 + 4 * i : 12 + 4 * i] = torch.nn.functional.normalize(rel[8 + 4 * i : 12 + 4 * i], dim=-1) * r
    return rel


def _messages_ref(ref, rel, f, weights=None):
    w = ref.pc.weights if weights is None else weights
    return ref.pc.basissampler.compute_messages(w, f, rel, conv_first=True)


def _messages_fast(fast, rel, f):
    return torch.einsum("eoi,ei->eo", fast.kernel(rel), f)


@pytest.mark.parametrize("name", PAPER_GROUPS)
def test_messages_equal_escnn_sampled_basis(name):
    """Per-edge messages k(x) f and the averaged conv output equal escnn's sampler's, float32."""
    ref, fast = _pair(name)
    rel = _edges()
    f = torch.randn(rel.shape[0], fast.in_size)
    with torch.no_grad():
        want, got = _messages_ref(ref, rel, f), _messages_fast(fast, rel, f)
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5
        rel4, f4 = rel.view(2, 12, 10, 3), f.view(2, 12, 10, -1)
        want, got = ref(rel4, f4), fast(rel4, f4)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("name", PAPER_GROUPS)
def test_each_basis_element_equals_escnn_sampled_basis(name):
    """Basis element by basis element (one-hot parameters, 24 of them at random): the fast conv's kernel
    k(x) equals escnn's sampled basis element, to 1e-5 of its largest value."""
    ref, fast = _pair(name, in_dims=4, out_dims=4)
    rel = _edges(64)
    dim = ref.pc.weights.numel()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for b in rng.choice(dim, size=min(dim, 24), replace=False):
            w = torch.zeros(dim)
            w[b] = 1.0
            want = ref.pc.basissampler(w, rel)  # (E, out, in), escnn's expanded filter
            fast.contract.weight.copy_(w)
            got = fast.kernel(rel)
            assert float((got - want).abs().max()) < 1e-5 * max(float(want.abs().max()), 1e-3), b


def test_embedding_equals_escnn_spherical_shells():
    """φ: escnn's SphericalShellsBasis sample (rings x harmonic polynomials) at the kept components, with
    the origin's convention (Y_0 = 1, the rest 0); the float64 change of basis rounds to escnn's float32."""
    ref, fast = _pair("trivial", in_dims=1, out_dims=1)
    block = next(m for n, m in ref.pc.basissampler.named_children() if n.startswith("block_sampler_"))
    shells = block.basis.basis
    rel = _edges()
    with torch.no_grad():
        want = shells.sample(rel).view(rel.shape[0], -1)
        got = fast.embed(rel)
    lmax = shells.L
    keep = [j * j * 3 + r * (2 * j + 1) + m for j in range(lmax + 1) for r in range(3) for m in range(2 * j + 1)]
    keep = sorted(s for s in keep if s in set(_kept(fast)))
    assert got.shape[-1] == len(keep) == fast.h_size
    assert float((got - want[:, keep]).abs().max()) < 1e-5
    for ours, theirs in zip(harmonic_cobs(lmax), [getattr(shells.harmonics_generator, f"cob_{l}") for l in range(1, lmax + 1)]):
        assert np.abs(ours - theirs.double().numpy()).max() < 1e-6


def _kept(fast):
    """Indices of the fast conv's φ components in escnn's layout (degree j, ring, m)."""
    ring, harm = fast.embed.phi_ring.numpy(), fast.embed.phi_harmonic.numpy()
    j = np.floor(np.sqrt(harm)).astype(int)
    return list(j * j * 3 + ring * (2 * j + 1) + (harm - j * j))


@pytest.mark.parametrize("name", PAPER_GROUPS)
def test_parameter_count_unchanged(name):
    """Same parameters as escnn's R3PointConv (weights + bias), layer by layer and for a whole model."""
    ref, fast = _pair(name)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert count(fast) == count(ref) == ref.pc.weights.numel() + ref.pc.bias.numel()
    assert fast.contract.weight.shape == ref.pc.weights.shape


@pytest.mark.parametrize("name", ["so3", "o2", "m", "trivial"])
def test_model_parameter_count_unchanged(name, monkeypatch):
    cfg = ModelConfig(group=name, kernel="basis", points=128, widths=(16, 24), strides=(2, 4), invariant_dims=8,
                      class_names=["a", "b"])
    fast = count_parameters(build_model(cfg))
    monkeypatch.setitem(layers.KERNELS, "basis", BasisKernelConv)
    assert count_parameters(build_model(cfg)) == fast


@pytest.mark.parametrize("name", PAPER_GROUPS)
def test_fast_basis_conv_is_equivariant(name):
    """float64; the basis' coefficients are escnn's float32 ones, hence 1e-6 (as for escnn's sampler)."""
    err, *_ = _conv_error(FastBasisKernelConv, name)
    assert err < 1e-6, err


@pytest.mark.parametrize("name", PAPER_GROUPS)
def test_basis_model_is_invariant_and_layers_equivariant(name):
    """pcsym check-equivariance's check (equivariance.check_model) on a basis-kernel model: every layer
    equivariant and the logits invariant under the group; elements outside the group change the logits."""
    torch.manual_seed(0)
    cfg = ModelConfig(group=name, kernel="basis", points=128, widths=(16, 24), strides=(2, 4), invariant_dims=8,
                      class_names=["a", "b", "c"])
    rows = check_model(build_model(cfg), *_cloud(128), n_random=2)
    in_group = [r for r in rows if r.in_group]
    assert in_group or name == "trivial"
    for r in in_group:
        assert r.worst_rel < 1e-6, (r.element, r.logits_rel, r.layers)
    assert max(r.logits_rel for r in rows if not r.in_group) > 1e-3


def test_check_equivariance_cli_with_basis_kernel():
    from typer.testing import CliRunner

    from pcsym.cli import app

    r = CliRunner().invoke(app, ["check-equivariance", "--group", "m", "--kernel", "basis", "--points", "128",
                                 "--random", "1", "--json"])
    assert r.exit_code == 0, r.output
    import json

    rep = json.loads(r.stdout)
    assert rep["kernel"] == "basis" and rep["passed"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_checkpoint_of_the_escnn_sampled_basis_model_loads(mode, tmp_path, monkeypatch):
    """A checkpoint written by the escnn-sampled basis model (state_dict keys ``pc.*``, in train or eval mode)
    loads into the fast model and gives the same logits."""
    from pcsym.models.checkpoint import load_model, save_checkpoint

    cfg = ModelConfig(group="o2", kernel="basis", points=128, widths=(16, 24), strides=(2, 4), invariant_dims=8,
                      class_names=["a", "b", "c"])
    with monkeypatch.context() as m:
        m.setitem(layers.KERNELS, "basis", BasisKernelConv)
        torch.manual_seed(3)
        old = build_model(cfg)
        with torch.no_grad():
            for blk in old.blocks:
                blk.conv.pc.bias.normal_()
        old.train(mode == "train")
        save_checkpoint(tmp_path / "old.pt", old, cfg)
        assert any(".conv.pc.weights" in k for k in old.state_dict())
    new, _ = load_model(tmp_path / "old.pt")
    assert isinstance(new.blocks[0].conv, FastBasisKernelConv)
    old.eval()
    p, n = (x[None].float() for x in _cloud(128, seed=4))
    with torch.no_grad():
        want, got = old(p, n), new.eval()(p, n)
    assert float((got - want).abs().max()) < 1e-5 * max(1.0, float(want.abs().max()))
    save_checkpoint(tmp_path / "new.pt", new, cfg)  # and the fast model's own checkpoint round-trips
    again, _ = load_model(tmp_path / "new.pt")
    with torch.no_grad():
        assert torch.equal(again.eval()(p, n), got)


@pytest.mark.parametrize("name", ["so3", "o2", "m", "trivial"])
def test_numpy_export_of_a_basis_model_gives_its_logits(name, tmp_path):
    """The numpy runtime reproduces a basis-kernel model (export format version 2; implicit models stay 1)."""
    import json

    from pcsym.inference.export import export_model

    torch.manual_seed(1)
    cfg = ModelConfig(group=name, kernel="basis", points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                      class_names=[str(i) for i in range(5)])
    model = build_model(cfg).train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        p2, n2 = (torch.stack([a, b]).float() for a, b in zip(_cloud(seed=1), _cloud(seed=2)))
        model(p2, n2)
    model.eval()
    path = export_model(model, tmp_path / "m.npz", "numpy")
    with np.load(path) as z:
        assert json.loads(str(z["meta"]))["version"] == 2
    _assert_numpy_export_gives_its_logits(model, path, cfg)


def test_torchscript_and_onnx_export_of_a_basis_model(tmp_path):
    from pcsym.inference.export import ScriptedClassifier, export_model, prepare_inputs

    torch.manual_seed(2)
    cfg = ModelConfig(group="o2", kernel="basis", points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                      class_names=[str(i) for i in range(5)])
    model = build_model(cfg).eval()
    net = ScriptedClassifier(export_model(model, tmp_path / "m.ts", "torchscript"))
    p, n = (x[None].float() for x in _cloud(seed=5))
    with torch.no_grad():
        ref, out = model(p, n), net(p, n)
    assert float((out - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))
    ort = pytest.importorskip("onnxruntime")
    export_model(model, tmp_path / "m.onnx", "onnx")
    pp, nn_ = prepare_inputs(p, n, cfg)
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pos": pp.numpy(), "normals": nn_.numpy()})[0]
    assert np.abs(out - ref.numpy()).max() < 1e-4 * max(1.0, float(ref.abs().max()))


def test_compiled_aggregation_and_torch_spelling_agree():
    """The fast conv's training path (compiled aggregation over packed columns, per-entry weight expansion)
    equals the plain torch spelling, values and gradients."""
    from pcsym.geometry.graph import gather, knn
    from pcsym.models import fused

    _, fast = _pair("o2")
    pos = torch.randn(2, 64, 3)
    idx = knn(pos, pos, 8)
    rel = pos[:, :, None] - gather(pos, idx)
    feat = torch.randn(2, 64, fast.in_size, requires_grad=True)

    def run():
        fast.zero_grad(set_to_none=True)
        feat.grad = None
        out = fast.convolve(rel, feat, idx)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return out.detach(), feat.grad.clone(), fast.contract.weight.grad.clone()

    fast_path = run()
    with fused.torch_spelling():
        torch_path = run()
    for a, b in zip(fast_path, torch_path):
        assert float((a - b).abs().max()) < 1e-4 * max(1.0, float(b.abs().max()))
