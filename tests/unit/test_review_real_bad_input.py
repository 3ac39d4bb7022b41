"""Files of the wrong shape given to `embassy review` and `embassy check`: error naming the file and the key
path, a HINT, exit 2, no traceback. Never exit 0 on nonsense."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embassy.cli import app

ROOT = Path(__file__).resolve().parents[2]
URN = "urn:pulumi:rehearsal::data-embassy::aws:s3/bucket:Bucket::b"
BUCKET = {"urn": URN, "type": "aws:s3/bucket:Bucket", "inputs": {}}


def plan(**rec: Any) -> dict[str, Any]:
    return {"stack": "rehearsal", "resources": [{**BUCKET, **rec}]}


def event(metadata: dict[str, Any]) -> str:
    return json.dumps({"sequence": 1, "timestamp": 1, "resourcePreEvent": {"metadata": metadata}}) + "\n"


# name -> (file content, words the error must say); content str is written as is, bytes as bytes
CASES: dict[str, tuple[Any, str]] = {
    "dependencies-7": (plan(dependencies=7), "resources[0].dependencies is a number, not a list"),
    "dependency-not-urn": (plan(dependencies=[3]), "resources[0].dependencies[0] is a number, not a URN"),
    "inputs-list": (plan(inputs=[1, 2]), "resources[0].inputs is a list, not an object"),
    "outputs-string": (plan(outputs="x"), "resources[0].outputs is a string, not an object"),
    "resource-not-object": ({"stack": "rehearsal", "resources": [5]}, "resources[0] is a number, not a resource object"),
    "urn-missing": ({"stack": "rehearsal", "resources": [{"type": "t"}]}, "resources[0].urn is missing"),
    "checkpoint-latest-x": ({"checkpoint": {"latest": "x"}}, "checkpoint.latest is a string, not an object"),
    "checkpoint-x": ({"checkpoint": 3}, "checkpoint is a number, not an object"),
    "deployment-resources-5": ({"deployment": {"resources": 5}}, "deployment.resources is a number, not a list"),
    "deployment-list": ({"deployment": []}, "deployment is a list, not an object"),
    "export-inputs-list": ({"deployment": {"resources": [{"urn": URN, "inputs": ["a"]}]}},
                           "deployment.resources[0].inputs is a list"),
    "plan-empty": ({"stack": "rehearsal", "resources": []}, "the plan has no resources"),
    "plan-unknown-stack": ({"stack": "nope", "resources": [BUCKET]}, "stack 'nope', but this project has no Pulumi.nope.yaml"),
    "plan-no-stack": ({"resources": [BUCKET]}, "the plan names no stack"),
    "preview-steps-x": ({"steps": "x"}, "steps is a string, not a list of steps"),
    "preview-step-no-urn": ({"steps": [{"op": "create"}]}, "steps[0] is not a step with a urn"),
    "preview-old-state-list": ({"steps": [{"op": "update", "urn": URN, "oldState": [1]}]},
                               "steps[0].oldState is a list, not a resource object"),
    "event-old-string": (event({"op": "update", "urn": URN, "old": "x", "new": BUCKET}),
                         "event 1 resourcePreEvent.metadata.old is a string"),
    "event-new-deps": (event({"op": "create", "urn": URN, "new": {**BUCKET, "dependencies": {"a": 1}}}),
                       "metadata.new.dependencies is an object, not a list"),
    "nested-100k-lists": ("[" * 100_000 + "]" * 100_000, "nested too deep"),
    "nested-100k-objects": ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deep"),
    "not-utf8": (b"\xff\xfe\x00{", "not UTF-8"),
    "empty": ("", "is empty"),
    "scalar": ("7", "unknown format"),
    "damaged-gzip": (gzip.compress(b'{"deployment": {}}')[:12], "damaged gzip"),
}
# a plan's own checks apply to `embassy check --plan` too
CHECK_CASES = ("dependencies-7", "dependency-not-urn", "inputs-list", "outputs-string", "resource-not-object",
               "urn-missing", "plan-empty", "plan-unknown-stack", "plan-no-stack", "nested-100k-lists",
               "nested-100k-objects", "not-utf8")


def _file(tmp_path: Path, name: str) -> Path:
    content, _ = CASES[name]
    path = tmp_path / f"{name}.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _refused(result: Any, path: Path, words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    err = result.stderr
    assert err.startswith("error: ") and "\nHINT: " in err, err
    assert str(path) in err and words in err, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_review_refuses(tmp_path: Path, name: str) -> None:
    path = _file(tmp_path, name)
    _refused(CliRunner().invoke(app, ["review", str(path)]), path, CASES[name][1])


@pytest.mark.parametrize("name", CHECK_CASES)
def test_check_refuses(tmp_path: Path, name: str) -> None:
    path = _file(tmp_path, name)
    _refused(CliRunner().invoke(app, ["check", "--plan", str(path)]), path, CASES[name][1])


def test_review_of_two_files_refuses_the_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"deployment": {"resources": [BUCKET]}}))
    bad = _file(tmp_path, "deployment-resources-5")
    _refused(CliRunner().invoke(app, ["review", str(good), str(bad)]), bad, "deployment.resources")


def test_nonsense_properties_fail_closed(tmp_path: Path, rehearsal_plan: dict[str, Any]) -> None:
    """Properties of a shape no provider writes (ingress rules as a string): the control cannot judge, so it fails."""
    import copy

    broken = copy.deepcopy(rehearsal_plan)
    sg = next(r for r in broken["resources"] if r["type"].endswith("securityGroup:SecurityGroup") and r["name"] == "de-hosts")
    sg["inputs"]["ingress"] = ["0.0.0.0/0"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(broken))
    for args in (["check", "--plan", str(path), "--format", "json"], ["review", str(path), "--format", "json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        out = json.loads(result.stdout)
        hits = [f for f in out["findings"] if f["control"] == "EMB-NET-01" and f["urn"] == sg["urn"]]
        assert hits and hits[0]["mandatory"] and hits[0]["message"].startswith("cannot judge EMB-NET-01")


def test_empty_export_is_said(tmp_path: Path) -> None:
    path = tmp_path / "empty-export.json"
    path.write_text(json.dumps({"version": 3, "deployment": {"manifest": {}, "resources": []}}))
    result = CliRunner().invoke(app, ["review", str(path), "--format", "json"])
    out = json.loads(result.stdout)
    assert any("holds no resources" in n for n in out["notes"]) and "0 resource(s)" in out["read"][0]
