"""The one config object that rebuilds a model, saved inside every checkpoint."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PcsymError

KERNELS = ("implicit", "basis")
# Models shipped inside the package (pcsym/pretrained/): checkpoint + numpy export (NAME.npz).
PRETRAINED = {"so3": "so3.pt", "o2": "o2.pt"}


@dataclass
class ModelConfig:
    group: str = "o2"
    kernel: str = "implicit"  # implicit | basis
    class_names: list[str] = field(default_factory=list)
    points: int = 1024  # points fed to the network
    k: int = 10  # neighbours per layer
    widths: tuple[int, ...] = (32, 64, 128)  # approx. feature dims of the steerable layers
    strides: tuple[int, ...] = (2, 4, 4)  # points shrink by these factors, layer by layer
    invariant_dims: int = 128  # last steerable layer: invariant scalars
    final_stride: int = 1
    max_freq: int | None = None  # band limit of hidden fields (continuous groups); None = group default
    kernel_dims: int = 16  # approx. hidden dims of the implicit kernel MLP
    kernel_layers: int = 2
    lmax: int = 2  # degree of the harmonic-polynomial embedding
    n_radial: int = 4
    use_normals: bool = True
    use_positions: bool = True  # centred positions as an input vector field (global shape context)
    sampling: str = "random"  # random | fps
    head_dims: int = 128
    dropout: float = 0.3

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise PcsymError(f"checkpoint config has unknown fields {sorted(unknown)} (made by a newer pcsym?)")
        d = dict(d)
        d.setdefault("use_positions", False)  # checkpoints written before the position input existed
        for key in ("widths", "strides"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def validate(self) -> "ModelConfig":
        from .groups import get_group

        get_group(self.group)
        if self.kernel not in KERNELS:
            raise PcsymError(f"unknown kernel '{self.kernel}': use one of {', '.join(KERNELS)}")
        if self.sampling not in ("random", "fps"):
            raise PcsymError(f"unknown sampling '{self.sampling}': use random or fps")
        if len(self.widths) != len(self.strides):
            raise PcsymError("widths and strides must have the same length")
        n = self.points
        for s in tuple(self.strides) + (self.final_stride,):
            n //= s
        if n < 1 or self.points // max(1, _prod(self.strides[:-1] or (1,))) < self.k:
            raise PcsymError(f"{self.points} points are too few for strides {self.strides} with k={self.k}")
        if self.max_freq is not None and not 0 <= self.max_freq <= 4:
            raise PcsymError(f"max_freq must be between 0 and 4, got {self.max_freq}")
        if self.k < 1:
            raise PcsymError("k must be at least 1")
        return self


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path, or the name of a model shipped in the package (``so3``, ``o2``)."""
    s = str(name_or_path)
    if s in PRETRAINED:
        p = Path(__file__).parent / "pretrained" / PRETRAINED[s]
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
