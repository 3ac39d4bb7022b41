"""The home state's schema, seeded data and state service against a real, throwaway PostgreSQL 15."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from embassy.home import generator, schema, service
from embassy.home.generator import RegisterRef, Spec

PG_BIN = Path(os.environ.get("EMBASSY_PG_BIN", "/usr/lib/postgresql/15/bin"))
REGISTERS = [RegisterRef("population", "postgres"), RegisterRef("land-register", "postgres"),
             RegisterRef("court-files", "files")]
SPEC = Spec(seed=11, size_mb=6)

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").is_file(),
                                reason=f"PostgreSQL 15 binaries not found in {PG_BIN} (apt install postgresql-15)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as `postgres` when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}"


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.port = _free_port()
        self.conninfo = f"host=127.0.0.1 port={self.port} user=postgres"

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        _run(_as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--locale=C.UTF-8"]))
        _run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.base / "log"),
                        "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.base}",
                        "start"]))

    def stop(self) -> None:
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]),
                       check=False, capture_output=True)

    def psql(self, db: str, *args: str, cwd: Path | None = None) -> str:
        out = subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port),
                              "-U", "postgres", "-d", db, *args], cwd=cwd, check=True, capture_output=True, text=True)
        return out.stdout


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path, dict[str, Any]]]:
    # pytest's tmp folders are private to root; the cluster's owner must be able to reach its own folder
    base = Path(tempfile.mkdtemp(prefix="embassy-pg-"))
    cluster = Cluster(base)
    try:
        cluster.start()
        out = tmp_path_factory.mktemp("seed")
        manifest = generator.generate(REGISTERS, SPEC, out)
        for reg in REGISTERS[:2]:  # load exactly the way the deploy does: createdb, then psql -f load.sql in the folder
            cluster.psql("postgres", "-c", f"CREATE DATABASE {schema.database_name(reg.name)}")
            cluster.psql(schema.database_name(reg.name), "-f", "load.sql", cwd=out / reg.name)
        files = tmp_path_factory.mktemp("files")
        with tarfile.open(out / "court-files.tar.gz") as tar:
            tar.extractall(files, filter="data")
        yield cluster, files, manifest
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _one(cluster: Cluster, db: str, sql: str) -> Any:
    with psycopg.connect(f"{cluster.conninfo} dbname={db}") as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def test_schema_and_rows_loaded(seeded: tuple[Cluster, Path, dict[str, Any]]) -> None:
    cluster, _, manifest = seeded
    for reg in ("population", "land-register"):
        db = schema.database_name(reg)
        counted = sum(_one(cluster, db, f"SELECT count(*) FROM {t}") for t in schema.tables(reg))
        assert counted == manifest["registers"][reg]["items"]
        assert _one(cluster, db, "SELECT rows FROM embassy_seed") == counted
    # referential integrity held through COPY, and the constraints are really there
    assert _one(cluster, "population", "SELECT count(*) FROM addresses a LEFT JOIN persons p ON p.id = a.person_id "
                "WHERE p.id IS NULL") == 0
    with pytest.raises(psycopg.errors.ForeignKeyViolation), \
            psycopg.connect(f"{cluster.conninfo} dbname=land_register") as conn:
        conn.execute("INSERT INTO owners VALUES (0, '00000:000:0000', 'state', '1', 'x', '1/1', '2020-01-01')")


def test_size_parameter_matches_disk_size(seeded: tuple[Cluster, Path, dict[str, Any]]) -> None:
    """The target (SPEC.size_mb, split evenly) is met within 35% by tables+indexes on disk and by documents."""
    cluster, files, _ = seeded
    share = SPEC.size_mb * 1024 * 1024 / len(REGISTERS)
    for reg in ("population", "land-register"):
        db = schema.database_name(reg)
        size = sum(_one(cluster, db, f"SELECT pg_total_relation_size('{t}')") for t in schema.tables(reg))
        assert 0.65 * share < size < 1.35 * share, (reg, size, share)
    on_disk = sum(((p.stat().st_size + 4095) // 4096) * 4096 for p in (files / "court-files").rglob("*") if p.is_file())
    assert 0.65 * share < on_disk < 1.35 * share, ("court-files", on_disk, share)


@pytest.fixture(scope="module")
def server(seeded: tuple[Cluster, Path, dict[str, Any]]) -> Iterator[str]:
    cluster, files, _ = seeded
    config = {"bind": "127.0.0.1", "port": _free_port(), "conninfo": cluster.conninfo,
              "databases": {"population": "population", "land-register": "land_register"},
              "files": {"court-files": str(files / "court-files")}}
    httpd = service.make_server(config)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{config['port']}"
    httpd.shutdown()
    httpd.server_close()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_service_answers_person(seeded: tuple[Cluster, Path, dict[str, Any]], server: str) -> None:
    cluster = seeded[0]
    code, first, pid = _one(cluster, "population", "SELECT (isikukood, first_name, id)::text FROM persons "
                            "WHERE id = 42").strip("()").split(",")
    status, body = _get(f"{server}/registers/population/persons/{code}")
    assert status == 200
    assert body["first_name"] == first and body["id"] == int(pid)
    assert len(body["addresses"]) == _one(cluster, "population", f"SELECT count(*) FROM addresses WHERE person_id = {pid}")
    assert _get(f"{server}/registers/population/persons/37605030299")[0] == 404
    status, body = _get(f"{server}/registers/population/persons/12%27;drop")
    assert status == 400 and "isikukood" in body["error"]


def test_service_answers_parcel_and_court_file(seeded: tuple[Cluster, Path, dict[str, Any]], server: str) -> None:
    cluster, files, _ = seeded
    number = _one(cluster, "land_register", "SELECT cadastral_number FROM parcels ORDER BY registry_part LIMIT 1 OFFSET 5")
    status, body = _get(f"{server}/registers/land-register/parcels/{number}")
    assert status == 200 and body["cadastral_number"] == number
    assert len(body["deeds"]) == _one(cluster, "land_register", f"SELECT count(*) FROM deeds WHERE parcel = '{number}'")
    assert body["owners"] and body["deeds"][0]["entry_no"] == 1
    case_file = sorted((files / "court-files").rglob("case.json"))[3]
    expected = json.loads(case_file.read_text())
    status, body = _get(f"{server}/registers/court-files/files/{expected['number']}")
    assert status == 200 and body["court"] == expected["court"]
    assert body["stored"] == sorted(d["name"] for d in expected["documents"])
    assert _get(f"{server}/registers/court-files/files/2-99-1")[0] == 404


def test_service_health_and_index(server: str) -> None:
    status, body = _get(f"{server}/health")
    assert status == 200 and body["status"] == "ok"
    assert body["registers"]["population"]["seeded"][0]["seed"] == SPEC.seed
    assert set(_get(f"{server}/registers")[1]["registers"]) == {"population", "land-register", "court-files"}
    req = urllib.request.Request(f"{server}/registers", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


def test_service_reports_a_broken_register(seeded: tuple[Cluster, Path, dict[str, Any]]) -> None:
    cluster = seeded[0]
    registers = service.Registers({"conninfo": cluster.conninfo, "databases": {"population": "no_such_db"}})
    healthy, body = registers.health()
    assert not healthy and body["registers"]["population"]["ok"] is False
    assert registers.route("/health")[0] == 503


def test_service_is_read_only(seeded: tuple[Cluster, Path, dict[str, Any]]) -> None:
    cluster = seeded[0]
    registers = service.Registers({"conninfo": cluster.conninfo, "databases": {"population": "population"}})
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        registers._query("population", "DELETE FROM documents", ())


def test_service_refuses_to_bind_everywhere() -> None:
    with pytest.raises(SystemExit, match="one address"):
        service.make_server({"bind": "0.0.0.0", "port": 0})
