"""Where home's CPU goes: its container's CPU time split by process class, read from the machine's side.

Two sources, both counters that only grow, so a run's cost is the difference of two snapshots:
- cgroup v2 `cpu.stat` usage_usec of home's container and of the folders its systemd made inside it
  (the PostgreSQL service, the heartbeat, the lag monitor, the ssh sessions that run pgbench). A parent
  keeps the time of children that were removed, so nothing that exited is lost there;
- /proc/<pid>/stat of the PostgreSQL service's processes, classed by their command line: utime+stime of
  the live ones, and cutime+cstime (time of reaped children) of the postmaster (the backends that ended
  with pgbench) and of the archiver (the archive_command runs it waited for). What the service used that
  none of these holds is the pgBackRest async archive-push (a daemon no postgres process reaps).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")

# cgroup folders inside home's container, by the class they count for (the first match wins).
CGROUP_CLASSES = (("postgresql", "postgresql@"), ("heartbeat", "embassy-heartbeat.service"),
                  ("lag_monitor", "embassy-replication-monitor.service"), ("ssh_sessions_pgbench", "user.slice"))
# PostgreSQL's own processes (titles "postgres: 15/main: walsender ..."), by class.
PG_AUX = ("checkpointer", "background writer", "walwriter", "autovacuum", "logical replication", "stats collector",
          "archiver", "walsender", "startup", "walreceiver", "io worker", "walsummarizer")


def usage_seconds(folder: Path) -> float:
    text = (folder / "cpu.stat").read_text()
    return int(text.split("usage_usec", 1)[1].split()[0]) / 1e6


def cgroup_snapshot(home: Path) -> dict[str, float]:
    """CPU seconds so far of home's whole container ("total") and of each class's cgroup folders."""
    out = {"total": usage_seconds(home)}
    for folder, dirs, files in os.walk(home):
        if "cpu.stat" not in files or Path(folder) == home:
            continue
        name = Path(folder).name
        for cls, match in CGROUP_CLASSES:
            if name.startswith(match):
                out[f"cg_{cls}"] = out.get(f"cg_{cls}", 0.0) + usage_seconds(Path(folder))
                dirs.clear()  # its children are counted in it
                break
    return out


def pg_class(cmdline: str) -> str | None:
    """The class of one PostgreSQL process, by its command line; None: not a postgres process."""
    if "pgbackrest" in cmdline:
        return "pgbackrest_live"
    if cmdline.startswith("postgres: "):
        for aux in PG_AUX:
            if aux in cmdline:
                return aux.replace(" ", "_")
        return "backends_live"
    if "/bin/postgres" in cmdline:
        return "postmaster"
    return None


Proc = tuple[str, int, int, int]  # command line, start time, own ticks, reaped children's ticks


def proc_times(pid: int) -> Proc | None:
    """(command line, start time, own ticks, reaped children's ticks) of a process, None if it is gone.
    The start time tells a PID reused meanwhile from the same process (a walsender's title changes)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return cmdline, int(fields[19]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def process_snapshot(pids: Iterable[int]) -> dict[int, Proc]:
    return {pid: t for pid in pids if (t := proc_times(pid)) is not None}


def split(before: dict[int, Proc], after: dict[int, Proc]) -> dict[str, float]:
    """CPU seconds per PostgreSQL class between two process snapshots. A process that exited between them is
    counted through its parent's reaped-children time (backends: the postmaster's, archive-push: the archiver's)."""
    out: dict[str, float] = {}
    for pid, (cmdline, start, own, reaped) in after.items():
        cls = pg_class(cmdline)
        if cls is None:
            continue
        own0, reaped0 = before[pid][2:] if pid in before and before[pid][1] == start else (0, 0)
        out[cls] = out.get(cls, 0.0) + (own - own0) / TICK
        child = {"postmaster": "backends_ended", "archiver": "archive_push_sync"}.get(cls)
        if child:
            out[child] = out.get(child, 0.0) + (reaped - reaped0) / TICK
    return out


def costs(cg0: dict[str, float], cg1: dict[str, float], pr0: dict[int, Proc],
          pr1: dict[int, Proc]) -> dict[str, float]:
    """CPU seconds of a run by class: the cgroup classes, the PostgreSQL service split by process class (its
    remainder: pgBackRest's async archive-push), and home's other processes (sshd, systemd, journald...)."""
    cg = {k: cg1.get(k, 0.0) - cg0.get(k, 0.0) for k in cg1}
    pg = split(pr0, pr1)
    out = {k: v for k, v in cg.items() if k != "cg_postgresql"}
    out.update(pg)
    out["pgbackrest_async"] = max(0.0, cg.get("cg_postgresql", 0.0) - sum(pg.values()))
    named = sum(v for k, v in cg.items() if k not in ("total",))
    out["other"] = max(0.0, cg["total"] - named)
    return out
