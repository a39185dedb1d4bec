"""Export a trained equivariant model to plain torch (TorchScript), ONNX, or numpy arrays.

The exported network takes points already in sampling order — ``prepare_inputs`` applies the
same seeded order the model uses in eval mode — so exported and original models give the same
logits. The equivariant weights are expanded once; running the export needs neither escnn nor
pcsym's model code (TorchScript: only torch; ONNX: onnxruntime; numpy: :mod:`pcsym.inference.runtime`).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import ModelConfig, check_choice
from ..errors import PcsymError
from ..files import atomic_write_bytes
from ..geometry.graph import sampling_order, take, vote_order
from ..models.classifier import frame_inputs
from ..models.layers import freeze
from . import runtime

META_NAME = "pcsym.json"
EXPORT_FORMATS = ("torchscript", "onnx", "numpy")
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx", "numpy": ".npz"}


class OrderedNet(nn.Module):
    """model.forward_ordered with input features built from normals: (pos, normals) -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pos: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        if self.model.cfg.frames == "none":
            return self.model.forward_ordered(pos, self.model.input_features(normals, pos), normals=normals)
        # the six views of each cloud, their logits averaged (eigh traced; no sizes as numbers)
        pos, normals, _, views = frame_inputs(pos, normals, None)
        logits = self.model.forward_ordered(pos, self.model.input_features(normals, pos), normals=normals)
        return logits.unflatten(0, (-1, views)).mean(1)


def prepare_inputs(pos: torch.Tensor, normals: torch.Tensor, cfg, vote: int = 0):
    """Put (B, N, 3) clouds in the eval-mode sampling order of a model of config ``cfg``
    (:func:`pcsym.geometry.graph.sampling_order`; another vote's order for test-time voting)."""
    order = sampling_order(pos, cfg.sampling, cfg.layer_points(pos.shape[1]), vote)
    return take(pos, order), take(normals, order)


def metadata(model, unknown_threshold: float | None = None, unknown: dict | None = None) -> dict:
    meta = {"pcsym_version": __version__, "model_config": model.cfg.to_dict(), "unknown_threshold": unknown_threshold}
    if unknown is not None:  # the detector's settings (a bank travels as an array, numpy exports only)
        meta["unknown"] = {k: v for k, v in unknown.items() if k != "bank"}
    return meta


def _example(model, batch: int = 1):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(batch, model.cfg.points, 3, generator=g)
    pos = pos / pos.norm(dim=-1).max()
    nrm = torch.nn.functional.normalize(torch.randn(batch, model.cfg.points, 3, generator=g), dim=-1)
    return pos, nrm


@contextlib.contextmanager
def _tracing():
    """Tracing turns shapes into constants (the export is for clouds of cfg.points points, as
    documented), which torch warns about at every data-dependent branch: keep those quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the ONNX exporter's note on the frozen weights' in-place fill; the exported logits are pinned equal
        # to the model's (tests/test_cli.py), so it only alarms the user
        warnings.filterwarnings("ignore", message="ONNX Preprocess - Removing mutation", category=UserWarning)
        yield


def export_model(model, path: str | Path, fmt: str = "torchscript", unknown_threshold: float | None = None,
                 unknown: dict | None = None) -> Path:
    """Write ``model`` as ``fmt``; its checkpoint's "unknown" detectors (:mod:`pcsym.training.unknown`) travel
    with it: ``unknown_threshold`` (max probability) and ``unknown`` (the energy score's threshold) in every
    format; an older model's neighbour-similarity detector, with its bank of training features, in numpy
    exports only, the one format that also outputs features."""
    path = Path(path)
    check_choice(fmt, EXPORT_FORMATS, "export format")
    model = freeze(model.float().eval())
    net = OrderedNet(model).eval()
    pos, nrm = _example(model)
    if fmt == "torchscript":
        with torch.no_grad(), _tracing():
            traced = torch.jit.trace(net, (pos, nrm), check_trace=False)
        buf = io.BytesIO()
        meta = metadata(model, unknown_threshold, _logit_detector(unknown))
        torch.jit.save(traced, buf, _extra_files={META_NAME: json.dumps(meta)})
        atomic_write_bytes(path, buf.getvalue())
    elif fmt == "onnx":
        if model.cfg.frames != "none":
            raise PcsymError(f"a model with {model.cfg.frames} frames exports to torchscript or numpy, not ONNX "
                             "(ONNX has no eigendecomposition for the frames)")
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise PcsymError("ONNX export needs the 'onnx' package: pip install 'pcsym[onnx]'") from None
        buf = io.BytesIO()
        with torch.no_grad(), _tracing():
            torch.onnx.export(net, (pos, nrm), buf, input_names=["pos", "normals"], output_names=["logits"],
                              dynamic_axes={"pos": {0: "batch"}, "normals": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
        import onnx

        proto = onnx.load_from_string(buf.getvalue())
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_NAME, json.dumps(metadata(model, unknown_threshold, _logit_detector(unknown)))
        atomic_write_bytes(path, proto.SerializeToString())
    else:
        buf = io.BytesIO()
        np.savez_compressed(buf, **numpy_arrays(model, unknown_threshold, unknown))
        atomic_write_bytes(path, buf.getvalue())
    return path


def _logit_detector(unknown: dict | None) -> dict | None:
    """The detector a logits-only export (TorchScript, ONNX) can run: the energy score's, not a bank's."""
    return unknown if unknown is not None and unknown.get("score") == "energy" else None


def numpy_arrays(model, unknown_threshold: float | None = None, unknown: dict | None = None) -> dict:
    """The frozen eval-mode network as named arrays for :class:`pcsym.inference.runtime.NumpyClassifier`
    (with ``unknown``: the neighbour-similarity detector's bank, float16, and its settings)."""
    arrays = {"orders": torch.cat([vote_order(v, 1, model.cfg.points) for v in range(runtime.VOTE_ORDERS)]),
              "sizes": torch.tensor(model.cfg.layer_points())}
    members = getattr(model, "members", None)
    if members is None:
        arrays.update(_network_arrays(model))
    else:  # an ensemble (pcsym.models.ensemble): each member's arrays under member<i>/
        for i, member in enumerate(members):
            arrays.update({f"member{i}/{k}": v for k, v in _network_arrays(member).items()})
    out = {k: (v.detach().cpu().float() if v.is_floating_point() else v.cpu()).numpy() for k, v in arrays.items()}
    # version 1 still for implicit models (older runtimes read them); basis models need runtime version 2,
    # ensembles version 3
    version = 3 if members is not None else 2 if model.cfg.kernel == "basis" else 1
    meta = {"format": runtime.FORMAT, "version": version, **metadata(model, unknown_threshold, unknown)}
    if members is not None:
        meta["members"] = len(members)
    if unknown is not None and "bank" in unknown:
        out["unknown.bank"] = np.asarray(unknown["bank"].cpu().numpy(), dtype=np.float16)
    out["meta"] = np.array(json.dumps(meta))
    return out


def _network_arrays(model) -> dict:
    """One network's blocks and head as named tensors (numpy_arrays)."""
    arrays = {}

    def linear(name, w, b):
        arrays[name + ".w"] = w
        if b is not None:
            arrays[name + ".b"] = b

    def act(name, m):
        arrays[name + ".is_scalar"], arrays[name + ".gate_of"] = m.is_scalar, m.gate_of

    for i, block in enumerate(model.blocks):
        p, conv = f"block{i}", block.conv
        if not hasattr(conv, "mlp"):  # the basis kernel (pcsym.models.basis): h = the basis functions φ
            for l in range(1, conv.embed.lmax + 1):
                arrays[f"{p}.basis.cob_{l}"] = getattr(conv.embed, f"cob_{l}")
            for name in ("rings", "sigma", "phi_ring", "phi_harmonic"):
                arrays[f"{p}.basis.{name}"] = getattr(conv.embed, name)
            linear(f"{p}.contract", *conv.dense_weight())
            arrays[f"{p}.norm.scale"], arrays[f"{p}.norm.shift"] = block.norm.eval_affine()
            act(f"{p}.act", block.act)
            continue
        for l in range(1, conv.embed.lmax + 1):
            arrays[f"{p}.embed.cob_{l}"] = getattr(conv.embed, f"cob_{l}")
        arrays[f"{p}.embed.centres"] = conv.embed.centres
        arrays[f"{p}.embed.width"] = torch.tensor(conv.embed.width)
        for j in range(len(conv.mlp) // 2):
            linear(f"{p}.mlp{j}", *conv.mlp[2 * j].expand())
            act(f"{p}.mlp{j}", conv.mlp[2 * j + 1])
        linear(f"{p}.contract", *conv.dense_weight())
        arrays[f"{p}.norm.scale"], arrays[f"{p}.norm.shift"] = block.norm.eval_affine()
        act(f"{p}.act", block.act)
    first, bn, last = model.head.fc, model.head.bn, model.head.out
    linear("head.0", first.weight, first.bias)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    arrays["head.bn.scale"], arrays["head.bn.shift"] = scale, bn.bias - bn.running_mean * scale
    linear("head.1", last.weight, last.bias)
    return arrays


class ScriptedClassifier:
    """A TorchScript export loaded with plain torch: same call as the model, plus its config."""

    def __init__(self, path: str | Path):
        extra = {META_NAME: ""}
        try:
            self.net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise PcsymError(f"not a readable TorchScript export ({str(exc).splitlines()[0][:120]})", path=path) from None
        try:
            meta = json.loads(extra[META_NAME])
        except Exception:
            raise PcsymError("TorchScript file has no pcsym metadata", path=path) from None
        self.cfg = ModelConfig.from_dict(meta["model_config"])
        self.unknown_threshold = meta.get("unknown_threshold")
        self.unknown = meta.get("unknown")
        self.net.eval()

    def __call__(self, pos: torch.Tensor, normals: torch.Tensor, vote: int = 0) -> torch.Tensor:
        """Logits; ``vote`` picks another seeded downsampling order (test-time votes)."""
        return self.net(*prepare_inputs(pos.float(), normals.float(), self.cfg, vote))
