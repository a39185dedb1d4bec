"""The compiled kNN kernel (pcsym.geometry.native): the same neighbours as brute force, and never fatal."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pcsym.geometry import native
from pcsym.geometry.graph import knn, knn_torch
from pcsym.geometry.numpy_graph import knn as np_knn
from pcsym.geometry.numpy_graph import knn_numpy

HAS_CC = shutil.which(os.environ.get("CC") or "cc") is not None


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A private cache folder and no library loaded yet; restored afterwards."""
    monkeypatch.setenv("PCSYM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PCSYM_NATIVE", raising=False)
    native.reset()
    yield tmp_path
    native.reset()


def _clouds(kind: str, b: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "ball":
        return rng.normal(size=(b, n, 3)).astype(np.float32)
    if kind == "surface":  # points on an ellipsoid, like ModelNet samples
        p = rng.normal(size=(b, n, 3))
        return (p / np.linalg.norm(p, axis=-1, keepdims=True) * [1.0, 0.5, 0.2]).astype(np.float32)
    if kind == "plane":  # a flat box: one axis has no extent (the Morton grid's scale is 0 there)
        p = rng.uniform(-1, 1, size=(b, n, 3))
        p[..., 2] = 0.25
        return p.astype(np.float32)
    if kind == "far":  # far from the origin, large coordinates
        return (rng.normal(size=(b, n, 3)) * 3 + 1e4).astype(np.float32)
    raise ValueError(kind)


def _brute(q: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    d = ((q[:, :, None, :].astype(np.float64) - keys[:, None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=-1, kind="stable")[..., :k]


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: pcsym falls back to torch (tested below)")
@pytest.mark.parametrize("kind", ["ball", "surface", "plane", "far"])
@pytest.mark.parametrize("b,m,n,k", [(4, 512, 1024, 10), (3, 37, 129, 10), (2, 5, 5, 5), (1, 1, 1, 1),
                                     (2, 300, 300, 16), (3, 64, 9, 1)])
def test_kernel_finds_the_brute_force_neighbours_sorted(kind, b, m, n, k):
    keys = _clouds(kind, b, n, seed=n + k)
    q = np.ascontiguousarray(keys[:, np.random.default_rng(m).permutation(n)[:m]] if m <= n
                             else _clouds(kind, b, m, seed=m))
    q[:, ::3] += 0.01  # some queries that are not keys
    for threads in (1, 2, 3):
        got = native.knn(q, keys, k, threads)
        assert got is not None, native.status()
        assert got.dtype == np.int64 and got.shape == (b, m, k)
        np.testing.assert_array_equal(got, _brute(q, keys, k))


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_ties_give_a_valid_neighbour_set():
    # a grid with many equal distances: any k of the tied keys is right, but each must be at the k-th
    # distance or closer, with no index twice
    g = np.stack(np.meshgrid(*[np.arange(6, dtype=np.float32)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    got = native.knn(g, g, 7, 2)
    d = ((g[0][:, None] - g[0][None]) ** 2).sum(-1)
    kth = np.sort(d, axis=1)[:, 6]
    mine = np.take_along_axis(d, got[0], axis=1)
    assert (mine <= kth[:, None]).all() and (np.diff(mine, axis=1) >= 0).all()
    assert all(len(set(r)) == 7 for r in got[0].tolist())
    assert (got[0, :, 0] == np.arange(g.shape[1])).all()  # every point finds itself first


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_torch_and_numpy_callers_use_it_and_agree_with_their_fallbacks(fresh, monkeypatch):
    torch.manual_seed(0)
    keys = torch.randn(5, 700, 3)
    q = keys[:, :300].contiguous()
    ref = knn_torch(q, keys, 10)
    assert torch.equal(knn(q, keys, 10), ref)
    assert "compiled" in native.status()
    got = np_knn(q.numpy(), keys.numpy(), 10)
    np.testing.assert_array_equal(got, ref.numpy())  # compiled: sorted, like torch's
    np.testing.assert_array_equal(np.sort(knn_numpy(q.numpy(), keys.numpy(), 10), -1), np.sort(got, -1))
    monkeypatch.setenv("PCSYM_NATIVE", "off")
    assert native.knn(q.numpy(), keys.numpy(), 10) is None and "PCSYM_NATIVE=off" in native.status()
    assert torch.equal(knn(q, keys, 10), ref)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler: pcsym falls back to torch / numpy (same loop)")
@pytest.mark.parametrize("kind", ["ball", "surface", "plane", "far", "ties", "duplicates"])
def test_fps_kernel_picks_the_same_points_as_torch_and_numpy(fresh, kind, monkeypatch):
    """The compiled farthest-point loop picks exactly the points of graph.fps_order's torch spelling and of the
    numpy runtime's (same float32 distances, ties to the lower index, picked points never again), for any
    thread count; non-finite coordinates are left to the callers' spelling."""
    from pcsym.geometry.graph import fps_order, fps_order_torch
    from pcsym.geometry.numpy_graph import fps_order as np_fps

    if kind == "ties":  # a grid: many exactly equal distances
        p = np.stack(np.meshgrid(*[np.arange(6, dtype=np.float32)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    elif kind == "duplicates":  # every point three times: only zero distances left at the end
        p = np.concatenate([_clouds("ball", 2, 40, seed=1)] * 3, axis=1)
    else:
        p = _clouds(kind, 3, 300, seed=7)
    t = torch.from_numpy(p)
    p64 = t.double()
    start = (p64 - p64.mean(1, keepdim=True)).pow(2).sum(-1).argmax(1)
    for m in (0, 1, 17, p.shape[1]):
        ref = fps_order_torch(t, m, start)
        for threads in (1, 2):
            got = native.fps(p, start.numpy(), m, threads)
            assert got is not None and got.dtype == np.int64 and got.shape == (p.shape[0], m)
            np.testing.assert_array_equal(got, ref.numpy())
        assert torch.equal(fps_order(t, m), ref)
        np.testing.assert_array_equal(np_fps(p, m), ref.numpy())
    assert "compiled" in native.status()
    bad = p.copy()
    bad[0, 3, 1] = np.nan
    assert native.fps(bad, start.numpy(), 5) is None
    with pytest.raises(ValueError):
        native.fps(p, np.full(p.shape[0], p.shape[1]), 5)
    lib, out = native._load(), np.empty((p.shape[0], 5), dtype=np.int64)  # the C checks themselves: code 2,
    s_bad = np.full(p.shape[0], p.shape[1], dtype=np.int64)  # which the wrapper reads as ValueError
    assert lib.pcsym_fps(p.ctypes.data, s_bad.ctypes.data, p.shape[0], p.shape[1], 5, out.ctypes.data, 1) == 2
    s_ok = start.numpy().astype(np.int64)
    assert lib.pcsym_fps(p.ctypes.data, s_ok.ctypes.data, p.shape[0], p.shape[1], p.shape[1] + 1,
                         out.ctypes.data, 1) == 2
    monkeypatch.setenv("PCSYM_NATIVE", "off")  # no kernel: the callers' own loops, the same picks
    assert native.fps(p, start.numpy(), 5) is None
    np.testing.assert_array_equal(np_fps(p, 17), fps_order_torch(t, 17, start).numpy())


_CHILD = """
import numpy as np
from pcsym.geometry import native
p = np.random.default_rng(0).normal(size=(1, 50, 3)).astype(np.float32)
d = ((p[0][:, None] - p[0][None]) ** 2).sum(-1)
assert (native.knn(p, p, 3) == np.argsort(d, axis=1)[:, :3]).all(), native.status()
print(native.status())
"""


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_library_is_cached_and_a_damaged_one_is_rebuilt(fresh):
    # in child processes: a process keeps the library it loaded mapped (and dlopen reuses it by name)
    import subprocess
    import sys

    env = dict(os.environ, PCSYM_CACHE_DIR=str(fresh / "cache"))

    def child():
        res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-2000:]

    child()
    libs = list((fresh / "cache" / "native").glob("kernels-*.so"))
    assert len(libs) == 1
    first = libs[0].stat().st_mtime_ns
    child()
    assert libs[0].stat().st_mtime_ns == first  # loaded, not rebuilt
    damaged = libs[0].with_suffix(".tmp")
    damaged.write_bytes(b"not a shared library")
    damaged.replace(libs[0])
    child()
    assert libs[0].stat().st_size > 1000  # rebuilt
    left = sorted((fresh / "cache" / "native").iterdir())
    assert left == [libs[0].with_suffix(".lock"), libs[0]]  # no temporary files left, just the build lock


def test_no_compiler_or_a_failing_one_falls_back_and_says_so_once(fresh, monkeypatch, capsys):
    torch.manual_seed(1)
    keys = torch.randn(2, 100, 3)
    ref = torch.cdist(keys, keys).topk(5, largest=False).indices
    monkeypatch.setenv("CC", str(fresh / "no-such-compiler"))
    assert native.knn(keys.numpy(), keys.numpy(), 5) is None
    assert "no C compiler" in native.status()
    assert torch.equal(knn(keys, keys, 5), ref)
    warned = capsys.readouterr().err.splitlines()
    assert warned == [warned[0]] and warned[0].startswith("pcsym: warning: compiled kernels not used (no C compiler")
    assert "slower torch/numpy path" in warned[0] and "PCSYM_NATIVE=off silences this" in warned[0]
    native.reset()
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    assert native.knn(keys.numpy(), keys.numpy(), 5) is None
    assert "build failed" in native.status() and not native.describe()["active"]
    assert torch.equal(knn(keys, keys, 5), ref)
    np.testing.assert_array_equal(np.sort(np_knn(keys.numpy(), keys.numpy(), 5), -1), np.sort(ref.numpy(), -1))
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 1 and "(build failed: false failed" in warned[0]
    native.reset()
    monkeypatch.setenv("PCSYM_NATIVE", "off")  # chosen, not a failure: no warning
    assert native.knn(keys.numpy(), keys.numpy(), 5) is None and capsys.readouterr().err == ""


_WAITER = """
import time
from pcsym.geometry import native
t = time.perf_counter()
ok = native.available()
print(ok, time.perf_counter() - t)
"""


@pytest.mark.skipif(not HAS_CC or os.name != "posix", reason="no C compiler, or no POSIX file locks")
def test_the_build_is_locked_across_processes(fresh):
    """While one process holds the library's lock (building it), another waits, then loads what was built."""
    import fcntl
    import subprocess
    import sys
    import time

    assert native.available()  # build it here first, so the waiter only has to load it
    target = Path(native._state["path"])
    env = dict(os.environ, PCSYM_CACHE_DIR=str(fresh / "cache"))
    with open(target.with_suffix(".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", _WAITER], env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        assert child.poll() is None  # waiting for the lock
        fcntl.flock(fh, fcntl.LOCK_UN)
    out, _ = child.communicate(timeout=120)
    ok, waited = out.split()
    assert ok == "True" and float(waited) >= 2.5


def test_cache_off_still_builds_in_a_private_folder_removed_at_exit(fresh, monkeypatch):
    if not HAS_CC:
        pytest.skip("no C compiler")
    import subprocess
    import sys

    monkeypatch.setenv("PCSYM_CACHE_DIR", "off")
    pts = _clouds("surface", 2, 80, 3)
    np.testing.assert_array_equal(native.knn(pts, pts, 4), _brute(pts, pts, 4))
    assert not (fresh / "cache").exists()
    code = "from pathlib import Path; from pcsym.geometry import native; native.status(); print(Path(native._state['path']).parent)"
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True, timeout=120)
    folder = res.stdout.strip().splitlines()[-1]
    assert res.returncode == 0 and "pcsym-native-" in folder, res.stderr[-2000:]
    assert not os.path.exists(folder)  # the process's private copy is gone
