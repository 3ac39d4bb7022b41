"""How long planning and reviewing the rehearsal stack take, against the cost of loading their libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from embassy.plan import compute_plan
from embassy.review import read, review

from .conftest import ROOT, figure, median_seconds, record, timed


def test_bench_plan_rehearsal() -> None:
    # Baseline: a bare interpreter importing the Pulumi SDK and the AWS provider, the floor of any plan.
    baseline = median_seconds(
        lambda: subprocess.run([sys.executable, "-c", "import pulumi, pulumi_aws"], check=True), repeats=3)
    plan: dict[str, object] = {}
    ours = timed(lambda: plan.update(compute_plan(ROOT, "rehearsal")), runs=3)
    assert len(plan["resources"]) > 100  # type: ignore[arg-type]
    record(figure("plan_rehearsal_s", ours, "s",
                  baseline={"name": "import pulumi + pulumi_aws", "value": round(baseline, 3), "unit": "s"}))


def test_bench_review_two_plans(tmp_path: Path) -> None:
    plan = compute_plan(ROOT, "rehearsal")
    base, head = tmp_path / "base.json", tmp_path / "head.json"
    base.write_text(json.dumps(plan))
    weaker = json.loads(json.dumps(plan))
    for res in weaker["resources"]:
        if res["type"].endswith("BucketObjectLockConfiguration"):
            res["inputs"]["rule"]["defaultRetention"]["days"] = 30
    head.write_text(json.dumps(weaker))
    # Baseline: only reading and parsing both plans.
    baseline = median_seconds(lambda: [json.loads(p.read_text()) for p in (base, head)], repeats=5)
    results = []
    ours = timed(lambda: results.append(
        review(read(str(base), ROOT, "rehearsal"), read(str(head), ROOT, "rehearsal"))), runs=5)
    assert results[-1].exit_code == 1
    record(figure("review_rehearsal_s", ours, "s",
                  baseline={"name": "json parse of both plans", "value": round(baseline, 4), "unit": "s"}))
