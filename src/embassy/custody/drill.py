"""The drill's custody path: after deploy, seal a kit and withdraw every restore secret from the controller
and the embassy host; after the incident, open the bundle from K of the sheets and restore with it.

So a rehearsal proves the real path: on the day home is gone, its secrets folder is gone too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embassy import model
from embassy.custody import hostsecrets, kit
from embassy.custody.restore import with_shares
from embassy.targets import Target

OFFICIALS, THRESHOLD = 3, 2  # the rehearsal's kit: any 2 of 3 sheets


@dataclass
class DrillKit:
    version: int
    folder: Path
    withdrawn: list[str]

    def sheets(self) -> list[Path]:
        return [self.folder / f"official-{i}.txt" for i in range(1, THRESHOLD + 1)]


def prepare(dep: model.Deployment, target: Target, embassy: str, folder: Path,
            say: Callable[[str], None]) -> DrillKit:
    """Issue the next bundle version (init, or rotate an existing kit), then withdraw the restore secrets."""
    secrets = target.controller_folder
    issued = kit.issue(dep, target, kit.TargetVaults(target, dep), secrets, folder, officials=OFFICIALS, threshold=THRESHOLD,
                       rotate=None, say=say)
    withdrawn = hostsecrets.withdraw(target, target.embassy_hosts(embassy)[0], embassy, secrets)
    say(f"withdrew {len(withdrawn)} restore secrets from the controller and {target.embassy_hosts(embassy)[0].name}")
    return DrillKit(issued.version, folder, withdrawn)


def open_and_apply(dep: model.Deployment, target: Target, embassy: str, drill_kit: DrillKit,
                   say: Callable[[str], None]) -> None:
    """K sheets of the drill's kit, read as an official hands them in, open the bundle; its secrets go to the host."""
    texts = kit.read_shares([str(p) for p in drill_kit.sheets()], lambda: "")
    with_shares(dep, target, embassy, target.embassy_hosts(embassy), texts, say)


def controller_holds_restore_secrets(dep: model.Deployment, target: Target) -> list[str]:
    """The restore secrets still in the controller's folder (the drill's report asserts none)."""
    folder = target.controller_folder
    return sorted(str(p) for pattern in hostsecrets.RESTORE_SECRET_GLOBS for p in folder.glob(pattern))
