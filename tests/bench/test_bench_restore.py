"""How fast the state comes back: cold restore throughput against a plain copy, `verify --full` per GB,
and the drill's RTO at a warm and at the cold embassy, for a generated state of 1 GB (and 5 GB).

Ordered as they run: restores and verifies first (home stays), the drills last (each destroys home;
the next drill rebuilds the lab as `embassy drill` does). The state is grown on home in bulk
(tests/bench/restore_state.py) after the deploy, then shipped: a full backup into the cold embassy's
repo and a replication round (digests, WAL, restic snapshots, signed manifests).

Fair baselines (issue 26): the copy arm copies exactly the files the restore wrote (pg_wal left out of
both: the pgBackRest step does not fetch the WAL, recovery does), both arms start from a cold page cache
(dropped before each arm; only root can, and a row says when it could not), and both arms' final sync is
timed. Every note is built from the run it describes. Parameters (a short run stays possible):
EMBASSY_BENCH_RUNS (runs per figure, default 3), EMBASSY_BENCH_SIZE_MB (the state, default 1024) and
EMBASSY_BENCH_BIG_MB (the large state, default 5120); a figure's name carries its size (restore_ratio_1gb).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embassy import deploy as deploy_lib
from embassy.drill.rehearsal import drill
from embassy.drill.restore import FILES_ROOT, Outcome, restore, scratch_dir, stop_restored
from embassy.home.generator import Spec
from embassy.lab.state import LabState
from embassy.model import load_stack
from embassy.replication import verify as vault_verify
from embassy.replication.dataplane import REGISTERS_ROOT, host_postgres
from embassy.targets import LabTarget
from tests.lab.conftest import ROOT, STACK
from tests.lab.test_replication import embassy_cli

from . import restore_state as state
from .conftest import figure, record

pytestmark = pytest.mark.lab
COLD, WARM = "ie", "de"
GB = 1e9
MB = 1e6
COPY = "/var/tmp/embassy-bench-copy"
RUNS = int(os.environ.get("EMBASSY_BENCH_RUNS", "3"))  # per figure: the median of RUNS, with min and max
SIZE_MB = float(os.environ.get("EMBASSY_BENCH_SIZE_MB", "1024"))
BIG_MB = float(os.environ.get("EMBASSY_BENCH_BIG_MB", "5120"))
# The restored files, pg_wal left out: what pgBackRest's step writes (recovery fetches the WAL later).
FILE_BYTES = r"""find {dirs} -type f ! -path '*/pg_wal/*' -printf '%s\n' | awk '{{s += $1}} END {{printf "%.0f\n", s}}'"""
TIMED = "s=$(date +%s.%N) && {command} && e=$(date +%s.%N) && echo \"$e $s\" | awk '{{print $1 - $2}}'"


def label(mb: float) -> str:
    """1gb, 5gb, 64mb: the size in a figure's name."""
    return f"{mb / 1024:g}gb" if mb % 1024 == 0 else f"{mb:g}mb"


def machine_load() -> str:
    """What shared the machine, read now (a note says it for the run it describes)."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {one:.1f} (5 min {five:.1f}) at the end of the runs"


def drop_caches() -> bool:
    """Empty the kernel's page cache (the whole machine's: the lab's hosts and vaults share its kernel),
    so that an arm reads from disk; False when not root (the arm then starts warm, and its row says so)."""
    if os.geteuid() != 0:
        return False
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return True


@pytest.fixture(scope="module")
def grown_state(lab: LabState) -> dict[str, int]:
    done = embassy_cli(lab, "deploy", "--target", "lab", "--stack", STACK, "--json", "--size-mb", f"{Spec.size_mb:g}",
                       timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    state.drop_extra(lab)
    state.grow_part(lab, SIZE_MB)
    state.ship(lab, (COLD,))
    state.settle(lab)
    return state.state_bytes(lab)


def _step_seconds(out: Outcome, starts: str) -> float:
    steps = [s for s in out.steps if s.name.startswith(starts)]
    assert steps, f"no step {starts!r} in {[s.name for s in out.steps]}"
    return sum((s.end - s.start).total_seconds() for s in steps)


def _copy_arm(lab: LabState, host: str, pg: str, files: str) -> tuple[float, int]:
    """The baseline: the restored files (pg_wal left out, as counted for the restore) copied on the same disk
    and synced, from a cold page cache; (seconds with the final sync, bytes found in the copy)."""
    copy = (f"sudo install -d -m 700 {COPY}/pg && sudo sh -c 'cd {pg} && find . -mindepth 1 -maxdepth 1 ! -name pg_wal "
            f"-exec cp -a --sparse=never -t {COPY}/pg {{}} +' && sudo cp -a --sparse=never {files} {COPY}/files && sync")
    state.sh(lab, host, f"sudo rm -rf {COPY} && sudo install -d {COPY}")
    drop_caches()
    seconds = float(state.sh(lab, host, TIMED.format(command=copy)).strip())
    copied = int(state.sh(lab, host, "sudo sh -c " + quote(FILE_BYTES.format(dirs=f"{COPY}/pg {COPY}/files"))).strip())
    state.sh(lab, host, f"sudo rm -rf {COPY}")
    return seconds, copied


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def cold_restore_vs_copy(lab: LabState) -> dict[str, float]:
    """One `embassy restore` at the cold embassy, then a copy of exactly the files it wrote on the same host;
    the page cache dropped before each arm, each arm's final sync timed."""
    dep = load_stack(STACK, ROOT)
    target = LabTarget(dep, lab)
    host = lab.host(COLD).name
    scratch = scratch_dir(host_postgres(target, target.embassy_hosts(COLD)[0]))  # the host's PostgreSQL major's
    cold = drop_caches()
    started = time.monotonic()
    out = restore(dep, target, COLD)
    total = time.monotonic() - started
    try:
        # restic does not sync what it writes (pgBackRest does): the restore arm's final sync, timed.
        restore_sync = float(state.sh(lab, host, TIMED.format(command="sync")).strip())
        assert out.ok, out.error.as_json() if out.error else out.as_json()
        assert {r.method for r in out.registers} == {"vault", "restic"}
        assert all(r.verified for r in out.registers)
        pgbackrest = _step_seconds(out, "pgBackRest restore")
        restic = _step_seconds(out, "court-files: restic restore")
        files = f"{FILES_ROOT}{REGISTERS_ROOT}/court-files"
        stop_restored(target, COLD)  # the files stay; nothing changes them while they are counted and copied
        pg_bytes, file_bytes = (int(state.sh(lab, host, "sudo sh -c " + quote(FILE_BYTES.format(dirs=d))).strip())
                                for d in (scratch, files))
        copy_s, copied = _copy_arm(lab, host, scratch, files)
    finally:
        stop_restored(target, COLD)
    moved = pg_bytes + file_bytes
    assert copied == moved, f"the copy arm copied {copied} bytes, the restore wrote {moved}"  # same bytes, both arms
    restore_s = pgbackrest + restic + restore_sync
    run = {"bytes": moved, "pg_bytes": pg_bytes, "file_bytes": file_bytes, "pgbackrest_s": pgbackrest,
           "restic_s": restic, "restore_sync_s": restore_sync, "restore_s": restore_s, "copy_s": copy_s,
           "total_s": total, "restore_mb_s": moved / MB / restore_s, "copy_mb_s": moved / MB / copy_s,
           "pg_mb_s": pg_bytes / MB / pgbackrest, "restic_mb_s": file_bytes / MB / restic, "cold_cache": float(cold)}
    print(f"cold restore at {COLD}: " + ", ".join(f"{k} {v:.3g}" for k, v in run.items()))
    return run


def restore_figure(name: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    """The ratio's row; its note is built from these runs only."""
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    cache = ("page cache dropped before each arm" if all(r["cold_cache"] for r in runs)
             else "page cache NOT dropped (not root): both arms may have read from memory")
    return figure(name, [r["restore_mb_s"] / r["copy_mb_s"] for r in runs], "x", target=0.5,
                  baseline={"name": f"cp -a + sync of the same {med['bytes'] / GB:.2f} GB (pg_wal left out of both) "
                                    "on the same host", "value": round(med["copy_mb_s"], 1), "unit": "MB/s"},
                  note=(f"restore {med['restore_mb_s']:.0f} MB/s (pgBackRest {med['pg_mb_s']:.0f} MB/s for "
                        f"{med['pg_bytes'] / GB:.2f} GB, restic {med['restic_mb_s']:.0f} MB/s for "
                        f"{med['file_bytes'] / GB:.2f} GB, its final sync {med['restore_sync_s']:.1f} s); copy "
                        f"{med['copy_s']:.1f} s with its final sync; {cache}; whole `embassy restore` with verify, WAL "
                        f"replay to the digest LSN, digests and service: {med['total_s']:.0f} s (medians of "
                        f"{len(runs)} runs). {machine_load()}."))


def test_bench_restore_ratio(lab: LabState, grown_state: dict[str, int]) -> None:
    runs = [cold_restore_vs_copy(lab) for _ in range(RUNS)]
    assert all(r["bytes"] > 0.8 * SIZE_MB * MB for r in runs), runs  # the state restored is the one generated
    record(restore_figure(f"restore_ratio_{label(SIZE_MB)}", runs))


def test_bench_verify_full_s_per_gb(lab: LabState, grown_state: dict[str, int]) -> None:
    dep = load_stack(STACK, ROOT)
    size = state.vault_bytes(lab, COLD)
    samples = []
    for _ in range(3):
        started = time.monotonic()
        result = vault_verify.verify(dep, lab, COLD, full=True)
        samples.append((time.monotonic() - started) / (size / GB))
        assert result.intact, result.first_failure
    record(figure("verify_s_per_gb", samples, "s/GB",
                  baseline={"name": f"vault of {COLD}", "value": round(size / GB, 2), "unit": "GB"},
                  note=f"`embassy verify --full` at the cold embassy: manifest chain, pgBackRest verify of its repo, "
                       f"restic check --read-data, Merkle roots of the snapshots. {machine_load()}."))


def test_bench_restore_ratio_big(lab: LabState, grown_state: dict[str, int]) -> None:
    state.grow_part(lab, BIG_MB - SIZE_MB, extra=True)
    state.ship(lab, (COLD,))
    state.settle(lab)
    runs = [cold_restore_vs_copy(lab) for _ in range(RUNS)]
    assert all(r["bytes"] > 0.9 * BIG_MB * MB for r in runs), runs
    record(restore_figure(f"restore_ratio_{label(BIG_MB)}", runs))


def grown_deploy(size_mb: float, backup_to: tuple[str, ...]) -> Callable[..., Any]:
    """`embassy.deploy.run`, then home's state grown to size_mb and shipped (a full backup into the repos of
    backup_to, a round), and the standbys caught up: the deploy the drill runs."""
    original = deploy_lib.run

    def run(target: LabTarget, root: Path, **kwargs: Any) -> Any:
        result = original(target, root, **kwargs)
        lab = target.lab
        state.drop_extra(lab)
        state.grow_part(lab, size_mb)
        state.ship(lab, backup_to)
        state.wait_standbys(lab)
        return result

    return run


def drill_rto(embassy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("EMBASSY_REPORT_KEYS", str(tmp_path / "keys"))
    monkeypatch.setattr(deploy_lib, "run", grown_deploy(SIZE_MB, (embassy,) if embassy == COLD else ()))
    dep = load_stack(STACK, ROOT)
    report = drill(dep, tmp_path / "report", embassy=embassy, keep_lab=True, harden=False,
                   say=lambda m: print(f"drill {embassy}: {m}"))
    doc: dict[str, Any] = report.model_dump(mode="json")
    # A missed objective is a finding, not a broken run: the figure is recorded either way.
    assert doc["rto_seconds"] is not None, doc["failures"]
    assert all(r["verified"] and r["restored"] for r in doc["registers"]), doc["registers"]
    return doc


def drill_figure(name: str, embassy: str, docs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The RTO's row over several drills; its note from those drills only (the median run's registers and
    steps, every run's verdict)."""
    rtos = [d["rto_seconds"] for d in docs]
    mid = docs[sorted(range(len(docs)), key=lambda i: rtos[i])[(len(docs) - 1) // 2]]  # the (lower) median run
    per_register = "; ".join(f"{r['name']} {r['rto_seconds']} s" for r in mid["registers"])
    steps = sorted(((s["step"], _seconds(s)) for s in mid["timeline"] if s["step"].startswith("restore:")),
                   key=lambda x: -x[1])[:3]
    verdicts = ", ".join("passed" if d["passed"] else "failed" for d in docs)
    return figure(name, rtos, "s", target=target, direction="<=",
                  note=(f"`embassy drill` at {embassy} with a {label(SIZE_MB)} state: incident to the state service "
                        f"answering; {len(docs)} drills, each rebuilding home. The median run ({mid['rto_seconds']} s), "
                        f"per register: {per_register}; its longest steps: "
                        + "; ".join(f"{n.removeprefix('restore: ')} {s:.1f} s" for n, s in steps)
                        + f". Verdicts: {verdicts}. {machine_load()}."))


def _seconds(step: dict[str, Any]) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(step["end"]) - datetime.fromisoformat(step["start"])).total_seconds()


def test_bench_rto_cold(lab: LabState, grown_state: dict[str, int], tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [drill_rto(COLD, tmp_path / f"run-{i}", monkeypatch) for i in range(RUNS)]
    assert all(d["mode"] == "cold" for d in docs)
    record(drill_figure(f"rto_cold_{label(SIZE_MB)}_s", COLD, docs, 60))


def test_bench_rto_warm(lab: LabState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [drill_rto(WARM, tmp_path / f"run-{i}", monkeypatch) for i in range(RUNS)]
    assert all(d["mode"] == "warm" for d in docs)
    record(drill_figure(f"rto_warm_{label(SIZE_MB)}_s", WARM, docs, 10))
