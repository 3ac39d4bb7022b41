"""`embassy check`: every control over a plan; exit 0 clean, 1 a mandatory failure, 2 bad input."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

from .incli import embassy

ROOT = Path(__file__).resolve().parents[2]


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return embassy("check", *args)


def test_shipped_plan_passes(tmp_path: Path, rehearsal_plan: dict[str, Any]) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(rehearsal_plan))
    proc = check("--plan", str(plan), "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["passed"] is True and out["stack"] == "rehearsal"
    assert all(not f["mandatory"] for f in out["findings"])


def test_broken_plan_fails(tmp_path: Path, rehearsal_plan: dict[str, Any]) -> None:
    broken = copy.deepcopy(rehearsal_plan)
    for rec in broken["resources"]:
        if rec["type"] == "aws:ec2/instance:Instance" and rec["name"] == "ie-host-1":
            rec["inputs"]["metadataOptions"]["httpTokens"] = "optional"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(broken))
    proc = check("--plan", str(plan))
    assert proc.returncode == 1
    assert "FAIL EMB-EC2-01 [high]" in proc.stdout and "ie-host-1: metadataOptions.httpTokens is optional" in proc.stdout


def test_check_stack_plans_and_passes() -> None:
    proc = check("--stack", "rehearsal")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 mandatory" in proc.stdout


def test_bad_input_exits_2(tmp_path: Path) -> None:
    assert check().returncode == 2
    not_plan = tmp_path / "x.json"
    not_plan.write_text('{"steps": []}')
    proc = check("--plan", str(not_plan))
    assert proc.returncode == 2 and "is not a plan" in proc.stderr and "HINT:" in proc.stderr
    proc = check("--plan", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = check("--stack", "no-such-stack")
    assert proc.returncode == 2 and "HINT:" in proc.stderr
