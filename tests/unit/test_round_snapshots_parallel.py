"""A round takes a file register's snapshots into every embassy at once (each its own restic repository in its own
vault, all of the one frozen copy): the round lasts as long as the slowest snapshot, not their sum. A failed snapshot
is still that embassy's error alone, and every manifest names the snapshot taken for it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from embassy.replication import manifest
from embassy.replication import round as rnd

EMBASSIES = ("de", "se", "ie")


def _round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot: Any) -> dict[str, Any]:
    live = tmp_path / "srv" / "court-files"
    live.mkdir(parents=True)
    (live / "deed.txt").write_text("deed 1")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    head = {"sha256": "a" * 64, "round": 5, "key": manifest.object_key(5), "files": {}}
    (state_dir / "state.json").write_text(json.dumps({"round": 5, "embassies": {n: head for n in EMBASSIES}}))
    rnd.keygen(tmp_path / "manifest.key", tmp_path / "manifest.pub")
    cfg = {"state_dir": str(state_dir), "stack": "rehearsal", "state": "test", "ca_file": "ca.crt",
           "key_file": str(tmp_path / "manifest.key"),
           "registers": [{"kind": "files", "name": "court-files", "path": str(live)}],
           "embassies": [{"name": n, "mode": "cold", "vault": {}, "files": ["court-files"], "postgres": []}
                         for n in EMBASSIES]}
    monkeypatch.setattr(rnd, "postgres_part", lambda cfg, timeout: ({}, {}, ""))
    monkeypatch.setattr(rnd, "vault_answers", lambda vault, timeout=0: True)
    monkeypatch.setattr(rnd, "upload", lambda vault, ca, key, data: None)
    monkeypatch.setattr(rnd, "snapshot_files", snapshot)
    return rnd.run_round(cfg)


def test_the_embassies_snapshots_run_at_once_and_each_manifest_names_its_own(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    together = threading.Barrier(len(EMBASSIES), timeout=10)  # broken (an error) unless all three run at once

    def snapshot(embassy: str, register: str, path: str, frozen: Any = None, started: Any = None) -> dict[str, Any]:
        together.wait()
        return {"snapshot_id": f"snap-{embassy}", "time": "2026-12-08T03:00:00Z"}

    report = _round(tmp_path, monkeypatch, snapshot)
    assert [e["name"] for e in report["embassies"]] == list(EMBASSIES)  # reported in the stack's order
    for e in report["embassies"]:
        assert e["errors"] == [] and e["manifest"]["round"] == 6, e
        (files,) = e["registers"]
        assert files["snapshot_id"] == f"snap-{e['name']}" and files["digest"]["files"] == 1, files


def test_a_failed_snapshot_is_its_embassys_error_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def snapshot(embassy: str, register: str, path: str, frozen: Any = None, started: Any = None) -> dict[str, Any]:
        if embassy == "se":
            raise RuntimeError("restic backup of court-files to se failed: refused")
        return {"snapshot_id": f"snap-{embassy}", "time": "2026-12-08T03:00:00Z"}

    report = _round(tmp_path, monkeypatch, snapshot)
    by = {e["name"]: e for e in report["embassies"]}
    assert by["se"]["errors"] == ["restic backup of court-files to se failed: refused"]
    assert by["se"]["registers"][0]["snapshot_id"] is None  # no snapshot carried: none was ever taken
    assert by["de"]["errors"] == by["ie"]["errors"] == []
    assert by["de"]["registers"][0]["snapshot_id"] == "snap-de" and by["ie"]["registers"][0]["snapshot_id"] == "snap-ie"
