"""``pcsym groups``: the table of supported symmetry groups (no escnn import)."""

from __future__ import annotations

import json

import typer

from .common import app, column, console, debug_option, json_option, print_table, quiet_option, table


@app.command()
def groups(as_json: bool = json_option(), _quiet: bool = quiet_option(), _debug: bool = debug_option()):
    """List the supported symmetry groups (z is up)."""
    from ..models.groups import GROUPS

    rows = [{"name": s.name, "description": s.description, "escnn": f"escnn.gspaces.{s.constructor}",
             "order": "continuous" if s.continuous else s.order,
             "default_max_freq": s.default_max_freq if s.continuous else None} for s in GROUPS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = table("Symmetry groups (subgroups of O(3); z is up, x/y horizontal)")
    for col in ("name", "what it is", "escnn constructor", "order", "band limit"):
        column(t, col)
    for r in rows:
        t.add_row(r["name"], r["description"], r["escnn"], str(r["order"]),
                  "-" if r["default_max_freq"] is None else str(r["default_max_freq"]))
    print_table(console(), t)
