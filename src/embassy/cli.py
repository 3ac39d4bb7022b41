"""`embassy …`: the command-line interface. Each command is a thin layer over a library module."""

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


@app.command()
def validate(stack: StackOpt) -> None:
    """Load and check the stack config: exit 0 valid, 2 invalid (each error names its key path)."""
    dep = load(stack)
    # The verdict is the command's output: stdout, one line, never wrapped (errors go to stderr).
    print(f"stack '{dep.stack}' is valid: {len(dep.embassies)} embassies, "
          f"{len(dep.registers)} registers, home state {dep.state.name} ({dep.state.code})")


# Each area registers its commands on `app` from its own module (one owner per module).
from embassy.commands import assurance as _assurance  # noqa: E402,F401  restore-test, status
from embassy.commands import compliance as _compliance  # noqa: E402,F401  check, review
from embassy.commands import custody as _custody  # noqa: E402,F401  custody init|rotate
from embassy.commands import drill as _drill  # noqa: E402,F401  restore, drill
from embassy.commands import lab as _lab  # noqa: E402,F401  lab up|down|status
from embassy.commands import operations as _operations  # noqa: E402,F401  harden, deploy
from embassy.commands import plan as _plan  # noqa: E402,F401  plan
from embassy.commands import replication as _replication  # noqa: E402,F401  replicate, verify
from embassy.commands import report as _report  # noqa: E402,F401  report verify


def main() -> None:  # pragma: no cover - console entry for `python -m embassy`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()


