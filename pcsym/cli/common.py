"""What every command shares: the Typer apps, global options, error handling, console, shared
options and the parsers that check a flag's value. Heavy imports (torch, escnn) happen inside
command bodies, after every argument has been checked, so ``pcsym --help`` is instant and a bad
argument is reported in a fraction of a second."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import typer
from typer.core import TyperGroup

from .. import __version__
from ..config import (BALANCES, DATA_FORMATS, DEVICES, EDGE_FEATURES, FRAMES, KERNELS, OPTIMIZERS, ROTATIONS, SAMPLINGS,
                      SCHEDULES, SELECT_METRICS, UP_AXES)
from ..errors import PcsymError

try:  # typer >= 0.26 vendors click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer on plain click
    from click.exceptions import ClickException, UsageError


class BadValue(UsageError):
    """A flag's value that cannot be used: shown as its message alone (which names the flag), exit 2."""

    def format_message(self) -> str:
        return self.message


class OneLineGroup(TyperGroup):
    """The root command: every usage error (unknown option, missing option, a bad value) is one line
    ``error: ...`` on stderr with exit code 2, as pcsym's own errors are, instead of click's usage
    block. ``pcsym`` alone still prints the help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `pcsym` / `pcsym data` alone: the help
                exc.show()
                sys.exit(exc.exit_code)
            typer.echo(f"error: {usage_message(exc)}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def usage_message(exc: ClickException) -> str:
    """One line for a usage error; click's own ones point to the command's --help."""
    msg = " ".join(exc.format_message().split())
    if isinstance(exc, BadValue):
        return msg
    ctx = getattr(exc, "ctx", None)
    return f"{msg} (see '{ctx.command_path} --help')" if ctx is not None else msg


# Plain click help and usage errors (rich_markup_mode=None): Typer's rich formatter imports rich's
# markdown stack on every --help or bad flag, which alone takes longer than the 0.3 s help budget.
app = typer.Typer(cls=OneLineGroup, add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Symmetry-aware point-cloud classification with implicit steerable "
                                              "kernels.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Prepare, cache and fetch datasets.")
app.add_typer(data_app, name="data")


@dataclass
class GlobalOptions:
    debug: bool = False
    quiet: bool = False


def options(ctx: typer.Context) -> GlobalOptions:
    """The global flags (``pcsym --debug/--quiet CMD`` or ``pcsym CMD --quiet``) as seen from a command."""
    return ctx.find_object(GlobalOptions) or GlobalOptions()


def _version_cb(value: bool):
    if value:
        typer.echo(f"pcsym {__version__}")
        raise typer.Exit()


def _set_debug():
    logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


@app.callback()
def _main(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks and escnn's messages."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output (no progress bars).")):
    ctx.obj = GlobalOptions(debug=debug, quiet=quiet)
    if debug:
        _set_debug()


def _quiet_cb(ctx: typer.Context, param, value: bool):
    if value:
        ctx.ensure_object(GlobalOptions).quiet = True


def _debug_cb(ctx: typer.Context, param, value: bool):
    if value:
        ctx.ensure_object(GlobalOptions).debug = True
        _set_debug()


def quiet_option():
    """``-q/--quiet`` after the command name (``pcsym train ... -q``), as before it."""
    return typer.Option(False, "--quiet", "-q", expose_value=False, callback=_quiet_cb,
                        help="Less output (no progress bars); also accepted before the command.")


def debug_option():
    """``--debug`` after the command name, as before it."""
    return typer.Option(False, "--debug", expose_value=False, callback=_debug_cb,
                        help="Show Python tracebacks; also accepted before the command.")


# ----------------------------------------------------------------------------- flag values


def _listed(choices) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def choice(flag: str, choices: tuple[str, ...]) -> Callable:
    """Parser of an enumerated flag: any case, the canonical spelling back; else one line naming the
    flag and its values (the annotation, a ``Literal`` of the same values, lists them in --help)."""
    def parse(value):
        if value is None:
            return None
        for c in choices:
            if str(value).lower() == c.lower():
                return c
        raise BadValue(f"unknown {flag} '{value}': use {_listed(choices)}")

    return parse


def integer(flag: str, low: int | None = None, high: int | None = None) -> Callable:
    """Parser of an integer flag within [low, high] (either may be open); one line naming the flag otherwise."""
    def parse(value):
        if value is None:
            return None
        try:
            n = int(value) if not isinstance(value, str) else int(value.strip(), 10)
        except ValueError:
            raise BadValue(f"{flag} must be an integer, got '{value}'") from None
        if (low is not None and n < low) or (high is not None and n > high):
            raise BadValue(f"{flag} {_range(low, high)}, got {n}")
        return n

    return parse


def number(flag: str, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable:
    """Parser of a real-valued flag in an interval (open or closed at either end)."""
    def parse(value):
        if value is None:
            return None
        try:
            x = float(value)
        except ValueError:
            raise BadValue(f"{flag} must be a number, got '{value}'") from None
        if x != x or (low is not None and (x < low or (low_open and x == low))) or \
                (high is not None and (x > high or (high_open and x == high))):
            if low is not None and high is not None:
                what = f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            elif low is not None:
                what = f"must be {'greater than' if low_open else 'at least'} {low:g}"
            else:
                what = f"must be {'less than' if high_open else 'at most'} {high:g}"
            raise BadValue(f"{flag} {what}, got {value}")
        return x

    return parse


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f"must be between {low} and {high}"
    if low == 0:
        return "must be 0 or more"
    return f"must be at least {low}" if low is not None else f"must be at most {high}"


def fail(message: str, path=None):
    """A usage error found by a command body before any work: one line, exit 2."""
    raise PcsymError(message, path=path)


# ----------------------------------------------------------------------------- running a command


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


# ----------------------------------------------------------------------------- output

#: width of stdout when it is not a terminal (a pipe, a file): wide enough that no table is cut
PIPE_WIDTH = 10_000


def console(stderr: bool = False):
    """A rich console. Where stdout is not a terminal, it is as wide as any table needs, so piped and
    logged output is never cut or wrapped to 80 columns."""
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not stderr and not con.is_terminal:
        con.width = PIPE_WIDTH
    return con


def table(title: str | None = None):
    """A rich table whose columns (:func:`column`) fold rather than cut what does not fit."""
    from rich.table import Table

    return Table(title=title)


def column(t, name: str, justify: str = "left") -> None:
    """A column that never cuts: right-aligned (numeric) columns never wrap, text columns fold."""
    t.add_column(name, justify=justify, overflow="fold", no_wrap=justify == "right")


def print_table(con, t) -> None:
    """Print ``t``; in a terminal too narrow even for its folded text columns and whole numbers, at the
    width it needs (the terminal wraps the long lines): nothing is ever cut off."""
    from rich.cells import cell_len
    from rich.text import Text

    plain = [[Text.from_markup(x).plain if isinstance(x, str) else "" for x in (col.header, *col._cells)]
             for col in t.columns]
    natural = sum(max(cell_len(x) for x in texts) for texts in plain) + 3 * len(plain) + 1  # cells, padding, rules
    if natural <= con.width:  # it fits as it is (always where stdout is not a terminal): nothing to fold
        con.print(t)
        return
    from rich.measure import Measurement

    for col, texts in zip(t.columns, plain):  # text columns wrap between words, never inside one
        if not col.no_wrap:
            col.min_width = max([col.min_width or 0, *(cell_len(w) for x in texts for w in x.split())])
    need = Measurement.get(con, con.options.update_width(PIPE_WIDTH), t).minimum
    if need <= con.width:
        con.print(t)
        return
    width = con.width
    con.width = need
    try:
        con.print(t)
    finally:
        con.width = width


# ----------------------------------------------------------------------------- shared options and checks

# annotations of enumerated options: typer lists a Literal's values in --help (the parsers check them)
UP_AXIS = Literal[UP_AXES]
DATA_FORMAT = Literal[DATA_FORMATS]
ROTATION = Literal[ROTATIONS]
SAMPLING = Literal[SAMPLINGS]
DEVICE = Literal[DEVICES]
KERNEL = Literal[KERNELS]
SCHEDULE = Literal[SCHEDULES]
SELECT = Literal[SELECT_METRICS]
EDGE_FEATURE = Literal[EDGE_FEATURES]
FRAME = Literal[FRAMES]
BALANCE = Literal[BALANCES]
OPTIMIZER = Literal[OPTIMIZERS]


def up_axis_option() -> Optional[str]:
    return typer.Option(None, "--up-axis", parser=choice("--up-axis", UP_AXES),
                        help="Up axis of the data (y is rotated to z; default: z, or a cache's own).")


def format_option() -> Optional[str]:
    return typer.Option(None, "--format", parser=choice("--format", DATA_FORMATS),
                        help="Dataset layout (default: detect).")


def json_option() -> bool:
    return typer.Option(False, "--json", help="Machine-readable output (stdout holds only the JSON).")


def threads_option() -> int:
    return typer.Option(0, "--threads", parser=integer("--threads", 0),
                        help="CPU threads for torch (0 = torch's default, one per core).")


def force_option(what: str) -> bool:
    return typer.Option(False, "--force", help=f"Overwrite {what} (without it an existing one is refused).")


def check_dataset(data) -> None:
    """--data names an existing dataset folder or cache file (checked before any heavy import)."""
    if data is not None and not Path(data).exists():
        fail("no such dataset file or directory (--data)", path=data)


def refuse_existing(paths, force: bool) -> None:
    """The one overwrite rule: a command never replaces an existing output file unless --force is given."""
    for p in paths:
        if Path(p).exists() and not force:
            fail("already exists; pass --force to overwrite it", path=p)
