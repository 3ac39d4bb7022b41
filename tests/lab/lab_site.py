"""The lab as a site: its own site inventory, which `--target site --inventory` takes to run the generic path."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from embassy.lab.state import LabState
from tests.lab.conftest import EMBASSY, ROOT, STACK

_ASKED: dict[int, str] = {}  # lab id -> the inventory `lab status` named: a lab's is written once, at its bring-up


def site_inventory_of(lab: LabState) -> str:
    """The lab's own site inventory, as `embassy lab status --json` names it (asked once per lab and session: a
    status costs 4 to 7 s; the file is checked on every use)."""
    if lab.lab_id in _ASKED:
        assert Path(_ASKED[lab.lab_id]).is_file(), _ASKED[lab.lab_id]
        return _ASKED[lab.lab_id]
    env = {**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}
    done = subprocess.run([EMBASSY, "lab", "status", "--stack", STACK, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    inventory: str = json.loads(done.stdout)["site_inventory"]
    assert Path(inventory).is_file(), done.stdout[-2000:]
    _ASKED[lab.lab_id] = inventory
    return inventory


def site_target(lab: LabState) -> list[str]:
    """The options that send a command through the lab's own site inventory."""
    return ["--target", "site", "--inventory", site_inventory_of(lab)]
