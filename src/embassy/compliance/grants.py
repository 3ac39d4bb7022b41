"""Who may do what: the effective actions of every role of a stack, and of every principal of a vault or key policy.

Sources, per role (by its `data-embassy:role` tag, never its name): inline policies on the role, RolePolicy
resources, customer managed policies attached through attachments, AWS managed policies (their content is not in
the database: they show as themselves), and the trust policy (who may assume the role). Resource policies: bucket
policies and key policies, per principal. Wildcards and NotAction are expanded against the IAM database; NotResource
is kept as "every resource except"; an unconditional Deny takes away what it covers; a conditional one does not
(it may not apply: what a role may do is never under-counted).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from embassy.compliance import iamdb
from embassy.compliance.context import Context, Resource, SecretValue
from embassy.compliance.props import SECRET, Unknown, as_list, policy_document, statements

ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
POLICY = "aws:iam/policy:Policy"
ATTACHMENTS = ("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "aws:iam/policyAttachment:PolicyAttachment")
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
# Grants to IAM users and groups: no role of the stack holds them, so never break-glass (they fail closed).
USER_GROUP_POLICIES = ("aws:iam/userPolicy:UserPolicy", "aws:iam/groupPolicy:GroupPolicy")
USER_GROUP_ATTACHMENTS = ("aws:iam/userPolicyAttachment:UserPolicyAttachment",
                          "aws:iam/groupPolicyAttachment:GroupPolicyAttachment")
KEY = "aws:kms/key:Key"
TRUST = "assume role (trust policy)"
# Pseudo access levels of rows that are not actions of the database.
MANAGED = "AWS managed policy"
TRUSTED = "Trusted principals"
GROUP_ORDER = (iamdb.PERMISSIONS, iamdb.WRITE, iamdb.TAGGING, iamdb.READ, iamdb.LIST, MANAGED, iamdb.UNKNOWN_LEVEL,
               TRUSTED)
_AUTONAME = re.compile(r"-[0-9a-f]{7}$")


def managed_name(arn: Any) -> str:
    """The name of an AWS managed policy ARN (any partition), "" for anything else."""
    text = str(arn)
    return text.rsplit("/", 1)[-1] if text.startswith("arn:") and ":iam::aws:policy/" in text else ""


def managed_entry(name: str) -> str:
    return f"{name} (AWS managed)"


def level_of(entry: str) -> str:
    """The group a row's entry belongs to: the action's access level, or what the pseudo entry is."""
    if entry.endswith(" (AWS managed)"):
        return MANAGED
    if entry.startswith("trusted: "):
        return TRUSTED
    return iamdb.level(entry)


@dataclass
class Row:
    role: str
    role_tag: str
    resource: str
    entries: set[str] = field(default_factory=set)


@dataclass
class _Acc:
    """Allowed (entry, resource) pairs of one principal, and the unconditional denies that take some away."""

    role: str
    role_tag: str
    allowed: dict[str, set[str]] = field(default_factory=dict)  # resource -> entries
    denied: list[tuple[frozenset[str], list[str]]] = field(default_factory=list)

    def allow(self, resource: str, entries: frozenset[str] | set[str]) -> None:
        self.allowed.setdefault(resource, set()).update(entries)

    def rows(self) -> Iterator[Row]:
        for resource, entries in self.allowed.items():
            kept = {e for e in entries if not any(e in acts and _covers(res, resource) for acts, res in self.denied)}
            yield Row(self.role, self.role_tag, resource, kept)


def _covers(patterns: list[str], resource: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(resource, p) for p in patterns)


def statement_actions(st: dict[str, Any], service: str | None = None) -> frozenset[str]:
    """The actions a statement names, expanded; NotAction as its complement (within `service` for a resource policy)."""
    if "NotAction" in st:
        listed = [str(a) for a in as_list(st["NotAction"])]
        pool = iamdb.expand(f"{service}:*") if service else iamdb.every_action()
        return frozenset(pool - iamdb.expand_all(listed))
    return iamdb.expand_all([str(a) for a in as_list(st.get("Action"))])


def statement_resources(st: dict[str, Any]) -> list[str]:
    if "NotResource" in st:
        return [f"* except {', '.join(sorted(str(r) for r in as_list(st['NotResource'])))}"]
    return sorted({str(r) for r in as_list(st.get("Resource"))}) or ["*"]


def is_allow(st: dict[str, Any]) -> bool:
    # IAM wants "Allow" exactly; anything that is not a plain Deny counts as a grant (fails closed)
    return str(st.get("Effect", "")).strip().lower() != "deny"


def _add_document(acc: _Acc, doc: dict[str, Any] | None) -> None:
    for st in statements(doc):
        actions = statement_actions(st)
        resources = statement_resources(st)
        if is_allow(st):
            for r in resources:
                acc.allow(r, actions)
        elif not st.get("Condition") and "NotResource" not in st:
            acc.denied.append((actions, [str(r) for r in as_list(st.get("Resource"))] or ["*"]))


def _document(res: Resource, value: Any, where: str, acc: _Acc) -> None:
    try:
        doc = policy_document(value, where)
    except Unknown:
        acc.allow("*", {f"{res.name}: policy unknown until apply"})
        return
    _add_document(acc, doc)


def role_tag(role: Resource, ctx: Context) -> str:
    return ctx.role_of(role)


def attached_roles(res: Resource, ctx: Context) -> list[Resource]:
    """The roles of the stack a policy is attached to: by dependency, or by the role input naming one of them.

    A standalone policy counts through the attachments that depend on it.
    """
    if res.type == ROLE:
        return [res]
    if res.type == POLICY:
        found: list[Resource] = []
        for att in ctx.by_type(*ATTACHMENTS):
            if res.urn in att.dependencies:
                found.extend(attached_roles(att, ctx))
        return found
    roles = [d for d in (ctx.resources.get(u) for u in res.dependencies) if d is not None and d.type == ROLE]
    named = res.inputs.get("role")
    if isinstance(named, str) and named:
        roles += [r for r in ctx.by_type(ROLE) if named in (r.inputs.get("name"), r.inputs.get("arn"), r.inputs.get("id"))
                  and r not in roles]
    return roles


def roles_of(res: Resource, ctx: Context) -> list[Resource]:
    """The stack's roles a policy-bearing resource is attached to (by dependency or by the name it gives)."""
    return attached_roles(res, ctx)


def attached_policy(att: Resource, ctx: Context) -> Resource | None:
    """The customer managed policy of the stack an attachment attaches (by dependency)."""
    found = [ctx.resources[u] for u in att.dependencies if u in ctx.resources and ctx.resources[u].type == POLICY]
    return found[0] if len(found) == 1 else None


def _role_key(res: Resource, ctx: Context, roles: list[Resource]) -> list[tuple[str, str]]:
    if roles:
        return [(r.name, role_tag(r, ctx)) for r in roles]
    for kind in ("user", "group"):
        if res.inputs.get(kind):
            return [(f"{kind} {res.inputs[kind]}", "")]
    named = res.inputs.get("role") or res.inputs.get("roles")
    return [(f"{', '.join(str(n) for n in as_list(named)) or res.name} (not a role of this input)", "")]


def _trust(role: Resource, acc: _Acc) -> None:
    value = role.inputs.get("assumeRolePolicy")
    if value == SECRET:
        digest = value.digest[:12] if isinstance(value, SecretValue) and value.digest else "redacted"
        acc.allow(TRUST, {f"trusted: (secret trust policy {digest}: its principals cannot be shown)"})
        return
    try:
        doc = policy_document(value, "assumeRolePolicy")
    except Unknown:
        acc.allow(TRUST, {"trusted: (trust policy unknown until apply)"})
        return
    for st in statements(doc):
        if not is_allow(st):
            continue
        actions = sorted(statement_actions(st)) or [str(a) for a in as_list(st.get("Action"))]
        cond = " if " + ", ".join(sorted(k for block in st["Condition"].values() if isinstance(block, dict)
                                         for k in block)) if isinstance(st.get("Condition"), dict) else ""
        for p in principals(st):
            acc.allow(TRUST, {f"trusted: {p} may {'/'.join(a.split(':')[-1] for a in actions)}{cond}"})


def principals(st: dict[str, Any]) -> list[str]:
    principal = st.get("Principal")
    if principal == "*":
        return ["*"]
    if isinstance(principal, dict):
        return [f"{kind}:{v}" for kind, values in principal.items() for v in as_list(values)]
    if "NotPrincipal" in st:
        return ["* except " + ", ".join(principals({"Principal": st["NotPrincipal"]}))]
    return []


def role_for_principal(principal: str, res: Resource, ctx: Context) -> Resource | None:
    """The stack's role an `AWS:<arn>` principal of a resource policy names: by its name or ARN, else by its
    auto-name (`<logical>-<7 hex>`). Only to show it under that role: the role's tag and trust decide what it is."""
    kind, _, arn = principal.partition(":")
    if kind != "AWS" or ":role/" not in arn:
        return None
    name = arn.rsplit("/", 1)[-1]
    roles = ctx.by_type(ROLE)
    for r in roles:
        if name in (r.inputs.get("name"), r.inputs.get("id")) or arn == r.inputs.get("arn"):
            return r
    deps = [ctx.resources[u] for u in res.dependencies if u in ctx.resources]
    for r in [*deps, *roles]:  # the roles the policy depends on first
        if r.type == ROLE and _AUTONAME.sub("", name) == r.name:
            return r
    return None


def resource_label(res: Resource) -> str:
    return f"{'key' if res.type == KEY else 'bucket'} policy of {res.name}"


def _resource_policy(res: Resource, ctx: Context, accs: dict[str, _Acc]) -> None:
    service = "kms" if res.type == KEY else "s3"
    label = resource_label(res)
    try:
        doc = policy_document(res.inputs.get("policy"), "policy")
    except Unknown:
        acc = accs.setdefault(f"(unknown principals of {label})", _Acc(f"(unknown principals of {label})", ""))
        acc.allow(label, {f"{res.name}: policy unknown until apply"})
        return
    for st in statements(doc):
        if not is_allow(st):
            continue
        actions = statement_actions(st, service)
        for p in principals(st):
            role = role_for_principal(p, res, ctx)
            key = role.name if role is not None else p
            acc = accs.setdefault(key, _Acc(key, role_tag(role, ctx) if role is not None else ""))
            acc.allow(label, actions)


def permissions(ctx: Context) -> list[Row]:
    """Every (principal, resource) row of the stack with the actions it allows, sorted."""
    accs: dict[str, _Acc] = {}

    def acc_for(name: str, tag: str) -> _Acc:
        return accs.setdefault(name, _Acc(name, tag))

    for role in ctx.by_type(ROLE):
        acc = acc_for(role.name, role_tag(role, ctx))
        _trust(role, acc)
        for i, inline in enumerate(as_list(role.inputs.get("inlinePolicies"))):
            if isinstance(inline, dict):
                _document(role, inline.get("policy"), f"inlinePolicies[{i}].policy", acc)
        for arn in as_list(role.inputs.get("managedPolicyArns")):
            _attach_arn(arn, acc)
    for res in ctx.by_type(ROLE_POLICY, POLICY, *USER_GROUP_POLICIES):
        targets = _role_key(res, ctx, roles_of(res, ctx))
        for name, tag in targets:
            _document(res, res.inputs.get("policy"), "policy", acc_for(name, tag))
    for att in ctx.by_type(*ATTACHMENTS, *USER_GROUP_ATTACHMENTS):
        if attached_policy(att, ctx) is not None:
            continue  # counted through the policy itself
        for name, tag in _role_key(att, ctx, roles_of(att, ctx)):
            _attach_arn(att.inputs.get("policyArn"), acc_for(name, tag))
    for res in ctx.by_type(BUCKET_POLICY, KEY):
        _resource_policy(res, ctx, accs)
    rows = [row for acc in accs.values() for row in acc.rows()]
    return sorted(rows, key=lambda r: (r.role, r.resource))


def _attach_arn(arn: Any, acc: _Acc) -> None:
    name = managed_name(arn)
    if name:
        acc.allow("*", {managed_entry(name)})
    elif arn:
        acc.allow("*", {f"{arn}: customer managed policy outside this input (content unknown)"})
