"""The lab as a site: its own site inventory, which `--target site --inventory` takes to run the generic path."""

from __future__ import annotations

import json
import os
import subprocess

from embassy.lab.state import LabState
from tests.lab.conftest import EMBASSY, ROOT, STACK


def site_inventory_of(lab: LabState) -> str:
    """The lab's own site inventory, as `embassy lab status --json` names it."""
    env = {**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}
    done = subprocess.run([EMBASSY, "lab", "status", "--stack", STACK, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    inventory: str = json.loads(done.stdout)["site_inventory"]
    return inventory


def site_target(lab: LabState) -> list[str]:
    """The options that send a command through the lab's own site inventory."""
    return ["--target", "site", "--inventory", site_inventory_of(lab)]
