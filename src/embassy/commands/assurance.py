"""`embassy` commands of this area (registered on embassy.commands.common.app): restore-test, status."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from embassy.commands.common import StackOpt, app, console, load, user_error
from embassy.commands.replication import InventoryOpt, OutputsOpt, data_plane_target
from embassy.errors import EXIT_FINDING, UserError

__all__ = ["app"]

# The same generic paths on every target: the vault through target.vault(embassy) (on AWS, sessions of the stack's
# restore role), the host through target.run_on (on AWS, ssh through SSM with that role's session on its input).
KINDS = ("lab", "site", "aws")
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="lab (this machine's lab), site (a host nation's data "
                                                               "centre, from --inventory) or aws (stack outputs)")]


@app.command("restore-test")
def restore_test(
    stack: StackOpt,
    embassy: Annotated[str, typer.Option("--embassy", "-e", help="the embassy that proves it can restore")],
    point: Annotated[str | None, typer.Option("--point", help="latest | random (default: the stack's "
                                                               "data-embassy:restore_tests.point)")] = None,
    window_days: Annotated[int | None, typer.Option("--window-days", help="--point random: within these days "
                                                                          "(default: the stack's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    target: TargetOpt = "lab",
    inventory: InventoryOpt = None,
    outputs: OutputsOpt = None,
) -> None:
    """Restore a signed point into scratch space at the embassy, compare digests, smoke-query, remove it; home,
    the standby and any served restore untouched. Exit 0 passed; 1 failed, naming the object; 2 bad input."""
    from embassy.assurance import restoretest as lib

    dep = load(stack)
    start = time.monotonic()

    def say(message: str) -> None:
        if not as_json:
            console.print(f"[dim]{time.monotonic() - start:6.1f}s[/dim] {escape(message)}", highlight=False)

    try:
        lib.check_options(point, window_days)
        where = data_plane_target("restore-test", target, dep, inventory, KINDS, outputs)
        out = lib.run(dep, where, embassy, point=point, window_days=window_days, say=say)
    except UserError as exc:
        raise user_error(exc) from None
    if as_json:
        print(json.dumps(out, indent=2))
    elif out["passed"]:
        console.print(f"[green]passed[/green]: round {out['point']['round']} restored at {embassy} in "
                      f"{out['seconds']:.1f} s; record {out['record']}")
        for r in out["registers"]:
            console.print(f"  {r['name']} ({r['kind']}): digest ok, {r['seconds']:.1f} s (RTO {r['rto_seconds']} s)")
    else:
        failure = out["failure"] or {}
        console.print(f"[red]FAILED[/red]: {escape(str(failure.get('object')))}: {escape(str(failure.get('reason')))}")
    if not out["passed"]:
        raise typer.Exit(EXIT_FINDING)


@app.command()
def status(
    stack: StackOpt,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
    html_dir: Annotated[Path | None, typer.Option("--html", help="also write DIR/status.html (trend charts)")] = None,
    target: TargetOpt = "lab",
    inventory: InventoryOpt = None,
    outputs: OutputsOpt = None,
) -> None:
    """Per embassy: mode, lag, head round and age, last verify, last restore tests and their trend (signed records,
    checked), and an alert line for anything failed, not established or overdue. Exit 0 all well; 1 an alert."""
    from embassy.assurance import status as lib

    dep = load(stack)
    try:
        doc = lib.status(dep, data_plane_target("status", target, dep, inventory, KINDS, outputs))
    except UserError as exc:
        raise user_error(exc) from None
    if html_dir is not None:
        written = lib.write_html(doc, html_dir)
        if not as_json:
            console.print(f"wrote {written}")
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(lib.text(doc), end="")
    if not doc["ok"]:
        raise typer.Exit(EXIT_FINDING)
