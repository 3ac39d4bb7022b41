"""Long commands show progress on a terminal (Rich, on stderr) and stay quiet when piped: data on stdout only."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from embassy.commands import compliance

ROOT = Path(__file__).resolve().parents[2]
EMBASSY = str(Path(sys.executable).parent / "embassy")


def test_progress_shows_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(compliance, "console", Console(file=out, force_terminal=True, width=100))
    with compliance.progress("planning stack 'rehearsal'"):
        time.sleep(0.3)
    assert "planning stack 'rehearsal'" in out.getvalue()


def test_progress_is_quiet_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(compliance, "console", Console(file=out, force_terminal=False))
    with compliance.progress("planning stack 'rehearsal'"):
        time.sleep(0.1)
    assert out.getvalue() == ""


def test_piped_review_keeps_data_and_messages_apart(tmp_path: Path, rehearsal_plan: dict[str, object]) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(rehearsal_plan))
    proc = subprocess.run([EMBASSY, "review", str(plan), str(plan), "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0
    json.loads(proc.stdout)  # stdout is the report and nothing else
    assert proc.stderr.startswith("review: ") and "\x1b" not in proc.stderr  # one plain message, no spinner
