"""Inference on single shapes: one :func:`load_classifier` for every kind of model file.

* ``.npz`` numpy exports — and the shipped models, which ship one — run through
  :mod:`pcsym.runtime` without importing torch or escnn (a cold ``classify`` in about half a second);
* ``.ts`` TorchScript exports run with plain torch;
* anything else is a checkpoint, rebuilt with escnn.

Each gives a :class:`Classifier`: the model config plus ``probabilities(points, normals, votes)``,
averaged over the same seeded downsampling orders as ``evaluate --votes``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import PcsymError


class Classifier:
    """A loaded model of any kind: ``cfg`` (its :class:`~pcsym.config.ModelConfig`) and
    :meth:`probabilities`. ``logits(pos, normals, vote)`` takes (1, N, 3) float32 arrays."""

    def __init__(self, cfg, logits: Callable[[np.ndarray, np.ndarray, int], np.ndarray], max_votes: int):
        self.cfg, self._logits, self.max_votes = cfg, logits, max_votes

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.class_names)

    def probabilities(self, points: np.ndarray, normals: np.ndarray, votes: int = 1) -> np.ndarray:
        """Class probabilities (C,) of one cloud (N, 3) with its normals, averaged over ``votes``
        seeded downsampling orders (vote v uses :func:`pcsym.graph.vote_order` (v); models that
        sample farthest points have one order per cloud, so one vote)."""
        from .runtime import softmax

        pts = np.asarray(points, dtype=np.float32)[None]
        nrm = np.asarray(normals, dtype=np.float32)[None]
        n = min(max(1, votes), self.max_votes)
        return np.mean([softmax(self._logits(pts, nrm, v))[0] for v in range(n)], axis=0)


def _torch_logits(net, scripted: bool, random_order: bool):
    import torch

    from .graph import vote_order

    def logits(pts, nrm, vote):
        p, n = torch.as_tensor(pts), torch.as_tensor(nrm)
        with torch.no_grad():
            if scripted:
                out = net(p, n, vote=vote)
            else:  # a checkpoint's model; farthest-point models compute their own order
                out = net(p, n, order=vote_order(vote, 1, p.shape[1]) if random_order else None)
        return out.float().numpy()

    return logits


def load_classifier(name_or_path: str | os.PathLike, threads: int = 0) -> Classifier:
    """A shipped model name (``so3``, ``o2``), a numpy export, a TorchScript export, a checkpoint
    or a run folder, loaded for inference."""
    from .checkpoint import PRETRAINED, resolve_checkpoint
    from .runtime import VOTE_ORDERS

    p = resolve_checkpoint(name_or_path)
    fast = p.with_suffix(".npz") if str(name_or_path) in PRETRAINED else p
    if fast.suffix == ".npz" and fast.exists():
        from .runtime import NumpyClassifier

        net = NumpyClassifier(fast)
        return Classifier(net.cfg, lambda pts, nrm, vote: net(pts, nrm, vote=vote), VOTE_ORDERS)
    import torch

    if threads:
        torch.set_num_threads(threads)
    if p.suffix == ".ts":
        from .export import ScriptedClassifier

        net = ScriptedClassifier(p)
        return Classifier(net.cfg, _torch_logits(net, True, True), VOTE_ORDERS)
    from .checkpoint import load_model

    model = load_model(p)[0]
    random_order = model.cfg.sampling == "random"
    return Classifier(model.cfg, _torch_logits(model, False, random_order), VOTE_ORDERS if random_order else 1)


def classify_file(clf: Classifier, path: str | os.PathLike, top_k: int = 5, votes: int = 1, seed: int = 0,
                  max_vertices: int = 2_000_000, up_axis: str | None = None) -> dict:
    """``{"file", "ok": True, "top": [{"class", "probability"}, ...]}`` for a readable mesh or cloud,
    ``{"file", "ok": False, "error"}`` for one that is not (its one-line reason)."""
    from .meshes import load_cloud
    from .transforms import to_z_up

    try:
        pts, nrm = load_cloud(path, n_points=clf.cfg.points, rng=np.random.default_rng(seed),
                              max_vertices=max_vertices)
        pts, nrm = to_z_up(pts, nrm, up_axis)
        probs = clf.probabilities(pts, nrm, votes)
    except PcsymError as exc:
        return {"file": str(path), "ok": False, "error": str(exc)}
    top = np.argsort(-probs, kind="stable")[:top_k]
    return {"file": str(path), "ok": True,
            "top": [{"class": clf.class_names[int(i)], "probability": round(float(probs[i]), 4)} for i in top]}


def expand_inputs(inputs, extensions) -> list[Path]:
    """Files to classify: each file as given, each directory's supported files (recursively, sorted)."""
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in extensions)
            if not found:
                raise PcsymError(f"directory contains no supported files ({', '.join(sorted(extensions))})", path=p)
            files += found
        else:
            files.append(p)
    return files
