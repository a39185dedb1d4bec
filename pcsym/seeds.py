"""Every seed pcsym uses, derived in one place from a run's one ``--seed`` (or a command's ``--seed``).

* :func:`derive` — the integer seed of a named *stream* of a run (a torch generator, the global RNG), from
  the run's seed and the stream's keys (epoch, step, process, vote). The formulas are the ones pcsym has
  always used: changing one would change every result since, so each keeps its own, named and documented
  in :data:`STREAMS` — and no other module does arithmetic on a seed.
* :func:`rng` — a numpy generator for per-dataset and per-shape draws (surface samples, augmentations,
  splits): numpy's SeedSequence of ``[seed, *keys]``, whose streams are independent for distinct keys.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: each stream's seed from its values; the first is the run's seed, except for "vote"
STREAMS: dict[str, Callable[..., int]] = {
    # the global torch and numpy RNG when a run starts (the model's initial weights)
    "process": lambda seed: seed,
    # numpy's global RNG, which takes 32-bit seeds, beside torch's (pcsym.training.train.seed_all)
    "numpy-global": lambda seed: seed % (2**32),
    # the global RNG during training epoch `epoch` (dropout, the training sampling orders)
    "epoch": lambda seed, epoch: seed * 1000 + epoch,
    # a loader's shuffle or class-balanced draws for epoch `epoch` (pcsym.training.loader)
    "loader": lambda seed, epoch: seed * 100003 + epoch,
    # a loader's own generator (torch's worker base seeds; the global RNG is left alone)
    "loader-workers": lambda seed: seed,
    # the global RNG while the norms are re-estimated after epoch `epoch` (forked: the run's RNG is untouched)
    "norms": lambda seed, epoch: seed * 7907 + epoch,
    # the seed the norms' re-estimation gives its own loader (whose shuffle is then "loader")
    "norms-loader": lambda seed: seed + 31,
    # point CutMix of batch `step` of epoch `epoch` in process `rank` (pcsym.training.mix)
    "mix": lambda seed, epoch, step, rank: ((seed * 1_000_003 + epoch) * 100_003 + step) * 1_009 + rank,
    # the chimeras of batch `step` of epoch `epoch` in process `rank` (--outlier-exposure; pcsym.training.outliers),
    # apart from the "mix" stream of the same batch
    "outliers": lambda seed, epoch, step, rank: STREAMS["mix"](seed, epoch, step, rank) * 2 + 1,
    # the rotations of a run's validation and evaluation clouds (pcsym.data.transforms.eval_dataset)
    "eval": lambda seed: seed + 7919,
    # `evaluate --seed N`: the evaluation pass drawn with N (points, rotations), far from every run's "eval" seed
    "eval-seed": lambda seed: (1 << 32) + seed,
    # `evaluate --seed N`: the first downsampling order of its votes (vote v uses this + v), far from the
    # eval-mode orders 0..7 that checkpoints, exports and classify share (pcsym.training.evaluate.vote_base)
    "eval-seed-votes": lambda seed: 1000 * (seed + 1),
    # the run seed the "unknown" detector's bank of training shapes is rotated with (then "eval")
    "bank": lambda seed: seed + 1,
    # the stratified part of the train split a run keeps with --train-fraction (pcsym.data.splits)
    "train-fraction": lambda seed: seed + 1,
    # the seeded downsampling order of test-time vote `vote` (0: eval mode; pcsym.geometry.graph.vote_order)
    "vote": lambda vote: vote,
}


def derive(stream: str, *values: int) -> int:
    """The seed of ``stream`` (a key of :data:`STREAMS`) for these values: ``derive("epoch", seed, epoch)``."""
    return STREAMS[stream](*values)


def rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator seeded by ``[seed, *keys]`` (``rng(seed)`` is ``np.random.default_rng(seed)``)."""
    return np.random.default_rng([seed, *keys])
