"""``pcsym export``: TorchScript, ONNX or numpy files that run without escnn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import app, console, run


@app.command()
def export(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., help="Checkpoint .pt, run directory, or shipped model name."),
    fmt: str = typer.Option("torchscript", "--format", help="torchscript, onnx or numpy."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: next to the checkpoint)."),
):
    """Export to TorchScript, ONNX or numpy: runs with plain torch / onnxruntime / numpy, same logits."""

    def body():
        from ..models.checkpoint import load_model, resolve_checkpoint
        from ..config import check_choice
        from ..inference.export import EXPORT_FORMATS, SUFFIXES, export_model

        check_choice(fmt, EXPORT_FORMATS, "--format")
        model, ckpt = load_model(checkpoint)
        target = out or resolve_checkpoint(checkpoint).with_suffix(SUFFIXES[fmt])
        export_model(model, target, fmt, ckpt.get("unknown_threshold"), ckpt.get("unknown"))
        console().print(f"exported {fmt}: {target}")

    run(body, ctx)
