"""Numerical equivariance check of a model: in-group elements must leave logits invariant and
transform every steerable layer by ρ_out(g); elements outside the group are shown for contrast."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import seeds
from ..config import ModelConfig
from ..data.meshes import load_cloud
from .checkpoint import load_model
from .classifier import build_model, invariance_group
from .groups import get_group, gspace
from .layers import direct_sum_matrix


@dataclass
class CheckRow:
    element: str
    in_group: bool
    logits_abs: float
    logits_rel: float
    layers: dict  # layer name -> relative error (in-group elements only)

    @property
    def worst_rel(self) -> float:
        return max([self.logits_rel] + list(self.layers.values()))


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def contrast_candidates(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    from scipy.spatial.transform import Rotation

    return [
        ("rotation 0.9 rad about x", _rot("x", 0.9)),
        ("rotation 0.7 rad about z", _rot("z", 0.7)),
        ("rotation pi about x", _rot("x", np.pi)),
        ("mirror z -> -z", np.diag([1.0, 1.0, -1.0])),
        ("mirror x -> -x", np.diag([-1.0, 1.0, 1.0])),
        ("inversion", -np.eye(3)),
        ("random rotation", Rotation.random(random_state=seed).as_matrix()),
        ("stretch x by 1.5 (no isometry)", np.diag([1.5, 1.0, 1.0])),
    ]


def group_elements(name: str, n_random: int, seed: int, n_testing: int = 3):
    """(label, element) pairs: every non-identity element of a finite group (``g1``, ``g2``, ...), or
    ``n_testing`` of escnn's testing elements (``test1``..) plus seeded random samples (``random1``..)
    of a continuous group. Testing elements are distinct, unlike kinds first (a proper and an improper
    element, different axes), so the rows test different things; numbering always starts at 1."""
    G = gspace(name).fibergroup
    action = gspace(name).basespace_action
    if G.order() > 0:
        els = [g for g in G.elements if g != G.identity]
        return [(f"g{i + 1}", g) for i, g in enumerate(els)]
    np.random.seed(seed)
    candidates, seen = [], set()
    for g in G.testing_elements():
        M = np.asarray(action(g))
        key = _describe(M)
        if g == G.identity or key == "identity" or key in seen:
            continue
        seen.add(key)
        candidates.append((g, _kind(M)))
    chosen: list = []
    for key in (lambda kind: kind[0], lambda kind: kind, None):  # proper/improper, then axes, then escnn's order
        for g, kind in candidates:
            if len(chosen) < n_testing and all(g is not c for c, _ in chosen) and \
                    (key is None or key(kind) not in {key(k) for _, k in chosen}):
                chosen.append((g, kind))
    out = [(f"test{i + 1}", g) for i, (g, _) in enumerate(chosen)]
    out += [(f"random{i + 1}", G.sample()) for i in range(n_random)]
    return out


def _kind(M: np.ndarray) -> tuple:
    """(proper?, axis) of an orthogonal matrix: what makes two test elements test different things."""
    det = np.linalg.det(M)
    return det > 0, _axis_name(_axis(M * np.sign(det))[0])


def _transform(pos, normals, M):
    Mt = torch.as_tensor(M, dtype=pos.dtype)
    pos_g = pos @ Mt.T
    # normals are covectors: inverse-transpose (= M itself for orthogonal M), then renormalised
    Nt = torch.linalg.inv(Mt).T
    n_g = torch.nn.functional.normalize(normals @ Nt.T, dim=-1)
    return pos_g, n_g


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = float((a - b).abs().max())
    return diff, diff / max(float(b.abs().max()), 1e-12)


@torch.no_grad()
def check_model(model, pos: torch.Tensor, normals: torch.Tensor, n_random: int = 3, seed: int = 0,
                dtype=torch.float64) -> list[CheckRow]:
    """Run the check on one cloud (N, 3) + normals (N, 3). The model is evaluated in ``dtype``
    (float64 by default, which makes kNN ties from rounding practically impossible)."""
    model = model.to(dtype).eval()
    # a model with frames: invariance of its logits to the group its views make (per-view layers are not
    # equivariant, so no layer columns)
    frames = model.cfg.frames != "none"
    name = invariance_group(model.cfg)
    gs = gspace(name)
    pos, normals = pos[None].to(dtype), normals[None].to(dtype)
    order = model.point_order(pos)  # identical indices for every transformed copy

    def outputs(p, n):  # (logits, layer outputs)
        return (model(p, n, order=order), []) if frames else model(p, n, order=order, return_features=True)

    base, feats = outputs(pos, normals)
    rows = []
    for label, g in group_elements(name, n_random, seed):
        M = np.asarray(gs.basespace_action(g))
        out, feats_g = outputs(*_transform(pos, normals, M))
        a, r = _rel(out, base)
        layers = {}
        for lo, lg in zip(feats, feats_g):
            rho = torch.as_tensor(direct_sum_matrix(lo.reps, g), dtype=dtype)
            layers[lo.name] = _rel(lg.feat, lo.feat @ rho.T)[1]
        rows.append(CheckRow(f"{label}: {_describe(M)}", True, a, r, layers))
    for label, M in contrast_candidates(seed):
        if get_group(name).contains(M):
            continue
        out = model(*_transform(pos, normals, M), order=order)
        a, r = _rel(out, base)
        rows.append(CheckRow(label, False, a, r, {}))
    return rows


def _axis(R: np.ndarray) -> tuple[np.ndarray, float]:
    """(unit axis, angle in degrees, in (-180, 180]) of a rotation matrix R, the axis pointing to the
    positive side of its first non-zero coordinate (the angle's sign follows)."""
    angle = float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))
    if angle < 1e-6:
        return np.array([0.0, 0.0, 1.0]), 0.0
    skew = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if np.linalg.norm(skew) > 1e-6:
        axis = skew / np.linalg.norm(skew)
    else:  # 180 degrees: the eigenvector of eigenvalue 1
        w, v = np.linalg.eigh((R + R.T) / 2)
        axis = v[:, int(np.argmax(w))]
    lead = next((x for x in axis if abs(x) > 1e-6), 1.0)
    if lead < 0:
        axis, angle = -axis, -angle
    if angle <= -180 + 1e-6:
        angle = 180.0
    return axis, angle


def _axis_name(axis: np.ndarray) -> str:
    for i, name in enumerate("xyz"):
        if abs(abs(axis[i]) - 1) < 1e-6:
            return name
    return "(" + ", ".join(f"{round(float(x), 2) + 0.0:.2f}" for x in axis) + ")"


def _angle(deg: float) -> str:
    return f"{deg:.3g}°"


def _describe(M: np.ndarray) -> str:
    """What an element of O(3) does, in words: ``rotation 180° about x``, ``rotation 6.95° about z``,
    ``mirror y -> -y``, ``inversion``, ``rotoreflection 90° about z`` (a rotation, then the mirror
    across the plane perpendicular to its axis)."""
    det = np.linalg.det(M)
    if det > 0:
        axis, angle = _axis(M)
        return "identity" if angle == 0 else f"rotation {_angle(angle)} about {_axis_name(axis)}"
    axis, angle = _axis(-M)  # M = -R(n, θ) = mirror(n) · R(n, θ + 180°)
    if angle == 0:
        return "inversion"
    if abs(abs(angle) - 180) < 1e-6:
        name = _axis_name(axis)
        return f"mirror {name} -> -{name}" if len(name) == 1 else f"mirror across the plane ⟂ {name}"
    phi = angle + 180 if angle <= 0 else angle - 180
    return f"rotoreflection {_angle(phi)} about {_axis_name(axis)}"


def check_file(src, checkpoint: str | None = None, group: str | None = None, kernel: str = "implicit",
               points: int = 512, n_random: int = 3, seed: int = 0):
    """Check a checkpoint (or a fresh seeded model of ``group``/``kernel``) on the mesh or cloud
    ``src``; returns (model, rows)."""
    if checkpoint is not None:
        net, _ = load_model(checkpoint)
    else:
        torch.manual_seed(seed)
        net = build_model(ModelConfig(group=group, kernel=kernel, points=points,
                                      class_names=[f"c{i}" for i in range(10)]))
    pts, nrm = load_cloud(src, n_points=net.cfg.points, rng=seeds.rng(seed))
    return net, check_model(net, torch.as_tensor(pts), torch.as_tensor(nrm), n_random=n_random, seed=seed)
