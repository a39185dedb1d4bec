"""``pcsym ensemble``: one model from several trained ones (their logits averaged)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from ..errors import PcsymError
from .common import (app, check_dataset, choice, console, debug_option, force_option, number, quiet_option,
                     refuse_existing, run, setup_torch, threads_option)

CALIBRATION_SPLITS = ("val", "test")


@app.command()
def ensemble(
    ctx: typer.Context,
    models: list[str] = typer.Argument(..., help="Two or more checkpoints, run folders or shipped model names of one "
                                                 "architecture (e.g. one recipe trained with different seeds)."),
    out: Path = typer.Option(..., "--out", help="The ensemble's checkpoint (.pt); it works wherever a checkpoint does."),
    data: Optional[Path] = typer.Option(None, "--data", help="Calibrate the ensemble's 'unknown' threshold on this "
                                                             "dataset (without it the ensemble flags nothing unknown)."),
    split: Literal[CALIBRATION_SPLITS] = typer.Option(
        "val", "--split", parser=choice("--split", CALIBRATION_SPLITS),
        help="Calibration shapes: val (those every member held out) or test (the dataset's test split)."),
    keep: float = typer.Option(0.95, "--keep", parser=number("--keep", 0, 1, low_open=True, high_open=True),
                               help="Share of the calibration shapes the 'unknown' threshold keeps."),
    force: bool = force_option("an existing --out file"),
    threads: int = threads_option(),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Average the logits of models trained alike: usually a point or two more accuracy, still equivariant."""

    def body():
        from ..models.checkpoint import resolve_checkpoint

        if len(models) < 2:
            raise PcsymError("an ensemble needs at least two models")
        for m in models:
            resolve_checkpoint(m)  # every argument is checked before torch is imported
        check_dataset(data)
        if out.exists() and out.is_dir():
            raise PcsymError("--out is a folder; name the ensemble's .pt file", path=out)
        refuse_existing([out], force)
        setup_torch(threads)
        from ..training.ensemble import make_ensemble

        s = make_ensemble(models, out, data, split, keep)
        unknown = (f"'unknown' threshold {s['threshold']:.4f} (keeps {keep:.0%} of {s['calibration_shapes']} "
                   f"{split} shapes)" if s["threshold"] is not None else "no 'unknown' detector (pass --data)")
        console().print(f"wrote {out}: {s['members']} {s['group']} members, {s['classes']} classes, "
                        f"{s['params']:,} parameters; {unknown}", markup=False)

    run(body, ctx)
