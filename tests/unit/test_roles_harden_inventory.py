"""`embassy harden`'s inventories and its refusals, without a host or a cloud account."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embassy import harden, model
from embassy.errors import UserError

from .incli import embassy

ROOT = Path(__file__).resolve().parents[2]
EMBASSY = str(Path(sys.executable).parent / "embassy")


def outputs(dep: model.Deployment) -> dict[str, object]:
    """Stack outputs shaped as the Pulumi program exports them (stacks/__main__.py)."""
    return {"stack": dep.stack, "embassies": {
        e.name: {"region": e.region, "mode": e.mode.value,
                 "host_instance_ids": [f"i-0{n}{e.name}" for n in range(e.host_count)],
                 "host_private_ips": [f"10.64.1.{10 + n}" for n in range(e.host_count)]}
        for e in dep.embassies}}


def test_aws_inventory_groups_embassies_by_mode_and_reaches_them_over_ssm() -> None:
    dep = model.load_stack("rehearsal", ROOT)
    inventory, hosts = harden.aws_inventory(dep, outputs(dep), "transfer-bucket")
    groups = inventory["all"]["children"]
    warm = groups["embassies"]["children"]["warm_embassies"]["hosts"]
    cold = groups["embassies"]["children"]["cold_embassies"]["hosts"]
    assert sorted(warm) == ["enclave-de", "enclave-se"] and sorted(cold) == ["enclave-ie"]
    assert groups["home_state"]["hosts"] == {}  # the home state is not on AWS
    assert sorted(hosts) == ["enclave-de", "enclave-ie", "enclave-se"]
    allvars = inventory["all"]["vars"]
    assert allvars["ansible_connection"] == "community.aws.aws_ssm"
    assert allvars["ansible_aws_ssm_bucket_name"] == "transfer-bucket"
    assert allvars["embassy_permit_root_login"] == "no"
    de = warm["enclave-de"]
    assert de["ansible_aws_ssm_instance_id"] == "i-00de" and de["ansible_aws_ssm_region"] == "eu-central-1"
    # SSH only from the embassy's admin networks, if it has any; SSM needs no inbound port.
    se = warm["enclave-se"]
    assert se["embassy_ssh_sources"] == ["203.0.113.0/28"] and se["embassy_require_ssh"] is True
    assert de["embassy_ssh_sources"] == [] and de["embassy_require_ssh"] is False


def test_aws_inventory_refuses_outputs_without_the_embassy() -> None:
    dep = model.load_stack("rehearsal", ROOT)
    partial = outputs(dep)
    del partial["embassies"]["ie"]  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="no embassy 'ie'"):
        harden.aws_inventory(dep, partial, "bucket")
    with pytest.raises(UserError, match="no `embassies` output"):
        harden.aws_inventory(dep, {}, "bucket")


def test_harden_aws_without_the_collection_is_a_clear_error(tmp_path: Path) -> None:
    if harden.aws_collection_path() is not None:
        pytest.skip("community.aws is installed here: the refusal cannot be shown")
    res = subprocess.run([EMBASSY, "harden", "--target", "aws", "--stack", "rehearsal"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env={"PATH": "/usr/bin:/bin", "ANSIBLE_HOME": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.startswith("error: [104]: the amazon.aws / community.aws collections are not installed"), res.stderr
    assert "HINT: pip install -c constraints.txt -e '.[aws]'" in res.stderr  # the `ansible` package: no ansible-galaxy


def test_harden_refuses_an_unknown_target() -> None:
    res = embassy("harden", "--target", "gcp", "--stack", "rehearsal")
    assert res.returncode == 2
    assert "gcp" in res.stderr


def test_harden_lab_without_a_lab_says_how_to_get_one(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab target needs root; as non-root it refuses before looking for a lab")
    env = {"PATH": "/usr/bin:/bin", "EMBASSY_LAB_ID": "97", "EMBASSY_LAB_ROOT": str(tmp_path)}
    res = subprocess.run([EMBASSY, "harden", "--target", "lab", "--stack", "rehearsal"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env=env)
    assert res.returncode == 2
    assert "error: lab 97 is not up" in res.stderr and "HINT: run `embassy lab up --stack rehearsal`" in res.stderr
