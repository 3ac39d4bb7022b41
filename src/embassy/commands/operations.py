"""`embassy` commands of this area (registered on embassy.commands.common.app): harden, deploy."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from embassy.commands.common import StackOpt, app, console, load, user_error
from embassy.commands.replication import InventoryOpt
from embassy.errors import UserError

__all__ = ["app"]

TARGET_HELP = ("lab (this machine's lab), site (a host nation's data centre: the hosts of --inventory, over SSH) or "
               "aws (stack outputs, SSM)")


# --------------------------------------------------------------------------- harden (issue 5, roles/)


class HardenTarget(StrEnum):
    LAB = "lab"
    SITE = "site"
    AWS = "aws"


@app.command()
def harden(
    stack: StackOpt,
    target: Annotated[HardenTarget, typer.Option("--target", "-t", help=TARGET_HELP)],
    as_json: Annotated[bool, typer.Option(
        "--json", help='print {"hosts": [{"name", "changed", "lynis_before", "lynis_after"}]}')] = False,
    lynis: Annotated[bool, typer.Option("--lynis/--no-lynis", help="measure the Lynis index before and after")] = True,
    lynis_before: Annotated[bool, typer.Option(
        "--lynis-before/--no-lynis-before", help="also measure the index before the roles run (a whole Lynis audit "
                                                 "of every host; the index after is what the target is judged on)")] = True,
    inventory: InventoryOpt = None,
) -> None:
    """Apply the hardening roles (roles/site.yml, via ansible-runner); Lynis index before and after."""
    from embassy import harden as harden_lib
    from embassy.choosetarget import target_for

    dep = load(stack)
    start = time.monotonic()

    def say(message: str) -> None:  # on stderr, with --json too: progress is never silent for minutes
        console.print(f"[dim]{time.monotonic() - start:6.1f}s[/dim] {escape(message)}", highlight=False,
                      soft_wrap=True)

    try:
        results = harden_lib.harden_target(target_for(target.value, dep, inventory), say, measure=lynis,
                                           before_too=lynis_before, console=console)
    except UserError as exc:
        raise user_error(exc) from None
    if as_json:
        print(json.dumps({"stack": stack, "target": target.value,
                          "hosts": [{"name": r.name, "changed": r.changed, "lynis_before": r.lynis_before,
                                     "lynis_after": r.lynis_after} for r in results]}, indent=2))
        return
    table = Table(title=f"embassy harden --target {target.value} --stack {stack}")
    for column in ("host", "changed", "Lynis before", "Lynis after"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for r in results:
        table.add_row(r.name, str(r.changed), str(r.lynis_before if r.lynis_before is not None else "-"),
                      str(r.lynis_after if r.lynis_after is not None else "-"))
    console.print(table)


# --------------------------------------------------------------------------- deploy (issue 5, deploys/)


class DeployTarget(StrEnum):
    LAB = "lab"
    SITE = "site"
    AWS = "aws"


@app.command()
def deploy(
    stack: StackOpt,
    target: Annotated[DeployTarget, typer.Option("--target", "-t", help=TARGET_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help='print {"hosts": [{"name", "changed"}]}')] = False,
    size_mb: Annotated[float | None, typer.Option(
        "--size-mb", help="size of the home state's seeded registers in MB (default 8; env EMBASSY_HOME_SIZE_MB)")] = None,
    inventory: InventoryOpt = None,
) -> None:
    """Run the pyinfra deploys: home state, replication agents, embassy standbys. Idempotent."""
    from embassy import deploy as deploy_lib
    from embassy.choosetarget import target_for
    from embassy.model import project_root

    dep = load(stack)
    if size_mb is not None and not 0.1 <= size_mb <= 100_000:
        raise user_error(UserError(f"--size-mb {size_mb:g} is out of range", "give a size between 0.1 and 100000 MB"))
    start = time.monotonic()

    def say(message: str) -> None:  # on stderr, with --json too: progress is never silent for minutes
        console.print(f"[dim]{time.monotonic() - start:6.1f}s[/dim] {escape(message)}", highlight=False,
                      soft_wrap=True)

    try:
        result = deploy_lib.run(target_for(target.value, dep, inventory), project_root(), size_mb=size_mb, say=say,
                                console=console)
    except UserError as exc:
        raise user_error(exc) from None
    if as_json:
        print(json.dumps({"stack": stack, "target": target.value, **result.as_json()}, indent=2))
        return
    table = Table(title=f"embassy deploy --target {target.value} --stack {stack} ({result.seconds:.1f}s)")
    for column in ("host", "changed", "unchanged"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for h in result.hosts:
        table.add_row(h.name, str(h.changed), str(h.unchanged))
    console.print(table)
