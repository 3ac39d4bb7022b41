"""Lag per embassy and register, measured at home: the age of the newest heartbeat each embassy could
restore now (from its repo for cold; for warm, from the WAL its receiver flushed to its disk, or its repo if
newer), and the warm flush lag in ms. A warm standby's replay is held at the newest signed point
(embassy.replication.standby): its replay position says how far it is proven, not what it holds, so lag
is read from the flush position that the embassy's pg_receivewal reports to home.

    python3 -m replication.lag [--config /etc/embassy/replication.json]     (JSON on stdout)

Runs on home as root (stdlib; psql and pgBackRest as postgres).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from . import hostcmd
from .heartbeat import DATABASE
from .round import CONFIG, iso, load_json, now_utc


def _parse_ts(text: str) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def newest_beat_at(lsn: int | None) -> dt.datetime | None:
    if lsn is None:
        return None
    return _parse_ts(hostcmd.psql(DATABASE, "SELECT to_char(max(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') "
                                            f"|| '+00:00' FROM heartbeat_lsn WHERE lsn <= '{hostcmd.lsn_text(lsn)}'"))


def standbys() -> dict[str, tuple[int | None, float | None]]:
    """Per application name (= embassy): the LSN flushed to the embassy's disk and the flush lag in ms
    (pg_stat_replication: the embassy's pg_receivewal --synchronous reports what it flushed)."""
    out: dict[str, tuple[int | None, float | None]] = {}
    rows = hostcmd.psql("postgres", "SELECT application_name, coalesce(flush_lsn::text, ''), "
                                    "coalesce((extract(epoch FROM flush_lag) * 1000)::text, '0') FROM pg_stat_replication "
                                    "WHERE state = 'streaming'")
    for line in rows.splitlines():
        name, lsn, lag_ms = line.split("|")
        out[name] = (hostcmd.lsn_int(lsn) if lsn else None, float(lag_ms))
    return out


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    info = hostcmd.pgbackrest_info([e["repo"] for e in cfg["embassies"] if e.get("repo")])
    archive = hostcmd.repo_archive(info)
    streaming = standbys()
    state = load_json(Path(cfg["state_dir"]) / "state.json", {"round": 0, "embassies": {}})
    last = load_json(Path(cfg["state_dir"]) / "last-round.json", {"embassies": []})
    last_errors = {e["name"]: list(e.get("errors", [])) for e in last.get("embassies", [])}
    statuses = hostcmd.repo_status(info)
    for e in cfg["embassies"]:  # a vault that cannot be read now alerts at once, not only at the next round
        code, message = statuses.get(e.get("repo") or 0, (0, ""))
        if code not in (0, 2):
            last_errors.setdefault(e["name"], []).append(f"repo{e['repo']}: {message or code}")
    bounds = {r["name"]: r["rpo_bound"] for r in cfg["registers"]}
    embassies = []
    now = now_utc()  # after the slow reads: a beat is never younger than now
    for e in cfg["embassies"]:
        name = e["name"]
        repo_max = archive.get(e["repo"], {}).get("max") if e.get("repo") else None
        vault_lsn = hostcmd.segment_end_lsn(repo_max) if repo_max else None
        flush_lsn, flush_ms = streaming.get(name, (None, None))
        warm = e["mode"] == "warm"
        registers = []
        for reg in cfg["registers"]:
            if reg["kind"] == "postgres" and reg["name"] in e["postgres"]:
                # A warm embassy restores from the WAL it received (or its vault, if that is newer).
                lsn = max(x for x in (vault_lsn, flush_lsn if warm else None, -1) if x is not None)
                beat = newest_beat_at(lsn if lsn >= 0 else None)
                shipped = repo_max if not warm or flush_lsn is None else hostcmd.lsn_text(flush_lsn)
            elif reg["kind"] == "files" and reg["name"] in e["files"]:
                snap = state["embassies"].get(name, {}).get("files", {}).get(reg["name"])
                beat = _parse_ts(snap["time"]) if snap else None
                shipped = snap["snapshot_id"] if snap else None
            else:
                continue
            lag = max(0.0, round((now - beat).total_seconds(), 3)) if beat else None
            bound = bounds[reg["name"]][name]
            registers.append({"name": reg["name"], "kind": reg["kind"], "lag_seconds": lag, "last_shipped": shipped,
                              "rpo_bound_seconds": bound, "alert": lag is None or lag > bound})
        entry: dict[str, Any] = {"name": name, "mode": e["mode"], "registers": registers,
                                 "vault_errors": last_errors.get(name, []),
                                 "alert": any(r["alert"] for r in registers) or bool(last_errors.get(name))}
        if warm:
            entry["flush_lag_ms"] = flush_ms
            entry["streaming"] = flush_lsn is not None
        embassies.append(entry)
    return {"time": iso(now), "round": state.get("round", 0), "embassies": embassies}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m replication.lag")
    parser.add_argument("--config", default=CONFIG)
    args = parser.parse_args(argv)
    print(json.dumps(measure(json.loads(Path(args.config).read_text())), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
