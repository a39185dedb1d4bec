"""Equivariant building blocks in plain torch, parametrised through escnn's equivariant bases.

escnn is used only to *build* things (representations, bases of equivariant linear maps,
change-of-basis matrices); every forward pass is ordinary torch on (..., C) tensors, so models
can be exported to TorchScript and run without escnn.

A *field type* here is a list of escnn representations (one per field); features are laid out
as the concatenation of the fields, last dimension.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from ..graph import gather
from ..groups import Group, quiet_stdout


def type_size(reps) -> int:
    return int(sum(r.size for r in reps))


def direct_sum_matrix(reps, g) -> np.ndarray:
    """Block-diagonal matrix of the field type ``reps`` at group element g."""
    n = type_size(reps)
    out = np.zeros((n, n))
    p = 0
    for r in reps:
        out[p : p + r.size, p : p + r.size] = r(g)
        p += r.size
    return out


def private_copy(module: nn.Module) -> nn.Module:
    """Deep-copy an escnn module's torch state while sharing escnn's (immutable, cached) group,
    representation and gspace objects. escnn shares basis modules between layers, so without
    this ``.double()`` on one model would change the dtype of another."""
    from escnn.group import Group, GroupElement, Representation
    from escnn.gspaces import GSpace

    classes = (Group, GroupElement, Representation, GSpace)
    saved = {c: c.__dict__.get("__deepcopy__") for c in classes}
    try:
        for c in classes:
            c.__deepcopy__ = lambda self, memo: self
        return copy.deepcopy(module)
    finally:
        for c, fn in saved.items():
            if fn is None:
                del c.__deepcopy__
            else:
                c.__deepcopy__ = fn


class EquivLinear(nn.Module):
    """G-equivariant linear map between two field types: y = W x + b with W in escnn's basis.

    The weight matrix is expanded from the free parameters every training step and cached
    in eval mode. Initialisation is a cheap variance-preserving rescaling (escnn's generalised
    He init can take minutes for big layers).
    """

    def __init__(self, group: Group, in_reps, out_reps, bias: bool = True, gain: float = 1.0):
        super().__init__()
        from escnn import nn as enn

        with quiet_stdout():
            lin = enn.Linear(group.field_type(in_reps), group.field_type(out_reps), bias=bias, initialize=False)
        # escnn caches and shares basis modules between layers: take a private copy so that
        # .double()/.to() on one model never changes another; some bases come in float64.
        self.expansion = private_copy(lin._basisexpansion).float()
        self.in_size, self.out_size = type_size(in_reps), type_size(out_reps)
        self.weight = nn.Parameter(torch.randn(self.expansion.dimension()))
        if lin.bias is not None:
            self.register_buffer("bias_expansion", lin.bias_expansion.clone(), persistent=False)
            self.bias = nn.Parameter(torch.zeros(lin.bias.shape[0]))
        else:
            self.bias_expansion = None
            self.bias = None
        with torch.no_grad():  # scale so that W has variance gain/fan_in, like torch's default
            w = self._expand_weight()
            self.weight.mul_(math.sqrt(gain / max(self.in_size, 1)) / w.std().clamp_min(1e-12))
        self._cache = None

    def _expand_weight(self) -> torch.Tensor:
        return self.expansion(self.weight).reshape(self.out_size, self.in_size)

    def expand(self):
        """Dense (W, b): W (out, in), b (out,) or None."""
        key = (self.weight._version, None if self.bias is None else self.bias._version, self.weight.dtype)
        if not self.training and not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        w = self._expand_weight()
        b = None if self.bias is None else self.bias_expansion.to(w.dtype) @ self.bias
        if not self.training and not torch.is_grad_enabled():
            self._cache = (key, w, b)
        return w, b

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._cache = None
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x[..., : self.out_size]
        if self.n_gates == 0:
            return nn.functional.elu(y)
        gates = torch.sigmoid(x[..., self.out_size :]).index_select(-1, self.gate_of)
        return torch.where(self.is_scalar, nn.functional.elu(y), y * gates)


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
            mean = x.mean(0) @ P if self.has_invariant else torch.zeros_like(x[0])
            xc = x - mean
            sq = torch.zeros(self.n_fields, dtype=x.dtype, device=x.device).index_add_(0, self.field, xc.pow(2).mean(0))
            var = sq / self.field_size.to(x.dtype)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        else:
            scale, shift = self.eval_affine()
            return (x * scale.to(x.dtype) + shift.to(x.dtype)).reshape(shape)
        out = xc * self._channel_scale(var) + self.bias.to(x.dtype) @ P
        return out.reshape(shape)

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

    def __init__(self, group: Group, lmax: int = 2, n_radial: int = 4, max_radius: float = 2.5):
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
        feats = [torch.ones_like(rel[..., :1])]
        if self.lmax >= 1:
            f1 = rel @ self.cob_1.to(rel.dtype).T
            feats.append(f1)
            prev = f1
            for l in range(2, self.lmax + 1):
                outer = (prev[..., :, None] * f1[..., None, :]).flatten(-2)
                prev = outer @ getattr(self, f"cob_{l}").to(rel.dtype).T
                feats.append(prev)
        r = rel.norm(dim=-1, keepdim=True)
        feats.append(torch.exp(-((r - self.centres.to(rel.dtype)) / self.width) ** 2))
        return torch.cat(feats, dim=-1)


class ImplicitKernelConv(nn.Module):
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
                 lmax: int = 2, n_radial: int = 4):
        super().__init__()
        self.in_size, self.out_size = type_size(in_reps), type_size(out_reps)
        self.embed = HarmonicEmbedding(group, lmax, n_radial)
        pre, act, kind = channel_types(group, channels_for(group, kernel_dims))
        mlp, reps = [], self.embed.reps
        for _ in range(kernel_layers):
            mlp += [EquivLinear(group, reps, pre), FieldNonlinearity(act, kind)]
            reps = act
        self.mlp = nn.Sequential(*mlp)
        self.h_reps = list(reps) + [group.trivial]  # constant field = kernel bias
        self.h_size = type_size(self.h_reps)
        # Field type of h ⊗ f, ordered as the row-major flattening of the outer product (h, f)
        # regrouped into (h-field, f-field) blocks: perm maps block order -> flat order.
        tensor_reps, perm = [], []
        ho = np.cumsum([0] + [r.size for r in self.h_reps])
        fo = np.cumsum([0] + [r.size for r in in_reps])
        with quiet_stdout():
            for a, ra in enumerate(self.h_reps):
                for b, rb in enumerate(in_reps):
                    tensor_reps.append(ra.tensor(rb))
                    for i in range(ra.size):
                        for j in range(rb.size):
                            perm.append((ho[a] + i) * self.in_size + fo[b] + j)
        self.contract = EquivLinear(group, tensor_reps, out_reps)
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)

    @classmethod
    def from_config(cls, group: Group, in_reps, out_reps, cfg) -> "ImplicitKernelConv":
        return cls(group, in_reps, out_reps, kernel_dims=cfg.kernel_dims, kernel_layers=cfg.kernel_layers,
                   lmax=cfg.lmax, n_radial=cfg.n_radial)

    def kernel_hidden(self, rel: torch.Tensor) -> torch.Tensor:
        h = self.mlp(self.embed(rel))
        return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)

    def dense_weight(self):
        w, b = self.contract.expand()
        wn = torch.zeros_like(w)
        wn[:, self.perm] = w  # column order of the flattened (h, f) outer product
        return wn, b

    def kernel(self, rel: torch.Tensor) -> torch.Tensor:
        """The explicit kernel matrices k(rel): (..., out, in)."""
        w, _ = self.dense_weight()
        h = self.kernel_hidden(rel)
        return torch.einsum("ohc,...h->...oc", w.reshape(self.out_size, self.h_size, self.in_size), h)

    def forward(self, rel: torch.Tensor, f_nb: torch.Tensor) -> torch.Tensor:
        """rel (B, M, k, 3) relative positions (already scaled), f_nb (B, M, k, C_in) -> (B, M, C_out)."""
        b, m, k, _ = rel.shape
        h = self.kernel_hidden(rel)  # (B, M, k, H)
        agg = torch.bmm(h.reshape(b * m, k, self.h_size).transpose(1, 2), f_nb.reshape(b * m, k, self.in_size))
        w, bias = self.dense_weight()
        out = nn.functional.linear(agg.reshape(b * m, self.h_size * self.in_size) / k, w, bias)
        return out.reshape(b, m, self.out_size)


class BasisKernelConv(nn.Module):
    """The paper's baseline: escnn's group-restricted steerable basis (``R3PointConv``).

    Same interface as :class:`ImplicitKernelConv`; messages are computed by escnn's own basis
    sampler (``R3PointConv.basissampler.compute_messages``) on the same kNN edges, and averaged.
    """

    def __init__(self, group: Group, in_reps, out_reps, max_radius: float = 3.0, n_rings: int = 3,
                 frequencies_cutoff: float = 2.0):
        super().__init__()
        from escnn import nn as enn

        with quiet_stdout():
            gs = group.gspace
            self.pc = enn.R3PointConv(enn.FieldType(gs, list(in_reps)), enn.FieldType(gs, list(out_reps)),
                                      width=max_radius, n_rings=n_rings, frequencies_cutoff=frequencies_cutoff,
                                      bias=True, initialize=False)
            self.pc = private_copy(self.pc)  # private copy of escnn's shared basis modules
        self.in_size, self.out_size = type_size(in_reps), type_size(out_reps)
        with torch.no_grad():  # cheap init: unit output variance on unit-variance random input
            self.pc.weights.normal_()
            out = self(torch.randn(1, 64, 8, 3), torch.randn(1, 64, 8, self.in_size))
            self.pc.weights.div_(out.std().clamp_min(1e-6))

    @classmethod
    def from_config(cls, group: Group, in_reps, out_reps, cfg) -> "BasisKernelConv":
        return cls(group, in_reps, out_reps)  # escnn's default basis (the paper's baseline)

    def forward(self, rel: torch.Tensor, f_nb: torch.Tensor) -> torch.Tensor:
        b, m, k, _ = rel.shape
        msg = self.pc.basissampler.compute_messages(
            self.pc.weights, f_nb.reshape(-1, self.in_size), rel.reshape(-1, 3), conv_first=True)
        out = msg.reshape(b, m, k, self.out_size).mean(2)
        bias = self.pc.expand_bias()
        return out if bias is None else out + bias


#: The steerable convolutions by ``ModelConfig.kernel`` name (``config.KERNELS`` lists the same names
#: without importing torch; a test keeps the two equal); each is built with
#: ``cls.from_config(group, in_reps, out_reps, model_config)``.
KERNELS = {"implicit": ImplicitKernelConv, "basis": BasisKernelConv}
