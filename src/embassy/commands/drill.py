"""`embassy` commands of this area (registered on embassy.commands.common.app): restore, drill."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from embassy.commands.common import StackOpt, app, console, load, user_error
from embassy.errors import EXIT_FINDING, OptionInvalid, UserError

if TYPE_CHECKING:
    from embassy.custody.shares import ShareText
    from embassy.drill.report import Report
    from embassy.drill.restore import Outcome

__all__ = ["app"]


@app.command()
def restore(
    stack: StackOpt,
    embassy: Annotated[str, typer.Option("--embassy", "-e", help="the embassy to restore at (its vault and host only)")],
    target_time: Annotated[str | None, typer.Option(
        "--target-time", help="restore to this point in time (ISO 8601, UTC if no zone), from the vault")] = None,
    from_vault: Annotated[bool, typer.Option(
        "--from-vault", help="at a warm embassy, restore from the vault into a fresh cluster instead of promoting "
                             "the standby")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
    shares: Annotated[bool, typer.Option(
        "--shares", help="restore with the custody bundle, opened from officials' shares: the files that follow "
                         "(sheets official-<i>.txt), or - to type or paste them (a blank line between shares)")] = False,
    share_files: Annotated[list[str] | None, typer.Argument(help="with --shares: the share files, or -",
                                                           show_default=False)] = None,
    accept_unanchored: Annotated[bool, typer.Option(
        "--accept-unanchored", help="when nothing anchors the vault's freshness (no high-water mark, no custody bundle "
                                    "round, no other vault to compare with), restore from its chain as it is; the "
                                    "outcome records it")] = False,
    target_kind: Annotated[str, typer.Option("--target", "-t", help="lab (this machine's lab), site (a host nation's "
                                                                    "data centre, from --inventory) or aws (stack "
                                                                    "outputs; roles assumed, hosts over SSM)")] = "lab",
    inventory: Annotated[Path | None, typer.Option("--inventory", help="the site inventory (--target site); the lab's "
                                                   "own is named by `embassy lab status --json`")] = None,
    outputs: Annotated[Path | None, typer.Option("--outputs", help="the stack outputs saved from `pulumi stack output "
                                                 "--json` (--target aws; default: ask the pulumi CLI)")] = None,
) -> None:
    """Verify the embassy's vault, restore every register it holds, compare digests, start the state service.

    Exit 0 restored and serving; 1 refused or failed (naming the object); 2 bad input.
    """
    from embassy.choosetarget import target_for
    from embassy.drill import restore as lib
    from embassy.replication import freshness

    dep = load(stack)
    start = time.monotonic()

    def say(message: str) -> None:
        if not as_json:
            console.print(f"[dim]{time.monotonic() - start:6.1f}s[/dim] {escape(message)}", highlight=False)

    try:
        when = lib.parse_time(target_time) if target_time else None
        custody_shares = _shares(dep.stack, shares, share_files or [])  # a mistyped share is named before any lab
        if target_kind not in ("lab", "site", "aws"):
            raise OptionInvalid(f"restore reaches hosts and vaults through --target lab, site or aws, not "
                                f"'{target_kind}'", "use --target lab, --target site --inventory FILE or --target aws "
                                                    "[--outputs FILE]")
        target = target_for(target_kind, dep, inventory, outputs)
        hosts = target.embassy_hosts(embassy)  # EmbassyUnknown before anything runs
        if not shares or target.kind != "lab":  # only the lab may take the key from the bundle it opens
            target.manifest_public_key()  # the trust anchor, before any host or vault is reached
        from embassy.custody import restore as custody_restore

        bundle_round = None
        if shares:
            opened: list[object] = []
            keyring = custody_restore.with_shares(dep, target, embassy, hosts, custody_shares, say, opened=opened)
            bundle_round = freshness.bundle_round(opened[0]) if opened else None
        else:
            keyring = custody_restore.controller_keyring(dep, target, embassy)
        with console.status(f"restoring at {embassy}", spinner="dots") if not as_json else nullcontext():
            outcome = lib.restore(dep, target, embassy, target_time=when, from_vault=from_vault, keyring=keyring,
                                  accept_unanchored=accept_unanchored, bundle_round=bundle_round, say=say)
    except UserError as exc:
        raise user_error(exc) from None
    if as_json:
        print(json.dumps(outcome.as_json(), indent=2))
    else:
        console.print(_table(outcome))
        if outcome.error:
            console.print(outcome.error.render(), markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]restored[/green] at {embassy} in {outcome.as_json()['seconds']:.1f} s: "
                          f"state service {outcome.service_url}, newest heartbeat {outcome.newest_heartbeat}")
            for reg in outcome.registers:  # what is proven, and what is served beyond it
                if reg.proof:
                    beyond = reg.proof["beyond_signed"]
                    count = "not counted" if beyond["transactions"] is None else f"{beyond['transactions']} transactions"
                    console.print(f"  {reg.name}: proven at round {reg.proof['signed_round']}, {reg.proof['signed_point']}; "
                                  f"beyond it: {count} ({beyond['source']})", markup=False, highlight=False)
    if not outcome.ok:
        raise typer.Exit(outcome.error.code if outcome.error else EXIT_FINDING)


def _shares(stack: str, shares: bool, files: list[str]) -> list[ShareText]:
    """The --shares given, each checked on its own (words, checksum, stack on its sheet)."""
    if files and not shares:
        raise UserError(f"share files given without --shares: {' '.join(files)}",
                        "put --shares before the files: `embassy restore ... --shares FILE...`")
    if not shares:
        return []
    from embassy.custody import kit
    from embassy.custody.restore import stdin_text

    texts = kit.read_shares(files or ["-"], stdin_text)
    kit.check_shares(texts, stack)
    return texts


def _table(outcome: Outcome) -> Table:
    m = outcome.manifest
    table = Table(title=f"restore at {outcome.embassy} ({outcome.mode})" + (f" from {m.key}" if m else ""))
    for column in ("register", "kind", "method", "verified", "restored"):
        table.add_column(column)
    for r in outcome.registers:
        table.add_row(r.name, r.kind, r.method or "-", "[green]yes[/green]" if r.verified else "[red]no[/red]",
                      "[green]yes[/green]" if r.restored else "[red]no[/red]")
    return table


@app.command()
def drill(
    stack: StackOpt,
    report: Annotated[Path, typer.Option("--report", "-r", help="folder for report.json, report.md, report.html, report.sig")],
    embassy: Annotated[str | None, typer.Option(
        "--embassy", "-e", help="the embassy to restore at (default: the first warm embassy of the stack)")] = None,
    keep_lab: Annotated[bool, typer.Option("--keep-lab", help="leave the lab up afterwards (to inspect it)")] = False,
    size_mb: Annotated[float | None, typer.Option("--size-mb", help="size of the seeded registers in MB (default 8)")]
    = None,
    harden: Annotated[bool, typer.Option("--harden/--no-harden", help="harden the hosts first (default: yes)")] = True,
    custody: Annotated[Path | None, typer.Option(
        "--custody", help="folder for the officials' sheets of the drill's custody kit (default: <lab dir>/custody); "
                          "the restore uses 2 of them and no controller secret")] = None,
    no_custody: Annotated[bool, typer.Option(
        "--no-custody", help="restore with the secrets the deploy left in place instead of officials' shares")] = False,
) -> None:
    """The whole rehearsal on the lab: deploy, replicate under load, lose home, restore, report. Exit 0 passed, 1 not."""
    from embassy.drill.rehearsal import drill as run_drill
    from embassy.drill.rehearsal import report_keys

    dep = load(stack)
    if size_mb is not None and not 0.1 <= size_mb <= 100_000:
        raise user_error(UserError(f"--size-mb {size_mb:g} is out of range", "give a size between 0.1 and 100000 MB"))
    if embassy is not None and embassy not in {e.name for e in dep.embassies}:
        raise user_error(UserError(f"stack '{stack}' has no embassy '{embassy}'",
                                   f"use one of: {', '.join(e.name for e in dep.embassies)}"))
    start = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - start:6.1f}s[/dim] {escape(message)}", highlight=False)

    try:
        if no_custody and custody is not None:
            raise UserError("--custody and --no-custody together", "give one of them")
        result = run_drill(dep, report, embassy=embassy, keep_lab=keep_lab, size_mb=size_mb, harden=harden,
                           custody=False if no_custody else (custody or True), say=say, console=console)
    except UserError as exc:
        raise user_error(exc) from None
    print_registers(console, result)
    for failure in result.failures:
        console.print(f"failure: {failure.object}: {failure.reason}", markup=False, highlight=False, soft_wrap=True)
    # The verdict is the command's output: stdout, one line each.
    print(f"verdict: {'PASSED' if result.passed else 'FAILED'}")
    print(f"RTO: {_num(result.rto_seconds)} s (incident -> state service answering at {result.embassy})")
    print(f"RPO: {_num(result.rpo_seconds)} s (worst register)")
    watched = result.watch
    print("watch: " + (f"{watched.frames_toward_home} frames toward home after it was cut, {watched.dropped} missed "
                       "(kernel counters on the lab bridge)" if watched else "home was not watched"))
    print(f"report: {(report / 'report.html').resolve()} (signed; public key {report_keys() / 'report-signing.pub'})")
    if not result.passed:
        raise typer.Exit(EXIT_FINDING)


def print_registers(out: Console, result: Report) -> None:
    """The registers' table, never cut: at its natural width when not printed to a terminal (a file, a pipe, CI's
    log); on a terminal too narrow for it, one line per register that the terminal wraps."""
    table = Table(title=f"drill at {result.embassy} ({result.mode}): {'PASSED' if result.passed else 'FAILED'}")
    for column in ("register", "verified", "restored", "RTO (s)", "objective", "RPO (s)", "objective", "lost tx"):
        table.add_column(column, no_wrap=True)
    rows = [(r.name, str(r.verified), str(r.restored), _num(r.rto_seconds), _num(r.objective.rto_seconds),
             _num(r.rpo_seconds), _num(r.objective.rpo_seconds), "-" if r.lost_transactions is None else str(r.lost_transactions))
            for r in result.registers]
    for row in rows:
        table.add_row(*row)
    natural = Measurement.get(out, out.options.update(width=10_000), table).maximum
    if not out.is_terminal:  # Rich caps a print at the console's width (80 in a file): widen it for the table
        width, out.width = out.width, max(out.width, natural)
        try:
            out.print(table)
        finally:
            out.width = width
    elif natural <= out.width:
        out.print(table)
    else:
        out.print(table.title, markup=False, highlight=False, soft_wrap=True)
        for name, verified, restored, rto, rto_obj, rpo, rpo_obj, lost in rows:
            out.print(f"{name}: verified {verified}, restored {restored}, RTO {rto} s (objective {rto_obj}), "
                      f"RPO {rpo} s (objective {rpo_obj}), lost transactions {lost}", markup=False, highlight=False,
                      soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
