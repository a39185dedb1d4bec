"""Graph operations on point clouds in numpy alone: the torch-free twins of :mod:`pcsym.geometry.graph`.

kNN (the compiled kernel of :mod:`pcsym.geometry.native` where it is built, else chunked numpy), the PCA
normal estimate (the one implementation, which :func:`pcsym.geometry.graph.estimate_normals` and the
readers use too), farthest-point orders and the eval-mode sampling order. The numpy runtime
(:mod:`pcsym.inference.runtime`) and the mesh readers need them without importing torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import PcsymError
from . import native

#: kNN computes distances in chunks of at most this many entries per cloud (here and in pcsym.geometry.graph)
KNN_CHUNK_ENTRIES = 1 << 21
KNN_BLOCK_ENTRIES = 1 << 19  # torch kNN: distances per block (2 MiB of float32: cache-sized, see graph.knn)


def knn(query: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices (B, M, k) of the k nearest keys (B, N, 3) of each query (B, M, 3): the compiled kernel
    (:mod:`pcsym.geometry.native`, sorted) when it is available, else chunked numpy (unsorted)."""
    found = native.knn(query, keys, k, native.default_threads())
    return found if found is not None else knn_numpy(query, keys, k)


def knn_numpy(query: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """:func:`knn` in numpy alone: chunked distances and ``argpartition`` (unsorted)."""
    b, m, _ = query.shape
    n = keys.shape[1]
    chunk = max(1, min(m, KNN_CHUNK_ENTRIES // max(n, 1)))
    out = np.empty((b, m, k), dtype=np.int64)
    kk = (keys * keys).sum(-1)[:, None, :]
    for s in range(0, m, chunk):
        q = query[:, s : s + chunk]
        d = (q * q).sum(-1, keepdims=True) - 2.0 * q @ keys.transpose(0, 2, 1) + kk
        out[:, s : s + chunk] = np.argpartition(d, k - 1, axis=-1)[..., :k]
    return out


#: neighbours of the PCA normal estimate (training caches, classify, models fed no normals)
NORMAL_K = 16


def estimate_normals(pos: np.ndarray, k: int = NORMAL_K, neighbours: np.ndarray | None = None) -> np.ndarray:
    """Unit normals of clouds (B, N, 3) or one cloud (N, 3), float32: PCA over the k nearest points
    (the smallest-eigenvalue eigenvector of their covariance, in float64), oriented away from the
    cloud's centroid. Both steps commute with rotations and reflections, so the normals do too.
    ``neighbours`` (B, N, k): the kNN indices when already known (:func:`pcsym.geometry.graph.estimate_normals`
    passes torch's, which is faster on big datasets); the one implementation of the estimate."""
    pos = np.asarray(pos, dtype=np.float32)
    single = pos.ndim == 2
    pos = pos[None] if single else pos
    if pos.ndim != 3 or pos.shape[-1] != 3 or pos.shape[1] == 0:
        raise PcsymError(f"normals need (B, N, 3) or (N, 3) points, got {pos.shape}")
    if neighbours is None:
        neighbours = knn(pos, pos, min(k, pos.shape[1]))
    nb = gather(pos, neighbours.reshape(pos.shape[0], pos.shape[1], -1)).astype(np.float64)  # (B, N, k, 3)
    centred = nb - nb.mean(2, keepdims=True)
    _, vecs = np.linalg.eigh(centred.transpose(0, 1, 3, 2) @ centred)
    normal = vecs[..., 0]
    outward = pos - pos.astype(np.float64).mean(1, keepdims=True)
    normal *= np.where((normal * outward).sum(-1, keepdims=True) < 0, -1.0, 1.0)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    normal = normal.astype(np.float32)
    return normal[0] if single else normal


def fps_order(pos: np.ndarray, m: int) -> np.ndarray:
    """Farthest-point order (B, m) of pos (B, N, 3): :func:`pcsym.geometry.graph.fps_order`, spelled the same way."""
    b, n, _ = pos.shape
    p64 = pos.astype(np.float64)
    cur = ((p64 - p64.mean(1, keepdims=True)) ** 2).sum(-1).argmax(1)
    if pos.dtype == np.float32:  # the loop below, compiled (pcsym.geometry.native), where it is built
        found = native.fps(pos, cur, m, native.default_threads())
        if found is not None:
            return found
    order = np.empty((b, m), dtype=np.int64)
    dist = np.full((b, n), np.inf, dtype=pos.dtype)
    ar = np.arange(b)
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    for i in range(m):
        order[:, i] = cur
        c = pos[ar, cur]
        d = np.square(x - c[:, 0:1]) + np.square(y - c[:, 1:2]) + np.square(z - c[:, 2:3])
        dist = np.minimum(dist, d)
        dist[ar, cur] = -1.0  # never picked twice (duplicate points)
        cur = dist.argmax(1)
    return order


def complete_order(first: np.ndarray, n: int) -> np.ndarray:
    """:func:`pcsym.geometry.graph.complete_order`: ``first`` (B, m), then the other indices of 0..n-1 in order."""
    b, m = first.shape
    key = np.broadcast_to(np.arange(m, m + n), (b, n)).copy()
    np.put_along_axis(key, first, np.broadcast_to(np.arange(m), (b, m)), axis=1)
    return key.argsort(1, kind="stable")


def sampling_order(pos: np.ndarray, sampling: str, sizes, seeded: np.ndarray) -> np.ndarray:
    """:func:`pcsym.geometry.graph.sampling_order` in eval mode, given the vote's seeded random order (N,)."""
    b, n, _ = pos.shape
    if sampling == "fps":
        return complete_order(fps_order(pos, min(n, int(sizes[0]))), n)
    order = np.broadcast_to(seeded, (b, n))
    if sampling == "random-fps" and len(sizes) > 1:
        head = order[:, : int(sizes[0])]
        first = fps_order(np.take_along_axis(pos, head[..., None], axis=1), int(sizes[1]))
        order = np.concatenate([np.take_along_axis(head, complete_order(first, head.shape[1]), 1),
                                order[:, int(sizes[0]):]], 1)
    return order


def gather(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x (B, N, C), idx (B, M, k) -> (B, M, k, C)."""
    return x[np.arange(x.shape[0])[:, None, None], idx]
