"""Benchmarks: each figure is the median of several runs, against a baseline measured in the same run.

Not part of `make test`; run with `make bench`. Each benchmark calls `record(figure(...))`; at the end
the session writes `out/bench.json` ({"machine", "date", "results": [...]}) and `out/bench.md` (the
table the README shows). Nothing here asserts a time: a missed target is reported, with what limits
it, never turned into a failing test.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS: list[dict[str, Any]] = []

# How a figure meets its target: at least (">=") or at most ("<=") the target value.
Direction = Literal[">=", "<="]


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    """Wall-clock seconds of `runs` calls of fn."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn, repeats))


def figure(name: str, samples: Sequence[float], unit: str, *, target: float | None = None,
           direction: Direction = ">=", baseline: dict[str, Any] | None = None,
           note: str = "") -> dict[str, Any]:
    """One result row: the median of samples, with min, max and whether it meets its target.

    baseline describes what it was compared with in the same run, e.g.
    {"name": "pgbench, archiving and streaming off", "value": 812.0, "unit": "tps"}; note says what
    limits a figure that misses its target and what would close it (shown in the table).
    """
    if not samples:
        raise ValueError(f"{name}: no samples")
    value = statistics.median(samples)
    met = None if target is None else (value >= target if direction == ">=" else value <= target)
    return {"name": name, "value": round(value, 4), "unit": unit,
            "target": None if target is None else f"{direction} {target:g}", "met": met,
            "baseline": baseline, "runs": len(samples), "min": round(min(samples), 4),
            "max": round(max(samples), 4), "note": note}


def record(row: dict[str, Any]) -> None:
    RESULTS.append(row)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"Measured {doc['date']} on {doc['machine']}.", "",
             "| benchmark | median | min to max | runs | target | met | baseline (same run) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        base = r["baseline"]
        base_text = f"{base['name']}: {base['value']:g} {base.get('unit', '')}".strip() if base else ""
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {r['name']} | {r['value']:g} {r['unit']} | {r['min']:g} to {r['max']:g} | "
                     f"{r['runs']} | {r['target'] or ''} | {met} | {base_text} | {r['note']} |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session", autouse=True)
def report() -> Iterator[None]:
    yield
    if not RESULTS:
        return
    doc = {"machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d"), "results": RESULTS}
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    (out / "bench.md").write_text(table)
    print("\n" + table)


# The benchmarks that need the lab share the lab tests' fixture: one lab per run, its id from
# EMBASSY_TEST_LAB_ID (default 5), taken down at the end if this run built it.
from tests.lab.conftest import lab  # noqa: E402, F401
