"""`status`'s "overdue" from the timer's real calendar expression, as systemd reads it (systemd-analyze calendar),
and bad expressions refused at config validation (exit 2, the key path, a HINT).

The adversary: whoever wants a missing restore test to go unnoticed. With every expression counted as weekly, a
schedule of every four hours could skip a week of tests unseen; each case below says when the next run was due
after the last record and checks status turns overdue once that run is more than the slack (6 h) late, not before.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy import model
from embassy.assurance import records as rec
from embassy.assurance import schedule
from embassy.replication import manifest
from tests.unit.test_restore_test_records import CHAIN, body, stored

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC
SLACK = rec.RUN_SLACK


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# expression, the last record's time, the run the schedule called for next (UTC)
CASES = [
    ("weekly", "2026-11-30 00:00:05", "2026-12-07 00:00:00"),
    ("daily", "2026-12-06 00:00:03", "2026-12-07 00:00:00"),
    ("Mon *-*-* 03:00", "2026-11-30 03:00:10", "2026-12-07 03:00:00"),
    ("*-*-* 00/4:00", "2026-12-07 00:00:02", "2026-12-07 04:00:00"),  # every 4 h: weekly would hide 41 missed runs
    ("Sat,Sun 02:30", "2026-12-05 02:30:00", "2026-12-06 02:30:00"),
    ("Mon..Fri 22:00 Europe/Tallinn", "2026-12-04 20:00:05", "2026-12-07 20:00:00"),  # UTC+2: over the weekend
    ("monthly", "2026-11-01 00:00:01", "2026-12-01 00:00:00"),
    ("*-*-1,15 04:00", "2026-12-01 04:00:09", "2026-12-15 04:00:00"),
    ("quarterly", "2026-10-01 00:10:00", "2027-01-01 00:00:00"),
]


@pytest.mark.parametrize(("expression", "last", "due"), CASES)
def test_the_next_run_is_systemds(expression: str, last: str, due: str) -> None:
    assert schedule.elapses(expression, t(last), 1) == [t(due)]


@pytest.mark.parametrize(("expression", "last", "due"), CASES)
def test_overdue_once_the_due_run_is_later_than_the_slack(expression: str, last: str, due: str) -> None:
    model.RestoreTests(schedule=expression)  # each is a valid config value
    on_time = t(due) + SLACK - dt.timedelta(minutes=1)
    late = t(due) + SLACK + dt.timedelta(minutes=1)
    assert schedule.standing(expression, t(last), on_time, SLACK) == (t(due), False)
    assert schedule.standing(expression, t(last), late, SLACK) == (t(due), True)


def test_status_judges_a_history_by_its_schedule() -> None:
    key = Ed25519PrivateKey.generate()
    now = t("2026-12-07 10:01:00")  # the last test 10 h ago: late for every 4 h, on time for weekly
    items = [stored(body(t("2026-12-07 00:00:02")), key)]
    every_4h = rec.history("de", items, key.public_key(), stack="rehearsal", days=3650, chain=_chain(), mark=None,
                           schedule="*-*-* 00/4:00", now=now)
    weekly = rec.history("de", items, key.public_key(), stack="rehearsal", days=3650, chain=_chain(), mark=None,
                         schedule="weekly", now=now)
    assert every_4h.established and every_4h.overdue
    assert every_4h.as_json()["next_due"] == "2026-12-07T04:00:00+00:00"
    assert weekly.established and not weekly.overdue
    assert weekly.as_json()["next_due"] == "2026-12-14T00:00:00+00:00"


def _chain() -> dict[int, manifest.Verified]:
    return dict(CHAIN)


BAD = [
    ("Sat 2..3 x", "not a systemd calendar expression"),
    ("25:00", "not a systemd calendar expression"),
    ("Mon 03:00 Mars/Olympus", "not a systemd calendar expression"),  # no such timezone
    ("2020-01-01", "does not repeat"),  # in the past: never again
    ("*-02-30", "does not repeat"),  # no such day
    ("2099-03-01 00:00", "does not repeat"),  # once, not a schedule
]


@pytest.mark.parametrize(("expression", "reason"), BAD)
def test_bad_expressions_are_refused_at_validation(expression: str, reason: str) -> None:
    values = {**model.read_stack_values(model.stack_file("rehearsal", ROOT)), "restore_tests": {"schedule": expression}}
    with pytest.raises(model.ConfigInvalid) as err:
        model._from_values("x", values, "x")
    issue = next(i for i in err.value.issues if i.path == "data-embassy:restore_tests.schedule")
    assert reason in issue.message and issue.hint, (issue.message, issue.hint)


def test_the_cli_refuses_a_bad_schedule_with_exit_2_and_a_hint(tmp_path: Path) -> None:
    values = model.read_stack_values(model.stack_file("rehearsal", ROOT))
    values["restore_tests"] = {"schedule": "Sat 2..3 x"}
    doc = {"config": {f"data-embassy:{k}": v for k, v in values.items()}}
    (tmp_path / "Pulumi.yaml").write_text("name: data-embassy\nruntime: python\n")
    (tmp_path / "Pulumi.broken.yaml").write_text(yaml.safe_dump(doc))
    bad = subprocess.run([sys.executable, "-m", "embassy.cli", "validate", "--stack", "broken"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2, bad.stderr
    assert "data-embassy:restore_tests.schedule" in bad.stderr and "HINT:" in bad.stderr


def test_without_systemd_analyze_only_shorthands_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule, "ANALYZE", "systemd-analyze-not-installed")
    schedule._elapses.cache_clear()
    schedule.check("weekly")
    with pytest.raises(schedule.ScheduleInvalid) as err:
        schedule.check("Mon *-*-* 03:09")
    assert "not installed" in str(err.value) and "shorthand" in err.value.hint
    # a shorthand's overdue still works from its period
    assert schedule.standing("daily", t("2026-12-06 00:00:00"), t("2026-12-07 06:01:00"), SLACK)[1]
    assert not schedule.standing("daily", t("2026-12-06 00:00:00"), t("2026-12-07 05:59:00"), SLACK)[1]
