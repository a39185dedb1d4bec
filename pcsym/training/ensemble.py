"""``pcsym ensemble``: combine trained models of one architecture into one checkpoint (their logits averaged,
:mod:`pcsym.models.ensemble`) and calibrate its "unknown" detector (the energy score) on shapes none of the
members trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data.datasets import load_dataset
from ..data.splits import run_split
from ..errors import PcsymError
from ..models.checkpoint import load_model, resolve_checkpoint, save_checkpoint, train_config_of
from ..models.ensemble import combine, members_of
from .unknown import UNKNOWN_KEEP, energy_detector

#: calibrating on the shapes every member held out needs at least this share of one member's held-out shapes
MIN_COMMON_SHARE = 0.5


def calibration_shapes(data, runs: list[TrainConfig], split: str) -> np.ndarray:
    """The shapes the ensemble's detector is calibrated on: ``test``, the dataset's test split; ``val``, the
    shapes every member held out (all of them for members trained with one seed; runs with different seeds
    hold out different shapes, and then too few are common: refused)."""
    if split == "test":
        return run_split(data, "test", runs[0])
    held_out = [run_split(data, "val", run) for run in runs]
    common = held_out[0]
    for idx in held_out[1:]:
        common = np.intersect1d(common, idx)
    if len(common) < MIN_COMMON_SHARE * min(len(idx) for idx in held_out):
        raise PcsymError(f"the members held out only {len(common)} shapes in common (their seeds drew different "
                         "validation splits), too few to calibrate 'unknown' on: pass --split test to use the "
                         "dataset's test split, or leave --data out to make the ensemble without a detector")
    return common


def make_ensemble(models: list[str], out: str | Path, data: str | Path | None = None, split: str = "val",
                  keep: float = UNKNOWN_KEEP) -> dict:
    """Write the ensemble of ``models`` (checkpoints, run folders, shipped names, ensembles) to ``out``. With
    ``data``: its energy "unknown" threshold keeps ``keep`` of :func:`calibration_shapes`, at the members'
    evaluation rotation. Returns a summary (members, parameters, threshold)."""
    loaded = [load_model(m) for m in models]
    ens = combine([m for m, _ in loaded], [str(m) for m in models])
    runs = [train_config_of(ck) for _, ck in loaded]
    known = [r for r in runs if r is not None]
    rotations = sorted({r.eval_rotate for r in known})
    if len(rotations) > 1:
        raise PcsymError(f"the members were validated under different rotations ({', '.join(rotations)}): an "
                         "ensemble's members must be trained for the same protocol")
    run = known[0] if known else TrainConfig()
    detector, shapes = None, 0
    if data is not None:
        if len(known) < len(runs) and split == "val":
            raise PcsymError("a member does not record its training split: calibrate on --split test")
        ds = load_dataset(data, points=ens.cfg.points)
        idx = calibration_shapes(ds, known or [run], split)
        detector, shapes = energy_detector(ens, ds, idx, run.eval_rotate, run.seed, keep), len(idx)
    # one entry per member (an input ensemble brings its own), and the training that made the ensemble: every
    # member's epochs, tagged with the member's index (training time counts all of them)
    members, history = [], []
    for name, (_, ck), r in zip(models, loaded, runs):
        first = len(members)
        members += ck.get("members") or [{"source": str(resolve_checkpoint(name)), "seed": r.seed if r else None}]
        history += [{**e, "member": first + e.get("member", 0)} for e in ck.get("history") or []]
    extra = {"train_config": run.to_dict(), "members": members, "unknown": detector, "history": history}
    if detector is not None:
        extra["unknown_calibration"] = {"data": str(data), "split": split, "shapes": shapes}
    save_checkpoint(out, ens, ens.cfg, extra)
    return {"out": str(out), "members": len(members_of(ens)), "params": sum(p.numel() for p in ens.parameters()),
            "group": ens.cfg.group, "classes": len(ens.cfg.class_names),
            "threshold": None if detector is None else detector["threshold"], "calibration_shapes": shapes}
