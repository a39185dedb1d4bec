"""User-facing errors: one clear line, exit code 2, never a traceback (unless --debug)."""

from __future__ import annotations

import os


class PcsymError(Exception):
    """A usage or input error (bad file, bad flag, incompatible checkpoint).

    The CLI prints ``error: <message>`` on stderr and exits with ``exit_code`` (2).
    """

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
