"""STL reader (binary and ascii) written in numpy; see :mod:`pcsym.data.plyfile` for why we parse
mesh files ourselves instead of going through open3d.

Binary STL: an 80-byte header, a little-endian uint32 triangle count, then 50 bytes per triangle
(normal, three vertices as float32, a uint16 attribute). The count must match the file size
exactly (a file whose header starts with ``solid`` but whose size matches is binary, as
SolidWorks writes them). ASCII STL: ``solid`` then ``facet normal .. / outer loop / vertex x y z
(x3) / endloop / endfacet`` records; only the ``vertex`` lines are read, and there must be three
per ``endloop``.

Vertices are not merged: the mesh has three vertices per triangle, in file order. Merging would
only cost time; :func:`pcsym.data.meshes.sample_surface` needs triangle corners, not shared vertices.
``max_vertices`` therefore applies to three times the triangle count, before any parsing.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from ..errors import PcsymError
from .parseutil import Lines, NumberError, check_text, check_vertex_count, looks_utf16, token_text

_BINARY = np.dtype([("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attr", "<u2")])
_VERTEX = re.compile(rb"(?i)(?<![^\s])vertex[ \t]+([^\r\n]*)")
_LOOP_END = re.compile(rb"(?i)(?<![^\s])endloop(?![^\s])")


def read_stl(path: Path, data: bytes, max_vertices: int):
    """``(vertices float64 (3F, 3), faces int64 (F, 3))``: three corners per triangle."""
    head = data[:4096]
    binary_size = 84 + 50 * struct.unpack("<I", data[80:84])[0] if len(data) >= 84 else None
    solid = head.lstrip()[:5].lower() == b"solid"
    ascii_like = solid and b"facet" in head[:2048].lower()
    if binary_size == len(data):
        n = (len(data) - 84) // 50
        if n == 0:
            raise PcsymError("file has no vertices (binary STL with 0 triangles)", path=path)
        check_vertex_count(3 * n, path, max_vertices)
        corners = np.frombuffer(data, dtype=_BINARY, count=n, offset=84)["corners"]
        return corners.reshape(-1, 3).astype(np.float64), np.arange(3 * n, dtype=np.int64).reshape(n, 3)
    if not ascii_like:
        if head.startswith((b"\xff\xfe", b"\xfe\xff")) or looks_utf16(head):
            check_text(path, data, "ASCII STL")  # raises the UTF-16 error
        if solid:
            raise PcsymError("could not parse file as ASCII STL: no 'facet' records", path=path)
        if binary_size is None:
            raise PcsymError(f"truncated binary STL (expected at least 84 bytes, got {len(data)})", path=path)
        word = "truncated" if len(data) < binary_size else "corrupt"
        raise PcsymError(f"{word} binary STL (expected {binary_size} bytes, got {len(data)})", path=path)
    return _read_ascii(path, check_text(path, data, "ASCII STL"), max_vertices)


def _read_ascii(path: Path, data: bytes, max_vertices: int):
    fmt = "could not parse file as ASCII STL"
    start = data.find(b"\n") + 1  # the 'solid <name>' line may say anything
    if start == 0:
        raise PcsymError(f"{fmt}: no 'vertex' records", path=path)
    n_loops = sum(1 for _ in _LOOP_END.finditer(data, start))
    records = _VERTEX.findall(data, start)
    check_vertex_count(len(records), path, max_vertices)
    if not records:
        raise PcsymError(f"{fmt}: no 'vertex' records", path=path)
    if len(records) != 3 * n_loops:
        raise PcsymError(
            f"{fmt}: {len(records)} 'vertex' lines for {n_loops} facet loops (facets must be triangles)", path=path
        )
    joined, n_records = b"\n".join(records), len(records)
    del records
    lines = Lines(joined)
    try:
        values = lines.numbers()
    except NumberError as exc:
        k = joined.count(b"\n", 0, exc.offset)  # which vertex record
        raise PcsymError(
            f"{fmt}: vertex {k + 1} is not numeric: {token_text(joined, exc.offset)!r} (line {_record_line(data, start, k)})",
            path=path,
        ) from None
    # record k is line k + 1 of `joined`; an empty record leaves a gap in the line numbers
    wrong = (lines.count != 3) | (lines.lineno != np.arange(1, len(lines) + 1))
    if len(lines) != n_records or wrong.any():
        k = int(wrong.argmax()) if wrong.any() else len(lines)  # the first bad or empty record
        raise PcsymError(f"{fmt}: a 'vertex' line needs 3 coordinates (line {_record_line(data, start, k)})", path=path)
    n = len(values) // 9
    return values.reshape(-1, 3), np.arange(3 * n, dtype=np.int64).reshape(n, 3)


def _record_line(data: bytes, start: int, k: int) -> int:
    """Line number of the k-th (0-based) vertex record."""
    for i, m in enumerate(_VERTEX.finditer(data, start)):
        if i == k:
            return data.count(b"\n", 0, m.start()) + 1
    return 0
