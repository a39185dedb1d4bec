"""Graph operations on batched point clouds in torch (kNN through :mod:`pcsym.geometry.native` when it is built).

* :func:`knn` — k nearest neighbours: the compiled kernel, else torch in cache-sized blocks
  (:func:`knn_torch`); memory bounded either way, never O(N²) for large N.
* :func:`sampling_order` (from :func:`random_order` / :func:`fps_order`) — point orders whose prefixes
  are the downsampled sets (random, farthest-point, or random then farthest-point sampling). Every layer
  of a network takes a prefix of one order, so downsampling uses identical indices for a cloud and its
  rotated copy.
* :func:`estimate_normals` — PCA normals oriented away from the centroid (O(3)-equivariant).
* :func:`frame_views` — the six PCA-frame view rotations of :mod:`pcsym.geometry.frames`, batched.
"""

from __future__ import annotations

import torch

from ..seeds import derive
from . import native
from .frames import VIEW_ROWS, VIEW_SIGNS
from .numpy_graph import KNN_BLOCK_ENTRIES, NORMAL_K
from .numpy_graph import estimate_normals as _estimate_normals


def knn_blocks(b: int, m: int, n: int, entries: int = KNN_BLOCK_ENTRIES):
    """(cloud slice, query slice) blocks covering a (B, M, N) distance tensor, each of at most
    ``entries`` entries (or one query row of one cloud): whole clouds are grouped while they fit,
    bigger clouds are split into query chunks. Small blocks stay in cache, which is what makes kNN fast."""
    per_cloud = m * n
    if per_cloud <= entries:
        step = max(1, entries // per_cloud)
        return [(slice(c, c + step), slice(0, m)) for c in range(0, b, step)]
    chunk = max(1, entries // max(n, 1))
    return [(slice(c, c + 1), slice(s, s + chunk)) for c in range(b) for s in range(0, m, chunk)]


def knn(query: torch.Tensor, keys: torch.Tensor, k: int, entries: int = KNN_BLOCK_ENTRIES) -> torch.Tensor:
    """Indices (B, M, k) of the k nearest ``keys`` (B, N, 3) for each ``query`` point (B, M, 3).

    Neighbours are sorted by distance (nearest first). A query point that is also a key finds
    itself first. On CPU float32 the compiled kernel of :mod:`pcsym.geometry.native` does it when it is
    available (same neighbours, 3-4x faster); else torch, block by block (:func:`knn_blocks`), so
    peak memory is ``entries`` distances, never O(N²); each block is one fused ``baddbmm``
    (|k|² − 2 q·k: the |q|² term is the same for every key of a query and cannot change its order)
    and a ``topk``.
    """
    if query.dim() != 3 or keys.dim() != 3 or query.shape[-1] != 3 or keys.shape[-1] != 3:
        raise ValueError(f"knn expects (B, M, 3) and (B, N, 3), got {tuple(query.shape)} and {tuple(keys.shape)}")
    b, m, _ = query.shape
    n = keys.shape[1]
    if k > n:
        raise ValueError(f"k={k} neighbours requested but the cloud has only {n} points")
    if (query.device.type == "cpu" and query.dtype == keys.dtype == torch.float32
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()):  # exports trace torch's ops
        with torch.autograd.profiler.record_function("pcsym::knn"):  # so torch.profiler counts the kernel
            found = native.knn(query.detach().numpy(), keys.detach().numpy(), k, torch.get_num_threads())
        if found is not None:
            return torch.from_numpy(found)
    return knn_torch(query, keys, k, entries)


def knn_torch(query: torch.Tensor, keys: torch.Tensor, k: int, entries: int = KNN_BLOCK_ENTRIES) -> torch.Tensor:
    """:func:`knn` in torch (any device), without the compiled kernel: block by block, sorted."""
    b, m, _ = query.shape
    n = keys.shape[1]
    kk = (keys * keys).sum(-1)[:, None, :]  # (B, 1, N)
    kt = keys.transpose(1, 2)
    if torch.jit.is_tracing():  # an export: a graph for any batch size (blocks of clouds would fix the traced one)
        step = max(1, entries // max(n, 1))
        return torch.cat([torch.baddbmm(kk, query[:, s:s + step], kt, alpha=-2.0).topk(
            k, dim=-1, largest=False, sorted=True).indices for s in range(0, m, step)], dim=1)
    out = torch.empty(b, m, k, dtype=torch.long, device=query.device)
    for clouds, rows in knn_blocks(b, m, n, entries):
        d = torch.baddbmm(kk[clouds], query[clouds, rows], kt[clouds], alpha=-2.0)
        out[clouds, rows] = d.topk(k, dim=-1, largest=False, sorted=True).indices
    return out


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched gather: x (B, N, C), idx (B, M, k) -> (B, M, k, C)."""
    b, m, k = idx.shape
    flat = idx.reshape(b, m * k, 1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, flat).reshape(b, m, k, x.shape[-1])


def random_order(b: int, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A random permutation of n points per cloud (B, N): its prefixes are uniform random subsets."""
    return torch.rand(b, n, generator=generator, device=device).argsort(dim=1)


EVAL_ORDER_SEED = derive("vote", 0)  # eval mode's order is test-time vote 0's


def eval_order(b: int, n: int, device=None, seed: int = EVAL_ORDER_SEED) -> torch.Tensor:
    """The seeded random order used in eval mode (deterministic predictions; same for exports), one
    order for every cloud of the batch: a cloud's prediction does not depend on its batch position or
    the batch size, and equals the exports' (which hold this order for one cloud). Other seeds give
    the other downsamplings that test-time voting averages over."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return random_order(1, n, generator=gen, device=device).repeat(b, 1)


def vote_order(vote: int, b: int, n: int, device=None) -> torch.Tensor:
    """The order of test-time vote ``vote`` of a randomly downsampling model (vote 0 = the eval order);
    ``evaluate --votes``, ``classify --votes`` and the exports all use these."""
    return eval_order(b, n, device, derive("vote", vote))


def fps_order(pos: torch.Tensor, m: int | None = None) -> torch.Tensor:
    """Farthest-point-sampling order (B, m) of pos (B, N, 3); prefixes are FPS subsets.

    Starts from the point farthest from the centroid (computed in float64), so the order is
    equivariant to isometries fixing the centroid (up to exact ties). Squared distances are spelled
    component by component, exactly as :func:`pcsym.geometry.numpy_graph.fps_order`, so both pick the same points.
    """
    b, n, _ = pos.shape
    m = n if m is None else m
    p64 = pos.double()
    centred = p64 - p64.mean(1, keepdim=True)
    cur = centred.pow(2).sum(-1).argmax(1)  # (B,)
    if (pos.device.type == "cpu" and pos.dtype == torch.float32
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()):  # the loop below, compiled
        found = native.fps(pos.detach().numpy(), cur.numpy(), m, torch.get_num_threads())
        if found is not None:
            return torch.from_numpy(found)
    return fps_order_torch(pos, m, cur)


def fps_order_torch(pos: torch.Tensor, m: int, cur: torch.Tensor) -> torch.Tensor:
    """:func:`fps_order`'s loop in torch (any device; the compiled kernel's reference) from the first points ``cur``."""
    b, n, _ = pos.shape
    order = torch.empty(b, m, dtype=torch.long, device=pos.device)
    dist = torch.full((b, n), float("inf"), dtype=pos.dtype, device=pos.device)
    ar = torch.arange(b, device=pos.device)
    pt = pos.transpose(1, 2).contiguous()  # (B, 3, N): one subtraction and one square per step
    for i in range(m):
        order[:, i] = cur
        s = (pt - torch.gather(pt, 2, cur.view(b, 1, 1).expand(b, 3, 1))).square_()
        d = s[:, 0] + s[:, 1]
        d += s[:, 2]
        torch.minimum(dist, d, out=dist)
        dist[ar, cur] = -1.0  # never picked twice, even where duplicate points leave only zero distances
        cur = dist.argmax(1)
    return order


def complete_order(first: torch.Tensor, n: int) -> torch.Tensor:
    """A permutation (B, n) of 0..n-1 that starts with ``first`` (B, m, distinct indices) and goes on
    with the other indices in increasing order."""
    b, m = first.shape
    key = torch.arange(m, m + n, device=first.device).expand(b, n).clone()
    key.scatter_(1, first, torch.arange(m, device=first.device).expand(b, m))
    return key.argsort(1)


def sampling_order(pos: torch.Tensor, sampling: str, sizes: list[int], vote: int | None = None,
                   draw: torch.Tensor | None = None) -> torch.Tensor:
    """The point order (B, N) of a model's downsampling scheme; layer l keeps its first ``sizes[l]`` points.

    * ``random``: a uniform random permutation (the paper's random sampling): a fresh one when
      ``vote`` is None (training), else the seeded order of that test-time vote (0 = eval mode);
    * ``fps``: farthest-point sampling at every layer (one order per cloud; votes change nothing);
    * ``random-fps``: layer 1 keeps a random subset (as ``random``) and every deeper layer a
      farthest-point sample of it, so the few points of the deep layers cover the shape evenly.
    Only the first ``sizes[0]`` positions matter: layer 1's neighbours come from the whole cloud.
    ``draw``: the training order's random permutation (:func:`random_order`), when the caller drew it
    (e.g. for a whole batch whose shards are ordered separately).
    """
    b, n, _ = pos.shape
    if sampling == "fps":
        return complete_order(fps_order(pos, min(n, sizes[0])), n)
    if draw is not None:
        order = draw
    else:
        order = random_order(b, n, device=pos.device) if vote is None else vote_order(vote, b, n, pos.device)
    if sampling == "random-fps" and len(sizes) > 1:
        head = order[:, : sizes[0]]
        first = fps_order(take(pos, head), sizes[1])  # indices into head
        order = torch.cat([torch.gather(head, 1, complete_order(first, head.shape[1])), order[:, sizes[0]:]], 1)
    return order


def take(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Reorder points: x (B, N, C), order (B, M) -> (B, M, C)."""
    return torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))


def estimate_normals(pos: torch.Tensor, k: int = NORMAL_K) -> torch.Tensor:
    """Unit normals (B, N, 3) or (N, 3) of ``pos``: :func:`pcsym.geometry.numpy_graph.estimate_normals` (PCA over k
    neighbours, oriented away from the centroid; equivariant to O(3)) with the neighbours found by
    :func:`knn`. Not differentiable."""
    batch = pos.detach().float()[None] if pos.dim() == 2 else pos.detach().float()
    idx = knn(batch, batch, min(k, batch.shape[1]))
    n = torch.from_numpy(_estimate_normals(batch.cpu().numpy(), neighbours=idx.cpu().numpy()))
    n = n.to(pos.device, pos.dtype)
    return n[0] if pos.dim() == 2 else n


def frame_views(pos: torch.Tensor) -> torch.Tensor:
    """The six PCA-frame view rotations (B, 6, 3, 3) of clouds ``pos`` (B, N, 3), as
    :func:`pcsym.geometry.frames.frame_views` from its tables (eigenvectors in float64, returned in ``pos``' dtype)."""
    x = pos.double() - pos.double().mean(dim=1, keepdim=True)
    vectors = torch.linalg.eigh(x.transpose(1, 2) @ x / max(x.shape[1], 1))[1]
    det = torch.linalg.det(vectors)
    ones = torch.ones_like(det)
    signs = torch.tensor(VIEW_SIGNS, dtype=det.dtype, device=det.device)  # (6, 3)
    scale = signs * torch.stack([det, ones, ones], -1)[:, None, :]  # (B, 6, 3): the first row also times det V
    rows = vectors.transpose(1, 2)[:, torch.tensor(VIEW_ROWS, device=det.device)]  # (B, 6, 3, 3)
    return (rows * scale[..., None]).to(pos.dtype)
