"""`embassy custody init|rotate`: the restore secrets sealed in each embassy's vault, the key split among officials."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from embassy.commands.common import StackOpt, app, console, load, user_error
from embassy.commands.replication import InventoryOpt, OutputsOpt, data_plane_target
from embassy.errors import OptionInvalid, UserError

__all__ = ["custody_app"]

custody_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                          help="Key custody: seal each embassy's restore secrets in its vault, split the key among officials.")
app.add_typer(custody_app, name="custody")

OfficialsOpt = Annotated[int, typer.Option("--officials", "-n", help="how many officials get a share (1-16)")]
ThresholdOpt = Annotated[int, typer.Option("--threshold", "-k", help="how many shares open the bundle")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="lab (this machine's lab), site (a host nation's data "
                                                               "centre, from --inventory) or aws (stack outputs; init "
                                                               "only)")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="folder for the sheets: official-<i>.txt and .html (0600)")]


def _issue(stack: str, officials: int, threshold: int, out: Path, rotate: bool, kind: str,
           inventory: Path | None, outputs: Path | None = None) -> None:
    from embassy import model
    from embassy.custody import kit, rekey, shares

    dep = load(stack)
    start = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - start:6.1f}s[/dim] {escape(message)}", highlight=False)

    try:
        shares.check_counts(officials, threshold)
        # rotate's re-key deploys new repositories on home and the embassies and runs rounds, all through the
        # target (a site: its inventory's hosts over SSH); on AWS it is not built. init on AWS: bundles through
        # each vault's custody role, home over ssh.
        target = data_plane_target(f"custody {'rotate' if rotate else 'init'}", kind, dep, inventory,
                                   ("lab", "site") if rotate else ("lab", "site", "aws"), outputs)
        folder = target.controller_folder
        store = kit.TargetVaults(target, dep)
        generations = None
        if rotate:  # re-key first: the bundle then holds the new generation's secrets and every older one's
            if not kit.current_version(store, dep)[0]:
                raise UserError(f"stack '{dep.stack}' has no custody kit to rotate",
                                f"run `embassy custody init --stack {dep.stack}`")
            generations = rekey.rekey(dep, target, folder, model.project_root(), say=say)
        issued = kit.issue(dep, target, store, folder, out, officials=officials, threshold=threshold, rotate=rotate,
                           say=say)
        if generations:
            rekey.finish(folder)
    except UserError as exc:
        raise user_error(exc) from None
    for s in issued.stored:
        print(f"stored: vault:{s['embassy']}/{s['key']} (lock {s['lock_mode'] or 'bucket default'}, "
              f"retain until {s['retain_until'] or '-'})")
    print(f"bundle version {issued.version}: {issued.officials} sheets in {out.resolve()}, any {issued.threshold} open it "
          f"({time.monotonic() - start:.1f} s)")
    if generations:
        print(f"new backups use new passphrases: key generation {', '.join(f'{n} {g}' for n, g in generations.items())} "
              "(the bundle keeps every earlier generation's, for backups still in retention)")
    if rotate:
        print(f"the sheets of earlier versions no longer open this bundle: hand out version {issued.version}'s")


@custody_app.command("init")
def init(stack: StackOpt, officials: OfficialsOpt, threshold: ThresholdOpt, out: OutOpt, target: TargetOpt = "lab",
         inventory: InventoryOpt = None, outputs: OutputsOpt = None) -> None:
    """Seal version 1 of every embassy's restore bundle in its vault and write one sheet per official. Exit 0; 2 bad input."""
    _issue(stack, officials, threshold, out, rotate=False, kind=target, inventory=inventory, outputs=outputs)


@custody_app.command("rotate")
def rotate(stack: StackOpt, officials: OfficialsOpt, threshold: ThresholdOpt, out: OutOpt, target: TargetOpt = "lab",
           inventory: InventoryOpt = None) -> None:
    """Re-key (new passphrases and repositories for new backups), then issue the next bundle version with a fresh
    key and new sheets; earlier sheets stop opening it. Exit 0; 2 bad input or a step that failed (it says what to run)."""
    if target == "aws":  # refused before anything is read or reached (README: what `custody rotate` on AWS needs)
        raise user_error(OptionInvalid(
            "custody rotate --target aws is not built: its re-key runs replication rounds on home (on premises) and "
            "re-deploys home's agent and the enclaves into new repositories, and home does not write to AWS vaults "
            "with the stack's agent role yet (`replicate` has no --target aws)",
            "nothing was changed: the kit in the vaults and its sheets stay valid (`embassy restore --target aws "
            "--shares` opens them); the README's \"What this does not do yet\" lists what a rotation on AWS needs"))
    _issue(stack, officials, threshold, out, rotate=True, kind=target, inventory=inventory)


