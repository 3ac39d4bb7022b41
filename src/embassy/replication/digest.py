"""Digests of a register's content, computed the same way at home and after a restore.

- postgres: per table of the `public` schema, the row count and a digest of the multiset of its rows:
  the SHA-256 of the rows' SHA-256 values, sorted, as lowercase hex lines (`sorted-row-sha256/1`):

      digest(T) = SHA-256( join( sorted( hex(SHA-256(utf8(text(r)))) + "\\n"  for r in T ) ) )

  with text(r) the row's text form (`record_out`), under pinned session settings (a restored cluster
  must print rows as home did). A collision needs a SHA-256 collision: equal digests mean equal sorted
  lists of row hashes, so equal multisets of rows, duplicates counted. It replaced the sum of the rows'
  SHA-256 mod 2**256, which a lattice reduction breaks in seconds (two 179-row multisets with the
  same count and sum). An LtHash-style lattice hash (1024 lanes of 16 bits) was weighed and not
  taken: with lanes mod 2**16, 65,536 copies of any row add nothing, so `{a x 65536}` and
  `{b x 65536}` collide, and a table may hold duplicate rows; lanes wide enough against crafted
  multiplicities need ~5 KB of XOF output per row, several times the server's cost of the row itself.
  The sorted construction is not homomorphic: a digest is recomputed, never updated by adding rows.
  The server hashes and sorts the rows and streams the sorted hex lines (COPY), so no row's text
  crosses to Python and Python only feeds SHA-256 (a sort spills to disk past work_mem).
- files: a Merkle root over the tree: leaves are (relative path, SHA-256 of content) in byte order
  of the path, nodes hash their two children; an odd node is carried up.

Who could make a digest pass wrongly: a role with CREATE rights in a register database. So SQL never
holds a pasted name (tables by OID and psycopg.sql.Identifier), the session's search_path is
pg_catalog only (no operator or function of theirs is resolved), the row's text is `record_out`
(never a cast they could define on their table's row type), row security is off (a policy can neither
hide rows nor run its functions: the role bypasses RLS, else the query fails), and the digest refuses
to run as a superuser: it runs as `embassy_digest` (LOGIN, pg_read_all_data, BYPASSRLS, and
REPLICATION for the slot below), which can read everything and write nothing.

The LSN of a digest: on a primary (home), `--exact` creates a temporary logical replication slot
with an exported snapshot on a replication connection; the digest is of that snapshot and its LSN is
the slot's consistent point: exactly the transactions whose commit record starts before it are in
it. Recovering with recovery_target_lsn = lsn and recovery_target_inclusive = off gives that state.
In recovery (a standby or a scratch cluster paused at a target) the LSN is the replay position.

Runs on hosts (home's agent, an embassy's restore) and on the controller: stdlib, and psycopg for
postgres (imported only there). Bad input or a superuser: exit 2 with a HINT line.

    python3 -m replication.digest postgres DBNAME [--conninfo 'host=/var/run/postgresql'] [--exact]
    python3 -m replication.digest files DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CONSTRUCTION = "sorted-row-sha256/1"
ROLE = "embassy_digest"  # the read-only role (and OS user) the digest runs as
LINE = 65  # one row: 64 hex digits and a newline
# The text form of a row depends on these: pin them so that home and a restored cluster agree. The
# search_path is pg_catalog only: no operator, function or cast of a register role is ever resolved.
SESSION = ("SET datestyle = 'ISO, YMD'", "SET timezone = 'UTC'", "SET extra_float_digits = 3",
           "SET intervalstyle = 'postgres'", "SET bytea_output = 'hex'", "SET search_path = pg_catalog, pg_temp",
           "SET row_security = off", "SET work_mem = '64MB'")
# The rows of one table, hashed and sorted by the server, streamed as hex lines. `{}` is the table as
# a psycopg.sql.Identifier; everything else is schema-qualified builtins.
# Sorted as text in the C collation: the order of the hex digits is the order of the bytes, and the sort
# compares abbreviated keys (measured: a third faster than sorting the bytea values).
ROWS = ("SELECT s.h FROM (SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.textin("
        "pg_catalog.record_out(t)), 'UTF8')), 'hex') COLLATE pg_catalog.\"C\" AS h FROM {} t) s ORDER BY s.h")


class DigestRefused(Exception):
    """Bad input or an unsafe setting (a superuser, no slot where --exact asks one): exit 2, with a hint."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def combine_rows(rows: Iterable[str]) -> tuple[int, str]:
    """The definition: row count and digest of the multiset of row texts (order does not matter)."""
    lines = sorted(hashlib.sha256(text.encode()).hexdigest() + "\n" for text in rows)
    return len(lines), hashlib.sha256("".join(lines).encode()).hexdigest()


def postgres(dbname: str, conninfo: str = "host=/var/run/postgresql", *, exact: bool = False) -> dict[str, Any]:
    """{"construction", "lsn", "lsn_source", "tables": {name: {"rows", "sha256"}}} of one database, in one
    repeatable-read snapshot; with `exact` (a primary) the snapshot of a slot's consistent point."""
    import psycopg  # on the hosts: Debian's python3-psycopg

    try:
        return _postgres(psycopg, dbname, conninfo, exact)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DigestRefused(f"the digest's role may not read everything: {str(exc).strip()}",
                            f"grant it pg_read_all_data and BYPASSRLS (the home deploy creates {ROLE} so)") from exc


def _postgres(psycopg: Any, dbname: str, conninfo: str, exact: bool) -> dict[str, Any]:
    with psycopg.connect(f"{conninfo} dbname={dbname}", autocommit=True) as conn:
        _refuse_superuser(conn)
        recovering = bool(_one(conn, "SELECT pg_catalog.pg_is_in_recovery()"))
        if exact and not recovering:
            repl = psycopg.connect(f"{conninfo} dbname={dbname} replication=database", autocommit=True)
            try:
                lsn, snapshot = _exported_snapshot(repl)
                # The exported snapshot lives while `repl` is idle; once imported, the slot goes (it would
                # hold WAL and catalog rows back for as long as the digest runs).
                return _digest_tables(conn, snapshot, lsn, "slot consistent point", imported=repl.close)
            finally:
                repl.close()
        return _digest_tables(conn, None, None, "replay position (recovery)" if recovering else "insert position")


def _one(conn: Any, query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _refuse_superuser(conn: Any) -> None:
    """A superuser would run whatever a register role planted (a cast, a policy) with every right: never."""
    if _one(conn, "SELECT rolsuper OR rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user"):
        raise DigestRefused(f"the digest connected as {_one(conn, 'SELECT current_user')!r}, a superuser (or a role "
                            "that creates roles); it runs only as a role that can read and not write",
                            f"run it as the OS user {ROLE} (peer authentication maps it to the read-only role "
                            f"{ROLE}, created by the home deploy), e.g. `runuser -u {ROLE} -- python3 -m "
                            "replication.digest ...`")


def _exported_snapshot(repl: Any) -> tuple[str, str]:
    """(consistent point, snapshot name) of a temporary logical slot: they belong together. The slot name is
    ours and constant-shaped; a replication connection takes only the simple query protocol."""
    name = f"embassy_digest_{os.getpid()}"
    res = repl.pgconn.exec_(f"CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')".encode())
    if res.status != 2:  # PGRES_TUPLES_OK
        message = (res.error_message or b"").decode(errors="replace").strip()
        raise DigestRefused(f"no exported snapshot at a known WAL position: {message}",
                            "home needs wal_level = logical, a free replication slot and wal sender, and the "
                            f"role {ROLE} WITH REPLICATION (the home deploy sets all of them)")
    lsn, snapshot = res.get_value(0, 1), res.get_value(0, 2)
    if lsn is None or snapshot is None:
        raise DigestRefused("the replication slot exported no snapshot", "use PostgreSQL 15 or later at home")
    return lsn.decode(), snapshot.decode()


def _digest_tables(conn: Any, snapshot: str | None, lsn: str | None, source: str,
                   imported: Any = None) -> dict[str, Any]:
    from psycopg import sql

    for statement in SESSION:
        conn.execute(statement)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        if snapshot:  # must come before the transaction's first query
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        # Without a slot, the first query fixes the snapshot and the LSN read with it names its point.
        here = _one(conn, "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
                          "ELSE pg_catalog.pg_current_wal_insert_lsn() END)::text")
        if imported:
            imported()
        tables = {}
        for oid, name in conn.execute(
                "SELECT c.oid, c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
                "ORDER BY c.relname COLLATE \"C\"").fetchall():
            tables[name] = _table(conn, oid, name)
    finally:
        conn.execute("ROLLBACK")
    return {"construction": CONSTRUCTION, "lsn": lsn or here, "lsn_source": source, "tables": tables}


def _table(conn: Any, oid: int, name: str) -> dict[str, Any]:
    """Rows and digest of one table, its name checked against its OID (a rename would make it another)."""
    from psycopg import sql

    if _one(conn, "SELECT relname::text FROM pg_catalog.pg_class WHERE oid = %s", (oid,)) != name:
        raise RuntimeError(f"table {name!r} (oid {oid}) changed name during the digest")
    query = sql.SQL(ROWS).format(sql.Identifier("public", name))
    h, size = hashlib.sha256(), 0
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as copy:
        for chunk in copy:
            h.update(chunk)
            size += len(chunk)
    if size % LINE:
        raise RuntimeError(f"table {name!r}: the server sent {size} bytes of row hashes, not whole lines")
    return {"rows": size // LINE, "sha256": h.hexdigest()}


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
        want_c, got_c = expected.get("construction", "sum-sha256"), actual.get("construction", "sum-sha256")
        if want_c != got_c:  # an older manifest's digest is of another construction: not comparable
            return [f"digest construction {got_c} (manifest: {want_c}); a digest of the older, weak construction "
                    "is not accepted: restore a round signed after the upgrade"]
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
    pg.add_argument("--exact", action="store_true",
                    help="on a primary: the snapshot of a temporary logical slot, its LSN the slot's consistent point")
    fs = sub.add_parser("files")
    fs.add_argument("root")
    args = parser.parse_args(argv)
    try:
        result = postgres(args.dbname, args.conninfo, exact=args.exact) if args.kind == "postgres" else files(args.root)
    except DigestRefused as exc:
        print(f"error: {exc}\nHINT: {exc.hint}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
