"""Optional compiled kernels: built on first use with the machine's C compiler; torch-free.

pcsym installs as pure Python. Where a C compiler is present (``$CC``, else ``cc``, ``gcc`` or
``clang``), the first call builds ``knn.c`` (plain C99 + POSIX threads, no torch headers: ~0.3 s)
into a shared library in the user cache folder (``native/`` under ``$PCSYM_CACHE_DIR``, else
``$XDG_CACHE_HOME/pcsym``, else ``~/.cache/pcsym``; a private temporary folder when the cache is
``off``) and loads it with ctypes. The file name is a hash of the source, the compiler, its flags and
the platform, so a changed source or compiler builds a new library; it is written atomically, and a
library that does not load (damaged, foreign) is rebuilt once. Nothing here is ever fatal: with no
compiler, a failed build or ``PCSYM_NATIVE=off``, :func:`knn` returns None and the callers
(:func:`pcsym.graph.knn`, :func:`pcsym.runtime.knn`) use their torch / numpy spelling, which finds
the same neighbours. :func:`status` says which is in use (``pcsym --debug ...`` logs it).

Why a kernel: kNN was a quarter of an inference forward pass and a tenth of a training step (issue
12's profile); torch's ``topk`` over a materialised distance matrix is bound by its per-row sort.
The kernel never materialises the matrix: per query it seeds the k best from the keys next to it on a
space-filling (Morton) curve, then rejects the other keys eight at a time against the k-th distance.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..files import atomic_writer, user_cache_dir

SOURCE = Path(__file__).with_name("knn.c")
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-pthread")
_ENV = "PCSYM_NATIVE"

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
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), os.path.realpath(cc).encode(), " ".join(FLAGS).encode(),
                                      platform.machine().encode(), platform.system().encode()])).hexdigest()[:24]
    root = user_cache_dir()
    if root is None:  # no cache: a private folder, removed when the process exits (the loaded copy stays mapped)
        root = Path(tempfile.mkdtemp(prefix="pcsym-native-"))
        atexit.register(shutil.rmtree, root, True)
    return root / "native" / f"knn-{key}.so"


def _build(cc: str, target: Path) -> None:
    with atomic_writer(target) as tmp:
        res = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    fn = lib.pcsym_knn
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p, ctypes.c_int]
    fn.restype = ctypes.c_int
    return lib


def _disabled() -> bool:
    """``PCSYM_NATIVE=off`` (or 0/no/false); read on every call, so it can be switched at run time."""
    return os.environ.get(_ENV, "").strip().lower() in ("off", "0", "no", "false")


def _load() -> ctypes.CDLL | None:
    if _disabled():
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
                if target.is_file():
                    try:
                        lib = _open(target)
                    except OSError:
                        lib = None  # damaged or foreign: rebuild below
                if lib is None:
                    _build(cc, target)
                    lib = _open(target)
            except Exception as exc:  # noqa: BLE001 - never fatal: the callers fall back
                lib, why = None, f"build failed: {exc}"
        _state.update(lib=lib, why=why, path=path)
        logging.getLogger(__name__).debug("compiled kNN kernel: %s", path if lib is not None else f"not used, {why}")
        return lib


def status() -> str:
    """One line: which kNN is in use, and why not the compiled one."""
    if _disabled():
        return f"kNN: torch/numpy ({_ENV}=off)"
    lib = _load()
    return f"kNN: compiled ({_state['path']})" if lib is not None else f"kNN: torch/numpy ({_state['why']})"


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
