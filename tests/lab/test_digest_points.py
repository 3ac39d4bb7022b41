"""A digest and its LSN agree, on the lab: writers commit into every postgres register at home without
pause while 20 rounds of exact digests are taken (as a round takes them: the read-only role, a temporary
logical slot's snapshot at its consistent point); then one scratch cluster at the cold embassy, restored
from its own vault by pgBackRest, is recovered step by step to each digest's LSN (not inclusive, paused)
and digested there again. Zero mismatches. The old digest (LSN read inside the snapshot) failed this.

Cheap by design: no replication round, no second cluster, one restore; the points are walked in order.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

import pytest

from embassy.drill.restore import SCRATCH_PORT, TARGET_CONF, scratch_conf, scratch_dir
from embassy.lab.state import LabState
from embassy.replication import digest, pgmajor
from embassy.replication.hostcmd import lsn_int
from tests.lab.conftest import deploy_once, ssh
from tests.lab.test_replication import replicate_once

pytestmark = pytest.mark.lab

EMBASSY = "enclave-ie"  # the cold embassy's host: a restore from its vault
REGISTERS = {"population": "population", "land-register": "land_register"}
ROUNDS = 20
DIGEST = f"sudo runuser -u {digest.ROLE} -- env PYTHONPATH=/opt/embassy python3 -m replication.digest postgres"
AS_PG = "sudo runuser -u postgres --"


@pytest.fixture(scope="module")
def deployed(lab: LabState) -> dict[str, Any]:
    """The lab deployed (the session's last deploy when the modules since left it intact), then a round."""
    deploy_once(lab)
    return replicate_once(lab)


def _home_psql(lab: LabState, db: str, sql: str) -> str:
    return ssh(lab, "home", f"{AS_PG} psql -X -Atq -v ON_ERROR_STOP=1 -d {db} -c {shlex.quote(sql)}").stdout.strip()


def _start_writers(lab: LabState) -> list[str]:
    """One psql per register committing an insert after another, as fast as it can; their PIDs."""
    pids = []
    for db in REGISTERS.values():
        _home_psql(lab, db, "CREATE TABLE IF NOT EXISTS digest_points (id bigserial, v text)")
        insert = "INSERT INTO digest_points (v) VALUES (md5(random()::text));"
        # $! is psql's PID (the last of the pipeline); killing it ends `yes` too
        # (no descriptor of the ssh session kept open by them, or ssh would wait for them)
        loop = f"yes {shlex.quote(insert)} </dev/null 2>/dev/null | psql -X -q -d {db} >/dev/null 2>&1 & echo $!"
        pids.append(ssh(lab, "home", f"{AS_PG} sh -c {shlex.quote(loop)}").stdout.strip())
    return pids


def _digests(lab: LabState) -> list[tuple[str, dict[str, Any]]]:
    points = []
    for _ in range(ROUNDS):
        for db in REGISTERS.values():
            points.append((db, json.loads(ssh(lab, "home", f"{DIGEST} {db} --exact").stdout)))
        time.sleep(0.2)
    return points


def _wait_archived(lab: LabState, lsn: str) -> None:
    segment = _home_psql(lab, "postgres", f"SELECT pg_walfile_name('{lsn}'::pg_lsn)")
    _home_psql(lab, "postgres", "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = json.loads(ssh(lab, EMBASSY, f"{AS_PG} pgbackrest --stanza=home --output=json info").stdout)
        if info and any(a.get("max", "")[8:] >= segment[8:] for a in info[0].get("archive", [])):
            return
        time.sleep(1)
    raise AssertionError(f"WAL segment {segment} not in {EMBASSY}'s vault after 60 s")


def _pg(lab: LabState) -> pgmajor.Postgres:
    """The embassy host's PostgreSQL (15 on bookworm, 17 on trixie), as the restore reads it there."""
    return pgmajor.installed(ssh(lab, EMBASSY, pgmajor.LIST_INSTALLED).stdout)


def _scratch(lab: LabState, first: str) -> None:
    """The cluster restored from the embassy's vault, from a backup that ended before the first point."""
    scratch = scratch_dir(_pg(lab))
    info = json.loads(ssh(lab, EMBASSY, f"{AS_PG} pgbackrest --stanza=home --output=json info").stdout)
    before = [b["label"] for b in info[0]["backup"] if lsn_int(b["lsn"]["stop"]) <= lsn_int(first)]
    assert before, "no backup ended before the first digest"
    ssh(lab, EMBASSY, f"sudo rm -rf {scratch} && sudo /usr/local/sbin/embassy-restore-postgres {scratch} "
                      f"--archive-mode=off --set={before[-1]} && "
                      f"sudo sed -i '/^recovery_target/d' {scratch}/postgresql.auto.conf", timeout=600)
    for name, text in (("postgresql.conf", scratch_conf(scratch)), ("pg_hba.conf", "local all all peer\n"),
                       ("pg_ident.conf", "")):
        _write(lab, f"{scratch}/{name}", text)


def _write(lab: LabState, path: str, text: str) -> None:
    ssh(lab, EMBASSY, f"printf %s {shlex.quote(text)} | sudo install -o postgres -g postgres -m 600 /dev/stdin {path}")


def _recover_to(lab: LabState, lsn: str, running: bool) -> None:
    pg = _pg(lab)
    scratch = scratch_dir(pg)
    _write(lab, f"{scratch}/{TARGET_CONF}", f"recovery_target_lsn = '{lsn}'\nrecovery_target_inclusive = off\n"
                                                "recovery_target_action = 'pause'\n")
    ssh(lab, EMBASSY, f"{AS_PG} {pg.bin}/pg_ctl -D {scratch} -l {scratch}.log -w -t 120 -m fast "
                      f"{'restart' if running else 'start'}", timeout=180)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = ssh(lab, EMBASSY, f"{AS_PG} psql -X -Atq -p {SCRATCH_PORT} -d postgres -c "
                                "'SELECT pg_get_wal_replay_pause_state()'", check=False).stdout.strip()
        if got == "paused":
            return
        time.sleep(0.2)
    raise AssertionError(f"recovery did not pause at {lsn} (see {scratch}.log at {EMBASSY})")


def test_every_rounds_digest_is_the_state_recovered_to_its_lsn(lab: LabState, deployed: dict[str, Any]) -> None:
    pids = _start_writers(lab)
    try:
        points = _digests(lab)
    finally:
        ssh(lab, "home", f"sudo kill {' '.join(pids)}", check=False)
        replicate_once(lab)  # the registers' last state signed: later tests restore what home holds
    assert {d["lsn_source"] for _, d in points} == {"slot consistent point"}
    moved = [sum(t["rows"] for t in d["tables"].values()) for db, d in points if db == "population"]
    assert moved == sorted(moved) and moved[-1] > moved[0], moved  # the registers changed between rounds
    points.sort(key=lambda p: lsn_int(p[1]["lsn"]))
    _wait_archived(lab, points[-1][1]["lsn"])
    _scratch(lab, points[0][1]["lsn"])
    mismatches, paused_at = [], None
    try:
        for db, want in points:
            if want["lsn"] != paused_at:
                _recover_to(lab, want["lsn"], running=paused_at is not None)
                paused_at = want["lsn"]
            got = json.loads(ssh(lab, EMBASSY, f"{DIGEST} {db} --conninfo "
                                               f"{shlex.quote(f'host=/var/run/postgresql port={SCRATCH_PORT}')}").stdout)
            assert got["lsn"] == want["lsn"], (got["lsn"], want["lsn"])
            if digest.differences(want, got):
                mismatches.append((db, want["lsn"], digest.differences(want, got)))
    finally:
        pg = _pg(lab)
        ssh(lab, EMBASSY, f"{AS_PG} {pg.bin}/pg_ctl -D {scratch_dir(pg)} -m immediate stop; sudo rm -rf {scratch_dir(pg)}",
            check=False, timeout=120)
    assert mismatches == [], mismatches
    assert len(points) == ROUNDS * len(REGISTERS)
