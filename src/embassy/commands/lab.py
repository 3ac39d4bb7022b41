"""`embassy lab up|down|status --stack S`: the local target (see src/embassy/lab/)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from embassy.commands.common import StackOpt, app, console, load, user_error
from embassy.errors import UserError
from embassy.lab import lifecycle
from embassy.lab.state import LAB_ID_ENV, lab_id_from_env
from embassy.lab.system import require_root

__all__ = ["app"]

lab_app = typer.Typer(no_args_is_help=True, help="The local lab: network namespaces, systemd-nspawn hosts, SeaweedFS vaults.")
app.add_typer(lab_app, name="lab")


def _lab_id() -> int:
    try:
        return lab_id_from_env()
    except UserError as exc:
        raise user_error(exc) from None


@lab_app.command("up")
def lab_up(stack: StackOpt) -> None:
    """Build the stack's federation on this machine (root). Already up: says so, changes nothing."""
    dep = load(stack)
    lab_id = _lab_id()
    start = time.monotonic()
    with console.status(f"lab {lab_id}: starting") as spinner:
        def say(message: str) -> None:
            console.print(f"[dim]{time.monotonic() - start:6.1f}s[/dim] {message}", soft_wrap=True)
            spinner.update(f"lab {lab_id}: {message}")

        try:
            lab, built = lifecycle.up(dep, lab_id, say)
        except UserError as exc:
            raise user_error(exc) from None
    if not built:
        console.print(f"lab {lab_id} (stack '{stack}') is already up: nothing changed "
                      f"({len(lab.hosts)} hosts, {len(lab.vaults)} vaults)", soft_wrap=True)
        if lifecycle.mirror_outdated(lab):
            console.print("note: src/embassy/lab/mirror-packages.txt changed since this lab's mirror was built: "
                          f"run `embassy lab mirror --stack {stack}`", soft_wrap=True)
        return
    console.print(f"[green]lab {lab_id} up[/green] in {time.monotonic() - start:.1f}s: {len(lab.hosts)} hosts, "
                  f"{len(lab.vaults)} vaults, range {lab.range}; clients run in `ip netns exec {lab.controller_netns} …`; "
                  f"state {lab.dir}/state.json", soft_wrap=True)


@lab_app.command("mirror")
def lab_mirror(stack: StackOpt) -> None:
    """Rebuild the running lab's package mirror after mirror-packages.txt changed, and serve it."""
    lab_id = _lab_id()
    try:
        changed = lifecycle.refresh_mirror(lab_id, stack, lambda m: console.print(m, soft_wrap=True))
    except UserError as exc:
        raise user_error(exc) from None
    if changed:
        console.print(f"lab {lab_id}: mirror refreshed; on the hosts, `apt-get update` sees the new packages", soft_wrap=True)
    else:
        console.print(f"lab {lab_id}: the mirror is up to date: nothing changed", soft_wrap=True)


@lab_app.command("down")
def lab_down(stack: StackOpt) -> None:
    """Remove the lab (built or half-built): containers, servers, mounts, namespaces, cgroups, route."""
    lab_id = _lab_id()
    start = time.monotonic()
    try:
        removed = lifecycle.down(lab_id)
    except UserError as exc:
        raise user_error(exc) from None
    if not removed:
        console.print(f"lab {lab_id}: nothing to remove")
        return
    for item in removed:
        console.print(f"  removed {item}", soft_wrap=True)
    console.print(f"[green]lab {lab_id} down[/green] in {time.monotonic() - start:.1f}s")


@lab_app.command("status")
def lab_status(stack: StackOpt,
               as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False) -> None:
    """Whether the lab is up; per host SSH and systemd state; per vault whether it answers."""
    lab_id = _lab_id()
    try:
        require_root()
    except UserError as exc:
        raise user_error(exc) from None
    result = lifecycle.status(lab_id, stack)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"lab {lab_id} ({LAB_ID_ENV}={lab_id}), stack {result.get('stack')}: {'up' if result['up'] else 'down'}")
        for h in result["hosts"]:
            print(f"  host  {h['name']:<14} {h['address']:<12} ssh={'ok' if h['ssh'] else 'NO'} systemd={h['systemd']} "
                  f"processes={h['processes']} pss={h['pss_kib'] / 1024:.0f} MiB os={h.get('os') or '?'!r}")
        for v in result["vaults"]:
            print(f"  vault {v['embassy']:<14} {v['endpoint']} {'reachable' if v['reachable'] else 'UNREACHABLE'}")
        if result.get("site_inventory"):
            print(f"  site inventory {result['site_inventory']} (--target site --inventory PATH)")
    if not result["up"]:
        raise typer.Exit(1)
