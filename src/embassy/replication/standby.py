"""A warm embassy's standby, held at a signed point while home's WAL keeps arriving (issue 22, item 1).

Why held: a standby that replays everything it receives is past the newest signed manifest's digest
LSN as soon as a register changes, so its state can no longer be compared with anything home signed.
Why not `recovery_target_lsn` on a streaming standby alone: a standby paused at a recovery target that
it reached from WAL already on its disk never starts its WAL receiver (measured on PostgreSQL 15: no
row in pg_stat_wal_receiver, "pausing at the end of recovery"), so it would stop receiving.

So a warm embassy runs two independent parts:
- the receiver: `pg_receivewal --synchronous` (a systemd service) streams home's WAL over the
  authenticated replication channel and flushes it to receive_dir() on the embassy's disk; home sees its
  flush position in pg_stat_replication (that is the warm lag now, never the replay position);
- the standby: no primary_conninfo; its restore_command reads complete segments from receive_dir(), then
  the embassy's vault. hold_file() (included by the cluster) holds its replay at a point: just after the
  clone (`recovery_target = 'immediate'`), then at the newest signed digest LSN that the controller
  verified in this embassy's vault (`embassy replicate --once`, the drill's rounds: embassy.replication.hold).

At a restore (embassy.drill.restore): the standby is moved to each signed digest LSN of the verified
head manifest, paused there, its digests compared (the proof); the WAL beyond the last signed point is
read with pg_waldump (the transactions it commits, per database, are counted), then the hold is
removed, the rest replayed and the standby promoted.

Texts and parsers only (imported by the deploy, the controller and unit tests).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from embassy.replication.dataplane import REPLICATION_USER, STANZA
from embassy.replication.pgmajor import Postgres

RECEIVER_UNIT = "embassy-wal-receiver"
FETCH_TOOL = "embassy-wal-fetch"


def receive_dir(pg: Postgres) -> str:
    """Where pg_receivewal flushes home's WAL: beside the cluster, in its major's tree."""
    return pg.home("embassy-wal")


def hold_file(pg: Postgres) -> str:
    """The hold's settings (hold_conf's text), inside the standby's data folder."""
    return f"{pg.data}/embassy-hold.conf"


SOURCE = "streamed from home over the replication channel (pg_receivewal), not covered by a signature"


def standby_conf(pg: Postgres) -> str:
    """The standby's settings: no primary_conninfo (the receiver streams), WAL from the receiver, then the vault."""
    return "\n".join([
        "# Managed by embassy (deploys/standby.py): a standby of home held at a signed point (embassy.replication.standby).",
        "# WAL: complete segments pg_receivewal flushed here, else this embassy's vault.",
        f"restore_command = '/usr/local/sbin/{FETCH_TOOL} %f \"%p\"'",
        f"archive_cleanup_command = '{pg.bin}/pg_archivecleanup {receive_dir(pg)} %r'",
        "hot_standby = on",
        f"include_if_exists = '{hold_file(pg)}'",
        "",
    ])


def receiver_unit(pg: Postgres, primary: str, application_name: str) -> str:
    """pg_receivewal as a service: flushes every write (--synchronous) and reports that position to home."""
    conninfo = (f"host={primary} port=5432 user={REPLICATION_USER} passfile=/var/lib/postgresql/.pgpass "
                f"application_name={application_name}")
    return "\n".join([
        "[Unit]", "Description=embassy: home's WAL, streamed and flushed to this embassy's disk",
        "After=network-online.target", "Wants=network-online.target", "",
        "[Service]", "Type=simple", "User=postgres",
        f"ExecStart={pg.bin}/pg_receivewal -D {receive_dir(pg)} --synchronous --no-loop -w -d '{conninfo}'",
        "Restart=always", "RestartSec=2", "",
        "[Install]", "WantedBy=multi-user.target", ""])


def hold_conf(lsn: str | None, note: str = "") -> str:
    """The hold: before `lsn` (records starting at or after it are not replayed), or just after the clone."""
    lines = [f"# Managed by embassy: replay held at a signed point. {note}".rstrip()]
    if lsn is None:
        lines += ["recovery_target = 'immediate'"]
    else:
        lines += [f"recovery_target_lsn = '{lsn}'", "recovery_target_inclusive = off"]
    return "\n".join([*lines, "recovery_target_action = 'pause'", ""])


def released_conf() -> str:
    return "# Managed by embassy: the hold released by a restore (replay everything received, then promote).\n"


_HELD = re.compile(r"^recovery_target_lsn\s*=\s*'([0-9A-Fa-f]+/[0-9A-Fa-f]+)'", re.M)


def held_lsn(conf: str) -> str | None:
    """The LSN a hold file names (None: immediate, released or none)."""
    m = _HELD.search(conf)
    return m.group(1) if m else None


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def signed_points(body: dict[str, Any], registers: Iterable[str] | None = None) -> dict[str, str]:
    """Per postgres register of a manifest body: the LSN its digest names (the signed point)."""
    wanted = set(registers) if registers is not None else None
    out = {}
    for reg in body.get("registers") or []:
        if reg.get("kind") != "postgres" or (wanted is not None and reg.get("name") not in wanted):
            continue
        lsn = (reg.get("digest") or {}).get("lsn")
        if isinstance(lsn, str) and re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", lsn):
            out[str(reg["name"])] = lsn
    return out


# --------------------------------------------------------------------------- beyond the signed point


_RECORD = re.compile(r"\btx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+),")
_COMMIT = re.compile(r"rmgr: Transaction .* desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+)")
_REL = re.compile(r"\brel \d+/(\d+)/\d+")


@dataclass(frozen=True)
class Commit:
    lsn: int
    databases: frozenset[int]
    time: str


def commits(waldump: str) -> list[Commit]:
    """Parse `pg_waldump` output: each transaction's databases (from its block references), and each COMMIT
    record with the databases its transaction wrote in (a commit that wrote in none is not a register's)."""
    touched: dict[int, set[int]] = {}
    out = []
    for line in waldump.splitlines():
        rec = _RECORD.search(line)
        if not rec:
            continue
        xid, lsn = int(rec.group(1)), rec.group(2)
        if not xid:
            continue
        for db in _REL.findall(line):
            if int(db):
                touched.setdefault(xid, set()).add(int(db))
        commit = _COMMIT.search(line)
        if commit:
            dbs = touched.pop(xid, set())
            if dbs:
                out.append(Commit(lsn_int(lsn), frozenset(dbs), commit.group(1)))
    return out


def count_beyond(found: list[Commit], database: int, start: int, until: int | None) -> int:
    """Commits in `database` whose record lies at or after `start` (the signed point) and before `until`."""
    return sum(1 for c in found if database in c.databases and c.lsn >= start and (until is None or c.lsn < until))


def timeline_switch(history: str) -> int | None:
    """The LSN where the old timeline ended, from a promoted cluster's newest .history file (its last line)."""
    lines = [x.split() for x in history.splitlines() if x.strip() and not x.startswith("#")]
    return lsn_int(lines[-1][1]) if lines and len(lines[-1]) >= 2 else None


def fetch_script(pg: Postgres) -> str:
    """restore_command: complete segments from the receiver, else the vault (a .partial only after a restore renamed it)."""
    return "\n".join([
        "#!/bin/sh",
        f"# {FETCH_TOOL} FILE DEST: the standby's restore_command (managed by embassy).",
        "set -u",
        f'if [ -f "{receive_dir(pg)}/$1" ]; then exec cp "{receive_dir(pg)}/$1" "$2"; fi',
        f'exec pgbackrest --stanza={STANZA} archive-get "$1" "$2"',
        ""])
