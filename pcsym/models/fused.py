"""The implicit kernel's per-edge MLP and neighbour aggregation through the compiled kernels of
:mod:`pcsym.geometry.native` (``edge.c``, ``agg.c``).

:class:`~pcsym.models.layers.ImplicitKernelConv` computes h(x_i − x_j) = MLP(embedding(x_i − x_j), edge
features) on every edge; in torch that is dozens of elementwise ops over (edges x width) tensors
(a third of a training step). :func:`kernel_hidden` runs the same maths fused, forward and backward,
when it can: CPU float32, positions and edge features without gradients (always so in training: only
the weights learn), not while tracing or scripting an export, kernel built. Otherwise it returns None
and the caller takes the torch path. Gradients reach the weights through the dense (W, b) of each
layer, so the equivariant parametrisation (:class:`~pcsym.models.layers.EquivLinear`'s expansion)
is differentiated by autograd as before. :func:`aggregate` sums h_ij^T f_j over each node's neighbours
without materialising the gathered features, with both gradients.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..geometry import native


_off = [0]  # > 0 inside torch_spelling() blocks


@contextlib.contextmanager
def torch_spelling():
    """Within this block (in every thread: evaluation's batch workers too), :func:`kernel_hidden` declines and
    the torch spelling runs: for comparisons with the kernel and for counting FLOPs (torch's counter cannot
    see into the kernel)."""
    _off[0] += 1
    try:
        yield
    finally:
        _off[0] -= 1


def gate_channels(is_scalar, gate_of) -> np.ndarray:
    """Per activation channel: -1 for ELU, else the index of its gate (``FieldNonlinearity``'s layout)."""
    return np.where(np.asarray(is_scalar, dtype=bool), -1, np.asarray(gate_of)).astype(np.int32)


def _constants(conv) -> dict:
    """The conv's fixed arrays for :class:`pcsym.geometry.native.EdgeNet` (taken once, kept on the module)."""
    const = conv.__dict__.get("_edge_constants")
    if const is None:
        emb = conv.embed
        const = {"lmax": emb.lmax, "cob": [getattr(emb, f"cob_{l}").float().numpy() for l in range(1, emb.lmax + 1)],
                 "centres": emb.centres.float().numpy(), "width": emb.width, "n_edge": conv.edge_cols,
                 "chan": [gate_channels(act.is_scalar.numpy(), act.gate_of.numpy()) for act in conv.mlp[1::2]]}
        conv.__dict__["_edge_constants"] = const
    return const


def _cpu_float32(*tensors: torch.Tensor) -> bool:
    """The kernels' domain: CPU float32 tensors, not while tracing or scripting an export, not switched off."""
    if _off[0] or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _usable(conv, rel: torch.Tensor, edge: torch.Tensor | None) -> bool:
    if not _cpu_float32(*[t for t in (rel, edge) if t is not None]):
        return False
    if torch.is_grad_enabled() and (rel.requires_grad or (edge is not None and edge.requires_grad)):
        return False  # the kernel gives no gradient for positions / edge features
    return len(conv.mlp) // 2 <= 8 and native.available()


class _EdgeMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, const, rel, edge, *wb):
        net = native.EdgeNet(const["lmax"], const["cob"], const["centres"], const["width"], const["n_edge"],
                             [(w.detach().numpy(), None if b is None else b.detach().numpy(), ch)
                              for w, b, ch in zip(wb[0::2], wb[1::2], const["chan"])])
        h = torch.empty(rel.shape[0], net.h_size)
        if not native.edge_mlp(net, rel.numpy(), None if edge is None else edge.numpy(), h=h.numpy(),
                               threads=torch.get_num_threads()):
            raise RuntimeError("pcsym's compiled edge kernel failed (out of memory?)")
        ctx.net, ctx.rel, ctx.edge = net, rel, edge  # inputs without gradients: kept as they are
        ctx.shapes = [None if t is None else t.shape for t in wb]
        return h

    @staticmethod
    def backward(ctx, dh):
        net = ctx.net
        grads = torch.empty(net.n_grads)
        if not native.edge_mlp(net, ctx.rel.numpy(), None if ctx.edge is None else ctx.edge.numpy(),
                               dh=dh.contiguous().numpy(), grads=grads.numpy(), threads=torch.get_num_threads()):
            raise RuntimeError("pcsym's compiled edge kernel failed (out of memory?)")
        out, p = [], 0
        for w_shape, b_shape in zip(ctx.shapes[0::2], ctx.shapes[1::2]):
            n = w_shape[0] * w_shape[1]
            out.append(grads[p : p + n].view(w_shape))
            out.append(None if b_shape is None else grads[p + n : p + n + w_shape[0]])
            p += n + w_shape[0]
        return (None, None, None, *out)


def kernel_hidden(conv, rel: torch.Tensor, edge: torch.Tensor | None) -> torch.Tensor | None:
    """h (..., H) of :meth:`ImplicitKernelConv.kernel_hidden` through the compiled kernel, or None
    (then the caller computes it in torch)."""
    if not _usable(conv, rel, edge):
        return None
    lead = rel.shape[:-1]
    rel2 = rel.detach().reshape(-1, 3).contiguous()
    edge2 = None if edge is None else edge.detach().reshape(-1, edge.shape[-1]).contiguous()
    wb = []
    for lin in conv.mlp[0::2]:
        wb += list(lin.expand())
    with torch.autograd.profiler.record_function("pcsym::edge_mlp"):
        h = _EdgeMLP.apply(_constants(conv), rel2, edge2, *wb)
    return h.view(*lead, h.shape[-1])


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, f, idx, cols):
        h, f = h.detach(), f.detach()
        shape = (h.shape[0], h.shape[2], f.shape[2]) if cols is None else (h.shape[0], len(cols))
        agg = torch.empty(shape)
        if not native.aggregate(h.numpy(), f.numpy(), idx.numpy(), agg=agg.numpy(), cols=_np(cols),
                                threads=torch.get_num_threads()):
            raise RuntimeError("pcsym's compiled aggregation kernel is no longer available")
        ctx.save_for_backward(h, f, idx)
        ctx.cols = cols
        return agg

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        h, f, idx = ctx.saved_tensors
        dh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        df = torch.zeros_like(f) if ctx.needs_input_grad[1] else None
        if dh is not None or df is not None:
            if not native.aggregate(h.numpy(), f.numpy(), idx.numpy(), grad=grad.contiguous().numpy(), dh=_np(dh),
                                    df=_np(df), cols=_np(ctx.cols), threads=torch.get_num_threads()):
                raise RuntimeError("pcsym's compiled aggregation kernel is no longer available")
        return dh, df, None, None


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.numpy()


def aggregate(h: torch.Tensor, f: torch.Tensor, idx: torch.Tensor, cols: torch.Tensor | None = None):
    """agg (B*M, H, C) = per node sum_j h[.., j, :]^T f[b, idx_j, :] for h (B, M, k, H), f (B, N, C),
    idx (B, M, k) — or, with ``cols``, (B*M, P) holding those columns of the flattened (H, C) sum — through
    ``agg.c`` (the caller's gather + bmm without the gathered copy), or None (then the caller takes the
    torch path)."""
    if not _cpu_float32(h, f) or idx.dtype != torch.int64 or not native.available():
        return None
    b, m, k, hs = h.shape
    with torch.autograd.profiler.record_function("pcsym::aggregate"):
        return _Aggregate.apply(h.reshape(b * m, k, hs).contiguous(), f.contiguous(), idx.contiguous(), cols)
