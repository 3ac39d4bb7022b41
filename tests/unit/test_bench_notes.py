"""The restore benchmarks' rows (tests/bench/test_bench_restore.py) without a lab: every note is built from
the runs it describes, the RTOs are medians of several drills with min and max, and a row says when the
page cache could not be dropped. Adversary: a note that carries an earlier run's figures into a new row,
or a ratio whose baseline read from memory while the row claims a cold cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.bench import test_bench_restore as bench


def run(restore_mb_s: float, copy_mb_s: float, *, cold: bool = True) -> dict[str, float]:
    moved = 100e6
    return {"bytes": moved, "pg_bytes": 60e6, "file_bytes": 40e6, "pgbackrest_s": 1.0, "restic_s": 1.0,
            "restore_sync_s": 0.25, "restore_s": moved / 1e6 / restore_mb_s, "copy_s": moved / 1e6 / copy_mb_s,
            "total_s": 30.0, "restore_mb_s": restore_mb_s, "copy_mb_s": copy_mb_s, "pg_mb_s": 60.0,
            "restic_mb_s": 40.0, "cold_cache": float(cold)}


def test_the_ratio_is_a_median_with_min_and_max_and_its_note_comes_from_its_runs() -> None:
    runs = [run(50, 100), run(90, 100), run(70, 100)]
    row = bench.restore_figure("restore_ratio_64mb", runs)
    assert (row["value"], row["min"], row["max"], row["runs"]) == (0.7, 0.5, 0.9, 3)
    assert row["note"].startswith("restore 70 MB/s") and "medians of 3 runs" in row["note"]
    assert "page cache dropped before each arm" in row["note"] and "its final sync 0.2 s" in row["note"]
    other = bench.restore_figure("restore_ratio_64mb", [run(20, 40)])
    assert other["note"].startswith("restore 20 MB/s") and "medians of 1 runs" in other["note"]
    assert "pg_wal left out of both" in row["baseline"]["name"]


def test_a_warm_cache_is_said() -> None:
    row = bench.restore_figure("restore_ratio_64mb", [run(50, 100), run(50, 100, cold=False)])
    assert "page cache NOT dropped (not root)" in row["note"]


def drill(rto: float, passed: bool = True) -> dict[str, Any]:
    return {"rto_seconds": rto, "passed": passed,
            "registers": [{"name": "population", "rto_seconds": rto - 1}],
            "timeline": [{"step": "restore: vault check", "start": "2026-12-07T10:00:00+00:00",
                          "end": f"2026-12-07T10:00:{int(rto) // 2:02d}+00:00"}]}


def test_an_rto_is_the_median_of_its_drills_and_names_the_median_run() -> None:
    row = bench.drill_figure("rto_warm_64mb_s", "de", [drill(30), drill(12, passed=False), drill(20)], 10)
    assert (row["value"], row["min"], row["max"], row["runs"], row["met"]) == (20, 12, 30, 3, False)
    assert "3 drills" in row["note"] and "The median run (20 s), per register: population 19 s" in row["note"]
    assert "vault check 10.0 s" in row["note"] and "Verdicts: passed, failed, passed" in row["note"]


def test_figure_names_carry_the_size() -> None:
    assert [bench.label(mb) for mb in (1024, 5120, 64, 1536)] == ["1gb", "5gb", "64mb", "1536mb"]


def test_no_text_of_an_earlier_run_is_left_in_the_module() -> None:
    source = Path(bench.__file__).read_text()
    assert "NOTE_RATIO" not in source and "SHARED" not in source
    # No figure with a unit written into a string: every number in a note is formatted from a run.
    assert not re.findall(r"[\"'][^\"'{}]*\b\d+(\.\d+)? ?(MB/s|CPU-s|GB cluster)", source)
