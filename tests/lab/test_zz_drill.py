"""`embassy drill` on the lab: the rehearsal passes, every register verified and restored within its
objectives, the report signed, and nothing tries to reach home after the incident.

Named to sort last: the drill destroys home (container stopped, disk wiped, network cut), so it must
be the last user of the session's shared lab. Hardening is left out here (`--no-harden`): test_harden
covers it on the same lab, and the drill's own harden step is the same call.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from embassy.drill.report import verify_report
from embassy.lab.state import LabState
from tests.lab.conftest import STACK
from tests.lab.test_replication import embassy_cli

pytestmark = pytest.mark.lab


def test_a_drill_passes_with_a_signed_report_and_nothing_reaches_home_after_the_incident(
        lab: LabState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, folder = tmp_path / "keys", tmp_path / "report"
    monkeypatch.setenv("EMBASSY_REPORT_KEYS", str(keys))
    # Every restore secret, read before the drill withdraws them from the controller (custody is its default).
    restore_secrets = [p.read_text().strip() for p in sorted((Path(lab.dir) / "secrets").glob("*.pass"))]
    restore_secrets += [json.loads(Path(v.reader_credentials).read_text())["secret_access_key"] for v in lab.vaults]
    done = embassy_cli(lab, "drill", "--stack", STACK, "--report", str(folder), "--keep-lab", "--no-harden",
                       timeout=1800)
    assert done.returncode == 0, done.stderr[-5000:] + done.stdout[-2000:]
    assert "verdict: PASSED" in done.stdout and f"report: {folder.resolve() / 'report.html'}" in done.stdout
    report = json.loads((folder / "report.json").read_text())
    assert report["passed"] and report["failures"] == [] and report["embassy"] == "de" and report["mode"] == "warm"
    assert {r["name"] for r in report["registers"]} == {"population", "land-register", "court-files"}
    for reg in report["registers"]:
        assert reg["verified"] and reg["restored"] and reg["digest"] == reg["manifest_digest"], reg
        assert reg["rto_seconds"] <= reg["objective"]["rto_seconds"]
        assert reg["rpo_seconds"] <= reg["objective"]["rpo_seconds"]
    # The load wrote into every register until the incident; a warm embassy serves every acknowledged write
    # of its postgres registers, each proven at the head's signed point and counted beyond it.
    head = report["manifest"]["round"]
    for reg in report["registers"]:
        assert reg["rpo_method"] and "acknowledged" in reg["rpo_method"], reg
        proof = reg["proof"]
        assert proof["signed_round"] == head and proof["signed_point"], reg
        if reg["kind"] == "postgres":
            assert reg["lost_transactions"] == 0 and reg["rpo_seconds"] == 0.0, reg
            beyond = proof["beyond_signed"]
            assert isinstance(beyond["transactions"], int) and beyond["transactions"] > 0, reg  # the load ran past it
            assert beyond["source"].startswith("streamed from home over the replication channel"), reg
        else:
            assert proof["beyond_signed"]["transactions"] == 0 and proof["signed_point"].startswith("restic snapshot")
    assert report["rto_seconds"] is not None  # within each register's objective (above); speed: the bench
    # Not one frame toward home after its link was cut, counted in the kernel until the report was written
    # (the positive control that such a frame is counted and fails the drill: test_drill_watch.py).
    watch = report["watch"]
    assert watch["frames_toward_home"] == 0 and watch["dropped"] == 0 and watch["sources"] == {}, watch
    assert watch["method"].startswith("nftables counters in the kernel") and watch["frames_on_bridge"] > 0, watch
    times = [dt.datetime.fromisoformat(t) for t in (watch["since"], report["incident_at"], watch["cut_at"], watch["until"],
                                                     report["finished_at"])]
    assert times == sorted(times), watch  # counting from the incident's first step until the report was written
    assert "destroyed" not in watch["closing"], watch["closing"]  # home's connections closed by home and its peers
    assert report["where"]["target"] == "lab" and report["where"]["data"] == "synthetic"
    assert report["where"]["officials_simulated"] is True
    custody = [v for v in report["verifications"] if v["object"] == "custody:restore secrets"]
    assert custody and custody[0]["ok"] and "on the controller now: none" in custody[0]["detail"], custody
    assert any(s["step"].startswith("custody: open bundle version") and s["ok"] for s in report["timeline"])
    written = [done.stdout, done.stderr, *(p.read_text(errors="replace") for p in folder.iterdir() if p.is_file())]
    assert restore_secrets and not [i for i, v in enumerate(restore_secrets) if any(v in text for text in written)], \
        "a restore secret in plaintext in the drill's report or output"
    assert report["manifest"]["signature_ok"] and report["manifest"]["chain_head"]["round"] >= report["manifest"]["round"]
    assert verify_report(folder, keys / "report-signing.pub")
    print(f"watch: {watch['frames_before_cut']} frames toward home before the cut, 0 after it among "
          f"{watch['frames_on_bridge']} on the bridge; {watch['closing']}")
    print(f"drill at de (warm): RTO {report['rto_seconds']} s; per register: "
          + ", ".join(f"{r['name']} RTO {r['rto_seconds']} s RPO {r['rpo_seconds']} s lost {r['lost_transactions']} "
                      f"beyond the signed point {r['proof']['beyond_signed']['transactions']}" for r in report["registers"]))
    # Where the restore's seconds went (the README's profile of the warm RTO is read from these lines).
    print("\n".join(line.strip() for line in done.stdout.splitlines() if "timing:" in line))
    for step in report["timeline"]:
        start, end = dt.datetime.fromisoformat(step["start"]), dt.datetime.fromisoformat(step["end"])
        print(f"timeline: {(end - start).total_seconds():7.2f} s  {step['step'][:110]}")
