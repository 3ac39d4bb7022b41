"""PostgreSQL's major follows the host's Debian release (12 → 15, 13 → 17), decided in one place
(embassy.replication.pgmajor): the deploys ask the host's os-release, the code that works on a deployed host
asks what is installed there, and no major is written anywhere else in the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from embassy.errors import RestoreFailed
from embassy.lab import mirror
from embassy.model import DEBIAN_RELEASES
from embassy.replication import dataplane, deploy_home, pgmajor, restoretest
from embassy.replication.pgmajor import Postgres, UnknownMajor

ROOT = Path(__file__).resolve().parents[2]


def test_each_debian_release_gets_its_archives_postgresql() -> None:
    assert pgmajor.pg_major(12) == 15 and pgmajor.pg_major(13) == 17
    assert set(pgmajor.PG_MAJOR_OF_DEBIAN) == set(DEBIAN_RELEASES)  # every release a stack may choose has one


@pytest.mark.parametrize("release", [11, 14, 0, True, "13", 13.0])
def test_a_release_the_deploys_do_not_know_is_refused(release: Any) -> None:
    # The adversary: a host of a newer (or older) Debian that would get PostgreSQL packages that do not exist
    # there, or a value that merely compares equal to 13 (True == 1, 13.0 == 13 would pass a dict lookup).
    with pytest.raises(UnknownMajor, match="not a release the deploys support"):
        pgmajor.pg_major(release)


def test_the_paths_and_the_service_are_the_majors() -> None:
    pg = pgmajor.for_release(13)
    assert pg.packages == ["postgresql-17", "postgresql-client-17"]
    assert (pg.bin, pg.data, pg.conf_d, pg.hba, pg.service) == (
        "/usr/lib/postgresql/17/bin", "/var/lib/postgresql/17/main", "/etc/postgresql/17/main/conf.d",
        "/etc/postgresql/17/main/pg_hba.conf", "postgresql@17-main")
    assert pg.home("embassy-wal") == "/var/lib/postgresql/17/embassy-wal"
    # bookworm's hosts keep every path they had: a deployed Debian 12 stack sees no change
    old = pgmajor.for_release(12)
    assert (old.data, old.service, old.bin) == ("/var/lib/postgresql/15/main", "postgresql@15-main",
                                                "/usr/lib/postgresql/15/bin")


def test_the_installed_major_is_the_one_there_or_refused() -> None:
    assert pgmajor.installed_major(["17"]) == 17
    assert pgmajor.installed("17\n").major == 17
    assert pgmajor.installed_major(["17", "lost+found", ".keep"]) == 17  # only numbers are majors
    # The adversary: a host halfway through an upgrade (15 and 17 installed): picking either would restore
    # into, or hold, a cluster that may not be the one in service. Refused, naming what was found.
    with pytest.raises(UnknownMajor, match=r"several PostgreSQL majors installed \(found: 15, 17\)"):
        pgmajor.installed_major(["17", "15"])
    with pytest.raises(UnknownMajor, match=r"no PostgreSQL installed \(found: none\)"):
        pgmajor.installed("")


def test_host_side_code_reads_this_machines_postgresql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "17" / "bin").mkdir(parents=True)
    assert pgmajor.local_major(str(tmp_path)) == 17
    with pytest.raises(UnknownMajor, match="no PostgreSQL installed"):
        pgmajor.local_major(str(tmp_path / "absent"))
    # the restore test on the embassy host: its scratch cluster is in the installed major's tree
    monkeypatch.setattr(pgmajor, "LIB", str(tmp_path))
    assert restoretest.scratch_dir() == "/var/lib/postgresql/17/embassy-restore-test"
    (tmp_path / "15").mkdir()
    with pytest.raises(restoretest.Failed) as failed:  # named as `embassy verify` names objects, in the record
        restoretest.host_postgres()
    assert failed.value.object == str(tmp_path) and "several PostgreSQL majors" in failed.value.reason


class _Target:
    """Answers the one command host_postgres sends, as the host would."""

    def __init__(self, code: int, out: str) -> None:
        self.code, self.out, self.sent = code, out, []  # type: ignore[var-annotated]

    def run_on(self, host: Any, command: str, **_: Any) -> subprocess.CompletedProcess[str]:
        self.sent.append(command)
        return subprocess.CompletedProcess(command, self.code, self.out, "")


@pytest.mark.parametrize(("code", "out", "error"), [(0, "15\n17\n", "several"), (2, "", "no PostgreSQL"),
                                                     (0, "", "no PostgreSQL")])
def test_the_controller_asks_the_host_and_refuses_to_guess(code: int, out: str, error: str) -> None:
    host = SimpleNamespace(name="enclave-de")
    target = _Target(0, "17\n")
    assert dataplane.host_postgres(target, host) == Postgres(17)  # type: ignore[arg-type]
    assert target.sent == [pgmajor.LIST_INSTALLED]  # one command
    with pytest.raises(RestoreFailed, match=f"enclave-de:/usr/lib/postgresql: {error}") as failed:
        dataplane.host_postgres(_Target(code, out), host)  # type: ignore[arg-type]
    assert failed.value.code == 1 and "embassy deploy" in failed.value.hint


@pytest.mark.parametrize(("distro", "major"), [({"name": "Debian", "major": 12}, 15),
                                               ({"name": "Debian", "major": 13}, 17)])
def test_a_deploy_installs_what_the_hosts_own_release_carries(monkeypatch: pytest.MonkeyPatch,
                                                             distro: dict[str, Any], major: int) -> None:
    monkeypatch.setattr(deploy_home, "host", SimpleNamespace(name="home", get_fact=lambda _fact: distro))
    assert deploy_home.host_postgres() == Postgres(major)


@pytest.mark.parametrize("distro", [{"name": "Ubuntu", "major": 24}, {"name": "Debian", "major": None},
                                    {"name": "Debian", "major": 14}])
def test_a_deploy_refuses_a_host_it_does_not_know(monkeypatch: pytest.MonkeyPatch, distro: dict[str, Any]) -> None:
    monkeypatch.setattr(deploy_home, "host", SimpleNamespace(name="home", get_fact=lambda _fact: distro))
    with pytest.raises(UnknownMajor):
        deploy_home.host_postgres()


def test_the_lab_mirror_serves_each_releases_postgresql() -> None:
    # The mirror's per-suite list is the one other place that names majors (data, not code): it must agree.
    for release, suite in DEBIAN_RELEASES.items():
        pg = pgmajor.for_release(release)
        served = [p for p in mirror.packages(suite) if p.startswith("postgresql-")]
        assert sorted(served) == sorted(pg.packages), (suite, served)


# A PostgreSQL major written into code: a package, a path, a service, or a version constant.
HARD_CODED = re.compile(r"postgresql-(?:client-)?1\d\b|postgresql/1\d\b|postgresql@1\d\b|PG_VERSION|"
                        r"\b(?:PG|POSTGRES)\w*\s*=\s*[\"']1\d[\"']")


def test_no_postgresql_major_is_hard_coded_outside_pgmajor() -> None:
    found = []
    for folder in ("src/embassy", "deploys", "roles", "inventories"):
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or path.suffix in {".pyc", ".txt"} or path.name == "pgmajor.py":
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if HARD_CODED.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("line", ['PG_VERSION = "15"', 'PG_BIN = "/usr/lib/postgresql/15/bin"',
                                  'packages=["postgresql-15", "pgbackrest"]', "service=postgresql@17-main",
                                  "postgresql-client-17", "POSTGRES_MAJOR = '17'"])
def test_the_grep_finds_the_constants_it_looks_for(line: str) -> None:
    assert HARD_CODED.search(line)  # the check above can fail
