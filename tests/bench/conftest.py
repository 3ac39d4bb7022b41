"""Benchmarks: each measures our work and a baseline in the same run, and reports the ratio.

Not part of `make test`; run with `make bench`. Results are printed as a Markdown table and written to
out/bench.json, never asserted against a time.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS: list[dict[str, Any]] = []


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def record(name: str, ours: float, baseline_name: str, baseline: float, unit: str = "s") -> None:
    RESULTS.append({"benchmark": name, "seconds": round(ours, 4), "baseline": baseline_name,
                    "baseline_seconds": round(baseline, 4), "ratio": round(ours / baseline, 2) if baseline else None})


@pytest.fixture(scope="session", autouse=True)
def report() -> Iterator[None]:
    yield
    if not RESULTS:
        return
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    lines = ["| benchmark | median | baseline (same run) | baseline median | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['seconds']:.3f} s | {r['baseline']} | {r['baseline_seconds']:.3f} s | {r['ratio']} x |"
              for r in RESULTS]
    print("\n" + "\n".join(lines))
