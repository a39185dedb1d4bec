"""The train / val / test split — its one definition, used by training, evaluation and the benchmarks."""

from __future__ import annotations

import numpy as np

from .. import seeds
from ..config import check_choice
from ..errors import PcsymError
from ..seeds import derive
from .datasets import PointCloudData

SPLITS = ("train", "val", "test", "all")


def train_val_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of ``range(len(labels))`` into sorted (train_idx, val_idx).

    Each class contributes ``round(val_fraction * n_c)`` shapes to validation, at least one when
    it has two or more shapes and ``val_fraction > 0``, and never all of them.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise PcsymError(f"validation fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels).reshape(-1)
    rng = seeds.rng(seed)
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            k = max(k, 1)
        val.append(members[: min(k, len(members) - 1)])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def default_split(data: PointCloudData) -> str:
    """``test`` when the dataset has an official test split, else ``val``."""
    return "test" if (np.asarray(data.split) == "test").any() else "val"


def split_indices(data: PointCloudData, split: str, val_fraction: float, seed: int,
                  train_fraction: float = 1.0) -> np.ndarray:
    """Shape indices of ``split`` — the one definition of pcsym's splits, used by training,
    evaluation and the benchmarks.

    ``train`` and ``val`` divide the dataset's official train split with :func:`train_val_split`
    (``val_fraction``, ``seed``: pass a run's own settings to get the shapes it held out, or use
    :func:`run_split`); ``train_fraction`` < 1 keeps that stratified, seeded part of ``train`` (learning
    curves: the validation shapes stay the same, the shapes dropped are used by nothing); ``test``
    is the official test split; ``all`` is everything. A dataset without a train split has no
    ``train``/``val``, and one without a test split no ``test``: asking for them is an error.
    """
    check_choice(split, SPLITS, "split")
    sp = np.asarray(data.split)
    if split == "all":
        return np.arange(len(sp))
    if split == "test":
        idx = np.flatnonzero(sp == "test")
        if len(idx) == 0:
            raise PcsymError("the dataset has no test split (use --split val)", path=data.path)
        return idx
    pool = np.flatnonzero(sp == "train")
    if len(pool) == 0:
        raise PcsymError(f"the dataset has no train split, so no '{split}' split (use --split test or all)",
                         path=data.path)
    counts = np.bincount(np.asarray(data.labels)[pool], minlength=len(data.class_names))
    thin = [str(data.class_names[c]) for c in np.flatnonzero(counts == 1)]
    if thin:
        raise PcsymError(f"class '{thin[0]}' has only 1 shape in the train split; a train/val split needs at least 2 "
                         f"per class ({len(thin)} such class(es))", path=data.path)
    labels = np.asarray(data.labels)[pool]
    tr, va = train_val_split(labels, val_fraction, seed)
    if split == "val":
        return pool[va]
    if not 0 < train_fraction <= 1:
        raise PcsymError(f"the training fraction must be in (0, 1], got {train_fraction:g}")
    if train_fraction < 1:  # the same stratified draw, seeded apart from the validation one
        tr = tr[train_val_split(labels[tr], 1.0 - train_fraction, derive("train-fraction", seed))[0]]
    return pool[tr]


def run_split(data: PointCloudData, split: str, run) -> np.ndarray:
    """:func:`split_indices` with a run's own settings (its :class:`~pcsym.config.TrainConfig`): the shapes
    it trained on (``train``) or held out (``val``)."""
    return split_indices(data, split, run.val_fraction, run.seed, run.train_fraction)
