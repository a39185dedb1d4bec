"""Compiled kernels: built by the set-up (``scripts/setup.sh``, which installs gcc) or on first use; torch-free.

pcsym installs as pure Python. Where a C compiler is present (``$CC``, else ``cc``, ``gcc`` or
``clang``), the set-up or the first call builds ``knn.c`` and ``edge.c`` (plain C99 + POSIX threads, no
torch headers: ~1 s; ``agg.c`` too) into one shared library in the user cache folder (``native/`` under
``$PCSYM_CACHE_DIR``, else ``$XDG_CACHE_HOME/pcsym``, else ``~/.cache/pcsym``; a private temporary
folder when the cache is ``off``) and loads it with ctypes. The file name is a hash of the sources,
the compiler, its flags and the platform, so a changed source or compiler builds a new library; it
is written atomically under a file lock (processes started together, as torchrun's, build it once),
and a library that does not load (damaged, foreign) is rebuilt once. Nothing here is fatal: with no
compiler or a failed build, :func:`knn` and :func:`edge_mlp` return None and the callers use their
torch / numpy spelling of the same maths (:func:`pcsym.geometry.graph.knn`,
:func:`pcsym.geometry.numpy_graph.knn`, :mod:`pcsym.models.fused`) — about 3x slower training — and
pcsym says so in one line on stderr, once per process; ``PCSYM_NATIVE=off`` chooses that path silently.
:func:`status` (and ``pcsym info``) says which is in use.

Why kernels (issue 12's profiles):

* kNN was a quarter of an inference forward pass and a tenth of a training step; torch's ``topk``
  over a materialised distance matrix is bound by its per-row sort. ``knn.c`` never materialises the
  matrix: per query it seeds the k best from the keys next to it on a space-filling (Morton) curve,
  then rejects the other keys eight at a time against the k-th distance.
* the implicit kernel's per-edge MLP (harmonic embedding, two equivariant linear layers with gated
  nonlinearities, on 82k edges in the first block of a batch) was a third of a training step: dozens
  of small elementwise torch ops, each writing and reading an (edges x width) tensor. ``edge.c`` does
  the whole MLP per block of 32 edges in cache, forward and backward (parameter gradients only),
  with an AVX2+FMA copy of its loops picked at run time on CPUs that have them.
* the neighbour aggregation sum_j h_ij^T f_j was a gather of (B, M, k, C) features, a batched matmul of
  tiny (H x k)(k x C) matrices (a few GFLOP/s) and a scatter-add in backward: ``agg.c`` reads the
  neighbours' rows in place, forward and backward.
* farthest-point sampling (the shipped models' ``random-fps``: 128 + 32 picks per cloud and step) was a
  Python loop of six small torch ops per pick, ~9 ms per 8 clouds, run by each shard thread: ``pcsym_fps``
  in ``knn.c`` is the same loop (the same picks), ~0.8 ms.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no file lock (the kernels need POSIX threads anyway)
    fcntl = None

import numpy as np

from ...files import atomic_writer, user_cache_dir

SOURCES = tuple(Path(__file__).with_name(n) for n in ("knn.c", "edge.c", "agg.c"))
HEADERS = tuple(Path(__file__).with_name(n) for n in ("edge_body.h", "agg_body.h", "simd.h", "twice.h", "threads.h"))
# -fno-trapping-math: floating-point compares may be if-converted, so edge.c's ELU/sigmoid loops vectorise
FLAGS = ("-O3", "-std=c99", "-fno-trapping-math", "-shared", "-fPIC", "-pthread")
_ENV = "PCSYM_NATIVE"
KERNELS = "kNN, farthest-point sampling, edge MLP and aggregation"

_lock = threading.Lock()
_state: dict = {}  # "lib": ctypes.CDLL | None, "why": str, "path": str


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _library_path(cc: str) -> Path:
    key = hashlib.sha256(b"\0".join([*(f.read_bytes() for f in SOURCES + HEADERS), os.path.realpath(cc).encode(),
                                      " ".join(FLAGS).encode(), platform.machine().encode(),
                                      platform.system().encode()])).hexdigest()[:24]
    root = user_cache_dir()
    if root is None:  # no cache: a private folder, removed when the process exits (the loaded copy stays mapped)
        root = Path(tempfile.mkdtemp(prefix="pcsym-native-"))
        atexit.register(shutil.rmtree, root, True)
    return root / "native" / f"kernels-{key}.so"


def _build(cc: str, target: Path) -> None:
    with atomic_writer(target) as tmp:
        res = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", str(tmp)], capture_output=True, text=True,
                             timeout=120)
        if res.returncode != 0:
            said = (res.stderr or res.stdout).strip().splitlines()
            raise RuntimeError(f"{Path(cc).name} failed: {said[-1] if said else f'exit code {res.returncode}'}")


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    fn = lib.pcsym_knn
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p, ctypes.c_int]
    fn.restype = ctypes.c_int
    p = ctypes.c_void_p
    fn = lib.pcsym_fps
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_int]
    fn.restype = ctypes.c_int
    fn = lib.pcsym_edge_mlp
    fn.argtypes = [p, p, p, ctypes.c_float, p, p, p, p, p, ctypes.c_int64, p, p, p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    fn = lib.pcsym_aggregate
    fn.argtypes = [p, p, p, *[ctypes.c_int64] * 6, p, ctypes.c_int64, p, p, p, p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return lib


def disabled() -> bool:
    """``PCSYM_NATIVE=off`` (or 0/no/false); read on every call, so it can be switched at run time."""
    return os.environ.get(_ENV, "").strip().lower() in ("off", "0", "no", "false")


@contextlib.contextmanager
def _file_lock(target: Path):
    """An exclusive lock on ``target``'s ``.lock`` file while it is checked and built, so processes started
    together build one library: the others wait, then load it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(target.with_suffix(".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _open_or_build(cc: str, target: Path) -> ctypes.CDLL:
    if target.is_file():
        try:
            return _open(target)
        except OSError:
            pass  # damaged or foreign: rebuilt below
    _build(cc, target)
    return _open(target)


def _warn_fallback(why: str) -> None:
    """The one line on stderr when the kernels cannot be used (not when PCSYM_NATIVE=off chose so)."""
    sys.stderr.write(f"pcsym: warning: compiled kernels not used ({why}); kNN, sampling and the kernel MLP run "
                     f"on the slower torch/numpy path (bash scripts/setup.sh installs a C compiler; {_ENV}=off "
                     "silences this)\n")


def _load() -> ctypes.CDLL | None:
    if disabled():
        return None
    if "lib" in _state:
        return _state["lib"]
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib, why, path = None, "", ""
        cc = _compiler()
        if cc is None:
            why = "no C compiler found (set CC)"
        else:
            try:
                target = _library_path(cc)
                path = str(target)
                with _file_lock(target):
                    lib = _open_or_build(cc, target)
            except Exception as exc:  # noqa: BLE001 - never fatal: the callers fall back
                said = str(exc).strip().splitlines() or [type(exc).__name__]
                lib, why = None, f"build failed: {said[0]}"
        _state.update(lib=lib, why=why, path=path)
        logging.getLogger(__name__).debug("compiled kernels: %s", path if lib is not None else f"not used, {why}")
        if lib is None:
            _warn_fallback(why)
        return lib


def available() -> bool:
    """Whether the compiled kernels are loaded (building them on the first call)."""
    return _load() is not None


def describe() -> dict:
    """The state of the kernels: ``active``, and ``library`` (its path) and ``loops`` (``AVX2+FMA`` or
    ``baseline``) when they are, ``why`` not when they are not (building them on the first call)."""
    if disabled():
        return {"active": False, "library": None, "loops": None, "why": f"{_ENV}=off"}
    lib = _load()
    if lib is None:
        return {"active": False, "library": None, "loops": None, "why": _state["why"]}
    return {"active": True, "library": _state["path"], "loops": "AVX2+FMA" if lib.pcsym_edge_isa() else "baseline",
            "why": None}


def status() -> str:
    """One line: whether the compiled kernels (kNN, FPS, edge MLP, aggregation) are in use, and why not."""
    d = describe()
    if not d["active"]:
        return f"{KERNELS}: torch/numpy ({d['why']})"
    return f"{KERNELS}: compiled ({d['library']}, {d['loops']} loops)"


def reset() -> None:
    """Forget the loaded library (tests; a new ``CC`` or cache folder is looked at on the next call)."""
    with _lock:
        _state.clear()


def default_threads() -> int:
    """The CPUs this process may use (at most 8): the numpy runtime's kNN threads."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def knn(query: np.ndarray, keys: np.ndarray, k: int, threads: int = 1) -> np.ndarray | None:
    """Indices (B, M, k) int64 of the k nearest ``keys`` (B, N, 3) of each ``query`` (B, M, 3), sorted
    nearest first (exact squared distances in float32); None when the kernel is unavailable."""
    lib = _load()
    if lib is None:
        return None
    q = np.ascontiguousarray(query, dtype=np.float32)
    kc = np.ascontiguousarray(keys, dtype=np.float32)
    b, m, _ = q.shape
    out = np.empty((b, m, k), dtype=np.int64)
    err = lib.pcsym_knn(q.ctypes.data, kc.ctypes.data, b, m, kc.shape[1], k, out.ctypes.data, int(threads))
    return out if err == 0 else None


def fps(pos: np.ndarray, start: np.ndarray, m: int, threads: int = 1) -> np.ndarray | None:
    """Farthest-point order (B, m) int64 of ``pos`` (B, N, 3) from the points ``start`` (B,): the loop of
    :func:`pcsym.geometry.graph.fps_order` / :func:`pcsym.geometry.numpy_graph.fps_order` (the same picks: the same float32 distances,
    ties to the lower index). None when the kernel is unavailable or a coordinate is not finite (the callers'
    spelling then decides, with its own NaN rules)."""
    lib = _load()
    if lib is None:
        return None
    p = np.ascontiguousarray(pos, dtype=np.float32)
    if p.ndim != 3 or p.shape[1] == 0 or p.shape[2] != 3 or not np.isfinite(p).all():
        return None
    s = np.ascontiguousarray(start, dtype=np.int64)
    b, n, _ = p.shape
    bad_args = f"fps: start must be (B,) indices in [0, {n}) and 0 <= m <= {n}"
    if s.shape != (b,) or not 0 <= m <= n or (b and (s.min() < 0 or s.max() >= n)):
        raise ValueError(bad_args)
    out = np.empty((b, m), dtype=np.int64)
    err = lib.pcsym_fps(p.ctypes.data, s.ctypes.data, b, n, m, out.ctypes.data, int(threads))
    if err == 2:  # the C function's own size/start checks (unreachable after the ones above)
        raise ValueError(bad_args)
    if err:
        raise MemoryError("fps: out of memory")
    return out


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def aggregate(h: np.ndarray, f: np.ndarray, idx: np.ndarray, agg: np.ndarray | None = None,
              grad: np.ndarray | None = None, dh: np.ndarray | None = None, df: np.ndarray | None = None,
              cols: np.ndarray | None = None, threads: int = 1, isa: int = 1) -> bool | None:
    """The neighbour aggregation of ``agg.c``: h (B*M, k, H), f (B, N, C), idx (B, M, k) int64. Forward
    (``grad`` None): agg (B*M, H, C) = per node sum_j h_j^T f[idx_j]; with ``cols`` (P,) int64, agg is
    (B*M, P): those entries of the flattened (H, C) sum. Backward: from ``grad`` (like agg), dh (like h)
    and/or df (like f, accumulated into: zero it first). True on success; None when the kernel is
    unavailable; ValueError for arrays the C code would misread or indices out of range."""
    b, m, k = idx.shape
    n, c = f.shape[1], f.shape[2]
    hs = h.shape[-1] if h.ndim == 3 else -1
    out_shape = (b * m, hs, c) if cols is None else (b * m, len(cols))
    checks = [(h, (b * m, k, hs), np.float32), (f, (b, n, c), np.float32), (idx, (b, m, k), np.int64),
              (agg, out_shape, np.float32), (grad, out_shape, np.float32), (dh, h.shape, np.float32),
              (df, f.shape, np.float32), (cols, (-1 if cols is None else len(cols),), np.int64)]
    for a, shape, dtype in checks:  # the C code reads and writes these in place: nothing else may reach it
        if a is not None and (a.dtype != dtype or not a.flags.c_contiguous or a.shape != shape or hs < 1):
            raise ValueError(f"aggregate: expected a C-contiguous {np.dtype(dtype)} array of shape {shape}, "
                             f"got {a.dtype} {a.shape}")
    if (grad is None) == (agg is None) or (grad is not None and dh is None and df is None):
        raise ValueError("aggregate: give agg (forward) or grad with dh and/or df (backward)")
    lib = _load()
    if lib is None:
        return None
    err = lib.pcsym_aggregate(_ptr(h), _ptr(f), _ptr(idx), b, m, n, k, hs, c, _ptr(cols),
                              0 if cols is None else len(cols), _ptr(agg), _ptr(grad), _ptr(dh), _ptr(df),
                              int(threads), int(isa))
    if err == 2:
        raise ValueError(f"aggregate: neighbour indices must lie in [0, {n}) and columns in [0, {hs * c})")
    if err:
        raise MemoryError("aggregate: out of memory")
    return True


def edge_mlp(net: "EdgeNet", rel: np.ndarray, edge: np.ndarray | None, h: np.ndarray | None = None,
             dh: np.ndarray | None = None, grads: np.ndarray | None = None, threads: int = 1,
             isa: int = 1) -> bool | None:
    """The implicit kernel's per-edge MLP (see ``edge.c``) on E edges: rel (E, 3), edge (E, n_edge) or None,
    float32 C-contiguous. Forward (``dh`` None): fills h (E, H). Backward: fills ``grads`` with the
    parameter gradients (per layer dW then db, flattened) of sum(h * dh). ``isa`` 0 forces the baseline
    loops (tests). True on success; None when the kernel is unavailable or failed (callers fall back)."""
    e = rel.shape[0]
    shapes = [(rel, (e, 3)), (edge, (e, int(net.meta[2]))), (h, (e, net.h_size)), (dh, (e, net.h_size)),
              (grads, (net.n_grads,))]
    for a, shape in shapes:  # the C code reads and writes these in place: nothing else may reach it
        if a is not None and (a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != shape):
            raise ValueError(f"edge_mlp: expected a C-contiguous float32 array of shape {shape}, "
                             f"got {a.dtype} {a.shape}")
    if (dh is None) == (h is None) or (dh is None) != (grads is None) or (edge is None) != (net.meta[2] == 0):
        raise ValueError("edge_mlp: give h (forward) or dh and grads (backward), "
                         "and edge features exactly when the net has them")
    lib = _load()
    if lib is None:
        return None
    c = ctypes.c_void_p
    err = lib.pcsym_edge_mlp(net.meta.ctypes.data, _ptr(net.cob), _ptr(net.centres), net.inv_width,
                             (c * len(net.W))(*map(_ptr, net.W)), (c * len(net.b))(*map(_ptr, net.b)),
                             (c * len(net.chan))(*map(_ptr, net.chan)), _ptr(rel), _ptr(edge), e,
                             _ptr(h), _ptr(dh), _ptr(grads), int(threads), int(isa))
    return True if err == 0 else None


class EdgeNet:
    """What :func:`edge_mlp` needs, as float32 / int arrays the C code reads in place: the embedding
    (``lmax``, ``cob`` = C_1 .. C_lmax flattened, radial ``centres``, ``inv_width``, ``n_edge`` features)
    and per layer the dense W (pre, in), b (pre) or None and ``chan`` (act,): -1 for an ELU channel,
    else the index of its gate (column act + chan of the layer's output)."""

    def __init__(self, lmax: int, cob: list, centres, width: float, n_edge: int, layers: list):
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        self.cob = f32(np.concatenate([np.asarray(c, dtype=np.float32).reshape(-1) for c in cob])
                       if cob else np.zeros(1))
        self.centres = f32(centres) if len(centres) else np.zeros(1, np.float32)
        self.inv_width = 1.0 / float(width)
        meta = [int(lmax), len(centres), int(n_edge), len(layers)]
        self.W, self.b, self.chan = [], [], []
        for w, b, chan in layers:
            self.W.append(f32(w))
            self.b.append(None if b is None else f32(b))
            self.chan.append(np.ascontiguousarray(chan, dtype=np.int32))
            meta += [w.shape[1], w.shape[0], len(chan)]
        self.meta = np.asarray(meta, dtype=np.int64)
        self.h_size = len(self.chan[-1]) + 1
        self.n_grads = sum(w.size + w.shape[0] for w in self.W)
