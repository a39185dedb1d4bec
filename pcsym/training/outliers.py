"""Outlier exposure for the "unknown" detector (``pcsym train --outlier-exposure W``).

The shipped detector thresholds the energy score, the log-sum-exp of the logits (:mod:`pcsym.training.unknown`).
A network trained on cross-entropy alone has no reason to give a shape outside its classes a low score, and
real out-of-class meshes (a teapot, a bunny) score like typical in-class shapes. Energy-bounded learning (Liu et
al., "Energy-based Out-of-distribution Detection", NeurIPS 2020, eq. 6) adds a term that pushes the score of
training shapes above ``IN_MARGIN`` and that of auxiliary outliers below ``OUT_MARGIN``:

    loss = CE(in) + W * ( mean relu(IN_MARGIN - lse(in))^2 + mean relu(lse(out) - OUT_MARGIN)^2 )

No outlier data ships with ModelNet, so the outliers are made from the batch itself: **chimeras**, each the
shape of one class with a ball of 40-60% of its points replaced by a ball of a shape of another class
(:func:`pcsym.training.mix.graft`, the same rigid graft as ``--mix``), a shape neither class describes. The
batch grows by ``ceil(B * OUTLIER_SHARE)`` chimeras (trained in the same forward pass; the norms' statistics are
re-estimated after each epoch on training shapes alone, as always). Draws come from a generator seeded by (run
seed, epoch, step, process): a resumed run makes the same chimeras. The network stays exactly equivariant:
this changes the training data and loss only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..seeds import derive
from .mix import graft

#: the energy terms push in-class log-sum-exps above this and the outliers' below OUT_MARGIN. Chosen before
#: any outlier was scored, from the shipped 40-class models' scores (training shapes: 5% quantile 4.9-5.1,
#: median 6.5-6.7; the calibrated thresholds 4.8): the in-class margin a little above the median, the
#: outlier margin a little below the threshold.
IN_MARGIN = 7.0
OUT_MARGIN = 4.0
#: chimeras per training shape of a batch
OUTLIER_SHARE = 0.5
#: the share of a chimera's points that come from its second shape: U(KEEP_LOW, KEEP_HIGH)
KEEP_LOW, KEEP_HIGH = 0.4, 0.6


def outlier_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(derive("outliers", seed, epoch, step, rank))


def chimeras(pos: torch.Tensor, normals: torch.Tensor | None, labels: torch.Tensor, gen: torch.Generator,
             share: float = OUTLIER_SHARE):
    """(pos, normals) of ``ceil(B * share)`` chimeras of a batch (B, N, 3): shape ``i`` with a ball of
    40-60% of its points replaced by a ball of a shape of another class. None when the batch holds one
    class only (no chimera can be made)."""
    b, n, _ = pos.shape
    count = min(b, math.ceil(b * share))
    base = torch.randperm(b, generator=gen)[:count]
    keep = KEEP_LOW + (KEEP_HIGH - KEEP_LOW) * torch.rand(count, generator=gen)
    centres = torch.randint(n, (count, 2), generator=gen)
    order = torch.randperm(b, generator=gen)
    rows, partners = [], []
    for slot, i in enumerate(base.tolist()):
        others = order[labels[order] != labels[i]]
        if len(others):
            rows.append(slot)
            partners.append(int(others[slot % len(others)]))
    if not rows:
        return None
    idx = base[rows]
    out_pos = pos[idx].clone()
    out_nrm = None if normals is None else normals[idx].clone()
    for r, (slot, j) in enumerate(zip(rows, partners)):
        graft(out_pos, out_nrm, r, pos, normals, int(idx[r]), j, n - int(round(float(keep[slot]) * n)), centres[slot])
    return out_pos, out_nrm


class EnergyBoundedLoss(nn.Module):
    """``base(logits[:n_in], target) + weight * (energy terms)`` (the module doc) for a batch whose rows after
    the first ``n_in = len(target)`` are outliers (they have no target)."""

    def __init__(self, base: nn.Module, weight: float, in_margin: float = IN_MARGIN, out_margin: float = OUT_MARGIN):
        super().__init__()
        self.base, self.weight, self.in_margin, self.out_margin = base, weight, in_margin, out_margin

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_in = target.shape[0]
        loss = self.base(logits[:n_in], target)
        lse = torch.logsumexp(logits.float(), dim=1)
        term = torch.relu(self.in_margin - lse[:n_in]).pow(2).mean()
        if logits.shape[0] > n_in:
            term = term + torch.relu(lse[n_in:] - self.out_margin).pow(2).mean()
        return loss + self.weight * term
