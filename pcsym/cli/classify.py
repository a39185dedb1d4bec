"""``pcsym classify``: top-k classes of meshes and point clouds, one file or thousands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..config import MAX_VERTICES, SHIPPED_MODELS
from ..errors import PcsymError
from .common import (UP_AXIS, app, column, console, debug_option, force_option, integer, json_option, options,
                     print_table, quiet_option, run, table, threads_option, up_axis_option)

VOTE_ORDERS = 8  # == pcsym.inference.runtime.VOTE_ORDERS (a test keeps them equal; runtime imports numpy)


@app.command()
def classify(
    ctx: typer.Context,
    inputs: List[Path] = typer.Argument(..., help="Mesh/cloud files (obj, off, ply, stl, xyz, txt, npy) or directories."),
    model: str = typer.Option("so3", "--model", help=f"Shipped model name ({', '.join(SHIPPED_MODELS)}), checkpoint "
                                                     ".pt or run folder, or export (.npz, .ts, .onnx)."),
    top_k: int = typer.Option(5, "--top-k", parser=integer("--top-k", 1), help="How many classes to show."),
    votes: int = typer.Option(1, "--votes", parser=integer("--votes", 1, VOTE_ORDERS),
                              help=f"Average over N seeded downsamplings (1-{VOTE_ORDERS})."),
    seed: int = typer.Option(0, "--seed", parser=integer("--seed", 0), help="Seed of the surface sampling."),
    max_vertices: int = typer.Option(MAX_VERTICES, "--max-vertices", parser=integer("--max-vertices", 1),
                                     help="Refuse larger inputs."),
    up_axis: Optional[UP_AXIS] = up_axis_option(),
    out: Optional[Path] = typer.Option(None, "--out", help="Append one JSON line per input to this file as each is "
                                                           "done (a crash loses nothing)."),
    resume: bool = typer.Option(False, "--resume", help="With --out: skip the inputs the file already holds."),
    force: bool = force_option("an existing --out results file"),
    workers: int = typer.Option(0, "--workers", parser=integer("--workers", 0),
                                help="Read and sample meshes in N processes."),
    unknown: bool = typer.Option(True, "--unknown/--no-unknown",
                                 help="Mark shapes whose score falls below the model's calibrated threshold as "
                                      "unknown (outside its classes)."),
    as_json: bool = json_option(),
    threads: int = threads_option(),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Classify meshes or point clouds; prints the top-k classes with probabilities (one table for
    one input, one row per input for several). Exit 2 if any input could not be classified."""

    def body():
        from ..data.meshes import SUPPORTED_EXTENSIONS
        from ..inference.predict import ResultLog, classify_files, expand_inputs, load_classifier

        if (resume or force) and out is None:
            raise PcsymError("--resume and --force need --out FILE")
        if resume and force:
            raise PcsymError("--resume continues the --out file, --force replaces it: give one of them")
        files = expand_inputs(inputs, SUPPORTED_EXTENSIONS)
        if out:
            ResultLog.check(out, resume, force)
        clf = load_classifier(model, threads)
        log = ResultLog(out, resume=resume, force=force) if out else None
        skipped = [f for f in files if log and str(f) in log.done]
        todo = [f for f in files if not (log and str(f) in log.done)]
        try:
            results = []
            with _progress(len(todo), options(ctx).quiet) as advance:
                for r in classify_files(clf, todo, top_k=top_k, votes=votes, seed=seed, max_vertices=max_vertices,
                                        up_axis=up_axis, workers=workers, unknown=unknown):
                    if log:
                        log.write(r)
                    results.append(r)
                    advance()
        finally:
            if log:
                log.close()
        if as_json:
            typer.echo(json.dumps({"model": str(model), "results": results}, indent=2))
        elif len(files) == 1 and results:
            _print_table(results[0])
        else:
            _print_rows(results)
        failed = [r for r in results if not r["ok"]]
        for r in failed:
            typer.echo(f"error: {r['error']}", err=True)
        if skipped:
            typer.echo(f"skipped {len(skipped)} input(s) already in {out}", err=True)
        if failed or (log and any(str(f) in log.failed for f in skipped)):
            raise typer.Exit(2)

    run(body, ctx)


class _progress:
    """A progress bar on stderr for more than one input (not with --quiet); yields ``advance()``."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.prog = total, quiet, None

    def __enter__(self):
        import sys

        if self.total <= 1 or self.quiet or not sys.stderr.isatty():  # no bar in logs and pipes
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.prog = Progress("classify", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             console=console(stderr=True), transient=True)
        self.prog.__enter__()
        task = self.prog.add_task("classify", total=self.total)
        return lambda: self.prog.advance(task)

    def __exit__(self, *exc):
        if self.prog is not None:
            self.prog.__exit__(*exc)


def _print_table(r: dict):
    if not r["ok"]:
        console().print(f"{r['file']}: failed", style="red", markup=False)
        return
    from rich.markup import escape

    title = escape(r["file"]) + (f"  —  unknown (closest: {_closest(r)}; score below {r['threshold']:.4f})"
                         if r.get("unknown") else "")
    t = table(title)
    column(t, "#", "right")
    column(t, "class")
    column(t, "probability", "right")
    for i, c in enumerate(r["top"], 1):
        t.add_row(str(i), c["class"], f"{c['probability']:.4f}")
    print_table(console(), t)


def shared_folder(files: list[str]) -> str:
    """The folder all ``files`` are in, spelled as they were given (relative stays relative), when they
    share one below the filesystem root; else "" (the rows then show each path as given)."""
    import os

    parents = [os.path.dirname(os.path.normpath(f)) for f in files]
    if not parents or len({os.path.isabs(p) for p in parents}) > 1:
        return ""
    try:
        base = os.path.commonpath(parents)
    except ValueError:
        return ""
    return "" if base in ("", os.sep, os.curdir) else base


def _print_rows(results: list):
    """One row per input; paths relative to the folder they share (named in the title), so the file
    column stays readable in a narrow terminal. Inputs with no folder in common keep their paths."""
    import os

    from rich.markup import escape

    base = shared_folder([r["file"] for r in results])
    n = len(results)
    t = table(f"{n} file{'s' if n != 1 else ''}" + (f" in {escape(base)}" if base else ""))
    for col, just in (("file", "left"), ("class", "left"), ("probability", "right"), ("runner-up", "left")):
        column(t, col, just)
    for r in results:
        name = escape(os.path.relpath(os.path.normpath(r["file"]), base) if base else r["file"])
        if not r["ok"]:
            t.add_row(name, "[red]failed[/]", "", "")
            continue
        top = r["top"]
        second = f"{top[1]['class']} {top[1]['probability']:.4f}" if len(top) > 1 else ""
        label = f"unknown (closest: {_closest(r)})" if r.get("unknown") else top[0]["class"]
        t.add_row(name, label, f"{top[0]['probability']:.4f}", second)
    print_table(console(), t)


def _closest(r: dict) -> str:
    return f"{r['top'][0]['class']} {r['top'][0]['probability']:.4f}"
