"""``pcsym evaluate``: accuracy figures, per-class table and confusion matrix of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer

from ..config import DEVICES, ROTATIONS, SAMPLINGS, SHIPPED_MODELS
from ..errors import PcsymError
from .common import (DATA_FORMAT, DEVICE, ROTATION, SAMPLING, UP_AXIS, app, check_dataset, choice, column, console,
                     debug_option, force_option, format_option, integer, json_option, print_table, quiet_option,
                     refuse_existing, run, setup_torch, table, threads_option, up_axis_option)

SPLITS = ("train", "val", "test", "all")  # == pcsym.data.splits.SPLITS (a test keeps them equal; splits imports numpy)
#: what ``evaluate --out`` writes
OUT_FILES = ("metrics.json", "confusion.csv", "confusion.png")


@app.command()
def evaluate(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., help="Checkpoint .pt, run directory, or shipped model name "
                                               f"({', '.join(SHIPPED_MODELS)})."),
    data: Path = typer.Option(..., "--data", help="Dataset directory or cache .npz."),
    up_axis: Optional[UP_AXIS] = up_axis_option(),
    fmt: Optional[DATA_FORMAT] = format_option(),
    split: Optional[Literal[SPLITS]] = typer.Option(
        None, "--split", parser=choice("--split", SPLITS),
        help="test (the official test split; the default when the dataset has one), val (the shapes the run "
             "held out: its own seed and fraction; the default otherwise), train or all."),
    rotate: ROTATION = typer.Option("none", "--rotate", parser=choice("--rotate", ROTATIONS),
                                    help="Test-time rotation of each shape: none, random about z, or random in SO(3)."),
    votes: int = typer.Option(1, "--votes", parser=integer("--votes", 1),
                              help="Average predictions over N augmented copies."),
    sampling: Optional[SAMPLING] = typer.Option(None, "--sampling", parser=choice("--sampling", SAMPLINGS),
                                                help="Downsample another way than the model's own scheme (the "
                                                     "weights do not depend on it)."),
    prior: Optional[str] = typer.Option(None, "--prior",
                                        help="Also report the accuracy re-weighted to a class prior: 'balanced' or a "
                                             "file of class weights (JSON or 'class weight' lines)."),
    seed: Optional[int] = typer.Option(None, "--seed", parser=integer("--seed", 0),
                                       help="Draw the evaluation pass with this seed: each shape's points, its "
                                            "rotation and the downsampling orders (default: the one fixed pass "
                                            "that validation and the shown figures use)."),
    batch_size: int = typer.Option(32, "--batch-size", parser=integer("--batch-size", 1),
                                   help="Shapes per forward pass (memory; the figures do not depend on it)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, confusion.csv and confusion.png "
                                                           "into this folder."),
    force: bool = force_option("those files in --out"),
    as_json: bool = json_option(),
    device: DEVICE = typer.Option("cpu", "--device", parser=choice("--device", DEVICES),
                                  help="Where to run the model (auto: a CUDA GPU when there is one)."),
    threads: int = threads_option(),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Overall / mean-class (/ prior-weighted) accuracy, per-class table, confusion matrix, and the share of
    the shapes the model's "unknown" detector flags."""

    def body():
        from ..models.checkpoint import resolve_checkpoint

        resolve_checkpoint(checkpoint)  # every argument is checked before torch is imported
        check_dataset(data)
        if prior is not None and prior != "balanced" and not Path(prior).is_file():
            raise PcsymError("prior file not found (use 'balanced' or a file of class weights)", path=prior)
        if out is not None:
            if out.exists() and not out.is_dir():
                raise PcsymError("--out exists and is not a folder", path=out)
            refuse_existing([out / name for name in OUT_FILES], force)
        from ..training.evaluate import evaluate_checkpoint, invariance_note, write_eval_outputs

        dev = setup_torch(threads, device)
        m = evaluate_checkpoint(checkpoint, data, split=split, rotate=rotate, votes=votes, prior=prior,
                                batch_size=batch_size, device=dev, up_axis=up_axis, fmt=fmt, sampling=sampling,
                                seed=seed)
        if out:
            write_eval_outputs(out, m)
        if as_json:
            typer.echo(json.dumps(m, indent=2))
        else:
            _print_eval(m)
        note = invariance_note(m["model"], m["group"], rotate, m.get("train_rotate"))
        if note:
            typer.echo(f"note: {note}", err=True)

    run(body, ctx)


def _print_eval(m: dict):
    from rich.markup import escape

    con = console()
    prior = (f"   [bold]{m['prior']}-prior accuracy[/] {m['prior_weighted_accuracy']:.4f}"
             if "prior_weighted_accuracy" in m else "")
    what = "shipped model " if m.get("shipped") else ""
    con.print(f"{what}[bold]{escape(m['model'])}[/] (group {m['group']}) on {escape(m['data'])}")
    seed = f", seed={m['seed']}" if m.get("seed") is not None else ""
    con.print(f"[bold]overall accuracy[/] {m['overall_accuracy']:.4f}   [bold]mean class accuracy[/] "
              f"{m['mean_class_accuracy']:.4f}{prior}   (n={m['n']}, split={m['split']}, rotate={m['rotate']}, "
              f"votes={m['votes']}, sampling={m['sampling']}{seed})")
    unk = m.get("unknown")
    if unk and unk.get("flagged") is not None:
        con.print(f"[bold]\"unknown\"[/] {unk['flagged']:.1%} of these shapes (what classify flags: "
                  f"{unk['score']} score below {unk['threshold']:g})")
    if m.get("model_classes"):
        con.print(f"scored on the data's {len(m['class_names'])} classes, matched by name: each shape's answer is the "
                  f"likeliest of them (the model knows {m['model_classes']})")
    t = table("per-class accuracy")
    column(t, "class")
    column(t, "accuracy", "right")
    column(t, "n", "right")
    for name, acc in m["per_class_accuracy"].items():
        t.add_row(escape(name), "-" if acc is None else f"{acc:.3f}", str(m["support"][name]))
    print_table(con, t)
    # columns numbered as the rows: full class names in a width that 40 classes still fit
    cm = table("confusion matrix (rows: true class, columns: predicted, numbered as the rows)")
    column(cm, "true class")
    for i in range(len(m["class_names"])):
        column(cm, str(i + 1), "right")
    for i, (name, row) in enumerate(zip(m["class_names"], m["confusion_matrix"]), 1):
        cm.add_row(f"{i} {escape(name)}", *[str(v) for v in row])
    print_table(con, cm)
