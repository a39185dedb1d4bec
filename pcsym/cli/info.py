"""``pcsym info``: the version, where pcsym runs from, and whether the compiled kernels are active."""

from __future__ import annotations

import json

import typer

from .common import app, json_option, run


@app.command()
def info(ctx: typer.Context, as_json: bool = json_option()):
    """Show the version, the install, the dependencies, the cache folder, the shipped models, and whether
    the compiled kernels are active (if not, why: training then runs about 3x slower)."""

    def body():
        facts = _facts()
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        k = facts["kernels"]
        kernels = (f"active, {k['loops']} loops ({k['library']})" if k["active"] else
                   f"off ({k['why']}): the torch/numpy path" if k["why"] == "PCSYM_NATIVE=off" else
                   f"NOT active ({k['why']}): the slower torch/numpy path; bash scripts/setup.sh installs a compiler")
        deps = ", ".join(f"{name} {version or 'not installed'}" for name, version in facts["dependencies"].items())
        for line in (f"pcsym {facts['version']} ({facts['package']})", f"python {facts['python']}; {deps}",
                     f"compiled kernels: {kernels}", f"cache: {facts['cache'] or 'off'}",
                     f"shipped models: {', '.join(facts['shipped_models']) or 'none'}"):
            typer.echo(line)

    run(body, ctx)


def _facts() -> dict:
    import platform
    from importlib import metadata
    from pathlib import Path

    from .. import __version__
    from ..files import user_cache_dir
    from ..geometry import native
    from ..models.checkpoint import PRETRAINED, PRETRAINED_DIR

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cache = user_cache_dir()
    return {"version": __version__, "package": str(Path(__file__).resolve().parents[1]),
            "python": platform.python_version(),
            "dependencies": {name: version(name) for name in ("torch", "escnn", "numpy")},
            "kernels": native.describe(), "cache": None if cache is None else str(cache),
            "shipped_models": [name for name, file in PRETRAINED.items() if (PRETRAINED_DIR / file).exists()]}
