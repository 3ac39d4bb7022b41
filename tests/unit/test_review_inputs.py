"""The review over every input it accepts: plans, exports, preview digests, and real engine output from Pulumi."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from embassy.review import read, render, review
from embassy.review.sources import stack_of_urn

from .incli import embassy

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "pulumi"
Plan = dict[str, Any]
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared Pulumi fixtures not found at {FIXTURES}")


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return embassy(*args, cwd=cwd)


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def rec_named(plan: Plan, suffix: str, name: str) -> dict[str, Any]:
    return next(r for r in plan["resources"] if r["type"].endswith(suffix) and r["name"] == name)


# --------------------------------------------------------------------------- real engine output


@needs_fixtures
def test_engine_event_log_flags_the_security_group_opening_0_0_0_0() -> None:
    proc = run("review", str(FIXTURES / "engine-events-up.jsonl"), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    sg = "urn:pulumi:dev::eks::aws:ec2/securityGroup:SecurityGroup::eks-sg"
    assert out["changes"] == [{"urn": sg, "type": "aws:ec2/securityGroup:SecurityGroup", "op": "update", "embassy": "",
                               "keys": ["ingress[1].cidrBlocks[0]", "ingress[1].fromPort", "ingress[1].protocol",
                                        "ingress[1].self", "ingress[1].toPort"]}]
    weak = [w for w in out["weakening"] if w["control"] == "EMB-NET-01"]
    assert weak and weak[0]["urn"] == sg and weak[0]["message"] == "security group opens 22/tcp to 0.0.0.0/0"
    assert "80/tcp" not in weak[0]["message"]  # port 80 was open before: a finding, not a weakening
    assert {"control": "EMB-NET-01", "severity": "critical", "mandatory": True, "urn": sg,
            "message": "security group opens 22/tcp to 0.0.0.0/0", "type": "aws:ec2/securityGroup:SecurityGroup"} \
        in out["findings"]


@needs_fixtures
def test_engine_event_log_markdown_puts_the_weakening_first() -> None:
    proc = run("review", str(FIXTURES / "engine-events-up.jsonl"))
    assert proc.returncode == 1
    md = proc.stdout
    weak, findings, rest = (md.index("### Changes that weaken a control"), md.index("### Findings on head"),
                            md.index("<details>"))
    assert weak < findings < rest
    assert "security group opens 22/tcp to 0.0.0.0/0" in md[weak:findings]
    assert "| (stack-wide) | 0 | 1 | 0 | 0 | 0 |" in md


@needs_fixtures
def test_checkpoint_reads_without_error() -> None:
    src = read(str(FIXTURES / "checkpoint-v3.json"), ROOT, "rehearsal")
    assert src.kind == "checkpoint" and src.stack == "foo"
    assert len(src.state_after()) == 30
    topic = src.state_after()["urn:pulumi:foo::countdown::aws:sns/topic:Topic::countDown"]
    assert topic.type == "aws:sns/topic:Topic"
    proc = run("review", str(FIXTURES / "checkpoint-v3.json"), "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    assert json.loads(proc.stdout)["no_changes"] is True


# --------------------------------------------------------------------------- plans and exports of the rehearsal stack


def test_plan_against_itself_says_no_changes(tmp_path: Path, rehearsal_plan: Plan) -> None:
    plan = write(tmp_path / "plan.json", rehearsal_plan)
    proc = run("review", str(plan), str(plan))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No changes" in proc.stdout and "**Passes**" in proc.stdout


def _weakened(rehearsal_plan: Plan) -> Plan:
    head = copy.deepcopy(rehearsal_plan)
    rec_named(head, "BucketObjectLockConfiguration", "de-vault")["inputs"]["rule"]["defaultRetention"]["days"] = 30
    sg = rec_named(head, "securityGroup:SecurityGroup", "se-hosts")
    sg["inputs"]["ingress"] = [*sg["inputs"]["ingress"],
                               {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}]
    return head


def test_plan_review_shows_before_and_after(tmp_path: Path, rehearsal_plan: Plan) -> None:
    base = write(tmp_path / "base.json", rehearsal_plan)
    head = write(tmp_path / "head.json", _weakened(rehearsal_plan))
    r = review(read(str(base), ROOT, "rehearsal"), read(str(head), ROOT, "rehearsal"))
    assert r.exit_code == 1
    by_control = {w.control: w for w in r.weakenings}
    ret = by_control["EMB-S3-02"]
    assert f"{ret.before} → {ret.after}" == "vault retention 3650 days → 30 days"
    assert ret.embassy == "de" and ret.op == "update"
    assert by_control["EMB-NET-01"].message == "security group opens 22/tcp to 0.0.0.0/0"
    assert by_control["EMB-NET-01"].embassy == "se"
    assert r.summary["de"]["update"] == 1 and r.summary["se"]["update"] == 1
    md = render(r, "md")
    assert "vault retention 3650 days → 30 days" in md
    assert not any(w.control == "EMB-CHG-01" for w in r.weakenings)  # updates in place lose nothing


def test_moving_a_bucket_out_of_the_host_nation_is_a_replace_and_a_placement_breach(
        tmp_path: Path, rehearsal_plan: Plan) -> None:
    head = copy.deepcopy(rehearsal_plan)
    rec_named(head, "s3/bucket:Bucket", "de-vault")["inputs"]["region"] = "us-east-1"
    r = review(read(str(write(tmp_path / "b.json", rehearsal_plan)), ROOT, "rehearsal"),
               read(str(write(tmp_path / "h.json", head)), ROOT, "rehearsal"))
    assert [c.op for c in r.changes] == ["replace"]
    msgs = {w.control: w for w in r.weakenings}
    assert "moves to region us-east-1" in msgs["EMB-PLC-01"].message
    assert f"{msgs['EMB-PLC-01'].before} → {msgs['EMB-PLC-01'].after}" == "region eu-central-1 → us-east-1"
    assert msgs["EMB-CHG-01"].message == "vault de-vault replaced: data loss"


def test_deleting_a_key_is_data_loss(tmp_path: Path, rehearsal_plan: Plan) -> None:
    head = copy.deepcopy(rehearsal_plan)
    head["resources"].remove(rec_named(head, "kms/key:Key", "ie-key"))
    r = review(read(str(write(tmp_path / "b.json", rehearsal_plan)), ROOT, "rehearsal"),
               read(str(write(tmp_path / "h.json", head)), ROOT, "rehearsal"))
    assert r.exit_code == 1
    assert any(w.control == "EMB-CHG-01" and "key ie-key deleted" in w.message and w.embassy == "ie" for w in r.weakenings)


def _export(plan: Plan) -> dict[str, Any]:
    """The plan as `pulumi stack export` prints a deployment: provider references as `urn::id`, outputs beside inputs."""
    resources = []
    for rec in plan["resources"]:
        row = {k: v for k, v in rec.items() if k not in ("name", "provider")}
        row["inputs"] = {**rec["inputs"], "__defaults": []}
        row["outputs"] = dict(rec["inputs"])
        if rec.get("provider"):
            row["provider"] = rec["provider"]["urn"] + "::04da6b54-80e4-46f7-96ec-b56ff0331ba9"
        resources.append(row)
    return {"version": 3, "deployment": {"manifest": {"time": "2026-11-28T00:00:00Z"}, "secrets_providers": None,
                                         "resources": resources}}


def test_stack_exports_review_like_plans(tmp_path: Path, rehearsal_plan: Plan) -> None:
    base = write(tmp_path / "base-export.json", _export(rehearsal_plan))
    head = write(tmp_path / "head-export.json", _export(_weakened(rehearsal_plan)))
    src = read(str(base), ROOT, "rehearsal")
    assert src.kind == "export" and src.stack == "rehearsal" and src.model is not None
    proc = run("review", str(base), str(head), "--format", "json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert {(w["control"], w["embassy"]) for w in out["weakening"]} >= {("EMB-S3-02", "de"), ("EMB-NET-01", "se")}
    assert run("review", str(base), str(base)).returncode == 0


def test_preview_digest_replacing_a_vault_is_data_loss(tmp_path: Path, rehearsal_plan: Plan) -> None:
    steps = []
    for rec in rehearsal_plan["resources"]:
        state = {**rec, "provider": rec["provider"]["urn"] + "::id" if rec.get("provider") else ""}
        if rec["type"] == "aws:s3/bucket:Bucket" and rec["name"] == "se-vault":
            steps += [{"op": op, "urn": rec["urn"], "oldState": state, "newState": state,
                       "replaceReasons": ["objectLockEnabled"], "diffReasons": ["objectLockEnabled"],
                       "detailedDiff": {"objectLockEnabled": {"kind": "update-replace", "inputDiff": True}}}
                      for op in ("create-replacement", "replace", "delete-replaced")]
        else:
            steps.append({"op": "same", "urn": rec["urn"], "oldState": state, "newState": state})
    digest = write(tmp_path / "preview.json", {"config": {}, "steps": steps, "diagnostics": [], "duration": 1,
                                               "changeSummary": {"replace": 1, "same": len(steps) - 3}})
    proc = run("review", str(digest), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["changes"] == [{"urn": rec_named(rehearsal_plan, "s3/bucket:Bucket", "se-vault")["urn"],
                               "type": "aws:s3/bucket:Bucket", "op": "replace", "keys": ["objectLockEnabled"],
                               "embassy": "se"}]
    assert [f["message"] for f in out["findings"] if f["control"] == "EMB-CHG-01"] == ["vault se-vault replaced: data loss"]


# --------------------------------------------------------------------------- SARIF and bad input


def test_sarif_has_the_required_structure(tmp_path: Path, rehearsal_plan: Plan) -> None:
    base = write(tmp_path / "b.json", rehearsal_plan)
    head = write(tmp_path / "h.json", _weakened(rehearsal_plan))
    out_file = tmp_path / "review.sarif"
    proc = run("review", str(base), str(head), "--format", "sarif", "--out", str(out_file))
    assert proc.returncode == 1 and proc.stdout == ""
    sarif = json.loads(out_file.read_text())
    assert sarif["version"] == "2.1.0" and sarif["$schema"].endswith("sarif-2.1.0.json")
    run0 = sarif["runs"][0]
    rules = run0["tool"]["driver"]["rules"]
    assert run0["tool"]["driver"]["name"] and len({r["id"] for r in rules}) == len(rules) >= 25
    for rule in rules:
        assert rule["shortDescription"]["text"] and rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert run0["results"]
    for res in run0["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("none", "note", "warning", "error") and res["message"]["text"]
        logical = res["locations"][0]["logicalLocations"][0]
        assert logical["fullyQualifiedName"].startswith("urn:pulumi:rehearsal::")
        assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "Pulumi.rehearsal.yaml"
    retention = [r for r in run0["results"] if r["ruleId"] == "EMB-S3-02"]
    assert retention and retention[0]["level"] == "error" and "3650 days → 30 days" in retention[0]["message"]["text"]
    de_line = (ROOT / "Pulumi.rehearsal.yaml").read_text().splitlines().index("    - name: de") + 1
    assert retention[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == de_line


@pytest.mark.parametrize(("args", "words"), [
    (["no-such-file-or-ref"], "no such file or git ref"),
    (["--format", "xml", "x"], "unknown format 'xml'"),
])
def test_bad_input_exits_2_with_a_hint(args: list[str], words: str) -> None:
    proc = run("review", *args)
    assert proc.returncode == 2
    assert "error: " in proc.stderr and words in proc.stderr and "HINT: " in proc.stderr


def test_unknown_json_shape_exits_2(tmp_path: Path) -> None:
    proc = run("review", str(write(tmp_path / "odd.json", {"hello": "world"})))
    assert proc.returncode == 2 and "unknown format" in proc.stderr and "HINT:" in proc.stderr
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe not json")
    proc = run("review", str(tmp_path / "bin.json"))
    assert proc.returncode == 2 and "error:" in proc.stderr


def test_stack_of_urn() -> None:
    assert stack_of_urn("urn:pulumi:rehearsal::data-embassy::aws:s3/bucket:Bucket::x") == "rehearsal"
    assert stack_of_urn("not-a-urn") is None


def test_measures_say_which_way_is_weaker() -> None:
    from embassy.compliance import control
    from embassy.review.compare import regressed

    imds, retention, exposure = (control(c).measure for c in ("EMB-EC2-01", "EMB-S3-02", "EMB-NET-01"))
    assert imds and retention and exposure
    assert regressed(imds, True, False) and not regressed(imds, False, True)
    assert regressed(retention, 3650, 30) and not regressed(retention, 30, 3650)
    assert regressed(exposure, frozenset(), frozenset({"22/tcp to 0.0.0.0/0"}))
    assert not regressed(exposure, frozenset({"22/tcp to 0.0.0.0/0"}), frozenset())


def test_moving_an_embassy_region_replaces_its_vault_and_key(tmp_path: Path, rehearsal_plan: Plan) -> None:
    """de moves to the AWS European Sovereign Cloud: still Germany, but every de resource is rebuilt."""
    head = copy.deepcopy(rehearsal_plan)
    for rec in head["resources"]:
        if rec["type"] == "pulumi:providers:aws" and rec["name"] == "de":
            rec["inputs"]["region"] = "eusc-de-east-1"
        if isinstance(rec.get("provider"), dict) and rec["provider"]["urn"].endswith("providers:aws::de"):
            rec["provider"]["region"] = "eusc-de-east-1"
    r = review(read(str(write(tmp_path / "b.json", rehearsal_plan)), ROOT, "rehearsal"),
               read(str(write(tmp_path / "h.json", head)), ROOT, "rehearsal"))
    assert {c.op for c in r.changes} == {"replace"} and r.summary["de"]["replace"] == len(r.changes)
    loss = sorted(w.message for w in r.weakenings if w.control == "EMB-CHG-01")
    assert loss == ["key de-key replaced: data encrypted under it becomes unreadable (data loss)",
                    "log bucket de-audit-logs replaced: evidence loss", "vault de-vault replaced: data loss"]
    assert not any(w.control == "EMB-PLC-01" for w in r.weakenings)  # still in Germany


def test_preview_digest_with_unknown_setting_and_no_sames(tmp_path: Path) -> None:
    """A real preview hides unchanged resources and prints unknown values as a sentinel."""
    urn = "urn:pulumi:rehearsal::data-embassy::data-embassy:index:Embassy$data-embassy:infra:Keys$aws:kms/key:Key::de-new"
    unknown = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    state = {"urn": urn, "type": "aws:kms/key:Key", "custom": True,
             "inputs": {"enableKeyRotation": unknown, "policy": unknown}}
    digest = write(tmp_path / "p.json", {"steps": [{"op": "create", "urn": urn, "newState": state, "detailedDiff": None}],
                                         "changeSummary": {"create": 1, "same": 140}})
    proc = run("review", str(digest), "--format", "json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert [f["message"] for f in out["findings"] if f["control"] == "EMB-KMS-01"] == [
        "enableKeyRotation is unknown at preview; mandatory control EMB-KMS-01 needs it known "
        "(set it from configuration, not from another resource's output)"]
    assert not any(f["control"] == "EMB-KMS-02" for f in out["findings"])  # a policy document: judged once known
    assert out["notes"] and "stack-wide controls were not evaluated" in out["notes"][0]


def test_event_log_policy_events_become_notes(tmp_path: Path) -> None:
    urn = "urn:pulumi:dev::p::aws:ec2/vpc:Vpc::v"
    events = [
        {"sequence": 1, "timestamp": 1, "resourcePreEvent": {"metadata": {
            "op": "create", "urn": urn, "type": "aws:ec2/vpc:Vpc", "old": None,
            "new": {"urn": urn, "type": "aws:ec2/vpc:Vpc", "inputs": {"cidrBlock": "10.0.0.0/16"}}}}},
        {"sequence": 2, "timestamp": 1, "policyEvent": {"resourceUrn": urn, "message": "VPC has no flow log",
                                                        "policyName": "EMB-NET-04", "policyPackName": "data-embassy",
                                                        "enforcementLevel": "mandatory"}},
    ]
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    out = json.loads(run("review", str(log), "--format", "json").stdout)
    assert out["notes"] == [f"policy pack data-embassy: EMB-NET-04 (mandatory) on {urn}: VPC has no flow log"]
    assert [(c["op"], c["urn"]) for c in out["changes"]] == [("create", urn)]
    assert any(w["control"] == "EMB-NET-04" and w["before"] == "absent" for w in out["weakening"])


def test_empty_file_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text("")
    proc = run("review", str(tmp_path / "empty.json"))
    assert proc.returncode == 2 and "unknown format" in proc.stderr
