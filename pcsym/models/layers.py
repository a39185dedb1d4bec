"""Equivariant building blocks in plain torch, parametrised through escnn's equivariant bases.

escnn is used only to *build* things (representations, bases of equivariant linear maps,
change-of-basis matrices); every forward pass is ordinary torch on (..., C) tensors, so models
can be exported to TorchScript and run without escnn.

A *field type* here is a list of escnn representations (one per field); features are laid out
as the concatenation of the fields, last dimension.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..geometry.graph import gather
from . import fused, shards
from .basis import FastBasisKernelConv, harmonic_polynomials, init_unit_output_variance
from .cache import cached
from .contraction import KernelContraction
from .groups import Group, private_copy, quiet_stdout  # noqa: F401  (private_copy re-exported)
from .linear import EquivLinear, FrozenLinear, freeze, linear_spec, type_size  # noqa: F401  (re-exported)


def direct_sum_matrix(reps, g) -> np.ndarray:
    """Block-diagonal matrix of the field type ``reps`` at group element g."""
    n = type_size(reps)
    out = np.zeros((n, n))
    p = 0
    for r in reps:
        out[p : p + r.size, p : p + r.size] = r(g)
        p += r.size
    return out


class FieldNonlinearity(nn.Module):
    """Equivariant nonlinearity for a channel layout built by :func:`channel_types`.

    * ``regular`` fields: pointwise ELU (exact for permutation representations).
    * ``gated``: trivial fields get ELU; every non-trivial field is multiplied by
      sigmoid(gate), its gate being an extra trivial field appended at the end of the input.
    """

    def __init__(self, act_reps, kind: str):
        super().__init__()
        self.kind = kind
        self.out_size = type_size(act_reps)
        scalar = []
        gate_of = []
        n_gates = 0
        for r in act_reps:
            trivial = kind == "regular" or r.is_trivial()
            scalar += [trivial] * r.size
            gate_of += [0 if trivial else n_gates] * r.size
            n_gates += 0 if trivial else 1
        self.n_gates = n_gates
        self.register_buffer("is_scalar", torch.tensor(scalar, dtype=torch.bool), persistent=False)
        self.register_buffer("gate_of", torch.tensor(gate_of, dtype=torch.long), persistent=False)
        # the same map as where(is_scalar, elu(y), y * sigmoid(g)[gate_of]), spelled with cheap ops (elu and
        # where cost 5-10 multiplications per entry on CPU): gates spread to their channels by a 0/1
        # matmul (zero on scalar channels), ELU only on the scalar channels' columns
        spread = torch.zeros(max(n_gates, 1), self.out_size)
        if n_gates:
            spread[torch.tensor(gate_of)[~torch.tensor(scalar)], torch.arange(self.out_size)[~torch.tensor(scalar)]] = 1.0
        self.register_buffer("gate_spread", spread, persistent=False)
        self.register_buffer("scalar_idx", torch.nonzero(torch.tensor(scalar)).flatten(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x[..., : self.out_size]
        if self.n_gates == 0:
            return nn.functional.elu(y)
        if torch.is_grad_enabled() and x.requires_grad:
            return _GatedElu.apply(x, self.gate_spread.to(x.dtype), self.scalar_idx)
        return _gated_elu(y, _gate(x, self.out_size), self.gate_spread.to(x.dtype), self.scalar_idx)[0]


def _gate(x: torch.Tensor, n: int) -> torch.Tensor:
    """sigmoid of the gate columns x[..., n:], copied out first: on a strided slice torch's sigmoid is
    not vectorised (2.8 ms against 1.1 ms copy included, on block 1's (16, 512, 10, 9) gates)."""
    return torch.sigmoid(x[..., n:].contiguous())


def _gated_elu(y, g, spread, scalar_idx):
    """(output, per-channel gates): y * gates with ELU on the scalar channels instead."""
    gates = (g.reshape(-1, g.shape[-1]) @ spread).view(y.shape)
    out = y * gates
    if scalar_idx.numel():
        out.index_copy_(-1, scalar_idx, nn.functional.elu(y.index_select(-1, scalar_idx)))
    return out, gates


class _GatedElu(torch.autograd.Function):
    """FieldNonlinearity's gated path with a hand-written backward (same values as autograd of the
    where/elu/index_select spelling, checked by gradcheck in the tests), in a third of the time:
    no zero-filled slice gradients, no scatter of the gates' gradient (a transposed matmul with the
    0/1 spread matrix instead), no gradient of the branch ``where`` discards."""

    @staticmethod
    def forward(ctx, x, spread, scalar_idx):
        n = spread.shape[1]
        y, g = x[..., :n], _gate(x, n)
        out, gates = _gated_elu(y, g, spread, scalar_idx)
        ctx.save_for_backward(y, g, gates, spread, scalar_idx)
        return out

    @staticmethod
    def backward(ctx, grad):
        y, g, gates, spread, scalar_idx = ctx.saved_tensors
        n = y.shape[-1]
        dx = grad.new_empty(grad.shape[:-1] + (n + g.shape[-1],))
        dy = torch.mul(grad, gates, out=dx[..., :n])
        if scalar_idx.numel():
            dy.index_copy_(-1, scalar_idx, torch.ops.aten.elu_backward(
                grad.index_select(-1, scalar_idx), 1.0, 1, 1, False, y.index_select(-1, scalar_idx)))
        gy = (grad * y).reshape(-1, n)
        dg = (spread @ gy.t()).t().reshape(g.shape)  # (gates, n) @ (n, E): far faster than (E, n) @ (n, gates)
        torch.mul(dg, g * (1.0 - g), out=dx[..., n:])
        return dx, None, None


def channel_types(group: Group, channels: int):
    """(pre-activation reps, activation reps, kind) for ``channels`` copies of a hidden channel."""
    block, kind = group.hidden_fields()
    act = list(block) * channels
    pre = list(act)
    if kind == "gated":
        pre += [group.trivial] * sum(1 for r in act if not r.is_trivial())
    return pre, act, kind


def channels_for(group: Group, dims: int) -> int:
    """Number of channels whose activation has about ``dims`` dimensions (at least 1)."""
    block, _ = group.hidden_fields()
    return max(1, int(round(dims / type_size(block))))


def invariant_projector(reps) -> np.ndarray:
    """Orthogonal projector onto the G-invariant subspace of the field type (block diagonal)."""
    n = type_size(reps)
    P = np.zeros((n, n))
    p = 0
    for r in reps:
        Q = r.change_of_basis
        mask = []
        for irr_id in r.irreps:
            irr = r.group.irrep(*irr_id)
            mask += [1.0 if irr.is_trivial() else 0.0] * irr.size
        P[p : p + r.size, p : p + r.size] = Q @ np.diag(mask) @ Q.T
        p += r.size
    return P


class EquivBatchNorm(nn.Module):
    """Batch normalisation that commutes with the group action, for any field type.

    Means are taken only in the invariant subspace (projector P); each field is divided by its
    root-mean-square norm and scaled by a learned per-field factor; the bias lives in the
    invariant subspace. Statistics are over all points of all clouds in the batch.
    """

    def __init__(self, reps, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        P = invariant_projector(reps)
        field = np.concatenate([[i] * r.size for i, r in enumerate(reps)])
        self.n_fields = len(reps)
        self.register_buffer("P", torch.tensor(P, dtype=torch.float32), persistent=False)
        self.register_buffer("field", torch.tensor(field, dtype=torch.long), persistent=False)
        self.register_buffer("field_size", torch.tensor([r.size for r in reps], dtype=torch.float32), persistent=False)
        self.has_invariant = bool(np.abs(P).sum() > 0)
        self.register_buffer("running_mean", torch.zeros(P.shape[0]))
        self.register_buffer("running_var", torch.ones(len(reps)))
        self.weight = nn.Parameter(torch.ones(len(reps)))
        self.bias = nn.Parameter(torch.zeros(P.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        P = self.P.to(x.dtype)
        if self.training:
            mean, sq_channel = self.moments(x, P)
            xc = x - mean
            sq = torch.zeros(self.n_fields, dtype=x.dtype, device=x.device).index_add_(0, self.field, sq_channel)
            var = sq / self.field_size.to(x.dtype)
            if shards.updates_running_stats():  # one shard of a sharded batch (the statistics are the batch's)
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        else:
            scale, shift = self.eval_affine()
            return (x * scale.to(x.dtype) + shift.to(x.dtype)).reshape(shape)
        out = xc * self._channel_scale(var) + self.bias.to(x.dtype) @ P
        return out.reshape(shape)

    def moments(self, x: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel: the batch mean projected on the invariant subspace, and the mean square about
        it. Over the whole batch when it runs in shards on threads (pcsym.models.shards: one all-reduce)."""
        if shards.current() is not None:
            return shards.moments(x, P if self.has_invariant else None)
        mean = self.batch_mean(x) @ P if self.has_invariant else torch.zeros_like(x[0])
        return mean, self.batch_mean((x - mean).pow(2))

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over the batch (rows); over every process of a torchrun job in the synchronised
        subclass (pcsym.training.distributed)."""
        return t.mean(0)

    def _channel_scale(self, var: torch.Tensor) -> torch.Tensor:
        """Per-channel factor weight / sqrt(var + eps) of each channel's field."""
        return (self.weight.to(var.dtype) / torch.sqrt(var + self.eps)).index_select(0, self.field)

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map as x * scale + shift (per channel), from the running statistics."""
        scale = self._channel_scale(self.running_var)
        return scale, self.bias @ self.P - self.running_mean * scale


class HarmonicEmbedding(nn.Module):
    """Embedding of relative positions: harmonic polynomials of degree <= lmax (transforming as
    O(3)'s ``bl_sphere_representation`` restricted to G) followed by Gaussian radial features.

    Uses escnn's change-of-basis matrices (taken once at build time) for the recursion
    Y_l = C_l (Y_{l-1} ⊗ x), so the forward pass is plain torch.
    """

    def __init__(self, group: Group, lmax: int = 2, n_radial: int = 4, max_radius: float = ModelConfig.radial_max):
        super().__init__()
        from escnn.kernels.harmonic_polynomial_r3 import HarmonicPolynomialR3Generator

        with quiet_stdout():
            gen = HarmonicPolynomialR3Generator(lmax)
        self.lmax = lmax
        for l in range(1, lmax + 1):
            self.register_buffer(f"cob_{l}", getattr(gen, f"cob_{l}").clone(), persistent=False)
        self.register_buffer("centres", torch.linspace(0.0, max_radius, n_radial), persistent=False)
        self.width = max_radius / max(n_radial - 1, 1)
        self.reps = [group.harmonic_rep(lmax)] + [group.trivial] * n_radial
        self.size = type_size(self.reps)

    def forward(self, rel: torch.Tensor) -> torch.Tensor:
        feats = harmonic_polynomials(rel, [getattr(self, f"cob_{l}") for l in range(1, self.lmax + 1)])
        r = rel.norm(dim=-1, keepdim=True)
        feats.append(torch.exp(-((r - self.centres.to(rel.dtype)) / self.width) ** 2))
        return torch.cat(feats, dim=-1)


class ImplicitKernelConv(KernelContraction):
    """Steerable point convolution with an implicit kernel (Zhdanov, Hoffmann, Cesa 2023).

    The kernel k(x_i − x_j) is a G-equivariant MLP of the harmonic embedding of the relative
    position whose output transforms as ρ_out ⊗ ρ_in*. Its last layer is linear, so
    k(x) = W · h(x) with h the MLP's last hidden features (plus a constant, the kernel's bias)
    and W an equivariant map h -> Hom(ρ_in, ρ_out). By the Hom-adjunction W is the same as an
    equivariant map ρ_h ⊗ ρ_in -> ρ_out, hence

        out_i = W · mean_j ( h(x_i − x_j) ⊗ f_j )

    which is one batched matmul over neighbours and one dense matmul — the per-edge kernel
    matrices are never materialised (:meth:`kernel` builds them, for inspection and tests).
    """

    def __init__(self, group: Group, in_reps, out_reps, kernel_dims: int = 16, kernel_layers: int = 2,
                 lmax: int = 2, n_radial: int = 4, edge_dims: int = 0, edge_vectors: int = 0,
                 radial_max: float = ModelConfig.radial_max):
        super().__init__()
        self.in_size, self.out_size = type_size(in_reps), type_size(out_reps)
        self.embed = HarmonicEmbedding(group, lmax, n_radial, radial_max)
        # edge features appended to the embedding: edge_dims invariant scalars, then edge_vectors vectors
        # (x, y, z columns, acted on like positions)
        self.edge_cols = edge_dims + 3 * edge_vectors
        pre, act, kind = channel_types(group, channels_for(group, kernel_dims))
        mlp, reps = [], self.embed.reps + [group.trivial] * edge_dims + [group.vector] * edge_vectors
        for _ in range(kernel_layers):
            mlp += [EquivLinear(group, reps, pre), FieldNonlinearity(act, kind)]
            reps = act
        self.mlp = nn.Sequential(*mlp)
        self.h_reps = list(reps) + [group.trivial]  # constant field = kernel bias
        self.h_size = type_size(self.h_reps)
        # Field type of h ⊗ f, ordered as the row-major flattening of the outer product (h, f)
        # regrouped into (h-field, f-field) blocks: perm maps block order -> flat order.
        perm = []
        ho = np.cumsum([0] + [r.size for r in self.h_reps])
        fo = np.cumsum([0] + [r.size for r in in_reps])
        for a, ra in enumerate(self.h_reps):
            for b, rb in enumerate(in_reps):
                for i in range(ra.size):
                    for j in range(rb.size):
                        perm.append((ho[a] + i) * self.in_size + fo[b] + j)

        def contract_spec():  # the tensor products (Clebsch-Gordan) are the slow part of a build
            with quiet_stdout():
                tensor_reps = [ra.tensor(rb) for ra in self.h_reps for rb in in_reps]
            return linear_spec(group, tensor_reps, out_reps, True)

        spec = cached("contract", group, {"h": self.h_reps, "in": list(in_reps), "out": list(out_reps)}, True,
                      contract_spec)
        self.contract = EquivLinear(group, None, out_reps, spec=spec)
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.contract.permute_columns(self.perm)

    @classmethod
    def from_config(cls, group: Group, in_reps, out_reps, cfg) -> "ImplicitKernelConv":
        scalars, vectors = EDGE_FIELDS[cfg.edge_features]
        return cls(group, in_reps, out_reps, kernel_dims=cfg.kernel_dims, kernel_layers=cfg.kernel_layers,
                   lmax=cfg.lmax, n_radial=cfg.n_radial, edge_dims=scalars, edge_vectors=vectors,
                   radial_max=cfg.radial_max)

    def kernel_hidden(self, rel: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        h = fused.kernel_hidden(self, rel, edge)  # the compiled kernel where it applies (same maths)
        if h is not None:
            return h
        e = self.embed(rel)
        if self.edge_cols:
            e = torch.cat([e, edge.to(e.dtype)], dim=-1)
        h = self.mlp(e)
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

class BasisKernelConv(nn.Module):
    """The paper's baseline: escnn's group-restricted steerable basis (``R3PointConv``). The reference
    spelling: ``--kernel basis`` builds :class:`pcsym.models.basis.FastBasisKernelConv` (same basis and messages).

    Same interface as :class:`ImplicitKernelConv`; messages are computed by escnn's own basis
    sampler (``R3PointConv.basissampler.compute_messages``) on the same kNN edges, and averaged.
    """

    def __init__(self, group: Group, in_reps, out_reps, max_radius: float = ModelConfig.basis_radius,
                 n_rings: int = ModelConfig.basis_rings, frequencies_cutoff: float = ModelConfig.basis_cutoff):
        super().__init__()
        from escnn import nn as enn

        with quiet_stdout():
            gs = group.gspace
            self.pc = enn.R3PointConv(enn.FieldType(gs, list(in_reps)), enn.FieldType(gs, list(out_reps)),
                                      width=max_radius, n_rings=n_rings, frequencies_cutoff=frequencies_cutoff,
                                      bias=True, initialize=False)
            self.pc = private_copy(self.pc)  # private copy of escnn's shared basis modules
        self.in_size, self.out_size = type_size(in_reps), type_size(out_reps)
        init_unit_output_variance(self, self.pc.weights)

    @classmethod
    def from_config(cls, group: Group, in_reps, out_reps, cfg) -> "BasisKernelConv":
        return cls(group, in_reps, out_reps, cfg.basis_radius, cfg.basis_rings, cfg.basis_cutoff)

    def convolve(self, rel: torch.Tensor, f_src: torch.Tensor, idx: torch.Tensor,
                 edge: torch.Tensor | None = None) -> torch.Tensor:
        return self(rel, gather(f_src, idx), edge)

    def forward(self, rel: torch.Tensor, f_nb: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        b, m, k, _ = rel.shape  # edge features: not supported by this kernel (ModelConfig.validate refuses them)
        msg = self.pc.basissampler.compute_messages(
            self.pc.weights, f_nb.reshape(-1, self.in_size), rel.reshape(-1, 3), conv_first=True)
        out = msg.reshape(b, m, k, self.out_size).mean(2)
        bias = self.pc.expand_bias()
        return out if bias is None else out + bias


#: (invariant scalars, vectors) per edge of each ``ModelConfig.edge_features`` (config.EDGE_FEATURES); their
#: columns, in this order, are :func:`pcsym.models.classifier.edge_features`'
EDGE_FIELDS = {"none": (0, 0), "ppf": (3, 0), "ppf+normals": (3, 2), "ppf-unsigned": (4, 0)}

#: The steerable convolutions by ``ModelConfig.kernel`` name (``config.KERNELS`` lists the same names
#: without importing torch; a test keeps the two equal); each is built with
#: ``cls.from_config(group, in_reps, out_reps, model_config)``. ``basis`` is the fast spelling of
#: :class:`BasisKernelConv` (same basis, parameters and messages; that one stays as the reference).
KERNELS = {"implicit": ImplicitKernelConv, "basis": FastBasisKernelConv}
