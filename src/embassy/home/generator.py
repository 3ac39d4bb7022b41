"""Seeded synthetic data for the home state's registers (deterministic: same seed and size, same bytes).

For each postgres register: `schema.sql`, one gzipped COPY file per table and a `load.sql` that
psql runs from that folder in one transaction. For each file register: a deterministic
`<register>.tar.gz` of a document tree. `manifest.json` lists every file with its sha256.

The size parameter is the target on-disk size of all registers' data in MB (tables with their
indexes, documents), split evenly between the registers; from a few MB to several GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import random
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from faker import Faker

from embassy.home import schema
from embassy.home.estonia import ISSUERS, LAND_PURPOSES, REFERENCE_DATE, EstonianProvider, isikukood

GENERATOR = "embassy-home/1"
# On-disk bytes per generated unit, measured on PostgreSQL 15 (tables + indexes) and on ext4
# (documents, 4 KiB blocks): a person with addresses and documents, a parcel with owners and deeds, …
BYTES_PER_UNIT = {"population": 640, "land-register": 880, "generic": 490, "court-files": 18_500, "files": 4_096}
COURTS = ("Harju Maakohus", "Tartu Maakohus", "Pärnu Maakohus", "Viru Maakohus",
          "Tallinna Halduskohus", "Tartu Halduskohus", "Tallinna Ringkonnakohus")
CASE_KINDS = {"1": "kriminaalasi", "2": "tsiviilasi", "3": "haldusasi", "4": "väärteoasi"}
DOC_KINDS = ("hagiavaldus", "vastus", "kohtumäärus", "kohtuotsus", "protokoll", "apellatsioon")
NOTARIES = ("notar Kadri Tamm", "notar Mart Kask", "notar Liis Saar", "notar Jaan Mägi", "notar Eva Sepp")


@dataclass(frozen=True)
class Spec:
    seed: int = 20260101
    size_mb: float = 8.0

    @property
    def key(self) -> str:
        return f"{self.seed}-{self.size_mb:g}mb"


@dataclass(frozen=True)
class RegisterRef:
    """What the generator needs of a register (embassy.model.Register fits)."""

    name: str
    kind: str


def _rng(spec: Spec, register: str) -> tuple[random.Random, Faker]:
    """A random source per register, so that adding a register does not change the others."""
    seed = spec.seed * 1_000_003 + zlib.crc32(register.encode())
    fake = Faker("et_EE")
    fake.add_provider(EstonianProvider)
    fake.seed_instance(seed)
    return random.Random(seed), fake


def units(spec: Spec, register: RegisterRef, share: float) -> int:
    kind = register.name if register.name in BYTES_PER_UNIT else ("files" if register.kind == "files" else "generic")
    return max(10, int(spec.size_mb * share * 1024 * 1024 / BYTES_PER_UNIT[kind]))


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    text = value.isoformat() if isinstance(value, dt.date | dt.datetime) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class _TableWriter:
    """Gzipped COPY text files with a fixed header (mtime 0, no name): reproducible bytes."""

    def __init__(self, folder: Path, tables: Iterable[str]) -> None:
        self.raw: dict[str, IO[bytes]] = {}
        self.files: dict[str, gzip.GzipFile] = {}
        self.rows: dict[str, int] = {}
        for table in tables:
            raw = (folder / f"{table}.tsv.gz").open("wb")
            self.raw[table] = raw
            self.files[table] = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
            self.rows[table] = 0

    def write(self, table: str, *values: Any) -> None:
        self.files[table].write(("\t".join(_copy_value(v) for v in values) + "\n").encode())
        self.rows[table] += 1

    def close(self) -> None:
        for table in self.files:
            self.files[table].close()
            self.raw[table].close()


def _date_between(rnd: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rnd.randint(0, max(0, (end - start).days)))


def _population(spec: Spec, n: int, out: _TableWriter) -> None:
    rnd, fake = _rng(spec, "population")
    serials: dict[tuple[str, dt.date], int] = {}
    address_id = document_id = 0
    used_numbers: set[str] = set()
    for pid in range(1, n + 1):
        sex = "M" if rnd.random() < 0.47 else "F"
        birth = _date_between(rnd, dt.date(1925, 1, 1), REFERENCE_DATE - dt.timedelta(days=1))
        serial = serials.get((sex, birth), rnd.randint(0, 400))
        serials[(sex, birth)] = serial + 1
        code = isikukood(sex, birth, serial)
        russian = rnd.random() < 0.25  # about a quarter of Estonia's residents speak Russian at home
        if russian:
            first = fake.first_name_male_rus() if sex == "M" else fake.first_name_female_rus()
            last = fake.last_name_rus()
        else:
            first = fake.first_name_male_est() if sex == "M" else fake.first_name_female_est()
            last = fake.last_name_est()
        citizenship = rnd.choices(("EE", "RU", "UA", "LV", "FI"), (88, 6, 3, 2, 1))[0]
        status = "deceased" if birth.year < 1945 and rnd.random() < 0.6 else "alive"
        registered = dt.datetime.combine(birth + dt.timedelta(days=rnd.randint(1, 30)), dt.time(rnd.randint(8, 17)),
                                         tzinfo=dt.UTC)
        out.write("persons", pid, code, first, last, sex, birth, citizenship,
                  "vene" if russian else "eesti", status, registered)
        moved = min(birth + dt.timedelta(days=rnd.randint(0, 365 * 18)), REFERENCE_DATE)
        spans: list[tuple[dt.date, dt.date | None]] = [(moved, None)]
        if rnd.random() < 0.35:  # a previous address, ended when the current one began
            changed = _date_between(rnd, moved, REFERENCE_DATE)
            spans = [(moved, changed), (changed, None)]
        for valid_from, valid_to in spans:
            address_id += 1
            a = fake.ee_address()
            out.write("addresses", address_id, pid, a["county"], a["municipality"], a["settlement"], a["street"],
                      a["house"], a["apartment"], a["postal_code"], f"ME{rnd.randint(100000, 9999999)}",
                      valid_from, valid_to)
        if birth.year >= 1935 and status == "alive":
            kinds = ["id-card"] + (["passport"] if rnd.random() < 0.4 else []) + (["digi-id"] if rnd.random() < 0.1 else [])
            for kind in kinds:
                number = fake.ee_passport_number() if kind == "passport" else fake.ee_id_card_number()
                while number in used_numbers:
                    number = fake.ee_passport_number() if kind == "passport" else fake.ee_id_card_number()
                used_numbers.add(number)
                document_id += 1
                issued = _date_between(rnd, REFERENCE_DATE - dt.timedelta(days=5 * 365), REFERENCE_DATE)
                out.write("documents", document_id, pid, kind, number, issued, issued + dt.timedelta(days=5 * 365),
                          rnd.choice(ISSUERS))


def _land_register(spec: Spec, n: int, out: _TableWriter) -> None:
    rnd, fake = _rng(spec, "land-register")
    used: set[str] = set()
    owner_id = deed_id = 0
    for part in range(1, n + 1):
        number = fake.ee_cadastral_number()
        while number in used:
            number = fake.ee_cadastral_number()
        used.add(number)
        a = fake.ee_address()
        purpose = rnd.choice(LAND_PURPOSES)
        area = rnd.randint(300, 3000) if purpose == "elamumaa" else rnd.randint(500, 400_000)
        registered = _date_between(rnd, dt.date(1994, 1, 1), REFERENCE_DATE)
        address = f"{a['street']} {a['house']}, {a['settlement']}, {a['municipality']}, {a['county']}"
        out.write("parcels", number, 100_000 + part * 7, a["county"], a["municipality"], a["settlement"], address,
                  area, purpose, f"{area * rnd.uniform(0.5, 40):.2f}", registered)
        holders = rnd.choices((1, 2, 3), (70, 25, 5))[0]
        for _ in range(holders):
            owner_id += 1
            kind = rnd.choices(("person", "company", "state", "municipality"), (75, 15, 6, 4))[0]
            if kind == "person":
                sex = rnd.choice("MF")
                birth = _date_between(rnd, dt.date(1930, 1, 1), dt.date(2004, 12, 31))
                code = isikukood(sex, birth, rnd.randint(0, 999))
                name = f"{fake.first_name_male() if sex == 'M' else fake.first_name_female()} {fake.last_name()}"
            elif kind == "company":
                code, name = fake.ee_registry_code(), f"{fake.last_name()} OÜ"
            elif kind == "state":
                code, name = "70000310", "Eesti Vabariik"
            else:
                code, name = "75018420", f"{a['municipality']}"
            out.write("owners", owner_id, number, kind, code, name, f"1/{holders}",
                      _date_between(rnd, registered, REFERENCE_DATE))
        signed = registered
        for entry in range(1, rnd.randint(1, 4) + 1):
            deed_id += 1
            kind = "purchase" if entry == 1 else rnd.choice(("purchase", "gift", "inheritance", "mortgage", "servitude"))
            signed = _date_between(rnd, signed, REFERENCE_DATE)
            price = f"{rnd.uniform(5_000, 900_000):.2f}" if kind in ("purchase", "mortgage") else None
            out.write("deeds", deed_id, number, entry, kind, signed, rnd.choice(NOTARIES), price)


def _generic(spec: Spec, register: str, n: int, out: _TableWriter) -> None:
    rnd, fake = _rng(spec, register)
    for rid in range(1, n + 1):
        body = {"subject": fake.name(), "address": fake.ee_address(), "note": fake.sentence(nb_words=12)}
        created = dt.datetime.combine(_date_between(rnd, dt.date(2000, 1, 1), REFERENCE_DATE), dt.time(12), tzinfo=dt.UTC)
        out.write("records", rid, f"{register.upper()[:3]}-{rid:09d}", fake.sentence(nb_words=6).rstrip("."),
                  json.dumps(body, ensure_ascii=False, sort_keys=True), created)


def _load_sql(register: str, tables: Iterable[str], spec: Spec, rows: int) -> str:
    lines = ["\\set ON_ERROR_STOP on", "BEGIN;", "\\i schema.sql"]
    lines += [f"\\copy {t} FROM PROGRAM 'gzip -dc {t}.tsv.gz'" for t in tables]
    lines.append(f"INSERT INTO embassy_seed (register, seed, size_mb, generator, rows) "
                 f"VALUES ('{register}', {spec.seed}, {spec.size_mb!r}, '{GENERATOR}', {rows});")
    lines += ["COMMIT;", "ANALYZE;", ""]
    return "\n".join(lines)


def generate_postgres(spec: Spec, register: RegisterRef, share: float, folder: Path) -> int:
    """Write the register's load folder; return the number of rows."""
    folder.mkdir(parents=True, exist_ok=True)
    tables = schema.tables(register.name)
    writer = _TableWriter(folder, tables)
    n = units(spec, register, share)
    try:
        if register.name == "population":
            _population(spec, n, writer)
        elif register.name == "land-register":
            _land_register(spec, n, writer)
        else:
            _generic(spec, register.name, n, writer)
    finally:
        writer.close()
    rows = sum(writer.rows.values())
    (folder / "schema.sql").write_text(schema.ddl(register.name))
    (folder / "load.sql").write_text(_load_sql(register.name, tables, spec, rows))
    return rows


def _court_files(spec: Spec, n: int) -> Iterator[tuple[str, bytes]]:
    rnd, fake = _rng(spec, "court-files")
    used: set[str] = set()
    for _ in range(n):
        kind = rnd.choices(tuple(CASE_KINDS), (20, 50, 20, 10))[0]
        year = rnd.randint(2005, 2025)
        number = f"{kind}-{year % 100:02d}-{rnd.randint(1, 99999)}"
        while number in used:
            number = f"{kind}-{year % 100:02d}-{rnd.randint(1, 99999)}"
        used.add(number)
        court = rnd.choice(COURTS)
        opened = _date_between(rnd, dt.date(year, 1, 1), dt.date(year, 12, 31))
        docs = []
        for i in range(1, rnd.randint(2, 5) + 1):
            doc_kind = DOC_KINDS[min(i - 1, len(DOC_KINDS) - 1)] if i < 3 else rnd.choice(DOC_KINDS[2:])
            name = f"{i:02d}-{doc_kind}.txt"
            text = f"{court}\nKohtuasi nr {number}\n{doc_kind.capitalize()}\n\n" + "\n\n".join(
                fake.paragraphs(nb=rnd.randint(3, 12))) + "\n"
            docs.append((name, text.encode()))
        case = {
            "number": number, "court": court, "kind": CASE_KINDS[kind], "opened": opened.isoformat(),
            "judge": fake.name(), "parties": [fake.name() for _ in range(rnd.randint(1, 3))],
            "status": rnd.choice(("menetluses", "lõpetatud", "jõustunud")),
            "documents": [{"name": d, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for d, b in docs],
        }
        base = f"court-files/{year}/{number}"
        yield f"{base}/case.json", (json.dumps(case, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode()
        for name, body in docs:
            yield f"{base}/documents/{name}", body


def _generic_files(spec: Spec, register: str, n: int) -> Iterator[tuple[str, bytes]]:
    rnd, fake = _rng(spec, register)
    for i in range(1, n + 1):
        year = rnd.randint(2000, 2025)
        text = fake.sentence(nb_words=8) + "\n\n" + "\n\n".join(fake.paragraphs(nb=rnd.randint(2, 8))) + "\n"
        yield f"{register}/{year}/{register}-{year}-{i:07d}.txt", text.encode()


def generate_files(spec: Spec, register: RegisterRef, share: float, target: Path) -> int:
    """Write a reproducible tar.gz of the register's document tree; return the number of files."""
    n = units(spec, register, share)
    entries = _court_files(spec, n) if register.name == "court-files" else _generic_files(spec, register.name, n)
    count = 0
    with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path, body in entries:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in dirs:
                    dirs.add(folder)
                    tar.addfile(_tarinfo(folder, 0, tarfile.DIRTYPE, 0o755))
            tar.addfile(_tarinfo(path, len(body), tarfile.REGTYPE, 0o644), io.BytesIO(body))
            count += 1
    return count


def _tarinfo(name: str, size: int, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, mode, 1_767_225_600  # 2026-01-01
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def generate(registers: Iterable[RegisterRef], spec: Spec, out: Path) -> dict[str, Any]:
    """Generate every register into `out`; write and return the manifest. Reuses a complete earlier run."""
    regs = list(registers)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if manifest.get("generator") == GENERATOR and manifest.get("registers", {}).keys() == {r.name for r in regs}:
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    share = 1 / len(regs) if regs else 1.0
    result: dict[str, Any] = {"generator": GENERATOR, "seed": spec.seed, "size_mb": spec.size_mb, "registers": {}}
    for reg in regs:
        if reg.kind == "postgres":
            folder = out / reg.name
            count = generate_postgres(spec, reg, share, folder)
            files = {p.name: _sha256(p) for p in sorted(folder.iterdir())}
        else:
            tar = out / f"{reg.name}.tar.gz"
            count = generate_files(spec, reg, share, tar)
            files = {tar.name: _sha256(tar)}
        result["registers"][reg.name] = {"kind": reg.kind, "items": count, "files": files}
    result["digest"] = hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]
    manifest_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the home state's synthetic registers.")
    parser.add_argument("--stack", default="rehearsal")
    parser.add_argument("--seed", type=int, default=Spec.seed)
    parser.add_argument("--size-mb", type=float, default=Spec.size_mb)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from embassy.model import load_stack

    dep = load_stack(args.stack)
    manifest = generate([RegisterRef(r.name, r.kind.value) for r in dep.registers], Spec(args.seed, args.size_mb), args.out)
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
