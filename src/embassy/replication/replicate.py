"""`embassy replicate`: run a replication round on home now, or watch the lag; from the controller.

The round and the lag are home's own (`python3 -m replication.round`, `replication.lag`): this side
starts the round's systemd unit on home through the target (`target.run_on`: SSH for the lab and a site),
waits for it, and reads what home measured.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from embassy.errors import HostUnknown, RoundRefused, UserError
from embassy.hostroles import Role
from embassy.targets import Host, Target

ROUND_UNIT = "embassy-replication-round.service"
STATE_DIR = "/var/lib/embassy/replication"
LAG = "sudo env PYTHONPATH=/opt/embassy python3 -m replication.lag"


def home_of(target: Target) -> Host:
    """Home's host as the target knows it (a target without home, AWS's, cannot run a round from here)."""
    home = next((h for h in target.hosts if h.role is Role.HOME), None)
    if home is None:
        raise HostUnknown(f"target {target.kind} of stack '{target.stack}' has no home host: rounds run on home",
                          "use a target that names home (--target lab, or --target site with home in the inventory)")
    return home


def _on_home(target: Target, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return target.run_on(home_of(target), command, timeout=timeout)


def _json(done: subprocess.CompletedProcess[str], what: str) -> Any:
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise UserError(f"home gave no {what}: {done.stderr.strip()[-300:] or 'no output'}",
                        "deploy the agents first: `embassy deploy --target lab --stack <stack>`") from None


def run_round(target: Target, timeout: float = 3600) -> dict[str, Any]:
    """Start one round and wait for it (a round already running is waited for, then ours runs)."""
    _on_home(target, f"sudo systemctl start {ROUND_UNIT}", timeout)  # fails when an embassy failed: the report says
    report: dict[str, Any] = _json(_on_home(target, f"sudo cat {STATE_DIR}/last-round.json", 60), "round report")
    if report.get("refused"):  # home's round state lost and the vaults cannot say where the chain stands
        raise RoundRefused(f"round refused on home: {report['refused']['reason']}", report["refused"].get("hint"))
    return report


def lag(target: Target) -> dict[str, Any]:
    return _json(_on_home(target, LAG, 120), "lag measurement")


def combine(round_report: dict[str, Any] | None, measured: dict[str, Any]) -> dict[str, Any]:
    """The `replicate --json` document: per embassy, the round's manifest and errors, and the lag now."""
    by_name = {e["name"]: e for e in (round_report or {}).get("embassies", [])}
    embassies = []
    for e in measured["embassies"]:
        r = by_name.get(e["name"], {})
        entry = {"name": e["name"], "mode": e["mode"], "manifest": r.get("manifest"),
                 "errors": r.get("errors", e.get("vault_errors", [])), "notes": r.get("notes", []),
                 "alert": e["alert"] or bool(r.get("errors")),
                 "registers": e["registers"]}
        if "flush_lag_ms" in e:
            entry["flush_lag_ms"] = e["flush_lag_ms"]
        embassies.append(entry)
    return {"round": (round_report or {}).get("round", measured.get("round")), "time": measured["time"],
            "embassies": embassies}
