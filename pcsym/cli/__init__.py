"""pcsym command-line interface (Typer): one module per command, each of which reads its flags,
calls the library and prints. ``common`` holds the apps, global options and error handling.

Command bodies import the library inside themselves, so ``pcsym --help`` imports neither numpy nor torch.

Imports from: foundations, geometry, data, models, inference, training.
"""

from __future__ import annotations

from . import check, classify, data, ensemble, evaluate, export, groups, info, train  # noqa: F401 (register the commands)
from .common import app


def main():
    app()
