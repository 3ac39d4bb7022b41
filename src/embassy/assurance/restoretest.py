"""`embassy restore-test`: from the controller, the vault verified as `embassy verify` does, then the embassy
host's own restore test (replication.restoretest, the code its timer runs) into scratch space there.

Home is never reached; the standby (5432) and a served restore (5433, /srv/embassy-restore) are never touched:
the test's cluster is on 5434 and its files under /srv/embassy-restore-test, both removed at its end.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from typing import Any

from embassy import model
from embassy.errors import OptionInvalid
from embassy.replication import restoretest
from embassy.replication import verify as vault_verify
from embassy.targets import Target

POINTS = ("latest", "random")
HOST_TIMEOUT = 7200


def check_options(point: str | None, window_days: int | None) -> None:
    if point is not None and point not in POINTS:
        raise OptionInvalid(f"--point '{point}' is not one of {', '.join(POINTS)}",
                            "give --point latest (the newest signed point) or --point random (one within the window)")
    if window_days is not None and not 1 <= window_days <= 3650:
        raise OptionInvalid(f"--window-days {window_days} is out of range", "give a number of days from 1 to 3650")


def failed(dep: model.Deployment, embassy: str, obj: str, reason: str) -> dict[str, Any]:
    return {"embassy": embassy, "stack": dep.stack, "time": None, "trigger": "cli", "point": None, "passed": False,
            "seconds": 0.0, "registers": [], "failure": {"object": obj, "reason": reason}, "record": None}


def run(dep: model.Deployment, target: Target, embassy: str, *, point: str | None = None,
        window_days: int | None = None, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """The result as `--json` prints it; raises only on bad input (an unknown embassy, a bad option)."""
    check_options(point, window_days)
    hosts = target.embassy_hosts(embassy)  # EmbassyUnknown for a name the stack does not declare
    if not hosts:
        return failed(dep, embassy, f"embassy {embassy}", "no host in the target")
    say(f"verify the vault of {embassy}")
    verified = vault_verify.verify(dep, target, embassy, say=say)
    if not verified.intact:
        first = verified.first_failure or {}
        return failed(dep, embassy, str(first.get("object")), str(first.get("reason")))
    say(f"restore test on {hosts[0].name}: a signed point into scratch space")
    command = ("sudo env PYTHONPATH=/opt/embassy python3 -m replication.restoretest run --trigger cli"
               + (f" --point {shlex.quote(point)}" if point else "")
               + (f" --window-days {int(window_days)}" if window_days else ""))
    try:
        done = target.run_on(hosts[0], command, timeout=HOST_TIMEOUT)
    except subprocess.TimeoutExpired:
        return failed(dep, embassy, hosts[0].name, f"no answer in {HOST_TIMEOUT} s")
    return parse_host_output(dep, embassy, hosts[0].name, done.stdout, done.stderr)


def parse_host_output(dep: model.Deployment, embassy: str, host: str, stdout: str, stderr: str) -> dict[str, Any]:
    """The host's result line, as the issue's JSON; anything else is a failure naming the host."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    try:
        body = json.loads(lines[-1]) if lines else None
        out = restoretest.public(body) if isinstance(body, dict) else None
    except (ValueError, KeyError, TypeError):
        out = None
    if out is None or out["embassy"] != embassy:
        return failed(dep, embassy, host, f"the restore test gave no result: {(stderr or stdout).strip()[-300:]}")
    out["record"] = body.get("record") if isinstance(body, dict) else None
    if out["passed"] and not out["record"]:
        out["passed"] = False
        out["failure"] = {"object": f"vault:{embassy}/{restoretest.RECORD_PREFIX}",
                          "reason": f"the result could not be recorded: {stderr.strip()[-300:]}"}
    return out
