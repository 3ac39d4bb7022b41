"""A generated state of a chosen size on the lab's home, shipped to the vaults, for the restore benchmarks.

The deploy's seeded registers (Faker, a few MB) are grown in bulk on home itself: half of the size
as rows of the population register (hex text, ~2:1 compressible, like identifiers and hashes), half
as files of the court-files register (random bytes: scanned documents do not compress). Both are
registers, so a restore recomputes their digests as it would for real data. A "base" part (the
1 GB state) and an "extra" part (what 5 GB adds) live apart, so that the extra can be dropped cheaply.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from embassy.lab.state import LabState
from embassy.model import load_stack
from embassy.replication import replicate
from embassy.replication.dataplane import REGISTERS_ROOT
from embassy.targets import LabTarget

DB = "population"
FILES = f"{REGISTERS_ROOT}/court-files"
FILE_MB = 4  # one generated document: 4 MiB of random bytes
ROWS_PER_MB = 3_900  # measured: a row of 192 hex characters with its primary key is ~270 bytes on disk
CHUNK_ROWS = 500_000  # one transaction each: the archiver and the standbys keep up between them
ROUND_TIMER = "embassy-replication-round.timer"
PAYLOAD = " || ".join(f"md5((i * {k})::text)" for k in (3, 5, 7, 11, 13, 17))


def sh(lab: LabState, host: str, command: str, *, timeout: float = 3600) -> str:
    done = subprocess.run(lab.ssh_argv(host, command), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{host}: `{command[:160]}` exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


def psql(lab: LabState, host: str, db: str, sql: str, *, port: int = 5432, timeout: float = 3600) -> str:
    return sh(lab, host, f"sudo runuser -u postgres -- psql -X -A -t -q -v ON_ERROR_STOP=1 -p {port} -d {db} "
                         f"-c \"{sql}\"", timeout=timeout).strip()


def _part(extra: bool) -> tuple[str, str]:
    return ("bench_bulk_extra", f"{FILES}/bench-extra") if extra else ("bench_bulk", f"{FILES}/bench")


def grow_part(lab: LabState, mb: float, *, extra: bool = False) -> None:
    """Make one part hold `mb` MB: half rows, half files (adds what is missing; idempotent)."""
    table, folder = _part(extra)
    rows = int(mb / 2 * ROWS_PER_MB)
    psql(lab, "home", DB, f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, payload text NOT NULL)")
    have = int(psql(lab, "home", DB, f"SELECT coalesce(max(id), 0) FROM {table}"))
    for start in range(have + 1, rows + 1, CHUNK_ROWS):
        end = min(rows, start + CHUNK_ROWS - 1)
        psql(lab, "home", DB, f"INSERT INTO {table} SELECT i, {PAYLOAD} FROM generate_series({start}, {end}) i")
    files = int(mb / 2 / FILE_MB)
    sh(lab, "home", f"sudo sh -c 'install -d -m 755 {folder} && cd {folder} && for i in $(seq -w 1 {files}); do "
                    f"[ -s doc-$i.bin ] || head -c {FILE_MB}M /dev/urandom > doc-$i.bin; done'")


def drop_extra(lab: LabState) -> None:
    table, folder = _part(True)
    psql(lab, "home", DB, f"DROP TABLE IF EXISTS {table}")
    sh(lab, "home", f"sudo rm -rf {folder}")


def state_bytes(lab: LabState) -> dict[str, int]:
    """Home's state now: the cluster's databases and the file registers, in bytes."""
    pg = int(psql(lab, "home", "postgres", "SELECT sum(pg_database_size(oid)) FROM pg_database"))
    files = int(sh(lab, "home", f"sudo du -sb {REGISTERS_ROOT} | cut -f1").strip())
    return {"postgres": pg, "files": files}


def repo_index(lab: LabState, embassy: str) -> int:
    """Home's pgBackRest repo number for `embassy` (from the comment above each repo in its config)."""
    conf = sh(lab, "home", "sudo cat /etc/pgbackrest/pgbackrest.conf")
    lines = conf.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"# embassy '{embassy}'":
            return int(lines[i + 1].split("-", 1)[0].removeprefix("repo"))
    raise AssertionError(f"home's pgbackrest.conf names no repo for embassy {embassy}")


def ship(lab: LabState, backup_to: tuple[str, ...]) -> dict[str, Any]:
    """A full backup into the named embassies' repos (a restore starts from it, as after the weekly full),
    then a replication round: digests, the WAL archived, restic snapshots in every vault, manifests."""
    wait_archived(lab)
    # No timer round meanwhile: `systemctl start` would join one that took its digests before the backup
    # ended, and the restore would then start from an older set (what the restore guards against).
    sh(lab, "home", f"sudo systemctl stop {ROUND_TIMER}; while systemctl is-active -q {replicate.ROUND_UNIT}; "
                    "do sleep 1; done")
    try:
        for embassy in backup_to:
            n = repo_index(lab, embassy)
            sh(lab, "home", f"sudo runuser -u postgres -- pgbackrest --stanza=home --repo={n} --type=full "
                            "--archive-timeout=600 backup", timeout=7200)
        last = replicate.run_round(LabTarget(load_stack(lab.stack), lab))
    finally:
        sh(lab, "home", f"sudo systemctl start {ROUND_TIMER}")
    errors = [f"{e['name']}: {e['errors']}" for e in last.get("embassies", []) if e.get("errors")]
    if errors:
        raise AssertionError(f"replication round {last.get('round')} failed: {errors}")
    return last


def wait_archived(lab: LabState, timeout: float = 1800) -> None:
    """Until the archiver has pushed every segment written so far (after a bulk load it has a backlog that
    a backup would otherwise wait for, within pgBackRest's archive-timeout)."""
    segment = psql(lab, "home", "postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while psql(lab, "home", "postgres", "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[8:] < segment[8:]:
        if time.monotonic() > deadline:
            raise AssertionError(f"home's archiver did not reach {segment} in {timeout:.0f} s")
        time.sleep(1)


def settle(lab: LabState, seconds: float = 6) -> None:
    """Rounds closer than the tightest RPO make the next verify see a vault as stale: wait as the timer does."""
    time.sleep(seconds)


VAULT_BYTES = r"""
import json, sys
from embassy.lab.buckets import client
spec = json.loads(sys.argv[1])
s3 = client(spec["endpoint"], spec["ca_file"], spec["credentials"])
total = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=spec["bucket"]):
    total += sum(o["Size"] for o in page.get("Contents", []))
print(total)
"""


def vault_bytes(lab: LabState, embassy: str) -> int:
    """Bytes of the current objects in an embassy's vault (as S3 lists them, with the reader identity)."""
    import sys

    v = lab.vault(embassy)
    spec = {"endpoint": v.endpoint, "ca_file": v.ca_file, "credentials": v.reader_credentials, "bucket": v.bucket}
    done = subprocess.run(lab.in_controller([sys.executable, "-c", VAULT_BYTES, json.dumps(spec)]), capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise AssertionError(f"listing vault {embassy}: {done.stderr.strip()[-800:]}")
    return int(done.stdout.strip())


def wait_standbys(lab: LabState, timeout: float = 900) -> None:
    """Until every warm embassy's receiver has flushed what home has written (a warm restore replays it all)."""
    sql = ("SELECT count(*) FROM pg_stat_replication WHERE flush_lsn IS NULL OR flush_lsn < pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while psql(lab, "home", "postgres", sql) != "0":
        if time.monotonic() > deadline:
            raise AssertionError(f"the standbys did not catch up with home in {timeout:.0f} s")
        time.sleep(1)
