""""unknown": shapes outside a model's training classes.

Two scores, each with a threshold calibrated to keep ``UNKNOWN_KEEP`` of the run's own validation shapes:

* **neighbour similarity** (checkpoints and numpy exports of models trained or calibrated with this
  pcsym): the cosine similarity of a shape's pooled invariant features to its k-th most similar
  training shape (:func:`pcsym.inference.runtime.neighbour_similarity`; deep nearest neighbours, Sun et al.,
  ICML 2022). The model stores the unit features of its training shapes (the *bank*, float16).
* **max probability** (Hendrycks & Gimpel, ICLR 2017): what remains for runtimes that see only
  logits (TorchScript, ONNX) and for older checkpoints.

On ModelNet-40 shapes of classes that ModelNet10 lacks, the neighbour score flags about twice as many
as max probability at the same validation keep rate; README ("unknown") has the figures, including the
real meshes on which it does worse for the o2 model.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.transforms import eval_dataset
from ..inference.runtime import UNKNOWN_K, neighbour_similarity
from ..models.checkpoint import load_model, update_checkpoint
from ..seeds import derive
from .loader import make_loader

#: fraction of in-class validation shapes a calibrated "unknown" threshold keeps
UNKNOWN_KEEP = 0.95


def score_threshold(scores, keep: float = UNKNOWN_KEEP) -> float:
    """The threshold that keeps ``keep`` of these in-class (validation) scores: their (1 - keep) quantile."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.quantile(scores, 1.0 - keep)) if len(scores) else 0.0


def unknown_threshold(probs, keep: float = UNKNOWN_KEEP) -> float:
    """The max-probability threshold (see the module doc) keeping ``keep`` of these shapes."""
    return score_threshold(np.asarray(probs, dtype=np.float64).max(axis=1), keep)


def pooled_features(model, ds, batch_size: int = 32, device="cpu") -> np.ndarray:
    """Pooled invariant features (len(ds), D) of a dataset's shapes, eval mode, vote 0."""
    model.eval()
    out = []
    with torch.no_grad():
        for pos, nrm, _ in make_loader(ds, batch_size, False, 0, 0, 0):
            out.append(model(pos.to(device), nrm.to(device), pooled=True)[1].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2 * model.cfg.invariant_dims), dtype=np.float32)


def feature_bank(model, data, train_idx, rotate: str, seed: int):
    """The bank: unit pooled features (float16) of the training shapes ``train_idx`` of ``data``, rotated
    as ``rotate`` (seeded apart from the validation rotations of ``seed``)."""
    bank = pooled_features(model, eval_dataset(data, train_idx, model.cfg.points, rotate, derive("bank", seed)))
    return (bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)).astype(np.float16)


def calibrate(model, data, train_idx, val_idx, rotate: str, seed: int, keep: float = UNKNOWN_KEEP) -> dict:
    """The neighbour-similarity detector of ``model``: the :func:`feature_bank` of the training shapes
    ``train_idx`` of ``data`` and the threshold keeping ``keep`` of the validation shapes ``val_idx``
    (rotated as ``rotate``). Stored in checkpoints as ``"unknown"``."""
    bank = feature_bank(model, data, train_idx, rotate, seed)
    val = pooled_features(model, eval_dataset(data, val_idx, model.cfg.points, rotate, seed))
    threshold = score_threshold(neighbour_similarity(val, bank, UNKNOWN_K), keep)
    return {"score": "neighbour-similarity", "k": UNKNOWN_K, "threshold": threshold, "keep": keep,
            "bank": torch.from_numpy(bank)}


def calibrate_checkpoint(path, data, train_idx, val_idx, rotate: str, seed: int, keep: float = UNKNOWN_KEEP) -> dict:
    """Add (or replace) the neighbour-similarity detector of the checkpoint at ``path`` (rewritten
    atomically; everything else it holds is kept). Returns the detector without its bank."""
    model, ckpt = load_model(path)
    unknown = calibrate(model, data, train_idx, val_idx, rotate, seed, keep)
    update_checkpoint(path, model, ckpt, {"unknown": unknown})
    return {k: v for k, v in unknown.items() if k != "bank"}
