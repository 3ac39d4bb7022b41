"""The vault: where the home state's (already encrypted) replicas land, immutable for retention_days."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy.infra.buckets import deny_insecure_transport, locked_bucket, retained
from embassy.infra.iam import LOCK_ACTIONS
from embassy.infra.site import Site, policy_json


@dataclass(frozen=True)
class VaultArgs:
    site: Site
    key_arn: pulumi.Input[str]
    break_glass_arn: pulumi.Input[str]  # the only principal the lock-and-version deny spares


class Vault(pulumi.ComponentResource):
    """Object Lock COMPLIANCE bucket with a policy denying plain HTTP and version or lock tampering."""

    bucket: aws.s3.Bucket

    def __init__(self, name: str, args: VaultArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:infra:Vault", name, None, opts)
        site = args.site
        locked = locked_bucket(site, "vault", args.key_arn, site.embassy.retention_days, parent=self, role="vault")
        self.bucket = locked.bucket
        arn = self.bucket.arn
        aws.s3.BucketPolicy(site.child("vault"), bucket=self.bucket.id, policy=policy_json({
            "Version": "2012-10-17", "Statement": [
                deny_insecure_transport(arn),
                {"Sid": "DenyVersionAndLockTampering", "Effect": "Deny", "Principal": "*", "Action": list(LOCK_ACTIONS),
                 "Resource": [arn, arn.apply(lambda a: f"{a}/*")],
                 "Condition": {"ArnNotEquals": {"aws:PrincipalArn": args.break_glass_arn}}},
            # After the lock configuration: from then on only break-glass may change it.
            ]}), opts=retained(self, locked.public_access_block, locked.lock))
        self.register_outputs({"bucket": self.bucket.bucket, "arn": self.bucket.arn})
