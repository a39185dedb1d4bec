"""The training loop: writes best.pt, last.pt, metrics.csv, config.json and a learning curve.

Every epoch is seeded from (seed, epoch) and the data loader from (seed, epoch), so ``--resume``
continues exactly as an uninterrupted run would — also from the middle of an epoch, where Ctrl-C
saves the step, the running sums and the RNG state (:class:`RunState`).
"""

from __future__ import annotations

import csv
import io
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..errors import PcsymError
from ..files import atomic_write_bytes
from ..models.checkpoint import load_weights, read_checkpoint, save_checkpoint
from ..models.layers import EquivBatchNorm
from ..models.shards import Shards, forward, forward_backward
from ..seeds import derive
from .distributed import World
from .ema import WeightAverage
from .evaluate import evaluate_model
from .loader import Prefetch, make_loader
from .mix import mix_generator, point_cutmix
from .outliers import EnergyBoundedLoss, chimeras, outlier_generator
from .parts import (build_network, load_splits, make_datasets, make_loss, make_optimizer, make_schedule, seed_all,
                    shard_count, start_process, steps_per_epoch, wrap_for_processes)
from .plots import learning_curve
from .unknown import calibrate_checkpoint

#: the validation figure each ``--select`` choice compares (keys of a metrics row); ``last`` compares
#: nothing: best.pt is the last epoch (a small validation split cannot pick an epoch), its figure mAcc
SELECT_COLUMN = {"macc": "val_macc", "oa": "val_acc", "last": "val_macc"}


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
    """One run: its parts, assembled by the named steps of :mod:`pcsym.training.parts`, and the epoch loop
    (:meth:`run_epoch`: :meth:`train_step` per batch, then :func:`recalibrate_norms` and validation;
    :meth:`end_epoch`: checkpoints and metrics). ``Trainer(mcfg, tcfg).run(resume)``."""

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_step: Callable[[int, int, float, float], None] | None = None,
                 on_epoch_start: Callable[[int], None] | None = None):
        self.mcfg, self.tcfg = mcfg, tcfg.validate()
        self.out = Path(tcfg.out)
        self.world, self.device = start_process(tcfg)
        # progress and files come from rank 0 alone
        self.on_epoch, self.on_step = (on_epoch, on_step) if self.world.main else (None, None)
        self.on_epoch_start = on_epoch_start if self.world.main else None
        data, tr_idx, va_idx = load_splits(mcfg, tcfg)
        self.train_ds, self.val_ds = make_datasets(data, tr_idx, va_idx, mcfg, tcfg)
        self.model = build_network(mcfg, tcfg, self.device)
        self.ema = WeightAverage(self.model, tcfg.ema) if tcfg.ema else None
        self.optimizer = make_optimizer(self.model, tcfg)
        self.net = wrap_for_processes(self.model, self.world, self.device)  # what a training step calls
        self.shards = shard_count(tcfg.shards, self.device, self.world)
        self.steps_per_epoch = steps_per_epoch(len(self.train_ds), tcfg)
        self.scheduler = make_schedule(tcfg, self.optimizer, self.steps_per_epoch)
        self.loss_fn = make_loss(self.train_ds, mcfg, tcfg)
        if tcfg.outlier_exposure:
            self.loss_fn = EnergyBoundedLoss(self.loss_fn, tcfg.outlier_exposure)
        self.stop = False

    def _check_classes(self, last_path: Path) -> None:
        """A resumed run goes on with its own classes: other data is refused in one line (not as a
        mismatching classifier head)."""
        if not last_path.exists():
            raise PcsymError("nothing to resume: no last.pt", path=last_path.parent)
        theirs = list(read_checkpoint(last_path)["model_config"].get("class_names") or [])
        if theirs and theirs != list(self.mcfg.class_names):
            raise PcsymError(f"the dataset's {len(self.mcfg.class_names)} classes differ from the run's "
                             f"{len(theirs)} ({', '.join(theirs[:3])}, ...); resume with the run's --data",
                             path=self.tcfg.data)

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
                n, c, l = self.train_step(shards, pos, nrm, y, epoch, step)
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

    def train_step(self, shards: Shards, pos, nrm, y, epoch: int, step: int) -> tuple[int, int, float]:
        """One optimiser step on a batch (mixed first with ``--mix``); the batch's shapes, correct predictions
        and summed loss, over every process of a torchrun job."""
        target = y  # --mix: soft targets of mixed shapes (the accuracy still counts y, the base shape's class)
        if self.tcfg.mix:
            pos, nrm, target = point_cutmix(pos, nrm, y, self.mcfg.num_classes, self.tcfg.mix,
                                            mix_generator(self.tcfg.seed, epoch, step, self.world.rank))
        if self.tcfg.outlier_exposure:  # made-up outliers after the batch's shapes (rows past the targets' count)
            made = chimeras(pos, nrm, y, outlier_generator(self.tcfg.seed, epoch, step, self.world.rank))
            if made is not None:
                pos, nrm = torch.cat([pos, made[0]]), torch.cat([nrm, made[1]])
        pos, nrm, y, target = (t.to(self.device) for t in (pos, nrm, y, target))
        self.optimizer.zero_grad(set_to_none=True)
        logits, loss = forward_backward(self.net, shards, pos, nrm, target, self.loss_fn)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        correct = int((logits[:len(y)].argmax(1) == y).sum())
        return self.world_sum(len(y), correct, float(loss.detach()) * len(y))

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
        """Give best.pt its "unknown" detector (pcsym.training.unknown): the energy-score threshold keeping
        95% of the validation shapes at the validation rotation."""
        tc = self.tcfg
        calibrate_checkpoint(self.out / "best.pt", self.train_ds.data, self.train_ds.indices, self.val_ds.indices,
                             tc.eval_rotate, tc.seed)

    def run(self, resume: bool = False, changes: list | None = None) -> dict:
        """Train the epochs left (all of them, or from last.pt with ``resume``). ``changes``: the settings a
        resumed run changes (:func:`pcsym.config.merge_settings`), appended to config.json's ``changes``
        with the epoch they start at. A resumed run that already has its epochs does nothing and says so
        (``complete`` in the summary)."""
        state = RunState()
        summary = {"interrupted": False, "out": str(self.out), "select": self.tcfg.select}
        if resume:
            self._check_classes(self.out / "last.pt")
            state = restore(self.out / "last.pt", self.model, self.optimizer, self.scheduler, self.ema)
            if state.partial is None and state.epoch + 1 >= self.tcfg.epochs:
                self.world.close()
                return {**summary, "complete": True, "epochs_done": state.epoch + 1, "history": state.history,
                        "best_val_acc": state.best}
        if self.world.main:
            self.out.mkdir(parents=True, exist_ok=True)
            recorded = _recorded_changes(self.out) if resume else []
            recorded += [{**c, "from_epoch": state.epoch + 2} for c in changes or []]
            atomic_write_bytes(self.out / "config.json", json.dumps(
                {"model": self.mcfg.to_dict(), "train": self.tcfg.to_dict(), "world_size": self.world.size,
                 **({"changes": recorded} if recorded else {})}, indent=2).encode())

        def _sigint(signum, frame):
            self.stop = True

        old = signal.signal(signal.SIGINT, _sigint) if _main_thread() else None
        try:
            for epoch in range(state.epoch + 1, self.tcfg.epochs):
                if self.on_epoch_start:
                    self.on_epoch_start(epoch)
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
          on_step: Callable[[int, int, float, float], None] | None = None,
          on_epoch_start: Callable[[int], None] | None = None, changes: list | None = None) -> dict:
    """Train; writes best.pt, last.pt, metrics.csv, config.json into tcfg.out. Returns the summary
    (``best_val_acc`` is the best value of the ``tcfg.select`` validation figure)."""
    return Trainer(mcfg, tcfg, on_epoch, on_step, on_epoch_start).run(resume, changes)


def _recorded_changes(out: Path) -> list:
    """The setting changes earlier resumptions recorded in ``out/config.json``."""
    try:
        return list(json.loads((out / "config.json").read_text()).get("changes", []))
    except (OSError, ValueError, AttributeError):
        return []
