"""Download and unpack the public ModelNet releases (stdlib networking only).

Three building blocks, usable on their own:

* :func:`download` streams a URL (``http(s)://`` or ``file://``) into ``<dest>.part``,
  resumes an interrupted ``.part`` with an HTTP ``Range`` request, optionally checks a
  SHA-256 and renames the finished file onto ``dest``.
* :func:`safe_extract` unpacks a zip or tar(.gz/.bz2/.xz) archive after validating *every*
  member (no absolute paths, no ``..`` escapes, no links, no device files), through a
  temporary folder so that an interrupted extraction never leaves a half-populated target.
* :func:`fetch` combines both for a name from :data:`KNOWN_DATASETS` or a plain URL.

Every user-facing failure (network, HTTP status, checksum, hostile archive, unknown name)
is raised as :class:`~pcsym.errors.PcsymError` with a one-line message.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import nullcontext
from pathlib import Path

from pcsym import __version__
from pcsym.errors import PcsymError
from pcsym.files import make_staging_dir

__all__ = ["KNOWN_DATASETS", "download", "safe_extract", "fetch"]

#: Public ModelNet releases.  ``sha256`` is ``None`` where no checksum is published or
#: known to us (we do not invent one): the user can pin one with ``--sha256`` (the
#: ``sha256=`` argument of :func:`fetch`).  The Stanford ``shapenet.cs.stanford.edu``
#: host has been unreliable for years; ``--url`` (``url=``) points a known name at a mirror.
#: ``extracted_dir`` is the top-level folder the archive unpacks to.
KNOWN_DATASETS: dict[str, dict] = {
    "modelnet40_ply_hdf5_2048": {
        "url": "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip",
        "sha256": None,  # not published; pass --sha256 to verify
        "archive": "modelnet40_ply_hdf5_2048.zip",
        "extracted_dir": "modelnet40_ply_hdf5_2048",
        "description": "ModelNet40, 2048 points per shape with normals, HDF5 shards "
        "(ply_data_train*.h5 / ply_data_test*.h5), as used by PointNet",
        "layout": "h5",
    },
    "modelnet40_normal_resampled": {
        "url": "https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip",
        "sha256": None,  # not published; pass --sha256 to verify
        "archive": "modelnet40_normal_resampled.zip",
        "extracted_dir": "modelnet40_normal_resampled",
        "description": "ModelNet40, 10k points per shape with normals, one text file per "
        "shape (<class>/<class>_NNNN.txt) plus train/test split lists, as used by PointNet++",
        "layout": "normal_resampled",
    },
    "ModelNet40": {
        "url": "http://modelnet.cs.princeton.edu/ModelNet40.zip",
        "sha256": None,  # not published; pass --sha256 to verify
        "archive": "ModelNet40.zip",
        "extracted_dir": "ModelNet40",
        "description": "ModelNet40 original meshes, 40 classes, OFF files "
        "(<class>/{train,test}/<class>_NNNN.off)",
        "layout": "off",
    },
    "ModelNet10": {
        "url": "http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip",
        "sha256": None,  # not published; pass --sha256 to verify
        "archive": "ModelNet10.zip",
        "extracted_dir": "ModelNet10",
        "description": "ModelNet10 original meshes, 10 classes, OFF files "
        "(<class>/{train,test}/<class>_NNNN.off)",
        "layout": "off",
    },
}

_CHUNK = 1 << 20  # 1 MiB read size
_USER_AGENT = f"pcsym/{__version__} (+python-urllib)"
_JUNK_TOPLEVEL = {"__MACOSX"}  # macOS resource-fork folder found in some zips


# --------------------------------------------------------------------------- download


def _normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise PcsymError(f"invalid sha256 {sha256!r}: expected 64 hexadecimal digits")
    return value


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """Parse ``Content-Range`` -> (first byte or None, complete length or None)."""
    if not header:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _open(url: str, offset: int, timeout: float):
    """Open ``url``, asking for bytes from ``offset`` on when ``offset > 0``.

    Returns ``(response, offset)`` where ``offset`` is where the response body starts in
    the file: the requested offset for a matching ``206``, ``0`` when the server ignored
    the range (``200``, ``file://``) or answered with a range we did not ask for.
    ``response`` is ``None`` when the server says the partial file is already complete.
    """
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable
            _, total = _content_range(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:  # the .part already holds the whole file
                return None, offset
            return _open(url, 0, timeout)  # stale/oversized partial file: start over
        raise
    status = getattr(response, "status", None)  # None for file:// responses
    if offset and status == 206:
        start, _ = _content_range(response.headers.get("Content-Range"))
        if start == offset:
            return response, offset
        response.close()
        return _open(url, 0, timeout)
    return response, 0


def _progress_bar(enabled: bool, description: str):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Data is streamed into ``<dest>.part``.  If that file already exists (an earlier,
    interrupted run) the download resumes with ``Range: bytes=<size>-``: a ``206`` answer
    is appended, a server that ignores the range (``200``) is re-read from byte zero.
    Network failures keep the ``.part`` file so the next call can resume.

    When ``sha256`` is given the finished file is checked; on mismatch the ``.part`` file
    is deleted and :class:`PcsymError` is raised.  On success the ``.part`` file is renamed
    onto ``dest`` (same folder, so the rename is atomic).  ``file://`` URLs are supported.
    A rich progress bar is drawn on stderr unless ``progress=False``.
    """
    dest = Path(dest)
    expected = _normalize_sha256(sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    offset = part.stat().st_size if part.is_file() else 0

    try:
        response, offset = _open(url, offset, timeout)
        digest = hashlib.sha256()
        if offset:
            _hash_file(part, digest)  # the kept prefix counts towards the checksum
        written = offset
        if response is not None:
            with response:
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else None
                with open(part, "ab" if offset else "wb") as fh, _progress_bar(
                    progress, dest.name
                ) as bar:
                    task = bar.add_task(dest.name, total=total, completed=offset) if bar else None
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        fh.write(block)
                        digest.update(block)
                        written += len(block)
                        if bar is not None:
                            bar.update(task, completed=written)
            if total is not None and written < total:
                raise PcsymError(
                    f"download of {url} interrupted: got {written} of {total} bytes "
                    "(run again to resume)"
                )
    except PcsymError:
        raise
    except urllib.error.HTTPError as exc:
        raise PcsymError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise PcsymError(f"cannot download {url}: {exc.reason}") from None
    except TimeoutError:
        raise PcsymError(f"cannot download {url}: timed out after {timeout}s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise PcsymError(f"cannot download {url}: {reason}") from None

    if expected is not None:
        actual = digest.hexdigest()
        if actual != expected:
            part.unlink(missing_ok=True)
            raise PcsymError(f"checksum mismatch for {url}: expected {expected}, got {actual}")
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- extraction


def _check_member_name(name: str, archive: Path) -> str:
    """Return the normalized relative POSIX path of a member, or raise if it is unsafe."""
    norm_input = name.replace("\\", "/")
    if not norm_input or norm_input.startswith("/") or re.match(r"^[A-Za-z]:", norm_input):
        raise PcsymError(f"refusing to extract member {name!r}: absolute path", path=archive)
    normalized = posixpath.normpath(norm_input)
    if normalized == ".." or normalized.startswith("../"):
        raise PcsymError(
            f"refusing to extract member {name!r}: path escapes the target folder", path=archive
        )
    return normalized


def _validate_zip(zf: zipfile.ZipFile, archive: Path) -> list[str]:
    names = []
    for info in zf.infolist():
        normalized = _check_member_name(info.filename, archive)
        mode = info.external_attr >> 16  # Unix mode bits, when the zip was made on Unix
        if mode and stat.S_ISLNK(mode):
            raise PcsymError(f"refusing to extract member {info.filename!r}: symlink", path=archive)
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise PcsymError(
                f"refusing to extract member {info.filename!r}: special file", path=archive
            )
        if normalized != ".":
            names.append(normalized)
    return names


def _validate_tar(tf: tarfile.TarFile, archive: Path) -> list[str]:
    names = []
    for member in tf.getmembers():
        normalized = _check_member_name(member.name, archive)
        if member.issym() or member.islnk():
            kind = "symlink" if member.issym() else "hardlink"
            raise PcsymError(
                f"refusing to extract member {member.name!r}: {kind} to {member.linkname!r}",
                path=archive,
            )
        if member.isdev():
            raise PcsymError(
                f"refusing to extract member {member.name!r}: device file", path=archive
            )
        if not (member.isfile() or member.isdir()):
            raise PcsymError(
                f"refusing to extract member {member.name!r}: unsupported member type",
                path=archive,
            )
        if normalized != ".":
            names.append(normalized)
    return names


def _move_into_place(staging: Path, target: Path, replace: bool = True) -> None:
    """Move staging's top-level entries into ``target`` (each by one atomic rename).

    If ``target`` does not exist, ``staging`` itself is renamed onto it.  Existing entries
    with the same name are replaced (``replace``; else nothing is moved and the first one is
    named in the error): the old one is renamed aside first, so a reader sees either the old
    or the new entry, never a mix.
    """
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise PcsymError("extraction target exists and is not a folder", path=target)
    if not replace:
        for entry in sorted(staging.iterdir()):
            if (target / entry.name).exists() or (target / entry.name).is_symlink():
                raise PcsymError("already exists; pass --force to replace it with the archive's contents",
                                 path=target / entry.name)
    for entry in sorted(staging.iterdir()):
        final = target / entry.name
        if final.exists() or final.is_symlink():
            aside = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=target))
            os.replace(final, aside / entry.name)
            os.replace(entry, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(entry, final)
    staging.rmdir()


def safe_extract(archive: Path, target: Path, replace: bool = True) -> list[Path]:
    """Extract a zip or tar(.gz/.bz2/.xz) ``archive`` into ``target`` safely.

    All members are validated before anything is written; the first unsafe one (absolute
    path, ``..`` escaping the target, symlink/hardlink, zip entry marked as a symlink,
    device or other special file) raises :class:`PcsymError` naming it and nothing is
    extracted.  Extraction goes to a temporary folder next to ``target`` which is then
    moved into place, so an interruption never leaves a half-populated ``target``.

    Returns the final paths of the extracted regular files, sorted.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise PcsymError("archive not found", path=archive)
    target.parent.mkdir(parents=True, exist_ok=True)

    if zipfile.is_zipfile(archive):
        opener, kind = (lambda: zipfile.ZipFile(archive)), "zip"
    elif tarfile.is_tarfile(archive):
        opener, kind = (lambda: tarfile.open(archive, "r:*")), "tar"
    else:
        raise PcsymError("not a zip or tar archive", path=archive)

    staging = make_staging_dir(target.parent, f".{target.name}.extract-")  # may become ``target`` itself
    try:
        try:
            with opener() as handle:
                if kind == "zip":
                    names = _validate_zip(handle, archive)
                    handle.extractall(staging)
                else:
                    names = _validate_tar(handle, archive)
                    handle.extractall(staging, filter="data")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise PcsymError(f"corrupt {kind} archive: {exc}", path=archive) from None
        files = sorted({target / n for n in names if (staging / n).is_file()})
        _move_into_place(staging, target, replace)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return files


# --------------------------------------------------------------------------- fetch


def _lookup(name: str) -> dict:
    if name in KNOWN_DATASETS:
        return KNOWN_DATASETS[name]
    folded = {k.lower(): k for k in KNOWN_DATASETS}
    if name.lower() in folded:
        return KNOWN_DATASETS[folded[name.lower()]]
    close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.4)
    hint = f" (did you mean {folded[close[0]]!r}?)" if close else ""
    known = ", ".join(KNOWN_DATASETS)
    raise PcsymError(f"unknown dataset {name!r}{hint}; known datasets: {known}; or pass a URL")


def _single_top_dir(files: list[Path], out_dir: Path) -> Path:
    """The one top-level folder the files were extracted into, else ``out_dir``."""
    parts = [f.relative_to(out_dir).parts for f in files]
    tops = {p[0] for p in parts if len(p) > 1} - _JUNK_TOPLEVEL
    loose_files = any(len(p) == 1 for p in parts)
    if len(tops) == 1 and not loose_files:
        return out_dir / tops.pop()
    return out_dir


def fetch(
    name_or_url: str,
    out_dir: Path,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    extract: bool = True,
    force: bool = False,
) -> Path:
    """Download (and by default unpack) a known dataset or an archive URL into ``out_dir``.

    ``name_or_url`` is a key of :data:`KNOWN_DATASETS` (case-insensitive) or a URL
    (anything containing ``://``).  ``url`` overrides a known dataset's URL (a mirror),
    ``sha256`` its checksum.  The archive is kept as ``out_dir/<archive name>``; an
    existing complete archive (matching ``sha256`` when one is known) is not downloaded
    again, and a known dataset whose folder already exists is not extracted again.

    An unpacked entry that already exists is replaced only with ``force`` (else an error names it);
    with ``force`` a known dataset's existing folder is unpacked again.

    Returns the extracted dataset folder (its single top-level folder when the archive
    has one, else ``out_dir``), or the archive path when ``extract=False``.
    """
    out_dir = Path(out_dir)
    if "://" in name_or_url:
        entry = {"url": name_or_url, "sha256": None, "extracted_dir": None}
        archive_name = posixpath.basename(urllib.parse.urlparse(name_or_url).path)
        if not archive_name:
            raise PcsymError(f"cannot tell the archive file name from URL {name_or_url!r}")
    else:
        entry = _lookup(name_or_url)
        archive_name = entry["archive"]
    source = url or entry["url"]
    expected = _normalize_sha256(sha256 if sha256 is not None else entry["sha256"])

    if extract and not force and entry["extracted_dir"] and (out_dir / entry["extracted_dir"]).is_dir():
        return out_dir / entry["extracted_dir"]  # already fetched and unpacked

    archive = out_dir / archive_name
    if archive.is_file() and expected is not None:
        digest = hashlib.sha256()
        _hash_file(archive, digest)
        if digest.hexdigest() != expected:
            archive.unlink()  # stale or corrupt: download it again
    if not archive.is_file():
        download(source, archive, sha256=expected, progress=progress)
    if not extract:
        return archive

    files = safe_extract(archive, out_dir, replace=force)
    if entry["extracted_dir"] and (out_dir / entry["extracted_dir"]).is_dir():
        return out_dir / entry["extracted_dir"]
    return _single_top_dir(files, out_dir)
