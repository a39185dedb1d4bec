"""pcsym command-line interface (Typer): one module per command, each of which reads its flags,
calls the library and prints. ``common`` holds the apps, global options and error handling."""

from __future__ import annotations

from . import check, classify, data, evaluate, export, groups, train  # noqa: F401 (register the commands)
from .common import app


def main():
    app()
