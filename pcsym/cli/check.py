"""``pcsym check-equivariance``: numerical equivariance of a checkpoint or a fresh model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..config import KERNELS
from ..errors import PcsymError
from .common import (KERNEL, app, choice, column, console, debug_option, integer, json_option, number, print_table,
                     quiet_option, run, table)

SAMPLE_MESHES = Path(__file__).resolve().parents[2] / "sample_data" / "meshes"


@app.command("check-equivariance")
def check_equivariance(
    ctx: typer.Context,
    checkpoint: Optional[str] = typer.Argument(None, help="Checkpoint or shipped model name; omit with --group."),
    group: Optional[str] = typer.Option(None, "--group", help="Check a freshly initialised model of this group."),
    kernel: KERNEL = typer.Option("implicit", "--kernel", parser=choice("--kernel", KERNELS),
                                                        help="Kernel of the fresh model."),
    input: Optional[Path] = typer.Option(None, "--input", help="Mesh/cloud to test on (default: a shipped sample)."),
    points: int = typer.Option(512, "--points", parser=integer("--points", 1),
                               help="Points of the test cloud for a fresh model."),
    n_random: int = typer.Option(3, "--random", parser=integer("--random", 0),
                                 help="Random group elements besides the generators."),
    tol: float = typer.Option(1e-4, "--tol", parser=number("--tol", 0, low_open=True),
                              help="Fail (exit 1) if an in-group relative error exceeds this."),
    seed: int = typer.Option(0, "--seed", parser=integer("--seed", 0),
                             help="Seed of the random elements, the test cloud's sampling and a fresh model's "
                                  "weights."),
    as_json: bool = json_option(),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Measure invariance of logits and equivariance of every steerable layer (float64)."""

    def body():
        if (checkpoint is None) == (group is None):
            raise PcsymError("give either a checkpoint or --group NAME")
        if checkpoint is not None:
            from ..models.checkpoint import resolve_checkpoint

            resolve_checkpoint(checkpoint)
        else:
            from ..models.groups import get_group

            get_group(group)
        src = input or _default_sample()
        if not Path(src).exists():
            raise PcsymError("no such file (--input)", path=src)
        from ..models.equivariance import check_file

        net, rows = check_file(src, checkpoint=checkpoint, group=group, kernel=kernel, points=points,
                               n_random=n_random, seed=seed)
        bad = [r for r in rows if r.in_group and r.worst_rel > tol]
        if as_json:
            from ..models.classifier import invariance_group

            typer.echo(json.dumps({"group": net.cfg.group, "kernel": net.cfg.kernel, "frames": net.cfg.frames,
                                   "checked_group": invariance_group(net.cfg), "tol": tol, "passed": not bad,
                                   "rows": [r.__dict__ | {"worst_rel": r.worst_rel} for r in rows]}, indent=2))
        else:
            _print_check(net.cfg, rows, tol, src)
        if bad:
            raise typer.Exit(1)

    run(body, ctx)


def _default_sample() -> Path:
    for cand in sorted(SAMPLE_MESHES.glob("*")) if SAMPLE_MESHES.exists() else []:
        return cand
    raise PcsymError("no shipped sample mesh found; pass --input FILE")


def _per_layer(layers: dict) -> dict:
    """An ensemble's layers (``m<i>.<layer>``) as one column per layer: the worst member's error."""
    out = {}
    for name, err in layers.items():
        member, _, layer = name.partition(".")
        key = layer if layer and member[:1] == "m" and member[1:].isdigit() else name
        out[key] = max(out.get(key, 0.0), err)
    return out


def _print_check(cfg, rows, tol, src):
    layers_of = {id(r): _per_layer(r.layers) for r in rows}
    first = next((r for r in rows if r.in_group), None)
    layer_names = list(layers_of[id(first)].keys()) if first else []
    members = len({n.partition(".")[0] for n in first.layers}) if first and len(layer_names) < len(first.layers) else 0
    what = f"an ensemble of {members} {cfg.group}/{cfg.kernel} models" if members else f"a {cfg.group}/{cfg.kernel} model"
    if cfg.frames != "none":
        from ..models.classifier import invariance_group

        what += f" with {cfg.frames} frames (logits invariant to {invariance_group(cfg)})"
    t = table(f"equivariance of {what} on {Path(src).name} (float64; layer columns: relative max error of "
              "ρ_out(g)·f(x) vs f(g·x)" + (", the worst member's)" if members else ")"))
    for col in ("element", "in G"):
        column(t, col)
    for col in ("logits abs", "logits rel", *layer_names):
        column(t, col, "right")
    column(t, "verdict")
    for r in rows:
        if r.in_group:
            verdict = "[green]ok[/]" if r.worst_rel <= tol else "[red]FAIL[/]"
        else:
            verdict = "[yellow]changes[/]" if r.logits_rel > tol else "same"
        t.add_row(r.element, "yes" if r.in_group else "no", f"{r.logits_abs:.1e}", f"{r.logits_rel:.1e}",
                  *[f"{layers_of[id(r)][n]:.1e}" if n in layers_of[id(r)] else "" for n in layer_names], verdict)
    con = console()
    print_table(con, t)
    worst = max((r.worst_rel for r in rows if r.in_group), default=0.0)
    con.print(f"worst in-group relative error {worst:.2e} (tol {tol:g}): {'PASS' if worst <= tol else 'FAIL'}")
