"""The `crossover` command's typer app, its consoles and the one handler of user errors (exit status 2)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from crossover import __version__
from crossover.errors import UserError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

USER_ERROR = 2
STOPPED = 130  # the study was stopped (Ctrl-C, `crossover stop`): the shell's status for SIGINT


# `--help` lists the commands in the order of a study's life, whichever module registers them first.
COMMAND_ORDER = ("validate", "plan", "data", "run", "status", "stop", "ui", "analyze", "eval", "train")


class _UserErrorsExit2(TyperGroup):
    """The one handler of user errors, for every command: a `UserError` (bad spec, data, tracking store,
    checkpoint, diverged loss...) is printed, what went wrong and how to fix it, and the command exits with status 2.
    Anything else is a bug and keeps its traceback."""

    def list_commands(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except UserError as exc:
            err.print(f"[bold red]{getattr(exc, 'title', 'error')}:[/] ", end="", highlight=False)
            err.print(str(exc), markup=False, highlight=False)
            raise typer.Exit(USER_ERROR) from None


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    cls=_UserErrorsExit2,
    help="Data-constrained AR vs masked-diffusion studies.",
)


def _version(value: bool) -> None:
    if value:
        out.print(f"crossover {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Plan, run and analyse AR vs MDLM studies written as YAML specs."""
