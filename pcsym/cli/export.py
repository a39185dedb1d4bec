"""``pcsym export``: TorchScript, ONNX or numpy files that run without escnn."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from .common import app, choice, console, debug_option, force_option, quiet_option, refuse_existing, run

FORMATS = ("torchscript", "onnx", "numpy")  # == pcsym.inference.export.EXPORT_FORMATS (a test keeps them equal)
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx", "numpy": ".npz"}


@app.command()
def export(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., help="Checkpoint .pt, run directory, or shipped model name."),
    fmt: Literal[FORMATS] = typer.Option(
        "torchscript", "--format", parser=choice("--format", FORMATS),
        help="TorchScript (.ts, runs with plain torch), ONNX (.onnx, onnxruntime: pip install 'pcsym[onnx]') or "
             "numpy (.npz, pcsym's torch-free runtime)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: next to the checkpoint, with the "
                                                           "format's suffix)."),
    force: bool = force_option("an existing output file"),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Export to TorchScript, ONNX or numpy: runs with plain torch / onnxruntime / numpy, same logits."""

    def body():
        from ..models.checkpoint import load_model, resolve_checkpoint

        target = out or resolve_checkpoint(checkpoint).with_suffix(SUFFIXES[fmt])
        refuse_existing([target], force)
        from ..inference.export import export_model

        model, ckpt = load_model(checkpoint)
        export_model(model, target, fmt, ckpt.get("unknown_threshold"), ckpt.get("unknown"))
        console().print(f"exported {fmt}: {target}", markup=False)

    run(body, ctx)
