"""The stack's additions for restoring, replaying and sealing custody on AWS (issue 24), on the program's plan under
Pulumi's own mocks (tests/unit/conftest.py), and the review controls that guard them.

Adversaries: a host nation holding an enclave host (and so its instance role) wants to write, delete or unlock
in the vault, or read another embassy's; a change under review widens the host's or the custody role's grants
(by an extra statement, a managed policy, a NotAction), which the controls EMB-HST-01 and EMB-CUS-01 must name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from embassy import model
from embassy.compliance import Context, evaluate
from embassy.compliance.evaluate import resources_of_plan
from embassy.infra.embassy import standby_lag_bound
from embassy.infra.iam import HOST_DENIED, READ_ACTIONS

ROOT = Path(__file__).resolve().parents[2]
Plan = dict[str, Any]
WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectRetention",
          "s3:PutBucketObjectLockConfiguration")


def of(plan: Plan, typ: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in plan["resources"] if r["type"] == typ and r["name"] == name]
    return found


def policy(plan: Plan, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(of(plan, "aws:iam/rolePolicy:RolePolicy", name)["inputs"]["policy"])
    return doc


def role_arn(plan: Plan, embassy: str, role: str) -> str:
    return str(plan["outputs"]["embassies"][embassy][f"{role}_role_arn"])


@pytest.fixture(scope="module")
def dep() -> model.Deployment:
    return model.load_stack("rehearsal", ROOT)


def test_the_host_role_reads_its_own_vault_and_writes_only_new_restore_test_records(rehearsal_plan: Plan,
                                                                                   dep: model.Deployment) -> None:
    """The host's one write (item 3 of issue 24's last part): its scheduled restore test's record, a new object under
    restore-tests/ of its own vault. Every other write, delete and lock change is denied; a put without If-None-Match
    (a new version of an existing record: a failing record replaced by a passing one) is denied."""
    for emb in dep.embassies:
        out = rehearsal_plan["outputs"]["embassies"][emb.name]
        vault = [out["vault_arn"], f"{out['vault_arn']}/*"]
        records = f"{out['vault_arn']}/restore-tests/*"
        statements = {s["Sid"]: s for s in policy(rehearsal_plan, f"{emb.name}-host-vault-read")["Statement"]}
        assert set(statements) == {"ReadOwnVault", "RecordRestoreTests", "DecryptWithEmbassyKey",
                                   "NeverWriteDeleteOrUnlock", "WriteOnlyRestoreTestRecords", "NeverReplaceARecord"}
        read, write = statements["ReadOwnVault"], statements["RecordRestoreTests"]
        assert set(read["Action"]) == set(READ_ACTIONS) and read["Resource"] == vault
        assert (write["Effect"], write["Action"], write["Resource"]) == ("Allow", ["s3:PutObject"], records)
        kms = statements["DecryptWithEmbassyKey"]
        assert set(kms["Action"]) == {"kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"}
        assert kms["Resource"] == out["key_arn"]
        deny = statements["NeverWriteDeleteOrUnlock"]
        assert set(WRITES) - {"s3:PutObject"} <= set(deny["Action"]) == set(HOST_DENIED) and deny["Resource"] == vault
        elsewhere = statements["WriteOnlyRestoreTestRecords"]
        assert (elsewhere["Effect"], elsewhere["Action"], elsewhere["NotResource"]) == ("Deny", ["s3:PutObject"], records)
        replace = statements["NeverReplaceARecord"]
        assert (replace["Effect"], replace["Action"], replace["Resource"]) == ("Deny", ["s3:PutObject"], records)
        assert replace["Condition"] == {"Null": {"s3:if-none-match": "true"}}
        grant = of(rehearsal_plan, "aws:kms/grant:Grant", f"{emb.name}-host-decrypt")["inputs"]
        assert grant["operations"] == ["Decrypt", "DescribeKey", "GenerateDataKey"] and grant["keyId"] == out["key_arn"]
        host_role = of(rehearsal_plan, "aws:iam/role:Role", f"{emb.name}-host")
        assert grant["granteePrincipal"].split("/")[-1].startswith(f"{emb.name}-host-")
        assert host_role["inputs"]["tags"] == {"data-embassy:role": "host"}
        # Every policy on the host role: this one, and SSM's managed policy.
        on_host = [r for r in rehearsal_plan["resources"] if r["type"].startswith("aws:iam/rolePolicy")
                   and host_role["urn"] in r["dependencies"]]
        assert sorted(r["name"] for r in on_host) == [f"{emb.name}-host-ssm", f"{emb.name}-host-vault-read"]


def test_custody_bundles_have_their_place_in_each_vault(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    for emb in dep.embassies:
        out = rehearsal_plan["outputs"]["embassies"][emb.name]
        assert out["custody_prefix"] == f"custody/{dep.stack}/"
        doc = policy(rehearsal_plan, f"{emb.name}-custody-vault")
        writes = [s for s in doc["Statement"] if s["Effect"] == "Allow" and "s3:PutObject" in s["Action"]]
        assert [s["Resource"] for s in writes] == [f"{out['vault_arn']}/custody/{dep.stack}/*"]
        listing = next(s for s in doc["Statement"] if s["Action"] == ["s3:ListBucket"])
        assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"custody/{dep.stack}/*"]}}
        deny = next(s for s in doc["Statement"] if s["Effect"] == "Deny")
        assert {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectRetention"} <= set(deny["Action"])
        trust = json.loads(of(rehearsal_plan, "aws:iam/role:Role", f"{emb.name}-custody")["inputs"]["assumeRolePolicy"])
        assert trust["Statement"][0]["Principal"]["AWS"] == sorted(dep.principals.key_admins)
        key = json.loads(of(rehearsal_plan, "aws:kms/key:Key", f"{emb.name}-key")["inputs"]["policy"])
        users = next(s for s in key["Statement"] if s["Sid"] == "EmbassyRolesUseTheKey")["Principal"]["AWS"]
        assert role_arn(rehearsal_plan, emb.name, "custody") in users


def test_warm_standbys_replay_from_their_vault_and_have_no_path_home(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    """The choice for AWS: replay from the vault (the host reads it), not a VPN home; its lag bound is published."""
    for emb in dep.embassies:
        out = rehearsal_plan["outputs"]["embassies"][emb.name]
        if emb.mode is model.Mode.WARM:
            assert out["standby"] == {"source": "vault", "lag_bound_seconds": dep.cold_rpo_seconds + 6}
        else:
            assert "standby" not in out
    assert standby_lag_bound(dep) == 66
    kinds = {r["type"] for r in rehearsal_plan["resources"]}
    assert not kinds & {"aws:ec2/vpnGateway:VpnGateway", "aws:ec2/customerGateway:CustomerGateway",
                        "aws:ec2/vpnConnection:VpnConnection", "aws:ec2transitgateway/transitGateway:TransitGateway",
                        "aws:ec2/natGateway:NatGateway", "aws:ec2/internetGateway:InternetGateway"}
    for group in (r for r in rehearsal_plan["resources"] if r["type"] == "aws:ec2/securityGroup:SecurityGroup"
                  and r["name"].endswith("-hosts")):
        assert {(e["fromPort"], e["toPort"]) for e in group["inputs"]["egress"]} == {(443, 443)}


# --------------------------------------------------------------------------- the controls, tried


def findings(plan: Plan, control: str) -> list[str]:
    dep = model.load_stack(plan["stack"], ROOT)
    return [f.message for f in evaluate(Context.of(resources_of_plan(plan), dep)) if f.control == control]


def _append(plan: Plan, name: str, statement: dict[str, Any]) -> None:
    rec = of(plan, "aws:iam/rolePolicy:RolePolicy", name)
    doc = json.loads(rec["inputs"]["policy"])
    doc["Statement"].append(statement)
    rec["inputs"]["policy"] = json.dumps(doc)


def test_the_shipped_plans_meet_both_controls(rehearsal_plan: Plan, production_plan: Plan) -> None:
    for plan in (rehearsal_plan, production_plan):
        assert findings(plan, "EMB-HST-01") == [] and findings(plan, "EMB-CUS-01") == []


HOST_WIDENED: dict[str, tuple[dict[str, Any], str]] = {
    "another embassy's vault": ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::se-vault-1/*"},
                                "its own vault only"),
    "any bucket": ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*"}, "its own vault only"),
    "a write": ({"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::x/*"}, "s3:PutObject"),
    "a wildcard": ({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::x/*"}, "s3:*"),
    "unlocking": ({"Effect": "Allow", "Action": "s3:PutObjectRetention", "Resource": "arn:aws:s3:::x/*"},
                  "s3:PutObjectRetention"),
    "encrypting with the key": ({"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}, "kms:Encrypt"),
    "NotAction": ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "NotAction"),
    # Broader than the one write the control accepts (s3:PutObject on restore-tests/* of its own vault, create only):
    "a write anywhere in its own vault": ({"Effect": "Allow", "Action": "s3:PutObject", "Resource": "{vault}/*"},
                                          "s3:PutObject"),
    "a wider prefix": ({"Effect": "Allow", "Action": "s3:PutObject", "Resource": "{vault}/restore-tests*"},
                       "s3:PutObject"),
    "a prefix with a wildcard inside": ({"Effect": "Allow", "Action": "s3:PutObject",
                                         "Resource": "{vault}/restore-tests/*/../manifests/*"}, "s3:PutObject"),
    "any put on the records": ({"Effect": "Allow", "Action": "s3:Put*", "Resource": "{vault}/restore-tests/*"},
                               "s3:Put*"),
    "deleting a record": ({"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": "{vault}/restore-tests/*"},
                          "s3:DeleteObject"),
    "unlocking a record": ({"Effect": "Allow", "Action": "s3:PutObjectRetention", "Resource": "{vault}/restore-tests/*"},
                           "s3:PutObjectRetention"),
    "another embassy's records": ({"Effect": "Allow", "Action": "s3:PutObject",
                                   "Resource": "arn:aws:s3:::se-vault-1/restore-tests/*"}, "its own vault only"),
}


@pytest.mark.parametrize("case", sorted(HOST_WIDENED))
def test_a_widened_host_role_is_named(rehearsal_plan: Plan, case: str) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    statement, words = HOST_WIDENED[case]
    vault = plan["outputs"]["embassies"]["de"]["vault_arn"]
    _append(plan, "de-host-vault-read", json.loads(json.dumps(statement).replace("{vault}", vault)))
    hits = findings(plan, "EMB-HST-01")
    assert any(words in h and "de-host-vault-read" in h for h in hits), hits


def test_a_managed_policy_on_the_host_role_is_named(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    ssm = of(plan, "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "de-host-ssm")
    ssm["inputs"]["policyArn"] = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
    assert any("AmazonS3ReadOnlyAccess" in h for h in findings(plan, "EMB-HST-01"))


def test_a_host_policy_tied_to_no_vault_of_its_embassy_is_named(rehearsal_plan: Plan) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    rec = of(plan, "aws:iam/rolePolicy:RolePolicy", "de-host-vault-read")
    rec["dependencies"] = [d for d in rec["dependencies"] if not d.endswith("::de-vault")]
    assert any("not tied to a vault" in h for h in findings(plan, "EMB-HST-01"))


@pytest.mark.parametrize("statement", [
    {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::de-vault/manifests/*"},
    {"Effect": "Allow", "Action": "s3:Put*", "Resource": "arn:aws:s3:::de-vault/*"},
    {"Effect": "Allow", "NotAction": "s3:GetObject", "Resource": "arn:aws:s3:::de-vault/*"},
    {"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::de-vault/custody/other-stack/*"},
])
def test_custody_writing_outside_its_prefix_is_named(rehearsal_plan: Plan, statement: dict[str, Any]) -> None:
    plan = copy.deepcopy(rehearsal_plan)
    _append(plan, "de-custody-vault", statement)
    hits = findings(plan, "EMB-CUS-01")
    assert any("de-custody-vault" in h and "custody/rehearsal/" in h for h in hits), hits


def test_a_record_write_that_may_replace_a_record_is_named(rehearsal_plan: Plan) -> None:
    """The host nation wants to overwrite a failing record with a passing one (a new version of its key: the locks
    keep the old one, but a reader takes the newest): without the Deny on a put lacking If-None-Match, or with that
    Deny weakened (another condition, a narrower resource), the control names the record grant."""
    weakened: dict[str, dict[str, Any] | None] = {
        "no guard": None,
        "another header": {"Condition": {"Null": {"s3:if-match": "true"}}},
        "a second condition": {"Condition": {"Null": {"s3:if-none-match": "true"},
                                             "Bool": {"aws:SecureTransport": "true"}}},
        "a narrower resource": {"Resource": "{vault}/restore-tests/2026*"},
    }
    for case, change in weakened.items():
        plan = copy.deepcopy(rehearsal_plan)
        rec = of(plan, "aws:iam/rolePolicy:RolePolicy", "de-host-vault-read")
        doc = json.loads(rec["inputs"]["policy"])
        guard = next(st for st in doc["Statement"] if st["Sid"] == "NeverReplaceARecord")
        doc["Statement"].remove(guard)
        if change is not None:
            vault = plan["outputs"]["embassies"]["de"]["vault_arn"]
            doc["Statement"].append({**guard, **json.loads(json.dumps(change).replace("{vault}", vault))})
        rec["inputs"]["policy"] = json.dumps(doc)
        hits = findings(plan, "EMB-HST-01")
        assert any("replace a restore-test record" in h and "de-host-vault-read" in h for h in hits), (case, hits)
