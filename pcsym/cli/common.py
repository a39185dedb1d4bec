"""What every command shares: the Typer apps, global options, error handling, console, shared
options. Heavy imports (torch, escnn) happen inside command bodies so ``pcsym --help`` is instant."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import typer

from .. import __version__
from ..errors import PcsymError

# Plain click help and usage errors (rich_markup_mode=None): Typer's rich formatter imports rich's
# markdown stack on every --help or bad flag, which alone takes longer than the 0.3 s help budget.
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Symmetry-aware point-cloud classification with implicit steerable kernels.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Prepare, cache and fetch datasets.")
app.add_typer(data_app, name="data")


@dataclass
class GlobalOptions:
    debug: bool = False
    quiet: bool = False


def options(ctx: typer.Context) -> GlobalOptions:
    """The global flags (``pcsym --debug/--quiet CMD``) as seen from a command's context."""
    return ctx.find_object(GlobalOptions) or GlobalOptions()


def _version_cb(value: bool):
    if value:
        typer.echo(f"pcsym {__version__}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks and escnn's messages."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output (no progress bars).")):
    ctx.obj = GlobalOptions(debug=debug, quiet=quiet)
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(exc: BaseException, debug: bool, code: int = 2):
    if debug:
        raise exc
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def run(body: Callable[[], object], ctx: typer.Context):
    """Run a command body: PcsymError -> one line + its exit code (2); anything unexpected -> one
    line + exit 1 (the traceback with --debug); Ctrl-C -> exit 130."""
    debug = options(ctx).debug
    try:
        return body()
    except typer.Exit:
        raise
    except PcsymError as exc:
        _fail(exc, debug, exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except MemoryError:
        _fail(PcsymError("out of memory: try fewer --points or a smaller --batch-size"), debug)
    except Exception as exc:  # unexpected: still no traceback unless --debug
        if debug:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                   "(run with --debug for the traceback)", err=True)
        raise typer.Exit(1)


def setup_torch(threads: int, device: str = "cpu") -> str:
    """Set the thread count and the allocator (:mod:`pcsym.training.allocator`); the device to use (``auto`` resolved)."""
    import torch

    from ..training.allocator import keep_freed_memory
    from ..training.distributed import resolve_device

    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    return resolve_device(device)


def up_axis_option() -> Optional[str]:
    return typer.Option(None, "--up-axis", help="Up axis of the data: z or y (y is rotated to z).")


def format_option() -> Optional[str]:
    return typer.Option(None, "--format", help="h5, normal_resampled, off or folder (default: detect).")


def json_option() -> bool:
    return typer.Option(False, "--json", help="Machine-readable output (stdout holds only the JSON).")


def check_up_axis(up_axis: Optional[str]) -> Optional[str]:
    from ..config import UP_AXES, check_choice

    return check_choice(up_axis, UP_AXES, "--up-axis")
