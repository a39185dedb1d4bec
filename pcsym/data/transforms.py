"""Per-shape transforms and the torch dataset that applies them.

Each augmentation is a small callable ``t(points, normals, rng) -> (points, normals)`` with an honest
``repr``; :class:`PointCloudDataset` composes them in a fixed order (subset, scale, anisotropic scale,
rotate, jitter, dropout, frame view) and draws every random number from a generator seeded by (seed, epoch,
shape index), so a run is reproducible for any DataLoader worker layout. Importing this module
needs no torch (the numpy classify path uses :func:`to_z_up`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import seeds
from ..config import ROTATIONS, TrainConfig, check_choice
from ..errors import PcsymError
from ..geometry.frames import random_view
from ..seeds import derive
from .meshes import Y_UP_TO_Z_UP


def to_z_up(points: np.ndarray, normals: np.ndarray, up_axis: str | None):
    """Points and normals of a ``up_axis``-up shape in pcsym's z-up convention: y-up data is turned
    by the proper rotation (x, y, z) -> (x, -z, y) (+90 degrees about x); z-up data is returned as is."""
    if up_axis in (None, "z"):
        return points, normals
    check_choice(up_axis, ("y",), "up axis")
    rot = Y_UP_TO_Z_UP.astype(points.dtype)
    return points @ rot.T, normals @ rot.T


def rotation_matrix(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A random rotation, float32 (3, 3): ``"z"`` uniform about the z axis, ``"so3"`` uniform
    (Haar) on SO(3) via a normalized Gaussian quaternion, ``"none"`` the identity."""
    check_choice(kind, ROTATIONS, "rotation")
    if kind == "none":
        return np.eye(3, dtype=np.float32)
    if kind == "z":
        t = rng.uniform(0.0, 2.0 * np.pi)
        c, s = np.cos(t), np.sin(t)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=np.float32,
    )


@dataclass(frozen=True)
class Scale:
    """Isotropic scaling by a factor drawn uniformly from [low, high]."""

    low: float
    high: float

    def __call__(self, pts, nrm, rng):
        return pts * np.float32(rng.uniform(self.low, self.high)), nrm


@dataclass(frozen=True)
class AnisotropicScale:
    """Independent per-axis factors in [low, high] (breaks rotation symmetry); normals follow the
    inverse transpose and are renormalised."""

    low: float
    high: float

    def __call__(self, pts, nrm, rng):
        factors = rng.uniform(self.low, self.high, size=3).astype(np.float32)
        nrm = nrm / factors
        return pts * factors, nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Rotate:
    """A random rotation of kind ``none``, ``z`` or ``so3`` (see :func:`rotation_matrix`)."""

    kind: str

    def __call__(self, pts, nrm, rng):
        rot = rotation_matrix(self.kind, rng)
        return pts @ rot.T, nrm @ rot.T


@dataclass(frozen=True)
class Jitter:
    """Gaussian noise of std ``sigma`` on positions, clipped to ±``clip``."""

    sigma: float
    clip: float = TrainConfig.jitter_clip

    def __call__(self, pts, nrm, rng):
        noise = np.clip(self.sigma * rng.standard_normal(pts.shape), -self.clip, self.clip)
        return pts + noise.astype(np.float32), nrm


@dataclass(frozen=True)
class PointDropout:
    """PointNet++'s random point dropout: a fraction r ~ U[0, max_fraction] of the points is
    replaced (with its normal) by the first point."""

    max_fraction: float

    def __call__(self, pts, nrm, rng):
        drop = rng.random(len(pts)) <= rng.random() * self.max_fraction
        pts, nrm = pts.copy(), nrm.copy()
        pts[drop], nrm[drop] = pts[0], nrm[0]
        return pts, nrm


@dataclass(frozen=True)
class FrameView:
    """One of the cloud's six PCA-frame views, drawn uniformly (the training input of a model with
    ``frames: pca``; see :mod:`pcsym.geometry.frames`). Last in the pipeline: the frame of the augmented cloud."""

    def __call__(self, pts, nrm, rng):
        return random_view(pts, nrm, rng)


def augmentations(rotate: str = "none", jitter: float = 0.0, jitter_clip: float = TrainConfig.jitter_clip,
                  scale: tuple[float, float] | None = None, anisotropic_scale: tuple[float, float] | None = None,
                  point_dropout: float = 0.0, frames: str = "none") -> list:
    """The augmentation pipeline, in its fixed order, leaving out the ones switched off."""
    check_choice(rotate, ROTATIONS, "rotation")
    if not 0.0 <= point_dropout < 1.0:
        raise PcsymError(f"point dropout must be in [0, 1), got {point_dropout}")
    steps = [Scale(*scale) if scale is not None else None,
             AnisotropicScale(*anisotropic_scale) if anisotropic_scale is not None else None,
             Rotate(rotate) if rotate != "none" else None,
             Jitter(float(jitter), float(jitter_clip)) if jitter > 0 else None,
             PointDropout(float(point_dropout)) if point_dropout > 0 else None,
             FrameView() if frames != "none" else None]
    return [t for t in steps if t is not None]


class PointCloudDataset:
    """A map-style torch dataset (torch is imported on first item, so this module stays torch-free):
    shapes of a :class:`~pcsym.data.datasets.PointCloudData` (optionally a subset ``indices``) as tensors.

    ``dataset[i]`` -> ``(points (P, 3) float32, normals (P, 3) float32, label int)``.

    * ``points``: P. If the stored clouds have more points, ``resample=True`` draws a fresh random
      subset on every access, ``resample=False`` takes the first P. Fewer stored points are padded
      by resampling with replacement.
    * the augmentations of :func:`augmentations` (``rotate``, ``jitter``, ``scale``,
      ``anisotropic_scale``, ``point_dropout``, and a PCA-frame view with ``frames``); ``repr(dataset)``
      lists the active ones.

    Call :meth:`set_epoch` at the start of each epoch to vary the randomness.
    """

    def __init__(self, data, indices: np.ndarray | None = None, points: int = 1024, resample: bool = True,
                 rotate: str = "none", jitter: float = 0.0, jitter_clip: float = TrainConfig.jitter_clip,
                 scale: tuple[float, float] | None = None, anisotropic_scale: tuple[float, float] | None = None,
                 point_dropout: float = 0.0, seed: int = 0, frames: str = "none"):
        self.data = data
        self.indices = np.arange(len(data.labels)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.points = int(points)
        self.resample = resample
        self.rotate = rotate
        self.transforms = augmentations(rotate, jitter, jitter_clip, scale, anisotropic_scale, point_dropout, frames)
        self.seed = int(seed)
        self.epoch = 0

    def __repr__(self) -> str:
        return (f"PointCloudDataset({len(self)} shapes, points={self.points}, resample={self.resample}, "
                f"transforms={self.transforms})")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        import torch

        shape = int(self.indices[i])
        rng = seeds.rng(self.seed, self.epoch, shape)
        pts, nrm = self.data.points[shape], self.data.normals[shape]
        stored = len(pts)
        if stored > self.points:
            idx = rng.choice(stored, self.points, replace=False) if self.resample else np.arange(self.points)
        elif stored < self.points:
            idx = np.concatenate([np.arange(stored), rng.choice(stored, self.points - stored, replace=True)])
        else:
            idx = None
        pts = np.array(pts if idx is None else pts[idx], dtype=np.float32)
        nrm = np.array(nrm if idx is None else nrm[idx], dtype=np.float32)
        for t in self.transforms:
            pts, nrm = t(pts, nrm, rng)
        return (torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(nrm, dtype=np.float32)), int(self.data.labels[shape]))


def eval_dataset(data, indices, points: int, rotate: str, run_seed: int, eval_seed: int | None = None
                 ) -> PointCloudDataset:
    """The clouds a run is validated or evaluated on: the first ``points`` stored points of each shape,
    no augmentation but ``rotate``, whose rotations are seeded from the run's seed (offset so that
    they differ from the training draws). Training, ``evaluate`` and the benchmarks all use this.

    ``eval_seed`` (``evaluate --seed N``): another draw of the evaluation pass instead, for the spread
    of a figure over evaluation seeds: each shape's ``points`` are a random subset of its stored points
    (where it has more) and its rotation is drawn, both seeded by N (the "eval-seed" stream)."""
    if eval_seed is None:
        return PointCloudDataset(data, indices, points=points, rotate=rotate, resample=False,
                                 seed=derive("eval", run_seed))
    if eval_seed < 0:
        raise PcsymError(f"evaluation seed must be 0 or more, got {eval_seed}")
    return PointCloudDataset(data, indices, points=points, rotate=rotate, resample=True,
                             seed=derive("eval-seed", int(eval_seed)))
