"""``pcsym data prepare|fetch``: dataset caches and downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import check_up_axis, console, data_app, format_option, options, run, up_axis_option


@data_app.command("prepare")
def data_prepare(
    ctx: typer.Context,
    src: Path = typer.Argument(..., help="Dataset directory in any supported layout."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache file (.npz); default: inside SRC or ~/.cache/pcsym."),
    points: int = typer.Option(1024, "--points"),
    up_axis: Optional[str] = up_axis_option(),
    fmt: Optional[str] = format_option(),
):
    """Convert a dataset once into a fast cached array file."""

    def body():
        from ..data.datasets import prepare

        path = prepare(src, out=out, points=points, up_axis=check_up_axis(up_axis) or "z", fmt=fmt)
        console().print(f"cache written: {path}")

    run(body, ctx)


@data_app.command("fetch")
def data_fetch(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Dataset name (see --list) or a URL."),
    out: Path = typer.Option(Path("data"), "--out", help="Where to download and extract."),
    url: Optional[str] = typer.Option(None, "--url", help="Mirror URL for a known dataset."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected SHA-256 of the archive."),
    no_extract: bool = typer.Option(False, "--no-extract", help="Only download the archive."),
):
    """Download a public ModelNet release (resumable, checksum-verified, safely extracted)."""

    def body():
        from ..data.fetch import fetch

        path = fetch(name, out, url=url, sha256=sha256, progress=not options(ctx).quiet, extract=not no_extract)
        console().print(f"ready: {path}")

    run(body, ctx)
