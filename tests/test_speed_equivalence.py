"""The training-speed rewrites compute the same maths (issue 12): the gather-based EquivLinear
expansion equals escnn's BlocksBasisExpansion, the conv's permuted weight equals the scatter it
replaces, and the on-disk layer cache gives identical models (and survives damaged entries)."""

import numpy as np
import pytest
import torch

from pcsym.config import ModelConfig
from pcsym.models.groups import resolve
from pcsym.models import cache
from pcsym.models.classifier import build_model
from pcsym.models.layers import EquivLinear, ImplicitKernelConv, channel_types, channels_for, private_copy

SMALL = dict(class_names=["a", "b", "c"], widths=(8, 16), strides=(2, 2), points=64, invariant_dims=8, head_dims=8)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PCSYM_CACHE_DIR", str(tmp_path / "c"))
    return tmp_path / "c" / "layers"


def _escnn_expansion(group, in_reps, out_reps):
    from escnn import nn as enn

    lin = enn.Linear(group.field_type(in_reps), group.field_type(out_reps), bias=True, initialize=False)
    return private_copy(lin._basisexpansion).double(), lin.bias_expansion.double()


@pytest.mark.parametrize("name", ["o2", "so3", "m"])
def test_equiv_linear_expansion_equals_escnn(name, monkeypatch):
    monkeypatch.setenv("PCSYM_CACHE_DIR", "off")
    torch.manual_seed(0)
    group = resolve(name)
    pre, act, _ = channel_types(group, channels_for(group, 12))
    in_reps = act + [group.trivial, group.vector]  # mixed, non-contiguous field types
    lin = EquivLinear(group, in_reps, pre).double()
    exp, bias_exp = _escnn_expansion(group, in_reps, pre)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.normal_()
        w, b = lin.expand()
        ref = exp(lin.weight).reshape(lin.out_size, lin.in_size)
    assert (w - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert torch.allclose(b, bias_exp @ lin.bias, atol=1e-12)
    # gradients flow to every parameter exactly as through escnn's expansion
    g = torch.randn_like(ref)
    (ga,) = torch.autograd.grad((lin.expand()[0] * g).sum(), lin.weight)
    (gb,) = torch.autograd.grad((exp(lin.weight).reshape_as(g) * g).sum(), lin.weight)
    assert (ga - gb).abs().max() <= 1e-6 * gb.abs().max()


def test_conv_permuted_weight_equals_scatter(monkeypatch):
    monkeypatch.setenv("PCSYM_CACHE_DIR", "off")
    torch.manual_seed(0)
    group = resolve("o2")
    _, act, _ = channel_types(group, channels_for(group, 12))
    pre, _, _ = channel_types(group, channels_for(group, 20))
    conv = ImplicitKernelConv(group, act, pre)
    w, b = conv.contract.expand()
    old = torch.zeros_like(w)
    old[:, conv.perm] = w  # what dense_weight did before
    wn, bn = conv.dense_weight()
    assert torch.equal(wn, old) and torch.equal(bn, b)


def test_state_dict_keys_unchanged_and_old_index_buffers_load(cache_dir):
    torch.manual_seed(0)
    model = build_model(ModelConfig(group="o2", **SMALL))
    sd = model.state_dict()
    assert any(k.endswith(".sampled_basis") and ".expansion.block_expansion_" in k for k in sd)
    # a checkpoint that still carries escnn's int64 index buffers loads
    extra = dict(sd)
    extra["blocks.0.conv.contract.expansion.in_indices_('a', 'b')"] = torch.arange(3)
    torch.manual_seed(1)
    other = build_model(ModelConfig(group="o2", **SMALL))
    missing, unexpected = other.load_state_dict(extra, strict=False)
    assert not missing and not unexpected


def _build(seed=0, group="o2"):
    torch.manual_seed(seed)
    return build_model(ModelConfig(group=group, **SMALL))


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba if ba[k] is not None)


def test_cache_hit_gives_identical_model(cache_dir, monkeypatch):
    cold = _build()
    files = sorted(cache_dir.glob("*.npz"))
    assert files, "the build wrote no cache entries"
    warm = _build()
    _same_model(cold, warm)
    monkeypatch.setenv("PCSYM_CACHE_DIR", "off")
    _same_model(cold, _build())
    pos = torch.randn(2, 64, 3)
    nrm = torch.nn.functional.normalize(torch.randn(2, 64, 3), dim=-1)
    with torch.no_grad():
        assert torch.equal(cold.eval()(pos, nrm), warm.eval()(pos, nrm))


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_corrupt_cache_entry_is_rebuilt(cache_dir, damage):
    ref = _build()
    files = sorted(cache_dir.glob("*.npz"))
    for f in files:
        data = f.read_bytes()
        f.write_bytes({"garbage": b"not an npz" * 10, "truncate": data[: len(data) // 2], "empty": b""}[damage])
    _same_model(ref, _build())
    for f in files:  # rewritten, readable again
        assert cache._decode(f)["dim"] > 0


def test_cache_key_depends_on_group_and_reps():
    o2, so3 = resolve("o2"), resolve("so3", 2)
    k = cache.entry_key("linear", o2, {"in": [o2.trivial], "out": [o2.vector]}, True)
    assert k != cache.entry_key("linear", o2, {"in": [o2.vector], "out": [o2.trivial]}, True)
    assert k != cache.entry_key("linear", o2, {"in": [o2.trivial], "out": [o2.vector]}, False)
    assert k != cache.entry_key("linear", so3, {"in": [so3.trivial], "out": [so3.vector]}, True)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PCSYM_CACHE_DIR", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x" / "layers"
    monkeypatch.setenv("PCSYM_CACHE_DIR", "off")
    assert cache.cache_dir() is None
    monkeypatch.delenv("PCSYM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "pcsym" / "layers"


def test_unwritable_cache_is_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("PCSYM_CACHE_DIR", str(blocker))
    model = _build()
    assert np.isfinite(sum(float(p.sum()) for p in model.parameters()))


@pytest.mark.parametrize("name", ["so3", "so2", "o2", "inv"])
def test_gated_nonlinearity_matches_the_reference_spelling(name):
    # FieldNonlinearity's fast path (0/1 gate spread matmul, ELU on scalar columns, hand-written backward)
    # computes where(is_scalar, elu(y), y * sigmoid(gate)[gate_of]) and its autograd gradient
    from pcsym.models.layers import FieldNonlinearity

    torch.manual_seed(0)
    group = resolve(name)
    pre, act, kind = channel_types(group, 3)
    f = FieldNonlinearity(act, kind).double()
    x = torch.randn(4, 6, sum(r.size for r in pre), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,))
    y = x[..., : f.out_size]
    gates = torch.sigmoid(x[..., f.out_size:]).index_select(-1, f.gate_of) if f.n_gates else 1.0
    ref = torch.where(f.is_scalar, torch.nn.functional.elu(y), y * gates)
    w = torch.randn_like(ref)
    (grad_ref,) = torch.autograd.grad((ref * w).sum(), x)
    out = f(x)
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    with torch.no_grad():
        out_eval = f(x)
    for a in (out, out_eval):
        assert torch.allclose(a, ref, rtol=0, atol=1e-15)
    assert torch.allclose(grad, grad_ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("group_name", ["so3", "o2", "so2", "o3", "m", "trivial"])
def test_contractions_skip_only_structural_zeros(group_name):
    """The contractions' column plans leave out only entries of W no basis element reaches (zero for any
    parameters), and the packed product equals the dense one (values and gradients). The continuous groups'
    invariant layer reads under half of its columns; the finite groups' regular fields pair with every
    field, so their products stay dense."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(group=group_name, **dict(SMALL, widths=(16, 64), invariant_dims=64)))
    planned = 0
    for block in model.blocks:
        lin = block.conv.contract
        plan = lin.column_plan(permuted=True)
        if plan is None:
            continue
        planned += 1
        with torch.no_grad():
            lin.weight.normal_()
        w, b = lin.expand(permuted=True)
        covered = torch.zeros_like(w, dtype=torch.bool)
        for rows, (start, size) in zip(plan.rows, zip(np.cumsum([0] + plan.sizes[:-1]), plan.sizes)):
            covered[rows[:, None], plan.cols[start:start + size][None, :]] = True
        assert w[~covered].abs().max() == 0  # what the plan leaves out is zero
        assert sorted(torch.cat(plan.rows).tolist()) == list(range(lin.out_size))  # every row exactly once
        x = torch.randn(50, lin.in_size, requires_grad=True)
        got, got_b = lin.packed_matmul(x.index_select(1, plan.cols), plan)
        ref = x @ w.t()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(got_b, b)
        g = torch.randn_like(ref)
        for a, r in zip(torch.autograd.grad(got, [x, lin.weight], g), torch.autograd.grad(ref, [x, lin.weight], g)):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    assert (planned > 0) == (group_name in ("so3", "o2", "so2", "o3"))
    last = model.blocks[-1].conv.contract.column_plan(permuted=True)
    if planned:  # an invariant output pairs h and f fields of matching types only
        assert len(last.sizes) == 1 and len(last.cols) < 0.5 * model.blocks[-1].conv.contract.in_size



def test_the_column_plan_groups_rows_by_the_columns_they_read(monkeypatch):
    from pcsym.models import linear as layers

    live = torch.zeros(6, 40, dtype=torch.bool)
    live[[0, 2, 4], :10] = True  # rows 0, 2, 4 read columns 0-9; rows 1, 3, 5 read 10-39
    live[[1, 3, 5], 10:] = True
    index = torch.arange(240).view(6, 40)
    monkeypatch.setattr(layers, "COLUMN_COST", 0)
    plan = layers.plan_columns(live, index)
    starts = np.cumsum([0] + plan.sizes[:-1])
    groups = {tuple(r.tolist()): plan.cols[a:a + n].tolist() for r, a, n in zip(plan.rows, starts, plan.sizes)}
    assert groups == {(0, 2, 4): list(range(10)), (1, 3, 5): list(range(10, 40))}
    for rows, (a, n), idx in zip(plan.rows, zip(starts, plan.sizes), plan.index):
        assert idx.tolist() == index[rows][:, plan.cols[a:a + n]].reshape(-1).tolist()
    assert torch.cat(plan.rows)[plan.order].tolist() == list(range(6))
    monkeypatch.setattr(layers, "COLUMN_COST", 100)  # columns too dear to pack: the dense product
    assert layers.plan_columns(live, index) is None


@pytest.mark.parametrize("group_name", ["so3", "o2", "m"])
def test_one_node_expansion_equals_the_pairwise_spelling(group_name):
    """EquivLinear's expansion as one autograd node (linear._Entries: per entry sum_t theta[P_t] * V_t) gives the
    pairwise spelling's entries (coefficients @ basis per pair, cat, gather) and the same parameter gradients,
    for every layout a step reads (dense W, the permuted W, a column plan's groups), in float32 and float64;
    converting the model rebuilds its terms in the new dtype."""
    from pcsym.models.linear import _Entries

    torch.manual_seed(0)
    model = build_model(ModelConfig(group=group_name, **dict(SMALL, widths=(16, 32), invariant_dims=32)))
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-13)):
        model = model.to(dtype)
        checked = 0
        for lin in (m for m in model.modules() if isinstance(m, EquivLinear)):
            with torch.no_grad():
                lin.weight.normal_()
            indices = [lin.w_index] + ([lin.w_index_perm] if lin.w_index_perm is not None else [])
            plan = lin.column_plan(permuted=True) if lin.w_index_perm is not None else None
            indices += [plan.flat_index] if plan is not None else []
            for index in indices:
                got, ref = lin._entries(index), lin._flat_blocks().index_select(0, index)
                assert got.dtype == dtype and type(got.grad_fn).__name__ == _Entries.__name__ + "Backward"
                assert (got - ref).abs().max() <= tol * ref.abs().max()
                g = torch.randn_like(ref)
                (ga,) = torch.autograd.grad(got, lin.weight, g)
                (gb,) = torch.autograd.grad(ref, lin.weight, g)
                assert (ga - gb).abs().max() <= tol * gb.abs().max()
                checked += 1
        assert checked >= 3 * len(model.blocks)
