"""Run an exported classifier with numpy alone (``pcsym export --format numpy``, a ``.npz`` file).

Importing torch takes 2-3 s on a small CPU, longer than classifying a mesh; this runtime needs only
numpy, so ``pcsym classify`` with a shipped model starts in well under a second. The file holds the
network as plain arrays — the equivariant weights already expanded, batch norms folded to per-channel
affine maps, the seeded random point orders of the votes (farthest-point steps are computed per cloud,
exactly as :func:`pcsym.geometry.graph.sampling_order`) — and a JSON copy of the model config. It is loaded with
``allow_pickle=False``: nothing in it is executed. The forward pass mirrors
:class:`pcsym.models.classifier.EquivariantClassifier` in eval mode; tests pin equal logits.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import PcsymError
from ..geometry.frames import frame_views
from ..geometry.numpy_graph import gather, knn, sampling_order

FORMAT = "pcsym-numpy-export"
VERSION = 3  # 2: also basis-kernel models (``block<i>.basis.*`` arrays); 3: ensembles (``member<i>/`` arrays).
# A single implicit model is still written as 1
VOTE_ORDERS = 8  # seeded downsampling orders stored in an export: test-time votes 0..7
#: the "unknown" score of a shape is its similarity to its UNKNOWN_K-th most similar training shape
UNKNOWN_K = 5


def elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def energy(logits: np.ndarray) -> np.ndarray:
    """The "unknown" score (B,) of logits (B, C): their log-sum-exp, minus the free energy (Liu et al.,
    NeurIPS 2020). High: the network's logits are large for some class, as for the shapes it was trained
    on; needs nothing but the logits, so every export format carries it."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]


def neighbour_similarity(features: np.ndarray, bank: np.ndarray, k: int = UNKNOWN_K) -> np.ndarray:
    """The "unknown" score (B,) of pooled features (B, D): the cosine similarity to the k-th most
    similar row of ``bank`` (M, D), the unit-length pooled features of the model's training shapes
    (deep nearest neighbours, Sun et al., ICML 2022). High: like shapes the model was trained on."""
    f = np.asarray(features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ np.asarray(bank, dtype=np.float32).T
    k = min(k, sim.shape[1])
    return np.partition(sim, sim.shape[1] - k, axis=1)[:, sim.shape[1] - k]


class NumpyClassifier:
    """An exported classifier: ``logits(pos, normals)`` on (B, N, 3) float arrays, N = cfg.points."""

    def __init__(self, path: str | Path):
        try:
            with np.load(str(path), allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise PcsymError(f"not a readable numpy export ({str(exc).splitlines()[0][:120]})", path=path) from None
        if meta.get("format") != FORMAT:
            raise PcsymError("not a pcsym numpy export", path=path)
        if meta.get("version", 0) > VERSION:
            raise PcsymError("numpy export made by a newer pcsym", path=path)
        self._setup(ModelConfig.from_dict(meta["model_config"]), arrays, meta)

    def _setup(self, cfg: ModelConfig, arrays: dict, meta: dict) -> None:
        """Every attribute, set in one place for a loaded file and for an ensemble's members alike."""
        self.cfg, self.a = cfg, arrays
        self.unknown_threshold = meta.get("unknown_threshold")  # calibrated max-probability cut (or None)
        #: the "unknown" detector: {"score": "energy", "threshold"}, or neighbour similarity {"k", "threshold"}
        #: with its bank (older models), or None
        self.unknown = meta.get("unknown")
        self.unknown_bank = self.a.pop("unknown.bank", None)
        #: an ensemble (``pcsym ensemble``): its members' networks, whose logits are averaged; None for one model
        self.members = None
        if meta.get("members"):
            shared = {k: v for k, v in self.a.items() if "/" not in k}
            self.members = []
            for i in range(int(meta["members"])):
                prefix = f"member{i}/"
                member = NumpyClassifier.__new__(NumpyClassifier)
                # a member is one network: the shared arrays and its own, no detector and no members of its own
                own = {k[len(prefix):]: v for k, v in self.a.items() if k.startswith(prefix)}
                member._setup(cfg, {**shared, **own}, {})
                self.members.append(member)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.a[name + ".w"].T
        return y + self.a[name + ".b"] if name + ".b" in self.a else y

    def _act(self, x: np.ndarray, name: str) -> np.ndarray:
        """pcsym.models.layers.FieldNonlinearity: ELU on scalars, sigmoid gates on the other fields."""
        is_scalar, gate_of = self.a[name + ".is_scalar"], self.a[name + ".gate_of"]
        y = x[..., : len(is_scalar)]
        if x.shape[-1] == len(is_scalar):
            return elu(y)
        with np.errstate(over="ignore"):  # exp overflow -> gate 0, the correct limit
            gates = 1.0 / (1.0 + np.exp(-x[..., len(is_scalar) :]))
        return np.where(is_scalar, elu(y), y * gates[..., gate_of])

    def _embed(self, rel: np.ndarray, p: str) -> np.ndarray:
        """pcsym.models.layers.HarmonicEmbedding."""
        feats = [np.ones_like(rel[..., :1])]
        l, prev = 1, None
        while f"{p}.cob_{l}" in self.a:
            cob = self.a[f"{p}.cob_{l}"]
            prev = rel @ cob.T if l == 1 else (prev[..., :, None] * feats[1][..., None, :]).reshape(
                *prev.shape[:-1], -1) @ cob.T
            feats.append(prev)
            l += 1
        r = np.linalg.norm(rel, axis=-1, keepdims=True)
        feats.append(np.exp(-(((r - self.a[p + ".centres"]) / self.a[p + ".width"]) ** 2)))
        return np.concatenate(feats, axis=-1)

    def _block(self, i: int, pos: np.ndarray, feat: np.ndarray, n_out: int, normals: np.ndarray):
        p = f"block{i}"
        query = pos[:, :n_out]
        k = min(self.cfg.k, pos.shape[1])
        idx = knn(query, pos, k)
        rel = query[:, :, None, :] - gather(pos, idx)
        scale = np.maximum(np.linalg.norm(rel, axis=-1).mean(axis=(1, 2)), 1e-8)[:, None, None, None]
        rel = rel / scale
        if p + ".basis.rings" in self.a:
            h = self._basis(rel, p + ".basis")
        else:
            h = self._kernel_hidden(rel, p, n_out, idx, normals)
        b, m = h.shape[:2]
        f = gather(feat, idx)
        agg = h.reshape(b * m, k, -1).transpose(0, 2, 1) @ f.reshape(b * m, k, -1)  # (B·M, H, C_in)
        out = self._linear(agg.reshape(b, m, -1) / k, p + ".contract")
        out = out * self.a[p + ".norm.scale"] + self.a[p + ".norm.shift"]
        return query, self._act(out, p + ".act")

    def _basis(self, rel: np.ndarray, p: str) -> np.ndarray:
        """pcsym.models.basis.BasisEmbedding: Gaussian rings of |x| times harmonic polynomials of x/|x|."""
        r = np.linalg.norm(rel, axis=-1, keepdims=True)
        unit = rel / np.where(r > 1e-9, r, 1.0)
        feats, l = [np.ones_like(rel[..., :1])], 1
        while f"{p}.cob_{l}" in self.a:
            cob = self.a[f"{p}.cob_{l}"]
            feats.append(unit @ cob.T if l == 1 else (feats[-1][..., :, None] * feats[1][..., None, :]).reshape(
                *unit.shape[:-1], -1) @ cob.T)
            l += 1
        harmonics = np.concatenate(feats, axis=-1)
        radial = np.exp(-0.5 * (r - self.a[p + ".rings"]) ** 2 / self.a[p + ".sigma"] ** 2)
        return radial[..., self.a[p + ".phi_ring"]] * harmonics[..., self.a[p + ".phi_harmonic"]]

    def _kernel_hidden(self, rel: np.ndarray, p: str, n_out: int, idx: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """The implicit kernel's h: the MLP of the harmonic embedding (and edge features), then a constant."""
        h = self._embed(rel, p + ".embed")
        if self.cfg.edge_features != "none":  # pcsym.models.classifier.edge_features
            n_i, n_j = normals[:, :n_out, None, :], gather(normals, idx)
            a, b, c = (n_i * n_j).sum(-1), (n_i * rel).sum(-1), (n_j * rel).sum(-1)
            ppf = [np.abs(a), np.abs(b), np.abs(c), a * b * c] if self.cfg.edge_features == "ppf-unsigned" else [a, b, c]
            h = np.concatenate([h, np.stack(ppf, -1)], -1)
            if self.cfg.edge_features == "ppf+normals":
                h = np.concatenate([h, np.broadcast_to(n_i, n_j.shape), n_j], -1)
        j = 0
        while f"{p}.mlp{j}.w" in self.a:
            h = self._act(self._linear(h, f"{p}.mlp{j}"), f"{p}.mlp{j}")
            j += 1
        return np.concatenate([h, np.ones_like(h[..., :1])], axis=-1)

    def logits(self, pos: np.ndarray, normals: np.ndarray, vote: int = 0, pooled: bool = False):
        """Logits (B, C); ``vote`` v uses the order of :func:`pcsym.geometry.graph.vote_order` (0 = eval order).
        ``pooled``: (logits, the pooled invariant features (B, D) the classifier head takes). An ensemble: the
        mean of its members' logits (and their pooled features side by side)."""
        if self.members is not None:
            outs = [m.logits(pos, normals, vote, pooled=True) for m in self.members]
            logits = np.mean([lg for lg, _ in outs], axis=0)
            return (logits, np.concatenate([f for _, f in outs], axis=-1)) if pooled else logits
        orders = self.a["orders"]
        if not 0 <= vote < len(orders):
            raise PcsymError(f"a numpy export holds {len(orders)} downsampling orders: at most {len(orders)} votes")
        pos = np.asarray(pos, dtype=np.float32)
        normals = np.asarray(normals, dtype=np.float32)
        if pos.ndim != 3 or pos.shape[1:] != (self.cfg.points, 3) or normals.shape != pos.shape:
            raise PcsymError(f"the numpy export takes (B, {self.cfg.points}, 3) points and normals, "
                             f"got {pos.shape} and {normals.shape}")
        order = sampling_order(pos, self.cfg.sampling, self.a["sizes"], orders[vote])[..., None]
        pos, normals = (np.take_along_axis(x, order, axis=1) for x in (pos, normals))
        b = len(pos)
        if self.cfg.frames != "none":  # pcsym.models.classifier.frame_average: every cloud in its six views
            rot = frame_views(pos)  # the covariance ignores the points' order
            pos, normals = (np.einsum("bnj,bvij->bvni", x, rot).reshape(-1, *x.shape[1:]) for x in (pos, normals))
        feats = [pos - pos.mean(1, keepdims=True)] if self.cfg.use_positions else []
        feats += [normals] if self.cfg.normal_field else []
        feat = np.concatenate(feats + [np.ones_like(pos[..., :1])], axis=-1)
        for i, (n, residual) in enumerate(self.cfg.block_points()):
            pos, out = self._block(i, pos, feat, n, normals)
            feat = feat + out if residual else out
            normals = normals[:, :n]
        features = np.concatenate([feat.max(1), feat.mean(1)], axis=-1)
        x = elu(self._linear(features, "head.0") * self.a["head.bn.scale"] + self.a["head.bn.shift"])
        logits = self._linear(x, "head.1")
        if len(logits) != b:  # the views' mean
            logits, features = (y.reshape(b, -1, y.shape[-1]).mean(1) for y in (logits, features))
        return (logits, features) if pooled else logits

    __call__ = logits
