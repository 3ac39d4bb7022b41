"""No exemption by name: grants disguised as break-glass fail, from the plan, a stack export and the CrossGuard pack.

Also EMB-NET-01 over the union of an embassy's sources: the internet opened in halves is a mandatory finding.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    StackValidationArgs,
)
from pulumi_policy.proxy import unknown_checking_proxy

from embassy import model
from embassy.compliance import Context, evaluate
from embassy.compliance.crossguard import policies
from embassy.compliance.evaluate import resources_of_plan
from embassy.review import read, review

ROOT = Path(__file__).resolve().parents[2]
Plan = dict[str, Any]
VAULT_ARN = "arn:aws:s3:::de-vault-0a1b2c3"
DESTROY = ["s3:DeleteObjectVersion", "s3:PutObjectRetention", "s3:PutBucketObjectLockConfiguration"]


def find(plan: Plan, rtype: str, name: str) -> dict[str, Any]:
    return next(r for r in plan["resources"] if r["type"].endswith(rtype) and r["name"] == name)


def _policy_on(plan: Plan, role_name: str, name: str) -> dict[str, Any]:
    """A new inline policy `name` on the role `role_name`, granting version deletion and lock changes on the vault."""
    role = find(plan, "iam/role:Role", role_name)
    like = find(plan, "rolePolicy:RolePolicy", "de-agent-vault")
    urn = like["urn"].rsplit("::", 1)[0] + f"::{name}"
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": DESTROY,
                                                   "Resource": [VAULT_ARN, f"{VAULT_ARN}/*"]}]}
    rec = {**copy.deepcopy(like), "urn": urn, "name": name, "dependencies": [role["urn"]],
           "inputs": {"role": f"{role_name}-4d5e6f7", "policy": json.dumps(doc)}}
    plan["resources"].append(rec)
    return rec


def disguise(plan: Plan) -> str:
    """Issue 12's case: a policy called …-break-glass-… attached to the agent role."""
    return _policy_on(plan, "de-agent", "de-break-glass-override")["urn"]


def forged_tag(plan: Plan) -> str:
    """Our variant: the agent role itself tagged break-glass; its trust policy still is the agent's."""
    role = find(plan, "iam/role:Role", "de-agent")
    role["inputs"]["tags"] = {**role["inputs"].get("tags", {}), "data-embassy:role": "break-glass"}
    return _policy_on(plan, "de-agent", "de-emergency")["urn"]


def managed_on_agent(plan: Plan) -> str:
    """Another variant: a managed policy implying s3:* (AWSLambda_FullAccess) attached to the agent role."""
    role = find(plan, "iam/role:Role", "de-agent")
    like = find(plan, "rolePolicyAttachment:RolePolicyAttachment", "de-host-ssm")
    urn = like["urn"].rsplit("::", 1)[0] + "::de-break-glass-lambda"
    plan["resources"].append({**copy.deepcopy(like), "urn": urn, "name": "de-break-glass-lambda",
                              "dependencies": [role["urn"]],
                              "inputs": {"role": "de-agent-4d5e6f7",
                                         "policyArn": "arn:aws:iam::aws:policy/AWSLambda_FullAccess"}})
    return urn


CASES: dict[str, Callable[[Plan], str]] = {"disguise": disguise, "forged-tag": forged_tag,
                                           "managed-on-agent": managed_on_agent}


def export(plan: Plan) -> dict[str, Any]:
    """The plan as `pulumi stack export` writes it: provider `urn::id`, outputs beside inputs, false flags omitted."""
    rows = []
    for rec in plan["resources"]:
        row = {k: v for k, v in rec.items() if k not in ("name", "provider", "protect", "retainOnDelete")}
        row.update({k: True for k in ("protect", "retainOnDelete") if rec.get(k)})
        row["inputs"] = {**rec["inputs"], "__defaults": []}
        row["outputs"] = dict(rec["inputs"])
        if rec.get("provider"):
            row["provider"] = rec["provider"]["urn"] + "::5d1f0c2e-7a3b-4c9d-8e6f-0a1b2c3d4e5f"
        rows.append(row)
    return {"version": 3, "deployment": {"manifest": {"time": "2026-12-01T00:00:00Z"}, "resources": rows}}


def write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def iam_findings(plan: Plan) -> list[Any]:
    dep = model.load_stack("rehearsal", ROOT)
    return [f for f in evaluate(Context.of(resources_of_plan(plan), dep)) if f.control == "EMB-IAM-01"]


def test_shipped_break_glass_is_exempt_and_reported(tmp_path: Path, rehearsal_plan: Plan) -> None:
    assert iam_findings(rehearsal_plan) == []
    r = review(read(write(tmp_path / "b.json", rehearsal_plan), ROOT, "rehearsal"),
               read(write(tmp_path / "h.json", rehearsal_plan), ROOT, "rehearsal"))
    assert r.exit_code == 0
    assert sorted(n.split()[2] for n in r.notes if n.startswith("break-glass role")) == \
        ["de-break-glass", "ie-break-glass", "se-break-glass"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_disguised_grant_fails_from_the_plan(tmp_path: Path, rehearsal_plan: Plan, case: str) -> None:
    head = copy.deepcopy(rehearsal_plan)
    urn = CASES[case](head)
    hits = [f for f in iam_findings(head) if f.urn == urn]
    assert hits and hits[0].mandatory
    r = review(read(write(tmp_path / "b.json", rehearsal_plan), ROOT, "rehearsal"),
               read(write(tmp_path / "h.json", head), ROOT, "rehearsal"))
    assert r.exit_code == 1
    assert any(w.control == "EMB-IAM-01" and w.urn == urn and w.mandatory for w in r.weakenings)


@pytest.mark.parametrize("case", sorted(CASES))
def test_disguised_grant_fails_from_a_stack_export(tmp_path: Path, rehearsal_plan: Plan, case: str) -> None:
    head = copy.deepcopy(rehearsal_plan)
    urn = CASES[case](head)
    base_src = read(write(tmp_path / "base.json", export(rehearsal_plan)), ROOT, "rehearsal")
    head_src = read(write(tmp_path / "head.json", export(head)), ROOT, "rehearsal")
    assert review(base_src, base_src).exit_code == 0  # the shipped state passes as an export too
    r = review(base_src, head_src)
    assert r.exit_code == 1
    assert any(f.control == "EMB-IAM-01" and f.urn == urn and f.mandatory for f in r.findings)


def _stack_args(plan: Plan) -> StackValidationArgs:
    opts = PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                 custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[], parent=None)
    provs = {r["urn"]: PolicyProviderResource(r["type"], unknown_checking_proxy(r["inputs"]), r["urn"], r["name"])
             for r in plan["resources"] if r["type"].startswith("pulumi:providers:")}
    built = {r["urn"]: PolicyResource(r["type"], unknown_checking_proxy(copy.deepcopy(r["inputs"])), r["urn"], r["name"],
                                      opts, provs.get(r["provider"]["urn"]) if r.get("provider") else None, None, [], {})
             for r in plan["resources"]}
    for r in plan["resources"]:
        built[r["urn"]].dependencies = [built[d] for d in r.get("dependencies", []) if d in built]
    return StackValidationArgs(list(built.values()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_disguised_grant_fails_in_the_crossguard_pack(rehearsal_plan: Plan, case: str) -> None:
    pack = {p.name: p for p in policies(model.load_stack("rehearsal", ROOT), from_engine=False)}
    policy = pack["EMB-IAM-01"]
    seen: list[tuple[str, str]] = []
    policy.validate(_stack_args(rehearsal_plan), lambda msg, urn=None: seen.append((urn or "", msg)))
    assert seen == []  # the shipped break-glass policies are exempt
    head = copy.deepcopy(rehearsal_plan)
    urn = CASES[case](head)
    policy.validate(_stack_args(head), lambda msg, urn=None: seen.append((urn or "", msg)))
    assert [u for u, _ in seen] == [urn]
    assert policy.enforcement_level.value == "mandatory"


def test_grant_that_cannot_be_tied_to_a_role_fails_closed(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    bg = find(plan, "rolePolicy:RolePolicy", "de-break-glass-vault")
    bg["dependencies"] = [d for d in bg["dependencies"] if "iam/role:Role" not in d]
    bg["inputs"]["role"] = "de-break-glass-0000000"  # a name only: no role of the stack answers to it
    assert [f.urn for f in iam_findings(plan)] == [bg["urn"]]


def test_untagged_object_lock_bucket_is_judged_as_a_vault(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    vault = find(plan, "s3/bucket:Bucket", "de-vault")
    vault["inputs"].pop("tags")
    lock = find(plan, "BucketObjectLockConfiguration", "de-vault")
    lock["inputs"]["rule"]["defaultRetention"]["days"] = 1
    dep = model.load_stack("rehearsal", ROOT)
    found = evaluate(Context.of(resources_of_plan(plan), dep))
    assert any(f.control == "EMB-S3-02" and f.urn == lock["urn"] for f in found)


# --------------------------------------------------------------------------- the internet opened in pieces


def _halves(plan: Plan) -> list[str]:
    """Two separate ingress-rule resources of embassy de, each opening SSH to one half of the IPv4 internet."""
    sg = find(plan, "securityGroup:SecurityGroup", "de-hosts")
    urns = []
    for i, half in enumerate(("0.0.0.0/1", "128.0.0.0/1")):
        urn = sg["urn"].rsplit("$", 1)[0] + f"$aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule::de-ssh-{i}"
        plan["resources"].append({**copy.deepcopy(sg), "urn": urn, "type": urn.rsplit("::", 2)[-2].rsplit("$", 1)[-1],
                                  "name": f"de-ssh-{i}", "dependencies": [sg["urn"]],
                                  "inputs": {"securityGroupId": "sg-1", "ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
                                             "cidrIpv4": half}})
        urns.append(urn)
    return urns


def test_internet_in_halves_is_a_mandatory_finding_over_the_plan(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    urns = _halves(plan)
    dep = model.load_stack("rehearsal", ROOT)
    hits = [f for f in evaluate(Context.of(resources_of_plan(plan), dep)) if f.control == "EMB-NET-01"]
    assert sorted(f.urn for f in hits) == sorted(urns) and all(f.mandatory for f in hits)
    assert "22/tcp to the whole internet in pieces (0.0.0.0/1, 128.0.0.0/1)" in hits[0].message


def test_internet_in_halves_fails_review(tmp_path: Path, rehearsal_plan: Plan) -> None:
    head = copy.deepcopy(rehearsal_plan)
    _halves(head)
    r = review(read(write(tmp_path / "b.json", rehearsal_plan), ROOT, "rehearsal"),
               read(write(tmp_path / "h.json", head), ROOT, "rehearsal"))
    assert r.exit_code == 1
    assert [w.embassy for w in r.weakenings if w.control == "EMB-NET-01" and w.mandatory] == ["de", "de"]


def test_one_half_alone_is_no_net_01_finding(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    _halves(plan)
    plan["resources"].pop()
    dep = model.load_stack("rehearsal", ROOT)
    assert [f for f in evaluate(Context.of(resources_of_plan(plan), dep)) if f.control == "EMB-NET-01"] == []


@pytest.mark.parametrize(("principal", "external_id", "exempt"), [
    ("break-glass", True, True),  # the real trust, readable (as the pack sees a secret's value)
    ("break-glass", False, False),  # no external ID: not the break-glass trust
    ("agent", True, False),  # the agents' principals: not the break-glass trust
])
def test_break_glass_trust_is_read_when_readable(rehearsal_plan: Plan, principal: str, external_id: bool,
                                                 exempt: bool) -> None:
    dep = model.load_stack("rehearsal", ROOT)
    who = list(dep.principals.break_glass) if principal == "break-glass" else ["arn:aws:iam::999988887777:role/agents"]
    statement: dict[str, Any] = {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": who}}
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": "s3cr3t"}}
    plan = copy.deepcopy(rehearsal_plan)
    find(plan, "iam/role:Role", "de-break-glass")["inputs"]["assumeRolePolicy"] = json.dumps(
        {"Version": "2012-10-17", "Statement": [statement]})
    urn = find(plan, "rolePolicy:RolePolicy", "de-break-glass-vault")["urn"]
    assert (urn not in [f.urn for f in iam_findings(plan)]) is exempt


def test_a_role_tag_in_provider_default_tags_names_nothing(rehearsal_plan: Plan) -> None:
    """defaultTags would tag every resource of the embassy at once: only a resource's own tag says what it is."""
    plan = copy.deepcopy(rehearsal_plan)
    prov = find(plan, "providers:aws", "de")
    tags = json.loads(prov["inputs"]["defaultTags"])
    tags["tags"]["data-embassy:role"] = "break-glass"
    prov["inputs"]["defaultTags"] = json.dumps(tags)
    glass = find(plan, "iam/role:Role", "de-break-glass")
    ops = {**copy.deepcopy(glass), "urn": glass["urn"].replace("::de-break-glass", "::de-ops"), "name": "de-ops"}
    ops["inputs"].pop("tags")  # untagged itself: only the provider's default tag says break-glass
    plan["resources"].append(ops)
    urn = _policy_on(plan, "de-ops", "de-ops-vault")["urn"]
    assert urn in [f.urn for f in iam_findings(plan)]
