"""The plan: the real program in stacks/ run under Pulumi's mocks, recorded as the engine would see it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embassy import model
from embassy.cli import app
from embassy.plan import PLACEHOLDER_SECRET, compute_plan, dumps, secret_env_name

ROOT = Path(__file__).resolve().parents[2]
KNOWN_SECRET = "ext-id-7f3c9a61-do-not-leak"


def by_type(plan: dict[str, Any], typ: str) -> list[dict[str, Any]]:
    return [r for r in plan["resources"] if r["type"] == typ]


def test_two_runs_give_identical_bytes(rehearsal_plan: dict[str, Any]) -> None:
    again = compute_plan(ROOT, "rehearsal")
    assert dumps(again) == dumps(rehearsal_plan)
    assert len(rehearsal_plan["resources"]) > 100


def test_a_known_secret_never_reaches_the_plan() -> None:
    env = {**os.environ, secret_env_name("break_glass_external_id"): KNOWN_SECRET}
    plan = compute_plan(ROOT, "rehearsal", env=env)
    text = dumps(plan)
    assert KNOWN_SECRET not in text
    # The secret was used: every break-glass trust policy carries it, so each is redacted whole.
    glass = [r for r in by_type(plan, "aws:iam/role:Role") if r["name"].endswith("-break-glass")]
    assert len(glass) == 3 and all(r["inputs"]["assumeRolePolicy"] == "[secret]" for r in glass)


def test_the_placeholder_secret_never_reaches_the_plan(rehearsal_plan: dict[str, Any]) -> None:
    assert PLACEHOLDER_SECRET not in dumps(rehearsal_plan)


def test_resources_sorted_by_urn_with_engine_urns(rehearsal_plan: dict[str, Any]) -> None:
    urns = [r["urn"] for r in rehearsal_plan["resources"]]
    assert urns == sorted(urns) and len(set(urns)) == len(urns)
    prefix = "urn:pulumi:rehearsal::data-embassy::"
    assert all(u.startswith(prefix) for u in urns)
    # The Stack type never appears in a chain; a child carries its parents' whole type chain.
    assert not any("pulumi:pulumi:Stack$" in u for u in urns)
    vpc = next(r for r in by_type(rehearsal_plan, "aws:ec2/vpc:Vpc") if r["name"] == "de-vpc")
    assert vpc["urn"] == prefix + "data-embassy:index:Embassy$data-embassy:infra:Network$aws:ec2/vpc:Vpc::de-vpc"
    assert vpc["parent"] == prefix + "data-embassy:index:Embassy$data-embassy:infra:Network::de-network"


def test_inputs_are_camel_case_and_whole_numbers_are_ints(rehearsal_plan: dict[str, Any]) -> None:
    key = by_type(rehearsal_plan, "aws:kms/key:Key")[0]["inputs"]
    assert key["enableKeyRotation"] is True
    assert key["deletionWindowInDays"] == 30 and isinstance(key["deletionWindowInDays"], int)
    assert "enable_key_rotation" not in key


def test_dependencies_and_parents_are_urns_in_the_plan(rehearsal_plan: dict[str, Any]) -> None:
    urns = {r["urn"] for r in rehearsal_plan["resources"]}
    for r in rehearsal_plan["resources"]:
        assert set(r["dependencies"]) <= urns, r["urn"]
        assert r["parent"] is None or r["parent"] in urns
        if r["provider"]:
            assert r["provider"]["urn"] in urns


def test_outputs_name_every_embassy(rehearsal_plan: dict[str, Any]) -> None:
    dep = model.load_stack("rehearsal", ROOT)
    outputs = rehearsal_plan["outputs"]["embassies"]
    assert set(outputs) == {e.name for e in dep.embassies}
    for emb in dep.embassies:
        out = outputs[emb.name]
        assert out["region"] == emb.region
        assert out["vault_bucket"] and out["key_arn"].startswith("arn:aws:kms:" + emb.region)
        assert out["agent_role_arn"].startswith("arn:aws:iam::") and out["restore_role_arn"].startswith("arn:aws:iam::")
        assert len(out["host_instance_ids"]) == emb.host_count == len(out["host_private_ips"])
        assert all(ip.startswith("10.64.") for ip in out["host_private_ips"])


def test_cli_writes_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rehearsal_plan: dict[str, Any]) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", "--stack", "rehearsal", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == rehearsal_plan


def test_cli_exits_2_on_invalid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    text = (ROOT / "Pulumi.rehearsal.yaml").read_text().replace("region: eu-north-1", "region: eu-west-1")
    (tmp_path / "Pulumi.bad.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", "--stack", "bad", "--out", str(out)])
    assert result.exit_code == 2
    assert "data-embassy:embassies[1].region" in result.output and "HINT:" in result.output
    assert not out.exists()


def test_a_stack_without_key_admins_is_refused(tmp_path: Path) -> None:
    import shutil

    import yaml

    from embassy.plan import PlanFailed

    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks", ignore=shutil.ignore_patterns("__pycache__"))
    doc = yaml.safe_load((ROOT / "Pulumi.rehearsal.yaml").read_text())
    del doc["config"]["data-embassy:principals"]["key_admins"]
    (tmp_path / "Pulumi.nokeys.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(PlanFailed) as exc:
        compute_plan(tmp_path, "nokeys")
    assert exc.value.code == 2
    assert "data-embassy:principals.key_admins" in exc.value.message and "no key administrator" in exc.value.message


def test_secure_config_values_are_injected_as_secrets(tmp_path: Path) -> None:
    from embassy.plan import stack_config

    secure = "  data-embassy:extra_token:\n    secure: v1:AAAAbm90IGEgcmVhbCBjaXBoZXI=\n"
    text = (ROOT / "Pulumi.rehearsal.yaml").read_text() + secure
    (tmp_path / "Pulumi.s.yaml").write_text(text)
    config, secret_keys = stack_config(tmp_path, "s", {secret_env_name("extra_token"): KNOWN_SECRET})
    assert secret_keys == ["data-embassy:break_glass_external_id", "data-embassy:extra_token"]
    assert config["data-embassy:extra_token"] == KNOWN_SECRET
    assert config["data-embassy:break_glass_external_id"] == PLACEHOLDER_SECRET
    assert json.loads(config["data-embassy:state"]) == {"name": "Estonia", "code": "EE"}
    assert "v1:AAAA" not in json.dumps(config)
