"""Table-driven: every kind of broken input gets one clear line on stderr, exit 2, no traceback,
and never touches existing outputs. The corpus is generated from the shipped sample meshes."""

import shutil
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from pcsym.cli import app

from .conftest import SAMPLE, SHARED

runner = CliRunner()
BED = SAMPLE / "meshes" / "bed_0001.off"
TEAPOT = SAMPLE / "meshes" / "teapot.stl"


def _corpus(d):
    """name -> (path, substring expected in the message)."""
    off = BED.read_text()
    lines = off.splitlines()
    nv = int(lines[1].split()[0])
    c = {}

    def w(name, data, expect):
        p = d / name
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        c[name] = (p, expect)

    w("empty.off", b"", "empty")
    stl = TEAPOT.read_bytes()
    w("truncated.stl", stl[: len(stl) // 2], "truncated")
    nan = list(lines)
    nan[2] = "nan nan nan"
    w("nan.off", "\n".join(nan), "non-finite")
    w("garbage.ply", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "PLY")
    w("garbage.obj", b"\x00\x01\x02 nonsense \xff" * 50, "")
    w("utf16.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n".encode("utf-16"), "UTF-16")
    w("flat.off", "OFF\n3 1 0\n0 0 0\n1 1 1\n2 2 2\n3 0 1 2\n", "zero")  # collinear: zero area
    w("few_points.xyz", "\n".join(f"{i} {i*i} {i%3}" for i in range(10)), "64")
    w("mesh.docx", b"PK\x03\x04", "unsupported")
    header = b"\x00" * 80 + struct.pack("<I", 5)
    w("lying_count.stl", header + b"\x00" * 50, "truncated")
    (d / "a_directory.obj").mkdir()
    c["a_directory.obj"] = (d / "a_directory.obj", "")
    c["missing.obj"] = (d / "missing.obj", "")
    return c


def _corpus_params():
    return ["empty.off", "truncated.stl", "nan.off", "garbage.ply", "garbage.obj", "utf16.obj", "flat.off",
            "few_points.xyz", "mesh.docx", "lying_count.stl", "missing.obj"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("name", _corpus_params())
def test_classify_bad_file(corpus, name):
    path, expect = corpus[name]
    r = runner.invoke(app, ["classify", str(path), "--model", "o2"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and name in err[0], r.stderr
    assert expect.lower() in err[0].lower(), err[0]
    assert "Traceback" not in r.output


def test_too_many_vertices_guard(corpus):
    r = runner.invoke(app, ["classify", str(BED), "--model", "o2", "--max-vertices", "100"])
    assert r.exit_code == 2 and "--max-vertices" in r.stderr


def test_point_cloud_without_faces_is_classified(tmp_path):
    pts = np.random.default_rng(0).normal(size=(500, 3))
    np.savetxt(tmp_path / "cloud.xyz", pts)
    r = runner.invoke(app, ["classify", str(tmp_path / "cloud.xyz"), "--model", "o2", "--json"])
    assert r.exit_code == 0, r.output


def test_directory_input_reports_each_file(tmp_path):
    shutil.copy(BED, tmp_path / "bed.off")
    (tmp_path / "broken.off").write_text("OFF\n3 1 0\n0 0\n")
    r = runner.invoke(app, ["classify", str(tmp_path), "--model", "o2"])
    assert r.exit_code == 2
    assert "broken.off" in r.stderr and "bed.off" in r.stdout


@pytest.mark.skipif(not (SHARED / "meshes").exists(), reason="real-world meshes in ../shared (see README)")
def test_real_world_meshes_classify():
    files = sorted((SHARED / "meshes").glob("*.*"))
    files = [f for f in files if f.suffix in (".obj", ".ply", ".stl", ".off")]
    r = runner.invoke(app, ["classify", *map(str, files), "--model", "o2", "--json"])
    assert r.exit_code == 0, r.output


def test_dataset_dir_in_no_known_layout(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "no known dataset layout" in r.stderr


def test_failed_training_input_never_destroys_existing_outputs(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"precious")
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "nothing"), "--out", str(out), "--force"])
    assert r.exit_code == 2
    assert (out / "best.pt").read_bytes() == b"precious"


def test_bad_flags():
    r = runner.invoke(app, ["classify", str(BED), "--top-k", "0", "--model", "o2"])
    assert r.exit_code == 2 and "--top-k" in r.stderr
    r = runner.invoke(app, ["train", "--data", str(SAMPLE), "--out", "x", "--device", "tpu"])
    assert r.exit_code == 2 and "--device" in r.stderr
