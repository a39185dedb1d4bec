"""Evaluation: predictions with test-time votes, accuracy figures, and their files.

Figures: overall accuracy (OA), mean class accuracy (mAcc) and, with a class prior, the accuracy
re-weighted to that prior (``Σ_c π_c · acc_c``). OA is dominated by a split's big classes; a
validation split cut from an unbalanced train split (ModelNet10: chair 889, bathtub 106) therefore
overstates the accuracy on a balanced test split, which mAcc (= the re-weighted accuracy under a
uniform prior) tracks. ``evaluate_checkpoint`` scores the shapes a run held out itself: the split
seed and fraction come from the checkpoint, never from the command line.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import ROTATIONS, SAMPLINGS, TrainConfig, check_choice
from ..data.datasets import load_dataset, with_estimated_normals
from ..data.splits import SPLITS, default_split, run_split
from ..data.transforms import eval_dataset
from ..errors import PcsymError
from ..files import atomic_write_bytes
from ..inference.runtime import energy
from ..models.checkpoint import PRETRAINED, load_model, train_config_of
from ..models.groups import get_group
from ..seeds import derive
from .loader import make_loader
from .plots import confusion_matrix_png
from .unknown import unknown_threshold


def vote_base(eval_seed: int | None) -> int:
    """The first downsampling order (:func:`pcsym.geometry.graph.vote_order`) of an evaluation pass: 0 (the
    eval-mode orders that checkpoints, exports and ``classify`` share) or, for ``evaluate --seed N``, the
    "eval-seed-votes" stream of N (:mod:`pcsym.seeds`)."""
    return 0 if eval_seed is None else derive("eval-seed-votes", int(eval_seed))


@torch.no_grad()
def predict(model, ds, batch_size: int = 32, device="cpu", votes: int = 1, first_order: int = 0,
            energies: bool = False):
    """Class probabilities averaged over ``votes`` copies: copy v uses the dataset's augmentation of
    epoch v and, for randomly downsampling models, the seeded downsampling order ``first_order + v``.
    Models without a pcsym config (the benchmarks' peers) are called as ``model(pos, normals)``. On
    CPU, batches run concurrently on torch's threads, one each (:func:`batch_workers`); every batch's
    result is the same. Returns ``(probabilities, labels)``, with ``energies`` also each shape's energy
    "unknown" score (:func:`pcsym.inference.runtime.energy`, a numpy array) averaged over the votes, as
    ``classify`` computes it: from all the model's logits, also where ``model`` is a view of some of its
    classes (:func:`restrict_to_classes`)."""
    model.eval()
    has_votes = getattr(getattr(model, "cfg", None), "sampling", None) is not None
    subset = isinstance(model, _ClassSubset)

    def probabilities(pos, nrm, v):
        with torch.no_grad():  # grad mode is per thread
            net = model.inner if subset else model
            full = net(pos, nrm, vote=v) if has_votes else net(pos, nrm)
            logits = full.index_select(-1, model.index) if subset else full
            score = energy(full.float().cpu().numpy()) if energies else None
        return torch.softmax(logits.float(), dim=-1).cpu(), score

    total = scores = labels = None
    with batch_workers(torch.get_num_threads() if torch.device(device).type == "cpu" else 1) as submit:
        for v in range(max(1, votes)):
            ds.set_epoch(v)
            outs, ys = [], []
            for pos, nrm, y in make_loader(ds, batch_size, False, 0, v, 0):
                outs.append(submit(probabilities, pos.to(device), nrm.to(device), first_order + v))
                ys.append(y)
            results = [o.result() for o in outs]
            probs = torch.cat([p for p, _ in results])
            total = probs if total is None else total + probs
            if energies:
                e = np.concatenate([s for _, s in results])
                scores = e if scores is None else scores + e
            labels = torch.cat(ys)
    n = max(1, votes)
    if energies:
        return total / n, labels, scores / n
    return total / n, labels


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


@contextlib.contextmanager
def batch_workers(n: int):
    """``submit(fn, *args)`` -> an object with ``.result()``. With n > 1: n threads run whole batches
    side by side, torch set to one intra-op thread meanwhile (restored after). On a 2-core machine
    two batches at once beat one batch on two threads by 10-20% (the model's ops are small and
    torch's intra-op split of them scales poorly); at most 2n batches wait at a time."""
    if n <= 1:
        yield lambda fn, *args: _Done(fn(*args))
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pending: deque = deque()
    try:
        with ThreadPoolExecutor(n, thread_name_prefix="pcsym-batch") as pool:
            def submit(fn, *args):
                while len(pending) >= 2 * n:
                    pending.popleft().result()
                fut = pool.submit(fn, *args)
                pending.append(fut)
                return fut

            yield submit
    finally:
        torch.set_num_threads(before)


def read_prior(spec: str | os.PathLike, class_names: list[str]) -> np.ndarray:
    """A class prior (C,), summing to 1: ``balanced`` (uniform), or a file giving each class a weight
    (counts or probabilities) — JSON ``{"class": weight}`` or lines ``class weight`` / ``class,weight``."""
    if str(spec) == "balanced":
        return np.full(len(class_names), 1.0 / len(class_names))
    path = Path(spec)
    if not path.is_file():
        raise PcsymError("prior file not found (use 'balanced' or a file of class weights)", path=path)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if text.lstrip().startswith("{"):
            table = {str(k): float(v) for k, v in json.loads(text).items()}
        else:
            rows = [ln.replace(",", " ").split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
            table = {r[0]: float(r[1]) for r in rows}
    except (ValueError, IndexError, AttributeError):
        raise PcsymError("prior file must map each class to a weight (JSON or 'class weight' lines)", path=path) from None
    unknown = sorted(set(table) - set(class_names))
    missing = [c for c in class_names if c not in table]
    if unknown or missing:
        raise PcsymError(f"prior file classes do not match the model's (unknown {unknown[:3]}, missing "
                         f"{missing[:3]})", path=path)
    w = np.array([table[c] for c in class_names], dtype=float)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise PcsymError("prior weights must be finite, non-negative and not all zero", path=path)
    return w / w.sum()


def metrics_from_predictions(y_true, y_pred, class_names: list[str], prior: np.ndarray | None = None) -> dict:
    labels = list(range(len(class_names)))
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    present = cm.sum(1) > 0
    per_class = np.where(present, np.diag(cm) / np.maximum(cm.sum(1), 1), np.nan)
    out = {
        "overall_accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "mean_class_accuracy": float(np.nanmean(per_class)) if present.any() else 0.0,
        "per_class_accuracy": {class_names[i]: (None if np.isnan(a) else float(a)) for i, a in enumerate(per_class)},
        "support": {class_names[i]: int(cm[i].sum()) for i in labels},
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "n": int(len(y_true)),
    }
    if prior is not None:
        w = np.where(present, prior, 0.0)
        out["prior_weighted_accuracy"] = float((w * np.nan_to_num(per_class)).sum() / w.sum()) if w.sum() > 0 else 0.0
    return out


def evaluate_model(model, ds, batch_size: int = 32, device="cpu", votes: int = 1, prior=None, world=None,
                   first_order: int = 0) -> dict:
    """Metrics of ``model`` on ``ds``, plus ``unknown_threshold`` calibrated on these shapes. In a
    torchrun job (``world``) each process predicts its share of the shapes and all get the metrics.
    ``first_order``: the downsampling order of the first vote (:func:`vote_base` of an evaluation seed)."""
    if world is not None and world.active:
        shard = copy.copy(ds)
        shard.indices = ds.indices[world.rank::world.size]
        parts = world.gather(predict(model, shard, batch_size, device, votes, first_order))
        probs, labels = torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts])
    else:
        probs, labels = predict(model, ds, batch_size, device, votes, first_order)
    m = metrics_from_predictions(labels.numpy(), probs.argmax(1).numpy(), model.cfg.class_names, prior)
    m["unknown_threshold"] = unknown_threshold(probs.numpy())
    return m


def evaluate_checkpoint(checkpoint: str, data: str | os.PathLike, split: str | None = None, rotate: str = "none",
                        votes: int = 1, prior: str | None = None, batch_size: int = 32, device: str = "cpu",
                        up_axis: str | None = None, fmt: str | None = None, sampling: str | None = None,
                        seed: int | None = None, logits: bool = False) -> dict:
    """Load ``checkpoint`` and score it on ``split`` of ``data`` (default: ``test`` when the dataset
    has one, else ``val``), downsampling with ``sampling`` (default: the model's own scheme). A model
    trained on estimated normals gets estimated normals even where the data has its own.
    ``seed`` (``evaluate --seed N``): draw the evaluation pass with this seed — each shape's points, its
    rotation and the downsampling orders (:func:`pcsym.data.transforms.eval_dataset`, :func:`vote_base`);
    None: the one fixed pass of validation, the benchmarks and the README's figures. ``logits``: also
    return each shape's class probabilities (``probabilities``, averaged over the votes). ``unknown``: the
    model's "unknown" detector on these shapes (:func:`unknown_summary`).
    ``val``/``train`` are the run's own split: its seed and validation fraction come from the
    checkpoint (the defaults, seed 0 and 0.2, for checkpoints that predate storing them)."""
    check_choice(rotate, ROTATIONS, "--rotate")
    check_choice(split, SPLITS, "--split")
    check_choice(sampling, SAMPLINGS, "--sampling")
    if votes < 1:
        raise PcsymError("--votes must be at least 1")
    model, ckpt = load_model(checkpoint, device)
    cfg = model.cfg
    cfg.sampling = sampling or cfg.sampling
    ds_all = load_dataset(data, points=cfg.points, up_axis=up_axis, fmt=fmt)
    model, model_classes = restrict_to_classes(model, ds_all.class_names, data)
    run = train_config_of(ckpt) or TrainConfig()
    split = split or default_split(ds_all)
    if ckpt.get("ensemble_members") and split in ("train", "val"):
        raise PcsymError(f"an ensemble has no --split {split} of its own (its members held out different shapes of "
                         "the train split): evaluate it on --split test or all")
    idx = run_split(ds_all, split, run)
    if cfg.estimated_normals and not ds_all.normals_estimated:  # the data's own normals: estimate as in training
        ds_all, idx = with_estimated_normals(ds_all, cfg.estimated_normals, run.seed, rows=idx), np.arange(len(idx))
    ds = eval_dataset(ds_all, idx, cfg.points, rotate, run.seed, seed)
    weights = None if prior is None else read_prior(prior, model.cfg.class_names)
    probs, labels, energies = predict(model, ds, batch_size, device, votes, vote_base(seed), energies=True)
    m = metrics_from_predictions(labels.numpy(), probs.argmax(1).numpy(), model.cfg.class_names, weights)
    m["unknown"] = unknown_summary(ckpt, probs.numpy(), energies)
    if logits:
        m["probabilities"] = probs.numpy().round(6).tolist()
    m.update({"checkpoint": str(checkpoint), "model": model_name(checkpoint), "group": cfg.group,
              "data": str(data), "rotate": rotate, "split": split, "votes": votes, "sampling": cfg.sampling,
              "seed": seed, "split_seed": run.seed, "val_fraction": run.val_fraction,
              "train_fraction": run.train_fraction, "train_rotate": run.rotate if train_config_of(ckpt) else None,
              "shipped": str(checkpoint) in PRETRAINED})
    if prior is not None:
        m["prior"] = str(prior)
    if model_classes:
        m["model_classes"] = model_classes
    return m


def unknown_summary(ckpt: dict, probs: np.ndarray, energies: np.ndarray) -> dict | None:
    """The checkpoint's own "unknown" detector on the evaluated shapes, as ``classify`` applies it: its score,
    threshold, the share of the shapes it would call "unknown" (score below the threshold) and their mean
    score. On in-class shapes the share is the detector's false-alarm rate on this data (about 5% on the
    shapes it was calibrated on). None for a model without a detector; ``flagged`` None for the
    neighbour-similarity detector of the first ModelNet10 models (it needs pooled features, not logits)."""
    det = ckpt.get("unknown")
    if det is not None and det.get("score") == "energy":
        name, threshold, scores = "energy", float(det["threshold"]), np.asarray(energies, dtype=np.float64)
    elif det is not None:
        return {"score": str(det.get("score")), "threshold": round(float(det["threshold"]), 4), "flagged": None,
                "mean_score": None}
    elif ckpt.get("unknown_threshold") is not None:
        name, threshold = "max-probability", float(ckpt["unknown_threshold"])
        scores = np.asarray(probs, dtype=np.float64).max(axis=1)
    else:
        return None
    return {"score": name, "threshold": round(threshold, 4), "flagged": float((scores < threshold).mean()),
            "mean_score": round(float(scores.mean()), 4)}


class _ClassSubset(torch.nn.Module):
    """A classifier's logits for some of its classes only, in the order given (its ``cfg`` names them)."""

    def __init__(self, model, index: list[int], names: list[str]):
        super().__init__()
        self.inner = model
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))
        self.cfg = copy.copy(model.cfg)
        self.cfg.class_names = list(names)

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs).index_select(-1, self.index)


def restrict_to_classes(model, names, data=None):
    """``model`` scoring the classes ``names`` of a dataset: itself when they are its own, else (the data's
    classes all among the model's, matched by name, e.g. ModelNet10 data for a ModelNet40 model) a view whose
    logits are those classes' in the data's order, so that each shape's answer is the likeliest of the data's
    classes. Returns ``(model or view, the model's number of classes where it is a view, else None)``. Classes
    the model does not know: an error naming them."""
    names, own = [str(n) for n in names], [str(n) for n in model.cfg.class_names]
    if names == own:
        return model, None
    missing = [n for n in names if n not in own]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise PcsymError(f"the dataset has classes the model was not trained on ({shown}); it knows "
                         f"{len(own)} classes", path=data)
    return _ClassSubset(model, [own.index(n) for n in names], names).eval(), len(own)


def model_name(checkpoint) -> str:
    """How messages name a model: a shipped name as is, a run's checkpoint by its run folder and file."""
    s = str(checkpoint)
    p = Path(s)
    return s if not p.exists() or p.is_dir() else (s if p.parent == Path(".") else f"{p.parent.name}/{p.name}")


def invariance_note(model: str, group: str, rotate: str, train_rotate: str | None = None) -> str | None:
    """What ``evaluate --rotate`` tests that the model's group does not cover (None: it is covered): e.g. an
    o2 model is invariant to rotations about z, not to the SO(3) rotations of ``--rotate so3``."""
    spec = get_group(group)
    if rotate == "none":
        return None
    tilt = np.array([[1, 0, 0], [0, np.cos(0.9), -np.sin(0.9)], [0, np.sin(0.9), np.cos(0.9)]])
    spin = np.array([[np.cos(0.7), -np.sin(0.7), 0], [np.sin(0.7), np.cos(0.7), 0], [0, 0, 1]])
    member = spec.member if spec.member is not None else (lambda M, det, atol: False)
    if member(tilt @ spin, 1.0, 1e-6) or (rotate == "z" and member(spin, 1.0, 1e-6)):
        return None
    covers = ("rotations about z" if member(spin, 1.0, 1e-6) else
              "no rotation" if spec.order == 1 else f"the {spec.order} elements of {group} ({spec.description})")
    asked = "SO(3) rotations" if rotate == "so3" else "rotations about z"
    learned = (f"; its training's --rotate {train_rotate} may have taught it some of the rest"
               if train_rotate in ("so3",) or (train_rotate == "z" and rotate == "z") else "")
    return f"{model} (group {group}) is invariant only to {covers}: --rotate {rotate} tests {asked} it was not " \
           f"built for{learned}"


def write_eval_outputs(out: Path, m: dict) -> None:
    """metrics.json, confusion.csv and confusion.png in ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "metrics.json", json.dumps(m, indent=2).encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true\\pred"] + m["class_names"])
    for name, row in zip(m["class_names"], m["confusion_matrix"]):
        w.writerow([name] + row)
    atomic_write_bytes(out / "confusion.csv", buf.getvalue().encode())
    confusion_matrix_png(m["confusion_matrix"], m["class_names"], out / "confusion.png",
                         f"{m.get('model', m['checkpoint'])} ({m.get('group', '?')}): OA {m['overall_accuracy']:.3f}, "
                         f"mAcc {m['mean_class_accuracy']:.3f}, split={m['split']}, rotate={m['rotate']}"
                         + (f", seed={m['seed']}" if m.get("seed") is not None else ""))
