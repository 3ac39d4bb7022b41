"""An Object-Locked bucket: the shape both the vault and the audit-log bucket share."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy.infra.site import Site, role_tag

LOCK_MODE = "COMPLIANCE"  # nobody, not even the account root, can shorten or lift it


@dataclass(frozen=True)
class LockedBucket:
    bucket: aws.s3.Bucket
    public_access_block: aws.s3.BucketPublicAccessBlock
    lock: aws.s3.BucketObjectLockConfiguration


def locked_bucket(site: Site, name: str, key_arn: pulumi.Input[str], retention_days: int,
                  parent: pulumi.Resource, role: str) -> LockedBucket:
    """Versioned, Object Lock COMPLIANCE for `retention_days`, SSE-KMS with bucket keys, never public, ACLs off.

    Every part is retained on delete: `pulumi destroy` cannot empty a locked bucket before retention ends,
    and must not half-dismantle it (suspend versioning, drop the public access block) while it tries.
    """
    child = pulumi.ResourceOptions(parent=parent, retain_on_delete=True)
    bucket = aws.s3.Bucket(site.child(name), object_lock_enabled=True, tags=role_tag(role), opts=child)
    versioning = aws.s3.BucketVersioning(site.child(name), bucket=bucket.id, opts=child,
                                         versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(
                                             status="Enabled"))
    lock = aws.s3.BucketObjectLockConfiguration(
        site.child(name), bucket=bucket.id, object_lock_enabled="Enabled",
        rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
            default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(mode=LOCK_MODE, days=retention_days)),
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True, depends_on=[versioning]))
    aws.s3.BucketServerSideEncryptionConfiguration(site.child(name), bucket=bucket.id, opts=child, rules=[
        aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
            apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm="aws:kms", kms_master_key_id=key_arn),
            bucket_key_enabled=True)])
    public = aws.s3.BucketPublicAccessBlock(site.child(name), bucket=bucket.id, block_public_acls=True,
                                            block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True,
                                            opts=child)
    aws.s3.BucketOwnershipControls(site.child(name), bucket=bucket.id, opts=child,
                                   rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"))
    return LockedBucket(bucket=bucket, public_access_block=public, lock=lock)


def retained(parent: pulumi.Resource, *after: pulumi.Resource) -> pulumi.ResourceOptions:
    """Options of a locked bucket's policy: kept on destroy like the bucket, created after `after`."""
    return pulumi.ResourceOptions(parent=parent, retain_on_delete=True, depends_on=list(after))


def deny_insecure_transport(bucket_arn: pulumi.Output[str]) -> dict[str, object]:
    """The statement refusing any request that does not come over TLS."""
    return {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [bucket_arn, bucket_arn.apply(lambda arn: f"{arn}/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
