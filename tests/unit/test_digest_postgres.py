"""The postgres digest, hashed by the server, equals the row-by-row definition (combine_rows over each
row's text form) on a real, throwaway PostgreSQL 15: awkward types, NULLs, an empty table, many slices."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from embassy.replication import digest
from tests.unit.test_home_state import PG_BIN, Cluster

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").is_file(),
                                reason=f"PostgreSQL 15 binaries not found in {PG_BIN} (apt install postgresql-15)")

TABLES = """
CREATE TABLE person (id bigint PRIMARY KEY, name text, born date, score float8, seen timestamptz, photo bytea,
                     age interval, tags text[], doc jsonb);
INSERT INTO person SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'Mäe-' || g || ' 🙂 "quoted", (x)' END,
       date '1950-01-01' + g, g / 3.0, timestamptz '2026-12-03 04:00:00+02' + g * interval '1 minute',
       decode(md5(g::text), 'hex'), g * interval '1 day 2 hours', ARRAY['a', NULL, 'b c'], jsonb_build_object('n', g)
FROM generate_series(1, 3000) g;
CREATE TABLE "Empty" (id int);
CREATE TABLE parcel (id int, area numeric(12, 4)) PARTITION BY RANGE (id);
CREATE TABLE parcel_low PARTITION OF parcel FOR VALUES FROM (0) TO (1000);
INSERT INTO parcel SELECT g, g * 1.5 FROM generate_series(0, 999) g;
"""


@pytest.fixture(scope="module")
def conninfo() -> Iterator[str]:
    base = Path(tempfile.mkdtemp(prefix="embassy-digest-"))  # reachable by the cluster's owner
    cluster = Cluster(base)
    try:
        cluster.start()
        cluster.psql("postgres", "-c", "CREATE DATABASE digests")
        cluster.psql("digests", "-c", TABLES)
        yield cluster.conninfo
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _row_by_row(conninfo: str) -> dict[str, dict[str, object]]:
    """The definition: every row's text form, read by Python and hashed one by one."""
    tables: dict[str, dict[str, object]] = {}
    with psycopg.connect(f"{conninfo} dbname=digests") as conn:
        for statement in digest.SESSION:
            conn.execute(statement)
        for name in ("Empty", "parcel", "parcel_low", "person"):
            texts = [r[0] for r in conn.execute(f'SELECT t::text FROM public."{name}" t').fetchall()]
            rows, sha = digest.combine_rows(texts)
            tables[name] = {"rows": rows, "sha256": sha}
    return tables


def test_the_server_hashed_digest_is_the_row_by_row_digest(conninfo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _row_by_row(conninfo)
    assert expected["person"]["rows"] == 3000 and expected["Empty"]["rows"] == 0
    assert digest.postgres("digests", conninfo)["tables"] == expected
    monkeypatch.setattr(digest, "PAGES_PER_SLICE", 1)  # a slice per page, and the open-ended last one
    assert digest.postgres("digests", conninfo)["tables"] == expected


def test_a_changed_row_changes_the_digest(conninfo: str) -> None:
    before = digest.postgres("digests", conninfo)["tables"]
    with psycopg.connect(f"{conninfo} dbname=digests") as conn:
        conn.execute("UPDATE person SET name = name || '!' WHERE id = 2999")
    try:
        after = digest.postgres("digests", conninfo)["tables"]
        assert after["person"]["rows"] == 3000 and after["person"]["sha256"] != before["person"]["sha256"]
        assert after["parcel"] == before["parcel"]
    finally:
        with psycopg.connect(f"{conninfo} dbname=digests") as conn:
            conn.execute("UPDATE person SET name = left(name, -1) WHERE id = 2999")
