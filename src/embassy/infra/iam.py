"""IAM of an embassy: who may write replicas (agent), read them (restore), seal custody bundles (custody), and
break the glass.

Two components because of an ordering the cloud imposes: the KMS key policy names the roles (so the
roles exist first), and the roles' permissions name the key and the vault (so they come last).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy.infra.site import Site, policy_json, role_tag

# What nobody but break-glass may ever do to a vault: destroy versions or touch the locks.
LOCK_ACTIONS = (
    "s3:DeleteObjectVersion",
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:PutBucketObjectLockConfiguration",
    "s3:BypassGovernanceRetention",
)
# The agent is denied these explicitly too, so that a broader policy attached later cannot grant them.
AGENT_DENIED = (*LOCK_ACTIONS, "s3:PutBucketVersioning", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:DeleteBucket")
READ_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketLocation",
                "s3:GetObjectRetention", "s3:GetBucketObjectLockConfiguration")
WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts", "s3:ListBucketMultipartUploads")
KMS_USE = ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey")
# What the enclave host may do to its own vault (restore, and a warm standby's WAL replay): read; and one write,
# its scheduled restore test's record under RESTORE_TESTS_PREFIX, created only (never replacing one).
HOST_READ_ACTIONS = READ_ACTIONS
RESTORE_TESTS_PREFIX = "restore-tests/"  # replication.restoretest.RECORD_PREFIX: where a host's records go
HOST_RECORD_ACTIONS = ("s3:PutObject",)
# Never to the host: every other write, every delete, every lock change (s3:PutObject: denied outside the prefix).
HOST_DENIED = (*WRITE_ACTIONS[1:], "s3:DeleteObject", *AGENT_DENIED)
# The condition under which S3 writes an object only if its key does not exist (the If-None-Match: * header).
CREATE_ONLY_KEY = "s3:if-none-match"
# The custody bundles' place in the embassy's vault (custody/<stack>/, as embassy.custody writes them).
CUSTODY_ACTIONS = ("s3:PutObject", "s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectRetention")


def custody_prefix(stack: str) -> str:
    return f"custody/{stack}/"


@dataclass(frozen=True)
class RolesArgs:
    site: Site
    agents: Sequence[str]  # principals (home state) that may assume the agent role
    restorers: Sequence[str]
    break_glass: Sequence[str]
    break_glass_external_id: pulumi.Input[str]  # a secret: the trust policy that holds it is secret too
    custodians: Sequence[str] = ()  # who may assume the custody role (the key administrators)


def _trust(principals: Sequence[str], external_id: pulumi.Input[str] | None = None) -> pulumi.Output[str]:
    statement: dict[str, object] = {"Sid": "HomeStatePrincipals", "Effect": "Allow", "Action": "sts:AssumeRole",
                                    "Principal": {"AWS": sorted(principals)}}
    if external_id is not None:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return policy_json({"Version": "2012-10-17", "Statement": [statement]})


class Roles(pulumi.ComponentResource):
    """The agent, restore and break-glass roles, with their trust policies only."""

    agent: aws.iam.Role
    restore: aws.iam.Role
    custody: aws.iam.Role
    break_glass: aws.iam.Role

    def __init__(self, name: str, args: RolesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:infra:Roles", name, None, opts)
        site = args.site
        child = pulumi.ResourceOptions(parent=self)
        self.agent = aws.iam.Role(site.child("agent"), assume_role_policy=_trust(args.agents), max_session_duration=3600,
                                  tags=role_tag("agent"),
                                  description=f"replication agent of {site.state.code} into embassy {site.name}", opts=child)
        self.restore = aws.iam.Role(site.child("restore"), description=f"read-only restore from embassy {site.name}",
                                    assume_role_policy=_trust(args.restorers), max_session_duration=3600,
                                    tags=role_tag("restore"), opts=child)
        # Home's custody officials seal and read bundles under custody/<stack>/ only (the key administrators).
        self.custody = aws.iam.Role(site.child("custody"), description=f"custody bundles of {site.state.code} in embassy "
                                    f"{site.name}: custody/{site.stack}/ only", assume_role_policy=_trust(args.custodians),
                                    max_session_duration=3600, tags=role_tag("custody"), opts=child)
        self.break_glass = aws.iam.Role(
            site.child("break-glass"), description=f"break-glass of embassy {site.name}: the only principal allowed lock changes",
            assume_role_policy=_trust(args.break_glass, args.break_glass_external_id), max_session_duration=3600,
            tags=role_tag("break-glass"), opts=child)
        self.register_outputs({"agent_arn": self.agent.arn, "restore_arn": self.restore.arn,
                               "custody_arn": self.custody.arn, "break_glass_arn": self.break_glass.arn})


@dataclass(frozen=True)
class GrantsArgs:
    site: Site
    roles: Roles
    vault_arn: pulumi.Input[str]
    key_arn: pulumi.Input[str]


def _doc(*statements: Mapping[str, object]) -> pulumi.Output[str]:
    return policy_json({"Version": "2012-10-17", "Statement": list(statements)})


class Grants(pulumi.ComponentResource):
    """What each role may do: the agent writes and reads, restore reads, break-glass may touch locks."""

    def __init__(self, name: str, args: GrantsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:infra:Grants", name, None, opts)
        site, roles = args.site, args.roles
        child = pulumi.ResourceOptions(parent=self)
        bucket = pulumi.Output.from_input(args.vault_arn)
        objects = bucket.apply(lambda arn: f"{arn}/*")
        vault = [bucket, objects]
        kms = {"Sid": "UseEmbassyKey", "Effect": "Allow", "Action": list(KMS_USE), "Resource": args.key_arn}
        aws.iam.RolePolicy(site.child("agent-vault"), role=roles.agent.id, opts=child, policy=_doc(
            {"Sid": "WriteAndReadReplicas", "Effect": "Allow", "Action": [*WRITE_ACTIONS, *READ_ACTIONS], "Resource": vault},
            kms,
            {"Sid": "NeverDestroyOrUnlock", "Effect": "Deny", "Action": list(AGENT_DENIED), "Resource": vault}))
        aws.iam.RolePolicy(site.child("restore-vault"), role=roles.restore.id, opts=child, policy=_doc(
            {"Sid": "ReadReplicas", "Effect": "Allow", "Action": list(READ_ACTIONS), "Resource": vault},
            {"Sid": "DecryptWithEmbassyKey", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:DescribeKey"],
             "Resource": args.key_arn},
            {"Sid": "NeverWrite", "Effect": "Deny", "Action": [*WRITE_ACTIONS[:1], *AGENT_DENIED], "Resource": vault}))
        aws.iam.RolePolicy(site.child("break-glass-vault"), role=roles.break_glass.id, opts=child, policy=_doc(
            {"Sid": "ReadAndManageLocks", "Effect": "Allow", "Action": [*READ_ACTIONS, *LOCK_ACTIONS], "Resource": vault},
            kms))
        prefix = custody_prefix(site.stack)
        aws.iam.RolePolicy(site.child("custody-vault"), role=roles.custody.id, opts=child, policy=_doc(
            {"Sid": "SealAndReadBundles", "Effect": "Allow", "Action": list(CUSTODY_ACTIONS),
             "Resource": bucket.apply(lambda arn: f"{arn}/{prefix}*")},
            {"Sid": "ListBundles", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket,
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
            kms,
            {"Sid": "NeverDestroyOrUnlock", "Effect": "Deny", "Action": ["s3:DeleteObject", *AGENT_DENIED],
             "Resource": vault}))
        self.register_outputs({})
