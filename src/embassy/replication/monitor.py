"""Prometheus metrics of replication on home (Debian's python3-prometheus-client).

    python3 -m replication.monitor --bind ADDR --port 9750 [--every 5]

Gauges per embassy and register: lag, its RPO bound, the alert state; per warm embassy the replay lag;
per embassy the last manifest's round and whether its vault took the last round's writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import lag
from .round import CONFIG


def main(argv: list[str]) -> int:
    from prometheus_client import Gauge, start_http_server

    parser = argparse.ArgumentParser(prog="python3 -m replication.monitor")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=9750)
    parser.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args(argv)
    lag_g = Gauge("embassy_replication_lag_seconds", "age of the newest heartbeat the embassy could restore now",
                  ["embassy", "register"])
    bound_g = Gauge("embassy_replication_rpo_bound_seconds", "the register's RPO objective at that embassy",
                    ["embassy", "register"])
    flush_g = Gauge("embassy_replication_flush_lag_milliseconds",
                    "warm embassy: lag of the WAL flushed to its disk (its standby's replay is held at a signed point)",
                    ["embassy"])
    alert_g = Gauge("embassy_replication_alert", "1 when a register's lag exceeds its RPO or the vault refused writes",
                    ["embassy"])
    vault_g = Gauge("embassy_replication_vault_ok", "1 when the last round wrote to the embassy's vault", ["embassy"])
    round_g = Gauge("embassy_replication_round", "the round of the newest manifest", [])
    start_http_server(args.port, addr=args.bind)
    while True:
        try:
            m = lag.measure(json.loads(Path(args.config).read_text()))
        except Exception as exc:
            print(f"monitor: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            round_g.set(m["round"])
            for e in m["embassies"]:
                alert_g.labels(e["name"]).set(1 if e["alert"] else 0)
                vault_g.labels(e["name"]).set(0 if e["vault_errors"] else 1)
                if e.get("flush_lag_ms") is not None:
                    flush_g.labels(e["name"]).set(e["flush_lag_ms"])
                for r in e["registers"]:
                    lag_g.labels(e["name"], r["name"]).set(r["lag_seconds"] if r["lag_seconds"] is not None
                                                           else float("inf"))
                    bound_g.labels(e["name"], r["name"]).set(r["rpo_bound_seconds"])
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
