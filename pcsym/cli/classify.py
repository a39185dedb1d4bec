"""``pcsym classify``: top-k classes of meshes and point clouds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import PcsymError
from .common import app, check_up_axis, console, json_option, run, up_axis_option


@app.command()
def classify(
    inputs: List[Path] = typer.Argument(..., help="Mesh/cloud files (obj, off, ply, stl, xyz, txt, npy) or directories."),
    model: str = typer.Option("so3", "--model", help="Shipped model name (so3, o2), export (.npz, .ts) or checkpoint."),
    top_k: int = typer.Option(5, "--top-k", help="How many classes to show."),
    votes: int = typer.Option(1, "--votes", help="Average over N seeded downsamplings (1-8)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the surface sampling."),
    max_vertices: int = typer.Option(2_000_000, "--max-vertices", help="Refuse larger inputs."),
    up_axis: Optional[str] = up_axis_option(),
    as_json: bool = json_option(),
    threads: int = typer.Option(0, "--threads"),
):
    """Classify meshes or point clouds; prints the top-k classes with probabilities."""

    def body():
        from ..meshes import SUPPORTED_EXTENSIONS
        from ..predict import classify_file, expand_inputs, load_classifier
        from ..runtime import VOTE_ORDERS

        if top_k < 1:
            raise PcsymError("--top-k must be at least 1")
        if not 1 <= votes <= VOTE_ORDERS:
            raise PcsymError(f"--votes must be between 1 and {VOTE_ORDERS}")
        check_up_axis(up_axis)
        files = expand_inputs(inputs, SUPPORTED_EXTENSIONS)
        clf = load_classifier(model, threads)
        results = [classify_file(clf, f, top_k=top_k, votes=votes, seed=seed, max_vertices=max_vertices,
                                 up_axis=up_axis) for f in files]
        if as_json:
            typer.echo(json.dumps({"model": str(model), "results": results}, indent=2))
        else:
            _print_classify(results)
        failed = [r for r in results if not r["ok"]]
        for r in failed:
            typer.echo(f"error: {r['error']}", err=True)
        if failed:
            raise typer.Exit(2)

    run(body)


def _print_classify(results):
    from rich.table import Table

    con = console()
    for r in results:
        if not r["ok"]:
            con.print(f"[red]{r['file']}: failed[/]")
            continue
        t = Table(title=r["file"])
        t.add_column("#", justify="right")
        t.add_column("class")
        t.add_column("probability", justify="right")
        for i, c in enumerate(r["top"], 1):
            t.add_row(str(i), c["class"], f"{c['probability']:.4f}")
        con.print(t)
