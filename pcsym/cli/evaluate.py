"""``pcsym evaluate``: accuracy figures, per-class table and confusion matrix of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..config import SAMPLINGS
from .common import app, check_up_axis, console, format_option, json_option, run, setup_torch, up_axis_option


@app.command()
def evaluate(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., help="Checkpoint .pt, run directory, or shipped model name (so3, o2)."),
    data: Path = typer.Option(..., "--data", help="Dataset directory or cache .npz."),
    up_axis: Optional[str] = up_axis_option(),
    fmt: Optional[str] = format_option(),
    split: Optional[str] = typer.Option(None, "--split",
                                        help="test (the official test split; the default when the dataset has one), "
                                             "val (the shapes the run held out: its own seed and fraction; the "
                                             "default otherwise), train or all."),
    rotate: str = typer.Option("none", "--rotate", help="Test-time rotation: none, z or so3."),
    votes: int = typer.Option(1, "--votes", help="Average predictions over N augmented copies."),
    sampling: Optional[str] = typer.Option(None, "--sampling",
                                           help=f"Downsample with {', '.join(SAMPLINGS)} instead of the model's "
                                                "own scheme (the weights do not depend on it)."),
    prior: Optional[str] = typer.Option(None, "--prior",
                                        help="Also report the accuracy re-weighted to a class prior: 'balanced' or a "
                                             "file of class weights (JSON or 'class weight' lines)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, confusion.csv and confusion.png here."),
    as_json: bool = json_option(),
    device: str = typer.Option("cpu", "--device"),
    threads: int = typer.Option(0, "--threads"),
):
    """Overall / mean-class (/ prior-weighted) accuracy, per-class table and confusion matrix."""

    def body():
        from ..training.evaluate import evaluate_checkpoint, write_eval_outputs

        check_up_axis(up_axis)
        dev = setup_torch(threads, device)
        m = evaluate_checkpoint(checkpoint, data, split=split, rotate=rotate, votes=votes, prior=prior,
                                batch_size=batch_size, device=dev, up_axis=up_axis, fmt=fmt, sampling=sampling)
        if out:
            write_eval_outputs(out, m)
        if as_json:
            typer.echo(json.dumps(m, indent=2))
        else:
            _print_eval(m)

    run(body, ctx)


def _print_eval(m: dict):
    from rich.table import Table

    con = console()
    prior = (f"   [bold]{m['prior']}-prior accuracy[/] {m['prior_weighted_accuracy']:.4f}"
             if "prior_weighted_accuracy" in m else "")
    con.print(f"[bold]overall accuracy[/] {m['overall_accuracy']:.4f}   [bold]mean class accuracy[/] "
              f"{m['mean_class_accuracy']:.4f}{prior}   (n={m['n']}, split={m['split']}, rotate={m['rotate']}, "
              f"votes={m['votes']}, sampling={m['sampling']})")
    t = Table(title="per-class accuracy")
    t.add_column("class")
    t.add_column("accuracy", justify="right")
    t.add_column("n", justify="right")
    for name, acc in m["per_class_accuracy"].items():
        t.add_row(name, "-" if acc is None else f"{acc:.3f}", str(m["support"][name]))
    con.print(t)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    short = [n[:6] for n in m["class_names"]]
    for s in short:
        cm.add_column(s, justify="right")
    for s, row in zip(short, m["confusion_matrix"]):
        cm.add_row(s, *[str(v) for v in row])
    con.print(cm)
