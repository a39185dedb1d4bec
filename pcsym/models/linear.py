"""Equivariant linear maps between field types, parametrised through escnn's bases (:class:`EquivLinear`).

escnn builds the basis once (:func:`linear_spec`, cached on disk by :mod:`pcsym.models.cache`); the dense
weight is then expanded from the free parameters in one autograd node per step (:class:`_Entries`; the
pairwise torch spelling, :meth:`EquivLinear._flat_blocks`, where that does not apply). Most equivariant weights are
structurally sparse — entries no basis element reaches are zero for every parameter value —, which
:meth:`EquivLinear.column_plan` turns into a product over the non-zero part only (the implicit kernel's
contractions). :class:`FrozenLinear` / :func:`freeze`: the expanded weights as plain matrices (exports).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import fused
from .cache import cached
from .groups import Group, quiet_stdout


def type_size(reps) -> int:
    return int(sum(r.size for r in reps))


def linear_spec(group: Group, in_reps, out_reps, bias: bool = True) -> dict:
    """What an :class:`EquivLinear` needs from escnn, as plain numpy arrays (cacheable on disk).

    escnn's ``BlocksBasisExpansion`` builds W block by block: for every pair (input field type,
    output field type) the coefficients of all occurrences of the pair, (n_out·n_in, d), times the
    pair's sampled basis (d, o·i), scattered into W. Here the scatter is precomputed as ONE gather
    index into the concatenation of those products (plus a trailing zero for entries no basis
    reaches), so the expansion is a few small matmuls, a cat and an index_select.

    Keys: ``names`` (escnn's block names, state_dict compatible), ``basis_<j>`` (d, o, i, 1) per pair,
    ``blocks`` (n_out·n_in per pair), ``index`` (out·in,), ``bias_expansion`` (out, n_bias) or
    absent, ``in_size``, ``out_size``.
    """
    from escnn import nn as enn
    from escnn.nn.modules.basismanager import retrieve_indices

    with quiet_stdout():
        lin = enn.Linear(group.field_type(in_reps), group.field_type(out_reps), bias=bias, initialize=False)
    exp = lin._basisexpansion
    in_size, out_size = type_size(in_reps), type_size(out_reps)
    _, in_idx, _ = retrieve_indices(list(in_reps))
    _, out_idx, _ = retrieve_indices(list(out_reps))
    spec = {"in_size": in_size, "out_size": out_size, "names": [], "blocks": []}
    index = np.full(out_size * in_size, -1, dtype=np.int64)
    offset = 0
    for j, pair in enumerate(exp._representations_pairs):
        name = str(exp._escape_pair(pair))  # as escnn names the submodule
        basis = getattr(exp, f"block_expansion_{name}").sampled_basis.detach().cpu()
        d, o, i = basis.shape[:3]
        basis = basis.float().numpy()  # escnn's shape (d, o, i, 1); the model's basis is float32 (as before)
        rows, cols = out_idx[pair[1]].numpy(), in_idx[pair[0]].numpy()
        n_out, n_in = len(rows) // o, len(cols) // i
        lo, hi = exp._weights_ranges[pair]
        assert hi - lo == n_out * n_in * d and lo == sum(b * s.shape[0] for b, s in
                                                         zip(spec["blocks"], [spec[f"basis_{t}"] for t in range(j)]))
        # V (n_out, n_in, o, i) of this pair -> W[rows[a*o + r], cols[b*i + c]]
        a, b, r, c = np.meshgrid(np.arange(n_out), np.arange(n_in), np.arange(o), np.arange(i), indexing="ij")
        index[rows[a * o + r] * in_size + cols[b * i + c]] = offset + np.arange(a.size).reshape(a.shape)
        offset += a.size
        spec["names"].append(name)
        spec["blocks"].append(n_out * n_in)
        spec[f"basis_{j}"] = basis
    index[index < 0] = offset  # the trailing zero
    spec["index"] = index
    spec["dim"] = int(exp.dimension())
    if lin.bias is not None:
        spec["bias_expansion"] = lin.bias_expansion.detach().cpu().float().numpy()
    return spec



def cached_linear_spec(group: Group, in_reps, out_reps, bias: bool = True) -> dict:
    """:func:`linear_spec`, from the on-disk layer cache (:mod:`pcsym.models.cache`) when it holds it."""
    return cached("linear", group, {"in": list(in_reps), "out": list(out_reps)}, bias,
                  lambda: linear_spec(group, in_reps, out_reps, bias))


class _Block(nn.Module):
    """Holds one pair's ``sampled_basis`` under escnn's state_dict name."""

    def __init__(self, basis: torch.Tensor):
        super().__init__()
        self.register_buffer("sampled_basis", basis)


#: the grouped product's cost model, in multiply-adds per input row: a packed column costs as much as this
#: many (copying it in forward, adding its gradient back in backward)
COLUMN_COST = 32
#: group only where that cost is below this fraction of the dense product's (small gains are eaten by overheads)
GROUPED_MAX_COST = 0.8


class ColumnPlan(NamedTuple):
    cols: torch.Tensor  # (P,) the dense input's column of each packed column
    sizes: list  # packed columns of each group (consecutive, in group order)
    rows: list  # per group: the rows of W it computes
    index: list  # per group: W[rows][:, its columns] as indices into EquivLinear's flat blocks
    order: torch.Tensor | None  # output columns (groups' rows, concatenated) -> W's row order; None if the same
    flat_index: torch.Tensor  # the groups' indices concatenated (all their entries in one gather)


def plan_columns(live: torch.Tensor, index: torch.Tensor) -> ColumnPlan | None:
    """A :class:`ColumnPlan` for a W whose possibly non-zero entries are ``live`` (out, in) and whose
    entries come from flat-block ``index`` (out, in): rows grouped by their exact live columns, then
    groups merged greedily while that lowers sum(rows * columns + COLUMN_COST * columns); None when the
    result is not below GROUPED_MAX_COST of the dense out * in."""
    mask = live.cpu().numpy()
    patterns, which = np.unique(mask, axis=0, return_inverse=True)
    groups = [(np.flatnonzero(which.reshape(-1) == g), pattern) for g, pattern in enumerate(patterns)]
    cost = lambda rows, cols: len(rows) * int(cols.sum()) + COLUMN_COST * int(cols.sum())
    while len(groups) > 1:
        gain, i, j = max((cost(*groups[i]) + cost(*groups[j]) - cost(np.union1d(groups[i][0], groups[j][0]),
                                                                      groups[i][1] | groups[j][1]), i, j)
                         for i in range(len(groups)) for j in range(i + 1, len(groups)))
        if gain <= 0:
            break
        groups[i] = (np.union1d(groups[i][0], groups[j][0]), groups[i][1] | groups[j][1])
        del groups[j]
    if sum(cost(*g) for g in groups) >= GROUPED_MAX_COST * mask.size:
        return None
    dev = index.device
    rows = [torch.as_tensor(r, dtype=torch.long, device=dev) for r, _ in groups]
    cols = [torch.as_tensor(np.flatnonzero(c), dtype=torch.long, device=dev) for _, c in groups]
    order = torch.cat(rows).argsort()
    entries = [index[r][:, c].reshape(-1) for r, c in zip(rows, cols)]
    return ColumnPlan(torch.cat(cols), [len(c) for c in cols], rows, entries,
                      None if torch.equal(order, torch.arange(len(order), device=dev)) else order, torch.cat(entries))


def _term_expansion() -> bool:
    """Whether :class:`_Entries` expands the weights now (not while tracing or scripting an export, not inside
    :func:`pcsym.models.fused.torch_spelling`: FLOP counts see the per-pair products there)."""
    return not (fused._off[0] or torch.jit.is_tracing() or torch.jit.is_scripting())


class _Entries(torch.autograd.Function):
    """W's entries from the free parameters as ONE autograd node: entry e = sum_t theta[P_t[e]] * V_t[e],
    t < the layer's largest basis size d (mostly 1), with P_t, V_t composed once per layout from the pairs'
    bases and the gather index (:meth:`EquivLinear._terms`). The pairwise spelling (coefficients @ basis per
    pair, cat, gather) is ~20 torch ops and autograd nodes per layer for a few ten thousand multiply-adds;
    this is d takes and multiplies forward, d multiplies and index_adds backward. Same values up to float
    rounding (the same products, summed over the basis in the same order)."""

    @staticmethod
    def forward(ctx, weight, terms):
        out = None
        for P, V in terms:
            t = weight.take(P).mul_(V)
            out = t if out is None else out.add_(t)
        ctx.terms, ctx.n = terms, weight.numel()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        dtheta = grad.new_zeros(ctx.n)
        for P, V in ctx.terms:
            dtheta.index_add_(0, P, grad * V)
        return dtheta, None


class EquivLinear(nn.Module):
    """G-equivariant linear map between two field types: y = W x + b with W in escnn's basis.

    The weight matrix is expanded from the free parameters every training step (see
    :func:`linear_spec`: per-pair matmuls and one precomputed gather) and cached in eval mode.
    The state_dict is escnn's (``weight``, ``bias``, ``expansion.block_expansion_<pair>.sampled_basis``),
    so checkpoints written with escnn's expansion load unchanged. Initialisation is a cheap
    variance-preserving rescaling (escnn's generalised He init can take minutes for big layers).
    """

    def __init__(self, group: Group, in_reps, out_reps, bias: bool = True, gain: float = 1.0, spec: dict | None = None):
        super().__init__()
        if spec is None:
            spec = cached_linear_spec(group, in_reps, out_reps, bias)
        self.in_size, self.out_size = int(spec["in_size"]), int(spec["out_size"])
        self.expansion = nn.Module()
        self._pairs = []  # (submodule name, first weight, blocks, d)
        start = 0
        for j, (name, blocks) in enumerate(zip(spec["names"], spec["blocks"])):
            basis = torch.as_tensor(np.asarray(spec[f"basis_{j}"]), dtype=torch.float32).clone()
            self.expansion.add_module(f"block_expansion_{name}", _Block(basis))
            d = basis.shape[0]
            self._pairs.append((f"block_expansion_{name}", start, int(blocks), d))
            start += int(blocks) * d
        assert start == int(spec["dim"])
        self.register_buffer("w_index", torch.as_tensor(np.asarray(spec["index"]), dtype=torch.long).clone(),
                             persistent=False)
        self.register_buffer("w_index_perm", None, persistent=False)
        self.weight = nn.Parameter(torch.randn(start))
        if "bias_expansion" in spec:
            be = torch.as_tensor(np.asarray(spec["bias_expansion"]), dtype=torch.float32).clone()
            self.register_buffer("bias_expansion", be, persistent=False)
            self.bias = nn.Parameter(torch.zeros(be.shape[1]))
        else:
            self.bias_expansion = None
            self.bias = None
        # scale so that W has variance gain/fan_in, like torch's default; the torch spelling, as this runs once
        # (the one-node expansion would build and keep terms for a layout training may never read)
        with torch.no_grad():
            w = self._flat_blocks().index_select(0, self.w_index)
            self.weight.mul_(math.sqrt(gain / max(self.in_size, 1)) / w.std().clamp_min(1e-12))
        self._cache = None

    def permute_columns(self, perm: torch.Tensor) -> None:
        """Also provide W with its columns moved: ``expand(permuted=True)`` gives Wp with
        Wp[:, perm] = W, through the same single gather (no extra scatter per step)."""
        idx = self.w_index.view(self.out_size, self.in_size)
        permuted = torch.empty_like(idx)
        permuted[:, perm] = idx
        self.w_index_perm = permuted.reshape(-1)

    def _terms(self, index: torch.Tensor, dtype: torch.dtype) -> list:
        """[(P_t, V_t)] of :class:`_Entries` for the flat-block entries ``index``, in ``dtype`` on the weight's
        device (built once per index tensor and dtype; dropped when the module's tensors move or reload)."""
        cache = self.__dict__.setdefault("_term_cache", {})
        key = (id(index), dtype, self.weight.device)
        hit = cache.get(key)
        if hit is not None and hit[0] is index:
            return hit[1]
        dmax = max(d for *_, d in self._pairs)
        total = sum(blocks * getattr(self.expansion, name).sampled_basis[0].numel() for name, _, blocks, _ in self._pairs)
        P = torch.zeros(dmax, total + 1, dtype=torch.long)  # the last entry: the structural zero (V = 0)
        V = torch.zeros(dmax, total + 1, dtype=torch.float64)
        f0 = 0
        for name, start, blocks, d in self._pairs:
            basis = getattr(self.expansion, name).sampled_basis.detach().cpu().double().reshape(d, -1)
            s = basis.shape[1]
            f1 = f0 + blocks * s
            for t in range(d):  # flat entry (b, j) of the pair = sum_t theta[start + b*d + t] * basis[t, j]
                P[t, f0:f1] = (start + torch.arange(blocks) * d + t).repeat_interleave(s)
                V[t, f0:f1] = basis[t].repeat(blocks)
            f0 = f1
        idx = index.cpu()
        terms = [(P[t, idx].to(self.weight.device), V[t, idx].to(self.weight.device, dtype)) for t in range(dmax)]
        cache[key] = (index, terms)
        return terms

    def _entries(self, index: torch.Tensor) -> torch.Tensor:
        """``_flat_blocks()[index]``: through :class:`_Entries` where it applies, else in torch."""
        if _term_expansion():
            return _Entries.apply(self.weight, self._terms(index, self.weight.dtype))
        return self._flat_blocks().index_select(0, index)

    def _flat_blocks(self) -> torch.Tensor:
        parts = []
        for name, start, blocks, d in self._pairs:
            basis = getattr(self.expansion, name).sampled_basis.to(self.weight.dtype)
            coeff = self.weight[start : start + blocks * d].view(blocks, d)
            parts.append((coeff @ basis.reshape(d, -1)).reshape(-1))
        parts.append(self.weight.new_zeros(1))
        return torch.cat(parts)

    def _expand_weight(self, permuted: bool = False) -> torch.Tensor:
        index = self.w_index_perm if permuted else self.w_index
        return self._entries(index).view(self.out_size, self.in_size)

    def expand(self, permuted: bool = False):
        """Dense (W, b): W (out, in), b (out,) or None; ``permuted``: columns moved by :meth:`permute_columns`."""
        key = (self.weight._version, None if self.bias is None else self.bias._version, self.weight.dtype, permuted)
        frozen = not self.training and not torch.is_grad_enabled()
        if frozen and self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        w = self._expand_weight(permuted)
        b = None if self.bias is None else self.bias_expansion.to(w.dtype) @ self.bias
        if frozen:
            self._cache = (key, w, b)
        return w, b

    def column_plan(self, permuted: bool = False) -> "ColumnPlan | None":
        """How to compute x @ W.T on W's structurally non-zero part only (entries no basis element reaches
        are zero for every parameter value): W's rows grouped by the columns they can read, and x packed
        to those columns group after group (a column may serve several groups). None when the dense
        product is about as cheap (:func:`plan_columns`). Computed once per layout and device."""
        cache = self.__dict__.setdefault("_column_plans", {})
        key = (permuted, self.w_index.device)
        if key not in cache:
            live = [getattr(self.expansion, name).sampled_basis.reshape(d, -1).abs().sum(0).gt(0).repeat(blocks)
                    for name, _, blocks, d in self._pairs]
            live = torch.cat(live + [torch.zeros(1, dtype=torch.bool, device=self.w_index.device)])
            index = (self.w_index_perm if permuted else self.w_index).view(self.out_size, self.in_size)
            cache[key] = plan_columns(live[index], index)
        return cache[key]

    def packed_matmul(self, x: torch.Tensor, plan: "ColumnPlan") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x_dense @ W.T, b) from x packed by ``plan`` (its columns ``plan.cols`` of the dense input): one
        smaller matmul per row group — the dense sums without their zero terms."""
        key = (self.weight._version, None if self.bias is None else self.bias._version, self.weight.dtype, id(plan))
        frozen = not self.training and not torch.is_grad_enabled()
        if frozen and self._cache is not None and self._cache[0] == key:
            ws, b = self._cache[1], self._cache[2]
        else:
            entries = self._entries(plan.flat_index).split([len(index) for index in plan.index])
            ws = [e.view(len(rows), -1) for rows, e in zip(plan.rows, entries)]
            b = None if self.bias is None else self.bias_expansion.to(self.weight.dtype) @ self.bias
            if frozen:
                self._cache = (key, ws, b)
        out = torch.cat([part @ w.t() for part, w in zip(x.split(plan.sizes, dim=1), ws)], dim=1)
        return (out if plan.order is None else out.index_select(1, plan.order)), b

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # escnn's index buffers (int64) of old checkpoints: rebuilt here, never needed
        for key in [k for k in state_dict if k.startswith(prefix + "expansion.")
                    and ("in_indices_" in k or "out_indices_" in k)]:
            del state_dict[key]
        self.__dict__.pop("_term_cache", None)  # the bases may be replaced
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._cache = None
        self.__dict__.pop("_term_cache", None)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.expand()
        return nn.functional.linear(x, w, b)


class FrozenLinear(nn.Module):
    """An :class:`EquivLinear` with its weights expanded once: plain torch, exportable."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None):
        super().__init__()
        self.register_buffer("w", w.detach().clone())
        self.register_buffer("b", None if b is None else b.detach().clone())

    def expand(self):
        return self.w, self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.w, self.b)


def freeze(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every EquivLinear replaced by its expanded FrozenLinear."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, EquivLinear):
                with torch.no_grad():
                    setattr(parent, name, FrozenLinear(*child.expand()))
    return model
