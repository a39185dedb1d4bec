"""The settings of a model and of a training run, and the one place where they are parsed,
merged and validated.

* :class:`ModelConfig` rebuilds a model: it is saved inside every checkpoint and export
  (``build_model(ModelConfig.from_dict(ckpt["model_config"]))``).
* :class:`TrainConfig` is everything else a run needs; ``RUN/config.json`` holds both.
* :func:`merge_settings` combines defaults, a resumed run's saved settings, a config file and the
  command-line flags (in rising precedence). The ``train`` command's parameter names *are* the
  field names, so no table maps one onto the other.

This module imports neither torch nor escnn.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import PcsymError

# The allowed values of every enumerated setting (the CLI, the configs and the data layer use these).
KERNELS = ("implicit", "basis")  # == models.layers.KERNELS' keys (a test keeps them equal)
SAMPLINGS = ("random", "fps", "random-fps")  # see pcsym.geometry.graph.sampling_order
ROTATIONS = ("none", "z", "so3")
SCHEDULES = ("cosine", "step")
UP_AXES = ("y", "z")
DATA_FORMATS = ("h5", "normal_resampled", "off", "folder")
DEVICES = ("auto", "cpu", "cuda")
#: what picks best.pt: validation mean class accuracy (tracks a balanced test split), OA, or the last epoch
SELECT_METRICS = ("macc", "oa", "last")
#: edge features fed to the implicit kernel's MLP beside the harmonic embedding of x_i - x_j: none, the
#: point-pair invariants n_i.n_j, n_i.d, n_j.d (d the scaled x_i - x_j; needs normals), or those and the two
#: normals n_i, n_j themselves as vector fields (the kernel may then turn with the surface, not only with d), or
#: |n_i.n_j|, |n_i.d|, |n_j.d| and their product, blind to the normals' signs (then no normal input field either)
EDGE_FEATURES = ("none", "ppf", "ppf+normals", "ppf-unsigned")
#: PCA frame averaging: none, or the six views of pcsym.geometry.frames
FRAMES = ("none", "pca")
_Z_TURN = ((0.7648421872844885, -0.644217687237691, 0.0), (0.644217687237691, 0.7648421872844885, 0.0),
           (0.0, 0.0, 1.0))  # a rotation about z by 0.7 rad, which no finite group of pcsym contains
#: class balancing of training: none, a class-weighted loss, or a class-balanced sampler
BALANCES = ("none", "loss", "sampler")
OPTIMIZERS = ("adamw", "sgd")
#: the most vertices (or points) an input file may have: larger ones are refused before they are parsed (the
#: readers' limit; ``classify --max-vertices``)
MAX_VERTICES = 2_000_000
#: the models shipped in the package (pcsym.models.checkpoint.PRETRAINED): so3 and o2 know ModelNet40's 40
#: classes; so3-mn10 and o2-mn10 are the earlier ModelNet10 models
SHIPPED_MODELS = ("so3", "o2", "so3-mn10", "o2-mn10")


def check_choice(value, choices: tuple[str, ...], what: str):
    """``value`` if it is one of ``choices`` (None passes), else a one-line error naming ``what``."""
    if value is not None and value not in choices:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise PcsymError(f"unknown {what} '{value}': use {listed}")
    return value


def default_strides(n_layers: int) -> tuple[int, ...]:
    """Downsampling factors of ``n_layers`` steerable layers: 1024 -> 512 -> 128 -> 32 -> ..."""
    return (2, 4, 4, 4, 4, 4, 4, 4)[:n_layers]


class _Config:
    """Shared plumbing of the two configs: plain-dict round trip and typed parsing of raw values."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def parse(cls, name: str, value):
        """``value`` (a flag's string, a config file's scalar or list, a saved JSON value) as the
        type of field ``name``: ``"32,64"`` -> ``(32, 64)``, ``"0.8,1.2"`` -> ``(0.8, 1.2)``, ..."""
        hint = typing.get_type_hints(cls)[name]
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if type(None) in args:  # Optional[X]
            hint = next(a for a in args if a is not type(None))
            args = typing.get_args(hint)
        flag = "--" + name.replace("_", "-")
        try:
            if typing.get_origin(hint) is tuple:
                items = value.split(",") if isinstance(value, str) else \
                    list(value) if isinstance(value, (list, tuple)) else [value]  # a config file's `depth: 2`
                return tuple(args[0](x) for x in items)
            if hint is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    return value.lower() in ("true", "1", "yes")
                return bool(value)
            return hint(value)
        except (TypeError, ValueError):
            what = "comma-separated numbers" if typing.get_origin(hint) is tuple else hint.__name__
            raise PcsymError(f"{flag} must be {what}, got '{value}'") from None

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - cls.field_names()
        if unknown:
            raise PcsymError(f"config has unknown fields {sorted(unknown)} (made by a newer pcsym?)")
        return cls(**{k: cls.parse(k, v) for k, v in d.items()})


@dataclass
class ModelConfig(_Config):
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
    #: the implicit kernel's radial Gaussians are centred from 0 to radial_max (neighbour offsets are scaled to a
    #: mean length of 1 per cloud)
    radial_max: float = 2.5
    #: the basis kernel (escnn's R3PointConv, the paper's baseline): radius of its rings, their number, and its
    #: angular frequency cutoff
    basis_radius: float = 3.0
    basis_rings: int = 3
    basis_cutoff: float = 2.0
    use_normals: bool = True
    use_positions: bool = True  # centred positions as an input vector field (global shape context)
    #: where the training normals came from: 0 = the data's own (mesh faces, files); P > 0 = PCA
    #: estimates in clouds of P points (the h5 releases have none). Inference makes its normals alike.
    estimated_normals: int = 0
    sampling: str = "random"  # random | fps | random-fps (see SAMPLINGS)
    head_dims: int = 128
    dropout: float = 0.3
    edge_features: str = "none"  # none | ppf | ppf+normals | ppf-unsigned (see EDGE_FEATURES)
    #: steerable blocks per stage (one value: every stage): the first downsamples, the other depth - 1 are
    #: residual blocks on the stage's own points (f <- f + block(f), an identity shortcut between fields
    #: of the same type)
    depth: tuple[int, ...] = (1,)
    #: none, or pca: the network sees a cloud through the six views of its PCA frame (pcsym.geometry.frames),
    #: one drawn per training shape, all six averaged in evaluation: rotations about z that the group covers
    #: become invariance to every rotation
    frames: str = "none"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def normal_field(self) -> bool:
        """The normals as an input vector field of the first layer: with ``use_normals``, except for
        ``ppf-unsigned`` edges, which see them only through invariants blind to their signs (a field would
        turn with a flipped normal)."""
        return self.use_normals and self.edge_features != "ppf-unsigned"

    def layer_points(self, n: int | None = None) -> list[int]:
        """Points kept by each steerable layer (the last: the invariant layer) for ``n`` input points."""
        sizes, n = [], self.points if n is None else n
        for s in tuple(self.strides) + (self.final_stride,):
            n = max(1, n // s)
            sizes.append(n)
        return sizes

    def block_points(self, n: int | None = None) -> list[tuple[int, bool]]:
        """(points kept, residual?) of every steerable block in order, the invariant layer last:
        each stage of :meth:`layer_points` is one downsampling block and ``depth - 1`` residual blocks."""
        sizes = self.layer_points(n)
        plan = [(m, r > 0) for m, d in zip(sizes[:-1], self.stage_depths()) for r in range(d)]
        return plan + [(sizes[-1], False)]

    def stage_depths(self) -> tuple[int, ...]:
        """Steerable blocks of each stage (``depth``, one value repeated for every stage)."""
        return tuple(self.depth) * len(self.widths) if len(self.depth) == 1 else tuple(self.depth)

    @classmethod
    def parse(cls, name: str, value):
        if name == "class_names":
            return [str(c) for c in value]
        return super().parse(name, value)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d.setdefault("use_positions", False)  # checkpoints written before the position input existed
        return super().from_dict(d)

    def validate(self) -> "ModelConfig":
        from .models.groups import get_group  # here, not at the top: `pcsym --help` imports config, not numpy

        group = get_group(self.group)
        check_choice(self.kernel, KERNELS, "kernel")
        check_choice(self.sampling, SAMPLINGS, "sampling")
        check_choice(self.edge_features, EDGE_FEATURES, "edge features")
        check_choice(self.frames, FRAMES, "frames")
        if self.frames != "none" and not group.contains(_Z_TURN):
            raise PcsymError(f"frames '{self.frames}' need a group with every rotation about z (so2, o2, so2xinv, "
                             f"o2xinv, so3, o3), not {self.group}")
        if self.edge_features != "none" and (self.kernel != "implicit" or not self.use_normals):
            raise PcsymError(f"edge features '{self.edge_features}' need the implicit kernel and normals")
        if len(self.widths) != len(self.strides):
            raise PcsymError("widths and strides must have the same length")
        if self.k < 1:
            raise PcsymError("k must be at least 1")
        if len(self.depth) not in (1, len(self.widths)) or min(self.depth, default=0) < 1:
            raise PcsymError(f"depth must be one count of steerable blocks per stage (or one for all), each at "
                             f"least 1, got {','.join(map(str, self.depth))}")
        if self.estimated_normals < 0:
            raise PcsymError(f"estimated_normals must be 0 or a point count, got {self.estimated_normals}")
        n = self.points
        for s in tuple(self.strides) + (self.final_stride,):
            n //= s
        if n < 1 or self.points // max(1, _prod(self.strides[:-1] or (1,))) < self.k:
            raise PcsymError(f"{self.points} points are too few for strides {self.strides} with k={self.k}")
        if self.max_freq is not None and not 0 <= self.max_freq <= 4:
            raise PcsymError(f"max_freq must be between 0 and 4, got {self.max_freq}")
        # sizes a config file sets (no flag does): caught here, in one line, not as an error deep in a layer
        if min(self.widths, default=0) < 1:
            raise PcsymError(f"widths must all be at least 1, got {','.join(map(str, self.widths))}")
        for name in ("invariant_dims", "head_dims", "kernel_dims", "kernel_layers", "n_radial"):
            if getattr(self, name) < 1:
                raise PcsymError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.lmax <= 4:
            raise PcsymError(f"lmax (the degree of the kernel's harmonic embedding) must be between 0 and 4, "
                             f"got {self.lmax}")
        if not 0 <= self.dropout < 1:
            raise PcsymError(f"dropout must be in [0, 1), got {self.dropout:g}")
        if min(self.radial_max, self.basis_radius, self.basis_cutoff) <= 0 or self.basis_rings < 1:
            raise PcsymError("radial_max, basis_radius and basis_cutoff must be positive and basis_rings at least 1")
        return self


def model_notes(cfg: ModelConfig) -> list[str]:
    """Settings of ``cfg`` that change nothing, in one line each (``train`` prints them as notes): under so3
    and o3 a harmonic of degree l is an irrep of degree l, and the kernel MLP's hidden fields stop at the band
    limit, so an ``lmax`` raised above both the default and the band limit feeds degrees no weight can read
    (the model is the same, parameter for parameter). Under O(2) or a finite group a higher degree splits into
    frequencies the hidden fields have, so it is no note there. PCA frames on a group already invariant to
    every rotation only multiply its cost."""
    from .models.groups import get_group  # the group table, without escnn

    spec = get_group(cfg.group)
    band = spec.band_limit(cfg.max_freq)
    notes = []
    if cfg.kernel == "implicit" and spec.name in ("so3", "o3") and cfg.lmax > max(band, ModelConfig.lmax):
        notes.append(f"lmax {cfg.lmax} adds nothing under {spec.name} at max-freq {band}: harmonics above degree "
                     f"{band} reach no hidden field of the kernel MLP (raise --max-freq to use them)")
    if cfg.frames != "none" and spec.name in ("so3", "o3"):
        notes.append(f"frames '{cfg.frames}' add nothing under {spec.name}, already invariant to every rotation, "
                     "at six passes per prediction (they are for so2, o2 and the other groups about z)")
    return notes


@dataclass
class TrainConfig(_Config):
    data: str = ""
    up_axis: str | None = None  # y: rotate a y-up dataset to z-up (None: z, or the cache's own)
    data_format: str | None = None  # h5 | normal_resampled | off | folder (None: detect)
    out: str = "runs/latest"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step
    warmup: float = 0.1  # linear warm-up over this fraction of all steps, at most one epoch
    lr_floor: float = 0.01  # cosine: the rate falls to this fraction of --lr
    step_factor: float = 0.5  # step: the rate is multiplied by this every epochs // step_stages epochs
    step_stages: int = 3
    label_smoothing: float = 0.1
    seed: int = 0
    val_fraction: float = 0.2
    train_fraction: float = 1.0  # part of the training split used (learning curves; validation unchanged)
    rotate: str = "z"  # none | z | so3 (train-time augmentation)
    jitter: float = 0.01
    jitter_clip: float = 0.05  # the jitter is clipped to +-jitter_clip
    scale: tuple[float, ...] = (0.8, 1.2)  # range of the random isotropic scale factor
    anisotropic_scale: bool = False
    anisotropic_range: tuple[float, ...] = (0.8, 1.25)  # range of the per-axis factors of --anisotropic-scale
    point_dropout: float = 0.0
    workers: int = 0
    device: str = "cpu"
    threads: int = 0  # 0 = torch default
    shards: int = 0  # batch shards run side by side on threads (pcsym.models.shards); 0 = one per CPU thread
    max_steps: int = 0  # stop each epoch after this many steps (0 = full epoch); for smoke tests
    eval_rotate: str = "z"  # rotation applied to validation clouds (z-rotated validation by default)
    bn_batches: int = 32  # training batches used to re-estimate normalisation statistics after each epoch
    select: str = "macc"  # validation figure that picks best.pt
    init: str | None = None  # fine-tune: shipped model name or checkpoint whose trunk starts the run
    freeze_trunk: bool = False  # fine-tune: train only the head
    balance: str = "none"  # none | loss | sampler (see BALANCES)
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # SGD's momentum
    ema: float = 0.0  # decay of the weights' moving average that is validated and saved (0 = off; pcsym.training.ema)
    mix: float = 0.0  # probability that a training shape gets a part of another (point CutMix; pcsym.training.mix)
    outlier_exposure: float = 0.0  # weight of the energy terms on made-up outliers (0 = off; pcsym.training.outliers)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if "scale_low" in d:  # runs written before the scale range was one field
            d["scale"] = (d.pop("scale_low"), d.pop("scale_high"))
        d.setdefault("select", "oa")  # what older runs selected on
        return super().from_dict(d)

    def validate(self) -> "TrainConfig":
        """Reject settings no run can use (messages name the ``train`` command's flags)."""
        for name in ("rotate", "eval_rotate"):
            check_choice(getattr(self, name), ROTATIONS, "--" + name.replace("_", "-"))
        check_choice(self.schedule, SCHEDULES, "--schedule")
        check_choice(self.up_axis, UP_AXES, "--up-axis")
        check_choice(self.data_format, DATA_FORMATS, "--format")
        check_choice(self.device, DEVICES, "--device")
        check_choice(self.select, SELECT_METRICS, "--select")
        check_choice(self.balance, BALANCES, "--balance")
        check_choice(self.optimizer, OPTIMIZERS, "--optimizer")
        _check_range("--scale", self.scale)
        _check_range("anisotropic_range", self.anisotropic_range)
        if not 0 <= self.point_dropout < 1 or not 0 < self.val_fraction < 1:
            raise PcsymError("--point-dropout must be in [0, 1) and --val-fraction in (0, 1)")
        if not 0 < self.train_fraction <= 1:
            raise PcsymError(f"--train-fraction must be in (0, 1], got {self.train_fraction:g}")
        if not 0 <= self.ema < 1:
            raise PcsymError(f"--ema must be in [0, 1) (0 = off; e.g. 0.999), got {self.ema:g}")
        if not 0 <= self.mix <= 1:
            raise PcsymError(f"--mix must be in [0, 1] (the probability a training shape is mixed), got {self.mix:g}")
        if not 0 <= self.outlier_exposure <= 100:
            raise PcsymError(f"--outlier-exposure must be in [0, 100] (the weight of the energy terms; 0 = off, "
                             f"e.g. 0.1), got {self.outlier_exposure:g}")
        if self.shards < 0:
            raise PcsymError("--shards must be 0 (one per CPU thread) or more")
        if not (0 <= self.momentum < 1 and 0 <= self.warmup <= 1 and 0 <= self.lr_floor <= 1 and self.step_factor > 0
                and self.step_stages >= 1 and self.jitter_clip >= 0):
            raise PcsymError("momentum must be in [0, 1), warmup and lr_floor in [0, 1], step_factor positive, "
                             "step_stages at least 1 and jitter_clip 0 or more")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise PcsymError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("seed", "max_steps", "bn_batches", "workers", "threads"):
            if getattr(self, name) < 0:
                raise PcsymError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if not self.lr > 0 or not self.weight_decay >= 0 or not self.jitter >= 0:
            raise PcsymError("--lr must be greater than 0, --weight-decay and --jitter at least 0")
        if not 0 <= self.label_smoothing < 1:
            raise PcsymError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing:g}")
        return self


#: model settings that shape the equivariant trunk: a fine-tuned run takes them from its --init model
TRUNK_FIELDS = ("group", "kernel", "widths", "strides", "invariant_dims", "max_freq", "kernel_dims", "kernel_layers",
                "lmax", "n_radial", "radial_max", "basis_radius", "basis_rings", "basis_cutoff", "use_normals",
                "use_positions", "edge_features", "depth", "frames")

#: model settings a fine-tuned run takes from its --init model unless given: the neighbourhood and downsampling
#: its trunk was trained with (the shipped so3: k = 16, random-fps), which a fine-tune may change
INIT_DEFAULTS = ("k", "sampling")

#: settings a resumed run does not take from its saved config: where to write, the machine (``data``: the
#: run's own unless given)
MACHINE_SETTINGS = ("out", "device", "threads", "shards", "workers")

#: model settings a resumed run may change: the rest shape the trained weights (or what they compute), so a
#: different value is refused; ``points`` only changes the clouds fed to the same weights (a note, recorded)
RESUME_MODEL_CHANGES = ("points",)

#: train settings a resumed run changes without a note: raising the epoch count is how a run is continued
RESUME_SILENT = ("epochs",)


def show_value(value) -> str:
    """A setting's value as its flag spells it: ``16,32`` for a tuple, ``default`` for None, on/off."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def complete_message(done: int, epochs: int) -> str:
    """What resuming a finished run says (it exits 0: nothing failed, nothing was left to do)."""
    return f"run already complete ({done}/{epochs} epochs); raise --epochs to continue"


def flag_name(key: str) -> str:
    return {"use_positions": "--positions", "data_format": "--format"}.get(
        key, "--" + key.replace("_", "-"))


def read_config_file(path: Path) -> dict:
    """A YAML or TOML file of ``setting: value`` (setting names as field names or flag names)."""
    if not path.exists():
        raise PcsymError("config file not found", path=path)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text) or {}
    except Exception as exc:
        raise PcsymError(f"could not parse config file ({str(exc).splitlines()[0]})", path=path) from None
    if not isinstance(d, dict):
        raise PcsymError("config file must be a mapping of setting: value", path=path)
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def read_run_config(out: Path) -> dict:
    """The flat settings saved in a run folder's ``config.json`` ({} when there is none)."""
    path = Path(out) / "config.json"
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        m = ModelConfig.from_dict(saved["model"]).to_dict()
        t = TrainConfig.from_dict(saved["train"]).to_dict()
    except (ValueError, KeyError, TypeError, PcsymError):
        raise PcsymError("unreadable run config; resume with explicit flags or start anew with --force",
                         path=path) from None
    return {**m, **t}  # the two configs share no field names


def merge_settings(flags: dict, explicit: set[str], config_file: Path | None = None, resume: bool = False,
                   aliases: dict[str, str] | None = None,
                   init_model: Callable[[str], dict] | None = None,
                   changes: list | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The model and train configs of a ``train`` command, validated.

    ``flags`` maps setting names to values (every flag, defaults included); ``explicit`` names
    those the user gave. Precedence, lowest first: defaults, the resumed run's saved settings
    (``resume``: from ``flags["out"]``/config.json, except :data:`MACHINE_SETTINGS`), the config
    file, explicit flags. ``aliases`` lets a config file use a flag's spelling for a setting
    (``positions`` for ``use_positions``). Keys that are not settings (``resume``, ...) are ignored.

    Resuming, a model setting (flag or config file) that differs from the run's is an error naming the
    flag and the run's value, except :data:`RESUME_MODEL_CHANGES`; every other setting that differs
    (but :data:`RESUME_SILENT`) is appended to ``changes`` as ``{"setting", "from", "to"}``, for the
    caller to report and record.
    When the merged settings name an ``init`` model, ``init_model(init)`` (its model config, read from
    the checkpoint) fixes the :data:`TRUNK_FIELDS`; a flag or config-file value that contradicts it is an
    error. The :data:`INIT_DEFAULTS` come from the model too unless given (or resumed).
    """
    names = ModelConfig.field_names() | TrainConfig.field_names()
    merged = {k: v for k, v in flags.items() if k in names}
    saved: dict = {}
    if resume:
        saved = {k: v for k, v in read_run_config(Path(str(flags["out"]))).items()
                 if k not in MACHINE_SETTINGS and k != "class_names"}
        if "data" in saved and not saved["data"]:
            del saved["data"]
        merged.update(saved)
    file_keys = set()
    if config_file is not None:
        for key, value in read_config_file(config_file).items():
            key = (aliases or {}).get(key, key)
            if key not in names:
                raise PcsymError(f"unknown setting '{key}' in config file", path=config_file)
            merged[key] = value
            file_keys.add(key)
    merged.update({k: v for k, v in flags.items() if k in explicit and k in names})
    if saved:
        _check_resume(merged, saved, explicit | file_keys, str(flags["out"]), changes)
    if merged.get("init") and init_model is not None:
        trunk = ModelConfig.from_dict(init_model(str(merged["init"]))).to_dict()  # older checkpoints: defaults
        for key in TRUNK_FIELDS:
            theirs = ModelConfig.parse(key, trunk[key])
            mine = ModelConfig.parse(key, merged[key]) if key in merged else theirs
            if mine != theirs and (key in explicit or key in file_keys):
                raise PcsymError(f"--{key.replace('_', '-')} {merged[key]} conflicts with --init {merged['init']}, "
                                 f"whose model has {key}={trunk[key]}; drop it (the trunk comes from the model)")
            merged[key] = theirs
        for key in INIT_DEFAULTS:
            if key not in explicit and key not in file_keys and not resume:
                merged[key] = trunk[key]
    if not merged.get("data"):
        raise PcsymError("missing --data: the dataset to train on (a folder or a cache .npz)" if not resume else
                         "missing --data: the run records no dataset; give it with --data")
    n_layers = len(ModelConfig.parse("widths", merged["widths"]))
    if "strides" not in merged or len(ModelConfig.parse("strides", merged["strides"])) != n_layers:
        merged["strides"] = default_strides(n_layers)  # strides follow the widths unless a run saved its own
    split = {"model": ModelConfig.field_names(), "train": TrainConfig.field_names()}
    model = ModelConfig.from_dict({k: v for k, v in merged.items() if k in split["model"]})
    train = TrainConfig.from_dict({k: v for k, v in merged.items() if k in split["train"]})
    model.class_names = model.class_names or ["?"]
    return model.validate(), train.validate()


def _check_resume(merged: dict, saved: dict, given: set[str], out: str, changes: list | None) -> None:
    """A resumed run keeps its model: a given model setting that differs from the run's is refused; other
    settings that differ are listed in ``changes``."""
    model_keys = ModelConfig.field_names()
    for key in sorted(given & set(saved), key=lambda k: (k not in model_keys, k)):
        cls = ModelConfig if key in model_keys else TrainConfig
        mine, theirs = cls.parse(key, merged[key]), cls.parse(key, saved[key])
        if mine == theirs or (key == "data" and Path(mine).resolve() == Path(theirs).resolve()):
            continue
        if key in model_keys and key not in RESUME_MODEL_CHANGES:
            raise PcsymError(f"{flag_name(key)} {show_value(mine)} differs from the run in {out.rstrip('/')}/, whose "
                             f"model has {key}={show_value(theirs)}; drop it to resume the run (or start a new run "
                             "with --force)")
        if key not in RESUME_SILENT and changes is not None:
            changes.append({"setting": key, "from": theirs, "to": mine})
def _check_range(name: str, values) -> None:
    """A LOW,HIGH range of positive factors (``--scale``, ``anisotropic_range``)."""
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise PcsymError(f"{name} needs 0 < LOW <= HIGH, got '{','.join(f'{s:g}' for s in values)}'")


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p
