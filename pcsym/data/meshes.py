"""Reading user geometry (meshes and point clouds) and turning it into a normalized point cloud.

* :func:`read_geometry` — parse ``.off`` / ``.obj`` / ``.ply`` / ``.stl`` meshes and ``.xyz`` /
  ``.txt`` / ``.pts`` / ``.npy`` point clouds into a validated :class:`Geometry`. Every problem with
  the file raises :class:`~pcsym.errors.PcsymError` with one clear line naming the file.
* :func:`sample_surface` — area-weighted uniform samples on a triangle mesh with outward face normals.
* :func:`normalize` — centre at the centroid and scale into the unit sphere (ModelNet h5 convention).
* :func:`load_cloud` — all of the above: a file in, ``(points, normals)`` of a fixed size out.

All readers are our own numpy code (PLY in :mod:`pcsym.data.plyfile`, STL in :mod:`pcsym.data.stlfile`, OFF,
OBJ, text and ``.npy`` here, shared tokenizing in :mod:`pcsym.data.parseutil`). We deliberately do not
use open3d or add another parsing dependency: open3d's native reader segfaulted on a corrupt PLY
(issue 13) and silently padded truncated files, and a small audited numpy parser lets us check
every count in a header against the bytes actually present before allocating anything, bound the
work per file, and run no native code but numpy on untrusted bytes. The guarantees: no input file
crashes or hangs pcsym or makes it allocate memory out of proportion to the file; it is either
read or refused with one ``PcsymError`` line. ``max_vertices`` is enforced from header counts (or
record counts) before the body is parsed, and files larger than ``BYTES_PER_VERTEX *
max_vertices`` bytes are refused before they are read.
"""

from __future__ import annotations

import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import seeds
from ..config import MAX_VERTICES
from ..errors import PcsymError
from ..geometry.numpy_graph import estimate_normals
from .parseutil import Lines, NumberError, as_indices, check_text, check_vertex_count, fan, line_number
from .parseutil import looks_utf16, strip_comments
from .plyfile import read_ply
from .stlfile import read_stl

#: Fewest points a point cloud may have (smaller clouds carry too little shape to classify).
MIN_CLOUD_POINTS = 64

MESH_FORMATS = {".off": "OFF", ".obj": "OBJ", ".ply": "PLY", ".stl": "STL"}
CLOUD_FORMATS = {".xyz": "point-cloud text", ".txt": "point-cloud text", ".pts": "point-cloud text", ".npy": "NumPy .npy"}
SUPPORTED_EXTENSIONS = tuple(MESH_FORMATS) + tuple(CLOUD_FORMATS)

#: Files larger than this many bytes per allowed vertex (``max_vertices``) are refused unread
#: (about 1 GB at the default 2,000,000); no real mesh or cloud comes near it.
BYTES_PER_VERTEX = 512
#: ... but files up to this size are always read, whatever ``max_vertices`` says.
MIN_FILE_LIMIT = 64 * 2**20
#: Coordinates beyond this magnitude are treated like NaN/inf: everything downstream is float32,
#: where squared norms of larger values overflow. Real data never comes near; corrupt data does.
MAX_COORDINATE = 1e18


@dataclass
class Geometry:
    """A mesh (``faces`` set) or a point cloud (``faces`` is None).

    ``vertices`` float64 (V, 3); ``faces`` int64 (F, 3) triangles indexing ``vertices``;
    ``normals`` (V, 3) unit per-vertex normals given by a point-cloud file, else None.
    """

    vertices: np.ndarray
    faces: np.ndarray | None = None
    normals: np.ndarray | None = None

    @property
    def is_mesh(self) -> bool:
        return self.faces is not None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def read_geometry(path: str | os.PathLike, max_vertices: int = MAX_VERTICES) -> Geometry:
    """Read and validate a mesh or point cloud; raise :class:`PcsymError` on any problem.

    Meshes with polygons are fan-triangulated. A ``.ply`` / ``.obj`` / ``.off`` without faces is a
    point cloud. Point clouds drop rows with non-finite (or beyond ``MAX_COORDINATE``) coordinates
    (and need at least ``MIN_CLOUD_POINTS`` valid ones); meshes with any such vertex are rejected.
    """
    path = Path(path)
    if not path.exists():
        raise PcsymError("no such file", path=path)
    if path.is_dir():
        raise PcsymError("is a directory, expected a mesh or point-cloud file", path=path)
    ext = path.suffix.lower()
    if ext not in _READERS:
        raise PcsymError(
            f"unsupported file extension {path.suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}",
            path=path,
        )
    data = _read_file(path, max_vertices)
    if not data or data.isspace():
        raise PcsymError("file is empty", path=path)
    try:
        with np.errstate(all="ignore"):
            return _validate(_READERS[ext](path, data, max_vertices), path, max_vertices)
    except PcsymError:
        raise
    except MemoryError:
        raise PcsymError(f"not enough memory to read this file ({len(data)} bytes)", path=path) from None
    except Exception as exc:  # pragma: no cover - a reader bug; the fuzz tests look for this text
        raise PcsymError(f"internal reader error {type(exc).__name__} (please report): "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else ''}", path=path) from None


def _read_file(path: Path, max_vertices: int) -> bytes:
    """The bytes of a regular file no larger than the limit for ``max_vertices`` (FIFOs, devices
    and oversized files are refused before anything is read)."""
    limit = max(MIN_FILE_LIMIT, BYTES_PER_VERTEX * max_vertices)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise PcsymError(f"cannot read file: {exc.strerror or exc}", path=path) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PcsymError("not a regular file", path=path)
        if info.st_size > limit:
            raise PcsymError(
                f"file is {info.st_size} bytes, more than the {limit} allowed with --max-vertices {max_vertices}", path=path
            )
        try:
            data = fh.read(info.st_size + 1)
        except OSError as exc:
            raise PcsymError(f"cannot read file: {exc.strerror or exc}", path=path) from None
    if len(data) > limit:
        raise PcsymError(f"file grew past {limit} bytes while being read", path=path)
    return data


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly distributed on the surface of a triangle mesh, with normals.

    Triangles are chosen with probability proportional to their area and points are uniform
    inside each triangle (barycentric coordinates via the square-root trick). The normal of a
    point is the unit normal of its triangle, flipped if needed so that it points away from the
    mesh's (area-weighted) surface centroid, the convention of :func:`pcsym.geometry.numpy_graph.estimate_normals`.
    Returns float32 arrays (n, 3), (n, 3).
    """
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    dbl_area = np.linalg.norm(cross, axis=1)
    cum = np.cumsum(dbl_area)
    total = cum[-1] if len(cum) else 0.0
    if not np.isfinite(total) or total <= 0:
        raise PcsymError("mesh has zero surface area (all triangles are degenerate)")
    # inverse-CDF choice; side="right" never selects a zero-area triangle
    face = np.minimum(np.searchsorted(cum, rng.random(n) * total, side="right"), len(cum) - 1)
    s = np.sqrt(rng.random((n, 1)))
    r2 = rng.random((n, 1))
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]
    points = (1.0 - s) * a + s * (1.0 - r2) * b + s * r2 * c
    normals = cross[face] / dbl_area[face, None]
    centroid = (tri.mean(axis=1) * dbl_area[:, None]).sum(0) / total
    flip = np.einsum("ij,ij->i", normals, points - centroid) < 0
    normals[flip] *= -1.0
    return points.astype(np.float32), normals.astype(np.float32)


# (x, y, z) -> (x, -z, y): takes +y to +z; rotation by +90 degrees about x (y-up data to z-up).
Y_UP_TO_Z_UP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre ``points`` (..., N, 3) at their centroid and scale so the largest norm is 1.

    Works per cloud for batched input. Normals need no change (translation and isotropic
    scaling leave them invariant). A cloud collapsed to one point is only centred.
    """
    pts = np.asarray(points)
    centred = pts - pts.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(centred, axis=-1).max(axis=-1, keepdims=True)[..., None]
    return (centred / np.where(radius > 0, radius, 1.0)).astype(pts.dtype, copy=False)


def load_cloud(
    path: str | os.PathLike,
    n_points: int = 1024,
    rng: np.random.Generator | None = None,
    max_vertices: int = MAX_VERTICES,
    estimate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a mesh or point cloud and return ``n_points`` normalized points and unit normals.

    Meshes are sampled with :func:`sample_surface`. Point clouds are subsampled (without
    replacement when they have enough points, else with replacement) and keep their own normals
    when the file has valid ones, else get :func:`pcsym.geometry.numpy_graph.estimate_normals`. ``estimate``:
    every cloud gets estimated normals, whatever the file has (for models trained on them).
    ``rng`` defaults to a fixed seed so classifying the same file twice gives the same cloud.
    Returns float32 (n_points, 3), (n_points, 3), both finite.
    """
    rng = seeds.rng(0) if rng is None else rng
    geom = read_geometry(path, max_vertices=max_vertices)
    with np.errstate(all="ignore"):
        try:
            if geom.is_mesh:
                points, normals = sample_surface(geom.vertices, geom.faces, n_points, rng)
            else:  # a cloud without normals (or whose own are not wanted) gets them estimated here
                own = None if estimate else geom.normals
                points, normals = subsample_cloud(geom.vertices, own, n_points, rng)
        except PcsymError as exc:
            if exc.path is None:  # the message must name the file
                raise PcsymError(str(exc), path=path) from None
            raise
        points = normalize(points)
        if estimate and geom.is_mesh:
            normals = estimate_normals(points)
    if not (np.isfinite(points).all() and np.isfinite(normals).all()):  # pragma: no cover - guarded above
        raise PcsymError("could not compute a finite point cloud from this geometry", path=path)
    return points, normals


def subsample_cloud(
    points: np.ndarray, normals: np.ndarray | None, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of a cloud (without replacement if it has at least ``n``) and their normals.

    Missing normals are estimated on the chosen points with :func:`pcsym.geometry.numpy_graph.estimate_normals`.
    Returns float32 (n, 3), (n, 3).
    """
    idx = rng.choice(len(points), n, replace=len(points) < n)
    pts = np.asarray(points, dtype=np.float32)[idx]
    if normals is not None:
        return pts, np.asarray(normals, dtype=np.float32)[idx]
    return pts, estimate_normals(pts)


def read_point_table(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Parse a text point table: one point per line, whitespace- or comma-separated numbers.

    Blank lines and ``#`` / ``//`` comments are skipped, as is a first line holding only a point
    count (``.pts`` files). Every row must have the same number of columns. Returns float64 (N, C).
    Also used for the ``modelnet40_normal_resampled`` shape files.
    """
    path = Path(path)
    return _point_table(path, path.read_bytes() if data is None else data)


def _point_table(path: Path, data: bytes, columns: tuple[int, ...] | None = None, max_rows: int | None = None):
    """:func:`read_point_table`, optionally refusing other column counts or more rows than
    ``max_rows`` before any number is parsed."""
    fmt = "point-cloud text"
    data = strip_comments(check_text(path, data, fmt))
    if b"//" in data:
        data = re.sub(rb"(?m)^[ \t,]*//[^\n]*", b"", data)
    lines = Lines(data.replace(b",", b" "))
    r0 = 1 if len(lines) and lines.count[0] == 1 and re.fullmatch(r"\d+", lines.tokens(0, 1)[0]) else 0
    if len(lines) <= r0:
        raise PcsymError(f"could not parse file as {fmt}: no numeric rows", path=path)
    ncol = int(lines.count[r0])
    ragged = np.flatnonzero(lines.count[r0:] != ncol)
    if len(ragged):
        i = r0 + int(ragged[0])
        raise PcsymError(
            f"could not parse file as {fmt}: line {lines.lineno[i]} has {lines.count[i]} columns, line {lines.lineno[r0]} has {ncol}",
            path=path,
        )
    if columns is not None and ncol not in columns:
        raise PcsymError(f"expected an (N, 3) or (N, 6) table (x y z [nx ny nz]), got {ncol} columns in {fmt}", path=path)
    if max_rows is not None:
        check_vertex_count(len(lines) - r0, path, max_rows)
    try:
        values = lines.numbers(r0)
    except NumberError as exc:
        lineno = line_number(lines.data, exc.offset)
        text = lines.line_text(int(np.searchsorted(lines.lineno, lineno)))
        raise PcsymError(f"could not parse file as {fmt}: line {lineno} is not numeric: {text!r}", path=path) from None
    return values.reshape(-1, ncol)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

_check_vertex_count = check_vertex_count
_looks_utf16 = looks_utf16
_CHUNK = 1 << 16  # faces per step of the area check (bounds its temporaries to ~10 MB)


def _validate(geom: Geometry, path: Path, max_vertices: int) -> Geometry:
    """Common checks after parsing; converts dtypes and drops unusable cloud points."""
    v = np.asarray(geom.vertices, dtype=np.float64).reshape(-1, 3)
    if len(v) == 0:
        raise PcsymError("file has no vertices", path=path)
    check_vertex_count(len(v), path, max_vertices)
    bad = ~(np.abs(v) <= MAX_COORDINATE).all(axis=1)  # NaN compares False
    faces = None if geom.faces is None or len(geom.faces) == 0 else np.asarray(geom.faces, dtype=np.int64).reshape(-1, 3)
    if faces is not None:
        if bad.any():
            huge = " or absurdly large (> 1e18)" if np.isfinite(v[bad]).all(axis=1).any() else ""
            raise PcsymError(f"{int(bad.sum())} of {len(v)} vertices have non-finite (NaN/inf){huge} coordinates", path=path)
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= len(v):
            raise PcsymError(f"face index {hi if hi >= len(v) else lo} out of range: the mesh has {len(v)} vertices", path=path)
        area = 0.0
        for start in range(0, len(faces), _CHUNK):
            tri = v[faces[start : start + _CHUNK]]
            area += 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
        extent = float(np.ptp(v, axis=0).max())
        if not area > 1e-12 * extent**2 or extent == 0:
            raise PcsymError("degenerate mesh: total surface area is zero", path=path)
        return Geometry(v, faces, None)
    normals = geom.normals
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    if bad.any():
        v = v[~bad]
        normals = None if normals is None else normals[~bad]
    if len(v) < MIN_CLOUD_POINTS:
        dropped = f" ({int(bad.sum())} rows with NaN/inf or absurd values dropped)" if bad.any() else ""
        raise PcsymError(
            f"point cloud has only {len(v)} finite points{dropped}; at least {MIN_CLOUD_POINTS} are needed", path=path
        )
    if normals is not None:
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        # unusable given normals (NaN, zero length) -> estimate them instead
        normals = normals / length if np.isfinite(length).all() and (length > 1e-8).all() else None
    return Geometry(v, None, normals)


# --------------------------------------------------------------------------------------------
# readers: (path, bytes, max_vertices) -> Geometry (unvalidated)
# --------------------------------------------------------------------------------------------

_OFF_HEADER = re.compile(r"^(?:ST)?C?N?4?n?OFF(.*)$")


def _read_off(path: Path, data: bytes, max_vertices: int) -> Geometry:
    """OFF: ``OFF`` line, ``nv nf ne``, nv vertex lines, nf ``k i1 .. ik [color]`` lines.

    Princeton ModelNet's header bug (``OFF3514 3546 0`` on one line) is accepted, as are CRLF
    line endings, trailing spaces, comments and COFF/NOFF variants (extra columns ignored).
    Lines after the last face are ignored.
    """
    fmt = "OFF"
    data = strip_comments(check_text(path, data, fmt))
    lines = Lines(data)
    if not len(lines):
        raise PcsymError(f"could not parse file as {fmt}: no content", path=path)
    header = _OFF_HEADER.match(" ".join(lines.tokens(0, 4)))
    if not header:
        raise PcsymError(f"could not parse file as {fmt}: first line must start with 'OFF'", path=path)
    rest, body = header.group(1).split(), 1
    if not rest:  # proper layout: counts on the next line
        if len(lines) < 2:
            raise PcsymError(f"could not parse file as {fmt}: missing vertex/face counts", path=path)
        rest, body = lines.tokens(1, 3), 2
    try:
        nv, nf = int(rest[0]), int(rest[1])
    except (ValueError, IndexError):
        raise PcsymError(f"could not parse file as {fmt}: bad counts line {' '.join(rest)[:60]!r}", path=path) from None
    if nv < 0 or nf < 0:
        raise PcsymError(f"could not parse file as {fmt}: negative counts {nv} {nf}", path=path)
    check_vertex_count(nv, path, max_vertices)
    if len(lines) - body < nv + nf:
        raise PcsymError(
            f"truncated OFF: header says {nv} vertices and {nf} faces, but only {len(lines) - body} data lines follow",
            path=path,
        )

    if nv == 0:
        raise PcsymError("file has no vertices", path=path)

    def malformed(i: int, what: str):
        raise PcsymError(
            f"could not parse file as {fmt}: malformed {what} line {lines.lineno[i]}: {lines.line_text(i)!r}", path=path
        )

    try:
        values = lines.numbers(body, body + nv + nf)
    except NumberError as exc:
        i = int(np.searchsorted(lines.lineno, line_number(data, exc.offset)))
        malformed(i, "vertex" if i < body + nv else "face")
    first = lines.first[body : body + nv + nf] - lines.first[body]
    count = lines.count[body : body + nv + nf]
    short = np.flatnonzero(count[:nv] < 3)
    if len(short):
        malformed(body + int(short[0]), "vertex")
    vertices = values[first[:nv, None] + np.arange(3)]
    if nf == 0:
        return Geometry(vertices)
    ffirst, fcount = first[nv:], count[nv:]
    k = values[ffirst]
    good = (k >= 3) & (k + 1 <= fcount) & (k == np.floor(k))  # NaN compares False
    if not good.all():
        malformed(body + nv + int(good.argmin()), "face")
    k = k.astype(np.int64)
    flat = as_indices(values[np.repeat(ffirst + 1, k) + np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)])
    if flat is None:
        raise PcsymError(f"could not parse file as {fmt}: a face vertex index is not an integer", path=path)
    return Geometry(vertices, fan(flat, k))


_OBJ_V = re.compile(rb"(?m)^[ \t]*v(?:[ \t]+([^\n]*)|[ \t\r]*$)")
_OBJ_F = re.compile(rb"(?m)^[ \t]*f(?:[ \t]+([^\n]*)|[ \t\r]*$)")
_OBJ_ANY = re.compile(rb"(?m)^[ \t]*(?:#|(?:v|vt|vn|vp|f|l|p|o|g|s|mtllib|usemtl)(?:[ \t\r]|$))")


def _read_obj(path: Path, data: bytes, max_vertices: int) -> Geometry:
    """Wavefront OBJ: ``v`` and ``f`` records (``i``, ``i/t``, ``i//n``, ``i/t/n``, negative
    indices); polygons fan-triangulated; everything else (normals, textures, groups) ignored."""
    fmt = "OBJ"
    raw = check_text(path, data, fmt)
    data = strip_comments(raw)
    vrec = _OBJ_V.findall(data)
    check_vertex_count(len(vrec), path, max_vertices)
    frec = _OBJ_F.findall(data)
    if not vrec and not _OBJ_ANY.search(raw):
        raise PcsymError(f"could not parse file as {fmt}: no OBJ records found", path=path)
    vertices = _obj_records(path, data, vrec, _OBJ_V, "v", 3)[0][:, :3] if vrec else np.zeros((0, 3))
    if not frec:
        return Geometry(vertices)
    flat, counts = _obj_records(path, data, frec, _OBJ_F, "f", 3, ragged=True)
    idx = as_indices(flat)
    if idx is None or (idx == 0).any():
        raise PcsymError(f"could not parse file as {fmt}: a face index is 0 or not an integer", path=path)
    if (idx < 0).any():  # relative to the vertices defined before the face's line
        before = np.searchsorted([m.start() for m in _OBJ_V.finditer(data)], [m.start() for m in _OBJ_F.finditer(data)])
        idx = np.where(idx > 0, idx - 1, np.repeat(before, counts) + idx)
    else:
        idx = idx - 1
    return Geometry(vertices, fan(idx, counts))


def _obj_records(path: Path, data: bytes, records: list[bytes], pattern, kind: str, least: int, ragged: bool = False):
    """Numbers of OBJ records: ``(values (R, least), None)``, or ``(flat, counts)`` if ragged
    (face records: ``i/t/n`` keeps ``i``)."""
    n = len(records)
    joined = b"\n".join(records)
    del records
    if ragged and b"/" in joined:
        joined = re.sub(rb"(?<=\S)/\S*", b"", joined)  # a bare "/2" stays, and is refused
    lines = Lines(joined)

    def malformed(k: int):
        where = next((m.start() for i, m in enumerate(pattern.finditer(data)) if i == k), 0)
        raise PcsymError(f"could not parse file as OBJ: malformed '{kind}' record on line {line_number(data, where)}", path=path)

    wrong = (lines.count < least) | (lines.lineno != np.arange(1, len(lines) + 1))  # gaps: empty records
    if len(lines) != n or wrong.any():
        malformed(int(wrong.argmax()) if wrong.any() else len(lines))
    try:
        values = lines.numbers()
    except NumberError as exc:
        malformed(line_number(joined, exc.offset) - 1)
    if ragged:
        return values, lines.count
    return values[lines.first[:, None] + np.arange(least)], None


def _read_ply(path: Path, data: bytes, max_vertices: int) -> Geometry:
    return Geometry(*read_ply(path, data, max_vertices))


def _read_stl(path: Path, data: bytes, max_vertices: int) -> Geometry:
    return Geometry(*read_stl(path, data, max_vertices))


def _read_cloud_text(path: Path, data: bytes, max_vertices: int) -> Geometry:
    table = _point_table(path, data, columns=(3, 6), max_rows=max_vertices)
    return _cloud_from_table(table, path, "point-cloud text")


def _read_npy(path: Path, data: bytes, max_vertices: int) -> Geometry:
    """``.npy`` (never pickles, never ``.npz``): the header's dtype and shape are checked, and
    the shape against the bytes present, before the array is viewed."""
    fmt = "NumPy .npy"
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except Exception as exc:  # numpy raises ValueError / OSError / EOFError / SyntaxError
        raise PcsymError(f"could not parse file as {fmt}: {exc}".splitlines()[0][:200], path=path) from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "iuf":
        raise PcsymError(f"could not parse file as {fmt}: dtype {dtype} is not real-valued", path=path)
    if len(shape) != 2 or shape[1] not in (3, 6) or shape[0] < 0:
        raise PcsymError(f"expected an (N, 3) or (N, 6) table (x y z [nx ny nz]), got shape {tuple(shape)} in {fmt}", path=path)
    check_vertex_count(shape[0], path, max_vertices)
    need, have = shape[0] * shape[1] * dtype.itemsize, len(data) - fh.tell()
    if need > have:
        raise PcsymError(f"truncated {fmt}: shape {tuple(shape)} needs {need} bytes of data, found {have}", path=path)
    table = np.frombuffer(data, dtype=dtype, count=shape[0] * shape[1], offset=fh.tell())
    return _cloud_from_table(table.reshape(shape, order="F" if fortran else "C").astype(np.float64), path, fmt)


def _cloud_from_table(table: np.ndarray, path: Path, fmt: str) -> Geometry:
    if table.ndim != 2 or table.shape[1] not in (3, 6):
        raise PcsymError(f"expected an (N, 3) or (N, 6) table (x y z [nx ny nz]), got shape {tuple(table.shape)} in {fmt}", path=path)
    return Geometry(table[:, :3], None, table[:, 3:6] if table.shape[1] == 6 else None)


_READERS = {
    ".off": _read_off,
    ".obj": _read_obj,
    ".ply": _read_ply,
    ".stl": _read_stl,
    ".xyz": _read_cloud_text,
    ".txt": _read_cloud_text,
    ".pts": _read_cloud_text,
    ".npy": _read_npy,
}
