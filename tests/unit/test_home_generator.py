"""The seeded generator: deterministic, sized by its parameter, shaped like Estonia's registers."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import pytest

from embassy.home import generator, schema
from embassy.home.estonia import isikukood, valid_isikukood
from embassy.home.generator import RegisterRef, Spec

REGISTERS = [RegisterRef("population", "postgres"), RegisterRef("land-register", "postgres"),
             RegisterRef("court-files", "files")]


def _rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generator.generate(REGISTERS, Spec(seed=7, size_mb=2), tmp_path / "a")
    b = generator.generate(REGISTERS, Spec(seed=7, size_mb=2), tmp_path / "b")
    c = generator.generate(REGISTERS, Spec(seed=8, size_mb=2), tmp_path / "c")
    assert a["registers"] == b["registers"]
    assert a["digest"] == b["digest"]
    for name in ("population", "land-register", "court-files"):
        assert a["registers"][name]["files"] != c["registers"][name]["files"], name


def test_size_parameter_scales_the_data(tmp_path: Path) -> None:
    small = generator.generate(REGISTERS, Spec(seed=1, size_mb=1), tmp_path / "s")
    large = generator.generate(REGISTERS, Spec(seed=1, size_mb=4), tmp_path / "l")
    for name in ("population", "land-register", "court-files"):
        ratio = large["registers"][name]["items"] / small["registers"][name]["items"]
        assert 3.2 < ratio < 4.8, (name, ratio)


def test_population_is_estonian_and_consistent(tmp_path: Path) -> None:
    generator.generate(REGISTERS[:1], Spec(seed=3, size_mb=1), tmp_path)
    persons = _rows(tmp_path / "population" / "persons.tsv.gz")
    codes = [p[1] for p in persons]
    assert len(codes) == len(set(codes)) > 500
    assert all(valid_isikukood(c) for c in codes)
    for p in persons[:200]:  # the code carries the sex and the birth date
        assert (int(p[1][0]) % 2 == 1) == (p[4] == "M")
        assert p[1][1:7] == p[5][2:4] + p[5][5:7] + p[5][8:10]
    ids = {p[0] for p in persons}
    addresses = _rows(tmp_path / "population" / "addresses.tsv.gz")
    assert {a[1] for a in addresses} == ids  # every person lives somewhere, nobody else does
    assert all(a[2].endswith("maakond") and len(a[8]) == 5 for a in addresses)


def test_isikukood_checksum() -> None:
    import datetime as dt

    assert isikukood("M", dt.date(1976, 5, 3), 29) == "37605030299"  # the example code of EVS 585
    assert isikukood("F", dt.date(2004, 2, 29), 7)[:10] == "6040229007"
    assert valid_isikukood("37605030299")
    assert not valid_isikukood("37605030298")


def test_court_files_tree(tmp_path: Path) -> None:
    manifest = generator.generate(REGISTERS[2:], Spec(seed=5, size_mb=1), tmp_path)
    with tarfile.open(tmp_path / "court-files.tar.gz") as tar:
        names = tar.getnames()
        cases = [n for n in names if n.endswith("/case.json")]
        assert len(cases) == manifest["registers"]["court-files"]["items"] - sum(
            1 for n in names if "/documents/" in n)
        case = json.loads(tar.extractfile(cases[0]).read())  # type: ignore[union-attr]
        assert case["court"].endswith("kohus")
        for doc in case["documents"]:
            assert f"{cases[0].rsplit('/', 1)[0]}/documents/{doc['name']}" in names


def test_unknown_registers_get_the_generic_schema(tmp_path: Path) -> None:
    reg = RegisterRef("business-register", "postgres")
    generator.generate([reg], Spec(seed=1, size_mb=0.5), tmp_path)
    assert schema.tables("business-register") == ("records",)
    assert (tmp_path / "business-register" / "records.tsv.gz").is_file()
    assert "INSERT INTO embassy_seed" in (tmp_path / "business-register" / "load.sql").read_text()


@pytest.mark.parametrize("name", ["population", "land-register", "court-files"])
def test_database_names_need_no_quoting(name: str) -> None:
    assert schema.database_name(name).replace("_", "").isalnum()
