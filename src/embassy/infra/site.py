"""Where one embassy's resources live: its regional provider, partition, account and naming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from embassy import model

TAG_PREFIX = "data-embassy"


@dataclass(frozen=True)
class Site:
    """Shared by every component of an embassy: they all build through the same regional provider."""

    stack: str
    state: model.HomeState
    embassy: model.Embassy
    classification: str
    provider: aws.Provider
    account_id: pulumi.Output[str]

    @property
    def name(self) -> str:
        return self.embassy.name

    @property
    def region(self) -> str:
        return self.embassy.region

    @property
    def partition(self) -> str:
        return self.embassy.partition

    def child(self, name: str) -> str:
        """Logical name of a child resource: URNs ignore the parent's name, so every child carries the embassy's."""
        return f"{self.embassy.name}-{name}"

    def invoke_opts(self) -> pulumi.InvokeOutputOptions:
        return pulumi.InvokeOutputOptions(provider=self.provider)

    def service_principal(self, service: str) -> pulumi.Output[str]:
        """The service principal of `service` in this region (partitions differ: ask the provider, never guess)."""
        found = aws.get_service_principal_output(service_name=service, region=self.region, opts=self.invoke_opts())
        return found.name

    def arn(self, service: str, resource: str, region: str | None = None) -> pulumi.Output[str]:
        """An ARN in this embassy's partition and account (region '' for global services)."""
        where = self.region if region is None else region
        return self.account_id.apply(lambda account: f"arn:{self.partition}:{service}:{where}:{account}:{resource}")


def default_tags(stack: str, state: model.HomeState, embassy: model.Embassy, classification: str) -> dict[str, str]:
    """Tags every resource of an embassy carries (provider default_tags): whose, where, how secret."""
    return {
        f"{TAG_PREFIX}:stack": stack,
        f"{TAG_PREFIX}:state": state.code,
        f"{TAG_PREFIX}:embassy": embassy.name,
        f"{TAG_PREFIX}:nation": embassy.nation,
        f"{TAG_PREFIX}:classification": classification,
    }


def role_tag(role: str) -> dict[str, str]:
    """What a resource is, for the checks: they read this tag (vault, audit-log, key, agent, ...), never the name."""
    return {f"{TAG_PREFIX}:role": role}


def policy_json(document: dict[str, Any]) -> pulumi.Output[str]:
    """An IAM/KMS/S3 policy document (which may hold Outputs) as stable JSON."""
    return pulumi.Output.json_dumps(document)
