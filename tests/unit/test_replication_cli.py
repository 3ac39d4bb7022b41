"""`embassy replicate` and `embassy verify` refusals without a lab, and the shape of `replicate --json`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.replication.replicate import combine


@pytest.mark.parametrize("argv", [
    ["replicate", "--stack", "rehearsal", "--once"],
    ["verify", "--stack", "rehearsal", "--embassy", "de"],
])
def test_without_a_lab_it_says_so_and_how(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBASSY_LAB_ID", "97")
    done = CliRunner().invoke(app, argv)
    assert done.exit_code == 2
    assert "lab 97 is not up" in done.output and "HINT:" in done.output and "Traceback" not in done.output


def test_round_and_lag_combine_into_the_documented_shape() -> None:
    report = {"round": 7, "embassies": [
        {"name": "de", "manifest": {"key": "manifests/0000000007.json", "sha256": "ab", "round": 7}, "errors": []},
        {"name": "ie", "manifest": None, "errors": ["manifest upload failed: AccessDenied"]}]}
    lag = {"time": "2026-12-02T10:00:00Z", "round": 7, "embassies": [
        {"name": "de", "mode": "warm", "alert": False, "vault_errors": [], "flush_lag_ms": 1.5,
         "registers": [{"name": "population", "kind": "postgres", "lag_seconds": 0.4, "last_shipped": "0/3000000",
                        "rpo_bound_seconds": 5, "alert": False}]},
        {"name": "ie", "mode": "cold", "alert": False, "vault_errors": [],
         "registers": [{"name": "population", "kind": "postgres", "lag_seconds": 12.0, "last_shipped": "x",
                        "rpo_bound_seconds": 60, "alert": False}]}]}
    doc = combine(report, lag)
    assert doc["round"] == 7
    de, ie = doc["embassies"]
    assert de["manifest"] == {"key": "manifests/0000000007.json", "sha256": "ab", "round": 7}
    assert de["flush_lag_ms"] == 1.5 and de["alert"] is False
    assert set(de["registers"][0]) >= {"name", "kind", "lag_seconds", "last_shipped"}
    assert ie["manifest"] is None and ie["alert"] is True  # a vault that refused the round alerts
