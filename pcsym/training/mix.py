"""Point-cloud CutMix for training (``pcsym train --mix P``): a batch-level augmentation that builds new
shapes from parts of two.

For each shape of a batch, with probability P, a ball of its points is replaced by a ball of another
shape's points of the same size (the rigid-subset variant of RSMix, Lee et al., CVPR 2021; PointCutMix-K,
Zhang et al. 2021): a keep fraction r ~ U(0, 1), the partner's m = N - round(rN) points nearest to one of
its points, moved rigidly (translated, normals unchanged) onto the place of the m points of this shape
nearest to one of its own points. The target is soft, r for the shape's class and 1 - r for the
partner's. Both clouds are already augmented (rotated) on their own, so a part arrives in its own pose;
the model stays exactly equivariant (this changes training data only). Draws come from a generator
seeded by (run seed, epoch, step, process): a resumed run mixes the same way.
"""

from __future__ import annotations

import torch

from ..seeds import derive


def mix_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(derive("mix", seed, epoch, step, rank))


def graft(pos: torch.Tensor, normals: torch.Tensor | None, row: int, src_pos: torch.Tensor,
          src_nrm: torch.Tensor | None, i: int, j: int, m: int, centres: torch.Tensor) -> None:
    """In place: row ``row`` of ``pos`` (``normals``), a copy of shape ``i`` of ``src_pos`` (``src_nrm``), gets
    the ``m`` points of shape ``j`` nearest its point ``centres[1]``, moved rigidly onto the place of the ``m``
    points of shape ``i`` nearest its point ``centres[0]``."""
    here, there = src_pos[i, centres[0]], src_pos[j, centres[1]]
    out = torch.topk((src_pos[i] - here).pow(2).sum(1), m, largest=False).indices
    inn = torch.topk((src_pos[j] - there).pow(2).sum(1), m, largest=False).indices
    pos[row, out] = src_pos[j, inn] - there + here
    if normals is not None:
        normals[row, out] = src_nrm[j, inn]


def point_cutmix(pos: torch.Tensor, normals: torch.Tensor | None, labels: torch.Tensor, num_classes: int,
                 prob: float, gen: torch.Generator):
    """(pos, normals, target): the mixed batch (B, N, 3) and soft targets (B, num_classes)."""
    b, n, _ = pos.shape
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(pos.dtype)
    chosen = torch.rand(b, generator=gen) < prob
    partner = torch.randperm(b, generator=gen)
    keep = torch.rand(b, generator=gen)
    centres = torch.randint(n, (b, 2), generator=gen)
    if not chosen.any():
        return pos, normals, one_hot
    src_pos, src_nrm = pos, normals  # the batch as it came: partners give their original points
    pos, target = pos.clone(), one_hot.clone()
    normals = None if normals is None else normals.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        j = int(partner[i])
        m = n - int(round(float(keep[i]) * n))
        if j == i or m == 0:
            continue
        graft(pos, normals, i, src_pos, src_nrm, i, j, m, centres[i])
        r = 1.0 - m / n
        target[i] = r * one_hot[i] + (1 - r) * one_hot[j]
    return pos, normals, target
