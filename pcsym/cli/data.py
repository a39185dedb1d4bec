"""``pcsym data prepare|fetch``: dataset caches and downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import PcsymError
from .common import (DATA_FORMAT, UP_AXIS, console, data_app, debug_option, force_option, format_option, integer,
                     options, quiet_option, refuse_existing, run, up_axis_option)

#: == pcsym.data.fetch.KNOWN_DATASETS' keys (a test keeps them equal; pcsym.data.fetch imports the network stack)
KNOWN_DATASETS = ("modelnet40_ply_hdf5_2048", "modelnet40_normal_resampled", "ModelNet40", "ModelNet10")


@data_app.command("prepare")
def data_prepare(
    ctx: typer.Context,
    src: Path = typer.Argument(..., help="Dataset directory in any supported layout."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache file (.npz); default: pcsym's own cache, inside "
                                                           "SRC or ~/.cache/pcsym (rebuilt by this command)."),
    points: int = typer.Option(1024, "--points", parser=integer("--points", 1),
                               help="Points per shape the cache is made for (it keeps at least 2048 when the data "
                                    "has them, for fresh subsets each epoch)."),
    up_axis: Optional[UP_AXIS] = up_axis_option(),
    fmt: Optional[DATA_FORMAT] = format_option(),
    force: bool = force_option("an existing --out file"),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Convert a dataset once into a fast cached array file."""

    def body():
        if not src.exists():
            raise PcsymError("no such dataset directory", path=src)
        if out is not None:
            refuse_existing([out], force)
        from ..data.datasets import prepare

        path = prepare(src, out=out, points=points, up_axis=up_axis or "z", fmt=fmt)
        console().print(f"cache written: {path}", markup=False)

    run(body, ctx)


@data_app.command("fetch")
def data_fetch(
    ctx: typer.Context,
    name: str = typer.Argument(..., help=f"A known dataset ({', '.join(KNOWN_DATASETS)}; any case) or an archive "
                                         "URL."),
    out: Path = typer.Option(Path("data"), "--out", help="Where to download and extract."),
    url: Optional[str] = typer.Option(None, "--url", help="Mirror URL for a known dataset."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected SHA-256 of the archive."),
    no_extract: bool = typer.Option(False, "--no-extract", help="Only download the archive."),
    force: bool = force_option("folders the archive unpacks to that already exist (a known dataset already "
                               "unpacked is otherwise reused as it is)"),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Download a public ModelNet release (resumable, checksum-verified, safely extracted)."""

    def body():
        from ..data.fetch import fetch

        path = fetch(name, out, url=url, sha256=sha256, progress=not options(ctx).quiet, extract=not no_extract,
                     force=force)
        console().print(f"ready: {path}", markup=False)

    run(body, ctx)
