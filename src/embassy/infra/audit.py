"""The audit trail of an embassy: CloudTrail with digest validation into an Object-Locked log bucket."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy.infra.buckets import deny_insecure_transport, locked_bucket, retained
from embassy.infra.site import Site, policy_json


@dataclass(frozen=True)
class AuditArgs:
    site: Site
    key_arn: pulumi.Input[str]
    vault_arn: pulumi.Input[str]  # object-level (data) events of the vault are logged too


class Audit(pulumi.ComponentResource):
    """A single-region trail (the embassy's region only) whose logs cannot be altered before retention ends."""

    trail: aws.cloudtrail.Trail
    bucket: aws.s3.Bucket

    def __init__(self, name: str, args: AuditArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:infra:Audit", name, None, opts)
        site = args.site
        locked = locked_bucket(site, "audit-logs", args.key_arn, site.embassy.retention_days, parent=self,
                              role="audit-log")
        self.bucket = locked.bucket
        # The trail's name is fixed so that the bucket policy can name the trail before it exists.
        trail_name = f"data-embassy-{site.stack}-{site.name}"
        trail_arn = site.arn("cloudtrail", f"trail/{trail_name}")
        cloudtrail = site.service_principal("cloudtrail")
        arn = self.bucket.arn
        logs = pulumi.Output.all(arn, site.account_id).apply(lambda v: f"{v[0]}/AWSLogs/{v[1]}/*")
        policy = aws.s3.BucketPolicy(site.child("audit-logs"), bucket=self.bucket.id, policy=policy_json({
            "Version": "2012-10-17", "Statement": [
                deny_insecure_transport(arn),
                {"Sid": "CloudTrailAclCheck", "Effect": "Allow", "Principal": {"Service": cloudtrail},
                 "Action": "s3:GetBucketAcl", "Resource": arn, "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}}},
                {"Sid": "CloudTrailWrite", "Effect": "Allow", "Principal": {"Service": cloudtrail},
                 "Action": "s3:PutObject", "Resource": logs,
                 "Condition": {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", "aws:SourceArn": trail_arn}}},
            ]}), opts=retained(self, locked.public_access_block))
        vault_objects = pulumi.Output.from_input(args.vault_arn).apply(lambda a: f"{a}/")
        self.trail = aws.cloudtrail.Trail(
            site.child("trail"), name=trail_name, s3_bucket_name=self.bucket.id, kms_key_id=args.key_arn,
            enable_log_file_validation=True, enable_logging=True,
            # This region only: each embassy keeps its own evidence in its own nation.
            is_multi_region_trail=False, include_global_service_events=False,
            event_selectors=[aws.cloudtrail.TrailEventSelectorArgs(
                read_write_type="All", include_management_events=True,
                data_resources=[aws.cloudtrail.TrailEventSelectorDataResourceArgs(type="AWS::S3::Object",
                                                                                   values=[vault_objects])])],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy, locked.lock]))
        self.register_outputs({"trail_arn": self.trail.arn, "bucket": self.bucket.bucket})
