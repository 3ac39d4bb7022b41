"""The restore's and the drill's own logic, without a lab: which manifest a point in time uses, the
scratch cluster's settings, the service config, bad input refused before anything runs, and how the
drill turns a restore into measured registers (the watch and the evidence: test_drill_report_watch.py)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.drill import rehearsal, restore
from embassy.errors import OptionInvalid, RestoreFailed
from embassy.model import load_stack
from embassy.replication.manifest import Verified
from embassy.replication.pgmajor import Postgres

ROOT = Path(__file__).resolve().parents[2]


def _manifest(n: int, time: str) -> Verified:
    return Verified(f"manifests/{n:010d}.json", {"round": n, "time": time, "registers": []}, f"{n:064x}")


def test_a_point_in_time_uses_the_newest_manifest_before_it() -> None:
    chain = [_manifest(1, "2026-12-02T10:00:00.000000Z"), _manifest(2, "2026-12-02T10:05:00.000000Z"),
             _manifest(3, "2026-12-02T10:10:00.000000Z")]
    assert restore.choose_manifest(chain, None).round == 3
    at = restore.parse_time("2026-12-02T10:07:00Z")
    assert restore.choose_manifest(chain, at).round == 2
    assert restore.choose_manifest(chain, restore.parse_time("2026-12-02T10:05:00.000001")).round == 2
    with pytest.raises(RestoreFailed, match="no manifest before"):
        restore.choose_manifest(chain, restore.parse_time("2026-12-02T09:59:59Z"))


def test_a_time_without_zone_is_utc_and_garbage_is_refused() -> None:
    assert restore.parse_time("2026-12-02T10:07:00").tzinfo == dt.UTC
    assert restore.parse_time("2026-12-02T12:07:00+02:00") == restore.parse_time("2026-12-02T10:07:00Z")
    with pytest.raises(OptionInvalid, match="--target-time 'yesterday'"):
        restore.parse_time("yesterday")


def test_the_scratch_cluster_never_archives_and_listens_on_no_address() -> None:
    scratch = restore.scratch_dir(Postgres(17))
    conf = restore.scratch_conf(scratch)
    assert scratch == "/var/lib/postgresql/17/embassy-restore" and f"hba_file = '{scratch}/pg_hba.conf'" in conf
    assert "archive_mode = off" in conf and f"port = {restore.SCRATCH_PORT}" in conf
    assert "listen_addresses = ''" in conf and restore.TARGET_CONF in conf


def test_the_restored_service_reads_the_restored_registers_on_the_embassys_address() -> None:
    dep = load_stack("rehearsal", ROOT)
    config = restore.service_config(dep, "10.0.0.5", restore.SCRATCH_PORT)
    assert config["bind"] == "10.0.0.5" and config["port"] == restore.SERVICE_PORT
    assert config["conninfo"].endswith(f"port={restore.SCRATCH_PORT}")
    assert config["databases"] == {"population": "population", "land-register": "land_register"}
    assert config["files"] == {"court-files": f"{restore.FILES_ROOT}/srv/registers/court-files"}


def test_registers_are_restored_in_priority_order() -> None:
    dep = load_stack("rehearsal", ROOT)
    assert [r.name for r in restore.held_registers(dep, "ie")] == ["population", "land-register", "court-files"]


def test_bad_input_is_refused_before_anything_runs() -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["restore", "--stack", "rehearsal", "--embassy", "de", "--target-time", "soon"])
    assert done.exit_code == 2 and "--target-time 'soon'" in done.output and "HINT" in done.output
    done = runner.invoke(app, ["drill", "--stack", "rehearsal", "--embassy", "xx", "--report", "out/r"])
    assert done.exit_code == 2 and "no embassy 'xx'" in done.output
    done = runner.invoke(app, ["drill", "--stack", "rehearsal", "--size-mb", "0", "--report", "out/r"])
    assert done.exit_code == 2 and "--size-mb" in done.output


def test_postgres_timestamps_are_read_with_their_zone() -> None:
    assert rehearsal._ts("2026-12-02 18:03:01.123456+00") == dt.datetime(2026, 12, 2, 18, 3, 1, 123456, dt.UTC)
    assert rehearsal._ts(None) is None


LOG = """population 0 1000.0
land-register 0 1000.05
court-files 0 1000.1
population 1 1000.1
land-register 1 1000.15
population 2 1000.2
land-register 2 1000.25
court-files 1 1001.1
population 3 1001.2
land-register 3 1001.25
population 4 10
"""


def test_the_drill_measures_rto_rpo_and_lost_writes_from_the_load_log_and_the_restored_state() -> None:
    dep = load_stack("rehearsal", ROOT)
    out = restore.Outcome("rehearsal", "ie", "cold")
    for reg in restore.held_registers(dep, "ie"):
        out.registers.append(restore.RegisterOutcome(reg.name, reg.kind.value, reg.priority, verified=True,
                                                     restored=True, done_at=100.0 + reg.priority))
    log = LOG.replace("population 4 10\n", "")
    held = {"population": 3, "land-register": 1, "court-files": -1}
    results = {r.name: r for r in rehearsal.measure(dep, out, 100.0, log, lambda name, _kind: held[name])}
    assert results["population"].rto_seconds == 1.0 and results["court-files"].rto_seconds == 3.0
    # It holds home's last write: nothing lost.
    assert results["population"].rpo_seconds == 0.0 and results["population"].lost_transactions == 0
    # It holds #1 (acknowledged at 1000.15), home's last is #3 (1001.25): 1.1 s and two writes lost.
    assert results["land-register"].rpo_seconds == 1.1 and results["land-register"].lost_transactions == 2
    # None of the load's documents: measured from the first one (a lower bound), both lost.
    assert results["court-files"].rpo_seconds == 1.0 and results["court-files"].lost_transactions == 2
    assert all(r.rpo_method and "acknowledged" in r.rpo_method for r in results.values())
    # A cold embassy promises no better than the stack's cold bound.
    assert results["population"].objective.rpo_seconds == dep.cold_rpo_seconds


def test_an_unreadable_restored_state_or_log_measures_no_rpo() -> None:
    assert rehearsal.rpo_of([(0, 1.0), (1, 2.0)], None) == (None, None)
    assert rehearsal.rpo_of([], 5) == (None, None)
    assert rehearsal.rpo_of([(7, 1.0), (8, 2.0)], 9) == (0.0, 0)  # a write acknowledged after the log was read


def test_the_load_log_drops_a_torn_line() -> None:
    from embassy.home.load import parse_log

    parsed = parse_log(LOG + "population 5\nland-register x 1.0\n")
    assert parsed["population"][-1] == (4, 10.0) and len(parsed["population"]) == 5
    assert len(parsed["land-register"]) == 4 and len(parsed["court-files"]) == 2


def test_a_refused_restore_fails_the_drill_report_naming_the_object() -> None:
    from embassy.drill import report as rpt
    from embassy.errors import ManifestInvalid
    from embassy.replication.verify import Result

    dep = load_stack("rehearsal", ROOT)
    out = restore.Outcome("rehearsal", "de", "warm")
    out.registers = [restore.RegisterOutcome(r.name, r.kind.value, r.priority) for r in restore.held_registers(dep, "de")]
    out.verification = Result("de")
    out.verification.check("manifests/0000000007.json", False, "signature does not verify (the manifest was altered)")
    out.error = ManifestInvalid("manifests/0000000007.json: signature does not verify (the manifest was altered)")
    incident = dt.datetime(2026, 12, 2, 18, 1, 0, tzinfo=dt.UTC)
    registers = rehearsal.measure(dep, out, 100.0, LOG, lambda _name, _kind: None)
    assert not any(r.verified or r.restored or r.rto_seconds for r in registers)
    checks, evidence = rehearsal.evidence(out, dep, None)
    failure = rehearsal.failure_of(out.error, out)
    assert failure.object == "manifests/0000000007.json" and failure.error == "ManifestInvalid"
    report = rpt.Report.build(stack="rehearsal", embassy="de", mode="warm", incident_at=incident, started_at=incident,
                              finished_at=incident, rto_seconds=None, rpo_seconds=None, registers=registers, timeline=[],
                              verifications=checks, failures=[failure], manifest=evidence)
    assert not report.passed and report.failures[0].object == "manifests/0000000007.json"
    assert any(not v.ok and v.object == "manifests/0000000007.json" for v in report.verifications)


class _InfoSession:
    """Answers `pgbackrest info --output=json` as the cold host did on the lab (two full backups)."""

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout

    def sh(self, command: str, *, timeout: float = 600, stdin: str | None = None,
           keyed: bool = False) -> subprocess.CompletedProcess[str]:
        assert "pgbackrest" in command and "info" in command and keyed  # a generation handed over reaches it
        return subprocess.CompletedProcess(command, 0, self.stdout, "")


def test_a_restore_from_the_vault_starts_from_a_backup_consistent_before_the_digest_lsn() -> None:
    info = json.dumps([{"backup": [{"label": "20261202-223357F", "lsn": {"start": "0/5B000028", "stop": "0/5B002E20"}},
                                   {"label": "20261202-224400F", "lsn": {"start": "1/40001A8", "stop": "1/5002E90"}}]}])
    session = typing.cast(restore.Session, _InfoSession(info))
    # The digests were taken while the newest backup ran: it ends after them, so the older set is used.
    assert restore._backup_set_before(session, restore._lsn("1/4F00000")) == " --set=20261202-223357F"
    # The usual case: the newest ends before the digests; pgBackRest's own choice is kept.
    assert restore._backup_set_before(session, restore._lsn("1/6000000")) == ""
    # Nothing readable: pgBackRest's own choice.
    assert restore._backup_set_before(typing.cast(restore.Session, _InfoSession("not json")), 1) == ""
