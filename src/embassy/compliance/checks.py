"""One small function per control: `check(resource, context)` yields a message per violation.

Checks read properties with `need` (a setting: unknown raises Unknown) or `ref` (another resource's
output: unknown is fine). Measures give the value a review shows as before → after.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from embassy import model
from embassy.compliance import grants, iamdb
from embassy.compliance.catalog import managed_allow_list
from embassy.compliance.context import Context, Resource
from embassy.compliance.grants import ATTACHMENTS, POLICY, ROLE, attached_roles
from embassy.compliance.props import (
    SECRET,
    UNKNOWN,
    Unknown,
    as_list,
    is_unknown,
    items,
    need,
    number,
    policy_document,
    ref,
    statements,
    truthy,
)

Check = Callable[[Resource, Context], Iterator[str]]
MeasureFn = Callable[[Resource, Context], Any]
CHECKS: dict[str, Check] = {}
MEASURES: dict[str, MeasureFn] = {}

BUCKET = "aws:s3/bucket:Bucket"
LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
KEY = "aws:kms/key:Key"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
EBS_DEFAULT = "aws:ebs/encryptionByDefault:EncryptionByDefault"
TRAIL = "aws:cloudtrail/trail:Trail"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
SUBNET = "aws:ec2/subnet:Subnet"
# Tag keys (without the data-embassy: namespace) every taggable resource carries, itself or by defaultTags.
REQUIRED_TAGS = ("embassy", "nation", "classification")
# Actions that destroy replicas or undo their protection (wildcards in policies are matched against these).
DESTRUCTIVE_ACTIONS = (
    "s3:DeleteObjectVersion", "s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:BypassGovernanceRetention",
    "s3:PutBucketObjectLockConfiguration", "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration",
    "s3:DeleteBucket", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
    "kms:ScheduleKeyDeletion", "kms:DisableKey", "kms:PutKeyPolicy",
    # undo encryption, exposure or placement of the replicas, or hand the key to someone else
    "kms:CreateGrant", "kms:ReplicateKey", "s3:PutBucketPublicAccessBlock", "s3:PutEncryptionConfiguration",
    "s3:PutReplicationConfiguration", "s3:PutBucketAcl",
)
# Address space that never routes on the internet (RFC 1918, RFC 4193). Not ipaddress.is_private, which also
# counts documentation ranges such as 198.51.100.0/24 as private.
PRIVATE_RANGES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
GLOBAL_TYPE_PREFIXES = ("aws:iam/", "aws:organizations/", "aws:route53/", "aws:cloudfront/", "aws:budgets/")


def check(control_id: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[control_id] = fn
        return fn
    return register


def measure(control_id: str) -> Callable[[MeasureFn], MeasureFn]:
    def register(fn: MeasureFn) -> MeasureFn:
        MEASURES[control_id] = fn
        return fn
    return register


# --------------------------------------------------------------------------- helpers


def bucket_role(res: Resource, ctx: Context) -> str:
    """vault | log | other, from the `data-embassy:role` tag the components set, never from the name.

    A name is chosen by whoever writes the change. An untagged bucket with Object Lock is judged as a vault
    (fails closed): it holds something meant to be immutable.
    """
    role = ctx.role_of(res)
    if role == "vault":
        return "vault"
    if role == "audit-log":
        return "log"
    if role:
        return "other"
    try:
        return "vault" if res.type == BUCKET and _lock_enabled(res) else "other"
    except Unknown:
        return "vault"


def _depends_on(res: Resource, ctx: Context, rtype: str) -> list[Resource]:
    return [d for d in (ctx.resources.get(u) for u in res.dependencies) if d is not None and d.type == rtype]


def _ports(rule: dict[str, Any], proto_key: str = "protocol") -> str:
    proto = str(rule.get(proto_key, "")).lower()
    if proto in ("-1", "all"):
        return "all traffic"
    lo, hi = rule.get("fromPort"), rule.get("toPort")
    lo_i, hi_i = number(lo), number(hi)
    name = {"6": "tcp", "17": "udp", "1": "icmp"}.get(proto, proto)
    if lo_i is None:
        return f"all {name}"
    if lo_i == hi_i or hi_i is None:
        return f"{int(lo_i)}/{name}"
    return f"{int(lo_i)}-{int(hi_i)}/{name}"


def ingress_sources(res: Resource) -> list[tuple[str, str]]:
    """(ports, source CIDR) for every inbound rule of an SG, SG rule, ingress rule or NACL rule."""
    props = res.inputs
    found: list[tuple[str, str]] = []
    if res.type.endswith(("securityGroup:SecurityGroup", "defaultSecurityGroup:DefaultSecurityGroup")):
        for i, rule in enumerate(items(props, "ingress")):
            for key in ("cidrBlocks", "ipv6CidrBlocks"):
                for j, cidr in enumerate(as_list(rule.get(key))):
                    if is_unknown(cidr) or is_unknown(rule.get(key)):
                        need(props, f"ingress.{i}.{key}.{j}")
                    found.append((_ports(rule), str(cidr)))
    elif res.type.endswith("securityGroupIngressRule:SecurityGroupIngressRule"):
        for key in ("cidrIpv4", "cidrIpv6"):
            cidr = need(props, key)
            if cidr:
                found.append((_ports(dict(props), "ipProtocol"), str(cidr)))
    elif res.type.endswith("securityGroupRule:SecurityGroupRule"):
        if need(props, "type") == "ingress":
            for key in ("cidrBlocks", "ipv6CidrBlocks"):
                found.extend((_ports(dict(props)), str(c)) for c in items(props, key))
    elif res.type.endswith("networkAclRule:NetworkAclRule") and not truthy(need(props, "egress", False)) \
            and str(need(props, "ruleAction", "")).lower() == "allow":
            for key in ("cidrBlock", "ipv6CidrBlock"):
                cidr = need(props, key)
                if cidr:
                    found.append((_ports(dict(props)), str(cidr)))
    return found


def _is_open(cidr: str) -> bool:
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False


def _principals(statement: dict[str, Any]) -> list[str]:
    principal = statement.get("Principal")
    if principal == "*":
        return ["*"]
    if isinstance(principal, dict):
        found: list[str] = []
        for kind, values in principal.items():
            found.extend(f"{kind}:{v}" for v in as_list(values))
        return found
    return []


def _account(principal_arn: str) -> str | None:
    if principal_arn.isdigit():
        return principal_arn
    parts = principal_arn.split(":")
    return parts[4] if len(parts) > 4 and parts[4] else None


_ACCOUNT_CONDITIONS = ("aws:principalaccount", "aws:sourceaccount", "kms:calleraccount", "aws:principalorgid")


def foreign_principals(res: Resource, ctx: Context) -> set[str]:
    """Principals of Allow statements outside the home state (wildcards, other accounts, federations)."""
    doc = policy_document(res.inputs.get("policy"), "policy")
    roles = ctx.stack_role_names()  # roles this stack creates live in the deploying (home) account
    bad: set[str] = set()
    for st in statements(doc):
        if st.get("Effect") != "Allow":
            continue
        conditioned = any(k.lower() in _ACCOUNT_CONDITIONS for block in (st.get("Condition") or {}).values()
                          if isinstance(block, dict) for k in block)
        for p in _principals(st):
            kind, _, value = p.partition(":")
            if p == "*" or value == "*":
                if not conditioned:
                    bad.add("*")
            elif kind == "Federated":
                bad.add(p)
            elif kind == "AWS" and ctx.home_accounts:
                account = _account(value)
                ours = value.split(":role/")[-1] in roles if ":role/" in value else False
                if account is not None and account not in ctx.home_accounts and not ours:
                    bad.add(value)
    return bad


def _allowed_actions(res: Resource) -> list[tuple[list[str], list[str], bool]]:
    """(actions, resources, is_not_action) of every Allow statement of the resource's policy."""
    return _allowed(policy_document(res.inputs.get("policy"), "policy"))


def _allowed(doc: dict[str, Any] | None) -> list[tuple[list[str], list[str], bool]]:
    found = []
    for st in statements(doc):
        if st.get("Effect") != "Allow":
            continue
        if "NotAction" in st:
            found.append(([str(a) for a in as_list(st["NotAction"])], [str(r) for r in as_list(st.get("Resource"))], True))
        else:
            found.append(([str(a) for a in as_list(st.get("Action"))], [str(r) for r in as_list(st.get("Resource"))], False))
    return found


# AWS managed policies that grant what EMB-IAM-01 / EMB-IAM-02 forbid, when attached to a role of the stack:
# they count as the grants they imply (the Lambda full-access ones include s3:*).
MANAGED_DESTRUCTIVE = ("AdministratorAccess", "PowerUserAccess", "AmazonS3FullAccess", "AWSKeyManagementServicePowerUser",
                       "AWSLambda_FullAccess", "AWSLambdaFullAccess", "AmazonS3OutpostsFullAccess",
                       "AmazonElasticMapReduceFullAccess", "AWSDataPipeline_FullAccess")
MANAGED_ADMIN = ("AdministratorAccess",)


def _managed_policy(res: Resource) -> str:
    arn = ref(res.inputs, "policyArn", "")
    return str(arn).rsplit("/", 1)[-1] if str(arn).startswith("arn:aws") and ":iam::aws:policy/" in str(arn) else ""


def _managed_grants(arns: Any) -> set[str]:
    names = {str(a).rsplit("/", 1)[-1] for a in as_list(arns) if ":iam::aws:policy/" in str(a)}
    return {f"{n} (AWS managed)" for n in names & set(MANAGED_DESTRUCTIVE)}


def destructive_grants(res: Resource) -> set[str]:
    if res.type.endswith(("rolePolicyAttachment:RolePolicyAttachment", "policyAttachment:PolicyAttachment")):
        return _managed_grants(ref(res.inputs, "policyArn", ""))
    if res.type == ROLE:  # inline policies and managed policies given on the role itself
        granted = _managed_grants(res.inputs.get("managedPolicyArns"))
        for i, inline in enumerate(as_list(res.inputs.get("inlinePolicies"))):
            if isinstance(inline, dict):
                granted |= _grants_of(policy_document(inline.get("policy"), f"inlinePolicies.{i}.policy"))
        return granted
    return _grants_of(policy_document(res.inputs.get("policy"), "policy"))


@lru_cache(maxsize=4096)
def _action_covers(action: str, target: str) -> bool:
    """Whether an IAM action pattern (`s3:*`, `s3:Delete*`) covers an action; case-insensitive, as IAM is.

    Kept: every policy of every embassy names the same few actions, matched against every destructive one."""
    return fnmatch.fnmatchcase(target.lower(), action.lower())


def _grants_of(doc: dict[str, Any] | None) -> set[str]:
    granted: set[str] = set()
    for actions, _resources, negated in _allowed(doc):
        for target in DESTRUCTIVE_ACTIONS:
            hit = any(_action_covers(a, target) for a in actions)
            if hit != negated:  # NotAction allows everything it does not list
                granted.add(target)
    return granted


def _region_ok(region: str, nation_code: str) -> bool:
    nation = model.nations().get(nation_code)
    return nation is not None and nation.partition_of(region) is not None


# --------------------------------------------------------------------------- encryption


@check("EMB-ENC-01")
def sse_uses_own_key(res: Resource, ctx: Context) -> Iterator[str]:
    rules = items(res.inputs, "rules") or items(res.inputs, "rule")
    if not rules:
        yield "no encryption rule"
    for i, rule in enumerate(rules):
        algo = need(rule, "applyServerSideEncryptionByDefault.sseAlgorithm") if isinstance(rule, dict) else None
        if algo not in ("aws:kms", "aws:kms:dsse"):
            yield f"rules[{i}] uses {algo or 'no algorithm'}, not aws:kms with the embassy's key"
            continue
        key_id = ref(rule, "applyServerSideEncryptionByDefault.kmsMasterKeyId")
        if not key_id:
            yield f"rules[{i}] uses the AWS-managed key aws/s3, not the embassy's own key"
        elif key_id != UNKNOWN and "alias/aws/" in str(key_id):
            yield f"rules[{i}] uses the AWS-managed key {key_id}"
        elif ctx.complete:
            keys = _depends_on(res, ctx, KEY)
            if not keys:
                yield f"rules[{i}] key {key_id} is not a KMS key of this stack"
            else:
                mine = ctx.embassy_of(res)
                others = {ctx.embassy_of(k) for k in keys} - {mine}
                if mine and others - {None}:
                    yield f"rules[{i}] uses the key of embassy {', '.join(sorted(o for o in others if o))}, not {mine}'s"


@check("EMB-ENC-02")
def bucket_has_sse(res: Resource, ctx: Context) -> Iterator[str]:
    if not ctx.referrers(res, SSE):
        yield f"bucket {res.name} has no default-encryption configuration (falls back to SSE-S3, an AWS-held key)"


def _volumes(res: Resource) -> list[tuple[str, dict[str, Any]]]:
    if res.type == VOLUME:
        return [("volume", dict(res.inputs))]
    vols: list[tuple[str, dict[str, Any]]] = []
    root = need(res.inputs, "rootBlockDevice", {})
    vols.append(("rootBlockDevice", root if isinstance(root, dict) else {}))
    for i, dev in enumerate(items(res.inputs, "ebsBlockDevices")):
        vols.append((f"ebsBlockDevices[{i}]", dev if isinstance(dev, dict) else {}))
    return vols


@check("EMB-ENC-03")
def volumes_encrypted(res: Resource, ctx: Context) -> Iterator[str]:
    by_default = any(truthy(r.inputs.get("enabled", True)) and ctx.region_of(r) == ctx.region_of(res)
                     for r in ctx.by_type(EBS_DEFAULT))
    for where, vol in _volumes(res):
        encrypted = need(vol, "encrypted")
        if not truthy(encrypted) and not by_default:
            yield f"{where} is not encrypted"


@check("EMB-ENC-04")
def volumes_own_key(res: Resource, ctx: Context) -> Iterator[str]:
    for where, vol in _volumes(res):
        if not ref(vol, "kmsKeyId"):
            yield f"{where} uses the AWS-managed aws/ebs key"


@check("EMB-ENC-05")
def trail_encrypted(res: Resource, ctx: Context) -> Iterator[str]:
    if not ref(res.inputs, "kmsKeyId"):
        yield "trail logs are not encrypted with a customer-managed KMS key"


@check("EMB-ENC-06")
def log_group_encrypted(res: Resource, ctx: Context) -> Iterator[str]:
    if not ref(res.inputs, "kmsKeyId"):
        yield "log group is not encrypted with a customer-managed KMS key"


# --------------------------------------------------------------------------- keys


@check("EMB-KMS-01")
def key_rotates(res: Resource, ctx: Context) -> Iterator[str]:
    if not truthy(need(res.inputs, "enableKeyRotation", False)):
        yield "automatic key rotation is off"
    period = number(need(res.inputs, "rotationPeriodInDays", 365))
    if period is not None and period > 365:
        yield f"rotation period {int(period)} days exceeds a year"


@measure("EMB-KMS-01")
def _rotation(res: Resource, ctx: Context) -> Any:
    return truthy(need(res.inputs, "enableKeyRotation", False))


@check("EMB-KMS-02")
def key_policy_home_only(res: Resource, ctx: Context) -> Iterator[str]:
    if policy_document(res.inputs.get("policy"), "policy") is None:
        yield "no explicit key policy: the default policy trusts every IAM principal of the account"
        return
    for principal in sorted(foreign_principals(res, ctx)):
        yield f"key policy allows {principal}, a principal outside the home state"


@measure("EMB-KMS-02")
def _foreign(res: Resource, ctx: Context) -> Any:
    return frozenset(foreign_principals(res, ctx))


@check("EMB-KMS-03")
def key_deletion_window(res: Resource, ctx: Context) -> Iterator[str]:
    days = number(need(res.inputs, "deletionWindowInDays", 30))
    if days is not None and days < 30:
        yield f"deletion window is {int(days)} days, not 30"


@measure("EMB-KMS-03")
def _window(res: Resource, ctx: Context) -> Any:
    return number(need(res.inputs, "deletionWindowInDays", 30))


@check("EMB-KMS-04")
def key_single_region(res: Resource, ctx: Context) -> Iterator[str]:
    if truthy(need(res.inputs, "multiRegion", False)):
        yield "multi-Region key: replicas can be made outside the host nation"


# --------------------------------------------------------------------------- buckets


def _lock_enabled(res: Resource) -> bool:
    if truthy(need(res.inputs, "objectLockEnabled", False)):
        return True
    legacy = need(res.inputs, "objectLockConfiguration", None)
    return isinstance(legacy, dict) and str(legacy.get("objectLockEnabled", "")).lower() == "enabled"


@check("EMB-S3-01")
def vault_object_lock(res: Resource, ctx: Context) -> Iterator[str]:
    if bucket_role(res, ctx) == "vault" and not _lock_enabled(res):
        yield f"vault bucket {res.name} is created without Object Lock"


@measure("EMB-S3-01")
def _lock(res: Resource, ctx: Context) -> Any:
    return _lock_enabled(res)


def _retention(res: Resource) -> tuple[str, float | None]:
    rules = items(res.inputs, "rule")
    if not rules:
        return "", None
    retention = rules[0].get("defaultRetention") if isinstance(rules[0], dict) else None
    if isinstance(retention, list):
        retention = retention[0] if retention else None
    if not isinstance(retention, dict):
        return "", None
    mode = str(need(retention, "mode", ""))
    days = number(need(retention, "days", None))
    years = number(need(retention, "years", None))
    if days is None and years is not None:
        days = years * 365
    return mode, days


@check("EMB-S3-02")
def lock_compliance_retention(res: Resource, ctx: Context) -> Iterator[str]:
    mode, days = _retention(res)
    if mode != "COMPLIANCE":
        yield f"Object Lock mode is {mode or 'unset'}, not COMPLIANCE"
    if days is None:
        yield "no default retention period"
        return
    required = ctx.retention_days_of(res) or 1
    if days < required:
        yield f"vault retention {int(days)} days is below the configured {required} days"


@measure("EMB-S3-02")
def _retention_days(res: Resource, ctx: Context) -> Any:
    return _retention(res)[1]


@check("EMB-S3-03")
def bucket_has_retention(res: Resource, ctx: Context) -> Iterator[str]:
    if _lock_enabled(res) and not ctx.referrers(res, LOCK):
        yield f"bucket {res.name} has Object Lock but no default retention"


def _versioning_enabled(res: Resource) -> bool:
    return str(need(res.inputs, "versioningConfiguration.status", "")) == "Enabled"


@check("EMB-S3-04")
def bucket_versioned(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type == VERSIONING:
        if not _versioning_enabled(res):
            yield f"versioning status is {res.inputs.get('versioningConfiguration', {}).get('status', 'unset')}"
    elif not any(_versioning_enabled(v) for v in ctx.referrers(res, VERSIONING)):
        yield f"bucket {res.name} is not versioned"


@measure("EMB-S3-04")
def _versioned(res: Resource, ctx: Context) -> Any:
    return _versioning_enabled(res) if res.type == VERSIONING else None


_PAB_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def _pab_off(res: Resource) -> list[str]:
    return [f for f in _PAB_FLAGS if not truthy(need(res.inputs, f, False))]


@check("EMB-S3-05")
def bucket_blocks_public(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type == PAB:
        off = _pab_off(res)
        if off:
            yield f"public access block leaves {', '.join(off)} off"
    elif not any(not _pab_off(p) for p in ctx.referrers(res, PAB)):
        yield f"bucket {res.name} has no complete public access block"


@measure("EMB-S3-05")
def _pab(res: Resource, ctx: Context) -> Any:
    return not _pab_off(res) if res.type == PAB else None


def _denies_plain_http(policy: Resource) -> bool:
    for st in statements(policy_document(policy.inputs.get("policy"), "policy")):
        cond = st.get("Condition") or {}
        bool_cond = {k.lower(): v for k, v in (cond.get("Bool") or {}).items()} if isinstance(cond, dict) else {}
        if st.get("Effect") == "Deny" and str(bool_cond.get("aws:securetransport", "")).lower() == "false":
            return True
    return False


@check("EMB-S3-06")
def bucket_tls_only(res: Resource, ctx: Context) -> Iterator[str]:
    if not any(_denies_plain_http(p) for p in ctx.referrers(res, BUCKET_POLICY)):
        yield f"bucket {res.name} accepts requests without TLS (no Deny on aws:SecureTransport false)"


@check("EMB-S3-07")
def bucket_not_force_destroy(res: Resource, ctx: Context) -> Iterator[str]:
    if truthy(need(res.inputs, "forceDestroy", False)):
        yield f"bucket {res.name} has forceDestroy: destroy empties it"


# --------------------------------------------------------------------------- IAM


BREAK_GLASS = "break-glass"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def _trust_is_break_glass(role: Resource, ctx: Context) -> bool:
    """The break-glass trust: assumed only with the external ID (which makes the document a secret), by the
    model's break-glass principals when the model and the document are at hand."""
    trust = role.inputs.get("assumeRolePolicy")
    if trust == SECRET:
        return True
    try:
        doc = policy_document(trust, "assumeRolePolicy")
    except Unknown:
        return False
    sts = [st for st in statements(doc) if st.get("Effect") == "Allow"]
    if not sts:
        return False
    allowed = set(ctx.model.principals.break_glass) if ctx.model else None
    for st in sts:
        cond = st.get("Condition") or {}
        equals = cond.get("StringEquals") if isinstance(cond, dict) else None
        if not isinstance(equals, dict) or not any(k.lower() == "sts:externalid" for k in equals):
            return False
        if allowed is not None and not {p.partition(":")[2] for p in _principals(st)} <= allowed:
            return False
    return True


def is_break_glass_role(role: Resource, ctx: Context) -> bool:
    return ctx.role_of(role) == BREAK_GLASS and _trust_is_break_glass(role, ctx)


def is_break_glass(res: Resource, ctx: Context) -> bool:
    """The one documented exception to EMB-IAM-01 (its use is on CloudTrail): a policy attached only to the
    role tagged break-glass whose trust policy is the break-glass one. A grant that cannot be tied to a role
    of the stack is no exception (fails closed); a name is never one."""
    if res.type == BUCKET_POLICY:
        return False
    roles = attached_roles(res, ctx)
    return bool(roles) and all(is_break_glass_role(r, ctx) for r in roles)


def break_glass_roles(ctx: Context) -> list[Resource]:
    """The roles exempt from EMB-IAM-01: a review and a check name them."""
    return [r for r in ctx.by_type(ROLE) if is_break_glass_role(r, ctx)]


@check("EMB-IAM-01")
def no_destructive_grants(res: Resource, ctx: Context) -> Iterator[str]:
    granted = destructive_grants(res)
    if granted and not is_break_glass(res, ctx):
        yield f"policy allows {', '.join(sorted(granted))}"


@measure("EMB-IAM-01")
def _destructive(res: Resource, ctx: Context) -> Any:
    return frozenset() if is_break_glass(res, ctx) else frozenset(destructive_grants(res))


@check("EMB-IAM-02")
def no_admin(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type.endswith("rolePolicyAttachment:RolePolicyAttachment"):
        if _managed_policy(res) in MANAGED_ADMIN:
            yield "role gets the AWS managed AdministratorAccess policy"
        return
    for actions, resources, negated in _allowed_actions(res):
        if not negated and "*" in actions and "*" in resources:
            yield 'policy allows "*" on "*"'


def _identity_documents(res: Resource) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(where, document) of every identity policy a resource carries: a role's inline ones, a policy's own."""
    if res.type == ROLE:
        for i, inline in enumerate(as_list(res.inputs.get("inlinePolicies"))):
            if isinstance(inline, dict):
                yield f"inlinePolicies[{i}]", policy_document(inline.get("policy"), f"inlinePolicies.{i}.policy")
    elif res.type in (POLICY, ROLE_POLICY, *grants.USER_GROUP_POLICIES):
        yield "policy", policy_document(res.inputs.get("policy"), "policy")


def _listed(actions: list[str], shown: int = 8) -> str:
    return ", ".join(actions[:shown]) + (f" (+{len(actions) - shown} more)" if len(actions) > shown else "")


def _pm(actions: frozenset[str]) -> list[str]:
    return sorted((a for a in actions if iamdb.level(a) == iamdb.PERMISSIONS), key=iamdb.importance)


@check("EMB-IAM-03")
def only_break_glass_manages_permissions(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type in (BUCKET_POLICY, KEY):
        yield from _resource_policy_pm(res, ctx)
        return
    allowed: set[str] = set()
    for _where, doc in _identity_documents(res):
        for st in statements(doc):
            if grants.is_allow(st):
                allowed |= grants.statement_actions(st)
    pm = _pm(frozenset(allowed))
    if pm and not is_break_glass(res, ctx):
        roles = attached_roles(res, ctx)
        who = ", ".join(sorted(f"{r.name} ({ctx.role_of(r) or 'untagged'})" for r in roles)) or "a role not in this input"
        yield f"grants permissions management to {who}: {_listed(pm)}"


def _resource_policy_pm(res: Resource, ctx: Context) -> Iterator[str]:
    """A vault's bucket policy or a key policy: permissions management only for break-glass (and, on a key, the home
    state's key administrators of the stack config)."""
    service = "kms" if res.type == KEY else "s3"
    admins = {f"AWS:{a}" for a in ctx.model.principals.key_admins} if ctx.model and res.type == KEY else set()
    for st in statements(policy_document(res.inputs.get("policy"), "policy")):
        if not grants.is_allow(st):
            continue
        pm = _pm(grants.statement_actions(st, service))
        if not pm:
            continue
        for p in grants.principals(st):
            role = grants.role_for_principal(p, res, ctx)
            if p in admins or (role is not None and is_break_glass_role(role, ctx)):
                continue
            yield f"{grants.resource_label(res)} grants permissions management to {role.name if role else p}: {_listed(pm)}"


def _managed_unknown(arn: Any, roles: list[Resource], ctx: Context) -> Iterator[str]:
    name = grants.managed_name(arn)
    if not name:
        return
    entry = managed_allow_list().get(name)
    tags = sorted({ctx.role_of(r) or "untagged" for r in roles})
    if entry is not None and roles and set(tags) <= set(entry.roles):
        return
    where = ", ".join(sorted(f"{r.name} ({ctx.role_of(r) or 'untagged'})" for r in roles)) or "a role not in this input"
    allowed = f" (allowed only on {', '.join(entry.roles)})" if entry else ""
    yield (f"AWS managed policy {name} on {where}: {iamdb.database().source} ships no content for it and the "
           f"catalog's allow-list does not name it for that role{allowed}")


def _unknown_actions(doc: dict[str, Any] | None) -> Iterator[str]:
    for st in statements(doc):
        if not grants.is_allow(st):
            continue
        for a in (str(x) for x in as_list(st.get("Action", st.get("NotAction")))):
            wild = any(c in a for c in "*?")
            if (wild and not iamdb.expand(a)) or (not wild and not iamdb.known(a)):
                yield f"{a} is an action {iamdb.database().source} does not know: what it grants cannot be judged"


@check("EMB-IAM-04")
def grants_are_known(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type in (*ATTACHMENTS, *grants.USER_GROUP_ATTACHMENTS):
        arn = ref(res.inputs, "policyArn", "")
        if grants.managed_name(arn):
            yield from _managed_unknown(arn, attached_roles(res, ctx), ctx)
        elif grants.attached_policy(res, ctx) is None:
            yield f"attaches {arn or 'a policy'} from outside this input: its content cannot be read"
        return
    if res.type == ROLE:
        for arn in as_list(res.inputs.get("managedPolicyArns")):
            yield from _managed_unknown(arn, [res], ctx)
    for _where, doc in _identity_documents(res):
        yield from _unknown_actions(doc)


# --------------------------------------------------------------------------- hosts


@check("EMB-EC2-01")
def imdsv2(res: Resource, ctx: Context) -> Iterator[str]:
    tokens = need(res.inputs, "metadataOptions.httpTokens", "optional")
    if tokens != "required":
        yield f"metadataOptions.httpTokens is {tokens}: IMDSv1 allowed"


@measure("EMB-EC2-01")
def _imds(res: Resource, ctx: Context) -> Any:
    return need(res.inputs, "metadataOptions.httpTokens", "optional") == "required"


def _public_ip(res: Resource) -> str:
    """The public address an instance was given (an output of an applied state), "" when none."""
    value = res.inputs.get("publicIp")
    return value if isinstance(value, str) and value and not is_unknown(value) else ""


def _has_public_ip(res: Resource) -> bool:
    return truthy(need(res.inputs, "associatePublicIpAddress", False)) or bool(_public_ip(res))


@check("EMB-EC2-02")
def no_public_ip(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type == INSTANCE:
        if _has_public_ip(res):
            address = _public_ip(res)
            yield "host gets a public IP address" + (f" ({address})" if address else "")
    else:
        yield "an Elastic IP gives the enclave a public address"


@measure("EMB-EC2-02")
def _public(res: Resource, ctx: Context) -> Any:
    return _has_public_ip(res) if res.type == INSTANCE else True


@check("EMB-EC2-03")
def subnet_private(res: Resource, ctx: Context) -> Iterator[str]:
    if truthy(need(res.inputs, "mapPublicIpOnLaunch", False)):
        yield "subnet assigns public IPs on launch"


@check("EMB-EC2-04")
def no_key_pair(res: Resource, ctx: Context) -> Iterator[str]:
    key = ref(res.inputs, "keyName")
    if key:
        yield f"host carries the SSH key pair {key}"


# --------------------------------------------------------------------------- network


INGRESS_TYPES = ("aws:ec2/securityGroup:SecurityGroup", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                 "aws:ec2/securityGroupRule:SecurityGroupRule", "aws:ec2/networkAclRule:NetworkAclRule",
                 "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")


def _public_net(cidr: str) -> Any:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return None if any(net.version == r.version and net.subnet_of(r) for r in PRIVATE_RANGES) else net  # type: ignore[arg-type]


def _pieced_exposures(res: Resource, ctx: Context) -> set[str]:
    """The internet opened piecewise: the union of an embassy's public sources for a port covers every address
    (0.0.0.0/1 + 128.0.0.0/1), though no single rule says 0.0.0.0/0."""
    mine = [(ports, net) for ports, cidr in ingress_sources(res) if (net := _public_net(cidr)) is not None]
    if not mine:
        return set()
    peers = [res]
    if ctx.complete:
        emb = ctx.embassy_of(res)
        peers += [r for r in ctx.by_type(*INGRESS_TYPES) if r.urn != res.urn and ctx.embassy_of(r) == emb]
    sources: list[tuple[str, Any]] = []
    for peer in peers:
        try:
            sources += [(p, n) for p, c in ingress_sources(peer) if (n := _public_net(c)) is not None]
        except Unknown:
            continue
    found = set()
    for ports in {p for p, _ in mine}:
        nets = [n for p, n in sources if p in (ports, "all traffic")]
        for version in (4, 6):
            same = [n for n in nets if n.version == version]
            if any(n.prefixlen == 0 for n in same) or not same:
                continue  # a single rule already says the whole internet, or none of this family
            if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(same)):
                pieces = ", ".join(sorted({str(n) for n in same}))
                found.add(f"{ports} to the whole internet in pieces ({pieces})")
    return found


def open_exposures(res: Resource, ctx: Context | None = None) -> set[str]:
    found = {f"{ports} to {cidr}" for ports, cidr in ingress_sources(res) if _is_open(cidr)}
    return found | (_pieced_exposures(res, ctx) if ctx is not None else set())


@check("EMB-NET-01")
def no_open_ingress(res: Resource, ctx: Context) -> Iterator[str]:
    what = "network ACL" if "networkAcl" in res.type else "security group"
    for exposure in sorted(open_exposures(res, ctx)):
        yield f"{what} opens {exposure}"


@measure("EMB-NET-01")
def _exposures(res: Resource, ctx: Context) -> Any:
    return frozenset(open_exposures(res, ctx))


@check("EMB-NET-02")
def ingress_from_declared(res: Resource, ctx: Context) -> Iterator[str]:
    declared: list[Any] = []
    emb = ctx.embassy_of(res)
    if ctx.model and emb:
        try:
            declared = [ipaddress.ip_network(c) for c in ctx.model.embassy(emb).admin_cidrs]
        except KeyError:
            declared = []
    for ports, cidr in ingress_sources(res):
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if net.prefixlen == 0:
            continue  # EMB-NET-01 says it
        inside = any(net.version == d.version and net.subnet_of(d) for d in declared)
        private = any(net.version == r.version and net.subnet_of(r) for r in PRIVATE_RANGES)  # type: ignore[arg-type]
        if not private and not inside:
            yield f"inbound {ports} from {cidr}, which is neither private nor an admin network of the embassy"


@check("EMB-NET-03")
def no_gateway(res: Resource, ctx: Context) -> Iterator[str]:
    yield f"{res.type.rsplit(':', 1)[-1]} {res.name} connects the enclave to the internet"


@check("EMB-NET-04")
def vpc_flow_logs(res: Resource, ctx: Context) -> Iterator[str]:
    if not ctx.referrers(res, FLOW_LOG, prop="vpcId"):
        yield f"VPC {res.name} has no flow log"


@check("EMB-NET-05")
def flow_log_all(res: Resource, ctx: Context) -> Iterator[str]:
    traffic = need(res.inputs, "trafficType", "")
    if traffic != "ALL":
        yield f"flow log captures {traffic or 'unset'} traffic, not ALL"


@check("EMB-NET-06")
def default_sg_closed(res: Resource, ctx: Context) -> Iterator[str]:
    if items(res.inputs, "ingress") or items(res.inputs, "egress"):
        yield "the default security group allows traffic"


# --------------------------------------------------------------------------- logging


@check("EMB-LOG-01")
def embassy_has_trail(res: Resource, ctx: Context) -> Iterator[str]:
    emb, region = ctx.embassy_of(res), ctx.region_of(res)
    trails = ctx.by_type(TRAIL)
    if not any((emb and ctx.embassy_of(t) == emb) or (region and ctx.region_of(t) == region) for t in trails):
        yield f"no CloudTrail trail for embassy {emb or '?'} ({region or 'region unknown'})"


@check("EMB-LOG-02")
def trail_validation(res: Resource, ctx: Context) -> Iterator[str]:
    if not truthy(need(res.inputs, "enableLogFileValidation", False)):
        yield "log file validation is off"


@measure("EMB-LOG-02")
def _validation(res: Resource, ctx: Context) -> Any:
    return truthy(need(res.inputs, "enableLogFileValidation", False))


@check("EMB-LOG-03")
def trail_multi_region(res: Resource, ctx: Context) -> Iterator[str]:
    if not truthy(need(res.inputs, "isMultiRegionTrail", False)):
        yield "trail covers only its own region"


@check("EMB-LOG-04")
def trail_data_events(res: Resource, ctx: Context) -> Iterator[str]:
    for sel in items(res.inputs, "eventSelectors"):
        if any(isinstance(d, dict) and d.get("type") == "AWS::S3::Object" for d in as_list(sel.get("dataResources"))):
            return
    for sel in items(res.inputs, "advancedEventSelectors"):
        for field in as_list(sel.get("fieldSelectors")):
            if isinstance(field, dict) and field.get("field") == "resources.type" and \
                    "AWS::S3::Object" in as_list(field.get("equals")):
                return
    yield "trail does not record S3 object-level (data) events"


@check("EMB-LOG-05")
def log_retention(res: Resource, ctx: Context) -> Iterator[str]:
    days = number(need(res.inputs, "retentionInDays", 0))
    if days and days < 365:
        yield f"log group keeps logs {int(days)} days"


@measure("EMB-LOG-05")
def _log_days(res: Resource, ctx: Context) -> Any:
    days = number(need(res.inputs, "retentionInDays", 0))
    return days if days else float("inf")  # 0 or unset: kept forever


# --------------------------------------------------------------------------- placement and tags


def _regional(res: Resource) -> bool:
    if res.is_provider:
        return res.type == "pulumi:providers:aws"
    return res.type.startswith("aws:") and not res.type.startswith(GLOBAL_TYPE_PREFIXES)


@check("EMB-PLC-01")
def placement(res: Resource, ctx: Context) -> Iterator[str]:
    if not _regional(res):
        return
    region = ctx.region_of(res)
    if region is None:
        return  # EMB-PLC-02 says it
    if region == UNKNOWN:
        need({"region": UNKNOWN}, "region")
        return
    nation = ctx.nation_of(res)
    where = model.region_nation(region)
    located = f"{where.name} ({where.code})" if where else "an unknown location"
    if nation:
        if not _region_ok(region, nation):
            yield f"resource moves to region {region}, located in {located}, outside host nation {nation}"
    elif ctx.model:
        hosts = {e.nation for e in ctx.model.embassies}
        if not any(_region_ok(region, n) for n in hosts):
            yield f"resource in region {region} ({located}), outside every host nation of the stack"


@measure("EMB-PLC-01")
def _region(res: Resource, ctx: Context) -> Any:
    return ctx.region_of(res)


@check("EMB-PLC-02")
def explicit_region(res: Resource, ctx: Context) -> Iterator[str]:
    if not _regional(res) or res.is_provider or res.inputs.get("region"):
        return
    prov = ctx.provider_of(res)
    prov_name = prov.name if prov else (res.provider.rsplit("::", 1)[-1] if res.provider else "")
    if not prov_name or prov_name.startswith("default"):
        yield "resource uses the default provider: its region comes from aws:region, not from its embassy"


@check("EMB-TAG-01")
def required_tags(res: Resource, ctx: Context) -> Iterator[str]:
    tags = need(res.inputs, "tags", {})
    if not isinstance(tags, dict):
        return
    present = {k.lower() for k in ctx.tags_of(res)}
    missing = [t for t in REQUIRED_TAGS if t not in present]
    if missing:
        yield f"missing tags: {', '.join(missing)}"


# --------------------------------------------------------------------------- changes


DATA_LOSS_OPS = ("replace", "delete", "create-replacement", "delete-replaced")


def data_loss(res: Resource, ctx: Context, op: str) -> str | None:
    """EMB-CHG-01: what a replace or delete of this resource loses (None when nothing)."""
    if op not in DATA_LOSS_OPS:
        return None
    verb = "replaced" if "replace" in op else "deleted"
    if res.type == KEY:
        return f"key {res.name} {verb}: data encrypted under it becomes unreadable (data loss)"
    if res.type == BUCKET:
        role = bucket_role(res, ctx)
        what = {"vault": "vault", "log": "log bucket"}.get(role, "bucket")
        loses = "evidence loss" if role == "log" else "data loss"
        return f"{what} {res.name} {verb}: {loses}"
    return None


@check("EMB-CHG-01")
def _no_change_here(res: Resource, ctx: Context) -> Iterator[str]:
    return iter(())  # judged on operations by the review (see data_loss)


@check("EMB-CHG-02")
def protected(res: Resource, ctx: Context) -> Iterator[str]:
    if res.protect is False:
        yield f"{res.name} is not protected (protect / retainOnDelete)"


# --------------------------------------------------------------------------- the data plane's roles (issue 24)

HOST_READ = frozenset(a.lower() for a in ("s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions",
                                          "s3:GetBucketLocation", "s3:GetObjectRetention",
                                          "s3:GetBucketObjectLockConfiguration"))
# GenerateDataKey: the restore test's record, which the bucket's default SSE-KMS encrypts under the embassy's key.
HOST_KMS = frozenset({"kms:decrypt", "kms:describekey", "kms:generatedatakey"})
# The host's one write: its scheduled restore test's record, a new object under restore-tests/ of its own vault
# (exactly that prefix, nothing under it named otherwise), never replacing one (a Deny without If-None-Match).
HOST_RECORD = "s3:putobject"
HOST_RECORDS = re.compile(r"arn:aws[a-z-]*:s3:::(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/restore-tests/\*")
CREATE_ONLY = "s3:if-none-match"
HOST_MANAGED = ("AmazonSSMManagedInstanceCore",)  # SSM Session Manager: how hosts are reached without inbound SSH
S3_WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:RestoreObject")


def _of_role(res: Resource, ctx: Context, tag: str) -> bool:
    """Whether the policy is attached to a role tagged `tag` (by the components; never judged by name)."""
    return any(ctx.role_of(r) == tag for r in attached_roles(res, ctx))


def _bucket_of(arn: str) -> str:
    return arn.split(":::", 1)[-1].split("/", 1)[0] if arn.startswith("arn:") else arn


def _host_buckets(role: Resource, ctx: Context) -> set[str]:
    """Every bucket any policy attached to the role lets it reach with an s3 action (all policies: a second one
    naming another bucket counts as much as a second statement)."""
    found: set[str] = set()
    for pol in ctx.by_type("aws:iam/rolePolicy:RolePolicy", POLICY):
        if role not in attached_roles(pol, ctx):
            continue
        for actions, resources, negated in _allowed(policy_document(pol.inputs.get("policy"), "policy")):
            if negated or any(a.lower().startswith("s3:") or a == "*" for a in actions):
                found |= {_bucket_of(r) for r in resources}
    return found


def _create_only(doc: dict[str, Any] | None, resource: str) -> bool:
    """Whether the policy denies s3:PutObject on `resource` unless the request says If-None-Match (create only)."""
    for st in statements(doc):
        if st.get("Effect") != "Deny" or "NotAction" in st or "NotResource" in st:
            continue
        if not any(_action_covers(str(a), "s3:PutObject") for a in as_list(st.get("Action"))):
            continue
        if not any(fnmatch.fnmatchcase(resource, str(r)) for r in as_list(st.get("Resource"))):
            continue
        null = (st.get("Condition") or {}).get("Null") or {}
        if isinstance(null, dict) and str(next((v for k, v in null.items() if k.lower() == CREATE_ONLY), "")).lower() \
                == "true" and len(st.get("Condition") or {}) == 1 and len(null) == 1:
            return True
    return False


@check("EMB-HST-01")
def host_reads_own_vault_only(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type == ROLE or not _of_role(res, ctx, "host"):
        return
    if res.type in ATTACHMENTS:
        managed = _managed_policy(res)
        if managed not in HOST_MANAGED:
            yield f"{res.name} attaches {managed or ref(res.inputs, 'policyArn', '?')} to the host role: SSM only"
        return
    reaches_s3 = False
    doc = policy_document(res.inputs.get("policy"), "policy")
    for actions, resources, negated in _allowed(doc):
        if negated:
            yield f"{res.name} allows the host role everything but {', '.join(actions)} (NotAction)"
            continue
        lowered = [a.lower() for a in actions]
        records = bool(resources) and all(HOST_RECORDS.fullmatch(r) for r in resources)
        extra = [a for a, low in zip(actions, lowered, strict=True)
                 if (low.startswith("s3:") or low == "*") and low not in HOST_READ
                 and not (low == HOST_RECORD and records)]
        if records and HOST_RECORD in lowered:
            unguarded = [r for r in resources if not _create_only(doc, r)]
            if unguarded:
                yield (f"{res.name} lets the host role replace a restore-test record at {', '.join(unguarded)}: deny "
                       f"s3:PutObject there unless {CREATE_ONLY} is given (a new object only)")
        extra += [a for a, low in zip(actions, lowered, strict=True) if low.startswith("kms:") and low not in HOST_KMS]
        if extra:
            yield f"{res.name} allows the host role {', '.join(extra)}: it reads its own vault, never more"
        reaches_s3 = reaches_s3 or any(low.startswith("s3:") or low == "*" for low in lowered)
    buckets = sorted({b for role in attached_roles(res, ctx) for b in _host_buckets(role, ctx)})
    if reaches_s3 and (len(buckets) != 1 or any(c in buckets[0] for c in "*?")):
        yield f"{res.name} lets the host role read {', '.join(buckets) or 'no named bucket'}: its own vault only"
    if reaches_s3:
        vaults = [d for d in (ctx.resources.get(u) for u in res.dependencies) if d is not None and d.type == BUCKET]
        if not vaults or any(bucket_role(v, ctx) != "vault" or v.provider != res.provider for v in vaults):
            yield f"{res.name} is not tied to a vault of its own embassy (it depends on no vault bucket on its provider)"


@check("EMB-CUS-01")
def custody_writes_only_bundles(res: Resource, ctx: Context) -> Iterator[str]:
    if res.type == ROLE or not _of_role(res, ctx, "custody"):
        return
    if res.type in ATTACHMENTS:
        if _managed_policy(res) or ref(res.inputs, "policyArn", ""):
            yield f"{res.name} attaches a managed policy to the custody role: its grants are not limited to custody/"
        return
    prefix = f"/custody/{ctx.model.stack}/" if ctx.model is not None else "/custody/"
    for actions, resources, negated in _allowed(policy_document(res.inputs.get("policy"), "policy")):
        writes = negated or any(_action_covers(a, w) for a in actions for w in S3_WRITES)
        outside = [r for r in resources if prefix not in r or r.count("*") > 1]
        if writes and outside:
            yield f"{res.name} lets the custody role write {', '.join(outside)}: only {prefix.strip('/')}/ of the vault"
