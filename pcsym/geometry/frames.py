"""PCA frames: the views through which a model with ``frames: pca`` sees a cloud (numpy; torch twin in
:func:`pcsym.geometry.graph.frame_views`).

The covariance of a cloud's centred points has three eigenvectors v_0, v_1, v_2, each known up to its sign,
and they turn with the cloud. A *view* (i, s) is the proper rotation R whose rows are (a·v_j, v_k, s·v_i),
(j, k) the cyclic successors of i and a = s·det[v_0 v_1 v_2]: it takes the axis ±v_i to +z. The six views
(3 axes x 2 signs) are the PCA frame averaging set (Puny et al., "Frame Averaging for Invariant and
Equivariant Network Design", ICLR 2022): a network invariant to rotations about z, averaged over the six,
is invariant to every rotation of its input, whatever the eigensolver's order and signs. A flipped v_j leaves
the view unchanged, a flipped v_k turns it by pi about z, a flipped v_i swaps s; the eigenvalues' order does
not matter because every axis is a view. (Where two eigenvalues are equal their eigenvectors are any basis
of a plane: invariance then holds only as far as the backbone is invariant to that plane's rotation.)
"""

from __future__ import annotations

import numpy as np

#: views of one cloud: 3 principal axes x 2 signs
FRAME_VIEWS = 6
#: the rotation of view v, row by row: eigenvector VIEW_ROWS[v][r] (columns of V) times VIEW_SIGNS[v][r], the
#: first row also times det V, i.e. (s·det·v_j, v_k, s·v_i) for axis i, its cyclic successors j, k, and sign s;
#: the one table both frame_views (numpy here, torch in pcsym.geometry.graph) read
VIEW_ROWS = tuple(((i + 1) % 3, (i + 2) % 3, i) for i in range(3) for _ in (1.0, -1.0))
VIEW_SIGNS = tuple((s, 1.0, s) for _ in range(3) for s in (1.0, -1.0))


def view_rotations(vectors: np.ndarray) -> np.ndarray:
    """The six view rotations (..., 6, 3, 3) of eigenvector matrices ``vectors`` (..., 3, 3) (columns
    v_0, v_1, v_2): row-wise (a·v_j, v_k, s·v_i) for i = 0, 1, 2 and s = +1, -1 (see the module)."""
    det = np.linalg.det(vectors)
    scale = np.asarray(VIEW_SIGNS) * np.stack([det, np.ones_like(det), np.ones_like(det)], -1)[..., None, :]
    return np.swapaxes(vectors, -1, -2)[..., VIEW_ROWS, :] * scale[..., None]


def principal_axes(points: np.ndarray) -> np.ndarray:
    """Eigenvectors (..., 3, 3), as columns, of the covariance of ``points`` (..., N, 3) about their centroid,
    computed in float64."""
    x = np.asarray(points, dtype=np.float64)
    x = x - x.mean(axis=-2, keepdims=True)
    cov = np.swapaxes(x, -1, -2) @ x / max(x.shape[-2], 1)
    return np.linalg.eigh(cov)[1]


def frame_views(points: np.ndarray) -> np.ndarray:
    """The six view rotations (..., 6, 3, 3) of clouds ``points`` (..., N, 3), in ``points``' float dtype."""
    return view_rotations(principal_axes(points)).astype(np.asarray(points).dtype, copy=False)


def random_view(points: np.ndarray, normals: np.ndarray, rng: np.random.Generator):
    """One cloud (N, 3) and its normals seen through one of its six views drawn by ``rng`` (training: the
    network learns from every view, evaluation averages them)."""
    rot = frame_views(points)[int(rng.integers(FRAME_VIEWS))]
    return points @ rot.T, normals @ rot.T
