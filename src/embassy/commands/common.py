"""What every command module shares: the Typer app they register on, the console, the --stack option, and
the two ways a command ends on bad input. The modules import this, never `embassy.cli`, which imports them."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from embassy import model
from embassy.errors import EXIT_USAGE, UserError

# rich_markup_mode=None: plain help; Typer's Rich panels print `<bool>` beside every flag (--help, --json).
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Build, feed, prove and restore data embassies.")
console = Console(stderr=True)

StackOpt = Annotated[str, typer.Option("--stack", "-s", help="stack name: reads Pulumi.<stack>.yaml")]


@app.callback()
def _root() -> None:
    """Build, feed, prove and restore data embassies."""


def load(stack: str) -> model.Deployment:
    """The validated model of a stack, or exit 2 with every error and its hint."""
    try:
        return model.load_stack(stack)
    except model.ConfigInvalid as exc:
        for issue in exc.issues:
            print(issue.render(), file=sys.stderr)
        print(f"{exc.source}: {len(exc.issues)} error(s)", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None


def user_error(exc: UserError) -> typer.Exit:
    print(exc.render(), file=sys.stderr)
    return typer.Exit(exc.code)
