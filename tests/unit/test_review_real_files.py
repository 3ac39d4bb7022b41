"""The review over every real Pulumi file at hand, each with the verdict a human reviewer would give.

Real files are read where they lie (../shared/fixtures/pulumi, never copied); the formats that folder lacks
are small files of ours in Pulumi's shapes, under tests/unit/data/pulumi.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.review import read, review

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "pulumi"
REAL = FIXTURES / "real"
DATA = Path(__file__).parent / "data" / "pulumi"
needs_fixtures = pytest.mark.skipif(not REAL.is_dir(), reason=f"shared Pulumi fixtures not found at {REAL}")


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def review_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = cli("review", *args, "--format", "json")
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout)


def controls(out: dict[str, Any]) -> set[str]:
    return {f["control"] for f in out["findings"]}


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


# file -> (exit code, controls that must be found, controls that must not be)
REAL_FILES: dict[str, tuple[int, set[str], set[str]]] = {
    # Lambda roles get AWSLambdaFullAccess (implies s3:*); components (aws:serverless:Function) are not judged
    "real/checkpoint-v0.json": (1, {"EMB-IAM-01"}, set()),
    "real/checkpoint-v1.json": (1, {"EMB-IAM-01"}, set()),
    "real/checkpoint-v3.json": (1, {"EMB-IAM-01"}, set()),
    "real/checkpoint-v4.json": (1, {"EMB-IAM-01"}, set()),
    "checkpoint-v3.json": (1, {"EMB-IAM-01"}, set()),
    "real/events-destroy-bucket.jsonl": (1, {"EMB-CHG-01"}, {"PULUMI-RUN"}),
    "real/events-diagnostic-failed.jsonl": (1, {"PULUMI-ERROR", "PULUMI-RUN"}, set()),
    "real/events-policy-mandatory.jsonl": (1, {"PULUMI-POLICY", "PULUMI-RUN"}, set()),
    "real/events-policy-multi.jsonl": (1, {"PULUMI-POLICY", "PULUMI-RUN"}, set()),
    "real/events-eks-template-body.jsonl": (1, {"EMB-NET-03", "EMB-EC2-03"}, {"PULUMI-RUN"}),
    "real/events-eks-up.jsonl": (1, {"EMB-NET-01"}, set()),
    "real/events-eks-up-2.jsonl": (1, {"EMB-NET-01"}, set()),
    "real/events-webserver-userdata.jsonl": (1, {"EMB-NET-01", "EMB-EC2-01"}, set()),
    "real/events-up-interrupted.jsonl": (1, {"EMB-EC2-01", "EMB-S3-05"}, set()),
    "real/events-pretty-concatenated.json": (0, set(), {"PULUMI-RUN"}),
    "engine-events-up.jsonl": (1, {"EMB-NET-01"}, set()),
}


@needs_fixtures
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_file_verdict(name: str) -> None:
    code, must, must_not = REAL_FILES[name]
    got, out = review_json(str(FIXTURES / name))
    assert got == code == out["exit_code"]
    assert must <= controls(out), sorted(controls(out))
    assert not must_not & controls(out)
    assert out["read"] and "resource(s)" in out["read"][0]  # what was read is said
    text = json.dumps(out)
    assert "<{%" not in text  # Pulumi's colour markup never reaches a report
    # components are no cloud resources: no resource control on them
    assert not any(f["type"] in ("aws:serverless:Function", "cloud:topic:Topic", "cloud:function:Function")
                   for f in out["findings"])


def test_every_real_file_is_in_the_table() -> None:
    if not REAL.is_dir():
        pytest.skip("no shared fixtures")
    files = {f"real/{p.name}" for p in REAL.iterdir() if p.suffix in (".json", ".jsonl")}
    files |= {p.name for p in FIXTURES.iterdir() if p.suffix in (".json", ".jsonl") and "schema" not in p.name}
    assert files == set(REAL_FILES)


@needs_fixtures
def test_failed_runs_are_findings_in_every_format() -> None:
    path = str(REAL / "events-policy-mandatory.jsonl")
    md = cli("review", path)
    assert md.exit_code == 1 and "**Blocked**" in md.stdout and "<{%" not in md.stdout
    assert "| PULUMI-POLICY | high | mandatory |" in md.stdout and "| PULUMI-RUN | high | mandatory |" in md.stdout
    sarif = json.loads(cli("review", path, "--format", "sarif").stdout)
    run = sarif["runs"][0]
    ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert {"PULUMI-POLICY", "PULUMI-RUN"} <= set(ids)
    assert any(r["ruleId"] == "PULUMI-POLICY" and r["level"] == "error" and "a policy failed" in r["message"]["text"]
               for r in run["results"])
    for res in run["results"]:
        assert ids[res["ruleIndex"]] == res["ruleId"]


@needs_fixtures
def test_policy_event_message_has_no_markup() -> None:
    _, out = review_json(str(REAL / "events-policy-mandatory.jsonl"))
    assert [f["message"] for f in out["findings"] if f["control"] == "PULUMI-POLICY"] == [
        "policy pack analyzerA: always-fails (mandatory): a policy failed"]


# --------------------------------------------------------------------------- formats the shared folder lacks


def test_creates_only_preview_is_judged_whole() -> None:
    """A new stack: nothing is left out, so stack-wide controls run and a public, unversioned bucket fails."""
    code, out = review_json(str(DATA / "preview-creates-only.json"))
    assert code == 1
    assert {"EMB-S3-04", "EMB-S3-05", "EMB-ENC-02"} <= controls(out)
    assert not any("not evaluated" in n for n in out["notes"])


def test_show_sames_preview_sees_ssh_opened_in_halves() -> None:
    code, out = review_json(str(DATA / "preview-show-sames.json"))
    assert code == 1
    assert [(c["op"], c["urn"].rsplit("::", 1)[-1]) for c in out["changes"]] == [("update", "ssh")]
    weak = [w for w in out["weakening"] if w["control"] == "EMB-NET-01"]
    assert weak and weak[0]["mandatory"] and "whole internet in pieces (0.0.0.0/1, 128.0.0.0/1)" in weak[0]["message"]


def test_export_outputs_count_and_absent_flags_are_false() -> None:
    code, out = review_json(str(DATA / "export-applied-outputs.json"))
    assert code == 1
    msgs = {(f["control"], f["urn"].rsplit("::", 1)[-1]): f["message"] for f in out["findings"]}
    assert msgs[("EMB-EC2-02", "web")] == "host gets a public IP address (54.210.167.204)"
    assert msgs[("EMB-KMS-01", "data")] == "automatic key rotation is off"  # only the outputs say so
    assert ("EMB-CHG-02", "assets") in msgs and ("EMB-CHG-02", "data") in msgs  # protect absent: false
    assert ("EMB-EC2-01", "web") not in msgs  # the applied metadata options require tokens


def test_gzip_checkpoint_reads_like_the_plain_one(tmp_path: Path) -> None:
    packed = tmp_path / "dev.json.gz"
    packed.write_bytes(gzip.compress((DATA / "export-applied-outputs.json").read_bytes()))
    plain, zipped = review_json(str(DATA / "export-applied-outputs.json"))[1], review_json(str(packed))[1]
    assert plain["findings"] == zipped["findings"]
    assert "gzip" in zipped["read"][0]


def test_events_wrapper_and_prelude_region() -> None:
    src = read(str(DATA / "events-wrapper.json"), ROOT, "rehearsal")
    assert src.kind == "events" and "events wrapper" in src.file_format
    assert src.default_region == "eu-west-1"
    r = review(None, src)
    assert [c.op for c in r.changes] == ["create"]


def test_export_against_the_event_log_of_the_same_update() -> None:
    """Exactly that update: no default provider deleted, no VPC replaced, no weakening that is not one."""
    for base, head in (("export-after-update.json", "events-update.jsonl"),
                       ("events-update.jsonl", "export-after-update.json")):
        _, out = review_json(str(DATA / base), str(DATA / head))
        assert [(c["op"], c["urn"].rsplit("::", 1)[-1], c["keys"]) for c in out["changes"]] == \
            [("update", "media", ["tags.team"])], (base, head)
        assert out["weakening"] == []
        assert len(out["read"]) == 2


@needs_fixtures
def test_same_state_with_and_without_secrets() -> None:
    secret, plain = str(FIXTURES / "checkpoint-v3.json"), str(REAL / "checkpoint-v3.json")
    _, out = review_json(secret, secret)
    assert out["changes"] == [] and out["weakening"] == []
    _, out = review_json(plain, secret)
    keys = {k for c in out["changes"] for k in c["keys"]}
    assert keys and all(k.endswith("(secret)") for k in keys)
    assert out["weakening"] == []
    md = cli("review", plain, secret).stdout
    assert "rate(5 minutes)" not in md and "ciphertext" not in md  # a secret is named, never shown


@needs_fixtures
def test_two_different_stacks_are_refused_unless_allowed() -> None:
    a, b = str(FIXTURES / "checkpoint-v3.json"), str(DATA / "export-after-update.json")
    refused = cli("review", a, b)
    assert refused.exit_code == 2
    assert "different stacks 'foo' and 'dev'" in refused.stderr and "--allow-different-stacks" in refused.stderr
    allowed = cli("review", a, b, "--allow-different-stacks", "--format", "json")
    assert allowed.exit_code in (0, 1)
    assert json.loads(allowed.stdout)["notes"][0].startswith("DIFFERENT STACKS:")


def test_delete_step_without_old_state_is_still_a_bucket(tmp_path: Path) -> None:
    urn = "urn:pulumi:rehearsal::data-embassy::data-embassy:index:Embassy$data-embassy:infra:Vault$aws:s3/bucket:Bucket::de-vault"
    digest = tmp_path / "p.json"
    digest.write_text(json.dumps({"steps": [{"op": "delete", "urn": urn}], "changeSummary": {"delete": 1}}))
    code, out = review_json(str(digest))
    assert code == 1
    assert [c["type"] for c in out["changes"]] == ["aws:s3/bucket:Bucket"]
    assert [f["message"] for f in out["findings"] if f["control"] == "EMB-CHG-01"] == ["bucket de-vault deleted: data loss"]


def test_preview_with_an_error_diagnostic_never_passes(tmp_path: Path) -> None:
    doc = json.loads((DATA / "preview-creates-only.json").read_text())
    doc["diagnostics"] = [{"urn": doc["steps"][1]["urn"], "prefix": "<{%fg 1%}>error: <{%reset%}>",
                           "message": "<{%reset%}>creating S3 Bucket: AccessDenied<{%reset%}>\n", "color": "raw",
                           "severity": "error"}]
    digest = tmp_path / "preview.json"
    digest.write_text(json.dumps(doc))
    code, out = review_json(str(digest))
    assert code == 1
    assert [f["message"] for f in out["findings"] if f["control"] == "PULUMI-ERROR"] == [
        "preview error: creating S3 Bucket: AccessDenied"]
