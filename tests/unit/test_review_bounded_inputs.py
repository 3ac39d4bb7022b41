"""Every input of a review is bounded (issue 23, item 4). The adversary hands the reviewer a small file that expands
into gigabytes (a gzip bomb) or a huge one: the review refuses it with `error:` and `HINT:`, exit 2, before parsing,
and never holds more than the limit in memory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.review import sources

runner = CliRunner()
MiB = 1024 * 1024


def review(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["review", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sources, "INPUT_LIMIT", 1 * MiB)
    return 1 * MiB


def plan_text(padding: int) -> str:
    rec = {"urn": "urn:pulumi:s::p::aws:s3/bucket:Bucket::b", "type": "aws:s3/bucket:Bucket", "name": "b",
           "inputs": {"pad": "x" * padding}, "dependencies": []}
    return json.dumps({"version": 3, "deployment": {"resources": [rec]}})  # a `pulumi stack export`


def test_gzip_bomb_is_refused(tmp_path: Path, small_limit: int) -> None:
    bomb = tmp_path / "state.json.gz"
    bomb.write_bytes(gzip.compress(plan_text(8 * small_limit).encode(), 9))
    assert bomb.stat().st_size < small_limit // 20  # small on disk
    code, out = review(str(bomb))
    assert code == 2, out
    assert "expands to more than 1 MiB" in out and "HINT:" in out and "Traceback" not in out


def test_large_plain_input_is_refused(tmp_path: Path, small_limit: int) -> None:
    big = tmp_path / "plan.json"
    big.write_text(plan_text(2 * small_limit))
    code, out = review(str(big), str(big))
    assert code == 2 and "holds more than 1 MiB" in out and "HINT:" in out


def test_input_under_the_limit_is_read(tmp_path: Path, small_limit: int) -> None:
    ok = tmp_path / "plan.json.gz"
    ok.write_bytes(gzip.compress(plan_text(small_limit // 2).encode()))
    code, out = review(str(ok), str(ok), "--format", "json")
    assert code in (0, 1) and "more than" not in out


def test_the_real_limit_is_documented_size() -> None:
    assert 256 * MiB == sources.INPUT_LIMIT
