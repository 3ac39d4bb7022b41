"""`embassy` commands of this area (registered on embassy.commands.common.app): replicate, verify."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from embassy.commands.common import StackOpt, app, console, load, user_error
from embassy.errors import EXIT_FINDING, OptionInvalid, UserError

if TYPE_CHECKING:
    from embassy import model
    from embassy.targets import Target

__all__ = ["InventoryOpt", "OutputsOpt", "TargetOpt", "app", "data_plane_target"]

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="lab (this machine's lab) or site (a host nation's data "
                                                               "centre, from --inventory)")]
InventoryOpt = Annotated[Path | None, typer.Option("--inventory", help="the site inventory (--target site); the lab's "
                                                   "own is named by `embassy lab status --json`")]
OutputsOpt = Annotated[Path | None, typer.Option("--outputs", help="the stack outputs saved from `pulumi stack output "
                                                 "--json` (--target aws; default: ask the pulumi CLI)")]


def data_plane_target(command: str, kind: str, dep: model.Deployment, inventory: Path | None,
                      kinds: tuple[str, ...], outputs: Path | None = None) -> Target:
    """The target `command` runs against, refused (exit 2, with a HINT) for a kind it does not take."""
    from embassy.choosetarget import target_for

    if kind not in kinds:
        raise OptionInvalid(f"{command} reaches hosts and vaults through --target {' or '.join(kinds)}, not '{kind}'",
                            "use " + ", or ".join({"site": "--target site --inventory FILE",
                                                   "aws": "--target aws [--outputs FILE]"}.get(k, f"--target {k}")
                                                  for k in kinds) + " (see the README: which target each command takes)")
    return target_for(kind, dep, inventory, outputs)


def _table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"replication: round {doc.get('round')} at {doc.get('time', '')[:19]}")
    for column in ("embassy", "mode", "register", "lag (s)", "objective (s)", "last shipped", "state"):
        table.add_column(column)
    for e in doc["embassies"]:
        for r in e["registers"]:
            lag = "-" if r["lag_seconds"] is None else f"{r['lag_seconds']:.1f}"
            state = "[red]ALERT[/red]" if r["alert"] else "[green]ok[/green]"
            table.add_row(e["name"], e["mode"], r["name"], lag, str(r["rpo_bound_seconds"]),
                          str(r["last_shipped"] or "-")[:24], state)
        for err in e.get("errors", []):
            table.add_row(e["name"], e["mode"], "[red]vault[/red]", "", "", err[:60], "[red]ALERT[/red]")
    return table


@app.command()
def replicate(
    stack: StackOpt,
    once: Annotated[bool, typer.Option("--once", help="run one round now, wait for it, print the result")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the round and the lag as JSON")] = False,
    target: TargetOpt = "lab",
    inventory: InventoryOpt = None,
) -> None:
    """Run one replication round now (--once), or show the live lag per embassy until interrupted."""
    from concurrent.futures import ThreadPoolExecutor

    from embassy.replication import replicate as lib
    from embassy.replication.hold import advance_all

    dep = load(stack)
    try:
        where = data_plane_target("replicate", target, dep, inventory, ("lab", "site"))
        if once:
            with console.status("replication round on home: digests, WAL, snapshots, signed manifests") as status:
                report = lib.run_round(where)
                # Each warm embassy's standby moves to the new head's signed point, once that head is verified;
                # the lag is read at home meanwhile (from the WAL receivers and the repos: no standby restart moves it).
                status.update("warm embassies: verify the new head, hold each standby at its signed point")
                with ThreadPoolExecutor(max_workers=1) as pool:
                    measured = pool.submit(lib.lag, where)
                    held = advance_all(dep, where)
                    doc = lib.combine(report, measured.result())
                doc["holds"] = [h.as_json() for h in held]
            if as_json:
                print(json.dumps(doc, indent=2))
            else:
                console.print(_table(doc))
            if any(e["errors"] for e in doc["embassies"]):
                raise typer.Exit(EXIT_FINDING)
            return
        if as_json:
            print(json.dumps(lib.combine(None, lib.lag(where)), indent=2))
            return
        with Live(_table(lib.combine(None, lib.lag(where))), console=console, refresh_per_second=1) as live:
            while True:  # until Ctrl-C
                time.sleep(2)
                live.update(_table(lib.combine(None, lib.lag(where))))
    except UserError as exc:
        raise user_error(exc) from None
    except KeyboardInterrupt:
        return


@app.command()
def verify(
    stack: StackOpt,
    embassy: Annotated[str, typer.Option("--embassy", "-e", help="the embassy whose vault to check")],
    full: Annotated[bool, typer.Option("--full", help="read every byte (restic --read-data, restores for digests)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    accept_unanchored: Annotated[bool, typer.Option(
        "--accept-unanchored", help="when nothing anchors freshness (no high-water mark on this controller, no other "
                                    "vault to compare with), take the chain as it is; the JSON records it")] = False,
    target: Annotated[str, typer.Option("--target", "-t", help="lab (this machine's lab), site (a host nation's "
                                                               "data centre, from --inventory) or aws (stack outputs)")] = "lab",
    inventory: Annotated[Path | None, typer.Option("--inventory", help="the site inventory (--target site); the lab's "
                                                   "own is named by `embassy lab status --json`")] = None,
    outputs: Annotated[Path | None, typer.Option("--outputs", help="the stack outputs saved from `pulumi stack output "
                                                 "--json` (--target aws; default: ask the pulumi CLI)")] = None,
) -> None:
    """Check an embassy's vault: manifest chain, signatures, freshness, backups, locks. Exit 0 intact, 1 not."""
    from embassy.choosetarget import target_for
    from embassy.replication import verify as lib

    dep = load(stack)
    try:
        if target not in ("lab", "site", "aws"):
            raise OptionInvalid(f"verify reaches vaults through --target lab, site or aws, not '{target}'",
                                "use --target lab, --target site --inventory FILE or --target aws [--outputs FILE]")
        where = target_for(target, dep, inventory, outputs)
        with console.status(f"verifying the vault of {embassy}") as status:
            result = lib.verify(dep, where, embassy, full=full, accept_unanchored=accept_unanchored,
                                say=lambda m: status.update(m))
    except UserError as exc:
        raise user_error(exc) from None
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
    elif result.intact:
        head = result.head or {}
        console.print(f"[green]intact[/green]: {result.manifests} manifests, head round {head.get('round')} "
                      f"({str(head.get('sha256'))[:16]}…), {len(result.checked)} objects checked")
        if result.freshness and result.freshness.accepted_unanchored:
            console.print("[yellow]freshness not established[/yellow]: accepted with --accept-unanchored")
    else:
        failure = result.first_failure or {}
        console.print(f"[red]NOT intact[/red]: {failure.get('object')}: {failure.get('reason')}")
    if not result.intact:
        raise typer.Exit(EXIT_FINDING)
