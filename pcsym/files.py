"""Writing files so that an interruption never leaves a half-written or destroyed output.

Every file pcsym writes (checkpoints, metrics, plots, exports, dataset caches, downloads) goes
through :func:`atomic_write_bytes` or :func:`atomic_writer`: a temporary file in the same folder,
fsynced, then renamed over the target. New files get the permissions a plain ``open`` would give
them (:func:`default_mode`), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def user_cache_dir() -> Path | None:
    """pcsym's user cache folder: ``$PCSYM_CACHE_DIR`` if set (``off`` or an empty value: no on-disk
    cache, None), else ``$XDG_CACHE_HOME/pcsym``, else ``~/.cache/pcsym``."""
    env = os.environ.get("PCSYM_CACHE_DIR")
    if env is not None:
        return None if env.strip() in ("", "off") else Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pcsym"


def default_mode(directory: bool = False) -> int:
    """0666 (files) or 0777 (folders) less the process umask: what ``open``/``mkdir`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (with the
    default mode), on any error it is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    with atomic_writer(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def make_staging_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder inside ``parent`` with a plain folder's mode (``mkdtemp`` gives 0700): it may
    later be renamed into place as the final output."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    staging.chmod(default_mode(directory=True))
    return staging
