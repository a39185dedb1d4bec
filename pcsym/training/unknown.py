""""unknown": shapes outside a model's training classes.

Scores, each with a threshold calibrated to keep ``UNKNOWN_KEEP`` of in-class shapes (the run's own
validation shapes when it trains; the shipped models: their test-dev shapes):

* **energy** (models trained or calibrated since 2026-12-06): the log-sum-exp of the logits (Liu et al.,
  NeurIPS 2020; :func:`pcsym.inference.runtime.energy`). It needs only the logits, so every export format
  (numpy, TorchScript, ONNX) carries it, and no bank of training features. On the 8 real meshes of
  ``../shared/meshes``, ``pcsym classify`` with the shipped so3 and o2 flags 3 and 4 of them while keeping
  94-95% of ModelNet40 test-dev, where the neighbour score below flagged 1 and 3 (docs/experiments.md,
  "unknown: the energy score").
* **neighbour similarity** (older checkpoints and numpy exports): the cosine similarity of a shape's pooled
  invariant features to its k-th most similar training shape (:func:`pcsym.inference.runtime.neighbour_similarity`;
  Sun et al., ICML 2022), with the unit features of the training shapes stored as the *bank*.
* **max probability** (Hendrycks & Gimpel, ICLR 2017): what remains for models calibrated before either.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.transforms import eval_dataset
from ..inference.runtime import UNKNOWN_K, energy, neighbour_similarity
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


def network_outputs(model, ds, batch_size: int = 32, device="cpu", vote: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits (len(ds), C) and pooled invariant features (len(ds), D) of a dataset's shapes, eval mode,
    downsampling order ``vote`` (0: the order classify and the exports use; :func:`pcsym.training.evaluate.vote_base`
    of an evaluation seed)."""
    model.eval()
    logits, features = [], []
    with torch.no_grad():
        for pos, nrm, _ in make_loader(ds, batch_size, False, 0, 0, 0):
            lg, f = model(pos.to(device), nrm.to(device), vote=vote, pooled=True)
            logits.append(lg.float().cpu())
            features.append(f.float().cpu())
    if not logits:
        return (np.zeros((0, len(model.cfg.class_names)), dtype=np.float32),
                np.zeros((0, 2 * model.cfg.invariant_dims), dtype=np.float32))
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def pooled_features(model, ds, batch_size: int = 32, device="cpu") -> np.ndarray:
    """Pooled invariant features (len(ds), D) of a dataset's shapes, eval mode, vote 0."""
    return network_outputs(model, ds, batch_size, device)[1]


def logits_of(model, ds, batch_size: int = 32, device="cpu", vote: int = 0) -> np.ndarray:
    """Logits (len(ds), C) of a dataset's shapes (:func:`network_outputs`)."""
    return network_outputs(model, ds, batch_size, device, vote)[0]


def energy_detector(model, data, idx, rotate: str, seed: int, keep: float = UNKNOWN_KEEP) -> dict:
    """The energy-score detector of ``model``: the threshold keeping ``keep`` of the shapes ``idx`` of
    ``data`` (rotated as ``rotate``, drawn with ``seed``). Stored in checkpoints as ``"unknown"``."""
    scores = energy(logits_of(model, eval_dataset(data, idx, model.cfg.points, rotate, seed)))
    return {"score": "energy", "threshold": score_threshold(scores, keep), "keep": keep}


def feature_bank(model, data, train_idx, rotate: str, seed: int):
    """The bank: unit pooled features (float16) of the training shapes ``train_idx`` of ``data``, rotated
    as ``rotate`` (seeded apart from the validation rotations of ``seed``)."""
    bank = pooled_features(model, eval_dataset(data, train_idx, model.cfg.points, rotate, derive("bank", seed)))
    return (bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)).astype(np.float16)


def calibrate(model, data, train_idx, val_idx, rotate: str, seed: int, keep: float = UNKNOWN_KEEP,
              score: str = "energy") -> dict:
    """The "unknown" detector of ``model``, its threshold keeping ``keep`` of the validation shapes
    ``val_idx`` of ``data`` (rotated as ``rotate``): ``score="energy"`` (:func:`energy_detector`), or
    ``"neighbour-similarity"``, with the :func:`feature_bank` of the training shapes ``train_idx``.
    Stored in checkpoints as ``"unknown"``."""
    if score == "energy":
        return energy_detector(model, data, val_idx, rotate, seed, keep)
    bank = feature_bank(model, data, train_idx, rotate, seed)
    val = pooled_features(model, eval_dataset(data, val_idx, model.cfg.points, rotate, seed))
    threshold = score_threshold(neighbour_similarity(val, bank, UNKNOWN_K), keep)
    return {"score": "neighbour-similarity", "k": UNKNOWN_K, "threshold": threshold, "keep": keep,
            "bank": torch.from_numpy(bank)}


def calibrate_checkpoint(path, data, train_idx, val_idx, rotate: str, seed: int, keep: float = UNKNOWN_KEEP,
                         score: str = "energy") -> dict:
    """Add (or replace) the "unknown" detector (:func:`calibrate`) of the checkpoint at ``path`` (rewritten
    atomically; everything else it holds is kept). Returns the detector without a bank."""
    model, ckpt = load_model(path)
    unknown = calibrate(model, data, train_idx, val_idx, rotate, seed, keep, score)
    update_checkpoint(path, model, ckpt, {"unknown": unknown})
    return {k: v for k, v in unknown.items() if k != "bank"}
