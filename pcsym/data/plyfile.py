"""PLY reader (ascii, binary_little_endian, binary_big_endian) written in numpy.

Why our own parser rather than open3d / plyfile / trimesh: open3d's RPly-based reader is native
code that segfaulted on corrupt files (issue 13) and silently pads truncated ones; the Python
alternatives either load counts from the header straight into allocations or add a dependency we
would have to audit anyway. This module is small enough to audit: the header is parsed first,
every element count is checked against the bytes (or numbers) actually present before anything
is allocated, ``max_vertices`` is enforced from the header, list sizes and face indices are
validated, and no native code other than numpy runs on the file's bytes.

Layout handled: a ``vertex`` element with scalar ``x y z`` (any numeric type) and optional
``nx ny nz``; a ``face`` element with a ``vertex_indices`` / ``vertex_index`` list (any integer
count and index types); any other properties (colours, flags) and elements (edges, materials)
are skipped. Rows whose lists all have the first row's lengths (the common all-triangle case)
are read as one numpy structured array; otherwise rows are walked one by one, at most
``LOOP_ROWS`` of them per element, and polygons are fan-triangulated.
"""

from __future__ import annotations

import re
import struct
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PcsymError
from .parseutil import NumberError, as_indices, check_text, check_vertex_count, fan, line_number, parse_numbers
from .parseutil import token_starts, token_text

_TYPES = {
    **dict.fromkeys(("char", "int8"), "i1"), **dict.fromkeys(("uchar", "uint8"), "u1"),
    **dict.fromkeys(("short", "int16"), "i2"), **dict.fromkeys(("ushort", "uint16"), "u2"),
    **dict.fromkeys(("int", "int32"), "i4"), **dict.fromkeys(("uint", "uint32"), "u4"),
    **dict.fromkeys(("float", "float32"), "f4"), **dict.fromkeys(("double", "float64"), "f8"),
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_FACE_LISTS = ("vertex_indices", "vertex_index")
MAX_ELEMENTS = 256
MAX_PROPERTIES = 1024
#: Rows of variable length (polygon lists of different sizes) are walked in a Python loop; more
#: than this many in one element is refused (about 3 s of work).
LOOP_ROWS = 4_000_000


@dataclass
class _Prop:
    name: str
    code: str  # numpy type code of the value (list: of the items)
    count_code: str | None = None  # list count type, None for a scalar
    min_len: int = 0  # fewest entries the list may have (3 for the face's vertex indices)

    @property
    def is_list(self) -> bool:
        return self.count_code is not None


@dataclass
class _Element:
    name: str
    count: int
    props: list[_Prop] = field(default_factory=list)


def read_ply(path: Path, data: bytes, max_vertices: int):
    """``(vertices float64 (V, 3), faces int64 (F, 3) or None, normals (V, 3) or None)``."""
    fmt, elements, body = _parse_header(path, data)
    byname = {e.name: e for e in elements}
    vertex, face = byname.get("vertex"), byname.get("face")
    if vertex is None or vertex.count == 0:
        raise PcsymError("file has no vertices", path=path)
    check_vertex_count(vertex.count, path, max_vertices)
    names = {p.name: j for j, p in enumerate(vertex.props) if not p.is_list}
    if not all(c in names for c in "xyz"):
        _fail(path, "the vertex element has no x, y, z properties")
    want = {vertex.name: [names[c] for c in ("x", "y", "z", "nx", "ny", "nz") if c in names]}
    if face is not None and face.count:
        lists = [j for j, p in enumerate(face.props) if p.is_list and p.name in _FACE_LISTS]
        if not lists:
            _fail(path, "the face element has no vertex_indices list")
        if face.props[lists[0]].code[0] == "f":
            _fail(path, "face vertex indices have a floating-point type")
        face.props[lists[0]].min_len = 3
        want[face.name] = lists[:1]
    src = _Ascii(path, data, body, elements) if fmt is None else _Binary(path, data, body, elements, fmt)
    got = {}
    for e in elements:
        if all(name in got for name in want):
            break  # the rest of the file holds nothing we read
        got[e.name] = src.element(e, want.get(e.name, []))
    cols = got[vertex.name]
    vertices = np.stack([cols[j] for j in want[vertex.name][:3]], axis=1).astype(np.float64)
    normals = None
    if len(want[vertex.name]) == 6:
        normals = np.stack([cols[j] for j in want[vertex.name][3:]], axis=1).astype(np.float64)
    if face is None or face.count == 0:
        return vertices, None, normals
    flat, counts = got[face.name][want[face.name][0]]
    idx = as_indices(flat) if flat.dtype.kind == "f" else flat.astype(np.int64)
    if idx is None:
        _fail(path, "a face vertex index is not an integer")
    if len(idx) and (idx.min() < 0 or idx.max() >= vertex.count):
        bad = int(idx.max() if idx.max() >= vertex.count else idx.min())
        raise PcsymError(f"face index {bad} out of range: the mesh has {vertex.count} vertices", path=path)
    return vertices, fan(idx, counts), None


def _fail(path: Path, reason: str):
    raise PcsymError(f"could not parse file as PLY: {reason}", path=path)


def _parse_header(path: Path, data: bytes):
    """``(byte order or None for ascii, elements, offset of the body)``."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or data[:2] == b"p\x00":
        check_text(path, data, "PLY")  # raises the UTF-16 error
    magic = re.match(rb"ply[ \t]*\r?\n", data)
    end = data.find(b"\nend_header")
    if not magic or end < 0:
        _fail(path, "missing 'ply' magic or 'end_header'")
    after = re.compile(rb"[ \t\r]*(?:\n|\Z)").match(data, end + len(b"\nend_header"))
    if not after:
        _fail(path, "garbage after 'end_header' on its line")
    fmt, elements = None, []
    for raw in data[magic.end() : end].decode("ascii", errors="replace").split("\n"):
        toks = raw.split()
        if not toks or toks[0] in ("comment", "obj_info"):
            continue
        if toks[0] == "format" and fmt is None and len(toks) == 3 and toks[1] in _FORMATS:
            fmt = toks[1]
        elif toks[0] == "element" and len(toks) == 3 and re.fullmatch(r"\d{1,15}", toks[2]):
            if any(e.name == toks[1] for e in elements) or len(elements) >= MAX_ELEMENTS:
                _fail(path, f"duplicate element or too many elements: {raw.strip()[:60]!r}")
            elements.append(_Element(toks[1], int(toks[2])))
        elif toks[0] == "property" and elements and len(elements[-1].props) < MAX_PROPERTIES:
            if len(toks) == 3 and toks[1] in _TYPES:
                elements[-1].props.append(_Prop(toks[2], _TYPES[toks[1]]))
            elif len(toks) == 5 and toks[1] == "list" and _TYPES.get(toks[2], "f")[0] in "iu" and toks[3] in _TYPES:
                elements[-1].props.append(_Prop(toks[4], _TYPES[toks[3]], _TYPES[toks[2]]))
            else:
                _fail(path, f"bad property line {raw.strip()[:60]!r}")
        else:
            _fail(path, f"bad header line {raw.strip()[:60]!r}")
    if fmt is None:
        _fail(path, "missing 'format' line")
    return _FORMATS[fmt], elements, after.end()


class _Source:
    """Reads elements one after the other from the body. Positions count bytes (binary) or
    numbers (ascii); ``limit`` is the end of the body in those units."""

    path: Path
    pos: int
    limit: int

    def sizes(self, p: _Prop) -> tuple[int, int]:
        """(size of a scalar, or of a list's count; size of one list item)."""
        raise NotImplementedError

    def count_at(self, p: _Prop, pos: int) -> int:
        """The list length stored at ``pos`` (-1 if it is not a valid length)."""
        raise NotImplementedError

    def gather(self, code: str, offsets: np.ndarray) -> np.ndarray:
        """Values of type ``code`` at ``offsets``."""
        raise NotImplementedError

    def uniform(self, e: _Element, want: list[int], counts: dict[int, int]) -> dict | None:
        """Read ``e`` assuming every row has the list lengths ``counts``; None if they do not."""
        raise NotImplementedError

    def where(self, pos: int) -> str:
        return ""

    def element(self, e: _Element, want: list[int]) -> dict:
        """Read ``e`` at the cursor and move past it. Returns {property index: column} for the
        properties in ``want``: scalars an array (n,), lists ``(flat items, counts)``."""
        if e.count == 0 or not e.props:
            return {}
        counts: dict[int, int] = {}
        if any(p.is_list for p in e.props):
            counts = {j: int(c[0]) for j, c in self.walk(e, rows=1)[2].items()}
        width = sum(self.sizes(p)[0] + counts.get(j, 0) * self.sizes(p)[1] for j, p in enumerate(e.props))
        if self.pos + e.count * width <= self.limit:
            got = self.uniform(e, want, counts)
            if got is not None:
                self.pos += e.count * width
                return got
        elif not counts or e.count > LOOP_ROWS:
            lengths = " at its first row's list lengths" if counts else ""
            self.short(e, f"element '{e.name}' needs {e.count * width} more {self.unit}{lengths}, found {self.limit - self.pos}")
        return self.variable(e, want)

    def walk(self, e: _Element, rows: int):
        """Walk ``rows`` rows one by one from the cursor, checking every list length against the
        data left: ``(end, row starts, {list property index: lengths})``."""
        if rows > LOOP_ROWS:
            _fail(self.path, f"element '{e.name}' has {rows} rows of varying length (at most {LOOP_ROWS} are read)")
        plan, fixed = [], 0  # per list: (fixed units before it, its index, count size, item size)
        for j, p in enumerate(e.props):
            size, item = self.sizes(p)
            if p.is_list:
                plan.append((fixed, j, size, item))
                fixed = 0
            else:
                fixed += size
        starts, counts = array("q"), {j: array("q") for _, j, _, _ in plan}
        steps = [(counts[j].append, before, e.props[j], size, item) for before, j, size, item in plan]
        count_at, pos, limit = self.count_at, self.pos, self.limit
        for row in range(rows):
            starts.append(pos)
            for append, before, p, size, item in steps:
                pos += before
                c = count_at(p, pos) if pos + size <= limit else None
                if c is None or c < p.min_len or pos + size + c * item > limit:
                    self._bad_list(e, row, c, pos, p.min_len)
                append(c)
                pos += size + c * item
            pos += fixed
            if pos > limit:
                self._bad_list(e, row, None, limit, 0)
        as_np = lambda a: np.frombuffer(a, dtype=np.int64).copy() if len(a) else np.zeros(0, np.int64)  # noqa: E731
        return pos, as_np(starts), {j: as_np(c) for j, c in counts.items()}

    def _bad_list(self, e: _Element, row: int, c: int | None, pos: int, least: int):
        where = self.where(pos)
        if c is not None and c < 0:
            _fail(self.path, f"{e.name} {row} has an invalid list length{where}")
        if c is not None and c < least:
            _fail(self.path, f"{e.name} {row} has {c} vertices (a face needs at least 3){where}")
        extra = f" (list of {c})" if c is not None else ""
        self.short(e, f"{e.name} {row} of {e.count}{extra} runs past the end of the data{where}")

    def short(self, e: _Element, detail: str):
        """The data ran out while reading ``e``."""
        _fail(self.path, f"truncated or corrupt: {detail}")

    def variable(self, e: _Element, want: list[int]) -> dict:
        """Read ``e`` row by row (lists of varying lengths); values are then gathered in numpy."""
        end, starts, counts = self.walk(e, e.count)
        out, where = {}, starts
        for j, p in enumerate(e.props):
            size, item = self.sizes(p)
            if j in want:
                if p.is_list:
                    n = counts[j]
                    first = np.repeat(where + size, n)
                    k = np.arange(len(first)) - np.repeat(np.cumsum(n) - n, n)
                    out[j] = (self.gather(p.code, first + k * item), n)
                else:
                    out[j] = self.gather(p.code, where)
            where = where + size + (counts[j] * item if p.is_list else 0)
        self.pos = end
        return out


class _Binary(_Source):
    unit = "bytes"

    def __init__(self, path: Path, data: bytes, body: int, elements: list[_Element], order: str):
        self.path, self.data, self.order = path, data, order
        self.pos, self.limit = body, len(data)
        need = sum(e.count * sum(self.sizes(p)[0] + p.min_len * self.sizes(p)[1] for p in e.props) for e in elements)
        if need > self.limit - body:
            _fail(path, f"truncated (header needs at least {need} bytes, found {self.limit - body})")
        self._unpack = {}

    def sizes(self, p: _Prop) -> tuple[int, int]:
        item = np.dtype(p.code).itemsize
        return (np.dtype(p.count_code).itemsize, item) if p.is_list else (item, 0)

    def count_at(self, p: _Prop, pos: int) -> int:
        unpack = self._unpack.get(p.count_code)
        if unpack is None:
            fmt = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I"}[p.count_code]
            unpack = self._unpack[p.count_code] = struct.Struct(self.order + fmt).unpack_from
        return unpack(self.data, pos)[0]

    def gather(self, code: str, offsets: np.ndarray) -> np.ndarray:
        size = np.dtype(code).itemsize
        raw = np.empty((len(offsets), size), dtype=np.uint8)
        everything = np.frombuffer(self.data, dtype=np.uint8)
        for k in range(size):
            raw[:, k] = everything[offsets + k]
        return raw.reshape(-1).view(self.order + code)

    def uniform(self, e: _Element, want: list[int], counts: dict[int, int]) -> dict | None:
        fields = []
        for j, p in enumerate(e.props):
            if p.is_list:
                fields.append((f"c{j}", self.order + p.count_code))
                if counts[j]:
                    fields.append((f"l{j}", self.order + p.code, (counts[j],)))
            else:
                fields.append((f"p{j}", self.order + p.code))
        rows = np.frombuffer(self.data, dtype=np.dtype(fields), count=e.count, offset=self.pos)
        if any((rows[f"c{j}"] != c).any() for j, c in counts.items()):
            return None
        out = {}
        for j in want:
            if e.props[j].is_list:
                c = counts[j]
                items = rows[f"l{j}"].reshape(-1) if c else np.zeros(0, np.int64)
                out[j] = (items, np.full(e.count, c, dtype=np.int64))
            else:
                out[j] = rows[f"p{j}"]
        return out


class _Ascii(_Source):
    unit = "numbers"

    def __init__(self, path: Path, data: bytes, body: int, elements: list[_Element]):
        self.path, self.data, self.body, self.pos = path, data, body, 0
        need = sum(e.count * sum(1 + p.min_len for p in e.props) for e in elements)
        text = data[body:]
        if 2 * need - 1 > len(text):  # every number takes a character and a separator
            _fail(path, f"truncated (header needs at least {need} numbers, the body has {len(text)} bytes)")
        self.starts = token_starts(text)
        if need > len(self.starts):
            _fail(path, f"truncated (header needs at least {need} numbers, found {len(self.starts)})")
        self.bad = None
        try:
            self.values = parse_numbers(text, self.starts)
        except NumberError as exc:  # keep what precedes the bad token: it may be all we need
            t = int(np.searchsorted(self.starts, exc.offset))
            self.bad = (token_text(text, exc.offset), line_number(data, body + exc.offset))
            self.values = parse_numbers(text[: exc.offset], self.starts[:t])
        self.limit = len(self.values)
        self._mv = memoryview(self.values)

    def short(self, e: _Element, detail: str):
        if self.bad is not None:  # the numbers stopped at a bad token
            _fail(self.path, f"not a number: {self.bad[0]!r} on line {self.bad[1]} (element '{e.name}')")
        super().short(e, detail)

    def where(self, pos: int) -> str:
        if pos < len(self.starts):
            return f" (line {line_number(self.data, self.body + int(self.starts[pos]))})"
        return ""

    def sizes(self, p: _Prop) -> tuple[int, int]:
        return (1, 1) if p.is_list else (1, 0)

    def count_at(self, p: _Prop, pos: int) -> int:
        c = self._mv[pos]
        return int(c) if 0 <= c <= self.limit and c == int(c) else -1

    def gather(self, code: str, offsets: np.ndarray) -> np.ndarray:
        return self.values[offsets]

    def uniform(self, e: _Element, want: list[int], counts: dict[int, int]) -> dict | None:
        width = sum(1 + counts.get(j, 0) for j in range(len(e.props)))
        rows = self.values[self.pos : self.pos + e.count * width].reshape(e.count, width)
        at, out = 0, {}
        for j, p in enumerate(e.props):
            if p.is_list:
                c = counts[j]
                if (rows[:, at] != c).any():
                    return None
                if j in want:
                    out[j] = (rows[:, at + 1 : at + 1 + c].reshape(-1), np.full(e.count, c, dtype=np.int64))
                at += 1 + c
            else:
                if j in want:
                    out[j] = rows[:, at]
                at += 1
        return out
