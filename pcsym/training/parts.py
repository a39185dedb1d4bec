"""The named steps a training run is assembled from: :class:`pcsym.training.train.Trainer` calls them in
this order, and each takes the configs and returns one part of the run.

1. :func:`start_process` — threads, allocator, the device and the torchrun world;
2. :func:`load_splits` — the dataset and the run's own train / validation split;
3. :func:`make_datasets` — the training clouds with their augmentation, the validation clouds;
4. :func:`build_network` — the seeded model, its trunk from ``--init`` (fine-tuning), frozen or not;
5. :func:`make_optimizer` — AdamW or SGD over the trainable parameters (the weight average: :mod:`.ema`);
6. :func:`wrap_for_processes` — what a training step calls: the model, or its DDP wrapper under torchrun;
7. :func:`shard_count`, :func:`steps_per_epoch`, :func:`make_schedule` — shards per batch, steps per epoch,
   the learning rate per step;
8. :func:`make_loss` — cross-entropy with label smoothing, class-weighted with ``--balance loss``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ModelConfig, TrainConfig
from ..data.datasets import PointCloudData, load_dataset
from ..data.splits import run_split
from ..data.transforms import PointCloudDataset, eval_dataset
from ..errors import PcsymError
from ..models.checkpoint import load_weights, read_checkpoint
from ..models.classifier import build_model
from ..seeds import derive
from .allocator import keep_freed_memory
from .distributed import World, resolve_device, setup, synchronise_norms


def start_process(tcfg: TrainConfig) -> tuple[World, torch.device]:
    """This process's share of the run: its threads and allocator (:mod:`.allocator`: no page faults for
    each step's temporaries), the torchrun world it joins and the device it trains on."""
    keep_freed_memory()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)
    world = setup(device)
    if tcfg.batch_size % world.size:
        raise PcsymError(f"--batch-size {tcfg.batch_size} (the global batch) must be a multiple of the "
                         f"{world.size} processes")
    if device == "cuda" and world.active:
        device = f"cuda:{world.local_rank}"
    return world, torch.device(device)


def load_splits(mcfg: ModelConfig, tcfg: TrainConfig) -> tuple[PointCloudData, np.ndarray, np.ndarray]:
    """The dataset and the shapes the run trains and validates on; ``mcfg`` records the classes and where
    the normals came from (inference makes its normals alike)."""
    data = load_dataset(tcfg.data, points=mcfg.points, up_axis=tcfg.up_axis, fmt=tcfg.data_format)
    tr_idx, va_idx = run_split(data, "train", tcfg), run_split(data, "val", tcfg)
    mcfg.class_names = [str(c) for c in data.class_names]
    mcfg.estimated_normals = data.estimated_normals
    if len(tr_idx) < 2:
        raise PcsymError(f"the dataset has only {len(tr_idx)} training shapes", path=tcfg.data)
    return data, tr_idx, va_idx


def make_datasets(data: PointCloudData, tr_idx, va_idx, mcfg: ModelConfig,
                  tcfg: TrainConfig) -> tuple[PointCloudDataset, PointCloudDataset]:
    """The training clouds (resampled, augmented per the config) and the validation clouds (rotated only)."""
    train_ds = PointCloudDataset(
        data, tr_idx, points=mcfg.points, rotate=tcfg.rotate, jitter=tcfg.jitter, jitter_clip=tcfg.jitter_clip,
        scale=tuple(tcfg.scale), anisotropic_scale=tuple(tcfg.anisotropic_range) if tcfg.anisotropic_scale else None,
        point_dropout=tcfg.point_dropout, resample=True, seed=tcfg.seed, frames=mcfg.frames)
    return train_ds, eval_dataset(data, va_idx, mcfg.points, tcfg.eval_rotate, tcfg.seed)


def seed_all(seed: int) -> None:
    """Seed torch's and numpy's global RNG."""
    torch.manual_seed(seed)
    np.random.seed(derive("numpy-global", seed))


def build_network(mcfg: ModelConfig, tcfg: TrainConfig, device: torch.device) -> nn.Module:
    """The model, seeded from the run's seed; fine-tuning (``--init``): the trunk from that model (an
    ensemble's first member) and a fresh head for these classes (the model's own head when its classes are
    these, in the same order), the trunk frozen with ``--freeze-trunk``."""
    seed_all(derive("process", tcfg.seed))
    model = build_model(mcfg).to(device)
    if tcfg.init:
        ckpt = read_checkpoint(tcfg.init)
        same = list(ckpt["model_config"].get("class_names") or []) == list(mcfg.class_names)
        state = ckpt["state_dict"]
        if ckpt.get("ensemble_members"):  # an ensemble (the shipped so3 and o2): its first member's weights
            state = {k[len("members.0."):]: v for k, v in state.items() if k.startswith("members.0.")}
        load_weights(model, state, tcfg.init, skip=None if same else "head.")
    if tcfg.freeze_trunk:
        if not tcfg.init:
            raise PcsymError("--freeze-trunk needs --init MODEL (a trunk to keep)")
        model.blocks.requires_grad_(False)
    return model


def make_optimizer(model: nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with ``momentum``, over the trainable parameters. foreach: the multi-tensor update,
    ~0.5 ms a step less on CPU than torch's per-tensor default and the same bits (tests/test_training.py)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay,
                               foreach=True)
    return torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay, foreach=True)


def wrap_for_processes(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """What a training step calls: the model itself, or in a torchrun job its DDP wrapper (gradients
    all-reduced, batch norms on global-batch statistics)."""
    if not world.active:
        return model
    synchronise_norms(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_count(shards: int, device: torch.device, world: World) -> int:
    """Shards per batch (pcsym.models.shards): ``--shards``, 0 = one per torch CPU thread; 1 on a GPU or in a
    torchrun job (their batches are split across devices and processes instead)."""
    if device.type == "cpu" and not world.active:
        return shards or torch.get_num_threads()
    if shards > 1:
        raise PcsymError("--shards splits a batch across the CPU threads of one process; use --shards 1 (or 0) "
                         "with --device cuda or torchrun")
    return 1


def steps_per_epoch(n_shapes: int, tcfg: TrainConfig) -> int:
    """Full batches of the training split per epoch, at most ``--max-steps`` when it is set."""
    steps = max(1, n_shapes // tcfg.batch_size)
    return min(steps, tcfg.max_steps) if tcfg.max_steps else steps


def make_schedule(tcfg: TrainConfig, optimizer, steps_per_epoch: int):
    """The learning rate per step: a linear warm-up (``warmup`` of all steps, at most one epoch), then
    cosine down to ``lr_floor`` of the rate, or (``--schedule step``) ``step_factor`` every
    ``epochs // step_stages`` epochs."""
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


def make_loss(train_ds: PointCloudDataset, mcfg: ModelConfig, tcfg: TrainConfig) -> nn.Module:
    """Cross-entropy with ``label_smoothing``; with ``--balance loss`` each class weighted to count equally."""
    counts = class_counts(train_ds, mcfg.num_classes)
    weight = balanced_class_weights(counts) if tcfg.balance == "loss" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=tcfg.label_smoothing)
