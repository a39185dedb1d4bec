"""Reading user geometry (meshes and point clouds) and turning it into a normalized point cloud.

* :func:`read_geometry` — parse ``.off`` / ``.obj`` / ``.ply`` / ``.stl`` meshes and ``.xyz`` /
  ``.txt`` / ``.pts`` / ``.npy`` point clouds into a validated :class:`Geometry`. Every problem with
  the file raises :class:`~pcsym.errors.PcsymError` with one clear line naming the file.
* :func:`sample_surface` — area-weighted uniform samples on a triangle mesh with outward face normals.
* :func:`normalize` — centre at the centroid and scale into the unit sphere (ModelNet h5 convention).
* :func:`load_cloud` — all of the above: a file in, ``(points, normals)`` of a fixed size out.

OFF (incl. Princeton's ``OFF3514 3546 0`` header bug) and OBJ are parsed here; PLY and STL are read
with open3d (imported lazily) after checking the parts open3d silently gets wrong (binary-STL size,
PLY header). open3d is not used for OBJ because it drops every non-triangle face.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PcsymError

#: Fewest points a point cloud may have (smaller clouds carry too little shape to classify).
MIN_CLOUD_POINTS = 64

MESH_FORMATS = {".off": "OFF", ".obj": "OBJ", ".ply": "PLY", ".stl": "STL"}
CLOUD_FORMATS = {".xyz": "point-cloud text", ".txt": "point-cloud text", ".pts": "point-cloud text", ".npy": "NumPy .npy"}
SUPPORTED_EXTENSIONS = tuple(MESH_FORMATS) + tuple(CLOUD_FORMATS)


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


def read_geometry(path: str | os.PathLike, max_vertices: int = 2_000_000) -> Geometry:
    """Read and validate a mesh or point cloud; raise :class:`PcsymError` on any problem.

    Meshes with polygons are fan-triangulated. A ``.ply`` / ``.obj`` without faces is a point
    cloud. Point clouds drop rows with non-finite coordinates (and need at least
    ``MIN_CLOUD_POINTS`` finite ones); meshes with any non-finite vertex are rejected.
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
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PcsymError(f"cannot read file: {exc.strerror or exc}", path=path) from None
    if not data.strip():
        raise PcsymError("file is empty", path=path)
    geom = _READERS[ext](path, data, max_vertices)
    return _validate(geom, path, max_vertices)


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly distributed on the surface of a triangle mesh, with normals.

    Triangles are chosen with probability proportional to their area and points are uniform
    inside each triangle (barycentric coordinates via the square-root trick). The normal of a
    point is the unit normal of its triangle, flipped if needed so that it points away from the
    mesh's (area-weighted) surface centroid, the convention of :func:`pcsym.graph.estimate_normals`.
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
    max_vertices: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a mesh or point cloud and return ``n_points`` normalized points and unit normals.

    Meshes are sampled with :func:`sample_surface`. Point clouds are subsampled (without
    replacement when they have enough points, else with replacement) and keep their own normals
    when the file has valid ones, else get :func:`pcsym.graph.estimate_normals`. ``rng`` defaults
    to a fixed seed so classifying the same file twice gives the same cloud.
    Returns float32 (n_points, 3), (n_points, 3), both finite.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    geom = read_geometry(path, max_vertices=max_vertices)
    if geom.is_mesh:
        points, normals = sample_surface(geom.vertices, geom.faces, n_points, rng)
    else:
        points, normals = subsample_cloud(geom.vertices, geom.normals, n_points, rng)
    points = normalize(points)
    if not (np.isfinite(points).all() and np.isfinite(normals).all()):  # pragma: no cover - guarded above
        raise PcsymError("could not compute a finite point cloud from this geometry", path=path)
    return points, normals


def subsample_cloud(
    points: np.ndarray, normals: np.ndarray | None, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of a cloud (without replacement if it has at least ``n``) and their normals.

    Missing normals are estimated on the chosen points with :func:`pcsym.graph.estimate_normals`.
    Returns float32 (n, 3), (n, 3).
    """
    idx = rng.choice(len(points), n, replace=len(points) < n)
    pts = np.asarray(points, dtype=np.float32)[idx]
    if normals is not None:
        return pts, np.asarray(normals, dtype=np.float32)[idx]
    import torch

    from .graph import estimate_normals

    return pts, estimate_normals(torch.from_numpy(pts)).numpy().astype(np.float32)


def read_point_table(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Parse a text point table: one point per line, whitespace- or comma-separated numbers.

    Blank lines and ``#`` / ``//`` comments are skipped, as is a first line holding only a point
    count (``.pts`` files). Every row must have the same number of columns. Returns float64 (N, C).
    Also used for the ``modelnet40_normal_resampled`` shape files.
    """
    path = Path(path)
    fmt = "point-cloud text"
    text = _decode_text(path, path.read_bytes() if data is None else data, fmt)
    lines = [ln.split("#", 1)[0].replace(",", " ").split() for ln in text.splitlines()]
    rows = [(i + 1, t) for i, t in enumerate(lines) if t and not t[0].startswith("//")]
    if rows and len(rows[0][1]) == 1 and re.fullmatch(r"\d+", rows[0][1][0]):
        rows = rows[1:]  # point-count header
    if not rows:
        raise PcsymError(f"could not parse file as {fmt}: no numeric rows", path=path)
    ncol = len(rows[0][1])
    for lineno, toks in rows:
        if len(toks) != ncol:
            raise PcsymError(
                f"could not parse file as {fmt}: line {lineno} has {len(toks)} columns, line {rows[0][0]} has {ncol}",
                path=path,
            )
    try:
        return np.array([t for _, toks in rows for t in toks], dtype=np.float64).reshape(-1, ncol)
    except ValueError:
        bad = next((ln, toks) for ln, toks in rows if not _all_numbers(toks))
        raise PcsymError(f"could not parse file as {fmt}: line {bad[0]} is not numeric: {' '.join(bad[1])[:60]!r}", path=path) from None


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_vertex_count(n: int, path: Path, max_vertices: int) -> None:
    if n > max_vertices:
        raise PcsymError(f"file has {n} vertices, more than --max-vertices {max_vertices}", path=path)


def _validate(geom: Geometry, path: Path, max_vertices: int) -> Geometry:
    """Common checks after parsing; converts dtypes and drops non-finite cloud points."""
    v = np.asarray(geom.vertices, dtype=np.float64).reshape(-1, 3)
    if len(v) == 0:
        raise PcsymError("file has no vertices", path=path)
    _check_vertex_count(len(v), path, max_vertices)
    bad = ~np.isfinite(v).all(axis=1)
    faces = None if geom.faces is None or len(geom.faces) == 0 else np.asarray(geom.faces, dtype=np.int64).reshape(-1, 3)
    if faces is not None:
        if bad.any():
            raise PcsymError(f"{int(bad.sum())} of {len(v)} vertices have non-finite (NaN/inf) coordinates", path=path)
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= len(v):
            raise PcsymError(f"face index {hi if hi >= len(v) else lo} out of range: the mesh has {len(v)} vertices", path=path)
        tri = v[faces]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
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
        dropped = f" ({int(bad.sum())} rows with NaN/inf dropped)" if bad.any() else ""
        raise PcsymError(
            f"point cloud has only {len(v)} finite points{dropped}; at least {MIN_CLOUD_POINTS} are needed", path=path
        )
    if normals is not None:
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        # unusable given normals (NaN, zero length) -> estimate them instead
        normals = normals / length if np.isfinite(length).all() and (length > 1e-8).all() else None
    return Geometry(v, None, normals)


# --------------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------------


def _decode_text(path: Path, data: bytes, fmt: str) -> str:
    """Decode a text format, rejecting UTF-16/32 and binary data with a clear message."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (b"\x00" in data[:4096] and _looks_utf16(data[:4096])):
        raise PcsymError(f"file is UTF-16 encoded text; save it as UTF-8 or ASCII to read it as {fmt}", path=path)
    if b"\x00" in data[:4096]:
        raise PcsymError(f"could not parse file as {fmt}: it contains binary data", path=path)
    return data.decode("utf-8-sig", errors="replace")


def _looks_utf16(head: bytes) -> bool:
    """ASCII text in UTF-16 without a BOM: NULs in every other byte, and only there."""
    n = max(len(head) // 2, 1)
    zeros = sorted((head[0::2].count(0), head[1::2].count(0)))
    return zeros[1] > 0.4 * n and zeros[0] < 0.05 * n


def _all_numbers(tokens: list[str]) -> bool:
    try:
        [float(t) for t in tokens]
        return True
    except ValueError:
        return False


def _fan(polygons: list[list[int]]) -> np.ndarray:
    """Fan-triangulate polygons given as vertex-index lists; returns int64 (F, 3)."""
    tris = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


# --------------------------------------------------------------------------------------------
# readers: (path, bytes, max_vertices) -> Geometry (unvalidated)
# --------------------------------------------------------------------------------------------

_OFF_HEADER = re.compile(r"^(?:ST)?C?N?4?n?OFF(.*)$")


def _read_off(path: Path, data: bytes, max_vertices: int) -> Geometry:
    """OFF: ``OFF`` line, ``nv nf ne``, nv vertex lines, nf ``k i1 .. ik [color]`` lines.

    Princeton ModelNet's header bug (``OFF3514 3546 0`` on one line) is accepted, as are CRLF
    line endings, trailing spaces, comments and COFF/NOFF variants (extra columns ignored).
    """
    fmt = "OFF"
    text = _decode_text(path, data, fmt)
    lines = [t for t in (ln.split("#", 1)[0].split() for ln in text.splitlines()) if t]
    if not lines:
        raise PcsymError(f"could not parse file as {fmt}: no content", path=path)
    header = _OFF_HEADER.match(" ".join(lines[0]))
    if not header:
        raise PcsymError(f"could not parse file as {fmt}: first line must start with 'OFF'", path=path)
    rest = header.group(1).split()
    body = lines[1:]
    if not rest:  # proper layout: counts on the next line
        if not body:
            raise PcsymError(f"could not parse file as {fmt}: missing vertex/face counts", path=path)
        rest, body = body[0], body[1:]
    try:
        nv, nf = int(rest[0]), int(rest[1])
    except (ValueError, IndexError):
        raise PcsymError(f"could not parse file as {fmt}: bad counts line {' '.join(rest)[:60]!r}", path=path) from None
    if nv < 0 or nf < 0:
        raise PcsymError(f"could not parse file as {fmt}: negative counts {nv} {nf}", path=path)
    _check_vertex_count(nv, path, max_vertices)
    if len(body) < nv + nf:
        raise PcsymError(
            f"truncated OFF: header says {nv} vertices and {nf} faces, but only {len(body)} data lines follow", path=path
        )
    rows = body[nv : nv + nf]
    try:
        vertices = np.array([row[:3] for row in body[:nv]], dtype=np.float64).reshape(nv, 3)
        if rows and all(len(r) == 4 and r[0] == "3" for r in rows):  # fast path: plain triangles
            return Geometry(vertices, np.array(rows, dtype=np.int64)[:, 1:])
        polys = []
        for row in rows:
            k = int(row[0])
            if k < 3 or len(row) < k + 1:
                raise ValueError
            polys.append([int(x) for x in row[1 : k + 1]])
    except ValueError:
        raise PcsymError(f"could not parse file as {fmt}: malformed vertex or face line", path=path) from None
    return Geometry(vertices, _fan(polys) if nf else None)


_OBJ_KEYWORDS = {"#", "v", "vt", "vn", "vp", "f", "l", "p", "o", "g", "s", "mtllib", "usemtl"}


def _read_obj(path: Path, data: bytes, max_vertices: int) -> Geometry:
    """Wavefront OBJ: ``v`` and ``f`` records (``i``, ``i/t``, ``i//n``, ``i/t/n``, negative
    indices); polygons fan-triangulated; everything else (normals, textures, groups) ignored."""
    fmt = "OBJ"
    text = _decode_text(path, data, fmt)
    verts: list[list[str]] = []
    polys: list[list[int]] = []
    try:
        for line in text.splitlines():
            toks = line.split()
            if not toks:
                continue
            if toks[0] == "v":
                verts.append(toks[1:4])
                if len(toks) < 4:
                    raise ValueError
            elif toks[0] == "f":
                idx = [int(t.split("/", 1)[0]) for t in toks[1:]]
                if len(idx) < 3:
                    raise ValueError
                n = len(verts)  # negative indices are relative to the vertices read so far
                polys.append([i - 1 if i > 0 else n + i for i in idx])
        vertices = np.array(verts, dtype=np.float64).reshape(-1, 3)
    except ValueError:
        raise PcsymError(f"could not parse file as {fmt}: malformed 'v' or 'f' record", path=path) from None
    if not verts and not any(line.split()[:1] and line.split()[0] in _OBJ_KEYWORDS for line in text.splitlines()):
        raise PcsymError(f"could not parse file as {fmt}: no OBJ records found", path=path)
    return Geometry(vertices, _fan(polys) if polys else None)


def _read_ply(path: Path, data: bytes, max_vertices: int) -> Geometry:
    """PLY (ascii / binary) via open3d, after checking the header ourselves."""
    fmt = "PLY"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or data[:2] == b"p\x00":
        _decode_text(path, data, fmt)  # raises the UTF-16 error
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PcsymError(f"could not parse file as {fmt}: missing 'ply' magic or 'end_header'", path=path)
    header = data[:end].decode("ascii", errors="replace")
    counts = dict(re.findall(r"^element\s+(\w+)\s+(\d+)", header, flags=re.M))
    nv, nf = int(counts.get("vertex", 0)), int(counts.get("face", 0))
    if nv == 0:
        raise PcsymError("file has no vertices", path=path)
    _check_vertex_count(nv, path, max_vertices)
    body = data[data.find(b"\n", end) + 1 :]
    need, have = _ply_min_body(header, body)
    if have < need:  # open3d pads truncated files with zeros instead of failing
        unit = "bytes" if "binary" in header else "data lines"
        raise PcsymError(f"could not parse file as {fmt}: truncated (header needs at least {need} {unit}, found {have})", path=path)
    o3d = _open3d()
    with _capture_native_output() as native:
        if nf:
            mesh = o3d.io.read_triangle_mesh(str(path))
            geom = Geometry(np.asarray(mesh.vertices), np.asarray(mesh.triangles))
        else:
            cloud = o3d.io.read_point_cloud(str(path), format="ply")
            geom = Geometry(np.asarray(cloud.points), None, np.asarray(cloud.normals) if cloud.has_normals() else None)
    problem = _native_error(native.text)
    if problem:
        raise PcsymError(f"could not parse file as {fmt}: {problem}", path=path)
    if len(geom.vertices) != nv or (nf and len(geom.faces) == 0):
        raise PcsymError(
            f"could not parse file as {fmt}: header declares {nv} vertices/{nf} faces, read {len(geom.vertices)}/"
            f"{0 if geom.faces is None else len(geom.faces)} (truncated or corrupt file?)",
            path=path,
        )
    return geom


_PLY_SIZES = {
    **dict.fromkeys(("char", "uchar", "int8", "uint8"), 1),
    **dict.fromkeys(("short", "ushort", "int16", "uint16"), 2),
    **dict.fromkeys(("int", "uint", "int32", "uint32", "float", "float32"), 4),
    **dict.fromkeys(("double", "float64"), 8),
}


def _ply_min_body(header: str, body: bytes) -> tuple[int, int]:
    """(least body size the header implies, actual size): bytes for binary PLY, lines for ascii.

    List properties (face indices) count as their smallest valid length, 3 entries.
    """
    if "format ascii" in header:
        total = sum(int(n) for n in re.findall(r"^element\s+\w+\s+(\d+)", header, flags=re.M))
        return total, sum(1 for ln in body.splitlines() if ln.strip())
    need, count = 0, 0
    for line in header.splitlines():
        toks = line.split()
        if toks[:1] == ["element"] and len(toks) >= 3:
            count = int(toks[2])
        elif toks[:2] == ["property", "list"] and len(toks) >= 4:
            need += count * (_PLY_SIZES.get(toks[2], 1) + 3 * _PLY_SIZES.get(toks[3], 1))
        elif toks[:1] == ["property"] and len(toks) >= 2:
            need += count * _PLY_SIZES.get(toks[1], 1)
    return need, len(body)


def _read_stl(path: Path, data: bytes, max_vertices: int) -> Geometry:
    """STL (ascii / binary) via open3d; binary size and ascii encoding are checked here first."""
    binary_size = 84 + 50 * struct.unpack("<I", data[80:84])[0] if len(data) >= 84 else None
    ascii_like = data.lstrip()[:5].lower() == b"solid" and b"facet" in data[:2048].lower()
    if binary_size != len(data) and not ascii_like:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(data[:4096]):
            _decode_text(path, data, "ASCII STL")  # raises the UTF-16 error
        if data.lstrip()[:5].lower() == b"solid":
            raise PcsymError("could not parse file as ASCII STL: no 'facet' records", path=path)
        if binary_size is None:
            raise PcsymError(f"truncated binary STL (expected at least 84 bytes, got {len(data)})", path=path)
        word = "truncated" if len(data) < binary_size else "corrupt"
        raise PcsymError(f"{word} binary STL (expected {binary_size} bytes, got {len(data)})", path=path)
    if binary_size == len(data):
        _check_vertex_count(3 * (binary_size - 84) // 50, path, max_vertices)  # upper bound before merging
        if binary_size == 84:
            raise PcsymError("file has no vertices (binary STL with 0 triangles)", path=path)
    o3d = _open3d()
    with _capture_native_output() as native:
        mesh = o3d.io.read_triangle_mesh(str(path))
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    problem = _native_error(native.text)
    if len(vertices) == 0 or len(faces) == 0 or problem:
        kind = "binary" if binary_size == len(data) else "ASCII"
        raise PcsymError(f"could not parse file as {kind} STL" + (f": {problem}" if problem else ""), path=path)
    return Geometry(vertices, faces)


def _read_cloud_text(path: Path, data: bytes, max_vertices: int) -> Geometry:
    table = read_point_table(path, data)
    return _cloud_from_table(table, path, "point-cloud text")


def _read_npy(path: Path, data: bytes, max_vertices: int) -> Geometry:
    import io

    try:
        table = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError / OSError / EOFError / UnpicklingError
        raise PcsymError(f"could not parse file as NumPy .npy: {exc}".splitlines()[0][:200], path=path) from None
    if not np.issubdtype(table.dtype, np.number) or np.iscomplexobj(table):
        raise PcsymError(f"could not parse file as NumPy .npy: dtype {table.dtype} is not real-valued", path=path)
    return _cloud_from_table(table.astype(np.float64), path, "NumPy .npy")


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


# --------------------------------------------------------------------------------------------
# open3d plumbing
# --------------------------------------------------------------------------------------------


def _open3d():
    """Import open3d lazily (it is slow to import) with its logging reduced to errors."""
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise PcsymError(f"reading PLY/STL needs open3d ({exc}); install open3d-cpu") from None
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


class _NativeOutput:
    """What native code printed while :func:`_capture_native_output` was active."""

    text = ""


@contextlib.contextmanager
def _capture_native_output():
    """Capture C-level stdout/stderr (open3d's RPly prints parse errors there regardless of the
    verbosity level, then returns garbage); the text is inspected by the caller, never shown."""
    import ctypes
    import tempfile

    captured = _NativeOutput()
    fds = (1, 2)
    try:
        for fd in fds:
            os.fstat(fd)
    except OSError:  # no standard fds (daemonized): nothing to capture
        yield captured
        return
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            yield captured
        finally:
            libc.fflush(None)
            for fd, keep in zip(fds, saved):
                os.dup2(keep, fd)
                os.close(keep)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")


def _native_error(text: str) -> str | None:
    """The first error line open3d / RPly printed, if any."""
    for line in text.splitlines():
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if "error" in clean.lower() or "failed" in clean.lower():
            return clean[:160]
    return None
