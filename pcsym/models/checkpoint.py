"""Checkpoints: saving, reading and loading models, and the models shipped with pcsym.

A checkpoint is a plain dict of tensors and primitives (``torch.load(weights_only=True)`` loads it;
nothing pickled is executed), written atomically:

    {"format", "format_version", "pcsym_version", "model_config": ModelConfig.to_dict(),
     "state_dict", ...run state: "epoch", "best_val_acc", "history", "train_config", "optimizer", ...}

``load_model(path)`` is ``build_model(ModelConfig.from_dict(ckpt["model_config"]))`` + the weights.
Shipped-model names resolve without importing torch (the numpy ``classify`` path needs only that).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import SHIPPED_MODELS, ModelConfig, TrainConfig
from ..errors import PcsymError
from ..files import atomic_write_bytes

CHECKPOINT_FORMAT = "pcsym-checkpoint"
CHECKPOINT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent.parent / "pretrained"
#: Models shipped inside the package: NAME.pt (checkpoint) + NAME.npz (numpy export, torch-free classify).
PRETRAINED = {name: f"{name}.pt" for name in SHIPPED_MODELS}


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path, a run folder (its best.pt, else last.pt), or a shipped model name."""
    s = str(name_or_path)
    if s in PRETRAINED:
        p = PRETRAINED_DIR / PRETRAINED[s]
        if not p.exists():
            raise PcsymError(f"the shipped model '{s}' is missing from this installation ({p})")
        return p
    p = Path(s)
    if not p.exists():
        raise PcsymError("checkpoint not found (pass a .pt file or a shipped model name: "
                         f"{', '.join(PRETRAINED)})", path=s)
    if p.is_dir():
        for cand in ("best.pt", "last.pt"):
            if (p / cand).exists():
                return p / cand
        raise PcsymError("is a directory without best.pt or last.pt", path=s)
    return p


def _state_to_plain(obj):
    """Copy nested state into Python primitives + tensors, so ``weights_only=True`` loads it."""
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _state_to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_state_to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        import torch

        return torch.from_numpy(obj)
    return obj


def _rebuilt_from_config(key: str) -> bool:
    """escnn's basis index buffers (``...expansion.in_indices_(...)``): int64, often most of a
    checkpoint's bytes, and rebuilt identically from the model config, so they are not stored."""
    return ".expansion." in key and ("in_indices_" in key or "out_indices_" in key)


def _current_key(key: str) -> str:
    """A state_dict key of an older checkpoint under the name the model uses now."""
    from .classifier import LEGACY_HEAD_KEYS  # torch: not at the top, resolving a shipped name stays torch-free

    for old, new in LEGACY_HEAD_KEYS.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_weights(model, state_dict: dict, path=None, skip: str | None = None) -> None:
    """``load_state_dict`` that tolerates only the absent buffers the model rebuilds itself.
    ``skip``: a key prefix left out on both sides (``"head."``: load the trunk only, for fine-tuning)."""
    state_dict = {k: v for k, v in ((_current_key(k), v) for k, v in state_dict.items())
                  if not (skip and k.startswith(skip))}
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # tensors of other shapes: another model config
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc).splitlines()[0])
        raise PcsymError(f"checkpoint does not match the model ({first[:160]})", path=path) from None
    missing = [k for k in missing if not _rebuilt_from_config(k) and not (skip and k.startswith(skip))]
    if missing or unexpected:
        raise PcsymError(f"checkpoint does not match its model config (missing {len(missing)}, unexpected "
                         f"{len(unexpected)} tensors; e.g. {(missing + unexpected)[:2]})", path=path)


def save_checkpoint(path: str | Path, model, cfg: ModelConfig, extra: dict | None = None) -> None:
    """Write a checkpoint atomically: the previous file stays intact if this is interrupted. An ensemble
    (:mod:`pcsym.models.ensemble`) records its number of members."""
    import torch

    members = getattr(model, "members", None)
    state = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "pcsym_version": __version__,
        "model_config": _state_to_plain(cfg.to_dict()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items() if not _rebuilt_from_config(k)},
    }
    if members is not None:
        state["ensemble_members"] = len(members)
    if extra:
        state.update(_state_to_plain(extra))
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def update_checkpoint(path: str | Path, model, ckpt: dict, changes: dict) -> None:
    """Rewrite the checkpoint ``ckpt`` (as read from ``path``) of ``model`` with ``changes`` to its run
    part (everything but what :func:`save_checkpoint` writes itself), the rest kept; atomically."""
    own = ("format", "format_version", "pcsym_version", "model_config", "state_dict", "ensemble_members")
    extra = {k: v for k, v in ckpt.items() if k not in own}
    save_checkpoint(path, model, model.cfg, {**extra, **changes})


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict safely (weights_only=True) and check its format/version."""
    p = resolve_checkpoint(path)
    import torch

    kind = export_kind(p)
    if kind is not None:
        raise PcsymError(f"is a pcsym {kind} export, not a checkpoint: this command needs a checkpoint (.pt), a "
                         "run folder or a shipped model name (exports run with `pcsym classify --model`)", path=p)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with code, truncated zip, garbage
        text = str(exc)
        msg = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "GLOBAL" in text or "Unsupported global" in text:  # a pickled callable/class: refuse
            raise PcsymError("refusing to load: the checkpoint contains pickled code or objects, not just "
                             "tensors (only pcsym checkpoints are accepted)", path=p) from None
        raise PcsymError(f"not a readable checkpoint ({type(exc).__name__}: {msg[:120]})", path=p) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise PcsymError("not a pcsym checkpoint (no pcsym header)", path=p)
    if int(ckpt.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise PcsymError(f"checkpoint format v{ckpt.get('format_version')} was written by pcsym "
                         f"{ckpt.get('pcsym_version')}, newer than this pcsym {__version__}; upgrade pcsym", path=p)
    return ckpt


def export_kind(path: Path) -> str | None:
    """"numpy", "TorchScript" or "ONNX" for a pcsym export (by suffix or contents), None otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".ts", ".onnx"):
        return {".npz": "numpy", ".ts": "TorchScript", ".onnx": "ONNX"}[suffix]
    if not path.is_file():
        return None
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if "meta.npy" in names:
            return "numpy"
        return "TorchScript" if any(n.split("/")[1:2] == ["code"] for n in names) else None
    return "ONNX" if looks_onnx(path) else None


def looks_onnx(path: Path) -> bool:
    """A pcsym ONNX export under another name: a protobuf ModelProto (field 1, ir_version, first) whose
    metadata (serialized last) holds the ``pcsym.json`` key."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
            fh.seek(max(0, Path(path).stat().st_size - (1 << 20)))
            tail = fh.read()
    except OSError:
        return False
    return head[:1] == b"\x08" and b"pcsym.json" in tail


def train_config_of(ckpt: dict) -> TrainConfig | None:
    """The training settings a checkpoint was made with (its split seed and fraction), if stored."""
    saved = ckpt.get("train_config")
    return None if saved is None else TrainConfig.from_dict(saved)


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild the model from the config stored in the checkpoint; returns (model, ckpt)."""
    from .classifier import build_model  # torch (see _current_key)

    ckpt = read_checkpoint(path)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    n = int(ckpt.get("ensemble_members") or 0)
    if n:  # ``pcsym ensemble``: the members' weights under members.<i>.
        from .ensemble import EnsembleClassifier

        model = EnsembleClassifier(cfg, n)
    else:
        model = build_model(cfg)
    load_weights(model, ckpt["state_dict"], path)
    return model.to(device).eval(), ckpt
