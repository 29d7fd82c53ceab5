"""The shared Typer app and the one place where errors become one clear line."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from defectmap.errors import DefectmapError

app = typer.Typer(
    name="defectmap",
    help="Unsupervised visual anomaly detection for industrial inspection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check, synthesise and download datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

_DEBUG_ENV = "DEFECTMAP_DEBUG"
#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _interrupted() -> int:
    err_console.print("[red]interrupted[/red]: stopped cleanly, no partial output left")
    return EXIT_INTERRUPTED


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    # Read by run_app from its argv: setting DEFECTMAP_DEBUG here would leak into every
    # later run_app call of the same process (tests, embedding programs).
    del debug


#: Options whose value may be left out, and the value they then take.
_OPTIONAL_VALUES = {"--ray": "auto"}


def _fill_optional_values(argv: list[str]) -> list[str]:
    """``--ray`` at the end or before another option means ``--ray=auto``."""
    out = []
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg in _OPTIONAL_VALUES and (following is None or following.startswith("-")):
            arg = f"{arg}={_OPTIONAL_VALUES[arg]}"
        out.append(arg)
    return out


def run_app(argv: list[str]) -> int:
    """Run the CLI on ``argv``; return the exit code.

    Errors a user can cause (:class:`DefectmapError`, missing files) print one line on
    stderr and return 1 (2 for usage errors, 130 for Ctrl-C); ``--debug`` re-raises them.
    """
    debug = "--debug" in argv
    argv = _fill_optional_values(argv)
    try:
        # With standalone_mode=False click returns the code of ``typer.Exit(code)`` (or the
        # command's own return value, which our commands leave as None).
        result = app(args=argv, prog_name="defectmap", standalone_mode=False)
    except KeyboardInterrupt:
        return _interrupted()
    except (DefectmapError, FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        if debug or os.environ.get(_DEBUG_ENV):
            raise
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except SystemExit as exc:  # typer.Exit inside commands
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Exit):
            return int(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show(file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return _interrupted()  # click turns Ctrl-C into Abort
        raise
    if result == EXIT_INTERRUPTED:
        # typer catches KeyboardInterrupt itself and returns 130 without a word.
        return _interrupted()
    return result if isinstance(result, int) else 0
