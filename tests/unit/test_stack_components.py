"""The components in this process under Pulumi's mocks, read the Pulumi way: inside `.apply`.

`bool(Output)` is always True, so every check runs on the resolved value and the test returns the Output
(`@pulumi.runtime.test` awaits it); a failed assert inside `.apply` fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

from embassy import model
from embassy.infra import Embassy, EmbassyArgs
from embassy.infra.enclave import architecture, nitro_enclaves_capable

ROOT = Path(__file__).resolve().parents[2]


def build(embassy: str = "se") -> Embassy:
    dep = model.load_stack("rehearsal", ROOT)
    return Embassy(embassy, EmbassyArgs(deployment=dep, embassy=dep.embassy(embassy),
                                        break_glass_external_id=pulumi.Output.secret("unit-secret")))


@pytest.mark.usefixtures("pulumi_mocks")
@pulumi.runtime.test
def test_hosts_require_imdsv2_and_have_no_public_ip() -> pulumi.Output[Any]:
    embassy = build("se")
    hosts = embassy.enclave.hosts
    assert len(hosts) == 1

    def check(values: list[Any]) -> None:
        metadata, public_ip, root = values
        assert metadata["http_tokens"] == "required"
        assert metadata["http_put_response_hop_limit"] == 1
        assert public_ip is False
        assert root["encrypted"] is True

    host = hosts[0]
    return pulumi.Output.all(host.metadata_options, host.associate_public_ip_address, host.root_block_device).apply(check)


@pytest.mark.usefixtures("pulumi_mocks")
@pulumi.runtime.test
def test_key_rotates_and_vault_is_locked() -> pulumi.Output[Any]:
    embassy = build("de")
    key, bucket = embassy.keys.key, embassy.vault.bucket

    def check(values: list[Any]) -> None:
        rotation, window, locked = values
        assert rotation is True and window == 30 and locked is True

    return pulumi.Output.all(key.enable_key_rotation, key.deletion_window_in_days, bucket.object_lock_enabled).apply(check)


@pytest.mark.usefixtures("pulumi_mocks")
@pulumi.runtime.test
def test_outputs_of_one_embassy() -> pulumi.Output[Any]:
    embassy = build("ie")

    def check(out: dict[str, Any]) -> None:
        assert out["region"] == "eu-west-1" and out["mode"] == "cold"
        assert out["key_arn"].startswith("arn:aws:kms:eu-west-1:")
        assert out["vault_bucket"].startswith("ie-vault-")
        assert len(out["host_instance_ids"]) == 1 and out["host_private_ips"][0].startswith("10.64.")

    return embassy.outputs.apply(check)


def test_recorded_requests_carry_the_provider_and_engine_urns(pulumi_mocks: Any) -> None:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        return build("de").outputs

    run()
    records = pulumi_mocks.records
    vault = next(r for r in records.values() if r["type"] == "aws:s3/bucket:Bucket" and r["name"] == "de-vault")
    assert vault["urn"] == ("urn:pulumi:unit::data-embassy::data-embassy:index:Embassy$data-embassy:infra:Vault"
                            "$aws:s3/bucket:Bucket::de-vault")
    assert vault["inputs"]["objectLockEnabled"] is True
    assert pulumi_mocks.regions[vault["provider"]] == "eu-central-1"


@pytest.mark.parametrize(("instance_type", "capable"), [
    ("m5.xlarge", True), ("m6i.2xlarge", True), ("c6i.24xlarge", True), ("r5.4xlarge", True),
    ("m5.large", False), ("t3.xlarge", False), ("m5.metal", False), ("m6g.xlarge", False), ("x2idn.16xlarge", False)])
def test_nitro_enclaves_capability(instance_type: str, capable: bool) -> None:
    assert nitro_enclaves_capable(instance_type) is capable


def test_architecture_follows_the_family() -> None:
    assert architecture("m5.xlarge") == "amd64"
    assert architecture("m7g.xlarge") == "arm64" and architecture("c7gn.2xlarge") == "arm64"
