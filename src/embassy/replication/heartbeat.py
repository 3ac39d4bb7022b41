"""The heartbeat: one row a second in home's `embassy_monitor` database, the measure of lag and RPO.

`heartbeat` (logged, replicated: a restored cluster shows the newest beat it holds) and the home-only
UNLOGGED `heartbeat_lsn`, which maps each beat to a WAL position at or after its commit, so that
home can tell which beat a position (a standby's replay, a repo's archive) makes restorable.

    python3 -m replication.heartbeat [--interval 1]      (runs as postgres, systemd service)
"""

from __future__ import annotations

import argparse
import sys
import time

DATABASE = "embassy_monitor"
SCHEMA = """
CREATE TABLE IF NOT EXISTS heartbeat (ts timestamptz PRIMARY KEY);
CREATE UNLOGGED TABLE IF NOT EXISTS heartbeat_lsn (ts timestamptz PRIMARY KEY, lsn pg_lsn NOT NULL);
CREATE INDEX IF NOT EXISTS heartbeat_lsn_lsn ON heartbeat_lsn (lsn);
"""
KEEP = "7 days"


def beat(conn: object) -> None:
    execute = conn.execute  # type: ignore[attr-defined]
    ts = execute("INSERT INTO heartbeat VALUES (clock_timestamp()) RETURNING ts").fetchone()[0]
    # Autocommit: the commit is flushed, so the write position now is at or after the commit record.
    execute("INSERT INTO heartbeat_lsn VALUES (%s, pg_current_wal_lsn())", (ts,))


def main(argv: list[str]) -> int:
    import psycopg

    parser = argparse.ArgumentParser(prog="python3 -m replication.heartbeat")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--conninfo", default="host=/var/run/postgresql")
    args = parser.parse_args(argv)
    while True:  # reconnect after a restart of PostgreSQL; systemd restarts us after anything else
        try:
            with psycopg.connect(f"{args.conninfo} dbname={DATABASE}", autocommit=True) as conn:
                conn.execute(SCHEMA)
                n = 0
                while True:
                    beat(conn)
                    n += 1
                    if n % 600 == 0:
                        conn.execute(f"DELETE FROM heartbeat WHERE ts < now() - interval '{KEEP}'")
                        conn.execute(f"DELETE FROM heartbeat_lsn WHERE ts < now() - interval '{KEEP}'")
                    time.sleep(max(0.0, args.interval - (time.time() % args.interval)))
        except psycopg.OperationalError as exc:
            print(f"heartbeat: {exc}; retrying in 2 s", file=sys.stderr)
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
