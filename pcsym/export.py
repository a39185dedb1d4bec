"""Export a trained equivariant model to plain torch (TorchScript) or ONNX.

The exported network takes points already in sampling order — ``prepare_inputs`` applies the
same seeded order the model uses in eval mode — so exported and original models give the same
logits. The equivariant weights are expanded once; running the export needs neither escnn nor
pcsym's model code (TorchScript: only torch; ONNX: onnxruntime).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from .errors import PcsymError, atomic_write_bytes

META_NAME = "pcsym.json"


class OrderedNet(nn.Module):
    """model.forward_ordered with input features built from normals: (pos, normals) -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pos: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        return self.model.forward_ordered(pos, self.model.input_features(normals, pos))


def prepare_inputs(pos: torch.Tensor, normals: torch.Tensor):
    """Put (B, N, 3) clouds in the model's eval-mode sampling order (seeded random order)."""
    from .graph import eval_order, take

    order = eval_order(pos.shape[0], pos.shape[1])
    return take(pos, order), take(normals, order)


def metadata(model) -> dict:
    from . import __version__

    return {"pcsym_version": __version__, "model_config": model.cfg.to_dict()}


def _example(model, batch: int = 1):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(batch, model.cfg.points, 3, generator=g)
    pos = pos / pos.norm(dim=-1).max()
    nrm = torch.nn.functional.normalize(torch.randn(batch, model.cfg.points, 3, generator=g), dim=-1)
    return pos, nrm


def export_model(model, path: str | Path, fmt: str = "torchscript") -> Path:
    from .models.layers import freeze

    path = Path(path)
    if model.cfg.kernel != "implicit":
        raise PcsymError("export supports implicit-kernel models (escnn's R3PointConv basis is not traceable)")
    model = freeze(model.float().eval())
    net = OrderedNet(model).eval()
    pos, nrm = _example(model)
    if fmt == "torchscript":
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            # shapes become constants: the export is for clouds of cfg.points points (documented)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(net, (pos, nrm), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={META_NAME: json.dumps(metadata(model))})
        atomic_write_bytes(path, buf.getvalue())
    elif fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise PcsymError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from None
        buf = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(net, (pos, nrm), buf, input_names=["pos", "normals"], output_names=["logits"],
                              dynamic_axes={"pos": {0: "batch"}, "normals": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
        import onnx

        proto = onnx.load_from_string(buf.getvalue())
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_NAME, json.dumps(metadata(model))
        atomic_write_bytes(path, proto.SerializeToString())
    else:
        raise PcsymError(f"unknown export format '{fmt}': use torchscript or onnx")
    return path


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
        from .config import ModelConfig

        self.cfg = ModelConfig.from_dict(meta["model_config"])
        self.net.eval()

    def __call__(self, pos: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        return self.net(*prepare_inputs(pos.float(), normals.float()))
