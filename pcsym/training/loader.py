"""Seeded data loading: the same batches for the same (seed, epoch), in one process or split across a
torchrun job, read one batch ahead on a background thread.

Training, validation, evaluation, the norms' re-estimation and the "unknown" calibration all read their
shapes through :func:`make_loader`.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from ..seeds import derive
from .distributed import World, rank_batches


def make_loader(ds, batch_size: int, shuffle: bool, seed: int, epoch: int, workers: int, drop_last: bool = False,
                world: World | None = None, balanced: bool = False):
    """A seeded loader: the same batches for the same (seed, epoch). In a torchrun job (``world``)
    each process gets its equal slice of each of those global batches (``batch_size`` is global).
    ``balanced``: an epoch of len(ds) draws with replacement, each class equally likely."""
    gen = torch.Generator().manual_seed(derive("loader", seed, epoch))
    own = torch.Generator().manual_seed(derive("loader-workers", seed))  # a loader's own: global RNG untouched
    if balanced:
        labels = np.asarray(ds.data.labels)[ds.indices]
        per_shape = 1.0 / np.bincount(labels)[labels]
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(per_shape, dtype=torch.double), len(ds),
                                                         replacement=True, generator=gen)
        if world is None or not world.active:
            return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                               drop_last=drop_last, generator=own)
        return torch.utils.data.DataLoader(ds, batch_sampler=rank_batches(list(sampler), batch_size, world),
                                           num_workers=workers, generator=own)
    if world is None or not world.active:
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                           num_workers=workers, drop_last=drop_last, persistent_workers=False)
    # the single-process loader's order: its iterator draws one number (the workers' base seed) from
    # the generator before the sampler's permutation
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    order = list(torch.utils.data.RandomSampler(ds, generator=gen)) if shuffle else list(range(len(ds)))
    return torch.utils.data.DataLoader(ds, batch_sampler=rank_batches(order, batch_size, world), num_workers=workers,
                                       generator=own)


class Prefetch:
    """Iterate ``loader`` one batch ahead on a background thread: while the caller trains on batch t,
    batch t + 1 is read and augmented (with ``workers=0`` that reading was serial, the cores idle). The
    same batches in the same order (the loader's randomness is its own seeded generator and per-shape
    seeds; the global RNG is not touched there). A loader error is raised in the caller; ``close`` (or
    leaving the ``with``) stops the thread, also when the caller stops early."""

    def __init__(self, loader, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(loader,), name="pcsym-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, loader) -> None:
        try:
            for batch in loader:
                if not self._put((True, batch)):
                    return
            self._put((False, None))
        except BaseException as exc:  # handed to the caller
            self._put((False, exc))

    def __iter__(self):
        while True:
            ok, item = self._queue.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
