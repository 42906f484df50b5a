"""The `dpms` command line. It only parses arguments and dispatches to the library.

Each command lives in its own section below; errors of the user's making (`DpmsError`) print one
line and exit with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import DpmsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fast ODE solvers for diffusion models, and FID benchmarks.")
console = Console()
err_console = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of `python -m dpms`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # torchrun passes everything after `-m dpms --` through; drop a leading "--" separator.
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        app(args=argv, prog_name="dpms", standalone_mode=False)
    except DpmsError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        raise
    return 0


# ---------------------------------------------------------------------------------------------
# Commands are defined below, one section each.
# ---------------------------------------------------------------------------------------------
