"""Each control fails on a real plan of Pulumi.rehearsal.yaml made to break it, and passes on the plan as shipped."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embassy import model
from embassy.compliance import Context, controls, evaluate
from embassy.compliance.catalog import Scope
from embassy.compliance.evaluate import resources_of_plan

ROOT = Path(__file__).resolve().parents[2]
Plan = dict[str, Any]


def find(plan: Plan, rtype: str, name: str) -> dict[str, Any]:
    for rec in plan["resources"]:
        if rec["type"].endswith(rtype) and rec["name"] == name:
            return rec
    raise AssertionError(f"no {rtype} named {name} in the plan")


def doc(rec: dict[str, Any], key: str = "policy") -> dict[str, Any]:
    return json.loads(rec["inputs"][key])


def set_doc(rec: dict[str, Any], value: dict[str, Any], key: str = "policy") -> None:
    rec["inputs"][key] = json.dumps(value)


def add(plan: Plan, rtype: str, name: str, inputs: dict[str, Any], like: str = "de-vpc") -> None:
    """A new resource in embassy de, on de's provider, beside the resource `like`."""
    sib = next(r for r in plan["resources"] if r["name"] == like)
    urn = sib["urn"].rsplit("$", 1)[0] + f"${rtype}::{name}"
    plan["resources"].append({**copy.deepcopy(sib), "urn": urn, "type": rtype, "name": name, "inputs": inputs,
                              "dependencies": []})


def drop(plan: Plan, rtype: str, name: str) -> None:
    rec = find(plan, rtype, name)
    plan["resources"].remove(rec)


def _ingress(plan: Plan, cidr: str, port: int = 22, v6: bool = False) -> None:
    rec = find(plan, "securityGroup:SecurityGroup", "de-hosts")
    rule = {"fromPort": port, "toPort": port, "protocol": "tcp", ("ipv6CidrBlocks" if v6 else "cidrBlocks"): [cidr]}
    rec["inputs"]["ingress"] = [*rec["inputs"].get("ingress", []), rule]


def _kms_principal(plan: Plan, principal: Any) -> None:
    rec = find(plan, "kms/key:Key", "de-key")
    policy = doc(rec)
    policy["Statement"].append({"Effect": "Allow", "Principal": principal, "Action": "kms:Decrypt", "Resource": "*"})
    set_doc(rec, policy)


def _agent_allows(plan: Plan, action: str, resource: str = "arn:aws:s3:::de-vault/*") -> None:
    rec = find(plan, "rolePolicy:RolePolicy", "de-agent-vault")
    policy = doc(rec)
    policy["Statement"].append({"Effect": "Allow", "Action": action, "Resource": resource})
    set_doc(rec, policy)


def _move_de(plan: Plan, region: str) -> None:
    for rec in plan["resources"]:
        if rec["type"] == "pulumi:providers:aws" and rec["name"] == "de":
            rec["inputs"]["region"] = region
        if isinstance(rec.get("provider"), dict) and rec["provider"]["urn"].endswith("pulumi:providers:aws::de"):
            rec["provider"]["region"] = region


def _default_tags(plan: Plan, drop_key: str) -> None:
    prov = find(plan, "providers:aws", "de")
    tags = json.loads(prov["inputs"]["defaultTags"])
    del tags["tags"][drop_key]
    prov["inputs"]["defaultTags"] = json.dumps(tags)


def _lock(plan: Plan, **retention: Any) -> None:
    find(plan, "bucketObjectLockConfiguration:BucketObjectLockConfiguration", "de-vault")["inputs"]["rule"][
        "defaultRetention"].update(retention)


def _sse(plan: Plan, **default: Any) -> None:
    rule = find(plan, "bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "de-vault")
    rule["inputs"]["rules"][0]["applyServerSideEncryptionByDefault"].update(default)


def _drop_tls(plan: Plan) -> None:
    rec = find(plan, "bucketPolicy:BucketPolicy", "de-vault")
    policy = doc(rec)
    policy["Statement"] = [s for s in policy["Statement"] if s.get("Effect") != "Deny"]
    set_doc(rec, policy)


def _inst(plan: Plan) -> dict[str, Any]:
    return find(plan, "instance:Instance", "de-host-1")["inputs"]


def _no_default_provider(plan: Plan) -> None:
    rec = find(plan, "s3/bucket:Bucket", "de-vault")
    rec["provider"] = None


# control id -> (mutation that breaks it, words the finding must say)
BREAKS: dict[str, tuple[Callable[[Plan], None], str]] = {
    "EMB-ENC-01": (lambda p: _sse(p, sseAlgorithm="AES256"), "AES256"),
    "EMB-ENC-02": (lambda p: drop(p, "BucketServerSideEncryptionConfiguration", "de-vault"), "no default-encryption"),
    "EMB-ENC-03": (lambda p: _inst(p)["rootBlockDevice"].update(encrypted=False), "rootBlockDevice is not encrypted"),
    "EMB-ENC-04": (lambda p: _inst(p)["rootBlockDevice"].pop("kmsKeyId"), "aws/ebs"),
    "EMB-ENC-05": (lambda p: find(p, "trail:Trail", "de-trail")["inputs"].pop("kmsKeyId"), "not encrypted"),
    "EMB-ENC-06": (lambda p: find(p, "logGroup:LogGroup", "de-flow-logs")["inputs"].pop("kmsKeyId"), "not encrypted"),
    "EMB-KMS-01": (lambda p: find(p, "key:Key", "de-key")["inputs"].update(enableKeyRotation=False), "rotation is off"),
    "EMB-KMS-02": (lambda p: _kms_principal(p, {"AWS": "arn:aws:iam::999988887777:root"}), "999988887777"),
    "EMB-KMS-03": (lambda p: find(p, "key:Key", "de-key")["inputs"].update(deletionWindowInDays=7), "7 days"),
    "EMB-KMS-04": (lambda p: find(p, "key:Key", "de-key")["inputs"].update(multiRegion=True), "multi-Region"),
    "EMB-S3-01": (lambda p: find(p, "s3/bucket:Bucket", "de-vault")["inputs"].update(objectLockEnabled=False),
                  "without Object Lock"),
    "EMB-S3-02": (lambda p: _lock(p, days=30), "vault retention 30 days is below the configured 3650 days"),
    "EMB-S3-03": (lambda p: drop(p, "BucketObjectLockConfiguration", "de-vault"), "no default retention"),
    "EMB-S3-04": (lambda p: find(p, "BucketVersioning", "de-vault")["inputs"].update(
        versioningConfiguration={"status": "Suspended"}), "Suspended"),
    "EMB-S3-05": (lambda p: find(p, "BucketPublicAccessBlock", "de-vault")["inputs"].update(blockPublicPolicy=False),
                  "blockPublicPolicy"),
    "EMB-S3-06": (_drop_tls, "without TLS"),
    "EMB-S3-07": (lambda p: find(p, "s3/bucket:Bucket", "de-vault")["inputs"].update(forceDestroy=True), "forceDestroy"),
    "EMB-IAM-01": (lambda p: _agent_allows(p, "s3:Delete*"), "s3:DeleteObjectVersion"),
    "EMB-IAM-02": (lambda p: _agent_allows(p, "*", "*"), '"*" on "*"'),
    "EMB-IAM-03": (lambda p: _agent_allows(p, "kms:*Grant*", "*"), "kms:CreateGrant"),
    "EMB-IAM-04": (lambda p: find(p, "rolePolicyAttachment:RolePolicyAttachment", "de-host-ssm")["inputs"].update(
        policyArn="arn:aws:iam::aws:policy/ReadOnlyAccess"), "AWS managed policy ReadOnlyAccess"),
    "EMB-EC2-01": (lambda p: _inst(p)["metadataOptions"].update(httpTokens="optional"), "IMDSv1"),
    "EMB-EC2-02": (lambda p: _inst(p).update(associatePublicIpAddress=True), "public IP"),
    "EMB-EC2-03": (lambda p: find(p, "subnet:Subnet", "de-private-eu-central-1a")["inputs"].update(mapPublicIpOnLaunch=True),
                   "public IPs on launch"),
    "EMB-EC2-04": (lambda p: _inst(p).update(keyName="ops-laptop"), "ops-laptop"),
    "EMB-NET-01": (lambda p: _ingress(p, "0.0.0.0/0"), "opens 22/tcp to 0.0.0.0/0"),
    "EMB-NET-02": (lambda p: _ingress(p, "198.51.100.0/24"), "198.51.100.0/24"),
    "EMB-NET-03": (lambda p: add(p, "aws:ec2/internetGateway:InternetGateway", "de-igw", {"vpcId": "vpc-1"}), "de-igw"),
    "EMB-NET-04": (lambda p: drop(p, "flowLog:FlowLog", "de-flow-logs"), "no flow log"),
    "EMB-NET-05": (lambda p: find(p, "flowLog:FlowLog", "de-flow-logs")["inputs"].update(trafficType="REJECT"), "REJECT"),
    "EMB-NET-06": (lambda p: find(p, "defaultSecurityGroup:DefaultSecurityGroup", "de-default-sg")["inputs"].update(
        ingress=[{"protocol": "-1", "fromPort": 0, "toPort": 0, "self": True}]), "allows traffic"),
    "EMB-LOG-01": (lambda p: drop(p, "trail:Trail", "de-trail"), "no CloudTrail trail for embassy de"),
    "EMB-LOG-02": (lambda p: find(p, "trail:Trail", "de-trail")["inputs"].update(enableLogFileValidation=False),
                   "validation is off"),
    "EMB-LOG-04": (lambda p: find(p, "trail:Trail", "de-trail")["inputs"].pop("eventSelectors"), "data) events"),
    "EMB-LOG-05": (lambda p: find(p, "logGroup:LogGroup", "de-flow-logs")["inputs"].update(retentionInDays=30), "30 days"),
    "EMB-PLC-01": (lambda p: _move_de(p, "us-east-1"), "us-east-1, located in United States (US), outside host nation DE"),
    "EMB-PLC-02": (_no_default_provider, "default provider"),
    "EMB-TAG-01": (lambda p: _default_tags(p, "data-embassy:nation"), "missing tags: nation"),
    "EMB-CHG-02": (lambda p: find(p, "s3/bucket:Bucket", "de-vault").update(protect=False, retainOnDelete=False),
                   "not protected"),
}
def _role_policy_allows(plan: Plan, name: str, action: str, resource: str) -> None:
    rec = find(plan, "rolePolicy:RolePolicy", name)
    policy = doc(rec)
    policy["Statement"].append({"Effect": "Allow", "Action": action, "Resource": resource})
    set_doc(rec, policy)


BREAKS["EMB-HST-01"] = (lambda p: _role_policy_allows(p, "de-host-vault-read", "s3:PutObject", "arn:aws:s3:::x/*"),
                        "s3:PutObject")
BREAKS["EMB-CUS-01"] = (lambda p: _role_policy_allows(p, "de-custody-vault", "s3:PutObject", "arn:aws:s3:::de-v/*"),
                        "arn:aws:s3:::de-v/*")
# Advisory controls the shipped stack does not meet (by design), and what makes them pass.
FIXES: dict[str, Callable[[Plan], None]] = {
    "EMB-LOG-03": lambda p: [r["inputs"].update(isMultiRegionTrail=True) for r in p["resources"] if r["type"].endswith("Trail")],
}
BREAKS["EMB-LOG-03"] = (lambda p: None, "only its own region")


def findings(plan: Plan, deployment: model.Deployment | None = None) -> list[Any]:
    dep = deployment or model.load_stack(plan["stack"], ROOT)
    return evaluate(Context.of(resources_of_plan(plan), dep))


def test_every_resource_and_stack_control_has_a_failing_case() -> None:
    judged = {c.id for c in controls() if c.scope is not Scope.CHANGE}
    assert judged == set(BREAKS), "each control needs a case that makes it fail"


@pytest.mark.parametrize("control_id", sorted(BREAKS))
def test_control_fails_on_a_broken_plan(rehearsal_plan: Plan, control_id: str) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    mutate, words = BREAKS[control_id]
    mutate(plan)
    hits = [f for f in findings(plan) if f.control == control_id]
    assert hits, f"{control_id} did not fail"
    assert any(words in f.message for f in hits), [f.message for f in hits]
    assert all(f.mandatory == next(c.mandatory for c in controls() if c.id == control_id) for f in hits)


@pytest.mark.parametrize("control_id", sorted(BREAKS))
def test_control_passes_on_the_shipped_plan(rehearsal_plan: Plan, control_id: str) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    FIXES.get(control_id, lambda p: None)(plan)
    assert [f.message for f in findings(plan) if f.control == control_id] == []


def test_shipped_plans_have_no_mandatory_finding(rehearsal_plan: Plan, production_plan: Plan) -> None:
    for plan in (rehearsal_plan, production_plan):
        assert [f for f in findings(plan) if f.mandatory] == []


def test_kms_wildcard_principal_fails(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    _kms_principal(plan, "*")
    assert any(f.control == "EMB-KMS-02" and "allows *" in f.message for f in findings(plan))


def test_ipv6_open_ingress_fails(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    _ingress(plan, "::/0", 443, v6=True)
    assert any(f.control == "EMB-NET-01" and "443/tcp to ::/0" in f.message for f in findings(plan))


def test_admin_cidr_of_the_embassy_is_accepted(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    _ingress(plan, "203.0.113.0/28")  # se's admin network, not de's
    de_hits = [f for f in findings(plan) if f.control == "EMB-NET-02"]
    assert de_hits and "203.0.113.0/28" in de_hits[0].message
    dep = model.load_stack("rehearsal", ROOT)
    emb = dep.embassy("de").model_copy(update={"admin_cidrs": ("203.0.113.0/28",)})
    dep2 = dep.model_copy(update={"embassies": (emb, *[e for e in dep.embassies if e.name != "de"])})
    assert [f for f in findings(plan, dep2) if f.control == "EMB-NET-02"] == []


def test_config_retention_above_the_plan_fails(rehearsal_plan: Plan) -> None:
    """The stack config, not the plan, says how long: a config asking for more than the vault keeps fails."""
    dep = model.load_stack("rehearsal", ROOT)
    emb = dep.embassy("se").model_copy(update={"retention_days": 4000})
    longer = dep.model_copy(update={"embassies": tuple(emb if e.name == "se" else e for e in dep.embassies)})
    hits = [f for f in findings(rehearsal_plan, longer) if f.control == "EMB-S3-02"]
    assert {f.urn.rsplit("::", 1)[-1] for f in hits} == {"se-vault", "se-audit-logs"}
    assert "below the configured 4000 days" in hits[0].message


def test_break_glass_is_the_only_exception_to_iam_01(rehearsal_plan: Plan) -> None:
    """The break-glass policy, re-attached to the agent role, is no exception: the role decides, not the name."""
    plan = copy.deepcopy(rehearsal_plan)
    bg = find(plan, "rolePolicy:RolePolicy", "de-break-glass-vault")
    agent, glass = find(plan, "iam/role:Role", "de-agent"), find(plan, "iam/role:Role", "de-break-glass")
    bg["dependencies"] = [agent["urn"] if d == glass["urn"] else d for d in bg["dependencies"]]
    hits = [f for f in findings(plan) if f.control == "EMB-IAM-01"]
    assert hits and hits[0].urn == bg["urn"] and "s3:DeleteObjectVersion" in hits[0].message


@pytest.mark.parametrize(("policy", "control_id", "words"), [
    ("AmazonS3FullAccess", "EMB-IAM-01", "AmazonS3FullAccess (AWS managed)"),
    ("AdministratorAccess", "EMB-IAM-02", "AdministratorAccess"),
])
def test_managed_policy_attachments_count(rehearsal_plan: Plan, policy: str, control_id: str, words: str) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    ssm = find(plan, "rolePolicyAttachment:RolePolicyAttachment", "de-host-ssm")
    ssm["inputs"]["policyArn"] = f"arn:aws:iam::aws:policy/{policy}"
    hits = [f for f in findings(plan) if f.control == control_id]
    assert hits and words in hits[0].message and hits[0].urn == ssm["urn"]


def test_vault_encrypted_with_another_embassys_key_fails(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    sse = find(plan, "BucketServerSideEncryptionConfiguration", "de-vault")
    de_key, se_key = (find(plan, "kms/key:Key", n)["urn"] for n in ("de-key", "se-key"))
    sse["dependencies"] = [se_key if d == de_key else d for d in sse["dependencies"]]
    hits = [f for f in findings(plan) if f.control == "EMB-ENC-01"]
    assert [h.message for h in hits] == ["rules[0] uses the key of embassy se, not de's"]
