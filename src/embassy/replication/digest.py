"""Digests of a register's content, computed the same way at home and after a restore.

- postgres: per table of the `public` schema, the row count and an order-independent digest: the
  sum modulo 2**256 of the SHA-256 of each row's text form, with the session settings that decide
  that text form pinned (a restored cluster must print rows as home did). The server hashes the rows
  and sends their hashes in slices of the table (by page), so no row's text crosses to Python
  (measured on a million rows: 3.1 of the 3.5 s went to fetching the row texts into Python; the
  server's own text form and SHA-256 of them take 1.3 s);
- files: a Merkle root over the tree: leaves are (relative path, SHA-256 of content) in byte order
  of the path, nodes hash their two children; an odd node is carried up.

Runs on hosts (home's agent, an embassy's restore) and on the controller: stdlib, and psycopg for
postgres (imported only there).

    python3 -m replication.digest postgres DBNAME [--conninfo 'host=/var/run/postgresql']
    python3 -m replication.digest files DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MOD = 2**256
PAGES_PER_SLICE = 4096  # 32 MB of table a query: a few MB of hashes in memory at a time
# The text form of a row depends on these: pin them so that home and a restored cluster agree.
SESSION = ("SET datestyle = 'ISO, YMD'", "SET timezone = 'UTC'", "SET extra_float_digits = 3",
           "SET intervalstyle = 'postgres'", "SET bytea_output = 'hex'")


def combine_rows(rows: Any) -> tuple[int, str]:
    """Row count and order-independent digest of an iterable of row texts."""
    total, count = 0, 0
    for text in rows:
        total = (total + int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")) % MOD
        count += 1
    return count, f"{total:064x}"


def postgres(dbname: str, conninfo: str = "host=/var/run/postgresql") -> dict[str, Any]:
    """{"lsn", "tables": {name: {"rows", "sha256"}}} of one database, in one repeatable-read snapshot."""
    import psycopg  # on the hosts: Debian's python3-psycopg

    tables: dict[str, dict[str, Any]] = {}
    with psycopg.connect(f"{conninfo} dbname={dbname}", autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for statement in SESSION:
            conn.execute(statement)
        # The first query fixes the snapshot; the LSN read with it names the point the digest is of.
        row = conn.execute("SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                           "ELSE pg_current_wal_insert_lsn() END::text").fetchone()
        lsn = row[0] if row else None
        names = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname").fetchall()]
        for name in names:
            rows, digest = combine_hashes(_row_hashes(conn, name))
            tables[name] = {"rows": rows, "sha256": digest}
    return {"lsn": lsn, "tables": tables}


def combine_hashes(blobs: Iterable[bytes]) -> tuple[int, str]:
    """combine_rows, from the rows' SHA-256 hashes given as concatenated 32-byte blobs."""
    total, count = 0, 0
    for blob in blobs:
        total += sum(int.from_bytes(blob[i:i + 32], "big") for i in range(0, len(blob), 32))
        count += len(blob) // 32
    return count, f"{total % MOD:064x}"


def _row_hashes(conn: Any, table: str) -> Iterator[bytes]:
    """The SHA-256 of each row's text form (UTF-8, as combine_rows encodes it), hashed by the server and sent
    as one blob per slice of PAGES_PER_SLICE pages (a TID range scan). The last slice has no upper bound:
    every row the snapshot sees is in a page that exists now (VACUUM truncates only pages no snapshot needs).
    A partitioned table's slices run through each partition's pages: as many as its largest partition has."""
    pages = conn.execute(f"SELECT max(pg_relation_size(relid)) / current_setting('block_size')::int "
                         f"FROM pg_partition_tree('public.\"{table}\"')").fetchone()[0] or 0
    hashed = f"SELECT string_agg(sha256(convert_to(t::text, 'UTF8')), ''::bytea) FROM public.\"{table}\" t"
    for start in range(0, pages + 1, PAGES_PER_SLICE):
        last = start + PAGES_PER_SLICE > pages
        where = " WHERE ctid >= %s::tid" + ("" if last else " AND ctid < %s::tid")
        bounds = (f"({start},0)",) if last else (f"({start},0)", f"({start + PAGES_PER_SLICE},0)")
        row = conn.execute(hashed + where, bounds, binary=True).fetchone()
        if row and row[0] is not None:
            yield bytes(row[0])


def merkle_root(leaves: list[bytes]) -> str:
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    level = leaves
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def files(root: str | Path) -> dict[str, Any]:
    """{"files", "bytes", "merkle_root"} of a folder (regular files; links and empty folders are not content)."""
    base = Path(root)
    entries: list[tuple[bytes, bytes]] = []
    size = 0
    for folder, dirs, names in os.walk(base):
        dirs.sort()
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            h = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
                    size += len(chunk)
            rel = os.fsencode(path.relative_to(base))
            entries.append((rel, h.digest()))
    entries.sort()
    leaves = [hashlib.sha256(b"\x00" + rel + b"\x00" + content).digest() for rel, content in entries]
    return {"files": len(entries), "bytes": size, "merkle_root": merkle_root(leaves)}


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """What differs between two digests of the same register (empty when equal; the LSN is not content)."""
    if "tables" in expected:
        out = []
        want, got = expected.get("tables", {}), actual.get("tables", {})
        for name in sorted(set(want) | set(got)):
            if name not in got:
                out.append(f"table {name} missing")
            elif name not in want:
                out.append(f"table {name} not in the manifest")
            elif want[name] != got[name]:
                out.append(f"table {name}: {got[name]['rows']} rows, digest {got[name]['sha256'][:12]}… "
                           f"(manifest: {want[name]['rows']} rows, {want[name]['sha256'][:12]}…)")
        return out
    keys = ("files", "bytes", "merkle_root")
    return [f"{k}: {actual.get(k)} (manifest: {expected.get(k)})" for k in keys if expected.get(k) != actual.get(k)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m replication.digest")
    sub = parser.add_subparsers(dest="kind", required=True)
    pg = sub.add_parser("postgres")
    pg.add_argument("dbname")
    pg.add_argument("--conninfo", default="host=/var/run/postgresql")
    fs = sub.add_parser("files")
    fs.add_argument("root")
    args = parser.parse_args(argv)
    result = postgres(args.dbname, args.conninfo) if args.kind == "postgres" else files(args.root)
    json.dump(result, sys.stdout, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
