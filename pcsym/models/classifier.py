"""The equivariant point-cloud classifier: steerable conv blocks -> invariant layer -> pooling -> MLP.

With ``depth`` > 1, each stage adds residual blocks on its own points after the downsampling one.

Downsampling uses one point *order* per cloud (:func:`pcsym.geometry.graph.sampling_order`: random,
farthest-point, or random then farthest-point); layer l keeps the first N_l points of it and
convolves over the k nearest of the previous layer's points. A cloud and its transformed copy
therefore use identical indices.

A model with ``frames: pca`` (on a group with every rotation about z) sees each cloud through the six views
of its PCA frame (:mod:`pcsym.geometry.frames`): in evaluation its logits are the mean over the six, which
makes it invariant to every rotation; in training it learns from one view per shape, drawn by the data.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import PcsymError
from ..geometry.graph import estimate_normals, frame_views
from ..geometry.graph import gather, knn, random_order, sampling_order, take
from .groups import Group, get_group, resolve
from .layers import KERNELS, EquivBatchNorm, FieldNonlinearity, channel_types, channels_for


@dataclass
class LayerOutput:
    name: str
    pos: torch.Tensor  # (B, N_l, 3)
    feat: torch.Tensor  # (B, N_l, C_l)
    reps: list  # escnn representations of the fields (for equivariance checks)


class SteerableBlock(nn.Module):
    """kNN gather -> steerable conv (implicit or basis kernel) -> equivariant BN -> nonlinearity."""

    def __init__(self, cfg: ModelConfig, group: Group, in_reps, pre_reps, act_reps, kind: str):
        super().__init__()
        self.conv = KERNELS[cfg.kernel].from_config(group, in_reps, pre_reps, cfg)
        self.norm = EquivBatchNorm(pre_reps)
        self.act = FieldNonlinearity(act_reps, kind)
        self.k = cfg.k
        self.act_reps = list(act_reps)
        self.edge_kind = cfg.edge_features

    def forward(self, pos_src, feat_src, n_out: int, normals_src=None):
        """``normals_src`` (B, N, 3): the points' normals, for models with edge features."""
        query = pos_src[:, :n_out]
        k = min(self.k, pos_src.shape[1])
        idx = knn(query, pos_src, k)
        rel = query[:, :, None, :] - gather(pos_src, idx)  # x_i - x_j
        scale = rel.norm(dim=-1).mean(dim=(1, 2), keepdim=True).clamp_min(1e-8)[..., None]  # invariant
        rel = rel / scale
        edge = None if normals_src is None else edge_features(normals_src[:, :n_out], gather(normals_src, idx), rel,
                                                                self.edge_kind)
        out = self.conv.convolve(rel, feat_src, idx, edge)
        return query, self.act(self.norm(out))


def edge_features(n_query: torch.Tensor, n_nb: torch.Tensor, rel: torch.Tensor, kind: str = "ppf") -> torch.Tensor:
    """Features of each edge (B, M, k, E) for the kernel MLP, by ``ModelConfig.edge_features`` (layers.EDGE_FIELDS):
    ``ppf``, the invariant scalars a = n_i.n_j, b = n_i.d, c = n_j.d with d = x_i - x_j (scaled), dot products of
    vectors, so invariant under every subgroup of O(3) (|d| is in the radial embedding); ``ppf+normals`` also n_i
    and n_j, which turn with the cloud like positions (outward normals: under reflections too);
    ``ppf-unsigned`` |a|, |b|, |c| and abc, unchanged when either normal flips its sign (estimated normals' signs
    disagree with the meshes' on ~30% of ModelNet points: benchmarks/accuracy/normals.py)."""
    n_i = n_query[:, :, None, :]
    a, b, c = (n_i * n_nb).sum(-1), (n_i * rel).sum(-1), (n_nb * rel).sum(-1)
    if kind == "ppf-unsigned":
        return torch.stack([a.abs(), b.abs(), c.abs(), a * b * c], dim=-1)
    ppf = torch.stack([a, b, c], dim=-1)
    return torch.cat([ppf, n_i.expand_as(n_nb), n_nb], dim=-1) if kind == "ppf+normals" else ppf


class EquivariantClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        group = resolve(cfg.group, cfg.max_freq)
        in_reps = [group.vector] * (int(cfg.use_positions) + int(cfg.normal_field)) + [group.trivial]
        self.in_reps = in_reps
        blocks = []
        reps = in_reps
        for width, depth in zip(cfg.widths, cfg.stage_depths()):
            pre, act, kind = channel_types(group, channels_for(group, width))
            for _ in range(depth):  # a downsampling block, then residual blocks (act -> act)
                blocks.append(SteerableBlock(cfg, group, reps, pre, act, kind))
                reps = act
        inv = [group.trivial] * cfg.invariant_dims
        blocks.append(SteerableBlock(cfg, group, reps, inv, inv, "regular"))
        self.blocks = nn.ModuleList(blocks)
        self.head = make_head(cfg.invariant_dims, cfg.head_dims, cfg.num_classes, cfg.dropout)

    def point_order(self, pos: torch.Tensor, vote: int = 0, draw: torch.Tensor | None = None) -> torch.Tensor:
        """The sampling order: a fresh random one in training (from ``draw``, :meth:`draw_order`'s
        numbers, when given); in eval mode the seeded order of test-time vote ``vote`` (0:
        deterministic predictions, the same as the exports')."""
        sizes = self.cfg.layer_points(pos.shape[1])
        return sampling_order(pos, self.cfg.sampling, sizes, None if self.training else vote, draw)

    def draw_order(self, pos: torch.Tensor) -> torch.Tensor | None:
        """The random numbers of a training step's sampling order for the batch ``pos`` (None where
        the order is not random), the same draw :meth:`point_order` would make."""
        if not self.training or self.cfg.sampling == "fps":
            return None
        return random_order(pos.shape[0], pos.shape[1], device=pos.device)

    def input_features(self, normals: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        """Per-point input fields: [centred position] [normal] constant, matching ``self.in_reps``.
        Positions are taken relative to the cloud's centroid, which every group element fixes."""
        feats = []
        if self.cfg.use_positions:
            feats.append(pos - pos.mean(dim=1, keepdim=True))
        if self.cfg.normal_field:
            if normals is None:
                normals = estimate_normals(pos)
            feats.append(normals)
        return torch.cat(feats + [torch.ones_like(pos[..., :1])], dim=-1)

    def pooled_features(self, pos: torch.Tensor, feat: torch.Tensor, normals: torch.Tensor | None = None,
                        outs: list | None = None) -> torch.Tensor:
        """The equivariant trunk on points already in sampling order: the pooled invariant features
        (B, D) the head takes. ``normals`` (same order) are needed by models with edge features;
        ``outs``, when given, receives each block's :class:`LayerOutput`."""
        plan = self.cfg.block_points(pos.shape[1])
        if self.cfg.edge_features == "none":
            normals = None
        elif normals is None:
            raise ValueError("a model with edge features needs the points' normals")
        for i, (block, (n, residual)) in enumerate(zip(self.blocks, plan)):
            pos, out = block(pos, feat, n, normals)
            feat = feat + out if residual else out
            normals = None if normals is None else normals[:, :n]
            if outs is not None:
                last = i == len(self.blocks) - 1
                outs.append(LayerOutput("invariant" if last else f"block{i + 1}", pos, feat, block.act_reps))
        return torch.cat([feat.max(dim=1).values, feat.mean(dim=1)], dim=-1)

    def forward_ordered(self, pos: torch.Tensor, feat: torch.Tensor, return_features: bool = False,
                        normals: torch.Tensor | None = None, pooled: bool = False):
        """Core network on points already in sampling order. Returns logits (and layer outputs, or
        with ``pooled`` the pooled invariant features (B, D) the head takes)."""
        outs = [] if return_features else None
        features = self.pooled_features(pos, feat, normals, outs)
        logits = self.head(features)
        if pooled:
            return logits, features
        return (logits, outs) if return_features else logits

    def prepare(self, pos: torch.Tensor, normals: torch.Tensor | None = None, order: torch.Tensor | None = None,
                vote: int = 0, draw: torch.Tensor | None = None) -> tuple:
        """(points, input features, edge normals or None), all in sampling order: what
        :meth:`pooled_features` takes. In training this draws the random sampling order (unless
        ``draw`` holds it: :meth:`draw_order`)."""
        if normals is None and self.cfg.use_normals:
            normals = estimate_normals(pos)
        feat = self.input_features(normals, pos)
        if order is None:
            order = self.point_order(pos, vote, draw)
        edge_normals = take(normals, order) if self.cfg.edge_features != "none" else None
        return take(pos, order), take(feat, order), edge_normals

    def forward(self, pos: torch.Tensor, normals: torch.Tensor | None = None, order: torch.Tensor | None = None,
                return_features: bool = False, vote: int = 0, pooled: bool = False):
        """pos (B, N, 3), normals (B, N, 3) or None -> logits (B, classes). ``order``: the sampling
        order (default :meth:`point_order` of ``vote``); ``pooled``: (logits, pooled features). A model with
        ``frames`` averages its logits (and pooled features) over the views of :func:`frame_inputs` in eval
        mode; in training it takes its input as one view (the training data draws it)."""
        return frame_average(self, pos, normals, order, return_features, vote, pooled)

    def forward_views(self, pos, normals=None, order=None, return_features: bool = False, vote: int = 0,
                      pooled: bool = False):
        """:meth:`forward` without frame averaging: the network on ``pos`` as given."""
        pos, feat, edge_normals = self.prepare(pos, normals, order, vote)
        return self.forward_ordered(pos, feat, return_features, edge_normals, pooled)


def invariance_group(cfg: ModelConfig) -> str:
    """The group a model of ``cfg`` is invariant to: its own, or with frames every rotation (so3), and every
    reflection too (o3) where its group holds one (o2's mirrors, the inversion of so2xinv)."""
    if cfg.frames == "none":
        return cfg.group
    group = get_group(cfg.group)
    improper = group.contains(np.diag([-1.0, 1.0, 1.0])) or group.contains(-np.eye(3))
    return "o3" if improper else "so3"


def frame_inputs(pos: torch.Tensor, normals: torch.Tensor | None, order: torch.Tensor | None):
    """Every cloud of a batch seen through its six PCA-frame views (pcsym.geometry.frames): points and
    normals (B x 6, N, 3), the sampling order repeated (the same indices for every view)."""
    rot = frame_views(pos)  # (B, V, 3, 3)
    views = rot.shape[1]
    pos = torch.einsum("bnj,bvij->bvni", pos, rot).flatten(0, 1)  # no sizes as numbers: traceable
    if normals is not None:
        normals = torch.einsum("bnj,bvij->bvni", normals, rot.to(normals.dtype)).flatten(0, 1)
    if order is not None:
        order = order.repeat_interleave(views, dim=0)
    return pos, normals, order, views


def frame_average(model, pos, normals, order, return_features: bool, vote: int, pooled: bool):
    """``model.forward_views`` on the input, or for a model with frames in eval mode the mean of its logits
    (and pooled features) over the input's PCA-frame views (:func:`frame_inputs`). Per-layer outputs are
    not invariant view by view: ``return_features`` is refused there (check-equivariance checks the
    logits of such a model)."""
    if model.cfg.frames == "none" or model.training:
        return model.forward_views(pos, normals, order, return_features, vote, pooled)
    if return_features:
        raise PcsymError("a model with frames has no per-layer equivariant features to return; check its logits")
    if normals is None and model.cfg.use_normals:
        normals = estimate_normals(pos)
    if order is None:  # one order for all views of a cloud (they are rotations of it: the same FPS)
        order = model.point_order(pos, vote)
    b = pos.shape[0]
    pos, normals, order, views = frame_inputs(pos, normals, order)
    out = model.forward_views(pos, normals, order, vote=vote, pooled=pooled)
    if pooled:
        logits, feats = out
        return logits.reshape(b, views, -1).mean(1), feats.reshape(b, views, -1).mean(1)
    return out.reshape(b, views, -1).mean(1)


def make_head(invariant_dims: int, head_dims: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The classifier on pooled invariants [max, mean]: fc -> bn -> act -> dropout -> out."""
    return nn.Sequential(OrderedDict(
        fc=nn.Linear(2 * invariant_dims, head_dims), bn=nn.BatchNorm1d(head_dims), act=nn.ELU(),
        dropout=nn.Dropout(dropout), out=nn.Linear(head_dims, num_classes)))


#: state_dict keys of checkpoints written before the head's parts had names
LEGACY_HEAD_KEYS = {"head.0.": "head.fc.", "head.1.": "head.bn.", "head.4.": "head.out."}


def build_model(cfg: ModelConfig) -> EquivariantClassifier:
    return EquivariantClassifier(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
