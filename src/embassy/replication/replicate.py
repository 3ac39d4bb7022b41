"""`embassy replicate`: run a replication round on home now, or watch the lag; from the controller.

The round and the lag are home's own (`python3 -m replication.round`, `replication.lag`): this side
starts the round's systemd unit over SSH, waits for it, and reads what home measured.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from embassy.errors import RoundRefused, UserError
from embassy.lab.state import LabState, Role

ROUND_UNIT = "embassy-replication-round.service"
STATE_DIR = "/var/lib/embassy/replication"
LAG = "sudo env PYTHONPATH=/opt/embassy python3 -m replication.lag"


def home_name(lab: LabState) -> str:
    return next(h.name for h in lab.hosts if h.role is Role.HOME)


def _ssh(lab: LabState, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.ssh_argv(home_name(lab), command), capture_output=True, text=True, timeout=timeout)


def _json(done: subprocess.CompletedProcess[str], what: str) -> Any:
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise UserError(f"home gave no {what}: {done.stderr.strip()[-300:] or 'no output'}",
                        "deploy the agents first: `embassy deploy --target lab --stack <stack>`") from None


def run_round(lab: LabState, timeout: float = 3600) -> dict[str, Any]:
    """Start one round and wait for it (a round already running is waited for, then ours runs)."""
    _ssh(lab, f"sudo systemctl start {ROUND_UNIT}", timeout)  # fails when an embassy failed: the report says which
    report: dict[str, Any] = _json(_ssh(lab, f"sudo cat {STATE_DIR}/last-round.json", 60), "round report")
    if report.get("refused"):  # home's round state lost and the vaults cannot say where the chain stands
        raise RoundRefused(f"round refused on home: {report['refused']['reason']}", report["refused"].get("hint"))
    return report


def lag(lab: LabState) -> dict[str, Any]:
    return _json(_ssh(lab, LAG, 120), "lag measurement")


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
