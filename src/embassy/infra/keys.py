"""The embassy's customer-managed KMS key: rotated, slow to delete, usable only by the home state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy.infra.site import Site, policy_json, role_tag

DELETION_WINDOW_DAYS = 30  # the longest KMS allows: time to notice and cancel a scheduled deletion
ROTATION_PERIOD_DAYS = 365
USE_ACTIONS = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey")


@dataclass(frozen=True)
class KeysArgs:
    site: Site
    admins: Sequence[str]  # the home state's key administrators (config principals.key_admins)
    users: Sequence[pulumi.Input[str]]  # the stack's own roles: agent, restore, break-glass


class Keys(pulumi.ComponentResource):
    """One customer-managed key per embassy, with an alias naming the state and the embassy."""

    key: aws.kms.Key

    def __init__(self, name: str, args: KeysArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:infra:Keys", name, None, opts)
        site = args.site
        if not args.admins:
            raise ValueError("data-embassy:principals.key_admins is empty: nobody of the home state could administer the key")
        account = site.account_id
        trail_context = account.apply(lambda a: f"arn:{site.partition}:cloudtrail:*:{a}:trail/*")
        # CloudWatch Logs is the one service whose key-policy principal carries the region.
        logs = aws.get_service_principal_output(service_name="logs", region=site.region, opts=site.invoke_opts())
        logs_principal = logs.suffix.apply(lambda suffix: f"logs.{site.region}.{suffix}")
        logs_context = account.apply(lambda a: f"arn:{site.partition}:logs:{site.region}:{a}:*")
        # No statement names the account root or any other account: only these principals and services.
        policy = policy_json({"Version": "2012-10-17", "Statement": [
            {"Sid": "HomeStateKeyAdministrators", "Effect": "Allow", "Principal": {"AWS": sorted(args.admins)},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "EmbassyRolesUseTheKey", "Effect": "Allow", "Principal": {"AWS": list(args.users)},
             "Action": list(USE_ACTIONS), "Resource": "*"},
            {"Sid": "CloudTrailEncryptsLogs", "Effect": "Allow", "Principal": {"Service": site.service_principal("cloudtrail")},
             "Action": ["kms:GenerateDataKey*", "kms:DescribeKey"], "Resource": "*",
             "Condition": {"StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn": trail_context},
                           "StringEquals": {"aws:SourceAccount": account}}},
            {"Sid": "CloudWatchLogsEncryptsFlowLogs", "Effect": "Allow", "Principal": {"Service": logs_principal},
             "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
             "Resource": "*", "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": logs_context}}},
        ]})
        self.key = aws.kms.Key(
            site.child("key"),
            description=f"data embassy {site.name} of {site.state.name} ({site.stack})",
            enable_key_rotation=True,
            rotation_period_in_days=ROTATION_PERIOD_DAYS,
            deletion_window_in_days=DELETION_WINDOW_DAYS,
            policy=policy,
            tags=role_tag("key"),
            # Deleting the key would make every locked replica unreadable: destroy leaves it.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True))
        aws.kms.Alias(site.child("key-alias"), name=f"alias/data-embassy/{site.stack}/{site.name}",
                      target_key_id=self.key.key_id, opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"key_arn": self.key.arn})
