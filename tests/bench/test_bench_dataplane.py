"""What replication costs home, and how far behind each embassy is, under pgbench load on the real lab.

One test, three arms alternated in the same run (rotating order, the same number of runs each):
- `off`: archiving and streaming off: `archive_command = ''` (PostgreSQL keeps the WAL and pushes it
  once it is set again: never /bin/true, which would drop it and leave a hole in every vault) and the
  warm standbys stopped;
- `archiving`: archiving to every vault on, standbys stopped;
- `full`: as deployed: archiving to every vault and the warm embassies' WAL receivers streaming. Lag is
  sampled here: every 0.2 s for each warm embassy, the flush lag home's walsender measures for its
  pg_receivewal (the standby's replay is held at a signed point since issue 22: replay is no lag),
  every ~0.5 s on the cold enclave (the newest WAL segment its own vault holds, mapped after the run to
  the newest heartbeat it makes restorable, as replication.lag does).

For the whole test, home's container has one core and everything else (the other containers, the
SeaweedFS vaults, the lab's mirror and syslog, this process and its ssh clients) the other, with cgroup
v1 cpusets (embassy.lab.cpuset); undone at the end. Afterwards archiving and streaming are restored,
the WAL held back is pushed, and every repo's archive is checked to have no hole.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from embassy.lab import cpuset
from embassy.lab import hosts as hostlib
from embassy.lab.state import LabState, cgroup_name
from embassy.lab.system import alive
from embassy.replication import pgmajor
from embassy.replication.hostcmd import lsn_int, segment_end_lsn
from tests.bench.conftest import figure, record
from tests.lab.conftest import EMBASSY, ROOT, STACK, ssh

pytestmark = pytest.mark.lab

CLIENTS, THREADS, SCALE = 4, 2, 10
# A shorter trial of the whole procedure: EMBASSY_BENCH_ROUNDS=1 EMBASSY_BENCH_SECONDS=10.
ROUNDS = int(os.environ.get("EMBASSY_BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("EMBASSY_BENCH_SECONDS", "20"))
ARMS = ("off", "archiving", "full")
HOME_CPUS, OTHER_CPUS = "1", "0"
PGBENCH = f"$(ls -d {pgmajor.LIB}/*/bin)/pgbench"  # the host's one PostgreSQL major (15 on bookworm, 17 on trixie)
RECEIVER_UNIT = "embassy-wal-receiver"  # embassy.replication.standby
AS_PG = "sudo runuser -u postgres --"
PAUSED_TIMERS = ("embassy-replication-round.timer", "embassy-pgbackrest-full.timer", "embassy-pgbackrest-diff.timer")
WARM_TARGET_S = 0.25


def sh(lab: LabState, host: str, script: str, timeout: float = 180) -> str:
    """A shell script run as postgres on a lab host; its stdout."""
    return ssh(lab, host, f"{AS_PG} sh -c {shlex.quote(script)}", timeout=timeout).stdout


def home_sql(sql: str, db: str = "postgres") -> str:
    return f"psql -X -Atq -v ON_ERROR_STOP=1 -d {db} -c {shlex.quote(sql)}"


def q(lab: LabState, sql: str, db: str = "postgres") -> str:
    return sh(lab, "home", home_sql(sql, db)).strip()


def wait_for(what: str, check: Any, timeout: float = 120, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------------------- the arms' switches


def set_archiving(lab: LabState, on: bool) -> None:
    # ALTER SYSTEM overrides the deployed conf.d file; RESET goes back to it (nothing left behind).
    sql = "ALTER SYSTEM RESET archive_command" if on else "ALTER SYSTEM SET archive_command = ''"
    q(lab, sql)
    q(lab, "SELECT pg_reload_conf()")
    wait_for("archive_command reloaded", lambda: (q(lab, "SHOW archive_command") != "") is on, timeout=30, every=0.2)
    if on:
        wait_for("the WAL held back to be archived", lambda: pending_segments(lab) == 0, timeout=300)


def pending_segments(lab: LabState) -> int:
    return int(q(lab, "SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'"))


def set_streaming(lab: LabState, warm: list[str], on: bool) -> None:
    for host in warm:
        ssh(lab, host, f"sudo systemctl {'start' if on else 'stop'} {RECEIVER_UNIT}")
    if on:
        # Caught up: every receiver streaming and flushed to within 1 MB of home's WAL.
        sql = ("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND "
               "pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn) < 1048576")
        wait_for("the standbys to stream and catch up", lambda: int(q(lab, sql)) == len(warm), timeout=300)
    else:
        wait_for("the standbys to disconnect", lambda: q(lab, "SELECT count(*) FROM pg_stat_replication") == "0",
                 timeout=60)


# --------------------------------------------------------------------------- load and samplers


def pgbench(lab: LabState) -> tuple[float, int]:
    out = sh(lab, "home", f"{PGBENCH} -c {CLIENTS} -j {THREADS} -T {SECONDS} bench 2>&1", timeout=SECONDS + 120)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    assert processed and tps and int(processed.group(1)) > 0, out[-2000:]
    assert failed is None or int(failed.group(1)) == 0, out[-2000:]
    return float(tps.group(1)), int(processed.group(1))


def home_process_cpu_seconds(lab: LabState, marker: str) -> float:
    """CPU time used so far by home's live processes whose command line holds marker (e.g. walsender)."""
    total = 0
    for pid in hostlib.cgroup_pids(cgroup_name(lab.lab_id), "home"):
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_text():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def home_cpu_seconds(lab: LabState) -> float:
    """CPU time used so far by every process of home's container (its cgroup v2 folder's cpu.stat)."""
    for folder in hostlib.cgroup_dirs(cgroup_name(lab.lab_id), "home"):
        stat = folder / "cpu.stat"
        if stat.is_file():
            return int(stat.read_text().split("usage_usec", 1)[1].split()[0]) / 1e6
    raise AssertionError("home's container has no cpu.stat (cgroup v2 folder)")


def start_warm_sampler(lab: LabState, host: str) -> subprocess.Popen[str]:
    # On home (the only side that measures it): the flush lag of this embassy's receiver, every 0.2 s.
    embassy = next(h.embassy for h in lab.hosts if h.name == host)
    sql = ("SELECT extract(epoch FROM clock_timestamp()), coalesce(extract(epoch FROM flush_lag), 0) "
           f"FROM pg_stat_replication WHERE application_name = '{embassy}';")
    script = f"printf '%s\\n' {shlex.quote(sql)} '\\watch 0.2' | timeout {SECONDS + 8} psql -X -Atq -F ' ' -d postgres"
    return subprocess.Popen(lab.ssh_argv("home", f"{AS_PG} sh -c {shlex.quote(script)}"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start_cold_sampler(lab: LabState, host: str) -> subprocess.Popen[str]:
    # On the cold enclave: the newest segment in its own vault, read with its own pgBackRest (its one repo).
    script = (f"end=$(($(date +%s) + {SECONDS + 8})); while [ $(date +%s) -lt $end ]; do "
              "echo \"$(date +%s.%N) $(pgbackrest --stanza=home --output=json info)\"; sleep 0.5; done")
    return subprocess.Popen(lab.ssh_argv(host, f"{AS_PG} sh -c {shlex.quote(script)}"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 124), err[-1000:]  # 124: `timeout` ended psql's \watch
    return out


def warm_lags(out: str, start: float, end: float) -> list[float]:
    lags = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and start <= float(parts[0]) <= end:
            lags.append(max(0.0, float(parts[1])))
    return lags


def cold_samples(out: str, start: float, end: float) -> list[tuple[float, str]]:
    found = []
    for line in out.splitlines():
        t, _, doc = line.partition(" ")
        if not doc.startswith("[") or not start <= float(t) <= end:
            continue
        maxes = [a["max"] for a in json.loads(doc)[0].get("archive", []) if a.get("max")]
        if maxes:
            found.append((float(t), max(maxes)))
    return found


def cold_lags(lab: LabState, samples: list[tuple[float, str]]) -> list[float]:
    """Each sample's lag: its time minus the newest heartbeat at or before the end of the segment the vault held."""
    since = min(t for t, _ in samples) - 600
    rows = q(lab, f"SELECT extract(epoch FROM ts), lsn FROM heartbeat_lsn WHERE ts > to_timestamp({since}) ORDER BY ts",
             db="embassy_monitor")
    beats = [(float(ts), lsn_int(lsn)) for ts, lsn in (r.split("|") for r in rows.splitlines())]
    lags = []
    for t, segment in samples:
        end = segment_end_lsn(segment)
        restorable = [ts for ts, lsn in beats if lsn <= end]
        assert restorable, f"no heartbeat in the 600 s before {t} is covered by segment {segment}"
        lags.append(max(0.0, t - max(restorable)))
    return lags


# --------------------------------------------------------------------------- setup, pinning, restore


@dataclass
class Run:
    tps: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ARMS})
    cpu_ms: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ARMS})  # home CPU ms a transaction
    core_share: list[float] = field(default_factory=list)  # of home's core's time, what home's container got
    walsender_ms: list[float] = field(default_factory=list)  # home's walsenders' CPU ms a transaction (full arm)
    warm: dict[str, list[list[float]]] = field(default_factory=dict)  # per embassy, per full run
    cold: dict[str, list[list[float]]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def deployed(lab: LabState) -> LabState:
    if ssh(lab, "home", "test -f /etc/embassy/replication.json", check=False).returncode != 0:
        env = {**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}
        done = subprocess.run([EMBASSY, "deploy", "--target", "lab", "--stack", STACK, "--json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-4000:]
    sh(lab, "home", f"dropdb --if-exists bench && createdb bench && {PGBENCH} -i -q -s {SCALE} bench 2>&1", timeout=600)
    return lab


def lab_pids(lab: LabState, home: bool) -> set[int]:
    group = cgroup_name(lab.lab_id)
    if home:
        return hostlib.cgroup_pids(group, "home")
    pids = {os.getpid()}  # this process and the ssh clients it starts
    for h in lab.hosts:
        if h.name != "home":
            pids |= hostlib.cgroup_pids(group, h.name)
    for p in [lab.mirror, lab.syslog, *(v.weed for v in lab.vaults)]:
        if p is not None and alive(p):
            pids.add(p.pid)
    return pids


@pytest.fixture
def pinned(deployed: LabState) -> Iterator[dict[str, Path]]:
    lab = deployed
    top = cpuset.CPUSET_ROOT / f"{cgroup_name(lab.lab_id)}-bench"
    with cpuset.pinned(top, {"home": (HOME_CPUS, lambda: lab_pids(lab, True)),
                             "rest": (OTHER_CPUS, lambda: lab_pids(lab, False))}) as folders:
        yield folders
    assert not top.exists() and len(os.sched_getaffinity(0)) == os.cpu_count()  # the pinning is undone


@pytest.fixture
def timers_paused(deployed: LabState) -> Iterator[None]:
    """Replication rounds and base backups paused: batch work at their own times, not the per-commit cost."""
    lab = deployed
    ssh(lab, "home", f"sudo systemctl stop {' '.join(PAUSED_TIMERS)}")
    ssh(lab, "home", "sudo sh -c 'while systemctl is-active -q embassy-replication-round.service; do sleep 1; done'")
    try:
        yield
    finally:
        ssh(lab, "home", f"sudo systemctl start {' '.join(PAUSED_TIMERS)}")


def archive_segments(lab: LabState, repo: int) -> list[str]:
    out = sh(lab, "home", f"pgbackrest --stanza=home --repo={repo} --output=json --recurse repo-ls archive/home")
    names = {Path(k).name[:24] for k, v in json.loads(out).items() if v.get("type") == "file" and
             re.fullmatch(r"[0-9A-F]{24}-[0-9a-f]{40}(\.\w+)?", Path(k).name)}
    return sorted(names)


def assert_no_hole(lab: LabState, repos: list[int]) -> str:
    """Every repo holds every segment from its first to home's current one: the arms left no hole."""
    current = q(lab, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    q(lab, "SELECT pg_switch_wal()")
    wait_for("the switched segment to be archived", lambda: pending_segments(lab) == 0, timeout=120)
    for repo in repos:
        names = archive_segments(lab, repo)
        numbers = [(int(n[8:16], 16) << 8) + int(n[16:24], 16) for n in names]  # 256 segments a log file (16 MB)
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        assert not missing, f"repo{repo}: {len(missing)} segments missing, first {missing[0]:X}"
        assert names[-1][8:] >= current[8:], f"repo{repo}: archive ends at {names[-1]}, home was at {current}"
    return current


# --------------------------------------------------------------------------- the benchmark


def test_replication_cost_and_lag_under_pgbench(deployed: LabState, timers_paused: None,
                                               pinned: dict[str, Path]) -> None:
    lab = deployed
    warm = [h.name for h in lab.hosts if h.mode == "warm"]
    cold = [h.name for h in lab.hosts if h.mode == "cold"]
    assert warm and cold, [h.mode for h in lab.hosts]
    assert os.sched_getaffinity(0) == {int(OTHER_CPUS)}
    cfg = json.loads(ssh(lab, "home", "sudo cat /etc/embassy/replication.json").stdout)
    repos = [e["repo"] for e in cfg["embassies"] if e.get("repo")]
    run = Run(warm={h: [] for h in warm}, cold={h: [] for h in cold})
    state = {"archiving": True, "streaming": True}
    try:
        for r in range(ROUNDS):
            for arm in ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]:
                want = {"archiving": arm != "off", "streaming": arm == "full"}
                # Archiving first: the backlog is pushed before the standbys add their load.
                if want["archiving"] != state["archiving"]:
                    set_archiving(lab, want["archiving"])
                if want["streaming"] != state["streaming"]:
                    set_streaming(lab, warm, want["streaming"])
                state = want
                samplers = {}
                if arm == "full":
                    samplers = {h: start_warm_sampler(lab, h) for h in warm}
                    samplers |= {h: start_cold_sampler(lab, h) for h in cold}
                    time.sleep(1.0)  # the samplers' ssh sessions are up before the load starts
                q(lab, "CHECKPOINT")  # every run starts from the same state of shared buffers
                started, cpu_before = time.time(), home_cpu_seconds(lab)
                senders_before = home_process_cpu_seconds(lab, "walsender")
                tps, transactions = pgbench(lab)
                ended, cpu_used = time.time(), home_cpu_seconds(lab) - cpu_before
                if arm == "full":
                    run.walsender_ms.append(1000 * (home_process_cpu_seconds(lab, "walsender") - senders_before)
                                            / transactions)
                run.tps[arm].append(tps)
                run.cpu_ms[arm].append(1000 * cpu_used / transactions)
                run.core_share.append(cpu_used / (ended - started))
                window = (started + 2.0, ended - 0.5)  # pgbench's ssh and connection set-up excluded
                for h in warm if samplers else []:
                    lags = warm_lags(collect(samplers[h]), *window)
                    assert len(lags) >= SECONDS, f"{h}: only {len(lags)} lag samples"
                    run.warm[h].append(lags)
                for h in cold if samplers else []:
                    samples = cold_samples(collect(samplers[h]), *window)
                    assert len(samples) >= 5, f"{h}: only {len(samples)} vault samples"
                    run.cold[h].append(cold_lags(lab, samples))
                print(f"round {r + 1} {arm}: {tps:.1f} tps, home {run.cpu_ms[arm][-1]:.3f} CPU ms a transaction, "
                      f"{run.core_share[-1]:.0%} of its core")
    finally:
        if not state["archiving"]:
            set_archiving(lab, True)
        if not state["streaming"]:
            set_streaming(lab, warm, True)
    assert q(lab, "SHOW archive_command").startswith("pgbackrest")
    assert_no_hole(lab, repos)
    report(lab, cfg, run, cold)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def pooled(per_host: dict[str, list[list[float]]]) -> list[list[float]]:
    """Per run, the samples of every host of that run together."""
    return [[x for samples in runs for x in samples] for runs in zip(*per_host.values(), strict=True)]


def report(lab: LabState, cfg: dict[str, Any], run: Run, cold: list[str]) -> None:
    off = run.tps["off"]
    pin = (f"home's container pinned to CPU {HOME_CPUS}, everything else of the lab (standbys, cold enclave, "
           f"SeaweedFS vaults, mirror, syslog, the benchmark's ssh clients) to CPU {OTHER_CPUS} with cgroup v1 "
           f"cpusets, in every arm; the machine's {os.cpu_count()} cores, load average {os.getloadavg()[1]:.1f} "
           "over the last 5 minutes of the runs")
    load = (f"pgbench -c {CLIENTS} -j {THREADS} -T {SECONDS}, scale {SCALE}, read-write, on home's cluster; "
            f"{ROUNDS} rounds of the 3 arms alternated (rotating order); replication rounds and base-backup timers "
            "paused during the runs")
    base = {"name": "pgbench, archiving (archive_command '') and streaming (standbys stopped) off",
            "value": round(statistics.median(off), 1), "unit": "tps"}
    full = [f / o for f, o in zip(run.tps["full"], off, strict=True)]
    arch = [a / o for a, o in zip(run.tps["archiving"], off, strict=True)]
    tps = ", ".join(f"{a} {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for a, v in run.tps.items())
    cpu = {a: statistics.median(v) for a, v in run.cpu_ms.items()}
    share = f"{min(run.core_share):.0%}-{max(run.core_share):.0%}"
    where = (f"Limited by CPU on home's one core (asynchronous replication: nothing waits): home's container spends "
             f"{cpu['off']:.3f} CPU ms a transaction with nothing replicated, {cpu['archiving']:.3f} archiving, "
             f"{cpu['full']:.3f} archiving and streaming (off/full = {cpu['off'] / cpu['full']:.2f}), of which "
             f"{statistics.median(run.walsender_ms):.3f} ms in home's walsenders (each commit wakes each of them); "
             "the rest is more work in the backends and the kernel (on the lab's veth network the receiving side's "
             "packet processing also runs on the sending core) and pgBackRest's archive-push (compression and "
             "encryption for every repo). Home got "
             f"{share} of its core (other work on the machine took the rest). What would close it: a home with a "
             "second core (on AWS, the instance size) for walsenders and archive-push beside the backends, or one "
             "relay near home streaming to the standbys instead of one walsender each")
    record(figure("tps_ratio", full, "x", target=0.95, baseline=base,
                  note=f"archiving to {len(cfg['embassies'])} vaults + warm standbys streaming; ratio per round to "
                       f"the off arm of that round; TPS median (min-max): {tps}. {where}. {load}. {pin}."))
    record(figure("tps_ratio_archiving_only", arch, "x", target=0.95, baseline=base,
                  note=f"archiving to every vault, standbys stopped. Home CPU ms a transaction: {cpu['archiving']:.3f} "
                       f"against {cpu['off']:.3f} off (pgBackRest archive-push on the same core). {load}. {pin}."))
    warm_runs = pooled(run.warm)  # all warm embassies of a run
    how = ("flush lag of each warm embassy's WAL receiver (pg_stat_replication.flush_lag on home), every 0.2 s "
           "while pgbench runs in the full arm; "
           f"per-run percentile over the warm embassies (~{statistics.median(len(v) for v in warm_runs):.0f} samples "
           "a run), median of the runs")
    record_lag("warm", warm_runs, WARM_TARGET_S, p99_note=f"{how}; {pin}.", median_note=f"{how}.")
    by_name = {h.name: h.embassy for h in lab.hosts}
    bounds = [r["rpo_bound"][by_name[h]] for h in cold for r in cfg["registers"]
              if r["kind"] == "postgres" and by_name[h] in r["rpo_bound"]]
    cold_runs = pooled(run.cold)
    how = ("time since the newest heartbeat (1 a second) restorable from the newest WAL segment in the cold "
           "embassy's own vault, read with its pgBackRest every ~0.5 s while pgbench runs in the full arm; "
           f"includes up to 1 s of heartbeat granularity; ~{statistics.median(len(v) for v in cold_runs):.0f} samples "
           "a run")
    record_lag("cold", cold_runs, float(min(bounds)), median_note=f"{how}.",
               p99_note=f"{how}, so the p99 is close to a run's maximum; target: the cold embassy's RPO bound; {pin}.")


def record_lag(kind: str, runs: list[list[float]], target: float, *, p99_note: str, median_note: str) -> None:
    record(figure(f"lag_{kind}_p99_s", [p99(v) for v in runs], "s", target=target, direction="<=", note=p99_note))
    record(figure(f"lag_{kind}_median_s", [statistics.median(v) for v in runs], "s", target=target, direction="<=",
                  note=median_note))
