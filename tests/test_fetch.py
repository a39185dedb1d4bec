"""Tests for pcsym.data.fetch: downloads from a local 127.0.0.1 server, resume, checksums,
hostile archives.  No test touches the network beyond the loopback interface."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pcsym.errors import PcsymError
from pcsym.data.fetch import KNOWN_DATASETS, download, fetch, safe_extract


# --------------------------------------------------------------------------- local server


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.honor_range``
    is false; ``server.truncate`` cuts the body short (simulates a dropped connection)."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.honor_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if srv.truncate is not None:
            body = body[: srv.truncate]
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server(request):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.honor_range, srv.truncate = {}, [], True, None
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop():
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)

    request.addfinalizer(stop)
    return srv


# --------------------------------------------------------------------------- archive builders

CONTENTS = {
    "toy/train/a.txt": b"alpha\n",
    "toy/test/b.bin": bytes(range(256)) * 64,  # 16 KiB, so halves are meaningful
    "toy/README": b"toy dataset\n",
}


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: incompressible size
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _tar_bytes(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


# --------------------------------------------------------------------------- download


def test_full_download_checksum_and_extraction(server, tmp_path):
    data = _zip_bytes(CONTENTS)
    server.files["/toy.zip"] = data
    dest = download(f"{server.base}/toy.zip", tmp_path / "dl" / "toy.zip", sha256=_sha(data),
                    progress=False)
    assert dest.read_bytes() == data
    assert not dest.with_suffix(".zip.part").exists()
    assert server.requests == [{"path": "/toy.zip", "range": None}]

    out = tmp_path / "out"
    files = safe_extract(dest, out)
    assert files == sorted(out / n for n in CONTENTS)
    for name, content in CONTENTS.items():
        assert (out / name).read_bytes() == content
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_resume_sends_range_and_appends(server, tmp_path):
    data = _zip_bytes(CONTENTS)
    server.files["/toy.zip"] = data
    dest = tmp_path / "toy.zip"
    half = len(data) // 2
    (tmp_path / "toy.zip.part").write_bytes(data[:half])

    download(f"{server.base}/toy.zip", dest, sha256=_sha(data), progress=False)
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert dest.read_bytes() == data
    assert not (tmp_path / "toy.zip.part").exists()


def test_interrupted_download_then_resume(server, tmp_path):
    data = _zip_bytes(CONTENTS)
    server.files["/toy.zip"] = data
    server.truncate = 5000  # connection drops after 5000 bytes
    url, dest = f"{server.base}/toy.zip", tmp_path / "toy.zip"
    with pytest.raises(PcsymError, match="interrupted"):
        download(url, dest, progress=False, timeout=5)
    part = tmp_path / "toy.zip.part"
    assert part.stat().st_size == 5000 and not dest.exists()

    server.truncate = None
    download(url, dest, sha256=_sha(data), progress=False)
    assert server.requests[-1]["range"] == "bytes=5000-"
    assert dest.read_bytes() == data and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _zip_bytes(CONTENTS)
    server.files["/toy.zip"] = data
    server.honor_range = False
    (tmp_path / "toy.zip.part").write_bytes(data[: len(data) // 2])

    download(f"{server.base}/toy.zip", tmp_path / "toy.zip", sha256=_sha(data), progress=False)
    assert server.requests[-1]["range"] is not None  # we asked, the server answered 200
    assert (tmp_path / "toy.zip").read_bytes() == data


def test_complete_part_file_with_416(server, tmp_path):
    data = _zip_bytes(CONTENTS)
    server.files["/toy.zip"] = data
    (tmp_path / "toy.zip.part").write_bytes(data)
    download(f"{server.base}/toy.zip", tmp_path / "toy.zip", sha256=_sha(data), progress=False)
    assert (tmp_path / "toy.zip").read_bytes() == data


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    data = _zip_bytes(CONTENTS)
    server.files["/toy.zip"] = data
    dest = tmp_path / "toy.zip"
    with pytest.raises(PcsymError, match=r"checksum mismatch for .*/toy\.zip: expected 0{64}, got"):
        download(f"{server.base}/toy.zip", dest, sha256="0" * 64, progress=False)
    assert not dest.exists()
    assert not (tmp_path / "toy.zip.part").exists()


def test_http_404(server, tmp_path):
    with pytest.raises(PcsymError, match="HTTP 404"):
        download(f"{server.base}/missing.zip", tmp_path / "missing.zip", progress=False)
    assert not (tmp_path / "missing.zip").exists()


def test_connection_refused_is_pcsym_error(tmp_path):
    import socket

    with socket.socket() as s:  # grab a free port, then close it: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PcsymError, match="cannot download"):
        download(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False, timeout=2)


def test_file_url_and_progress_bar(tmp_path, capsys):
    data = _zip_bytes(CONTENTS)
    src = tmp_path / "src.zip"
    src.write_bytes(data)
    (tmp_path / "copy.zip.part").write_bytes(b"garbage that is not a prefix")
    dest = download(src.as_uri(), tmp_path / "copy.zip", sha256=_sha(data), progress=True)
    assert dest.read_bytes() == data  # file:// ignores Range -> restarted from zero
    assert capsys.readouterr().out == ""  # the progress bar goes to stderr only


def test_invalid_sha256_rejected(tmp_path):
    with pytest.raises(PcsymError, match="invalid sha256"):
        download("file:///nonexistent", tmp_path / "x", sha256="abc", progress=False)


# --------------------------------------------------------------------------- hostile archives


def _zip_with_symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("toy/ok.txt", b"ok")
        info = zipfile.ZipInfo("toy/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _tar_symlink() -> bytes:
    link = tarfile.TarInfo("toy/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    return _tar_bytes([("toy/ok.txt", b"ok"), link])


def _tar_hardlink() -> bytes:
    link = tarfile.TarInfo("toy/hard")
    link.type, link.linkname = tarfile.LNKTYPE, "/etc/passwd"
    return _tar_bytes([("toy/ok.txt", b"ok"), link])


def _tar_device() -> bytes:
    dev = tarfile.TarInfo("toy/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    return _tar_bytes([("toy/ok.txt", b"ok"), dev], mode="w")


HOSTILE = {
    "zip-dotdot": (lambda tmp: _zip_bytes({"toy/ok.txt": b"ok", "../evil.txt": b"x"}), "evil.zip",
                   "../evil.txt"),
    "zip-absolute": (lambda tmp: _zip_bytes({"toy/ok.txt": b"ok", f"{tmp}/abs_evil.txt": b"x"}),
                     "evil.zip", "abs_evil.txt"),
    "zip-symlink": (lambda tmp: _zip_with_symlink(), "evil.zip", "toy/link"),
    "tar-symlink": (lambda tmp: _tar_symlink(), "evil.tar.gz", "toy/link"),
    "tar-dotdot": (lambda tmp: _tar_bytes([("toy/ok.txt", b"ok"), ("toy/../../evil.txt", b"x")]),
                   "evil.tar.gz", "evil.txt"),
    "tar-hardlink": (lambda tmp: _tar_hardlink(), "evil.tar.gz", "toy/hard"),
    "tar-device": (lambda tmp: _tar_device(), "evil.tar", "toy/null"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archive_refused_and_nothing_written(tmp_path, case):
    build, filename, member = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = tmp_path / filename
    archive.write_bytes(build(tmp_path))
    before = _tree(tmp_path)
    target = work / "target"

    with pytest.raises(PcsymError, match=re.escape(member)):
        safe_extract(archive, target)
    assert _tree(tmp_path) == before  # nothing inside target, beside it, or outside it
    assert not target.exists()


def test_tar_bz2_and_xz_and_existing_target(tmp_path):
    for mode, suffix in (("w:bz2", "tar.bz2"), ("w:xz", "tar.xz")):
        archive = tmp_path / f"toy.{suffix}"
        archive.write_bytes(_tar_bytes(list(CONTENTS.items()), mode=mode))
        target = tmp_path / "out"
        target.mkdir(exist_ok=True)
        (target / "keep.txt").write_text("unrelated")
        files = safe_extract(archive, target)  # second round replaces toy/ in place
        assert files == sorted(target / n for n in CONTENTS)
        assert (target / "keep.txt").read_text() == "unrelated"
        assert _tree(target) >= set(CONTENTS)
        assert not [p for p in target.iterdir() if p.name.startswith(".")]


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"hello")
    with pytest.raises(PcsymError, match="not a zip or tar"):
        safe_extract(bogus, tmp_path / "out")


# --------------------------------------------------------------------------- fetch


def test_unknown_dataset_suggests_closest(tmp_path):
    with pytest.raises(PcsymError) as err:
        fetch("modelnet40_ply_hdf5", tmp_path)
    msg = str(err.value)
    assert "did you mean 'modelnet40_ply_hdf5_2048'" in msg
    for name in KNOWN_DATASETS:
        assert name in msg
    assert not any(tmp_path.iterdir())


def test_known_datasets_registry():
    for name, entry in KNOWN_DATASETS.items():
        assert entry["url"].endswith(entry["archive"])
        assert entry["layout"] in {"h5", "normal_resampled", "off"}
        assert entry["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])


def test_fetch_known_name_with_mirror_is_idempotent(server, tmp_path):
    data = _zip_bytes({"modelnet40_ply_hdf5_2048/ply_data_train0.h5": b"h5",
                       "modelnet40_ply_hdf5_2048/shape_names.txt": b"airplane\n"})
    server.files["/mirror/m.zip"] = data
    url = f"{server.base}/mirror/m.zip"
    out = fetch("MODELNET40_PLY_HDF5_2048", tmp_path, url=url, sha256=_sha(data), progress=False)
    assert out == tmp_path / "modelnet40_ply_hdf5_2048"
    assert (out / "shape_names.txt").read_bytes() == b"airplane\n"
    assert (tmp_path / "modelnet40_ply_hdf5_2048.zip").read_bytes() == data

    n = len(server.requests)
    assert fetch("modelnet40_ply_hdf5_2048", tmp_path, url=url, progress=False) == out
    assert len(server.requests) == n  # already there: no new request


def test_fetch_url_without_extract(server, tmp_path):
    data = _tar_bytes(list(CONTENTS.items()))
    server.files["/toy.tar.gz"] = data
    archive = fetch(f"{server.base}/toy.tar.gz", tmp_path, extract=False, progress=False)
    assert archive == tmp_path / "toy.tar.gz" and archive.read_bytes() == data
    out = fetch(f"{server.base}/toy.tar.gz", tmp_path, progress=False)
    assert out == tmp_path / "toy"
    assert len(server.requests) == 1  # the archive was reused
