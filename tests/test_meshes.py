"""Tests for pcsym.data.meshes: readers (real files + generated broken ones), sampling, normalization."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from pcsym.errors import PcsymError
from pcsym.data.meshes import (
    MIN_CLOUD_POINTS,
    Geometry,
    load_cloud,
    normalize,
    read_geometry,
    read_point_table,
    sample_surface,
)

FIX = Path(__file__).parent / "fixtures"
BATHTUB = FIX / "ModelNet40_off/ModelNet40/bathtub/train/bathtub_0002.off"  # header bug: "OFF700 664 0"
BED = FIX / "ModelNet40_off/ModelNet40/bed/train/bed_0001.off"
TEAPOT = FIX / "meshes/teapot.stl"
QUADKNOT = FIX / "meshes/quadknot.obj"

CUBE_V = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
CUBE_QUADS = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]


def off_text(vertices, polygons, header_bug=False) -> str:
    counts = f"{len(vertices)} {len(polygons)} 0"
    head = f"OFF{counts}\n" if header_bug else f"OFF\n{counts}\n"
    return (
        head
        + "".join(" ".join(repr(float(c)) for c in v) + "\n" for v in vertices)
        + "".join(f"{len(p)} " + " ".join(map(str, p)) + "\n" for p in polygons)
    )


def parse_off_reference(path: Path):
    """Independent minimal parse of an OFF file (counts + polygon sizes) for comparisons."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    first = lines[0][0][3:]
    counts = ([first] + lines[0][1:]) if first else lines[1]
    nv, nf = int(counts[0]), int(counts[1])
    body = lines[1:] if first else lines[2:]
    vertices = np.array(body[:nv], float)[:, :3]
    sizes = [int(r[0]) for r in body[nv : nv + nf]]
    return nv, nf, vertices, sizes


def random_cloud(n=200, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3))


# ------------------------------------------------------------------------------------------
# readers on real files
# ------------------------------------------------------------------------------------------


def test_off_header_bug_counts_exact():
    assert BATHTUB.read_text().startswith("OFF700 664 0\n")
    nv, nf, ref_v, sizes = parse_off_reference(BATHTUB)
    g = read_geometry(BATHTUB)
    assert (nv, nf) == (700, 664)
    assert g.vertices.shape == (700, 3) and g.vertices.dtype == np.float64
    np.testing.assert_array_equal(g.vertices, ref_v)
    assert g.faces.shape == (sum(k - 2 for k in sizes), 3) and g.faces.dtype == np.int64
    assert g.normals is None and g.is_mesh


def test_off_proper_header_crlf_trailing_spaces(tmp_path):
    nv, nf, ref_v, sizes = parse_off_reference(BED)
    g = read_geometry(BED)
    assert g.vertices.shape == (nv, 3) and len(g.faces) == sum(k - 2 for k in sizes)
    crlf = tmp_path / "bed_crlf.off"
    crlf.write_bytes(b"".join(ln.rstrip() + b"  \r\n" for ln in BED.read_bytes().splitlines()))
    g2 = read_geometry(crlf)
    np.testing.assert_array_equal(g2.vertices, g.vertices)
    np.testing.assert_array_equal(g2.faces, g.faces)


def test_off_polygons_fan_triangulated(tmp_path):
    p = tmp_path / "cube.off"
    p.write_text(off_text(CUBE_V, CUBE_QUADS, header_bug=True))
    g = read_geometry(p)
    assert g.faces.shape == (12, 3)
    np.testing.assert_array_equal(g.faces[:2], [[0, 1, 3], [0, 3, 2]])


def test_obj_quads_triangulated():
    g = read_geometry(QUADKNOT)  # open3d would drop all of these quad faces
    assert g.vertices.shape == (1440, 3)
    assert g.faces.shape == (2 * 1440, 3)
    assert g.faces.min() == 0 and g.faces.max() == 1439


def test_obj_negative_indices_and_point_cloud(tmp_path):
    mesh = tmp_path / "tri.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvn 0 0 1\nf -3//1 -2//1 -1//1\n")
    g = read_geometry(mesh)
    np.testing.assert_array_equal(g.faces, [[0, 1, 2]])
    cloud = tmp_path / "cloud.obj"
    cloud.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in random_cloud(100)))
    g = read_geometry(cloud)
    assert g.faces is None and g.vertices.shape == (100, 3)


def test_binary_stl_triangle_count():
    n_tri = struct.unpack("<I", TEAPOT.read_bytes()[80:84])[0]
    g = read_geometry(TEAPOT)
    assert len(g.faces) == n_tri == 894
    assert np.isfinite(g.vertices).all()


def test_ascii_stl_and_ply(tmp_path):
    tris = np.array([[0, 1, 3], [0, 3, 2]])
    quad = CUBE_V[[0, 1, 2, 3]]
    stl = tmp_path / "quad.stl"
    stl.write_text(
        "solid q\n"
        + "".join(
            "facet normal 0 0 0\nouter loop\n" + "".join(f"vertex {a} {b} {c}\n" for a, b, c in quad[t]) + "endloop\nendfacet\n"
            for t in tris
        )
        + "endsolid q\n"
    )
    g = read_geometry(stl)
    assert len(g.faces) == 2
    ply = tmp_path / "cube.ply"
    ply.write_text(
        "ply\nformat ascii 1.0\nelement vertex 8\nproperty float x\nproperty float y\nproperty float z\n"
        "element face 6\nproperty list uchar int vertex_indices\nend_header\n"
        + "".join(" ".join(map(str, v)) + "\n" for v in CUBE_V)
        + "".join("4 " + " ".join(map(str, q)) + "\n" for q in CUBE_QUADS)
    )
    g = read_geometry(ply)
    np.testing.assert_allclose(g.vertices, CUBE_V)
    tri = g.vertices[g.faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    assert area == pytest.approx(24.0)


def test_ply_point_cloud_with_normals(tmp_path):
    pts = random_cloud(100)
    nrm = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    ply = tmp_path / "cloud.ply"
    ply.write_text(
        "ply\nformat ascii 1.0\nelement vertex 100\n"
        + "".join(f"property float {c}\n" for c in ("x", "y", "z", "nx", "ny", "nz"))
        + "end_header\n"
        + "".join(" ".join(f"{c:.6f}" for c in row) + "\n" for row in np.hstack([pts, nrm]))
    )
    g = read_geometry(ply)
    assert g.faces is None
    np.testing.assert_allclose(g.vertices, pts, atol=1e-5)
    np.testing.assert_allclose(g.normals, nrm, atol=1e-5)


@pytest.mark.parametrize("sep", [" ", ",", "\t"])
def test_point_cloud_text(tmp_path, sep):
    pts = random_cloud(80)
    p = tmp_path / "c.xyz"
    p.write_text("# comment\n" + "".join(sep.join(f"{c:.6f}" for c in r) + "\n" for r in pts))
    g = read_geometry(p)
    np.testing.assert_allclose(g.vertices, pts, atol=1e-6)
    assert g.normals is None
    six = tmp_path / "c.pts"
    six.write_text("80\n" + "".join(" ".join(f"{c:.6f}" for c in r) + " 0 0 2\n" for r in pts))  # count header
    g = read_geometry(six)
    np.testing.assert_allclose(g.normals, np.tile([0, 0, 1.0], (80, 1)))  # renormalized


def test_npy_and_nan_rows_dropped_from_clouds(tmp_path):
    pts = random_cloud(100)
    pts[:5] = np.nan
    p = tmp_path / "c.npy"
    np.save(p, pts)
    g = read_geometry(p)
    assert g.vertices.shape == (95, 3)


def test_read_point_table_real_normal_resampled_file():
    f = FIX / "modelnet_normal_resampled/bed/bed_0026.txt"
    t = read_point_table(f)
    assert t.shape == (800, 6)
    np.testing.assert_allclose(t[0], [float(x) for x in f.read_text().splitlines()[0].split(",")])


# ------------------------------------------------------------------------------------------
# error cases: each raises PcsymError naming the file
# ------------------------------------------------------------------------------------------


def _teapot_truncated(p: Path):
    p.write_bytes(TEAPOT.read_bytes()[:-100])


def _nan_off(p: Path):
    v = CUBE_V.copy()
    v[2] = np.nan
    v[5, 1] = np.inf
    p.write_text(off_text(v, CUBE_QUADS))


def _utf16(p: Path):
    p.write_text(off_text(CUBE_V, CUBE_QUADS), encoding="utf-16")


def _utf16_nobom(p: Path):
    p.write_bytes("\n".join(" ".join(map(str, r)) for r in random_cloud(100)).encode("utf-16-le"))


def _zero_area(p: Path):
    p.write_text(off_text([[0, 0, 0], [1, 1, 1], [2, 2, 2]], [[0, 1, 2]]))


def _out_of_range(p: Path):
    p.write_text(off_text(CUBE_V, [[0, 1, 8]]))


def _garbage(p: Path):
    p.write_bytes(np.random.default_rng(0).integers(1, 256, 3000, dtype=np.uint8).tobytes())


def _few_points(p: Path):
    p.write_text("".join(" ".join(map(str, r)) + "\n" for r in random_cloud(MIN_CLOUD_POINTS - 1)))


def _ragged(p: Path):
    p.write_text("".join(" ".join(map(str, r)) + "\n" for r in random_cloud(100)) + "1 2\n")


def _truncated_off(p: Path):
    p.write_text(off_text(CUBE_V, CUBE_QUADS)[:-30])


def _no_vertices_ply(p: Path):
    p.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nend_header\n")


def _truncated_ply(p: Path):
    p.write_text(
        "ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\nproperty float y\n"
        "property float z\nend_header\n"
    )
    with open(p, "ab") as fh:
        fh.write(np.zeros((10, 3), np.float32).tobytes())


def _bad_token_ply(p: Path):
    p.write_text(
        "ply\nformat ascii 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n" + "1 2 3\n" * 50 + "a b c\n" * 50
    )


def _bad_token_stl(p: Path):
    p.write_text("solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex a b c\nvertex 0 1 0\nendloop\nendfacet\nendsolid\n")


ERROR_CASES = {
    "bad_token_ply": ("tok.ply", _bad_token_ply, "could not parse file as PLY: not a number: 'a' on line 58"),
    "bad_token_stl": ("tok.stl", _bad_token_stl, "could not parse file as ASCII STL"),
    "missing": ("gone.off", None, "no such file"),
    "empty": ("empty.off", lambda p: p.write_bytes(b""), "empty"),
    "whitespace": ("blank.xyz", lambda p: p.write_text("\n  \n"), "empty"),
    "unsupported": ("mesh.fbx", lambda p: p.write_text("x"), "unsupported file extension"),
    "truncated_stl": ("teapot.stl", _teapot_truncated, "truncated binary STL (expected 44784 bytes, got 44684)"),
    "tiny_stl": ("tiny.stl", lambda p: p.write_bytes(b"\0" * 40), "truncated binary STL"),
    "nan": ("nan.off", _nan_off, "2 of 8 vertices have non-finite"),
    "utf16_off": ("u16.off", _utf16, "UTF-16"),
    "utf16_xyz": ("u16.xyz", _utf16_nobom, "UTF-16"),
    "utf16_stl": ("u16.stl", lambda p: p.write_text("solid x\nfacet normal 0 0 1\n", encoding="utf-16"), "UTF-16"),
    "zero_area": ("flat.off", _zero_area, "zero"),
    "out_of_range": ("bad.off", _out_of_range, "out of range"),
    "garbage_ply": ("junk.ply", _garbage, "could not parse file as PLY"),
    "garbage_off": ("junk.off", _garbage, "could not parse file as OFF"),
    "garbage_obj": ("junk.obj", _garbage, "could not parse file as OBJ"),
    "garbage_npy": ("junk.npy", _garbage, "could not parse file as NumPy"),
    "garbage_xyz": ("junk.xyz", _garbage, "could not parse file as point-cloud text"),
    "too_few_points": ("few.xyz", _few_points, f"only {MIN_CLOUD_POINTS - 1} finite points"),
    "ragged": ("ragged.txt", _ragged, "columns"),
    "truncated_off": ("cut.off", _truncated_off, "truncated OFF"),
    "no_vertices": ("none.ply", _no_vertices_ply, "no vertices"),
    "truncated_ply": ("cut.ply", _truncated_ply, "could not parse file as PLY"),
    "npy_shape": ("flat.npy", lambda p: np.save(p, np.zeros((100, 4))), "(N, 3) or (N, 6)"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_read_geometry_errors(tmp_path, case):
    name, make, expected = ERROR_CASES[case]
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(PcsymError) as exc:
        read_geometry(path)
    msg = str(exc.value)
    assert str(path) in msg and expected in msg, msg
    assert exc.value.path == str(path) and "\n" not in msg


def test_directory_and_max_vertices(tmp_path):
    with pytest.raises(PcsymError, match="is a directory") as exc:
        read_geometry(tmp_path)
    assert str(tmp_path) in str(exc.value)
    with pytest.raises(PcsymError, match="has 700 vertices, more than --max-vertices 500"):
        read_geometry(BATHTUB, max_vertices=500)
    with pytest.raises(PcsymError, match="more than --max-vertices 100"):
        read_geometry(QUADKNOT, max_vertices=100)


def test_readers_print_nothing(capfd, tmp_path):
    read_geometry(TEAPOT)
    _bad_token_ply(tmp_path / "tok.ply")
    with pytest.raises(PcsymError):
        read_geometry(tmp_path / "tok.ply")  # the reason goes in the error, nothing on stdout/stderr (C level too)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ------------------------------------------------------------------------------------------
# sampling / normalization / load_cloud
# ------------------------------------------------------------------------------------------


def test_sample_surface_area_weighted():
    # triangle A has area 0.5, triangle B (far away) area 1.5: expect a 1:3 split of the points
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 1, 0]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    pts, nrm = sample_surface(v, f, 40000, np.random.default_rng(0))
    assert pts.dtype == np.float32 and pts.shape == (40000, 3)
    share_b = (pts[:, 0] >= 10).mean()
    assert share_b == pytest.approx(0.75, abs=0.01)
    a = pts[pts[:, 0] < 10]
    assert (a[:, :2] >= -1e-6).all() and (a[:, 0] + a[:, 1] <= 1 + 1e-6).all()  # inside triangle A
    np.testing.assert_allclose(a.mean(0), [1 / 3, 1 / 3, 0], atol=0.01)  # uniform -> centroid
    np.testing.assert_allclose(np.abs(nrm[:, 2]), 1.0)


def test_sample_surface_normals_unit_and_outward():
    tris = np.array([[q[0], q[i], q[i + 1]] for q in CUBE_QUADS for i in (1, 2)])
    tris[::2] = tris[::2, ::-1]  # mix the winding so orientation must come from the centroid rule
    pts, nrm = sample_surface(CUBE_V + 5.0, tris, 3000, np.random.default_rng(1))
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-6)
    assert (np.einsum("ij,ij->i", nrm, pts - 5.0) > 0).all()
    # on a cube face the outward normal is the axis of the largest coordinate
    axis = np.abs(pts - 5.0).argmax(1)
    np.testing.assert_allclose(nrm[np.arange(len(pts)), axis], np.sign((pts - 5.0)[np.arange(len(pts)), axis]))


def test_sample_surface_on_real_mesh_is_seeded():
    g = read_geometry(BATHTUB)
    a = sample_surface(g.vertices, g.faces, 500, np.random.default_rng(3))
    b = sample_surface(g.vertices, g.faces, 500, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    lo, hi = g.vertices.min(0) - 1e-4, g.vertices.max(0) + 1e-4
    assert ((a[0] >= lo) & (a[0] <= hi)).all()


def test_normalize():
    pts = random_cloud(300) * 7 + 3
    n = normalize(pts)
    np.testing.assert_allclose(n.mean(0), 0, atol=1e-12)
    assert np.linalg.norm(n, axis=1).max() == pytest.approx(1.0)
    batch = normalize(np.stack([pts, pts * 2]).astype(np.float32))
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], batch[1], atol=1e-6)


@pytest.mark.parametrize("path", [BATHTUB, TEAPOT, QUADKNOT])
def test_load_cloud_meshes(path):
    pts, nrm = load_cloud(path, n_points=512)
    assert pts.shape == nrm.shape == (512, 3) and pts.dtype == nrm.dtype == np.float32
    assert np.isfinite(pts).all() and np.isfinite(nrm).all()
    assert np.linalg.norm(pts, axis=1).max() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    pts2, _ = load_cloud(path, n_points=512)
    np.testing.assert_array_equal(pts, pts2)  # deterministic by default


def test_load_cloud_point_clouds(tmp_path):
    src = FIX / "modelnet_normal_resampled/bed/bed_0026.txt"  # 800 rows with normals
    pts, nrm = load_cloud(src, n_points=1000, rng=np.random.default_rng(0))  # more than available
    assert pts.shape == (1000, 3)
    table = read_point_table(src)
    # given normals are used: each output normal is one of the file's normals
    d = np.abs(nrm[:, None, :] - table[None, :, 3:]).sum(-1).min(1)
    assert d.max() < 1e-3
    xyz = tmp_path / "c.xyz"
    np.savetxt(xyz, table[:, :3])
    pts, nrm = load_cloud(xyz, n_points=256, rng=np.random.default_rng(0))  # normals estimated
    assert len(np.unique(pts, axis=0)) == 256  # without replacement
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    assert (np.einsum("ij,ij->i", nrm, pts - pts.mean(0)) >= 0).mean() > 0.99


def test_geometry_dataclass():
    g = Geometry(np.zeros((3, 3)))
    assert not g.is_mesh
