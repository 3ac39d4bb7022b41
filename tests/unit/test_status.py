"""`embassy status` from restore-test histories built here: alerts for failed, not established and overdue
tests, the JSON the issue names, the text screen, and the HTML page with its trend chart in headless chromium."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy.assurance import records as rec
from embassy.assurance import status as st
from tests.unit.test_restore_test_records import NOW, body, judge, stored


def embassy(name: str, hist: rec.History, *, age: int = 30, rpo: int = 60) -> st.EmbassyStatus:
    s = st.EmbassyStatus(name, "warm", head={"round": 8, "sha256": "b" * 64, "time": "2026-12-07T05:59:30Z",
                                             "age_seconds": age},
                         lag=[{"register": "population", "lag_seconds": age, "rpo_bound_seconds": rpo, "over": age > rpo}],
                         last_verify={"source": "high-water mark", "round": 8}, tests=hist)
    s.alerts = st.alerts(s)
    return s


def histories(key: Ed25519PrivateKey) -> dict[str, rec.History]:
    trend = [stored(body(NOW - dt.timedelta(days=n), passed=n != 4), key) for n in range(1, 12)]
    failed_last = [stored(body(NOW - dt.timedelta(days=2)), key), stored(body(NOW - dt.timedelta(days=1), passed=False),
                                                                         key)]
    return {"de": judge(trend, key.public_key()), "se": judge(failed_last, key.public_key()),
            "ie": judge([stored(body(NOW - dt.timedelta(days=20)), key)], key.public_key()),
            "fr": judge([], key.public_key())}


@pytest.fixture()
def doc() -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    return st.document("rehearsal", [embassy(n, h) for n, h in histories(key).items()], NOW)


def test_the_json_has_the_issues_fields_per_embassy(doc: dict[str, Any]) -> None:
    de = doc["embassies"][0]
    assert set(de) >= {"name", "mode", "lag", "head", "last_verify", "last_restore_test", "restore_tests"}
    assert set(de["last_restore_test"]) >= {"time", "point", "passed", "seconds"}
    assert len(de["restore_tests"]) == 10 and de["head"]["age_seconds"] == 30


def test_each_embassy_that_is_not_well_has_its_alert(doc: dict[str, Any]) -> None:
    assert doc["ok"] is False
    alerts = "\n".join(doc["alerts"])
    assert not [a for a in doc["alerts"] if a.startswith("de:")]  # passed last, on time: no alert
    assert "se: last restore test FAILED" in alerts and "register population" in alerts
    # the last on Tue 17 Nov; weekly: the next was due on Mon 23 Nov
    assert "ie: restore test OVERDUE" in alerts and "the next was due at 2026-11-23T00:00:00+00:00" in alerts
    assert "fr: restore tests NOT ESTABLISHED" in alerts and "no restore test recorded" in alerts


def test_lag_over_the_rpo_bound_alerts() -> None:
    key = Ed25519PrivateKey.generate()
    s = embassy("de", judge([stored(body(NOW - dt.timedelta(days=1)), key)], key.public_key()), age=500)
    assert s.alerts == ["de: population: newest signed point 500 s old, over its RPO bound of 60 s"]
    assert st.document("x", [embassy("de", s.tests or rec.History("de"))], NOW)["ok"] is True


def test_the_text_screen_shows_the_trend_and_the_alerts(doc: dict[str, Any]) -> None:
    text = st.text(doc)
    assert "de (warm): head round 8" in text and "trend ++++++x+++" in text.replace(" ", " ")
    assert "restore tests: not established" in text and text.count("ALERT ") == 3


def test_the_page_has_a_chart_per_embassy_with_tests_and_escapes_names(doc: dict[str, Any], tmp_path: Path) -> None:
    page = st.page(doc)
    assert page.count("<figure class='trend'><svg") == 3  # fr has none
    doc["alerts"].append("<script>alert(1)</script>")
    assert "<script>" not in st.page(doc)


def test_the_page_renders_in_headless_chromium_with_no_console_error(doc: dict[str, Any], tmp_path: Path) -> None:
    from tests.unit.test_drill_report_browser import browse, console_messages

    path = st.write_html(doc, tmp_path / "status")
    dom = browse(path.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    assert "id=\"embassy-de\"" in dom.stdout and dom.stdout.count("<svg") >= 3
    assert "restore tests not established" in dom.stdout
