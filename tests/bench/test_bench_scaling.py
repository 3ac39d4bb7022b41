"""How `embassy plan` and `embassy review` grow with the number of embassies: generated stacks of 1, 5, 10, 20.

Each size is a real `Pulumi.scale-<n>.yaml` in a project folder of its own (scale_stacks.py), planned by the
CLI as a user runs it (`embassy plan` in a subprocess, which runs the program under Pulumi's mocks in a
process of its own). The sizes are interleaved round by round, so that load from other work on the machine
falls on every size alike; each ratio is taken within a round (its min and max are those of the rounds).
Wall-clock time is what a user waits; the CPU time of the same runs (the command and its child processes)
is reported beside it, since it does not move with the machine's load.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embassy.review import read, review

from .conftest import figure, median_seconds, record
from .scale_stacks import project

SIZES = [1, 5, 10, 20]
PLAN_ROUNDS = 5
REVIEW_ROUNDS = 7
TARGET_RATIO = 3.0
EMBASSY = str(Path(sys.executable).with_name("embassy"))


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(args: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Wall-clock and CPU seconds (the command and every child it waited for) of one CLI run."""
    cpu, started = cpu_of_children(), time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    assert proc.returncode in ok, f"{' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    return wall, cpu_of_children() - cpu


def rounds(sizes: list[int], count: int, run: Callable[[int], tuple[float, float]]) -> dict[int, list[tuple[float, float]]]:
    """`count` rounds, each running every size once (in turn), as (wall, cpu) per size."""
    out: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}
    for _ in range(count):
        for n in sizes:
            out[n].append(run(n))
    return out


def med(samples: list[tuple[float, float]], which: int) -> float:
    return statistics.median(s[which] for s in samples)


def record_growth(kind: str, what: str, times: dict[int, list[tuple[float, float]]], baseline: dict[str, Any],
                  limits: str) -> None:
    """plan_s_<n> / review_s_<n> per size, then <kind>_ratio_20_1 (wall) and <kind>_cpu_ratio_20_1."""
    small, large = times[SIZES[0]], times[SIZES[-1]]
    for n in SIZES:
        record(figure(f"{kind}_s_{n}", [w for w, _ in times[n]], "s", baseline=baseline,
                      note=f"{what}, {n} embass{'y' if n == 1 else 'ies'}; CPU {med(times[n], 1):.2f} s"))
    curve = ", ".join(f"{n}: {med(times[n], 0):.2f} s" for n in SIZES)
    cpu_curve = ", ".join(f"{n}: {med(times[n], 1):.2f} s" for n in SIZES)
    for name, which, label in ((f"{kind}_ratio_20_1", 0, "wall"), (f"{kind}_cpu_ratio_20_1", 1, "CPU")):
        ratios = [b[which] / a[which] for a, b in zip(small, large, strict=True)]
        met = statistics.median(ratios) < TARGET_RATIO
        record(figure(name, ratios, "x", target=TARGET_RATIO, direction="<=",
                      baseline={"name": f"{what}, 1 embassy ({label})", "value": round(med(small, which), 3), "unit": "s"},
                      note=f"{label} time of 20 embassies over 1, per round; growth {curve if which == 0 else cpu_curve}"
                           + ("" if met else f". {limits}")))


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    folder = tmp_path_factory.mktemp("scale")
    return folder, project(folder, SIZES)


@pytest.fixture(scope="module")
def plans(stacks: tuple[Path, dict[int, str]]) -> dict[int, Path]:
    """One plan per size, written by `embassy plan` (the first round of the plan benchmark writes them)."""
    folder, names = stacks
    return {n: folder / f"plan-{n}.json" for n in names}


def test_bench_plan_scaling(stacks: tuple[Path, dict[int, str]], plans: dict[int, Path]) -> None:
    folder, names = stacks
    floor = median_seconds(
        lambda: subprocess.run([sys.executable, "-c", "import pulumi, pulumi_aws"], check=True), repeats=3)
    times = rounds(SIZES, PLAN_ROUNDS, lambda n: run_timed(
        [EMBASSY, "plan", "--stack", names[n], "--out", str(plans[n])], folder))
    for n in SIZES:  # each plan holds every embassy's resources, in a region of its own
        plan = json.loads(plans[n].read_text())
        regions = {r["provider"]["region"] for r in plan["resources"] if r["provider"]}
        assert len(regions) == n and len(plan["outputs"]["embassies"]) == n
    record_growth("plan", "`embassy plan` (subprocess, wall clock)", times,
                  {"name": "python -c 'import pulumi, pulumi_aws'", "value": round(floor, 3), "unit": "s"},
                  "What limits it: nearly all of an embassy's cost is the Pulumi SDK's own work per resource under "
                  "the mocks (Outputs, futures, tasks, a stack capture for each of 49 resources and 14 invokes); ours "
                  "(recording, redaction, writing the plan) is about 5 per cent of it, and wall time on a loaded "
                  "machine adds the wait for a core. What would close it: fewer resources per embassy, or a cheaper "
                  "SDK path (not ours to change)")


def weakened(plan_file: Path) -> Path:
    """The same plan with every vault's Object Lock retention cut to 30 days: a change per embassy to judge."""
    plan = json.loads(plan_file.read_text())
    for res in plan["resources"]:
        if res["type"].endswith("BucketObjectLockConfiguration"):
            res["inputs"]["rule"]["defaultRetention"]["days"] = 30
    head = plan_file.with_name(plan_file.stem + "-weakened.json")
    head.write_text(json.dumps(plan, indent=2, sort_keys=True))
    return head


def test_bench_review_scaling(stacks: tuple[Path, dict[int, str]], plans: dict[int, Path]) -> None:
    folder, names = stacks
    for n in SIZES:  # the plans of the plan benchmark, or fresh ones when it was not selected
        if not plans[n].is_file():
            run_timed([EMBASSY, "plan", "--stack", names[n], "--out", str(plans[n])], folder)
    heads = {n: weakened(plans[n]) for n in SIZES}
    out = folder / "review.json"

    def cli(n: int) -> tuple[float, float]:
        # exit 1: the weakened retention is a mandatory finding
        return run_timed([EMBASSY, "review", str(plans[n]), str(heads[n]), "--format", "json", "--out", str(out)],
                         folder, ok=(1,))

    floor = median_seconds(lambda: subprocess.run([sys.executable, "-c", "import embassy.cli"], check=True), repeats=3)
    times = rounds(SIZES, REVIEW_ROUNDS, cli)
    for n in SIZES:  # every embassy's vault and audit-log retention is named as weakened
        cli(n)
        result = json.loads(out.read_text())
        assert len(result["weakening"]) == 2 * n and result["exit_code"] == 1
    record_growth("review", "`embassy review` of two plans (subprocess, wall clock)", times,
                  {"name": "python -c 'import embassy.cli'", "value": round(floor, 3), "unit": "s"},
                  "What limits it: the review judges every control on every resource of both sides")

    # In process: the comparison alone, without the interpreter's start, which hides how the work grows.
    def in_process(n: int) -> tuple[float, float]:
        cpu, started = time.process_time(), time.perf_counter()
        result = review(read(str(plans[n]), folder, names[n]), read(str(heads[n]), folder, names[n]))
        assert result.exit_code == 1
        return time.perf_counter() - started, time.process_time() - cpu

    inner = rounds(SIZES, REVIEW_ROUNDS, in_process)
    ratios = [b[0] / a[0] for a, b in zip(inner[SIZES[0]], inner[SIZES[-1]], strict=True)]
    curve = ", ".join(f"{n}: {med(inner[n], 0) * 1000:.0f} ms" for n in SIZES)
    record(figure("review_inproc_ratio_20_1", ratios, "x",
                  baseline={"name": "review in process, 1 embassy", "value": round(med(inner[1], 0), 4), "unit": "s"},
                  note=f"read + review of both plans in process (no interpreter start); growth {curve}; "
                       "20 embassies hold 20 times the resources, so linear work gives about 20 x"))
