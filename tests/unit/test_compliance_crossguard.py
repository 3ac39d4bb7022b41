"""The CrossGuard pack: its policies come from the catalog, and `validate` judges real plan resources.

Never imports policies/__main__.py: constructing a PolicyPack starts a gRPC server and blocks.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import (
    UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_STRING_VALUE,
    UnknownValueError,
    unknown_checking_proxy,
)

from embassy import model
from embassy.compliance import controls
from embassy.compliance.catalog import Scope
from embassy.compliance.crossguard import policies

ROOT = Path(__file__).resolve().parents[2]
Plan = dict[str, Any]


@pytest.fixture(scope="module")
def pack() -> dict[str, Any]:
    return {p.name: p for p in policies(model.load_stack("rehearsal", ROOT), from_engine=False)}


def _opts(rec: dict[str, Any]) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=bool(rec.get("protect")), ignore_changes=[], delete_before_replace=None,
                                 aliases=[], custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[],
                                 parent=rec.get("parent"))


def _providers(plan: Plan) -> dict[str, PolicyProviderResource]:
    return {r["urn"]: PolicyProviderResource(r["type"], unknown_checking_proxy(r["inputs"]), r["urn"], r["name"])
            for r in plan["resources"] if r["type"].startswith("pulumi:providers:")}


def resource_args(rec: dict[str, Any], providers: dict[str, PolicyProviderResource]) -> ResourceValidationArgs:
    prov = providers.get(rec["provider"]["urn"]) if rec.get("provider") else None
    return ResourceValidationArgs(rec["type"], unknown_checking_proxy(copy.deepcopy(rec["inputs"])), rec["urn"],
                                  rec["name"], _opts(rec), prov)


def stack_args(plan: Plan) -> StackValidationArgs:
    providers = _providers(plan)
    built: dict[str, PolicyResource] = {}
    for rec in plan["resources"]:
        prov = providers.get(rec["provider"]["urn"]) if rec.get("provider") else None
        built[rec["urn"]] = PolicyResource(rec["type"], unknown_checking_proxy(copy.deepcopy(rec["inputs"])), rec["urn"],
                                           rec["name"], _opts(rec), prov, None, [], {})
    for rec in plan["resources"]:
        res = built[rec["urn"]]
        res.parent = built.get(rec["parent"]) if rec.get("parent") else None
        res.dependencies = [built[d] for d in rec.get("dependencies", []) if d in built]
    return StackValidationArgs(list(built.values()))


def run_pack(pack: dict[str, Any], plan: Plan) -> list[tuple[str, str, str]]:
    """Every policy over every resource of a plan, as the engine would call them: (policy, urn, message)."""
    violations: list[tuple[str, str, str]] = []
    providers = _providers(plan)
    sargs = stack_args(plan)
    for name, policy in pack.items():
        if isinstance(policy, StackValidationPolicy):
            policy.validate(sargs, lambda msg, urn=None, n=name: violations.append((n, urn or "", msg)))
            continue
        for rec in plan["resources"]:
            args = resource_args(rec, providers)
            policy.validate(args, lambda msg, urn=None, n=name, u=rec["urn"]: violations.append((n, u, msg)))
    return violations


def test_pack_has_one_policy_per_judgeable_control(pack: dict[str, Any]) -> None:
    expected = {c.id: c for c in controls() if c.scope is not Scope.CHANGE}
    assert set(pack) == set(expected)
    for cid, c in expected.items():
        policy = pack[cid]
        want_type = ResourceValidationPolicy if c.scope is Scope.RESOURCE else StackValidationPolicy
        assert isinstance(policy, want_type)
        assert policy.enforcement_level == (EnforcementLevel.MANDATORY if c.mandatory else EnforcementLevel.ADVISORY)
        assert policy.severity is not None and policy.severity.value == c.severity.value


def test_pack_main_builds_its_pack_from_the_catalog_module() -> None:
    tree = ast.parse((ROOT / "policies" / "__main__.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "embassy.compliance.crossguard" in imported
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"PolicyPack", "policies"} <= calls
    assert "runtime:" in (ROOT / "policies" / "PulumiPolicy.yaml").read_text()


def test_shipped_plan_passes_every_mandatory_policy(pack: dict[str, Any], rehearsal_plan: Plan) -> None:
    mandatory = {c.id for c in controls() if c.mandatory}
    assert [v for v in run_pack(pack, rehearsal_plan) if v[0] in mandatory] == []


def test_broken_plan_fails_resource_and_stack_policies(pack: dict[str, Any], rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    for rec in plan["resources"]:
        if rec["name"] == "de-hosts" and rec["type"].endswith("SecurityGroup"):
            rec["inputs"]["ingress"] = [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}]
        if rec["name"] == "de-vault" and rec["type"].endswith("BucketPublicAccessBlock"):
            plan["resources"].remove(rec)
    got = run_pack(pack, plan)
    assert ("EMB-NET-01", next(r["urn"] for r in plan["resources"] if r["name"] == "de-hosts"),
            "security group opens 22/tcp to 0.0.0.0/0") in got
    assert any(v[0] == "EMB-S3-05" and v[1].endswith("Bucket::de-vault") for v in got)


def _validate(policy: Any, rtype: str, props: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    args = ResourceValidationArgs(rtype, unknown_checking_proxy(props), f"urn:pulumi:s::p::{rtype}::x", "x",
                                  _opts({}), None)
    policy.validate(args, lambda msg, urn=None: seen.append(msg))
    return seen


@pytest.mark.parametrize(("control_id", "rtype", "props"), [
    ("EMB-EC2-01", "aws:ec2/instance:Instance", {"metadataOptions": {"httpTokens": UNKNOWN_STRING_VALUE}}),
    ("EMB-KMS-01", "aws:kms/key:Key", {"enableKeyRotation": UNKNOWN_BOOLEAN_VALUE}),
    ("EMB-S3-02", "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration",
     {"rule": {"defaultRetention": {"mode": "COMPLIANCE", "days": UNKNOWN_NUMBER_VALUE}}}),
    ("EMB-NET-01", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", {"cidrIpv4": UNKNOWN_STRING_VALUE}),
])
def test_mandatory_control_fails_on_an_unknown_setting(pack: dict[str, Any], control_id: str, rtype: str,
                                                       props: dict[str, Any]) -> None:
    """Pulumi would make these advisory ("can't run policy during preview"); the pack reports a violation."""
    seen = _validate(pack[control_id], rtype, props)
    assert len(seen) == 1 and "unknown at preview" in seen[0] and control_id in seen[0]


def test_unknown_reference_keeps_pulumis_advisory(pack: dict[str, Any]) -> None:
    """A policy document built from ARNs not created yet is judged later: Pulumi's own UnknownValueError."""
    with pytest.raises(UnknownValueError):
        _validate(pack["EMB-IAM-02"], "aws:iam/rolePolicy:RolePolicy", {"policy": UNKNOWN_STRING_VALUE, "role": "r"})
    # an unknown key ARN is a reference to a key: the trail is encrypted with *some* customer key
    assert _validate(pack["EMB-ENC-05"], "aws:cloudtrail/trail:Trail", {"kmsKeyId": UNKNOWN_STRING_VALUE}) == []


def test_advisory_control_with_unknown_setting_keeps_pulumis_advisory(pack: dict[str, Any]) -> None:
    with pytest.raises(UnknownValueError):
        _validate(pack["EMB-NET-05"], "aws:ec2/flowLog:FlowLog", {"trafficType": UNKNOWN_STRING_VALUE})


def test_known_values_decide(pack: dict[str, Any]) -> None:
    assert _validate(pack["EMB-EC2-01"], "aws:ec2/instance:Instance", {"metadataOptions": {"httpTokens": "required"}}) == []
    assert _validate(pack["EMB-EC2-01"], "aws:ec2/instance:Instance", {"metadataOptions": {"httpTokens": "optional"}})
    # a policy never judges a type it does not cover
    assert _validate(pack["EMB-EC2-01"], "aws:s3/bucket:Bucket", {}) == []
