"""The contraction the steerable convolutions share: out_i = W · mean_j ( h(x_i − x_j) ⊗ f_j ) + b, for any
kernel features h (the implicit kernel's MLP, :class:`pcsym.models.layers.ImplicitKernelConv`; the basis
functions φ, :class:`pcsym.models.basis.FastBasisKernelConv`). A subclass sets ``in_size``, ``out_size``,
``h_size``, ``contract`` (an :class:`~pcsym.models.linear.EquivLinear` on the (h, f) outer product), ``perm``
and :meth:`kernel_hidden`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry.graph import gather
from . import fused
from .linear import ColumnPlan, EquivLinear


class KernelContraction(nn.Module):
    """The aggregation h ⊗ f over the neighbours and the contraction with W (see the module docstring)."""

    def kernel_hidden(self, rel: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def dense_weight(self):
        """The contraction's (W, b) with W's columns in the order of the flattened (h, f) outer
        product (W_flat[:, perm] = W): one gather from the basis blocks, no scatter."""
        if isinstance(self.contract, EquivLinear):
            return self.contract.expand(permuted=True)
        w, b = self.contract.expand()  # a frozen copy (see freeze): expanded once, scatter as before
        wn = torch.zeros_like(w)
        wn[:, self.perm] = w
        return wn, b

    def kernel(self, rel: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        """The explicit kernel matrices k(rel): (..., out, in)."""
        w, _ = self.dense_weight()
        h = self.kernel_hidden(rel, edge)
        return torch.einsum("ohc,...h->...oc", w.reshape(self.out_size, self.h_size, self.in_size), h)

    def forward(self, rel: torch.Tensor, f_nb: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        """rel (B, M, k, 3) relative positions (already scaled), f_nb (B, M, k, C_in), edge (B, M, k, E)
        the edge features (models with edge features: EDGE_FIELDS) -> (B, M, C_out)."""
        b, m, k, _ = rel.shape
        h = self.kernel_hidden(rel, edge)  # (B, M, k, H)
        agg = torch.bmm(h.reshape(b * m, k, self.h_size).transpose(1, 2), f_nb.reshape(b * m, k, self.in_size))
        return self._contract(self._pack(agg.reshape(b * m, -1)), b, m, k)

    def convolve(self, rel: torch.Tensor, f_src: torch.Tensor, idx: torch.Tensor,
                 edge: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` with the neighbours' features taken from f_src (B, N, C_in) at idx (B, M, k):
        the compiled aggregation where it applies (:func:`pcsym.models.fused.aggregate`), else gather + bmm."""
        b, m, k, _ = rel.shape
        h = self.kernel_hidden(rel, edge)
        plan = self._plan()
        agg = fused.aggregate(h, f_src, idx, None if plan is None else plan.cols)
        if agg is None:
            agg = torch.bmm(h.reshape(b * m, k, self.h_size).transpose(1, 2),
                            gather(f_src, idx).reshape(b * m, k, self.in_size))
            agg = self._pack(agg.reshape(b * m, -1))
        return self._contract(agg.reshape(b * m, -1), b, m, k)

    def _plan(self) -> ColumnPlan | None:
        """The contraction's :class:`ColumnPlan` (None: dense; a frozen copy is always dense)."""
        return self.contract.column_plan(permuted=True) if isinstance(self.contract, EquivLinear) else None

    def _pack(self, agg: torch.Tensor) -> torch.Tensor:
        plan = self._plan()
        return agg if plan is None else agg.index_select(1, plan.cols)

    def _contract(self, agg: torch.Tensor, b: int, m: int, k: int) -> torch.Tensor:
        """out = W · mean_j(h ⊗ f) + bias from the neighbour sums agg (B*M, H*C_in), packed by the plan."""
        plan = self._plan()
        if plan is not None:  # W's structurally non-zero part only: 18-34% of it (so3, o2)
            out, bias = self.contract.packed_matmul(agg, plan)
        else:
            w, bias = self.dense_weight()
            out = torch.mm(agg, w.t())
        # mean over neighbours: the sum's contraction divided by k afterwards, on the output, which is
        # the smallest tensor here (not on agg, and not addmm's alpha, whose backward rescales agg's gradient)
        out = out / k
        if bias is not None:
            out = out + bias
        return out.reshape(b, m, self.out_size)
