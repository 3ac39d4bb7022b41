"""Home's CPU split by class (tests/bench/homecpu.py) without a lab: on a cgroup tree and /proc snapshots it
makes, and on the test's own process. The adversary: a split that loses the time of processes that ended
during the run (every pgbench backend does) or counts a cgroup twice, and so makes replication look cheap."""

from __future__ import annotations

import os
from pathlib import Path

from tests.bench import homecpu

T = homecpu.TICK


def _cg(folder: Path, usec: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.stat").write_text(f"usage_usec {usec}\nuser_usec 1\nsystem_usec 1\n")


def test_cgroup_classes_count_each_folder_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _cg(home, 10_000_000)
    pg = home / "system.slice" / "system-postgresql.slice" / "postgresql@15-main.service"
    _cg(home / "system.slice", 8_000_000)
    _cg(home / "system.slice" / "system-postgresql.slice", 6_000_000)
    _cg(pg, 6_000_000)
    _cg(pg / "child", 1_000_000)  # inside the service: already in its usage
    _cg(home / "system.slice" / "embassy-heartbeat.service", 500_000)
    _cg(home / "user.slice", 1_500_000)
    snap = homecpu.cgroup_snapshot(home)
    assert snap == {"total": 10.0, "cg_postgresql": 6.0, "cg_heartbeat": 0.5, "cg_ssh_sessions_pgbench": 1.5}


def test_processes_that_ended_are_counted_through_their_parent() -> None:
    before = {1: ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", 7, 10, 100),
              2: ("postgres: 15/main: walsender replicator 10.0.0.2(1) streaming 0/1", 8, 50, 0),
              3: ("postgres: 15/main: archiver last was 00000001000000000000000A", 7, 5, 40),
              4: ("postgres: 15/main: postgres postgres [local] idle", 9, 3, 0),
              6: ("postgres: 15/main: postgres bench [local] idle", 9, 3 * T, 0)}
    after = {1: (before[1][0], 7, 12, 100 + 3 * T),  # the backends that ended: 3 s
             2: (before[2][0].replace("0/1", "0/9"), 8, 50 + T, 0),  # its title changed: the same process
             3: (before[3][0], 7, 5, 40 + T // 2),  # archive_command runs reaped: 0.5 s
             5: ("pgbackrest --stanza=home archive-push:async", 20, 2 * T, 0),  # new: all of it counts
             6: ("postgres: 15/main: postgres bench [local] idle", 30, T, 0)}  # PID reused: all of the new one
    out = homecpu.split(before, after)
    assert out["backends_ended"] == 3.0
    assert out["archive_push_sync"] == 0.5
    assert out["pgbackrest_live"] == 2.0
    assert out["walsender"] == 1.0
    assert out["backends_live"] == 1.0
    assert out["postmaster"] == 2 / T


def test_the_service_remainder_is_pgbackrest_async_and_the_rest_is_other() -> None:
    cg0 = {"total": 0.0, "cg_postgresql": 0.0, "cg_heartbeat": 0.0}
    cg1 = {"total": 10.0, "cg_postgresql": 7.0, "cg_heartbeat": 0.2}
    pr1 = {1: ("/usr/lib/postgresql/15/bin/postgres -D x", 1, 0, 5 * T)}
    out = homecpu.costs(cg0, cg1, {1: (pr1[1][0], 1, 0, 0)}, pr1)
    assert out["backends_ended"] == 5.0 and out["pgbackrest_async"] == 2.0
    assert out["cg_heartbeat"] == 0.2 and out["total"] == 10.0
    assert abs(out["other"] - 2.8) < 1e-9


def test_own_process_reads() -> None:
    cmdline, _, own, _ = homecpu.proc_times(os.getpid()) or ("", 0, 0, 0)
    assert "python" in cmdline or "pytest" in cmdline
    assert own >= 0 and homecpu.proc_times(2**22 + 1) is None
