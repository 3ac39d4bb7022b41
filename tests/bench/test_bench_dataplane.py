"""What replication costs home, and how far behind each embassy is, under pgbench load on the real lab.

One test, five arms alternated in the same run (rotating order, the same number of runs each):
- `off`: archiving and streaming off: `archive_command = ''` (PostgreSQL keeps the WAL and pushes it
  once it is set again: never /bin/true, which would drop it and leave a hole in every vault) and the
  warm standbys stopped;
- `archiving`: archiving to every vault on, standbys stopped;
- `full`: as deployed: archiving to every vault and the warm embassies' WAL receivers streaming. Lag is
  sampled here: every 0.2 s for each warm embassy, the flush lag home's walsender measures for its
  pg_receivewal (the standby's replay is held at a signed point since issue 22: replay is no lag),
  every ~0.5 s on the cold enclave (the newest WAL segment its own vault holds, mapped after the run to
  the newest heartbeat it makes restorable, as replication.lag does);
- `off2`, `full2`: as `off` and `full` with home's container on both cores (what a second core gives).
EMBASSY_BENCH_VARIANTS adds arms that change one setting (VARIANTS: wal_compression, the archive's
compression, archive-push's processes) to tell what each saves.

In each run home's CPU is read as well as its tps: its container's CPU time (cgroup cpu.stat) per
committed transaction, split by process class (tests/bench/homecpu.py). Load from other work on the
machine changes a run's wall time much more than the CPU a transaction costs.

For the whole test, home's container has one core (two in the *2 arms) and everything else (the other
containers, the SeaweedFS vaults, the lab's mirror and syslog, this process and its ssh clients) the other,
with cgroup v1 cpusets (embassy.lab.cpuset); undone at the end. Afterwards archiving and streaming are
restored, the WAL held back is pushed, and every repo's archive is checked to have no hole.
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
from tests.bench import homecpu
from tests.bench.conftest import figure, record
from tests.lab.conftest import EMBASSY, ROOT, STACK, ssh

pytestmark = pytest.mark.lab

CLIENTS, THREADS, SCALE = 4, 2, 10
# A shorter trial of the whole procedure: EMBASSY_BENCH_ROUNDS=1 EMBASSY_BENCH_SECONDS=10.
ROUNDS = int(os.environ.get("EMBASSY_BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("EMBASSY_BENCH_SECONDS", "20"))
HOME_CPUS, OTHER_CPUS, BOTH_CPUS = "1", "0", "0-1"


@dataclass(frozen=True)
class Arm:
    """One arm: what replicates, home's CPUs, and settings changed for it only (undone after it)."""
    archiving: bool
    streaming: bool
    cpus: str = HOME_CPUS
    pg: tuple[tuple[str, str], ...] = ()  # ALTER SYSTEM on home's cluster
    pgbackrest: tuple[tuple[str, str], ...] = ()  # options of home's archive-push ([global:archive-push])


# The deployed settings in every arm; `off2`/`full2`: home's container on both cores (the rest on one).
ARMS: dict[str, Arm] = {"off": Arm(False, False), "archiving": Arm(True, False), "full": Arm(True, True),
                        "off2": Arm(False, False, BOTH_CPUS), "full2": Arm(True, True, BOTH_CPUS)}
# Settings tried against the deployed ones (EMBASSY_BENCH_VARIANTS=name,name: extra arms, full replication,
# home on one core): what each knob of issue 26 saves home a transaction.
VARIANTS: dict[str, Arm] = {
    "walc_off": Arm(True, True, pg=(("wal_compression", "off"),)),
    "walc_lz4": Arm(True, True, pg=(("wal_compression", "lz4"),)),
    "walc_zstd": Arm(True, True, pg=(("wal_compression", "zstd"),)),
    "arch_lz4": Arm(True, True, pgbackrest=(("compress-type", "lz4"),)),
    "arch_zst1": Arm(True, True, pgbackrest=(("compress-type", "zst"), ("compress-level", "1"))),
    "arch_zst3": Arm(True, True, pgbackrest=(("compress-type", "zst"), ("compress-level", "3"))),
    "arch_pmax1": Arm(True, True, pgbackrest=(("process-max", "1"),)),
    "arch_pmax2": Arm(True, True, pgbackrest=(("process-max", "2"),)),
    "arch_sync": Arm(True, True, pgbackrest=(("archive-async", "n"),)),
    "archonly_walc_lz4": Arm(True, False, pg=(("wal_compression", "lz4"),)),
    "archonly_walc_off": Arm(True, False, pg=(("wal_compression", "off"),)),
    "archonly_arch_lz4": Arm(True, False, pgbackrest=(("compress-type", "lz4"),)),
    "archonly_arch_zst1": Arm(True, False, pgbackrest=(("compress-type", "zst"), ("compress-level", "1"))),
}
for _name in filter(None, os.environ.get("EMBASSY_BENCH_VARIANTS", "").split(",")):
    ARMS[_name] = VARIANTS[_name]
PGBENCH = f"$(ls -d {pgmajor.LIB}/*/bin)/pgbench"  # the host's one PostgreSQL major (15 on bookworm, 17 on trixie)
RECEIVER_UNIT = "embassy-wal-receiver"  # embassy.replication.standby
AS_PG = "sudo runuser -u postgres --"
PAUSED_TIMERS = ("embassy-replication-round.timer", "embassy-pgbackrest-full.timer", "embassy-pgbackrest-diff.timer")
WARM_TARGET_S = 0.25
BENCH_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench'"


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


def set_pg(lab: LabState, settings: tuple[tuple[str, str], ...], on: bool) -> None:
    """ALTER SYSTEM for one arm (on), RESET afterwards (back to the deployed conf.d files)."""
    for name, value in settings:
        q(lab, f"ALTER SYSTEM SET {name} = '{value}'" if on else f"ALTER SYSTEM RESET {name}")
    if settings:
        q(lab, "SELECT pg_reload_conf()")
        for name, value in settings if on else ():
            wait_for(f"{name} reloaded", lambda n=name, v=value: q(lab, f"SHOW {n}") == v, timeout=30, every=0.2)


def set_pgbackrest(lab: LabState, options: tuple[tuple[str, str], ...], on: bool) -> None:
    """Options of home's archive-push for one arm, under [global:archive-push] (the deployed file kept
    beside it and put back afterwards)."""
    if not options:
        return
    conf = "/etc/pgbackrest/pgbackrest.conf"
    if on:
        lines = "\\n".join(f"{k}={v}" for k, v in options)
        ssh(lab, "home", f"sudo cp -p {conf} {conf}.bench && sudo sed -i 's/^\\[global:archive-push\\]$/&\\n{lines}/' "
                         f"{conf} && sudo grep -q '^{options[0][0]}={options[0][1]}$' {conf}")
    else:
        ssh(lab, "home", f"sudo mv {conf}.bench {conf}")


# --------------------------------------------------------------------------- load and samplers


def pgbench(lab: LabState) -> tuple[float, int]:
    out = sh(lab, "home", f"{PGBENCH} -c {CLIENTS} -j {THREADS} -T {SECONDS} bench 2>&1", timeout=SECONDS + 120)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    assert processed and tps and int(processed.group(1)) > 0, out[-2000:]
    assert failed is None or int(failed.group(1)) == 0, out[-2000:]
    return float(tps.group(1)), int(processed.group(1))


def home_cgroup(lab: LabState) -> Path:
    """Home's container's cgroup v2 folder (cpu.stat in every folder of it)."""
    for folder in hostlib.cgroup_dirs(cgroup_name(lab.lab_id), "home"):
        if (folder / "cpu.stat").is_file():
            return folder
    raise AssertionError("home's container has no cpu.stat (cgroup v2 folder)")


def home_snapshot(lab: LabState) -> tuple[dict[str, float], dict[int, homecpu.Proc]]:
    pids = hostlib.cgroup_pids(cgroup_name(lab.lab_id), "home")
    return homecpu.cgroup_snapshot(home_cgroup(lab)), homecpu.process_snapshot(pids)


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
    # per arm, per run: home's CPU ms a transaction by class (homecpu.costs)
    classes: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {a: [] for a in ARMS})
    wal_bytes: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ARMS})  # WAL a transaction
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


def measure_arm(lab: LabState, run: Run, name: str, warm: list[str], cold: list[str]) -> None:
    """One pgbench run in the arm set up: tps, home's CPU by class, and the lag samples (full arms on one core)."""
    samplers = {}
    if name == "full":
        samplers = {h: start_warm_sampler(lab, h) for h in warm}
        samplers |= {h: start_cold_sampler(lab, h) for h in cold}
        time.sleep(1.0)  # the samplers' ssh sessions are up before the load starts
    q(lab, "CHECKPOINT")  # every run starts from the same state of shared buffers
    wal0 = q(lab, "SELECT pg_current_wal_lsn()")
    started, (cg0, pr0) = time.time(), home_snapshot(lab)
    tps, transactions = pgbench(lab)
    ended = time.time()
    # pgbench's backends end after it does: counted once the postmaster has reaped them (homecpu.split)
    wait_for("pgbench's backends to end", lambda: q(lab, BENCH_BACKENDS) == "0", timeout=30, every=0.1)
    cg1, pr1 = home_snapshot(lab)
    used = homecpu.costs(cg0, cg1, pr0, pr1)
    run.wal_bytes[name].append(int(q(lab, f"SELECT pg_current_wal_lsn() - '{wal0}'::pg_lsn")) / transactions)
    run.tps[name].append(tps)
    run.cpu_ms[name].append(1000 * used["total"] / transactions)
    run.classes[name].append({k: 1000 * v / transactions for k, v in used.items()})
    cores = len(cpuset.parse_cpus(ARMS[name].cpus))
    run.core_share.append(used["total"] / (ended - started) / cores)
    window = (started + 2.0, ended - 0.5)  # pgbench's ssh and connection set-up excluded
    for h in warm if samplers else []:
        lags = warm_lags(collect(samplers[h]), *window)
        assert len(lags) >= SECONDS, f"{h}: only {len(lags)} lag samples"
        run.warm[h].append(lags)
    for h in cold if samplers else []:
        samples = cold_samples(collect(samplers[h]), *window)
        assert len(samples) >= 5, f"{h}: only {len(samples)} vault samples"
        run.cold[h].append(cold_lags(lab, samples))
    top = sorted(((v, k) for k, v in run.classes[name][-1].items() if k != "total"), reverse=True)
    print(f"{name}: {tps:.1f} tps, {run.wal_bytes[name][-1]:.0f} B of WAL and "
          f"{run.cpu_ms[name][-1]:.3f} CPU ms of home a transaction "
          f"({', '.join(f'{k} {v:.3f}' for v, k in top if v >= 0.005)}), {run.core_share[-1]:.0%} of its cores",
          flush=True)


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
    names = list(ARMS)
    try:
        for r in range(ROUNDS):
            for name in names[r % len(names):] + names[:r % len(names)]:
                arm = ARMS[name]
                want = {"archiving": arm.archiving, "streaming": arm.streaming}
                # Archiving first: the backlog is pushed before the standbys add their load.
                if want["archiving"] != state["archiving"]:
                    set_archiving(lab, want["archiving"])
                if want["streaming"] != state["streaming"]:
                    set_streaming(lab, warm, want["streaming"])
                state = want
                (pinned["home"] / "cpuset.cpus").write_text(arm.cpus)
                set_pg(lab, arm.pg, True)
                set_pgbackrest(lab, arm.pgbackrest, True)
                try:
                    measure_arm(lab, run, name, warm, cold)
                finally:
                    set_pgbackrest(lab, arm.pgbackrest, False)
                    set_pg(lab, arm.pg, False)
                    (pinned["home"] / "cpuset.cpus").write_text(HOME_CPUS)
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


def by_class(run: Run, arm: str) -> dict[str, float]:
    """Median CPU ms a transaction per class over an arm's runs."""
    keys = sorted({k for c in run.classes[arm] for k in c})
    return {k: statistics.median(c.get(k, 0.0) for c in run.classes[arm]) for k in keys}


def class_text(classes: dict[str, float]) -> str:
    top = sorted(((v, k) for k, v in classes.items() if k != "total" and v >= 0.001), reverse=True)
    return ", ".join(f"{k} {v:.3f}" for v, k in top)


def report(lab: LabState, cfg: dict[str, Any], run: Run, cold: list[str]) -> None:
    off = run.tps["off"]
    pin = (f"home's container pinned to CPU {HOME_CPUS} (arms off2/full2: CPUs {BOTH_CPUS}), everything else of the "
           f"lab (standbys, cold enclave, SeaweedFS vaults, mirror, syslog, the benchmark's ssh clients) to CPU "
           f"{OTHER_CPUS} with cgroup v1 cpusets; the machine's {os.cpu_count()} cores, load average "
           f"{os.getloadavg()[1]:.1f} over the last 5 minutes of the runs")
    load = (f"pgbench -c {CLIENTS} -j {THREADS} -T {SECONDS}, scale {SCALE}, read-write, on home's cluster; "
            f"{ROUNDS} rounds of the {len(ARMS)} arms ({', '.join(ARMS)}) alternated (rotating order); replication "
            "rounds and base-backup timers paused during the runs")
    base = {"name": "pgbench, archiving (archive_command '') and streaming (standbys stopped) off",
            "value": round(statistics.median(off), 1), "unit": "tps"}
    ratio = {a: [x / o for x, o in zip(run.tps[a], off, strict=True)] for a in ARMS}
    tps = ", ".join(f"{a} {statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for a, v in run.tps.items())
    cpu = {a: statistics.median(v) for a, v in run.cpu_ms.items()}
    classes = {a: by_class(run, a) for a in ARMS}
    share = f"{min(run.core_share):.0%}-{max(run.core_share):.0%}"
    where = (f"home's container spends {cpu['off']:.3f} CPU ms a transaction with nothing replicated, "
             f"{cpu['archiving']:.3f} archiving, {cpu['full']:.3f} archiving and streaming; home got {share} of its "
             f"cores (other work on the machine took the rest). TPS median (min-max): {tps}")
    record(figure("tps_ratio", ratio["full"], "x", target=0.8, baseline=base,
                  note=f"archiving to {len(cfg['embassies'])} vaults + warm standbys streaming; ratio per round to "
                       f"the off arm of that round; {where}. {load}. {pin}."))
    record(figure("tps_ratio_archiving_only", ratio["archiving"], "x", target=0.95, baseline=base,
                  note=f"archiving to every vault, standbys stopped; {load}. {pin}."))
    two = [f / o for f, o in zip(run.tps["full2"], run.tps["off2"], strict=True)]
    record(figure("tps_ratio_home_2_cores", two, "x", target=0.8,
                  baseline={**base, "name": "pgbench, archiving and streaming off, home on 2 cores",
                            "value": round(statistics.median(run.tps["off2"]), 1)},
                  note=f"home's container on both cores (the rest of the lab on one of them), full replication "
                       f"against off, each on 2 cores; full on 2 cores against off on 1 core: "
                       f"{statistics.median(ratio['full2']):.2f}; home's CPU ms a transaction off2 {cpu['off2']:.3f}, "
                       f"full2 {cpu['full2']:.3f}. {load}."))
    # CPU a transaction: what load from other work changes least (a run's CPU, not its wall time).
    cpu_base = {"name": "home's CPU a transaction, archiving and streaming off", "value": round(cpu["off"], 4),
                "unit": "ms"}
    for arm, target, figname in (("full", 0.8, "home_cpu_ms_per_txn"),
                                 ("archiving", 0.95, "home_cpu_ms_per_txn_archiving_only")):
        record(figure(figname, run.cpu_ms[arm], "ms", target=round(cpu["off"] / target, 4), direction="<=",
                      baseline=cpu_base,
                      note=f"CPU time of home's container (cgroup cpu.stat) per committed transaction, {arm} arm; "
                           f"target: the off arm's / {target} (tps ratio {target} if CPU-bound); WAL a transaction "
                           f"{statistics.median(run.wal_bytes[arm]):.0f} B. By class (ms, "
                           f"median): {class_text(classes[arm])}; off arm: {class_text(classes['off'])}. "
                           f"{load}. {pin}."))
        cpu_ratio = [o / f for o, f in zip(run.cpu_ms["off"], run.cpu_ms[arm], strict=True)]
        record(figure(f"cpu_ratio{'' if arm == 'full' else '_archiving_only'}", cpu_ratio, "x", target=target,
                      baseline=cpu_base, note=f"home's CPU a transaction, off arm / {arm} arm, per round."))
    for arm in [a for a in ARMS if a in VARIANTS]:
        cpu_ratio = [o / f for o, f in zip(run.cpu_ms["off"], run.cpu_ms[arm], strict=True)]
        record(figure(f"cpu_ratio_{arm}", cpu_ratio, "x", baseline=cpu_base,
                      note=f"variant {ARMS[arm]}: {cpu[arm]:.3f} CPU ms a transaction ({class_text(classes[arm])}), "
                           f"{statistics.median(run.wal_bytes[arm]):.0f} B of WAL; "
                           f"tps ratio {statistics.median(ratio[arm]):.2f}"))
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    runs = {"tps": run.tps, "cpu_ms": run.cpu_ms, "classes": run.classes, "wal_bytes": run.wal_bytes}
    (out / "bench_dataplane_cpu.json").write_text(json.dumps(runs, indent=1) + "\n")
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
