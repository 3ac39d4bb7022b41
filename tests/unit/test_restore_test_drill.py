"""The drill's report records the embassies' last restore tests beside its own RTO (issue 25, item 4), as
signed evidence that changes nothing of the verdict; an embassy whose records do not count says why."""

from __future__ import annotations

import json
from pathlib import Path

from embassy.drill.publish import write_report
from embassy.drill.render import render_html, render_markdown
from embassy.drill.report import Report, verify_report
from tests.unit.test_drill_report import public_key, sample_fields

TESTS = [{"embassy": "de", "established": True, "overdue": False, "time": "2026-12-06T03:00:00.000001Z",
          "passed": True, "seconds": 41.2, "round": 812, "registers": [], "problem": None},
         {"embassy": "ie", "established": False, "overdue": True, "time": None, "passed": None, "seconds": None,
          "round": None, "registers": [],
          "problem": "vault:ie/restore-tests/20261206T030000.000001Z.json: signature does not verify"}]


def test_the_report_keeps_the_last_restore_tests_signed_and_shows_them(tmp_path: Path) -> None:
    report = Report.build(**sample_fields(), restore_tests=TESTS)
    assert report.passed  # evidence beside the drill, not its verdict
    folder = write_report(report, tmp_path / "r", tmp_path / "keys")
    assert json.loads((folder / "report.json").read_text())["restore_tests"] == TESTS
    assert verify_report(folder, public_key(tmp_path / "keys"))
    md, page = render_markdown(report), render_html(report)
    assert "de: passed 2026-12-06T03:00:00.000001Z, round 812, 41.2 s" in md
    assert "ie: not established (vault:ie/restore-tests/" in md
    assert 'id="restore-tests"' in page and "signature does not verify" in page


def test_a_report_without_them_renders_as_before() -> None:
    report = Report.build(**sample_fields())
    assert report.restore_tests == [] and 'id="restore-tests"' not in render_html(report)
    assert "none read" in render_markdown(report)


def test_the_drill_goes_on_when_no_record_can_be_read() -> None:
    from embassy import model
    from embassy.assurance.status import last_restore_tests

    dep = model.load_stack("rehearsal", Path(__file__).resolve().parents[2])
    got = last_restore_tests(dep, None)  # type: ignore[arg-type]  # no lab: no key, no vault
    assert [t["embassy"] for t in got] == [e.name for e in dep.embassies]
    assert all(t["established"] is False and t["problem"].startswith("status: ") for t in got)
    Report.build(**sample_fields(), restore_tests=got)  # and the report takes them
