"""The training loop: writes best.pt, last.pt, metrics.csv, config.json and a learning curve.

Every epoch is seeded from (seed, epoch) and the data loader from (seed, epoch), so ``--resume``
continues exactly as an uninterrupted run would — also from the middle of an epoch, where Ctrl-C
saves the step, the running sums and the RNG state (:class:`RunState`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ModelConfig, TrainConfig
from ..data.datasets import load_dataset
from ..data.splits import run_split
from ..data.transforms import PointCloudDataset, eval_dataset
from ..errors import PcsymError
from ..files import atomic_write_bytes
from ..models.checkpoint import load_weights, read_checkpoint, save_checkpoint
from ..models.classifier import build_model
from ..models.layers import EquivBatchNorm
from ..models.shards import Shards, forward, forward_backward
from ..seeds import derive
from .allocator import keep_freed_memory
from .distributed import World, resolve_device, setup, synchronise_norms
from .ema import WeightAverage
from .evaluate import evaluate_model
from .loader import Prefetch, make_loader
from .mix import mix_generator, point_cutmix
from .plots import learning_curve
from .unknown import calibrate_checkpoint

#: the validation figure each ``--select`` choice compares (keys of a metrics row); ``last`` compares
#: nothing: best.pt is the last epoch (a small validation split cannot pick an epoch), its figure mAcc
SELECT_COLUMN = {"macc": "val_macc", "oa": "val_acc", "last": "val_macc"}


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(derive("numpy-global", seed))


def make_schedule(tcfg: TrainConfig, optimizer, steps_per_epoch: int):
    total = max(1, tcfg.epochs * steps_per_epoch)
    warm = min(steps_per_epoch, int(total * tcfg.warmup))

    def f(step):
        if step < warm:
            return (step + 1) / warm
        if tcfg.schedule == "step":
            return tcfg.step_factor ** ((step // steps_per_epoch) // max(1, tcfg.epochs // tcfg.step_stages))
        cosine = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return cosine * (1 - tcfg.lr_floor) + tcfg.lr_floor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def class_counts(ds, num_classes: int) -> np.ndarray:
    """Shapes per class in a :class:`PointCloudDataset`'s split."""
    return np.bincount(np.asarray(ds.data.labels)[ds.indices], minlength=num_classes)


def balanced_class_weights(counts: np.ndarray) -> torch.Tensor:
    """Loss weights n / (C · n_c): every class contributes equally to the expected loss, as in a
    balanced test split; a weighted mean over the batch keeps the loss's scale. Absent classes: 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def shard_count(shards: int, device: torch.device, world: World) -> int:
    """Shards per batch (pcsym.shards): ``--shards``, 0 = one per torch CPU thread; 1 on a GPU or in a
    torchrun job (their batches are split across devices and processes instead)."""
    if device.type == "cpu" and not world.active:
        return shards or torch.get_num_threads()
    if shards > 1:
        raise PcsymError("--shards splits a batch across the CPU threads of one process; use --shards 1 (or 0) "
                         "with --device cuda or torchrun")
    return 1


@torch.no_grad()
def recalibrate_norms(model, ds, batches: int, batch_size: int, seed: int, epoch: int, workers: int = 0,
                      device="cpu", frozen: nn.Module | None = None, world: World | None = None,
                      shards: int = 1) -> None:
    """Re-estimate every batch-norm's running statistics as the plain average over ``batches``
    training batches, with the weights the epoch ended with ("precise BN").

    The running averages kept during training lag behind weights that change every step; for some
    models (SO(3) with gated fields, measured: 49% validation accuracy with the running averages vs
    77% with re-estimated statistics, same weights) that gap is large. Deterministic (own seeded
    loader, global RNG state untouched), so resumed runs stay identical to uninterrupted ones. The
    norms of a ``frozen`` part of the model are left alone (it runs in eval mode). ``shards`` > 1:
    each batch's trunk runs in that many shards side by side (an EquivariantClassifier; same statistics)."""
    skip = set(map(id, frozen.modules())) if frozen is not None else set()
    norms = [m for m in model.modules() if isinstance(m, (EquivBatchNorm, nn.BatchNorm1d)) and id(m) not in skip]
    if not norms or batches < 1:
        return
    saved = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    if frozen is not None:
        frozen.eval()
    with torch.random.fork_rng(devices=[]), Shards(shards) as sh:
        torch.manual_seed(derive("norms", seed, epoch))
        loader = make_loader(ds, batch_size, True, derive("norms-loader", seed), epoch, workers, drop_last=True,
                             world=world)
        with Prefetch(loader) as stream:
            for i, (pos, nrm, _) in enumerate(stream):
                if i >= batches:
                    break
                for m in norms:
                    m.momentum = 1.0 / (i + 1)  # running stat = mean over the batches seen so far
                forward(model, sh, pos.to(device), nrm.to(device))
    for m, mom in zip(norms, saved):
        m.momentum = mom
    model.train(was_training)


class TrainingInterrupted(Exception):
    pass


@dataclass
class RunState:
    """What a checkpoint must hold to continue a run exactly."""

    epoch: int = -1  # last finished epoch
    best: float = -1.0  # best validation figure so far (the --select one)
    history: list = field(default_factory=list)
    partial: dict | None = None  # set when Ctrl-C stopped training in the middle of an epoch

    def extra(self, tcfg: TrainConfig, optimizer=None, scheduler=None) -> dict:
        """The run part of a checkpoint (optimizer and scheduler only in last.pt)."""
        d = {"epoch": self.epoch, "best_val_acc": self.best, "history": self.history,
             "train_config": tcfg.to_dict()}
        if self.history:
            d["val_accuracy"] = self.history[-1]["val_acc"]
            d["unknown_threshold"] = self.history[-1].get("unknown_threshold")
        if optimizer is not None:
            d.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        if self.partial is not None:
            d["partial"] = self.partial
        return d


def restore(last_path: Path, model, optimizer, scheduler, ema: WeightAverage | None = None) -> RunState:
    """Load model, optimizer, scheduler (and the weight average) from ``last.pt``; the run state to continue
    from. The model ends up holding the trained weights, the average in ``ema``."""
    if not last_path.exists():
        raise PcsymError("nothing to resume: no last.pt", path=last_path.parent)
    ckpt = read_checkpoint(last_path)
    load_weights(model, ckpt["state_dict"], last_path)
    saved = (ckpt.get("train_config") or {}).get("optimizer", "adamw")
    if saved != ("sgd" if isinstance(optimizer, torch.optim.SGD) else "adamw"):
        raise PcsymError(f"the run was trained with --optimizer {saved}; resume it with the same optimizer",
                         path=last_path.parent)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    average = ckpt.get("ema")
    if average is not None:
        held = ema if ema is not None else WeightAverage(model, average["decay"])
        try:
            held.load(average)
        except ValueError as e:  # e.g. --freeze-trunk changed: other parameters are trained
            raise PcsymError(f"cannot resume: {e}", path=last_path.parent) from None
        if held.swapped:  # saved at an epoch's end, the model holding the average: back to the trained weights
            held.swap()
    elif ema is not None:  # --ema given to a run trained without it: the average starts here
        ema.restart()
    return RunState(epoch=int(ckpt["epoch"]), best=float(ckpt["best_val_acc"]),
                    history=list(ckpt.get("history", [])), partial=ckpt.get("partial"))


def write_metrics(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    if history:
        columns = list(dict.fromkeys(k for row in history for k in row))  # rows of older runs may lack some
        w = csv.DictWriter(buf, fieldnames=columns)
        w.writeheader()
        w.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Trainer:
    """One run: data, model, optimiser and the epoch loop. ``Trainer(mcfg, tcfg).run(resume)``."""

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_step: Callable[[int, int, float, float], None] | None = None):
        self.mcfg, self.tcfg = mcfg, tcfg.validate()
        keep_freed_memory()  # no page faults for each step's temporaries (pcsym.allocator)
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        self.out = Path(tcfg.out)
        device = resolve_device(tcfg.device)
        self.world = setup(device)
        if tcfg.batch_size % self.world.size:
            raise PcsymError(f"--batch-size {tcfg.batch_size} (the global batch) must be a multiple of the "
                             f"{self.world.size} processes")
        if device == "cuda" and self.world.active:
            device = f"cuda:{self.world.local_rank}"
        self.device = torch.device(device)
        # progress and files come from rank 0 alone
        self.on_epoch, self.on_step = (on_epoch, on_step) if self.world.main else (None, None)
        data = load_dataset(tcfg.data, points=mcfg.points, up_axis=tcfg.up_axis, fmt=tcfg.data_format)
        tr_idx, va_idx = run_split(data, "train", tcfg), run_split(data, "val", tcfg)
        mcfg.class_names = [str(c) for c in data.class_names]
        mcfg.estimated_normals = data.estimated_normals  # inference makes its normals alike
        if len(tr_idx) < 2:
            raise PcsymError(f"the dataset has only {len(tr_idx)} training shapes", path=tcfg.data)
        self.train_ds = PointCloudDataset(
            data, tr_idx, points=mcfg.points, rotate=tcfg.rotate, jitter=tcfg.jitter, jitter_clip=tcfg.jitter_clip,
            scale=tuple(tcfg.scale), anisotropic_scale=tuple(tcfg.anisotropic_range) if tcfg.anisotropic_scale else None, point_dropout=tcfg.point_dropout,
            resample=True, seed=tcfg.seed)
        self.val_ds = eval_dataset(data, va_idx, mcfg.points, tcfg.eval_rotate, tcfg.seed)
        seed_all(derive("process", tcfg.seed))
        self.model = build_model(mcfg).to(self.device)
        if tcfg.init:  # fine-tuning: the trunk from the model, a fresh head for these classes
            ckpt = read_checkpoint(tcfg.init)
            load_weights(self.model, ckpt["state_dict"], tcfg.init, skip="head.")
        if tcfg.freeze_trunk:
            if not tcfg.init:
                raise PcsymError("--freeze-trunk needs --init MODEL (a trunk to keep)")
            self.model.blocks.requires_grad_(False)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = WeightAverage(self.model, tcfg.ema) if tcfg.ema else None
        # foreach: the multi-tensor update, ~0.5 ms a step less on CPU than torch's per-tensor default and
        # the same bits (tests/test_training.py)
        if tcfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(trainable, lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay,
                                             foreach=True)
        else:
            self.optimizer = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay, foreach=True)
        self.net = self.model  # what a training step calls: the DDP wrapper in a torchrun job
        if self.world.active:
            synchronise_norms(self.model)
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if device != "cpu" and
                                               self.device.type == "cuda" else None)
        self.shards = shard_count(tcfg.shards, self.device, self.world)
        self.steps_per_epoch = max(1, len(self.train_ds) // tcfg.batch_size)
        if tcfg.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, tcfg.max_steps)
        self.scheduler = make_schedule(tcfg, self.optimizer, self.steps_per_epoch)
        counts = class_counts(self.train_ds, mcfg.num_classes)
        weight = balanced_class_weights(counts) if tcfg.balance == "loss" else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=tcfg.label_smoothing)
        self.stop = False

    def _train_mode(self) -> None:
        """Train mode; a frozen trunk stays in eval mode (its norms keep the model's statistics)."""
        self.model.train()
        if self.tcfg.freeze_trunk:
            self.model.blocks.eval()

    def _save_last(self, state: RunState) -> None:
        if not self.world.main:
            return
        extra = state.extra(self.tcfg, self.optimizer, self.scheduler)
        if self.ema is not None:
            extra["ema"] = self.ema.state()
        save_checkpoint(self.out / "last.pt", self.model, self.mcfg, extra)

    def run_epoch(self, epoch: int, state: RunState) -> dict:
        """Train one epoch (from ``state.partial``'s step when resuming mid-epoch), re-estimate the
        norms, validate; returns the metrics row."""
        tcfg, model = self.tcfg, self.model
        seed_all(derive("epoch", tcfg.seed, epoch))
        self.train_ds.set_epoch(epoch)
        self._train_mode()
        t0, c0 = time.time(), time.process_time()
        tot, correct, loss_sum, skip = 0, 0, 0.0, 0
        partial = state.partial
        if partial is not None and int(partial["epoch"]) == epoch:
            skip = int(partial["step"])
            tot, correct, loss_sum = int(partial["tot"]), int(partial["correct"]), float(partial["loss_sum"])
            t0 -= float(partial.get("seconds", 0.0))  # the epoch's time before the interruption
            c0 -= float(partial.get("cpu_seconds", 0.0))
        loader = make_loader(self.train_ds, tcfg.batch_size, True, tcfg.seed, epoch, tcfg.workers, drop_last=True,
                             world=self.world, balanced=tcfg.balance == "sampler")
        with Shards(self.shards) as shards, Prefetch(loader) as batches:  # shards: one per CPU thread by default
            for step, (pos, nrm, y) in enumerate(batches):
                if step >= self.steps_per_epoch:
                    break
                if step < skip:  # already trained before the interruption (same batches: seeded loader)
                    if step == skip - 1:
                        states = partial.get("rng_states") or [partial["rng_state"]]
                        torch.set_rng_state(states[self.world.rank] if len(states) == self.world.size else states[0])
                    continue
                if self.world.any(self.stop):  # save the exact mid-epoch state: resuming replays the rest exactly
                    rng = self.world.gather(torch.get_rng_state())  # every process's own random state
                    state.partial = {"epoch": epoch, "step": step, "tot": tot, "correct": correct, "loss_sum": loss_sum,
                                     "rng_state": rng[0], "rng_states": rng, "seconds": time.time() - t0,
                                     "cpu_seconds": time.process_time() - c0}
                    self._save_last(state)
                    raise TrainingInterrupted()
                target = y  # --mix: soft targets of mixed shapes (the accuracy still counts y, the base shape's class)
                if tcfg.mix:
                    pos, nrm, target = point_cutmix(pos, nrm, y, self.mcfg.num_classes, tcfg.mix,
                                                    mix_generator(tcfg.seed, epoch, step, self.world.rank))
                pos, nrm, y, target = (t.to(self.device) for t in (pos, nrm, y, target))
                self.optimizer.zero_grad(set_to_none=True)
                logits, loss = forward_backward(self.net, shards, pos, nrm, target, self.loss_fn)
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update()
                n, c, l = self.world_sum(len(y), int((logits.argmax(1) == y).sum()), float(loss.detach()) * len(y))
                tot, correct, loss_sum = tot + n, correct + c, loss_sum + l
                if self.on_step:
                    self.on_step(step + 1, self.steps_per_epoch, loss_sum / tot, correct / tot)
        if self.ema is not None:  # norms, validation and this epoch's checkpoints: the average (run() swaps back)
            self.ema.swap()
        recalibrate_norms(model, self.train_ds, min(tcfg.bn_batches, self.steps_per_epoch), tcfg.batch_size,
                          tcfg.seed, epoch, tcfg.workers, self.device, frozen=model.blocks if tcfg.freeze_trunk else None,
                          world=self.world, shards=self.shards)
        train_time, cpu_time = time.time() - t0, time.process_time() - c0
        val = evaluate_model(model, self.val_ds, batch_size=max(tcfg.batch_size, 32), device=self.device,
                             world=self.world)
        return {"epoch": epoch + 1, "train_loss": round(loss_sum / max(tot, 1), 5),
                "train_acc": round(correct / max(tot, 1), 5), "val_acc": round(val["overall_accuracy"], 5),
                "val_macc": round(val["mean_class_accuracy"], 5), "unknown_threshold": round(val["unknown_threshold"], 5),
                "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_seconds": round(train_time, 2), "shapes_per_second": round(tot / max(train_time, 1e-9), 2),
                "cpu_seconds": round(cpu_time, 2)}  # this process's CPU time (all its threads), same interval

    def world_sum(self, *values: float) -> tuple:
        """The per-step counts summed over the processes of a torchrun job."""
        if not self.world.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return tuple(int(v) if isinstance(x, int) else float(v) for x, v in zip(values, t.tolist()))

    def end_epoch(self, row: dict, state: RunState) -> None:
        """Record the epoch: best.pt when the --select figure improved, last.pt, metrics, plot
        (files from rank 0 only; every rank keeps the same state)."""
        state.history.append(row)
        state.epoch, state.partial = row["epoch"] - 1, None
        figure = row[SELECT_COLUMN[self.tcfg.select]]
        is_best = self.tcfg.select == "last" or figure > state.best
        state.best = figure if self.tcfg.select == "last" else max(state.best, figure)
        if not self.world.main:
            return
        if is_best:
            save_checkpoint(self.out / "best.pt", self.model, self.mcfg, state.extra(self.tcfg))
        self._save_last(state)
        write_metrics(self.out / "metrics.csv", state.history)
        learning_curve(state.history, self.out / "learning_curve.png")
        if self.on_epoch:
            self.on_epoch(row)

    def calibrate_unknown(self) -> None:
        """Give best.pt its "unknown" detector (pcsym.unknown): the pooled features of the training
        shapes and the threshold keeping 95% of the validation shapes, both at the validation rotation."""
        tc = self.tcfg
        calibrate_checkpoint(self.out / "best.pt", self.train_ds.data, self.train_ds.indices, self.val_ds.indices,
                             tc.eval_rotate, tc.seed)

    def run(self, resume: bool = False) -> dict:
        state = RunState()
        if resume:
            state = restore(self.out / "last.pt", self.model, self.optimizer, self.scheduler, self.ema)
        if self.world.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "config.json", json.dumps(
                {"model": self.mcfg.to_dict(), "train": self.tcfg.to_dict(), "world_size": self.world.size},
                indent=2).encode())

        def _sigint(signum, frame):
            self.stop = True

        old = signal.signal(signal.SIGINT, _sigint) if _main_thread() else None
        summary = {"interrupted": False, "out": str(self.out), "select": self.tcfg.select}
        try:
            for epoch in range(state.epoch + 1, self.tcfg.epochs):
                self.end_epoch(self.run_epoch(epoch, state), state)
                if self.ema is not None:
                    self.ema.swap()  # training goes on from the trained weights
            if self.world.main and (self.out / "best.pt").exists():
                self.calibrate_unknown()
        except TrainingInterrupted:
            summary["interrupted"] = True
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            self.world.barrier()  # rank 0's files are complete before any process returns
            self.world.close()
        return {**summary, "history": state.history, "best_val_acc": state.best}


def train(mcfg: ModelConfig, tcfg: TrainConfig, resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None,
          on_step: Callable[[int, int, float, float], None] | None = None) -> dict:
    """Train; writes best.pt, last.pt, metrics.csv, config.json into tcfg.out. Returns the summary
    (``best_val_acc`` is the best value of the ``tcfg.select`` validation figure)."""
    return Trainer(mcfg, tcfg, on_epoch, on_step).run(resume)
