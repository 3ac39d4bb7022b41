"""The postgres digest on a real, throwaway PostgreSQL 15 (wal_level = logical, as home runs):

- the server-hashed, server-sorted digest equals its row-by-row definition (combine_rows over each row's
  text form, read by Python): awkward types, NULLs, duplicates, an empty table, a partitioned table;
- it runs as the read-only role only (a superuser is refused, exit 2 with a HINT);
- the adversary is a register role with CREATE rights: tables named to break out of quotes into
  `ALTER ROLE … SUPERUSER` or `COPY … TO PROGRAM`, a cast on its table's row type, a row-security policy,
  functions shadowing the builtins. The digest covers those tables and nothing else happens;
- a digest and its LSN agree: step-by-step recovery of one copy of the cluster to each `--exact` digest's
  LSN (recovery_target_inclusive = off), with writers committing all along, gives the same digest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from embassy.replication import digest
from tests.unit.test_home_state import PG_BIN, Cluster, _as_owner, _run

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").is_file(),
                                reason=f"PostgreSQL 15 binaries not found in {PG_BIN} (apt install postgresql-15)")

TABLES = """
CREATE TABLE person (id bigint, name text, born date, score float8, seen timestamptz, photo bytea,
                     age interval, tags text[], doc jsonb);
INSERT INTO person SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'Mäe-' || g || ' 🙂 "quoted", (x)' END,
       date '1950-01-01' + g, g / 3.0, timestamptz '2026-12-03 04:00:00+02' + g * interval '1 minute',
       decode(md5(g::text), 'hex'), g * interval '1 day 2 hours', ARRAY['a', NULL, 'b c'], jsonb_build_object('n', g)
FROM generate_series(1, 3000) g;
INSERT INTO person SELECT * FROM person WHERE id <= 5;  -- duplicates count
CREATE TABLE "Empty" (id int);
CREATE TABLE parcel (id int, area numeric(12, 4)) PARTITION BY RANGE (id);
CREATE TABLE parcel_low PARTITION OF parcel FOR VALUES FROM (0) TO (1000);
INSERT INTO parcel SELECT g, g * 1.5 FROM generate_series(0, 999) g;
"""
INJECT_SUPERUSER = "t\"')x;COMMIT;ALTER ROLE app SUPERUSER--"
INJECT_PROGRAM = "u\"; COPY (SELECT 1) TO PROGRAM 'touch pwned'--"  # in the data folder
DIGEST_ROLE = f"CREATE ROLE {digest.ROLE} LOGIN REPLICATION BYPASSRLS IN ROLE pg_read_all_data"


class LogicalCluster(Cluster):
    """tests.unit.test_home_state's throwaway cluster, with home's WAL settings and WAL archived to a folder."""

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.archive = self.base / "archive"
        _run(_as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--locale=C.UTF-8"]))
        _run(_as_owner(["mkdir", str(self.archive)]))
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.base} "
                   f"-c wal_level=logical -c max_wal_senders=4 -c max_replication_slots=4 -c archive_mode=on "
                   f"-c archive_command='cp %p {self.archive}/%f'")
        _run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.base / "log"),
                        "-o", options, "start"]))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LogicalCluster]:
    base = Path(tempfile.mkdtemp(prefix="embassy-digest-"))  # reachable by the cluster's owner
    c = LogicalCluster(base)
    try:
        c.start()
        c.psql("postgres", "-c", DIGEST_ROLE)
        c.psql("postgres", "-c", "CREATE DATABASE digests")
        c.psql("digests", "-c", TABLES)
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def reader(c: Cluster) -> str:
    return f"host=127.0.0.1 port={c.port} user={digest.ROLE}"


def _row_by_row(c: Cluster, db: str = "digests") -> dict[str, dict[str, object]]:
    """The definition: every row's text form, read by Python and hashed one by one, sorted in Python."""
    tables: dict[str, dict[str, object]] = {}
    with psycopg.connect(f"{reader(c)} dbname={db}") as conn:
        for statement in digest.SESSION:
            conn.execute(statement)
        names = [r[0] for r in conn.execute("SELECT relname::text FROM pg_class WHERE relnamespace = "
                                            "'public'::regnamespace AND relkind IN ('r', 'p')").fetchall()]
        for name in names:
            query = sql.SQL("SELECT textin(record_out(t)) FROM {} t").format(sql.Identifier("public", name))
            rows, sha = digest.combine_rows(r[0] for r in conn.execute(query).fetchall())
            tables[name] = {"rows": rows, "sha256": sha}
    return tables


def test_the_server_sorted_digest_is_the_row_by_row_digest(cluster: LogicalCluster) -> None:
    expected = _row_by_row(cluster)
    assert expected["person"]["rows"] == 3005 and expected["Empty"]["rows"] == 0
    assert set(expected) == {"person", "Empty", "parcel", "parcel_low"}
    got = digest.postgres("digests", reader(cluster))
    assert got["tables"] == expected and got["construction"] == digest.CONSTRUCTION
    assert digest.postgres("digests", reader(cluster), exact=True)["tables"] == expected
    with psycopg.connect(cluster.conninfo) as conn:  # the temporary slot went with its connection
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    with psycopg.connect(f"{reader(cluster)} dbname=digests") as conn:  # the definition, once more, as text
        texts = [r[0] for r in conn.execute("SELECT t::text FROM public.person t")]
    assert digest.combine_rows(texts)[1] == expected["person"]["sha256"]


def test_a_changed_or_duplicated_row_changes_the_digest(cluster: LogicalCluster) -> None:
    before = digest.postgres("digests", reader(cluster))["tables"]
    for change, undo in (("UPDATE person SET name = name || '!' WHERE id = 2999",
                          "UPDATE person SET name = left(name, -1) WHERE id = 2999"),
                         ("INSERT INTO person SELECT * FROM person WHERE id = 7", "DELETE FROM person WHERE id = 7; "
                          "INSERT INTO person SELECT g, NULL, date '1950-01-01' + g, g / 3.0, timestamptz "
                          "'2026-12-03 04:00:00+02' + g * interval '1 minute', decode(md5(g::text), 'hex'), "
                          "g * interval '1 day 2 hours', ARRAY['a', NULL, 'b c'], jsonb_build_object('n', g) "
                          "FROM generate_series(7, 7) g")):
        cluster.psql("digests", "-c", change)
        try:
            after = digest.postgres("digests", reader(cluster))["tables"]
            assert after["person"]["sha256"] != before["person"]["sha256"] and after["parcel"] == before["parcel"]
        finally:
            cluster.psql("digests", "-c", undo)
    assert digest.postgres("digests", reader(cluster))["tables"] == before


def test_the_superuser_is_refused_with_a_hint(cluster: LogicalCluster) -> None:
    with pytest.raises(digest.DigestRefused, match="superuser") as caught:
        digest.postgres("digests", cluster.conninfo)
    assert digest.ROLE in caught.value.hint
    src = Path(digest.__file__).parent.parent
    done = subprocess.run([sys.executable, "-m", "replication.digest", "postgres", "digests", "--conninfo",
                           cluster.conninfo], cwd=src, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert done.returncode == 2 and done.stdout == "" and "\nHINT: run it as the OS user" in done.stderr


def test_a_role_that_cannot_read_everything_is_refused_with_a_hint(cluster: LogicalCluster) -> None:
    cluster.psql("postgres", "-c", "CREATE ROLE weak LOGIN")
    with pytest.raises(digest.DigestRefused, match="may not read everything") as caught:
        digest.postgres("digests", f"host=127.0.0.1 port={cluster.port} user=weak")
    assert "pg_read_all_data" in caught.value.hint


def test_a_register_role_with_create_rights_cannot_subvert_the_digest(cluster: LogicalCluster) -> None:
    """The adversary owns tables and types in the register database and plants every trap it can."""
    marker = cluster.data / "pwned"
    program = INJECT_PROGRAM
    cluster.psql("postgres", "-c", "CREATE ROLE app LOGIN")
    cluster.psql("postgres", "-c", "CREATE DATABASE attacked OWNER app")
    app = f"host=127.0.0.1 port={cluster.port} user=app dbname=attacked"
    with psycopg.connect(app, autocommit=True) as conn:
        for name in (INJECT_SUPERUSER, program):
            conn.execute(sql.SQL("CREATE TABLE {} (id int, v text)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(1, 50) g")
                         .format(sql.Identifier(name)))
        # Code that would run as whoever digests: a cast of its row type, a policy, shadowed builtins.
        conn.execute("CREATE TABLE trap (id int, v text); INSERT INTO trap VALUES (1, 'a'), (2, 'b')")
        conn.execute("CREATE FUNCTION public.evil(x anyelement) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
                     "EXECUTE 'ALTER ROLE app SUPERUSER'; "
                     "EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch pwned'''; RETURN false; END $$")
        conn.execute("CREATE FUNCTION public.as_text(trap) RETURNS text LANGUAGE plpgsql AS $$ BEGIN "
                     "PERFORM public.evil(1); RETURN 'constant'; END $$")
        conn.execute("CREATE CAST (trap AS text) WITH FUNCTION public.as_text(trap)")
        conn.execute("ALTER TABLE trap ENABLE ROW LEVEL SECURITY; ALTER TABLE trap FORCE ROW LEVEL SECURITY; "
                     "CREATE POLICY hide ON trap USING (public.evil(id))")
        for name, args in (("sha256", "bytea"), ("encode", "bytea, text"), ("record_out", "record")):
            returns = "cstring" if name == "record_out" else "bytea" if name == "sha256" else "text"
            if returns != "cstring":
                conn.execute(f"CREATE FUNCTION public.{name}({args}) RETURNS {returns} LANGUAGE plpgsql AS "
                             f"$$ BEGIN PERFORM public.evil(1); RETURN NULL; END $$")
    got = digest.postgres("attacked", reader(cluster), exact=True)
    assert set(got["tables"]) == {INJECT_SUPERUSER, program, "trap"}
    assert got["tables"][INJECT_SUPERUSER]["rows"] == 50 and got["tables"]["trap"]["rows"] == 2
    assert got["tables"] == _row_by_row(cluster, "attacked")
    assert digest.combine_rows(["(1,a)", "(2,b)"]) == (2, got["tables"]["trap"]["sha256"])  # not the cast's text
    with psycopg.connect(cluster.conninfo) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'").fetchone() == (False,)
    assert not marker.exists()


# --------------------------------------------------------------------------- a digest and its LSN agree


def _recover_to(copy: Path, archive: Path, port: int, lsn: str, running: bool) -> None:
    (copy / "postgresql.auto.conf").write_text(
        f"restore_command = 'cp {archive}/%f %p'\nrecovery_target_lsn = '{lsn}'\n"
        "recovery_target_inclusive = off\nrecovery_target_action = 'pause'\n")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={copy.parent} -c archive_mode=off"
    _run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(copy), "-w", "-l", str(copy.parent / "copy.log"), "-m", "fast",
                    "-o", options, "restart" if running else "start"]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
                if conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() == ("paused",):
                    return
        except psycopg.OperationalError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"recovery did not pause at {lsn}: see {copy.parent / 'copy.log'}")


def test_each_exact_digest_is_the_state_recovered_to_its_lsn(cluster: LogicalCluster) -> None:
    """Writers commit into every table without pause; 6 digests at home each name an LSN; one copy of the
    cluster, recovered step by step through the 6 LSNs, gives each digest back exactly (the lab test
    tests/lab/test_digest_points.py does 20 rounds through pgBackRest and a vault)."""
    cluster.psql("postgres", "-c", "CREATE DATABASE moving")
    cluster.psql("moving", "-c", "CREATE TABLE a (id bigserial, v text); CREATE TABLE b (id bigserial, v text)")
    copy = cluster.base / "copy"
    _run(_as_owner([str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                    "-D", str(copy), "-X", "none", "-c", "fast"]))
    stop = threading.Event()

    def write(table: str) -> None:
        with psycopg.connect(f"{cluster.conninfo} dbname=moving", autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(sql.SQL("INSERT INTO {} (v) VALUES (md5(random()::text))").format(sql.Identifier(table)))

    writers = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    for w in writers:
        w.start()
    digests = []
    try:
        for _ in range(6):
            digests.append(digest.postgres("moving", reader(cluster), exact=True))
            time.sleep(0.05)
    finally:
        stop.set()
        for w in writers:
            w.join()
    cluster.psql("postgres", "-c", "SELECT pg_switch_wal()")
    last = digests[-1]["lsn"]
    with psycopg.connect(cluster.conninfo) as conn:  # every segment up to the last LSN archived
        deadline = time.monotonic() + 30
        while conn.execute("SELECT last_archived_wal < pg_walfile_name(%s) FROM pg_stat_archiver", (last,)
                           ).fetchone() != (False,) and time.monotonic() < deadline:
            time.sleep(0.1)
    rows = [sum(t["rows"] for t in d["tables"].values()) for d in digests]
    assert rows == sorted(rows) and rows[-1] > rows[0], rows  # the registers did move between digests
    assert {d["lsn_source"] for d in digests} == {"slot consistent point"}
    (copy / "recovery.signal").touch()
    if os.geteuid() == 0:
        shutil.chown(copy / "recovery.signal", "postgres", "postgres")
    port = cluster.port + 1
    mismatches = []
    try:
        for i, d in enumerate(digests):
            _recover_to(copy, cluster.archive, port, d["lsn"], running=i > 0)
            again = digest.postgres("moving", f"host=127.0.0.1 port={port} user={digest.ROLE}")
            assert again["lsn"] == d["lsn"] and again["lsn_source"] == "replay position (recovery)"
            if digest.differences(d, again):
                mismatches.append((i, d["lsn"], digest.differences(d, again)))
    finally:
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(copy), "-m", "immediate", "stop"]),
                       check=False, capture_output=True)
    assert mismatches == []
