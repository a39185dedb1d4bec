"""Training on several processes or machines with torchrun (PyTorch DDP).

``torchrun --standalone --nproc_per_node N -m pcsym train ...`` (or ``--nnodes``/``--rdzv-endpoint``
across machines) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; :func:`setup` joins the process
group (gloo on CPU, NCCL on GPU). Each global batch — the one a single process would draw with the same
seed — is split into equal per-rank slices (:func:`rank_batches`), so runs with any number of
processes see the same data in the same order, and mid-epoch resume stays exact. Gradients are
all-reduced by ``DistributedDataParallel``; batch-norm statistics are computed over the global batch
(:func:`synchronise_norms`; torch's SyncBatchNorm is GPU-only); validation is sharded and gathered; only
rank 0 writes files.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..config import DEVICES, check_choice
from ..errors import PcsymError
from ..models.layers import EquivBatchNorm


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (e.g. Ctrl-C seen by one process)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_watcher: threading.Thread | None = None


def stop_with_launcher(poll: float = 1.0) -> threading.Thread:
    """Stop this process when its launcher dies. torchrun starts every worker in its own session, so a
    SIGKILL of torchrun (the OOM killer, ``kill -9``) leaves the workers training on, writing the same --out
    as the run a user then resumes. A daemon thread watches the parent process and exits when it is gone
    (the files stay whole: every checkpoint is written atomically; the next run continues with --resume)."""
    launcher = os.getppid()

    def watch():
        while os.getppid() == launcher:
            time.sleep(poll)
        sys.stderr.write(f"pcsym: the launcher of this torchrun worker (pid {launcher}) is gone; stopping "
                         "(continue the run with --resume)\n")
        sys.stderr.flush()
        os._exit(143)

    thread = threading.Thread(target=watch, name="pcsym-launcher-watch", daemon=True)
    thread.start()
    return thread


def setup(device: str) -> World:
    """Join the torchrun job this process belongs to (a one-process World otherwise); a worker stops when
    its launcher dies (:func:`stop_with_launcher`)."""
    global _watcher
    if not launched_by_torchrun():
        return World()
    if _watcher is None:
        _watcher = stop_with_launcher()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", "0")))


def rank_batches(order: list[int], batch_size: int, world: World) -> list[list[int]]:
    """Cut ``order`` into global batches of ``batch_size`` (the last partial one dropped) and keep this
    rank's equal slice of each."""
    per = batch_size // world.size
    full = len(order) // batch_size
    return [order[b * batch_size + world.rank * per: b * batch_size + (world.rank + 1) * per] for b in range(full)]


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks, differentiable (each rank holds an equal-size batch slice)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t) / torch.distributed.get_world_size()


def _sync_equiv_mean(self, t: torch.Tensor) -> torch.Tensor:
    return global_mean(t.mean(0))


class SyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch (CPU and GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        mean = global_mean(x.mean(0))
        var = global_mean((x - mean).pow(2).mean(0))
        n = x.shape[0] * torch.distributed.get_world_size()
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)
            self.num_batches_tracked += 1
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def synchronise_norms(model: nn.Module) -> nn.Module:
    """Make every batch norm of ``model`` use global-batch statistics (in place; same parameters)."""
    for m in model.modules():
        if isinstance(m, EquivBatchNorm):
            m.batch_mean = _sync_equiv_mean.__get__(m)
        elif type(m) is nn.BatchNorm1d:
            m.__class__ = SyncBatchNorm1d
    return model


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; ``cuda`` without a GPU is an error."""
    check_choice(device, DEVICES, "--device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PcsymError("--device cuda requested but no CUDA GPU is available (use --device cpu or auto)")
    return device
