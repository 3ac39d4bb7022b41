"""How long an embassy's restore test takes (issue 25), at the default size and at 1 GB, at the cold (ie) and
the warm (de) embassy, against the registers' RTO objectives and beside the drill's RTO.

Each run is `embassy restore-test --point latest --json` as a user runs it: the controller's vault check
(`embassy verify`'s, timed apart in process just before) and then the host's own test (pgBackRest restore into
the scratch cluster on 5434, recovery to each register's signed LSN, digests, smoke queries, restic, the files'
digest, removal). The host's result carries its steps' times, so the note names what dominates.

The 1 GB state is the restore benchmarks' (tests/bench/restore_state.py): grown on home, then a full backup
into both embassies' repos and a replication round, so each restore test starts from a backup of that state.
The default-size runs first drop what an earlier benchmark grew and ship a fresh full backup the same way.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import pytest

from embassy.home.generator import Spec
from embassy.lab.state import LabState
from embassy.model import load_stack
from embassy.replication import verify as vault_verify
from tests.lab.conftest import ROOT, STACK
from tests.lab.test_replication import embassy_cli

from . import restore_state as state
from .conftest import figure, record

pytestmark = pytest.mark.lab
COLD, WARM = "ie", "de"
RUNS = 2  # per embassy and size: ~1 min each at the default size, a few at 1 GB, on 2 shared cores
# The drill's RTO at 1 GB, measured by tests/bench/test_bench_restore.py on 2026-12-03 (quiet machine).
DRILL_RTO_1GB = {COLD: 40.5, WARM: 21.5}
SHARED = "2 cores shared with the lab's 4 containers, 3 vaults and other work on the machine"


def _drop_grown(lab: LabState) -> None:
    state.drop_extra(lab)
    state.psql(lab, "home", state.DB, "DROP TABLE IF EXISTS bench_bulk")
    state.sh(lab, "home", f"sudo rm -rf {state.FILES}/bench")


@pytest.fixture(scope="module")
def deployed(lab: LabState) -> None:
    done = embassy_cli(lab, "deploy", "--target", "lab", "--stack", STACK, "--json", "--size-mb", f"{Spec.size_mb:g}",
                       timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]


def measure(lab: LabState, embassy: str) -> dict[str, Any]:
    """The vault check alone, then one `embassy restore-test`; the host's figures from its result."""
    dep = load_stack(STACK, ROOT)
    started = time.monotonic()
    checked = vault_verify.verify(dep, lab, embassy)
    verify_s = time.monotonic() - started
    assert checked.intact, checked.first_failure
    started = time.monotonic()
    done = embassy_cli(lab, "restore-test", "--stack", STACK, "--embassy", embassy, "--point", "latest", "--json",
                       timeout=3600)
    wall = time.monotonic() - started
    assert done.returncode in (0, 1), done.stderr[-3000:]
    out = json.loads(done.stdout)
    # A missed RTO is a finding, recorded with the figure; a digest that differs is a broken run.
    assert all(r["digest_ok"] for r in out["registers"]) and out["registers"], out["failure"]
    assert out["failure"] is None or "over its RTO" in out["failure"]["reason"], out["failure"]
    run = {"embassy": embassy, "wall_s": wall, "verify_s": verify_s, "host_s": out["seconds"],
           "passed": out["passed"], "round": out["point"]["round"],
           "registers": {r["name"]: (r["seconds"], r["rto_seconds"]) for r in out["registers"]},
           "steps": {s["step"]: s["seconds"] for s in out.get("steps", [])}}
    print(f"restore-test at {embassy}: {json.dumps(run)}")
    return run


def restore_test_figure(name: str, embassy: str, runs: list[dict[str, Any]], size: str) -> dict[str, Any]:
    last = runs[-1]
    rtos = {n: rto for n, (_s, rto) in last["registers"].items()}
    per_register = "; ".join(f"{n} {statistics.median(r['registers'][n][0] for r in runs):.1f} s (RTO {rtos[n]} s)"
                             for n in rtos)
    steps = sorted(last["steps"].items(), key=lambda kv: -kv[1])[:4]
    drill = f"; the drill's RTO at 1 GB: {DRILL_RTO_1GB[embassy]} s" if size == "1 GB" else ""
    return figure(name, [r["host_s"] for r in runs], "s", target=min(rtos.values()), direction="<=",
                  baseline={"name": "CLI wall with the controller's vault check",
                            "value": round(statistics.median(r["wall_s"] for r in runs), 1), "unit": "s"},
                  note=(f"`embassy restore-test --point latest` at {embassy} ({size}), the host's test: per register "
                        f"(from the restore's start to its digest and smoke check) {per_register}; the vault check "
                        f"{statistics.median(r['verify_s'] for r in runs):.1f} s; longest steps: "
                        + "; ".join(f"{n} {s:.1f} s" for n, s in steps)
                        + f"{drill}; passed: {[r['passed'] for r in runs]}. {SHARED}."))


def test_bench_restore_test_default(lab: LabState, deployed: None) -> None:
    _drop_grown(lab)
    state.ship(lab, (COLD, WARM))
    state.settle(lab)
    for embassy, mode in ((COLD, "cold"), (WARM, "warm")):
        runs = [measure(lab, embassy) for _ in range(RUNS)]
        record(restore_test_figure(f"restore_test_{mode}_default_s", embassy, runs, f"{Spec.size_mb:g} MB"))


def test_bench_restore_test_1gb(lab: LabState, deployed: None) -> None:
    state.drop_extra(lab)
    state.grow_part(lab, 1024)
    state.ship(lab, (COLD, WARM))
    state.settle(lab)
    size = state.state_bytes(lab)
    assert size["postgres"] + size["files"] > 0.9e9, size
    for embassy, mode in ((COLD, "cold"), (WARM, "warm")):
        runs = [measure(lab, embassy) for _ in range(RUNS)]
        record(restore_test_figure(f"restore_test_{mode}_1gb_s", embassy, runs, "1 GB"))
