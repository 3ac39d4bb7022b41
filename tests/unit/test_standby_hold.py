"""The warm embassy's held standby, on a real throwaway PostgreSQL 15 primary and standby (no lab): the
receiver keeps flushing home's WAL while the standby's replay is held; held at a signed digest LSN, the
standby's digest is the primary's digest taken at that LSN; the commits beyond it are counted from the
received WAL per database; released and promoted, it serves everything received. And the texts and
parsers this rests on, against the adversary who would have a hold or a count say more than is true."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from embassy.replication import digest, standby
from embassy.replication.pgmajor import Postgres
from tests.unit.test_home_state import PG_BIN, Cluster, _as_owner, _free_port, _run

pg = pytest.mark.skipif(not (PG_BIN / "initdb").is_file(),
                        reason=f"PostgreSQL 15 binaries not found in {PG_BIN} (apt install postgresql-15)")


def test_a_hold_names_its_point_and_only_a_well_formed_signed_lsn_becomes_one() -> None:
    held = standby.hold_conf("0/5000CE8", "round 3")
    assert standby.held_lsn(held) == "0/5000CE8" and "recovery_target_inclusive = off" in held
    assert "recovery_target_action = 'pause'" in held
    assert standby.held_lsn(standby.hold_conf(None)) is None and "'immediate'" in standby.hold_conf(None)
    assert standby.held_lsn(standby.released_conf()) is None and "recovery_target" not in standby.released_conf()
    body = {"registers": [
        {"name": "population", "kind": "postgres", "digest": {"lsn": "0/5000CE8"}},
        {"name": "land-register", "kind": "postgres", "digest": {"lsn": "0/5001030"}},
        # A crafted LSN (it would go into the standby's configuration) is no signed point.
        {"name": "evil", "kind": "postgres", "digest": {"lsn": "0/1'\nrestore_command = 'sh -c id"}},
        {"name": "court-files", "kind": "files", "digest": {"merkle_root": "ab"}}]}
    assert standby.signed_points(body) == {"population": "0/5000CE8", "land-register": "0/5001030"}
    assert standby.signed_points(body, ["land-register"]) == {"land-register": "0/5001030"}


WALDUMP = """\
rmgr: Heap        len (rec/tot):     61/    61, tx:        752, lsn: 0/05000CE8, prev 0/05000CC0, desc: INSERT off 26 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Heap        len (rec/tot):     61/    61, tx:        753, lsn: 0/05000D28, prev 0/05000CE8, desc: INSERT off 1 flags 0x00, blkref #0: rel 1663/16999/17000 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        752, lsn: 0/05000D68, prev 0/05000D28, desc: COMMIT 2026-12-07 01:54:32.846704 UTC
rmgr: Standby     len (rec/tot):     50/    50, tx:          0, lsn: 0/05000D90, prev 0/05000D68, desc: RUNNING_XACTS nextXid 754
rmgr: Transaction len (rec/tot):     34/    34, tx:        753, lsn: 0/05000DD0, prev 0/05000D90, desc: ABORT 2026-12-07 01:54:33.004570 UTC
rmgr: Transaction len (rec/tot):     34/    34, tx:        755, lsn: 0/05000E10, prev 0/05000DD0, desc: COMMIT 2026-12-07 01:54:33.1 UTC
rmgr: Heap        len (rec/tot):     61/    61, tx:        756, lsn: 0/05000E38, prev 0/05000E10, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/16384/16385 blk 0
rmgr: Transaction len (rec/tot):     34/    34, tx:        756, lsn: 0/05000EB8, prev 0/05000E78, desc: COMMIT 2026-12-07 01:54:33.2 UTC
"""  # noqa: E501  (pg_waldump's lines as it prints them)


def test_commits_beyond_a_point_are_counted_per_database_and_only_commits() -> None:
    found = standby.commits(WALDUMP)
    # The abort is no transaction served; a commit that wrote in no database (755) is no register's.
    assert [(c.lsn, set(c.databases)) for c in found] == [(0x5000D68, {16384}), (0x5000EB8, {16384})]
    assert standby.count_beyond(found, 16384, 0x5000CE8, None) == 2
    assert standby.count_beyond(found, 16384, 0x5000D90, None) == 1  # from a later signed point
    assert standby.count_beyond(found, 16384, 0x5000CE8, 0x5000E00) == 1  # the old timeline ended before the 2nd
    assert standby.count_beyond(found, 16999, 0, None) == 0


def test_the_old_timelines_end_is_read_from_the_history_file() -> None:
    assert standby.timeline_switch("1\t0/6000370\tno recovery target specified\n") == 0x6000370
    assert standby.timeline_switch("") is None


def test_the_receiver_flushes_what_it_reports_and_the_standby_has_no_primary() -> None:
    pg = Postgres(17)
    unit = standby.receiver_unit(pg, "10.0.0.10", "de")
    assert "--synchronous" in unit and "application_name=de" in unit and "User=postgres" in unit
    assert "ExecStart=/usr/lib/postgresql/17/bin/pg_receivewal -D /var/lib/postgresql/17/embassy-wal " in unit
    conf = standby.standby_conf(pg)
    assert "primary_conninfo" not in conf and standby.hold_file(pg) in conf and standby.FETCH_TOOL in conf
    assert "'/usr/lib/postgresql/17/bin/pg_archivecleanup /var/lib/postgresql/17/embassy-wal %r'" in conf
    assert "pg_archivecleanup" in conf  # received segments the standby no longer needs are removed


# --------------------------------------------------------------------------- on a real primary and standby


class Standby:
    """A standby of `primary` as an embassy runs it: pg_receivewal into `recv`, replay from there, held."""

    def __init__(self, primary: Cluster, base: Path) -> None:
        self.primary, self.base = primary, base
        self.data, self.recv, self.port = base / "standby", base / "recv", _free_port()
        self.hold = self.data / "embassy-hold.conf"
        self.conninfo = f"host=127.0.0.1 port={self.port} user=postgres"
        self.receiver: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.recv.mkdir()
        self._own(self.recv)
        _run(_as_owner([str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                        "-D", str(self.data), "-X", "stream", "-c", "fast"]))
        (self.data / "standby.signal").touch()
        fetch = self.base / "fetch.sh"
        fetch.write_text(f'#!/bin/sh\n[ -f "{self.recv}/$1" ] && exec cp "{self.recv}/$1" "$2"\nexit 1\n')
        fetch.chmod(0o755)
        with (self.data / "postgresql.conf").open("a") as conf:  # standby_conf(), with this test's folders
            conf.write(f"restore_command = '{fetch} %f \"%p\"'\nhot_standby = on\ninclude_if_exists = '{self.hold}'\n"
                       "wal_retrieve_retry_interval = 200\n")  # the test waits less for WAL than an embassy
        self.write_hold(standby.hold_conf(None))
        self.receiver = subprocess.Popen(_as_owner([str(PG_BIN / "pg_receivewal"), "-D", str(self.recv), "--synchronous",
                                                    "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                                                    "-d", "application_name=de"]), stderr=subprocess.DEVNULL)
        self.pg_ctl("start")

    def write_hold(self, text: str) -> None:
        self.hold.write_text(text)
        self._own(self.hold)

    @staticmethod
    def _own(path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def pg_ctl(self, action: str) -> None:
        _run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.base / "standby.log"),
                        "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.base}",
                        "-m", "fast", action]))

    def sql(self, db: str, query: str) -> str:
        return subprocess.run([str(PG_BIN / "psql"), "-X", "-Atq", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", db, "-c", query], check=True, capture_output=True, text=True).stdout.strip()

    def paused(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = self.sql("postgres", "SELECT pg_get_wal_replay_pause_state() || '|' || pg_last_wal_replay_lsn()")
            except subprocess.CalledProcessError:
                state = ""
            if state.startswith("paused|"):
                return state.split("|")[1]
            time.sleep(0.2)
        raise AssertionError(f"the standby never paused: {(self.base / 'standby.log').read_text()[-1500:]}")

    def stop(self) -> None:
        if self.receiver:
            self.receiver.terminate()
            self.receiver.wait(timeout=10)
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                       check=False, capture_output=True)


@pytest.fixture
def pair() -> Iterator[tuple[Cluster, Standby]]:
    base = Path(tempfile.mkdtemp(prefix="embassy-hold-"))
    primary = Cluster(base)
    second = Standby(primary, base)
    try:
        primary.start()  # initdb's defaults: wal_level replica, replication trusted from 127.0.0.1
        primary.psql("postgres", "-c", "CREATE DATABASE reg")
        primary.psql("reg", "-c", "CREATE TABLE t (id int PRIMARY KEY)")
        primary.psql("postgres", "-c", "CREATE ROLE reader LOGIN IN ROLE pg_read_all_data")  # digests never as superuser
        second.start()
        yield primary, second
    finally:
        second.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


def _as_reader(conninfo: str) -> str:
    return conninfo.replace("user=postgres", "user=reader")


def _insert(primary: Cluster, first: int, last: int) -> None:
    for i in range(first, last + 1):  # one transaction each
        primary.psql("reg", "-c", f"INSERT INTO t VALUES ({i})")


@pg
def test_a_held_standby_is_proven_at_the_signed_point_while_the_receiver_keeps_flushing(
        pair: tuple[Cluster, Standby]) -> None:
    primary, held = pair
    assert held.paused()  # held just after the clone
    _insert(primary, 1, 5)
    signed = digest.postgres("reg", _as_reader(primary.conninfo))  # what a round signs, with the LSN it names
    _insert(primary, 6, 12)  # seven transactions beyond the signed point
    primary.psql("postgres", "-c", "SELECT pg_switch_wal()")  # as a round does: the segment is complete
    end = primary.psql("postgres", "-Atc", "SELECT pg_current_wal_lsn()").strip()
    deadline = time.monotonic() + 20
    while primary.psql("postgres", "-Atc", "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'de' "
                                           f"AND flush_lsn >= '{end}'").strip() != "1":
        assert time.monotonic() < deadline, "the receiver never flushed home's WAL"
        time.sleep(0.2)
    assert held.sql("postgres", f"SELECT pg_last_wal_replay_lsn() < '{end}'") == "t"  # replay is held, not the receiver

    held.write_hold(standby.hold_conf(signed["lsn"], "round 1"))
    held.pg_ctl("restart")
    at = held.paused()
    assert standby.lsn_int(at) <= standby.lsn_int(signed["lsn"])
    proven = digest.postgres("reg", _as_reader(held.conninfo))
    assert proven["tables"] == signed["tables"] and held.sql("reg", "SELECT max(id) FROM t") == "5"

    # Beyond the signed point: the received WAL, read as a restore reads it.
    assert held.receiver is not None
    held.receiver.terminate()
    held.receiver.wait(timeout=10)
    for partial in held.recv.glob("*.partial"):
        partial.rename(partial.with_suffix(""))
    done = subprocess.run(_as_owner([str(PG_BIN / "pg_waldump"), "-p", str(held.recv), "-s", signed["lsn"]]),
                          capture_output=True, text=True, check=False)
    oid = int(held.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'reg'"))
    found = standby.commits(done.stdout)
    assert standby.count_beyond(found, oid, standby.lsn_int(signed["lsn"]), None) == 7

    held.write_hold(standby.released_conf())
    held.pg_ctl("restart")
    assert held.sql("postgres", "SELECT pg_promote(true, 60)") == "t"
    assert held.sql("reg", "SELECT count(*), max(id) FROM t") == "12|12"
    history = sorted((held.data / "pg_wal").glob("*.history"))[-1]
    switch = standby.timeline_switch(history.read_text())
    assert switch is not None and standby.count_beyond(found, oid, standby.lsn_int(signed["lsn"]), switch) == 7
