"""Datasets: the three public ModelNet layouts, a fast ``.npz`` cache, and the train/val/test split.

Layouts (auto-detected by :func:`detect_format`):

``"h5"``
    PointNet's ``modelnet40_ply_hdf5_2048``: ``train_files.txt`` / ``test_files.txt`` list h5 files
    (entries such as ``data/modelnet40_ply_hdf5_2048/ply_data_train0.h5`` are resolved by file name
    inside the dataset folder), ``shape_names.txt``; each h5 has ``data`` (S, P, 3), ``label``
    (S, 1) and optionally ``normal`` (S, P, 3). Missing normals are estimated (PCA, outward).
``"normal_resampled"``
    PointNet++'s ``modelnet40_normal_resampled``: ``<class>/<class>_XXXX.txt`` rows
    ``x,y,z,nx,ny,nz``, ``modelnet40_shape_names.txt`` and ``modelnet40_{train,test}.txt``
    (or the ``modelnet10_*`` files) listing shape ids such as ``airplane_0001``.
``"off"``
    Princeton ``ModelNet40/<class>/{train,test}/*.off`` (or ``ModelNet10``); the root may be the
    folder holding ``ModelNet40`` or that folder itself. Points and normals are sampled on the
    mesh surfaces (seeded).

Up axis: the Princeton OFF meshes are z-up, while the PointNet h5 and PointNet++ normal_resampled
releases are y-up. ``up_axis="y"`` converts y-up data to z-up with the proper rotation
``(x, y, z) -> (x, -z, y)`` (+90 degrees about x, det +1), applied to points and normals, so that
``rotate="z"`` augmentation really rotates about the gravity axis.

:func:`prepare` converts a layout once into a cache ``.npz`` (see its docstring for the format);
:func:`load_dataset` loads a cache or a dataset folder (preparing the cache on first use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import seeds
from ..config import DATA_FORMATS, UP_AXES, check_choice
from ..errors import PcsymError
from ..files import atomic_writer, user_cache_dir
from ..geometry.graph import estimate_normals
from .meshes import SUPPORTED_EXTENSIONS, load_cloud, normalize, read_geometry, read_point_table, sample_surface
from .transforms import to_z_up

FORMATS = DATA_FORMATS
log = logging.getLogger("pcsym")
CACHE_VERSION = 2  # 2: records whether the normals were estimated
#: At least this many points per shape are cached (when available) so training can resample.
MIN_CACHED_POINTS = 2048
_NORMAL_BATCH = 64
_CACHE_KEYS = ("points", "normals", "labels", "class_names", "split", "source_format", "up_axis", "cache_version",
               "normals_estimated")

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stage is ``"read"`` (shapes read) or ``"normals"`` (shapes
whose normals were estimated)."""


@dataclass
class PointCloudData:
    """A whole dataset in memory (numpy arrays, one row per shape).

    ``points`` / ``normals`` float32 (S, P, 3), ``labels`` int64 (S,), ``class_names`` str (C,),
    ``split`` str (S,) with ``"train"`` / ``"test"``.
    """

    points: np.ndarray
    normals: np.ndarray
    labels: np.ndarray
    class_names: np.ndarray
    split: np.ndarray
    source_format: str = ""
    up_axis: str = "z"
    path: Path | None = None
    fingerprint: str = ""  # of the source files (folder layout; "" for the public releases)
    normals_estimated: bool = False  # PCA estimates (for most shapes), not the source's own normals

    @property
    def estimated_normals(self) -> int:
        """What a model trained on this data records (:attr:`pcsym.config.ModelConfig.estimated_normals`):
        the cloud size the normals were estimated in, or 0 for the source's own normals."""
        return int(self.points.shape[1]) if self.normals_estimated else 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, split: str) -> np.ndarray:
        """Indices of the shapes in ``split`` (``"train"`` or ``"test"``)."""
        return np.flatnonzero(self.split == split)


# --------------------------------------------------------------------------------------------
# layout detection and sources
# --------------------------------------------------------------------------------------------


@dataclass
class _Shape:
    points: np.ndarray  # (P, 3)
    normals: np.ndarray | None  # (P, 3) or None -> estimated
    label: int
    split: str


@dataclass
class _Source:
    """A dataset layout: class names, number of shapes and an iterator over them."""

    root: Path
    class_names: list[str]
    total: int
    shapes: Callable[[], Iterator[_Shape]]
    #: most points any shape can provide (None: unlimited, the shapes are sampled on meshes)
    max_points: int | None = None
    #: sample this many points on meshes (set by prepare)
    sample_points: int = MIN_CACHED_POINTS
    seed: int = 0
    #: digest of the source files (folder layout): a cache with another one is rebuilt
    fingerprint: str | None = None
    #: (file, reason) of the files that could not be read and were left out
    skipped: list = field(default_factory=list)


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise PcsymError(f"cannot read list file: {exc}", path=path) from None


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _off_root(root: Path) -> Path | None:
    """The folder whose sub-folders are classes with train/test OFF files, if any."""
    for cand in (root / "ModelNet40", root / "ModelNet10", root):
        if cand.is_dir() and any(
            (d / s).is_dir() and any((d / s).glob("*.off")) for d in cand.iterdir() if d.is_dir() for s in ("train", "test")
        ):
            return cand
    return None


_NR_LISTS = {
    "train": ("modelnet40_train.txt", "modelnet10_train.txt"),
    "test": ("modelnet40_test.txt", "modelnet10_test.txt"),
}
_NR_NAMES = ("modelnet40_shape_names.txt", "modelnet10_shape_names.txt", "shape_names.txt")


def _detect_release(root: Path) -> str | None:
    """The public ModelNet layout in ``root``, if any."""
    if (root / "train_files.txt").is_file() or (root / "test_files.txt").is_file():
        return "h5"
    if any(_first_existing(root, names) for names in _NR_LISTS.values()):
        return "normal_resampled"
    if _off_root(root) is not None:
        return "off"
    return None


def _detect(root: Path) -> str | None:
    """A public layout, else a folder per class — unless a sub-folder is itself a public release
    (then ``root`` is its parent, and the error suggests the sub-folder)."""
    fmt = _detect_release(root)
    if fmt == "off" and any(f.suffix.lower() != ".off" for f, _, _ in _folder_entries(root)):
        return "folder"  # class/{train,test}/ folders holding other formats too: the OFF reader would drop them
    if fmt is None and not any(_detect_release(d) for d in root.iterdir() if d.is_dir()) and _folder_entries(root):
        fmt = "folder"
    return fmt


def detect_format(root: str | os.PathLike) -> str:
    """Which layout ``root`` holds: ``"h5"``, ``"normal_resampled"`` or ``"off"``."""
    root = Path(root)
    if not root.exists():
        raise PcsymError("no such dataset directory", path=root)
    if not root.is_dir():
        raise PcsymError("not a directory (expected a dataset folder or a .npz cache)", path=root)
    fmt = _detect(root)
    if fmt is None:
        hint = sorted(d.name for d in root.iterdir() if d.is_dir() and _detect_release(d))
        raise PcsymError(
            f"no known dataset layout in {root}: expected one of h5 (train_files.txt/test_files.txt + *.h5), "
            "normal_resampled (modelnet40_train.txt/modelnet40_test.txt + <class>/*.txt), "
            "off (ModelNet40/<class>/{train,test}/*.off), folder (<class>/*.obj|off|ply|stl|xyz|txt|npy)"
            + (f"; did you mean {', '.join(hint)}?" if hint else "")
        )
    return fmt


def _h5_source(root: Path) -> _Source:
    import h5py

    names_file = root / "shape_names.txt"
    if not names_file.is_file():
        raise PcsymError("h5 dataset without shape_names.txt", path=root)
    class_names = _read_lines(names_file)
    files: list[tuple[Path, str]] = []
    for split in ("train", "test"):
        listing = root / f"{split}_files.txt"
        if listing.is_file():
            for entry in _read_lines(listing):
                h5 = root / Path(entry.replace("\\", "/")).name
                if not h5.is_file():
                    raise PcsymError(f"{listing.name} lists {entry!r}, but {h5.name} is not in the dataset folder", path=root)
                files.append((h5, split))
    counts, max_points = [], None
    for h5, _ in files:
        try:
            with h5py.File(h5, "r") as f:
                s, p, c = f["data"].shape
                if c != 3 or f["label"].shape[0] != s:
                    raise ValueError(f"data {f['data'].shape} / label {f['label'].shape} shapes do not match")
                counts.append(s)
                max_points = p if max_points is None else min(max_points, p)
        except (OSError, KeyError, ValueError) as exc:
            raise PcsymError(f"not a ModelNet h5 file: {exc}", path=h5) from None

    def shapes() -> Iterator[_Shape]:
        for h5, split in files:
            with h5py.File(h5, "r") as f:
                data = f["data"][:]
                labels = f["label"][:].reshape(-1).astype(np.int64)
                normals = f["normal"][:] if "normal" in f else None
            for i in range(len(data)):
                yield _Shape(data[i], None if normals is None else normals[i], int(labels[i]), split)

    return _Source(root, class_names, sum(counts), shapes, max_points=max_points)


def _normal_resampled_source(root: Path) -> _Source:
    names_file = _first_existing(root, _NR_NAMES)
    if names_file is None:
        raise PcsymError(f"normal_resampled dataset without {' or '.join(_NR_NAMES)}", path=root)
    class_names = _read_lines(names_file)
    index = {c: i for i, c in enumerate(class_names)}
    entries: list[tuple[Path, int, str]] = []
    for split, candidates in _NR_LISTS.items():
        listing = _first_existing(root, candidates)
        for shape_id in _read_lines(listing) if listing else []:
            cls = shape_id.rsplit("_", 1)[0]
            if cls not in index:
                raise PcsymError(f"{listing.name} lists {shape_id!r} of unknown class {cls!r} (not in {names_file.name})", path=root)
            txt = root / cls / f"{shape_id}.txt"
            if not txt.is_file():
                raise PcsymError(f"{listing.name} lists {shape_id!r}, but {cls}/{shape_id}.txt is missing", path=root)
            entries.append((txt, index[cls], split))

    def shapes() -> Iterator[_Shape]:
        for txt, label, split in entries:
            table = read_point_table(txt)
            if table.shape[1] < 3 or not np.isfinite(table).all():
                raise PcsymError(f"expected finite rows x,y,z[,nx,ny,nz], got {table.shape[1]} columns or NaN/inf", path=txt)
            yield _Shape(table[:, :3], table[:, 3:6] if table.shape[1] >= 6 else None, label, split)

    # every file of the release has the same number of rows; take the first file's as the limit
    max_points = len(read_point_table(entries[0][0])) if entries else None
    return _Source(root, class_names, len(entries), shapes, max_points=max_points)


def _off_source(root: Path) -> _Source:
    base = _off_root(root)
    class_names = sorted(d.name for d in base.iterdir() if d.is_dir() and any((d / s).is_dir() for s in ("train", "test")))
    entries = [
        (off, label, split)
        for label, cls in enumerate(class_names)
        for split in ("train", "test")
        for off in sorted((base / cls / split).glob("*.off"))
    ]

    def shapes() -> Iterator[_Shape]:
        for i, (off, label, split) in enumerate(entries):
            geom = read_geometry(off)
            if not geom.is_mesh:
                raise PcsymError("OFF file without faces; cannot sample a surface", path=off)
            rng = seeds.rng(source.seed, i)
            pts, nrm = sample_surface(geom.vertices, geom.faces, source.sample_points, rng)
            yield _Shape(pts, nrm, label, split)

    source = _Source(root, class_names, len(entries), shapes)
    return source


def _folder_entries(root: Path) -> list[tuple[Path, str, str]]:
    """(file, class, split) of a folder-per-class dataset: ``root/<class>/*.<ext>`` (split "train"),
    or ``root/<class>/{train,test}/*.<ext>``; hidden files and folders are ignored."""
    def files(d: Path) -> list[Path]:
        return sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith(".")
                      and f.suffix.lower() in SUPPORTED_EXTENSIONS)

    entries = []
    for cls in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        entries += [(f, cls.name, "train") for f in files(cls)]
        entries += [(f, cls.name, s) for s in ("train", "test") if (cls / s).is_dir() for f in files(cls / s)]
    return entries


def _fingerprint(paths) -> str:
    """A digest of the files' paths, sizes and modification times: a cache built from other
    versions of the files does not match."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _folder_source(root: Path) -> _Source:
    """Any meshes or clouds sorted into one folder per class. A file that cannot be read is
    skipped with a warning naming it and the reason (``source.skipped``); it never stops a run."""
    entries = _folder_entries(root)
    class_names = sorted({cls for _, cls, _ in entries})

    def shapes() -> Iterator[_Shape]:
        for i, (path, cls, split) in enumerate(entries):
            try:
                pts, nrm = load_cloud(path, n_points=source.sample_points, rng=seeds.rng(source.seed, i))
            except PcsymError as exc:
                source.skipped.append((path, str(exc)))
                log.warning("warning: skipped %s", exc)
                continue
            yield _Shape(pts, nrm, class_names.index(cls), split)

    source = _Source(root, class_names, len(entries), shapes, fingerprint=_fingerprint(p for p, _, _ in entries))
    return source


_SOURCES = {"h5": _h5_source, "normal_resampled": _normal_resampled_source, "off": _off_source,
            "folder": _folder_source}


# --------------------------------------------------------------------------------------------
# prepare / cache
# --------------------------------------------------------------------------------------------


def _user_cache_dir() -> Path:
    """The user cache (:func:`pcsym.files.user_cache_dir`); with ``PCSYM_CACHE_DIR=off`` a dataset cache
    still has to be written somewhere: the system's temporary folder."""
    return user_cache_dir() or Path(tempfile.gettempdir()) / "pcsym-cache"


def cache_paths(src: str | os.PathLike, fmt: str, points: int, up_axis: str) -> list[Path]:
    """Candidate cache files for a dataset folder, preferred first: inside ``src`` (when it is
    writable), then the user cache (``$PCSYM_CACHE_DIR``, else ``$XDG_CACHE_HOME/pcsym``, else
    ``~/.cache/pcsym``) keyed by a hash of the absolute path."""
    src = Path(src).resolve()
    key = f"{fmt}_{points}_{up_axis}.npz"
    digest = hashlib.sha256(str(src).encode()).hexdigest()[:16]
    user = _user_cache_dir() / f"{digest}_{key}"
    return [src / f".pcsym_cache_{key}", user] if _writable_dir(src) else [user]


def _writable_dir(path: Path) -> bool:
    """Writable by us *and* not marked read-only (root passes os.access on read-only folders)."""
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def prepare(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    points: int = 1024,
    up_axis: str = "z",
    fmt: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Convert a dataset folder into a cache ``.npz`` and return its path.

    Cache format (``np.savez``, no pickles; load with ``allow_pickle=False``):

    ==================  ==========================================================================
    ``points``          float32 (S, P, 3), each cloud centred at its centroid, max norm 1, z-up
    ``normals``         float32 (S, P, 3), unit; given by the source or estimated (PCA, outward)
    ``normals_estimated`` bool scalar, whether (most of) the normals were estimated
    ``labels``          int64 (S,), index into ``class_names``
    ``class_names``     str (C,), the dataset's class list (line index = label)
    ``split``           str (S,), ``"train"`` / ``"test"`` (the official split)
    ``source_format``   str scalar, ``"h5"`` / ``"normal_resampled"`` / ``"off"``
    ``up_axis``         str scalar, the source up axis that was rotated to z (``"y"``) or ``"z"``
    ``points_per_shape`` int scalar, P
    ``cache_version``   int scalar
    ==================  ==========================================================================

    P = min(available, max(points, 2048)) so training can draw a fresh subset each epoch. When a
    shape has more points than P a seeded random subset (in random order) is kept; when every point
    is kept the source order is preserved (the h5 release is already in random order). A shape with
    fewer points than P (rare) is padded by resampling its points with replacement.
    """
    src = Path(src)
    if not src.is_dir():
        raise PcsymError("no such dataset directory" if not src.exists() else "not a dataset directory", path=src)
    fmt = detect_format(src) if fmt is None else check_choice(fmt, FORMATS, "dataset format")
    check_choice(up_axis, UP_AXES, "up axis")
    if points < 1:
        raise PcsymError(f"--points must be positive, got {points}")
    source = _SOURCES[fmt](src)
    if source.total == 0:
        raise PcsymError(f"the {fmt} dataset lists no shapes", path=src)
    keep = max(points, MIN_CACHED_POINTS)
    if source.max_points is not None:
        keep = min(keep, source.max_points)
    source.sample_points, source.seed = keep, seed
    arrays = _build_arrays(source, keep, up_axis, seed, progress)
    arrays.update(source_format=np.array(fmt), up_axis=np.array(up_axis))
    targets = [Path(out)] if out is not None else cache_paths(src, fmt, points, up_axis)
    for i, target in enumerate(targets):
        try:
            _write_npz(target, arrays)
            return target
        except OSError as exc:
            if i == len(targets) - 1:
                raise PcsymError(f"cannot write dataset cache: {exc.strerror or exc}", path=target) from None
    raise AssertionError("unreachable")


def _build_arrays(source: _Source, keep: int, up_axis: str, seed: int, progress: Progress | None) -> dict:
    total = source.total
    points = np.empty((total, keep, 3), np.float32)
    normals = np.empty((total, keep, 3), np.float32)
    labels = np.empty(total, np.int64)
    split = np.empty(total, dtype="<U5")
    missing = np.zeros(total, bool)
    n = 0
    for i, shape in enumerate(source.shapes()):
        if i >= total:
            raise PcsymError("dataset changed while reading", path=source.root)
        rng = seeds.rng(seed, i)
        i = n  # the row: skipped files leave no gap
        m = len(shape.points)
        if m == keep:
            idx = slice(None)
        else:
            idx = rng.choice(m, keep, replace=m < keep)
        points[i] = shape.points[idx]
        if shape.normals is None:
            missing[i] = True
        else:
            normals[i] = shape.normals[idx]
        labels[i], split[i] = shape.label, shape.split
        n = i + 1
        if progress:
            progress("read", n, total)
    if n != total - len(source.skipped):
        raise PcsymError(f"expected {total} shapes, read {n}", path=source.root)
    if n == 0:
        raise PcsymError(f"none of the {total} files could be read", path=source.root)
    if source.skipped:
        log.warning("warning: prepared %s shapes in %d classes; skipped %d file(s): %s", f"{n:,}",
                    len(set(labels[:n])), len(source.skipped), ", ".join(str(p) for p, _ in source.skipped[:5])
                    + (", ..." if len(source.skipped) > 5 else ""))
        points, normals, labels, split, missing = points[:n], normals[:n], labels[:n], split[:n], missing[:n]
    if labels.min() < 0 or labels.max() >= len(source.class_names):
        raise PcsymError(
            f"labels range {labels.min()}..{labels.max()} but there are {len(source.class_names)} class names", path=source.root
        )
    _estimate_missing_normals(points, normals, missing, progress)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals /= np.where(length > 0, length, 1.0)
    points[:], normals[:] = to_z_up(normalize(points), normals, up_axis)
    return {
        "points": points,
        "normals": normals,
        "labels": labels,
        "class_names": np.array(source.class_names, dtype=str),
        "split": split,
        "points_per_shape": np.array(keep),
        "cache_version": np.array(CACHE_VERSION),
        "fingerprint": np.array(source.fingerprint or ""),
        "normals_estimated": np.array(bool(missing.mean() > 0.5)),
    }


def with_estimated_normals(data: PointCloudData, points: int, seed: int = 0, rows: np.ndarray | None = None,
                           progress: Progress | None = None) -> PointCloudData:
    """``data`` (its shapes ``rows``, default all) as a model trained on estimated normals saw its
    clouds: a seeded random subset of ``points`` points per shape (all of them when there are fewer),
    with PCA normals estimated in it. A copy; the cache is untouched."""
    rows = np.arange(len(data.labels)) if rows is None else np.asarray(rows)
    pts = data.points[rows]
    if 0 < points < pts.shape[1]:
        keep = seeds.rng(seed).random((len(pts), pts.shape[1])).argsort(1)[:, :points]
        pts = np.take_along_axis(pts, keep[..., None], axis=1)
    normals = np.empty_like(pts)
    _estimate_missing_normals(pts, normals, np.ones(len(pts), bool), progress)
    return dataclasses.replace(data, points=pts, normals=normals, labels=data.labels[rows], split=data.split[rows],
                               normals_estimated=True)


def _estimate_missing_normals(points: np.ndarray, normals: np.ndarray, missing: np.ndarray, progress: Progress | None) -> None:
    """Fill ``normals[missing]`` with PCA normals, in batches (in place)."""
    todo = np.flatnonzero(missing)
    for s in range(0, len(todo), _NORMAL_BATCH):
        batch = todo[s : s + _NORMAL_BATCH]
        normals[batch] = estimate_normals(torch.from_numpy(points[batch])).numpy()
        if progress:
            progress("normals", min(s + _NORMAL_BATCH, len(todo)), len(todo))


def _write_npz(target: Path, arrays: dict) -> None:
    with atomic_writer(target) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _read_cache(path: Path) -> PointCloudData:
    """Load and validate a cache ``.npz``; raise PcsymError if it is not a valid one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _CACHE_KEYS if k not in z.files]
            if missing:
                raise PcsymError(f"not a pcsym dataset cache (missing {', '.join(missing)})", path=path)
            if int(z["cache_version"]) != CACHE_VERSION:
                raise PcsymError(f"dataset cache version {int(z['cache_version'])} is not {CACHE_VERSION}; prepare it again", path=path)
            data = PointCloudData(
                points=z["points"],
                normals=z["normals"],
                labels=z["labels"].astype(np.int64, copy=False),
                class_names=z["class_names"],
                split=z["split"],
                source_format=str(z["source_format"]),
                up_axis=str(z["up_axis"]),
                path=path,
                fingerprint=str(z["fingerprint"]) if "fingerprint" in z.files else "",
                normals_estimated=bool(z["normals_estimated"]),
            )
    except PcsymError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError ...
        raise PcsymError(f"corrupt dataset cache: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", path=path) from None
    s = len(data.labels)
    ok = (
        data.points.ndim == 3
        and data.points.shape[0] == s
        and data.points.shape[2] == 3
        and data.normals.shape == data.points.shape
        and data.split.shape == (s,)
        and (s == 0 or (data.labels.min() >= 0 and data.labels.max() < len(data.class_names)))
    )
    if not ok:
        raise PcsymError("corrupt dataset cache: array shapes or labels are inconsistent", path=path)
    return data


def load_dataset(
    path: str | os.PathLike,
    points: int = 1024,
    up_axis: str | None = None,
    fmt: str | None = None,
    progress: Progress | None = None,
) -> PointCloudData:
    """Load a dataset from a cache ``.npz`` or a dataset folder.

    A folder is prepared into a cache on first use (see :func:`prepare`) and the cache is reused
    afterwards without touching the source files. ``up_axis`` defaults to ``"z"`` for folders; for a
    cache it defaults to whatever the cache was prepared with, and a different explicit value is an
    error. A stale or corrupt automatic cache is rebuilt; a corrupt ``.npz`` given directly raises.
    """
    path = Path(path)
    if not path.exists():
        raise PcsymError("no such dataset file or directory", path=path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise PcsymError("not a dataset: expected a dataset folder or a .npz cache made by `pcsym data prepare`", path=path)
        data = _read_cache(path)
        if up_axis is not None and check_choice(up_axis, UP_AXES, "up axis") != data.up_axis:
            raise PcsymError(f"cache was prepared with --up-axis {data.up_axis}, not {up_axis}; prepare it again", path=path)
        return data
    up_axis = check_choice(up_axis or "z", UP_AXES, "up axis")
    fmt = detect_format(path) if fmt is None else check_choice(fmt, FORMATS, "dataset format")
    current = _fingerprint(p for p, _, _ in _folder_entries(path)) if fmt == "folder" else ""
    for cache in cache_paths(path, fmt, points, up_axis):
        if cache.is_file():
            try:
                data = _read_cache(cache)
            except PcsymError:
                continue  # our own automatic cache: rebuild it below
            if data.fingerprint == current:
                return data  # else a file was added, removed or changed: rebuild
    return _read_cache(prepare(path, points=points, up_axis=up_axis, fmt=fmt, progress=progress))
