"""The drill's write load on home: a steady stream of changes into every register, until the incident.

Every postgres register gets one small transaction at a time into one of its own tables (a person's new
address, a parcel's new owner, a record), every file register one new document (written to a temporary
name, flushed, renamed). Each change carries a sequence number per register (postgres: id = FLOOR + seq;
files: drill-load/<seq>.json), and every acknowledged one (committed / renamed) is appended to the log as
`register seq unix-time` before the next is written: the log is home's own account of what it committed,
read at the incident, against which the restored state is measured (RPO, lost transactions).

    python3 load.py CONFIG_JSON LOG      (on home, as postgres; stdlib and psycopg only: it is uploaded as is)

CONFIG: {"rate": transactions a second per postgres register, "files_every": seconds between documents,
         "registers": [{"name", "kind": "postgres"|"files", "database" | "path"}]}
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

FLOOR = 2**52  # load rows' ids: far above anything the generator writes
FOLDER = "drill-load"  # in a file register
# Per known register: the table the load writes into, and the row (%(id)s, %(seq)s are bound).
STATEMENTS = {
    "population": ("addresses", "INSERT INTO addresses (id, person_id, county, municipality, settlement, street, house, "
                                "apartment, postal_code, ads_oid, valid_from) SELECT %(id)s, min(id), 'Harju maakond', "
                                "'Tallinn', 'Tallinn', 'Harjutuse', %(seq)s::text, '', '10111', 'drill', current_date "
                                "FROM persons"),
    "land-register": ("owners", "INSERT INTO owners (id, parcel, owner_kind, owner_code, owner_name, share, since) "
                                "SELECT %(id)s, min(cadastral_number), 'person', '38001010000', 'Harjutus ' || %(seq)s, "
                                "'1/1', current_date FROM parcels"),
}
GENERIC = ("records", "INSERT INTO records (id, reference, title, body, created_at) VALUES (%(id)s, 'drill-' || %(seq)s, "
                      "'drill', '{}', clock_timestamp())")


def table_of(register: str) -> str:
    return STATEMENTS.get(register, GENERIC)[0]


def newest_sql(register: str) -> str:
    """The newest load sequence number a restored register holds (-1: none)."""
    return f"SELECT coalesce(max(id) - {FLOOR}, -1) FROM {table_of(register)} WHERE id >= {FLOOR}"


def _next_seq_pg(conn: Any, register: str) -> int:
    return int(conn.execute(newest_sql(register)).fetchone()[0]) + 1


def _next_seq_files(folder: str) -> int:
    names = [n for n in os.listdir(folder) if n.endswith(".json") and n[:-5].isdigit()]
    return max((int(n[:-5]) for n in names), default=-1) + 1


def write_document(folder: str, seq: int) -> None:
    data = json.dumps({"seq": seq, "written": time.time()}).encode()
    tmp = os.path.join(folder, f".{seq:09d}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(folder, f"{seq:09d}.json"))


def run(config: dict[str, Any], log_path: str) -> None:
    import psycopg  # Debian's python3-psycopg on home

    rate = float(config.get("rate", 10))
    files_every = float(config.get("files_every", 1.0))
    conns, seqs, folders = {}, {}, {}
    for reg in config["registers"]:
        if reg["kind"] == "postgres":
            conns[reg["name"]] = psycopg.connect(f"host=/var/run/postgresql dbname={reg['database']}", autocommit=True)
            seqs[reg["name"]] = _next_seq_pg(conns[reg["name"]], reg["name"])
        else:
            folders[reg["name"]] = os.path.join(reg["path"], FOLDER)
            os.makedirs(folders[reg["name"]], exist_ok=True)
            seqs[reg["name"]] = _next_seq_files(folders[reg["name"]])
    last_file = 0.0
    with open(log_path, "a", buffering=1) as log:
        while True:
            for name, conn in conns.items():
                seq = seqs[name]
                conn.execute(STATEMENTS.get(name, GENERIC)[1], {"id": FLOOR + seq, "seq": seq})  # returns once committed
                log.write(f"{name} {seq} {time.time():.6f}\n")
                seqs[name] = seq + 1
            if folders and time.monotonic() - last_file >= files_every:
                last_file = time.monotonic()
                for name, folder in folders.items():
                    write_document(folder, seqs[name])
                    log.write(f"{name} {seqs[name]} {time.time():.6f}\n")
                    seqs[name] += 1
            time.sleep(1 / rate)


def parse_log(text: str) -> dict[str, list[tuple[int, float]]]:
    """Per register, the acknowledged (seq, unix time) in order; a torn last line (the kill) is dropped."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            out.setdefault(parts[0], []).append((int(parts[1]), float(parts[2])))
        except ValueError:
            continue
    return out


if __name__ == "__main__":
    run(json.loads(sys.argv[1]), sys.argv[2])
