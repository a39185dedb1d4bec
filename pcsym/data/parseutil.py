"""Shared pieces of the mesh / point-cloud readers: strict numeric tokenizing in numpy, fan
triangulation, and the checks every reader makes before it allocates anything.

Everything here works on whole buffers with numpy (no per-token Python objects), so memory is a
small constant times the file size whatever the file looks like (one enormous line, millions of
tiny tokens), and time is linear.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import PcsymError

_SPACE = np.zeros(256, dtype=bool)
_SPACE[list(b" \t\n\r\x0b\x0c")] = True
_NUMCHAR = np.zeros(256, dtype=bool)
_NUMCHAR[list(b"0123456789+-.eEnNaAiIfFtTyY")] = True
# unambiguous (no nested or adjacent repeats of the same class), so a failing match of a huge
# token backtracks linearly, never quadratically
_NUMBER = re.compile(rb"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.I)
_TOKEN = re.compile(rb"\S{1,40}")
_COMMENT = re.compile(rb"#[^\n]*")

#: Largest integer a float64 holds exactly; larger "indices" are refused rather than rounded.
EXACT_INT = 2**53


def check_vertex_count(n: int, path: Path, max_vertices: int) -> None:
    if n > max_vertices:
        raise PcsymError(f"file has {n} vertices, more than --max-vertices {max_vertices}", path=path)


def looks_utf16(head: bytes) -> bool:
    """ASCII text in UTF-16 without a BOM: NULs in every other byte, and only there."""
    n = max(len(head) // 2, 1)
    zeros = sorted((head[0::2].count(0), head[1::2].count(0)))
    return zeros[1] > 0.4 * n and zeros[0] < 0.05 * n


def check_text(path: Path, data: bytes, fmt: str) -> bytes:
    """Reject UTF-16/32 and binary data with a clear message; return ``data`` without a UTF-8 BOM."""
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (b"\x00" in head and looks_utf16(head)):
        raise PcsymError(f"file is UTF-16 encoded text; save it as UTF-8 or ASCII to read it as {fmt}", path=path)
    if b"\x00" in head:
        raise PcsymError(f"could not parse file as {fmt}: it contains binary data", path=path)
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def strip_comments(data: bytes) -> bytes:
    """``#`` to the end of the line becomes nothing (only copies when there is a comment)."""
    return _COMMENT.sub(b"", data) if b"#" in data else data


def token_text(data: bytes, offset: int) -> str:
    """The (first 40 characters of the) token starting at byte ``offset``, for messages."""
    m = _TOKEN.match(data, offset)
    return (m.group() if m else b"").decode("ascii", errors="replace")


def line_number(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def token_starts(data: bytes) -> np.ndarray:
    """Byte offsets (int64) of every whitespace-separated token."""
    a = np.frombuffer(data, dtype=np.uint8)
    space = _SPACE[a]
    start = ~space
    start[1:] &= space[:-1]
    return np.flatnonzero(start)


class NumberError(ValueError):
    """A token that is not a plain decimal number; ``offset`` is its byte offset."""

    def __init__(self, offset: int):
        super().__init__(offset)
        self.offset = offset


def parse_numbers(data: bytes, starts: np.ndarray) -> np.ndarray:
    """float64 value of every token (``starts`` = :func:`token_starts`), strictly.

    Each token must be a whole decimal number (``1``, ``-2.5e3``, ``nan``, ``inf``); anything
    else raises :class:`NumberError` with the offset of the first bad token. numpy's text parser
    does the conversion; it stops silently at bad input and accepts a number's prefix (``7-``,
    ``3a``) and returns ``[-1.]`` for some bad input, so its count is checked against the token
    count, every byte against the number alphabet, and the first and last tokens (the only ones
    a prefix can hide in once the counts agree) against the grammar.
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0)
    a = np.frombuffer(data, dtype=np.uint8)
    bad = ~(_SPACE[a] | _NUMCHAR[a])
    bad_byte = [int(bad.argmax())] if bad.any() else []
    del bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.fromstring(data, dtype=np.float64, sep=" ")
    k = min(len(values), n)

    def ok(i: int) -> bool:
        return _NUMBER.fullmatch(data, int(starts[i]), _token_end(data, int(starts[i]))) is not None

    if len(bad_byte) == 0 and len(values) == n and ok(0) and ok(n - 1):
        return values
    suspects = [int(np.searchsorted(starts, b, side="right")) - 1 for b in bad_byte]
    if not ok(0):
        suspects.append(0)
    elif k >= 1 and not ok(k - 1):
        suspects.append(k - 1)
    elif k < n:
        suspects.append(k)
    else:  # pragma: no cover - counts agree and the ends parse: cannot happen
        suspects.append(n - 1)
    raise NumberError(int(starts[min(suspects)]))


_WS = re.compile(rb"\s")


def _token_end(data: bytes, start: int) -> int:
    m = _WS.search(data, start)
    return m.start() if m else len(data)


class Lines:
    """Token structure of a text buffer: the non-empty lines, and their tokens' offsets.

    ``first[i]`` index (into ``starts``) of the first token of the i-th non-empty line,
    ``count[i]`` its number of tokens, ``lineno[i]`` its 1-based line number.
    """

    def __init__(self, data: bytes):
        self.data = data
        self.starts = token_starts(data)
        newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        tok_line = np.searchsorted(newlines, self.starts)  # newlines before each token
        if len(tok_line):
            self.first = np.flatnonzero(np.r_[True, tok_line[1:] != tok_line[:-1]])
        else:
            self.first = np.zeros(0, dtype=np.int64)
        self.count = np.diff(np.r_[self.first, len(self.starts)])
        self.lineno = tok_line[self.first] + 1
        self._newlines = newlines

    def __len__(self) -> int:
        return len(self.first)

    def numbers(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Strict float64 values of the tokens of non-empty lines ``lo:hi`` (all by default);
        raises :class:`NumberError` (offset into ``data``)."""
        hi = len(self) if hi is None else hi
        if hi <= lo:
            return np.zeros(0)
        t0, t1 = int(self.first[lo]), int(self.first[hi - 1] + self.count[hi - 1])
        b0 = int(self.starts[t0])
        b1 = _token_end(self.data, int(self.starts[t1 - 1]))
        try:
            return parse_numbers(self.data[b0:b1], self.starts[t0:t1] - b0)
        except NumberError as exc:
            raise NumberError(exc.offset + b0) from None

    def line_text(self, i: int, limit: int = 60) -> str:
        """Start of the i-th non-empty line, for messages."""
        b0 = int(self.starts[self.first[i]])
        end = self.data.find(b"\n", b0, b0 + limit)
        return self.data[b0 : (b0 + limit if end < 0 else end)].decode("utf-8", errors="replace").strip()

    def tokens(self, i: int, most: int = 4) -> list[str]:
        """Text of the first ``most`` tokens of the i-th non-empty line."""
        f = int(self.first[i])
        return [token_text(self.data, int(s)) for s in self.starts[f : f + min(most, int(self.count[i]))]]


def as_indices(values: np.ndarray) -> np.ndarray | None:
    """int64 copy of ``values`` when every value is an integer a float64 holds exactly, else None."""
    if len(values) and not (np.isfinite(values).all() and (np.abs(values) < EXACT_INT).all()
                            and (values == np.round(values)).all()):
        return None
    return values.astype(np.int64)


def fan(flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Fan-triangulate polygons given as one flat index array and per-polygon sizes (each >= 3):
    polygon ``p0 p1 .. pk`` gives ``(p0, p_i, p_i+1)`` for i = 1..k-1, in order. int64 (F, 3)."""
    counts = np.asarray(counts, dtype=np.int64)
    flat = np.asarray(flat, dtype=np.int64)
    if len(counts) and (counts == 3).all():
        return flat.reshape(-1, 3)
    ntri = counts - 2
    offsets = np.cumsum(counts) - counts
    base = np.repeat(offsets, ntri)
    k = np.arange(len(base)) - np.repeat(np.cumsum(ntri) - ntri, ntri) + 1
    return np.stack([flat[base], flat[base + k], flat[base + k + 1]], axis=1)
