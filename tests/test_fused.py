"""The compiled per-edge MLP and neighbour aggregation (pcsym/geometry/native/edge.c, agg.c through
pcsym.models.fused): the same values and gradients as the torch spelling, for every kind of kernel MLP
and every feature width, and a clean fallback."""

import contextlib
import os
import shutil

import numpy as np
import pytest
import torch

from pcsym.geometry import native
from pcsym.config import ModelConfig
from pcsym.models.groups import resolve
from pcsym.geometry.graph import gather
from pcsym.models import fused
from pcsym.models.classifier import build_model
from pcsym.models.layers import ImplicitKernelConv, channel_types

HAS_CC = shutil.which(os.environ.get("CC") or "cc") is not None
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler: the torch path is the only one (tested elsewhere)")


def _conv(group: str, lmax=2, layers=2, edge_dims=0, seed=0, edge_vectors=0) -> ImplicitKernelConv:
    g = resolve(group)
    torch.manual_seed(seed)
    pre, act, _ = channel_types(g, 3)
    return ImplicitKernelConv(g, act, pre, kernel_dims=16, kernel_layers=layers, lmax=lmax, edge_dims=edge_dims,
                              edge_vectors=edge_vectors)


def _both(conv, rel, edge, dh):
    """(h, weight gradients) through the kernel and through torch, for the loss sum(h * dh)."""
    out = []
    for use_kernel in (True, False):
        conv.zero_grad(set_to_none=True)
        h = conv.kernel_hidden(rel, edge) if use_kernel else _torch_hidden(conv, rel, edge)
        (h * dh).sum().backward()
        grads = {n: p.grad.clone() for n, p in conv.mlp.named_parameters()}
        out.append((h.detach(), grads))
    return out


def _torch_hidden(conv, rel, edge):
    with fused.torch_spelling():
        return conv.kernel_hidden(rel, edge)


def _close(a, b, tol):
    return (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1e-3)


@needs_cc
@pytest.mark.parametrize("group,lmax,layers,edge_dims", [
    ("so3", 2, 2, 0), ("so3", 1, 1, 3), ("so3", 3, 3, 0), ("o2", 2, 2, 3), ("so2", 2, 2, 0), ("o3", 2, 2, 0),
    ("m", 2, 2, 3), ("inv", 1, 2, 0), ("trivial", 2, 2, 0)])
@pytest.mark.parametrize("edges", [1, 77, 640])
def test_same_values_and_weight_gradients_as_torch(group, lmax, layers, edge_dims, edges):
    conv = _conv(group, lmax, layers, edge_dims)
    gen = torch.Generator().manual_seed(edges)
    rel = torch.randn(edges, 3, generator=gen) * 0.7
    edge = torch.randn(edges, edge_dims, generator=gen) if edge_dims else None
    dh = torch.randn(edges, conv.h_size, generator=gen)
    assert fused.kernel_hidden(conv, rel, edge) is not None, native.status()
    (h, g), (h_ref, g_ref) = _both(conv, rel, edge, dh)
    assert h.shape == h_ref.shape and torch.all(h[:, -1] == 1)
    assert _close(h, h_ref, 1e-5)
    assert g.keys() == g_ref.keys() and len(g) >= layers
    for name in g:
        assert _close(g[name], g_ref[name], 1e-4), name


@needs_cc
@pytest.mark.parametrize("group", ["so3", "o3", "o2"])
def test_vector_edge_features_same_values_and_gradients_as_torch(group):
    """--edge-features ppf+normals: 3 scalars and 2 vectors per edge, 9 columns after the embedding."""
    conv = _conv(group, edge_dims=3, edge_vectors=2)
    assert conv.edge_cols == 9 and conv.mlp[0].in_size == conv.embed.size + 9
    gen = torch.Generator().manual_seed(1)
    rel, edge = torch.randn(77, 3, generator=gen), torch.randn(77, 9, generator=gen)
    dh = torch.randn(77, conv.h_size, generator=gen)
    assert fused.kernel_hidden(conv, rel, edge) is not None, native.status()
    (h, g), (h_ref, g_ref) = _both(conv, rel, edge, dh)
    assert _close(h, h_ref, 1e-5) and g.keys() == g_ref.keys()
    for name in g:
        assert _close(g[name], g_ref[name], 1e-4), name


@needs_cc
def test_batched_shapes_and_eval_mode_frozen_weights():
    """(B, M, k, 3) edges as the conv passes them, and the frozen (exported) model's FrozenLinear."""
    from pcsym.models.layers import freeze

    conv = _conv("so3", edge_dims=3).eval()
    rel, edge = torch.randn(2, 5, 7, 3), torch.randn(2, 5, 7, 3)
    with torch.no_grad():
        h = conv.kernel_hidden(rel, edge)
        ref = _torch_hidden(conv, rel, edge)
        h_frozen = freeze(conv).kernel_hidden(rel, edge)
    assert h.shape == (2, 5, 7, conv.h_size)
    assert _close(h, ref, 1e-5) and _close(h_frozen, ref, 1e-5)


@needs_cc
def test_baseline_and_avx2_loops_and_thread_counts_agree():
    conv = _conv("o2", edge_dims=3)
    const = fused._constants(conv)
    layers = [(lin.expand()[0].detach().numpy(), lin.expand()[1].detach().numpy(), ch)
              for lin, ch in zip(conv.mlp[0::2], const["chan"])]
    net = native.EdgeNet(const["lmax"], const["cob"], const["centres"], const["width"], 3, layers)
    rng = np.random.default_rng(0)
    rel, edge = rng.normal(size=(1000, 3)).astype(np.float32), rng.normal(size=(1000, 3)).astype(np.float32)
    dh = rng.normal(size=(1000, net.h_size)).astype(np.float32)
    hs, gs = [], []
    for isa, threads in [(0, 1), (1, 1), (1, 2), (1, 3)]:
        h, g = np.empty((1000, net.h_size), np.float32), np.empty(net.n_grads, np.float32)
        assert native.edge_mlp(net, rel, edge, h=h, threads=threads, isa=isa)
        assert native.edge_mlp(net, rel, edge, dh=dh, grads=g, threads=threads, isa=isa)
        hs.append(h)
        gs.append(g)
    for h, g in zip(hs[1:], gs[1:]):
        np.testing.assert_allclose(h, hs[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, gs[0], rtol=1e-4, atol=1e-4 * np.abs(gs[0]).max())
    assert np.array_equal(hs[1], hs[2]) and np.array_equal(hs[1], hs[3])  # forward: per edge, thread-independent
    again = np.empty(net.n_grads, np.float32)  # backward: same threads, same sums
    native.edge_mlp(net, rel, edge, dh=dh, grads=again, threads=2)
    assert np.array_equal(again, gs[2])
    empty = np.empty((0, 3), np.float32)
    assert native.edge_mlp(net, empty, np.empty((0, 3), np.float32), dh=np.empty((0, net.h_size), np.float32),
                           grads=g, threads=2)
    assert not g.any()  # no edges: zero gradients


def test_falls_back_to_torch_where_the_kernel_does_not_apply(monkeypatch):
    conv = _conv("so3")
    rel = torch.randn(20, 3)
    rel_grad = rel.clone().requires_grad_()
    assert fused.kernel_hidden(conv, rel_grad, None) is None  # the kernel has no position gradient
    conv.kernel_hidden(rel_grad, None).sum().backward()
    assert rel_grad.grad is not None and rel_grad.grad.abs().sum() > 0
    assert fused.kernel_hidden(conv.double(), rel.double(), None) is None  # float64: equivariance checks
    conv.float()
    monkeypatch.setenv("PCSYM_NATIVE", "off")
    assert fused.kernel_hidden(conv, rel, None) is None


@needs_cc
def test_a_training_step_of_the_whole_model_matches_torch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(group="so3", class_names=["a", "b", "c"], points=256, widths=(8, 16, 32),
                                    edge_features="ppf")).train()
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(4, 256, 3, generator=gen)
    normals = torch.nn.functional.normalize(torch.randn(4, 256, 3, generator=gen), dim=-1)
    labels = torch.tensor([0, 1, 2, 1])
    results = []
    for use_kernel in (True, False):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the same random downsampling
        with contextlib.nullcontext() if use_kernel else fused.torch_spelling():
            loss = torch.nn.functional.cross_entropy(model(pos, normals), labels)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss, grads), (loss_ref, grads_ref) = results
    assert abs(loss - loss_ref) < 1e-5
    scale = max(g.abs().max().item() for g in grads_ref.values())
    for name, g in grads_ref.items():  # against the largest gradient: BN-cancelled biases have ~0 gradients
        assert (grads[name] - g).abs().max().item() < 1e-4 * scale, name


@needs_cc
def test_a_short_training_run_gives_the_same_loss_curve(sample_dataset, tmp_path, monkeypatch):
    """Issue 12's "same numbers": 3 epochs of a so3 model with point-pair features on the sample, seed 0,
    with the compiled MLP and with torch's: the same loss curve and validation accuracies within float
    tolerance (the kernel sums in another order, so not bit for bit)."""
    from pcsym.config import TrainConfig
    from pcsym.training.train import train

    mcfg = dict(group="so3", points=256, widths=(12, 16), strides=(2, 4), invariant_dims=16, edge_features="ppf")
    common = dict(data=str(sample_dataset), batch_size=16, seed=0, threads=2, rotate="so3", eval_rotate="so3",
                  bn_batches=2, epochs=3)
    runs = []
    calls = []
    real = fused._EdgeMLP.apply
    monkeypatch.setattr(fused._EdgeMLP, "apply", lambda *a: calls.append(1) or real(*a))
    for use_kernel in (True, False):
        with contextlib.nullcontext() if use_kernel else fused.torch_spelling():
            runs.append(train(ModelConfig(**mcfg), TrainConfig(out=str(tmp_path / str(use_kernel)), **common)))
        if use_kernel:  # the kernel really ran, and then no more
            assert calls
            n_calls = len(calls)
    assert len(calls) == n_calls
    (a, b) = ([h["train_loss"] for h in r["history"]] for r in runs)
    np.testing.assert_allclose(a, b, rtol=2e-4)
    assert [h["val_acc"] for h in runs[0]["history"]] == pytest.approx([h["val_acc"] for h in runs[1]["history"]],
                                                                        abs=0.021)


def test_the_kernel_wrapper_refuses_arrays_it_would_misread():
    """The C code reads and writes in place: a wrong shape, dtype or layout is a ValueError, not memory damage."""
    net = native.EdgeNet(1, [np.eye(3)], np.zeros(2), 1.0, 0, [(np.ones((4, 7)), np.zeros(4), np.full(4, -1))])
    rel, h = np.zeros((5, 3), np.float32), np.zeros((5, net.h_size), np.float32)
    for bad in (dict(rel=rel.astype(np.float64), h=h), dict(rel=rel, h=h[:4]), dict(rel=rel, h=np.asfortranarray(h)),
                dict(rel=rel, h=h, dh=h), dict(rel=rel, h=None), dict(rel=rel, h=h, edge=np.zeros((5, 1), np.float32))):
        args = {"edge": None, **bad}
        with pytest.raises(ValueError):
            native.edge_mlp(net, args.pop("rel"), args.pop("edge"), **args)


def _aggregate_torch(h, f, idx):
    b, m, k, hs = h.shape
    return torch.bmm(h.reshape(b * m, k, hs).transpose(1, 2), gather(f, idx).reshape(b * m, k, f.shape[-1]))


@needs_cc
@pytest.mark.parametrize("b,m,n,k,hs,c", [(1, 1, 1, 1, 1, 1), (2, 5, 9, 3, 19, 7), (3, 16, 40, 10, 19, 8),
                                          (2, 12, 12, 10, 5, 9), (2, 32, 128, 10, 19, 45), (1, 8, 32, 4, 22, 189)])
def test_the_compiled_aggregation_equals_gather_and_bmm(b, m, n, k, hs, c):
    """agg = sum_j h_j^T f[idx_j] and both gradients (h, f) as torch's gather + bmm gives them, for feature
    widths below, at and above the vector width, with repeated neighbours (scatter-adds that collide)."""
    gen = torch.Generator().manual_seed(b * 100 + c)
    h = torch.randn(b, m, k, hs, generator=gen, requires_grad=True)
    f = torch.randn(b, n, c, generator=gen, requires_grad=True)
    idx = torch.randint(0, n, (b, m, k), generator=gen)
    idx[..., -1] = idx[..., 0]  # the same source twice in one node
    grad = torch.randn(b * m, hs, c, generator=gen)
    got = fused.aggregate(h, f, idx)
    ref = _aggregate_torch(h, f, idx)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    ref_grads = torch.autograd.grad(ref, [h, f], grad)
    for a, r in zip(torch.autograd.grad(got, [h, f], grad), ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    # only the gradient that is asked for (a block's input features need none in the first block)
    (dh,) = torch.autograd.grad(fused.aggregate(h, f.detach(), idx), [h], grad)
    torch.testing.assert_close(dh, ref_grads[0], rtol=1e-5, atol=1e-5)


@needs_cc
def test_the_aggregation_agrees_across_instruction_sets_and_threads():
    gen = torch.Generator().manual_seed(0)
    h, f = torch.randn(5 * 20, 10, 19, generator=gen), torch.randn(5, 50, 45, generator=gen)
    idx = torch.randint(0, 50, (5, 20, 10), generator=gen)
    g = torch.randn(100, 19, 45, generator=gen)
    results = []
    for isa, threads in ((1, 1), (1, 2), (1, 3), (0, 1)):
        agg, dh, df = torch.empty(100, 19, 45), torch.empty_like(h), torch.zeros_like(f)
        native.aggregate(h.numpy(), f.numpy(), idx.numpy(), agg=agg.numpy(), threads=threads, isa=isa)
        native.aggregate(h.numpy(), f.numpy(), idx.numpy(), grad=g.numpy(), dh=dh.numpy(), df=df.numpy(),
                         threads=threads, isa=isa)
        results.append((agg, dh, df))
    for other in results[1:3]:  # one cloud per job, in node order: the thread count changes no bit
        assert all(torch.equal(x, y) for x, y in zip(results[0], other))
    for x, y in zip(results[0], results[3]):  # baseline loops: another vector width, same sums to rounding
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_the_aggregation_wrapper_refuses_what_it_would_misread():
    h, f = np.zeros((6, 4, 3), np.float32), np.zeros((2, 5, 7), np.float32)
    idx, agg = np.zeros((2, 3, 4), np.int64), np.zeros((6, 3, 7), np.float32)
    for bad in (dict(h=h.astype(np.float64)), dict(idx=idx.astype(np.int32)), dict(agg=agg[:5]),
                dict(agg=np.asfortranarray(agg)), dict(agg=None), dict(grad=agg)):
        args = {"h": h, "f": f, "idx": idx, "agg": agg, **bad}
        with pytest.raises(ValueError):
            native.aggregate(args.pop("h"), args.pop("f"), args.pop("idx"), **args)
    if HAS_CC:
        idx[1, 2, 3] = 5  # a neighbour outside the cloud: refused before anything is read
        with pytest.raises(ValueError, match="indices"):
            native.aggregate(h, f, idx, agg=agg)


@needs_cc
@pytest.mark.parametrize("c", [7, 45])
def test_the_compiled_aggregation_packs_columns(c):
    """With a column list (the contraction's plan: groups' columns one after the other, some repeated),
    agg holds exactly those columns of the flattened (H, C) sum, and the gradients of repeats add up."""
    gen = torch.Generator().manual_seed(c)
    b, m, n, k, hs = 2, 9, 30, 10, 19
    h = torch.randn(b, m, k, hs, generator=gen, requires_grad=True)
    f = torch.randn(b, n, c, generator=gen, requires_grad=True)
    idx = torch.randint(0, n, (b, m, k), generator=gen)
    cols = torch.cat([torch.randperm(hs * c, generator=gen)[: hs * c // 2], torch.arange(0, hs * c, 3)])
    got = fused.aggregate(h, f, idx, cols)
    ref = _aggregate_torch(h, f, idx).reshape(b * m, -1).index_select(1, cols)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(got, [h, f], grad), torch.autograd.grad(ref, [h, f], grad)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="columns"):
        fused.aggregate(h, f, idx, torch.tensor([hs * c]))
