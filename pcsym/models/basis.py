"""The steerable-basis kernel (``--kernel basis``) through the implicit kernel's fast contraction.

The paper's baseline is escnn's ``R3PointConv``: its kernel is k(x) = Σ_b w_b B_b(x) in the analytical basis
escnn restricts from O(3) to G (Gaussian rings × spherical harmonics, band-limited per ring, Wigner-Eckart
intertwiners). Every basis element is *linear* in the ring × harmonic functions escnn samples first
(``SphericalShellsBasis``):

    B_b(x)[o, i] = Σ_a φ_a(x) T[a, b, o, i],    φ_{(ring r, harmonic j, m)}(x) = exp(-(|x| - r)² / 2σ_r²) Y_jm(x/|x|)

with T a fixed tensor (the intertwiners, escnn's change of basis, its per-element normalisation and its
band-limiting mask). So the message sum is the implicit kernel's with h = φ:

    out_i = Σ_{o, a, i} W[o, (a, i)] · mean_j φ_a(x_i − x_j) f_j[i],    W[o, (a, i)] = Σ_b w_b T[a, b, o, i]

— one h ⊗ f aggregation over the neighbours (``agg.c``) and one matmul with W, which is an equivariant-basis
expansion of the parameters like any :class:`~pcsym.models.linear.EquivLinear` (its column plan skips W's
structural zeros). T is read off escnn's own sampler once per layer type, by feeding it unit vectors in place
of the sampled φ (:func:`basis_spec`; cached on disk with the other layer specs), so the function space and
the parameters (count and order: ``weight`` is escnn's ``R3PointConv.weights``) are escnn's exactly; φ is
re-implemented here in torch (the harmonic-polynomial recursion of escnn's ``HarmonicPolynomialR3Generator``,
change-of-basis matrices in float64) and tests pin the messages to escnn's to float32 rounding.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from .cache import cached
from .contraction import KernelContraction
from .groups import Group, private_copy, quiet_stdout
from .linear import EquivLinear, type_size

#: coefficients of T below this fraction of its largest are escnn's float noise (1e-15 and below, where
#: genuine ones are 1e-2 and above): zeroed, so W's structural zeros stay structural
NOISE = 1e-9


def _pointconv(group: Group, in_reps, out_reps, width: float, n_rings: int, frequencies_cutoff: float):
    from escnn import nn as enn

    with quiet_stdout():
        gs = group.gspace
        return enn.R3PointConv(enn.FieldType(gs, list(in_reps)), enn.FieldType(gs, list(out_reps)), width=width,
                               n_rings=n_rings, frequencies_cutoff=frequencies_cutoff, bias=True, initialize=False)


def harmonic_cobs(lmax: int) -> list[np.ndarray]:
    """float64 change-of-basis matrices of escnn's ``HarmonicPolynomialR3Generator(lmax)`` (which keeps them
    in float32): Y_1 = C_1 x, Y_l = C_l (Y_{l-1} ⊗ Y_1)."""
    from escnn.group import o3_group

    with quiet_stdout():
        G = o3_group(lmax)
        cobs = [np.asarray(G.standard_representation().change_of_basis_inv, dtype=np.float64)]
        for l in range(2, lmax + 1):
            rho = G.irrep((l - 1) % 2, l - 1).tensor(G.irrep(1, 1))
            cobs.append(np.asarray(rho.change_of_basis_inv[-(2 * l + 1):, :], dtype=np.float64) * np.sqrt((2 * l - 1) / l))
    return cobs


def basis_spec(group: Group, in_reps, out_reps, width: float = 3.0, n_rings: int = 3,
               frequencies_cutoff: float = 2.0) -> dict:
    """The fast basis conv's arrays, from escnn's ``R3PointConv`` basis sampler for (in_reps -> out_reps).

    An :class:`EquivLinear` spec (see :func:`pcsym.models.linear.linear_spec`) for the contraction
    W (out, H·in), W[o, a·in + c] = Σ_b w_b T[a, b, o, c], with escnn's pairs and weight layout (so the
    parameters are ``R3PointConv.weights`` entry for entry), plus the embedding's arrays: ``rings``,
    ``sigma``, ``lmax``, ``phi_ring`` / ``phi_harmonic`` (H,) (ring and harmonic index of each kept φ
    component), ``cob_<l>``. φ components no basis element uses are left out.
    """
    from escnn.nn.modules.basismanager import retrieve_indices

    pc = _pointconv(group, in_reps, out_reps, width, n_rings, frequencies_cutoff)
    sampler = pc.basissampler
    rings, sigma, lmax = list(pc._rings), list(pc._sigma), int(pc._maximum_frequency)
    n_r, n_phi = len(rings), len(rings) * (lmax + 1) ** 2
    blocks_T = {}
    for pair in sampler._representations_pairs:
        block = private_copy(getattr(sampler, f"block_sampler_{pair}")).double()
        shells = block.basis.basis  # the SphericalShellsBasis: φ, sampled first, everything after is linear
        assert shells.dim == n_phi and shells._filter is None and shells.L == lmax, "unexpected escnn basis"
        assert np.allclose(shells.radial.radii.flatten().tolist(), rings), "unexpected escnn rings"
        eye = torch.eye(n_phi, dtype=torch.float64).view(n_phi, n_phi, 1, 1)
        shells.sample = lambda points, out=None, eye=eye: eye  # the probe: φ(point s) = e_s
        with torch.no_grad():
            T = block(torch.zeros(n_phi, 3, dtype=torch.float64)).numpy()  # (n_phi, o, i, d)
        T = np.where(np.abs(T) > NOISE * np.abs(T).max(), T, 0.0)
        blocks_T[pair] = T
    used = np.zeros(n_phi, dtype=bool)
    for T in blocks_T.values():
        used |= np.abs(T).reshape(n_phi, -1).max(1) > 0
    keep = np.flatnonzero(used)
    H = len(keep)
    # escnn's layout of φ: harmonic degree j, then ring, then m (SphericalShellsBasis.sample)
    ring_of, harm_of = np.zeros(n_phi, dtype=np.int64), np.zeros(n_phi, dtype=np.int64)
    for j in range(lmax + 1):
        for r in range(n_r):
            for m in range(2 * j + 1):
                s = j * j * n_r + r * (2 * j + 1) + m
                ring_of[s], harm_of[s] = r, j * j + m
    in_size, out_size = type_size(in_reps), type_size(out_reps)
    _, in_idx, _ = retrieve_indices(list(in_reps))
    _, out_idx, _ = retrieve_indices(list(out_reps))
    spec = {"in_size": H * in_size, "out_size": out_size, "names": [], "blocks": []}
    index = np.full(out_size * H * in_size, -1, dtype=np.int64)
    offset = start = 0
    for j, pair in enumerate(sampler._representations_pairs):
        T = blocks_T[pair][keep]  # (H, o, i, d)
        _, o, i, d = T.shape
        rows, cols = out_idx[pair[1]].numpy(), in_idx[pair[0]].numpy()
        n_out, n_in = len(rows) // o, len(cols) // i
        assert sampler._weights_ranges[pair] == (start, start + n_out * n_in * d)  # escnn's weight order: (u, v, k)
        start += n_out * n_in * d
        basis = T.transpose(3, 1, 0, 2).reshape(d, o, H * i, 1)  # [k, r, a*i + c] = T[a, r, c, k]
        # entry (r, a*i + c) of block (u, v) -> W[rows[u*o + r], a*in_size + cols[v*i + c]]; one output field
        # at a time (W has H times the entries of a hidden layer: no W-sized temporaries)
        r_, a_, v_, c_ = np.ix_(np.arange(o), np.arange(H), np.arange(n_in), np.arange(i))
        col = a_ * in_size + cols.reshape(n_in, i)[v_, c_]
        local = (v_ * o + r_) * (H * i) + a_ * i + c_
        for u in range(n_out):
            index[rows[u * o + r_] * (H * in_size) + col] = offset + u * n_in * o * H * i + local
        offset += n_out * n_in * o * H * i
        spec["names"].append(f"{j}_" + re.sub(r"\W", "_", f"{pair[0]}__{pair[1]}"))
        spec["blocks"].append(n_out * n_in)
        spec[f"basis_{j}"] = basis.astype(np.float32)
    assert start == sampler.dimension()
    index[index < 0] = offset  # the trailing zero
    spec.update(index=index, dim=int(start), rings=np.asarray(rings, dtype=np.float64),
                sigma=np.asarray(sigma, dtype=np.float64), lmax=np.asarray(lmax), phi_ring=ring_of[keep],
                phi_harmonic=harm_of[keep])
    if pc.bias is not None:
        spec["bias_expansion"] = pc.bias_expansion.detach().cpu().float().numpy()
    for l, cob in enumerate(harmonic_cobs(lmax), start=1):
        spec[f"cob_{l}"] = cob
    return spec


def cached_basis_spec(group: Group, in_reps, out_reps, width: float = 3.0, n_rings: int = 3,
                      frequencies_cutoff: float = 2.0) -> dict:
    """:func:`basis_spec` through the on-disk layer cache (:mod:`pcsym.models.cache`)."""
    kind = f"basis-w{width:g}-r{n_rings}-f{frequencies_cutoff:g}-v1"
    spec = cached(kind, group, {"in": list(in_reps), "out": list(out_reps)}, True,
                  lambda: basis_spec(group, in_reps, out_reps, width, n_rings, frequencies_cutoff))
    spec["lmax"] = int(spec["lmax"])
    return spec


def harmonic_polynomials(x: torch.Tensor, cobs: list[torch.Tensor]) -> list[torch.Tensor]:
    """[1, Y_1(x), ..., Y_L(x)]: harmonic polynomials of degree <= L = len(cobs) of the vectors ``x`` (..., 3), by
    escnn's recursion Y_l = C_l (Y_{l-1} ⊗ x) with its change-of-basis matrices ``cobs`` = [C_1, ..., C_L]
    (``HarmonicPolynomialR3Generator``). Shared by the implicit kernel's embedding (pcsym.models.layers) and
    the basis kernel's."""
    feats = [torch.ones_like(x[..., :1])]
    for l, cob in enumerate(cobs, 1):
        cob = cob.to(x.dtype)
        prev = x @ cob.T if l == 1 else (feats[-1][..., :, None] * feats[1][..., None, :]).flatten(-2) @ cob.T
        feats.append(prev)
    return feats


def init_unit_output_variance(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Cheap init of a point convolution ``conv(rel, features)``: ``weight`` drawn standard normal (``bias``
    zeroed), then scaled so that unit-variance random input gives unit-variance output."""
    with torch.no_grad():
        weight.normal_()
        if bias is not None:
            bias.zero_()
        out = conv(torch.randn(1, 64, 8, 3), torch.randn(1, 64, 8, conv.in_size))
        weight.div_(out.std().clamp_min(1e-6))


class BasisEmbedding(nn.Module):
    """φ(x) (..., H): escnn's ``SphericalShellsBasis`` sample (Gaussian ring r at |x| times the harmonic
    polynomial Y_jm of x/|x|; Y_0 = 1 and the others 0 at the origin), only the components in
    ``phi_ring`` / ``phi_harmonic``. Plain torch (exportable)."""

    def __init__(self, spec: dict):
        super().__init__()
        harm = np.asarray(spec["phi_harmonic"], dtype=np.int64)
        self.lmax = int(np.floor(np.sqrt(harm.max()))) if harm.size else 0  # the highest degree used
        for l in range(1, self.lmax + 1):
            self.register_buffer(f"cob_{l}", torch.tensor(np.asarray(spec[f"cob_{l}"])), persistent=False)
        self.register_buffer("rings", torch.tensor(np.asarray(spec["rings"])), persistent=False)
        self.register_buffer("sigma", torch.tensor(np.asarray(spec["sigma"])), persistent=False)
        self.register_buffer("phi_ring", torch.as_tensor(np.asarray(spec["phi_ring"], dtype=np.int64)),
                             persistent=False)
        self.register_buffer("phi_harmonic", torch.as_tensor(harm), persistent=False)
        self.size = len(harm)

    def harmonics(self, unit: torch.Tensor) -> torch.Tensor:
        """Y (..., (lmax+1)²) of unit vectors (escnn's ``HarmonicPolynomialR3Generator``)."""
        return torch.cat(harmonic_polynomials(unit, [getattr(self, f"cob_{l}") for l in range(1, self.lmax + 1)]),
                         dim=-1)

    def forward(self, rel: torch.Tensor) -> torch.Tensor:
        r = rel.norm(dim=-1, keepdim=True)
        unit = rel / torch.where(r > 1e-9, r, torch.ones_like(r))  # escnn: the origin's "direction" is 0
        radial = torch.exp(-0.5 * (r - self.rings.to(rel.dtype)) ** 2 / self.sigma.to(rel.dtype) ** 2)
        return radial.index_select(-1, self.phi_ring) * self.harmonics(unit).index_select(-1, self.phi_harmonic)


class _BasisLinear(EquivLinear):
    """The contraction W(w): an :class:`EquivLinear` expanded through its bases' sparsity. Each pair's basis
    (d, o·H·i) has a few non-zero coefficients per column (the basis elements of that column's harmonic) of
    d = 10-130: W's flat blocks are, per pair, a sum of a few gathered columns of the parameters times
    constants — per pair tables of (basis element, value) per column, no per-entry index arrays (the base
    class's one-node expansion keeps d of them for every entry of W, and W has H times the entries of a
    hidden layer's). Plain torch, so autograd differentiates it and exports trace it."""

    def _tables(self) -> list:
        """Per pair: (t (n, s), v (n, s)): column c of the pair's basis = Σ_r e_{t[r, c]} v[r, c] (v = 0 pads)."""
        cache = self.__dict__.setdefault("_term_cache", {})
        key = ("tables", self.weight.device)
        if key not in cache:
            tables = []
            for name, _, _, d in self._pairs:
                basis = getattr(self.expansion, name).sampled_basis.detach().cpu().double().reshape(d, -1).numpy()
                cols, rows = np.nonzero(basis.T)  # by column, then basis element
                rank = np.arange(len(cols)) - np.searchsorted(cols, cols)
                n = int(rank.max()) + 1 if rank.size else 1
                t, v = np.zeros((n, basis.shape[1]), dtype=np.int64), np.zeros((n, basis.shape[1]))
                t[rank, cols], v[rank, cols] = rows, basis[rows, cols]
                tables.append((torch.as_tensor(t).to(self.weight.device), torch.as_tensor(v).to(self.weight.device)))
            cache[key] = tables
        return cache[key]

    def _flat_blocks(self) -> torch.Tensor:
        parts = []
        for (name, start, blocks, d), (t, v) in zip(self._pairs, self._tables()):
            coeff = self.weight[start : start + blocks * d].view(blocks, d)
            flat = None
            for r in range(t.shape[0]):
                term = coeff.index_select(1, t[r]) * v[r].to(coeff.dtype)
                flat = term if flat is None else flat + term
            parts.append(flat.reshape(-1))
        parts.append(self.weight.new_zeros(1))
        return torch.cat(parts)

    def _entries(self, index: torch.Tensor) -> torch.Tensor:
        return self._flat_blocks().index_select(0, index)


class FastBasisKernelConv(KernelContraction):
    """Steerable point convolution in escnn's analytical basis (the paper's baseline, ``--kernel basis``),
    computed like :class:`~pcsym.models.layers.ImplicitKernelConv` with the basis functions φ in place of
    the kernel MLP's features (see the module docstring). Same interface; parameters ``contract.weight`` /
    ``contract.bias`` are ``R3PointConv.weights`` / ``.bias``; checkpoints of the escnn-sampled conv
    (:class:`pcsym.models.layers.BasisKernelConv`, keys ``pc.*``) load into it unchanged.
    """

    def __init__(self, group: Group, in_reps, out_reps, max_radius: float = ModelConfig.basis_radius,
                 n_rings: int = ModelConfig.basis_rings, frequencies_cutoff: float = ModelConfig.basis_cutoff):
        super().__init__()
        spec = cached_basis_spec(group, in_reps, out_reps, max_radius, n_rings, frequencies_cutoff)
        self.in_size, self.out_size = type_size(in_reps), type_size(out_reps)
        self.embed = BasisEmbedding(spec)
        self.h_size = self.embed.size
        self.edge_cols = 0
        self.contract = _BasisLinear(group, None, out_reps, spec=spec)
        # the (h, f) outer product is flattened in W's own column order: the identity permutation
        self.register_buffer("perm", torch.arange(self.h_size * self.in_size), persistent=False)
        self.contract.w_index_perm = self.contract.w_index  # what permute_columns(perm) would copy
        init_unit_output_variance(self, self.contract.weight, self.contract.bias)  # as the escnn-sampled conv

    @classmethod
    def from_config(cls, group: Group, in_reps, out_reps, cfg) -> "FastBasisKernelConv":
        return cls(group, in_reps, out_reps, cfg.basis_radius, cfg.basis_rings, cfg.basis_cutoff)

    def kernel_hidden(self, rel: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        """φ(rel) (..., H): the basis functions on the edges (edge features: not supported, as before)."""
        return self.embed(rel)

    # forward, convolve, kernel, dense_weight: the implicit kernel's contraction, unchanged (h = φ;
    # pcsym.models.contraction.KernelContraction)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint of the escnn-sampled conv: its parameters are ours (same basis, same order); escnn's
        # buffers are constants rebuilt from the config, ours are taken from this module
        if prefix + "pc.weights" in state_dict:
            old = {k[len(prefix) + 3:]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix + "pc.")]}
            if old["weights"].shape != self.contract.weight.shape:
                return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # reported as a mismatch
            state_dict[prefix + "contract.weight"] = old["weights"]
            if "bias" in old:
                state_dict[prefix + "contract.bias"] = old["bias"]
            for k, v in self.contract.state_dict(prefix=prefix + "contract.", keep_vars=True).items():
                state_dict.setdefault(k, v.detach())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
