"""The shared Typer app and the one place where errors become one clear line."""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from defectmap.constants import EXTRA_OF_MODULE
from defectmap.errors import DefectmapError

# Plain help (rich_markup_mode=None): the rich help of typer 0.29 labels every flag <bool>.
# A command group called without its command is a usage error (see run_app), not its help.
app = typer.Typer(
    name="defectmap",
    help="Unsupervised visual anomaly detection for industrial inspection.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Check, synthesise and download datasets.",
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

class CliUsageError(DefectmapError):
    """A flag combination the command line refuses (exit code 2, like any usage error)."""


_DEBUG_ENV = "DEFECTMAP_DEBUG"
#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _interrupted() -> int:
    err_console.print("[red]interrupted[/red]: stopped cleanly, no partial output left",
                      highlight=False)
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


_Types = tuple[type[BaseException], ...]


def _exception_types() -> tuple[_Types, _Types, _Types]:
    """(usage-error, exit, abort) classes of the installed typer and of ``click``.

    typer 0.29 bundles its own copy of click (``typer._click``) whose classes are not
    ``click``'s: an ``isinstance`` check against ``click`` alone never matches them. Older
    typer releases raise ``click``'s own. Both are collected, and only the public names
    ``typer.TyperException``/``typer.Exit``/``typer.Abort`` are relied on.
    """
    usage: list[type[BaseException]] = []
    exits: list[type[BaseException]] = [typer.Exit]
    aborts: list[type[BaseException]] = [typer.Abort]
    base = getattr(typer, "TyperException", None)
    if isinstance(base, type) and issubclass(base, BaseException):
        usage.append(base)
    try:
        import click
    except ImportError:  # pragma: no cover - typer without click
        pass
    else:
        usage.append(click.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    return tuple(usage), tuple(exits), tuple(aborts)


def _usage_line(exc: BaseException) -> str:
    """One line for a usage error: its message, the commands when one is missing or
    unknown, and where the help is."""
    message = " ".join(str(exc.format_message() if hasattr(exc, "format_message")
                           else exc).split())
    ctx: Any = getattr(exc, "ctx", None)
    command: Any = getattr(ctx, "command", None)
    if type(exc).__name__ == "NoArgsIsHelpError" or message.startswith("Usage:"):
        message = "Missing command."  # a group called without its command
    if ctx is not None and hasattr(command, "list_commands") and (
            message.startswith(("Missing command", "No such command"))):
        names = ", ".join(command.list_commands(ctx))
        message = f"{message.rstrip('.')} (commands: {names})"
    path = getattr(ctx, "command_path", None) or "defectmap"
    return f"{message.rstrip('.')}; see '{path} --help'"


def print_error(text: str) -> None:
    """Print ``error: text`` on stderr as one line (markup in ``text`` is not interpreted)."""
    err_console.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)


def run_app(argv: list[str]) -> int:
    """Run the CLI on ``argv``; return the exit code.

    Errors a user can cause (:class:`DefectmapError`, missing files) print one line on
    stderr and return 1; usage errors (an unknown command or flag, a missing or invalid
    value) print one line and return 2; Ctrl-C prints "interrupted" and returns 130.
    ``--debug`` re-raises the errors with their traceback.
    """
    debug = "--debug" in argv or bool(os.environ.get(_DEBUG_ENV))
    usage_errors, exits, aborts = _exception_types()
    argv = _fill_optional_values(argv)
    try:
        # With standalone_mode=False click returns the code of ``typer.Exit(code)`` (or the
        # command's own return value, which our commands leave as None).
        result = app(args=argv, prog_name="defectmap", standalone_mode=False)
    except KeyboardInterrupt:
        return _interrupted()
    except CliUsageError as exc:
        if debug:
            raise
        print_error(str(exc))
        return 2
    except (DefectmapError, FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        if debug:
            raise
        print_error(str(exc))
        return 1
    except SystemExit as exc:  # sys.exit inside commands
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ImportError as exc:  # an optional dependency of this command is not installed
        module = (exc.name or "").split(".")[0]
        if module not in EXTRA_OF_MODULE or debug:
            raise
        print_error(f"this command needs {module}, which is not installed: "
                    f"pip install 'defectmap[{EXTRA_OF_MODULE[module]}]'")
        return 1
    except exits as exc:
        return int(getattr(exc, "exit_code", 0))
    except aborts:
        return _interrupted()  # click turns Ctrl-C into Abort
    except usage_errors as exc:
        if debug:
            raise
        code = int(getattr(exc, "exit_code", 2))
        print_error(_usage_line(exc))
        return code if code not in (0, 1) else 2
    if result == EXIT_INTERRUPTED:
        # typer catches KeyboardInterrupt itself and returns 130 without a word.
        return _interrupted()
    return result if isinstance(result, int) else 0
