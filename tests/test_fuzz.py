"""Crash-proof readers (issue 13): no input file, however broken or hostile, makes pcsym crash,
hang or allocate memory out of proportion to the file; it is read, or refused with one
``error: <path>: <reason>`` line and exit 2.

* a seeded mutation fuzz of every mesh we ship or test with, through ``pcsym classify --json`` in
  subprocesses (a crash is seen as a crash, and bisected down to the file that caused it);
* the issue's exact reproduction (repeated 4 KiB blocks in the middle of cycloidal.ply);
* pathological but valid files (millions of degenerate faces, one enormous line) within seconds;
* absurd header counts refused before allocating (peak memory measured in a subprocess).

The mutation engine lives in tests/fuzz_readers.py, which also runs longer campaigns
(``python -m tests.fuzz_readers --help``).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from . import fuzz_readers as fz

ROOT = Path(__file__).resolve().parents[1]
SHARED_MESHES = Path(__file__).resolve().parents[2] / "shared" / "meshes"

SEED = 20240613
N_MUTANTS = 400  # ~25 s on 2 cores: every (seed file, mutation) pair once, then random stacks
BATCH = 63
BATCH_TIMEOUT = 240  # seconds per classify process; a hang shows up as a timeout
SINGLE_TIMEOUT = 60
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _pcsym(*args, timeout=60):
    return subprocess.run([*fz.PCSYM, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV,
                          cwd=ROOT)


def _python(code: str, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=ROOT)


@pytest.fixture(scope="module")
def mutants(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    seeds = fz.real_seeds(shared=SHARED_MESHES.is_dir()) + fz.generated_seeds(tmp / "seeds")
    return fz.make_mutants(seeds, N_MUTANTS, SEED, tmp / "mutants")


def test_mutants_are_read_or_refused_in_one_line(mutants):
    log = []
    summary = fz.run_all(mutants, BATCH, BATCH_TIMEOUT, SINGLE_TIMEOUT, workers=2, log=log.append)
    print(json.dumps({k: v for k, v in summary.items() if k != "bad"}))
    report = "\n".join(f"{Path(f).name}: {p}" for f, p in summary["bad"].items())
    assert not summary["bad"], (
        f"{len(summary['bad'])} of {len(mutants)} mutants misbehaved (reproduce: pcsym classify FILE; "
        f"mutants in {mutants[0].parent}):\n{report}\n" + "\n".join(log[:20])
    )
    assert sum(summary["outcomes"].values()) == len(mutants)
    # a fuzz run where everything is refused (or read) would prove little
    assert summary["outcomes"]["ok"] > 20 and summary["outcomes"]["error"] > 150, summary["outcomes"]


def test_every_mutation_and_format_is_exercised(mutants):
    names = {p.name.split("_", 1)[1] for p in mutants}
    for mutation in fz.MUTATORS:
        assert any(mutation in n for n in names), mutation
    assert {p.suffix for p in mutants} >= {".off", ".obj", ".ply", ".stl", ".xyz", ".txt", ".pts", ".npy"}


def test_a_crash_or_hang_is_attributed_to_its_file(tmp_path, monkeypatch):
    """The harness itself: a classify that segfaults on one file and hangs on another is
    bisected down to exactly those two files."""
    fake = tmp_path / "fake_pcsym.py"
    fake.write_text(textwrap.dedent("""
        import json, os, signal, sys, time
        files = sys.argv[5:]  # after: classify --json --model NAME
        if any("boom" in os.path.basename(f) for f in files):
            os.kill(os.getpid(), signal.SIGSEGV)
        if any("hang" in os.path.basename(f) for f in files):
            time.sleep(600)
        print(json.dumps({"results": [{"file": f, "ok": True, "top": []} for f in files]}))
    """))
    monkeypatch.setattr(fz, "PCSYM", [sys.executable, str(fake)])
    files = [tmp_path / f"{i}_{'boom' if i == 0 else 'hang' if i == 3 else 'fine'}.ply" for i in range(4)]
    summary = fz.run_all(files, batch=4, timeout=3, single_timeout=3, log=lambda *_: None)
    assert sorted(Path(f).name for f in summary["bad"]) == ["0_boom.ply", "3_hang.ply"], summary["bad"]
    assert "signal 11" in summary["bad"][str(files[0])][0] and "timeout" in summary["bad"][str(files[3])][0]
    assert summary["outcomes"]["ok"] == 2


# ------------------------------------------------------------------------------------------
# the issue's reproduction
# ------------------------------------------------------------------------------------------


def _colored_binary_ply() -> bytes:
    """A PLY with cycloidal.ply's structure: binary little-endian, float xyz + uchar RGBA per
    vertex, uchar-counted int triangle lists + uchar RGBA per face (a torus, ~0.5 MB)."""
    n, m = 120, 60
    u, w = np.meshgrid(np.linspace(0, 2 * np.pi, n, endpoint=False), np.linspace(0, 2 * np.pi, m, endpoint=False))
    xyz = np.stack([(2 + np.cos(w)) * np.cos(u), (2 + np.cos(w)) * np.sin(u), np.sin(w)], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n), np.arange(m))
    a, b = j * n + i, j * n + (i + 1) % n
    c, d = ((j + 1) % m) * n + i, ((j + 1) % m) * n + (i + 1) % n
    tris = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    verts = np.zeros(len(xyz), dtype=[("p", "<f4", (3,)), ("rgba", "u1", (4,))])
    verts["p"], verts["rgba"] = xyz, (200, 100, 50, 255)
    faces = np.zeros(len(tris), dtype=[("n", "u1"), ("i", "<i4", (3,)), ("rgba", "u1", (4,))])
    faces["n"], faces["i"], faces["rgba"] = 3, tris, (10, 20, 30, 255)
    rgba = "".join(f"property uchar {c}\n" for c in ("red", "green", "blue", "alpha"))
    header = (f"ply\nformat binary_little_endian 1.0\ncomment VCGLIB generated\nelement vertex {len(verts)}\n"
              "property float x\nproperty float y\nproperty float z\n" + rgba +
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\n" + rgba + "end_header\n")
    return header.encode() + verts.tobytes() + faces.tobytes()


def test_issue_13_reproduction_ends_with_one_line(tmp_path):
    src = SHARED_MESHES / "cycloidal.ply"
    b = src.read_bytes() if src.exists() else _colored_binary_ply()
    intact = tmp_path / "intact.ply"
    intact.write_bytes(b)
    k = len(b) // 2
    x = tmp_path / "x.ply"
    x.write_bytes(b[:k] + b[k : k + 4096] * 3 + b[k:])  # the issue's exact mutation
    r = _pcsym("classify", x, "--model", "o2")
    assert r.returncode in (0, 2), f"exit {r.returncode} (a negative code is a signal): {r.stderr[-500:]}"
    assert "Traceback" not in r.stdout + r.stderr
    if r.returncode == 2:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {x}: "), r.stderr
    assert _pcsym("classify", intact, "--model", "o2", "--json").returncode == 0


# ------------------------------------------------------------------------------------------
# pathological but valid files: seconds, not minutes
# ------------------------------------------------------------------------------------------

TIME_LIMIT = 20.0  # per file, for read + sample on a loaded 2-core CI box; locally ~1 s each


def _pathological(d: Path) -> list[Path]:
    four = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    xyz = "property float x\nproperty float y\nproperty float z\n"
    out = {}
    n = 1_500_000  # one real triangle, then degenerate ones
    rows = np.zeros(n, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    rows["n"], rows["i"][0] = 3, (0, 1, 2)
    out["degenerate.ply"] = (f"ply\nformat binary_little_endian 1.0\nelement vertex 4\n{xyz}element face {n}\n"
                             "property list uchar int vertex_indices\nend_header\n").encode() + four.tobytes() + rows.tobytes()
    m = 600_000  # alternating triangles and quads: the row-by-row path
    tri, quad = struct.pack("<B3i", 3, 0, 1, 2), struct.pack("<B4i", 4, 0, 1, 2, 3)
    out["varying.ply"] = (f"ply\nformat binary_little_endian 1.0\nelement vertex 4\n{xyz}element face {m}\n"
                          "property list uchar int vertex_indices\nend_header\n").encode() + four.tobytes() + (tri + quad) * (m // 2)
    out["degenerate.off"] = (f"OFF\n4 {m} 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n" + "3 0 0 0\n" * (m - 1)).encode()
    out["one_face.obj"] = ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf " + "1 2 3 4 " * (m // 4) + "\n").encode()
    out["one_line.xyz"] = b"1.5 " * 2_000_000 + b"\n"
    # one enormous token that is almost a number (a quadratic regex once hung on this)
    out["long_token.xyz"] = b"1 2 3\n" * 70 + b"1 2 " + b"9" * 3_000_000 + b"e5e 3\n"
    out["long_token.off"] = b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 " + b"2" * 3_000_000 + b".5.\n"
    out["one_line_cloud.ply"] = (f"ply\nformat ascii 1.0\nelement vertex {m // 3}\n{xyz}end_header\n").encode() + b"0.25 " * m
    out["long_comment.ply"] = (b"ply\nformat ascii 1.0\ncomment " + b"x" * 20_000_000 + f"\nelement vertex 3\n{xyz}"
                               "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n"
                               "3 0 1 2\n".encode())
    facet = b"facet normal 0 0 1\n outer loop\n  vertex 0 0 0\n  vertex 1 0 0\n  vertex 0 1 0\n endloop\nendfacet\n"
    out["many_facets.stl"] = b"solid x\n" + facet * 200_000 + b"endsolid x\n"
    paths = []
    for name, data in out.items():
        (d / name).write_bytes(data)
        paths.append(d / name)
    return paths


def test_pathological_valid_files_finish_in_seconds(tmp_path):
    files = _pathological(tmp_path)
    r = _python("""
        import json, sys, time
        from pcsym.errors import PcsymError
        from pcsym.data.meshes import load_cloud
        out = {}
        for f in sys.argv[1:]:
            t = time.perf_counter()
            try:
                load_cloud(f, n_points=1024)
                what = "ok"
            except PcsymError as exc:
                what = "error: " + str(exc)
            out[f] = [time.perf_counter() - t, what]
        print(json.dumps(out))
    """, *files, timeout=len(files) * TIME_LIMIT + 60)
    assert r.returncode == 0 and not r.stderr, (r.returncode, r.stderr[-2000:])
    timing = json.loads(r.stdout)
    print({Path(f).name: round(t, 2) for f, (t, _) in timing.items()})
    for f, (seconds, what) in timing.items():
        assert seconds < TIME_LIMIT, f"{Path(f).name} took {seconds:.1f}s ({what[:200]})"
        assert what == "ok" or what.startswith(f"error: {f}: "), what
    assert timing[str(tmp_path / "degenerate.ply")][1] == "ok"  # one real triangle is enough
    assert timing[str(tmp_path / "varying.ply")][1] == "ok"


# ------------------------------------------------------------------------------------------
# memory: counts are checked against the bytes present before anything is allocated
# ------------------------------------------------------------------------------------------

HUGE = 99_999_999


def _lying_headers(d: Path) -> list[Path]:
    xyz = "property float x\nproperty float y\nproperty float z\n"
    lie = {
        "vertices.ply": f"ply\nformat binary_little_endian 1.0\nelement vertex {HUGE}\n{xyz}end_header\n".encode() + bytes(900),
        "vertices_ascii.ply": f"ply\nformat ascii 1.0\nelement vertex {HUGE}\n{xyz}end_header\n".encode() + b"0 0 0\n" * 150,
        "faces.ply": (f"ply\nformat binary_big_endian 1.0\nelement vertex 3\n{xyz}element face {HUGE}\n"
                      "property list uint uint vertex_indices\nend_header\n").encode() + bytes(36) + bytes(900),
        "faces_ascii.ply": (f"ply\nformat ascii 1.0\nelement vertex 3\n{xyz}element face {HUGE}\n"
                            "property list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n").encode()
                           + b"3 0 1 2\n" * 100,
        "other_element.ply": (f"ply\nformat binary_little_endian 1.0\nelement vertex 3\n{xyz}element edge {HUGE}\n"
                              "property int vertex1\nproperty int vertex2\nend_header\n").encode() + bytes(900),
        "vertices.off": f"OFF\n{HUGE} 1 0\n".encode() + b"0 0 0\n" * 150,
        "faces.off": f"OFF\n3 {HUGE} 0\n0 0 0\n1 0 0\n0 1 0\n".encode() + b"3 0 1 2\n" * 100,
        "polygon.off": b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n" + f"{HUGE} 0 1 2\n".encode(),
        "count.stl": bytes(80) + struct.pack("<I", HUGE) + bytes(900),
        "shape.npy": b"\x93NUMPY\x01\x00v\x00" + (f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({HUGE}, 3), }}"
                                                 .ljust(117) + "\n").encode() + bytes(900),
    }
    for name, data in lie.items():
        (d / name).write_bytes(data)
    return [d / name for name in lie]


def test_absurd_counts_are_refused_before_allocating(tmp_path):
    files = _lying_headers(tmp_path)
    r = _python("""
        import json, resource, sys, tracemalloc
        from pcsym.errors import PcsymError
        from pcsym.data.meshes import read_geometry
        def rss():  # peak resident set size so far, bytes (ru_maxrss is KiB on Linux)
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        base = rss()
        tracemalloc.start()
        out = {}
        for f in sys.argv[1:]:
            for limit in (2_000_000, 10**12):  # the default, and one that lets the byte check decide
                try:
                    read_geometry(f, max_vertices=limit)
                    out[f"{f}|{limit}"] = "read"
                except PcsymError as exc:
                    out[f"{f}|{limit}"] = str(exc)
        print(json.dumps({"rss_delta": rss() - base, "traced_peak": tracemalloc.get_traced_memory()[1], "out": out}))
    """, *files)
    assert r.returncode == 0 and not r.stderr, r.stderr[-2000:]
    res = json.loads(r.stdout)
    print(f"peak RSS delta {res['rss_delta'] / 2**20:.1f} MiB, traced peak {res['traced_peak'] / 2**20:.2f} MiB")
    assert res["rss_delta"] < 200 * 2**20 and res["traced_peak"] < 200 * 2**20, res
    for key, msg in res["out"].items():
        f, limit = key.split("|")
        assert msg.startswith(f"{f}: ") and "\n" not in msg, (key, msg)
        if limit == "2000000" and Path(f).name in ("vertices.ply", "vertices_ascii.ply", "vertices.off", "shape.npy"):
            assert "--max-vertices" in msg, msg  # enforced from the header, before the body
        else:
            assert "--max-vertices" not in msg, msg


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_devices_and_huge_files_are_refused_unread(tmp_path):
    """Reading a FIFO would block forever and /dev/zero never ends; a (sparse) file far larger than
    --max-vertices allows is refused before a byte of it is read."""
    os.mkfifo(tmp_path / "pipe.ply")
    (tmp_path / "zero.stl").symlink_to("/dev/zero")
    with open(tmp_path / "sparse.off", "wb") as fh:
        fh.truncate(3 * 2**30)  # 3 GiB of holes: nothing on disk
    r = _pcsym("classify", tmp_path / "pipe.ply", tmp_path / "zero.stl", tmp_path / "sparse.off", "--model", "o2",
               "--json", timeout=120)
    assert r.returncode == 2, r.stderr
    errors = {Path(x["file"]).name: x["error"] for x in json.loads(r.stdout)["results"]}
    assert "not a regular file" in errors["pipe.ply"] and "not a regular file" in errors["zero.stl"]
    assert "more than the 1024000000 allowed with --max-vertices 2000000" in errors["sparse.off"]  # 512 B per vertex
