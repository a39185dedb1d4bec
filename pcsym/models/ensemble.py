"""Ensembles: several trained models of one architecture whose logits are averaged (``pcsym ensemble``).

Members must share their model config (group, widths, classes, sampling, ...) but not their weights: the
usual members are the same recipe trained with different seeds, side by side, one thread each. Every
member is invariant to the same group, so their average is too: an ensemble is still equivariant by
construction, and ``check-equivariance`` checks every member's layers.

Averaging *logits* (not probabilities) keeps an ensemble a network that outputs logits: the energy
"unknown" score, TorchScript / ONNX / numpy exports and test-time votes work unchanged. On ModelNet40
test-dev the two agree to 0.1 point (docs/experiments.md, "Ensembles of seeds").
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import PcsymError
from .classifier import EquivariantClassifier, LayerOutput, frame_average


class EnsembleClassifier(nn.Module):
    """Members of one :class:`ModelConfig`; calls like :class:`EquivariantClassifier` and returns the mean of
    the members' logits. All members see the same points in the same sampling order."""

    def __init__(self, cfg: ModelConfig, n_members: int):
        super().__init__()
        if n_members < 2:
            raise PcsymError(f"an ensemble needs at least 2 members, got {n_members}")
        self.cfg = cfg  # one object for the ensemble and its members: a change (evaluate --sampling) reaches all
        self.members = nn.ModuleList(EquivariantClassifier(cfg) for _ in range(n_members))

    # the sampling order and input features depend only on the config, shared by the members
    def point_order(self, pos, vote: int = 0, draw=None):
        return self.members[0].point_order(pos, vote, draw)

    def draw_order(self, pos):
        return self.members[0].draw_order(pos)

    def input_features(self, normals, pos):
        return self.members[0].input_features(normals, pos)

    def prepare(self, pos, normals=None, order=None, vote: int = 0, draw=None):
        return self.members[0].prepare(pos, normals, order, vote, draw)

    def forward_ordered(self, pos, feat, return_features: bool = False, normals=None, pooled: bool = False):
        """Mean logits of the members; ``return_features``: every member's layer outputs, named ``m<i>.<layer>``;
        ``pooled``: the members' pooled features side by side (B, members x D)."""
        logits, outs, feats = [], [], []
        for i, m in enumerate(self.members):
            if return_features:
                lg, lo = m.forward_ordered(pos, feat, True, normals)
                outs += [LayerOutput(f"m{i + 1}.{o.name}", o.pos, o.feat, o.reps) for o in lo]
            elif pooled:
                lg, f = m.forward_ordered(pos, feat, normals=normals, pooled=True)
                feats.append(f)
            else:
                lg = m.forward_ordered(pos, feat, normals=normals)
            logits.append(lg)
        mean = torch.stack(logits).mean(0)
        if pooled:
            return mean, torch.cat(feats, dim=-1)
        return (mean, outs) if return_features else mean

    def forward(self, pos, normals=None, order=None, return_features: bool = False, vote: int = 0,
                pooled: bool = False):
        """As :meth:`EquivariantClassifier.forward` (members with frames: averaged over the views)."""
        return frame_average(self, pos, normals, order, return_features, vote, pooled)

    def forward_views(self, pos, normals=None, order=None, return_features: bool = False, vote: int = 0,
                      pooled: bool = False):
        pos, feat, edge_normals = self.prepare(pos, normals, order, vote)
        return self.forward_ordered(pos, feat, return_features, edge_normals, pooled)


def is_ensemble(model) -> bool:
    return isinstance(model, EnsembleClassifier)


def members_of(model) -> list:
    """The single networks of a model: its members, or the model itself."""
    return list(model.members) if is_ensemble(model) else [model]


def combine(models: list, names: list[str] | None = None) -> EnsembleClassifier:
    """One ensemble of trained models (each an :class:`EquivariantClassifier` or an ensemble, flattened) that
    share a model config; a member whose config differs is named in the error."""
    flat = [m for model in models for m in members_of(model)]
    labels = [n for model, n in zip(models, names or [str(i + 1) for i in range(len(models))])
              for _ in members_of(model)]
    ref = flat[0].cfg.to_dict()
    for m, label in zip(flat[1:], labels[1:]):
        theirs = m.cfg.to_dict()
        diff = sorted(k for k in set(ref) | set(theirs) if ref.get(k) != theirs.get(k))
        if diff:
            raise PcsymError(f"cannot ensemble {label} with {labels[0]}: their model configs differ in "
                             f"{', '.join(diff[:4])} (members must share the architecture and the classes)")
    ens = EnsembleClassifier(ModelConfig.from_dict(ref), len(flat))
    for dst, src in zip(ens.members, flat):
        dst.load_state_dict(src.state_dict())
    return ens.eval()


def keep_classes(model, names: list[str]):
    """A copy of ``model`` (one network or an ensemble) that knows only the classes ``names`` (all among its
    own, in this order): the rows of each output layer for them, so their logits are exactly the model's. For
    a model of many classes shipped for a few (``scripts/keep_classes.py``)."""
    import copy

    own = [str(n) for n in model.cfg.class_names]
    missing = [n for n in names if n not in own]
    if missing:
        raise PcsymError(f"the model does not know the classes {', '.join(missing[:3])}")
    index = torch.tensor([own.index(n) for n in names])
    out = copy.deepcopy(model)
    cfg = ModelConfig.from_dict({**model.cfg.to_dict(), "class_names": list(names)})
    for net in members_of(out) + ([out] if is_ensemble(out) else []):
        net.cfg = cfg
    for net in members_of(out):
        last = net.head.out
        new = nn.Linear(last.in_features, len(names))
        with torch.no_grad():
            new.weight.copy_(last.weight[index])
            new.bias.copy_(last.bias[index])
        net.head.out = new
    return out.eval()
