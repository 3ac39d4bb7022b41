"""Compare a base and a head: the changes, the findings on head, and what weakens a control."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from embassy.compliance.catalog import Control, Measure, control, controls
from embassy.compliance.checks import MEASURES, break_glass_roles, bucket_role, data_loss
from embassy.compliance.context import Context, Resource, SecretValue
from embassy.compliance.evaluate import SHAPE_ERRORS, Finding, evaluate
from embassy.compliance.props import Unknown
from embassy.errors import EXIT_FINDING, EXIT_OK, UserError
from embassy.review.permissions import PermissionChange, permission_diff
from embassy.review.sources import Change, Source

SUMMARY_OPS = ("create", "update", "replace", "delete")
# Inputs whose change makes the AWS provider replace the resource (ForceNew in its schema); `region` for all.
REPLACE_KEYS: dict[str, tuple[str, ...]] = {
    "aws:s3/bucket:Bucket": ("bucket", "bucketPrefix", "objectLockEnabled"),
    "aws:kms/key:Key": ("customerMasterKeySpec", "keyUsage", "multiRegion", "customKeyStoreId", "xksKeyId"),
    "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration": ("bucket", "expectedBucketOwner"),
    "aws:s3/bucketVersioning:BucketVersioning": ("bucket",),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": ("bucket",),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": ("bucket",),
    "aws:ec2/instance:Instance": ("ami", "availabilityZone", "subnetId", "keyName", "associatePublicIpAddress",
                                  "privateIp", "tenancy", "rootBlockDevice"),
    "aws:ec2/vpc:Vpc": ("cidrBlock", "instanceTenancy"),
    "aws:ec2/subnet:Subnet": ("vpcId", "cidrBlock", "availabilityZone"),
    "aws:ec2/securityGroup:SecurityGroup": ("name", "namePrefix", "vpcId", "description"),
    "aws:cloudtrail/trail:Trail": ("name",),
    "aws:ec2/flowLog:FlowLog": ("vpcId", "trafficType", "logDestination", "logDestinationType", "iamRoleArn"),
    "aws:cloudwatch/logGroup:LogGroup": ("name", "namePrefix"),
}


@dataclass(frozen=True)
class Weakening:
    control: str
    severity: str
    mandatory: bool
    urn: str
    type: str
    op: str
    before: str
    after: str
    message: str
    embassy: str = ""

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Review:
    base_label: str
    head_label: str
    changes: list[Change]
    findings: list[Finding]
    weakenings: list[Weakening]
    embassies: dict[str, str]  # urn -> embassy ("" when stack-wide)
    stack: str | None = None
    notes: list[str] = field(default_factory=list)
    sides: list[str] = field(default_factory=list)  # what was read, side by side
    permissions: list[PermissionChange] = field(default_factory=list)  # who may now do what, shown first
    iam_database: str = ""
    provenance: list[str] = field(default_factory=list)  # where each side's plan came from: the first lines

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys((*SUMMARY_OPS, "other"), 0))
        for ch in self.changes:
            table[self.embassies.get(ch.urn) or "(stack-wide)"][ch.op if ch.op in SUMMARY_OPS else "other"] += 1
        return dict(sorted(table.items()))

    @property
    def exit_code(self) -> int:
        failed = any(f.mandatory for f in self.findings) or any(w.mandatory for w in self.weakenings)
        return EXIT_FINDING if failed else EXIT_OK


# --------------------------------------------------------------------------- inferring ops


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items() if k != "__defaults"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _has_secret(value: Any) -> bool:
    if isinstance(value, SecretValue):
        return True
    if isinstance(value, Mapping):
        return any(_has_secret(v) for v in value.values())
    return isinstance(value, list) and any(_has_secret(v) for v in value)


NOW_SECRET = " (now secret)"


def _now_secret(before: Any, after: Any) -> bool:
    """A plain value that became a secret with the same plaintext (known where the secret carries its plaintext:
    an export with --show-secrets, a preview): no update, only its storage changed."""
    if not isinstance(after, SecretValue) or isinstance(before, SecretValue) or before is None:
        return False
    forms = {json.dumps(before, sort_keys=True)}
    if isinstance(before, str):
        forms.add(before)
    return after.digest in {hashlib.sha256(f.encode()).hexdigest() for f in forms}


def _key_label(k: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    if _now_secret(a.get(k), b.get(k)):
        return f"{k}{NOW_SECRET}"
    # a secret is named, never shown: "key (secret)" when either side stores it as one
    return f"{k} (secret)" if _has_secret(a.get(k)) or _has_secret(b.get(k)) else k


def diff_keys(before: Resource, after: Resource) -> list[str]:
    """The declared inputs that differ (secrets compare as secrets), and the provider when both sides name one."""
    a, b = _clean(dict(before.asked)), _clean(dict(after.asked))
    keys = sorted(_key_label(k, a, b) for k in set(a) | set(b) if a.get(k) != b.get(k))
    if before.provider and after.provider and before.provider != after.provider:
        keys.append("provider")
    return keys


def infer_changes(base: Mapping[str, Resource], head: Mapping[str, Resource],
                  base_ctx: Context, head_ctx: Context) -> dict[str, Change]:
    changes: dict[str, Change] = {}
    for urn in sorted(set(base) | set(head)):
        before, after = base.get(urn), head.get(urn)
        if before is None and after is not None:
            changes[urn] = Change(urn, "create", None, after, sorted(after.inputs))
        elif after is None and before is not None:
            changes[urn] = Change(urn, "delete", before, None, [])
        elif before is not None and after is not None:
            keys = diff_keys(before, after)
            was, now = base_ctx.region_of(before), head_ctx.region_of(after)
            moved = was is not None and now is not None and was != now
            if moved and "region" not in keys:
                keys.append("region")  # the provider's region changed: every resource on it moves
            forcing = set(REPLACE_KEYS.get(after.type, ())) | {"region"}
            if keys and all(k.endswith(NOW_SECRET) for k in keys):
                op = "now-secret"  # the same values, now stored as secrets: not an update
            else:
                op = "same" if not keys else "replace" if moved or forcing & set(keys) else "update"
            changes[urn] = Change(urn, op, before, after, keys)
    return changes


# --------------------------------------------------------------------------- measures


def _measure(ctl: Control, res: Resource | None, ctx: Context) -> Any:
    fn = MEASURES.get(ctl.id)
    if fn is None or res is None or not ctl.applies_to(res.type):
        return None
    try:
        return fn(res, ctx)
    except (Unknown, *SHAPE_ERRORS):
        return None


def regressed(m: Measure, before: Any, after: Any) -> bool:
    if before is None or after is None:
        return False
    if m.better == "higher":
        return float(after) < float(before)
    if m.better in ("true", "false"):
        good = m.better == "true"
        return bool(before) == good and bool(after) != good
    if m.better == "fewer":
        return bool(set(after) - set(before))
    return False  # "same": judged by the check itself


def fmt(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return "forever" if math.isinf(value) else str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, frozenset | set):
        return ", ".join(sorted(value)) or "none"
    return str(value)


def _describe(m: Measure | None, before: Any, after: Any, fallback: tuple[str, str],
              res: Resource | None = None, ctx: Context | None = None) -> tuple[str, str]:
    if m is None or (before is None and after is None):
        return fallback
    unit = f" {m.unit}" if m.unit else ""
    label = m.label
    if "vault" in label and res is not None and ctx is not None and bucket_role(res, ctx) == "log":
        label = label.replace("vault", "log bucket")
    return f"{label} {fmt(before)}{unit}", f"{fmt(after)}{unit}"


# --------------------------------------------------------------------------- the review


def _by_key(findings: list[Finding]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for f in findings:
        out[(f.control, f.urn)].add(f.message)
    return out


def same_stack(base: Source, head: Source, allow: bool) -> str | None:
    """Refuse two different stacks or projects (their diff is no change); with `allow`, a loud note instead."""
    differ = [f"{what} '{a}' and '{b}'" for what, a, b in (("stacks", base.stack, head.stack),
                                                            ("projects", base.project, head.project))
              if a and b and a != b]
    if not differ:
        return None
    what = f"{base.label} and {head.label} belong to different {' and '.join(differ)}"
    if not allow:
        raise UserError(what, "compare two states of the same stack; to compare different stacks anyway, "
                              "pass --allow-different-stacks")
    return f"DIFFERENT STACKS: {what}; the changes below are differences between stacks, not a change to one"


def _fill(state: dict[str, Resource], other: dict[str, Resource], mentioned: Mapping[str, Change],
          everything: bool) -> dict[str, Resource]:
    """A change set's state completed from the other side: what it does not mention is as the other side has it
    (default providers always: previews and event logs never carry them)."""
    filled = dict(state)
    for urn, res in other.items():
        if urn not in mentioned and (everything or res.is_provider):
            filled.setdefault(urn, res)
    return filled


def _own_ops(changes: dict[str, Change], steps: Mapping[str, Change], before: Mapping[str, Resource]) -> None:
    """A step's own op wins over an inference: `same` is same, whatever the two formats' details say."""
    for urn, step in steps.items():
        if step.op == "same":
            changes.pop(urn, None)
            continue
        inferred = changes.get(urn)
        changes[urn] = Change(urn, step.op, before.get(urn) or step.before, step.after,
                              step.keys or (inferred.keys if inferred else []))


def review(base: Source | None, head: Source, allow_different_stacks: bool = False) -> Review:
    """Compare base and head; with base None, head must carry its own before and after (digest, event log)."""
    notes: list[str] = []
    region = head.default_region or (base.default_region if base else None)
    if base is None and head.changes is not None:
        before_state, after_state = head.state_before(), head.state_after()
        complete = head.complete
        base_ctx = Context.of(before_state.values(), head.model, complete, region)
        head_ctx = Context.of(after_state.values(), head.model, complete, region)
        changes = dict(head.changes)
        base_label, head_label = f"{head.label} (before)", f"{head.label} (after)"
        sides = [head.describe()]
    else:
        base = base or head
        note = same_stack(base, head, allow_different_stacks)
        notes += [note] if note else []
        before_state, after_state = base.state_after(), head.state_after()
        if head.changes is not None:
            after_state = _fill(after_state, before_state, head.changes, everything=True)
        if base.changes is not None:
            before_state = _fill(before_state, after_state, base.changes, everything=not base.complete)
        complete = (base.complete or head.changes is not None) and (head.complete or base.changes is not None)
        base_ctx = Context.of(before_state.values(), base.model, complete, region)
        head_ctx = Context.of(after_state.values(), head.model, complete, region)
        changes = infer_changes(before_state, after_state, base_ctx, head_ctx)
        for side in (base, head):
            if side.changes is not None:
                _own_ops(changes, side.changes, before_state)
        base_label, head_label = base.label, head.label
        sides = [base.describe(), head.describe()] if base is not head else [head.describe()]

    head_findings = evaluate(head_ctx)
    base_index = _by_key(evaluate(base_ctx))
    embassies = {u: (head_ctx.embassy_of(c.after) if c.after else base_ctx.embassy_of(c.before) if c.before else None) or ""
                 for u, c in changes.items()}
    weakenings: list[Weakening] = []
    chg = control("EMB-CHG-01")
    for ch in changes.values():
        res = ch.before or ch.after
        if res is None or not chg.applies_to(res.type):
            continue
        loss = data_loss(res, base_ctx if ch.before else head_ctx, ch.op)
        if loss:
            f = Finding(chg.id, chg.severity.value, chg.mandatory, ch.urn, loss, res.type)
            head_findings.append(f)
            weakenings.append(Weakening(chg.id, f.severity, f.mandatory, ch.urn, res.type, ch.op, "kept", ch.op, loss,
                                        embassies.get(ch.urn, "")))

    ops = {u: c.op for u, c in changes.items()}
    for (ctl_id, urn), msgs in sorted(_by_key(head_findings).items()):
        if ctl_id == chg.id:
            continue
        ctl = control(ctl_id)
        old = base_index.get((ctl_id, urn), set())
        new = msgs - old
        if not new:
            continue
        b, a = _measure(ctl, before_state.get(urn), base_ctx), _measure(ctl, after_state.get(urn), head_ctx)
        if old and (ctl.measure is None or not regressed(ctl.measure, b, a)):
            continue  # still failing, but not worse than before: no weakening
        first = "absent" if urn not in before_state else ("violation" if old else "compliant")
        before_txt, after_txt = _describe(ctl.measure, b, a, (first, "violation"), after_state.get(urn), head_ctx)
        any_f = next(f for f in head_findings if f.control == ctl_id and f.urn == urn)
        weakenings.append(Weakening(ctl_id, ctl.severity.value, ctl.mandatory, urn, any_f.type, ops.get(urn, "same"),
                                    before_txt, after_txt, "; ".join(sorted(new)), embassies.get(urn, "")))

    seen = {(w.control, w.urn) for w in weakenings}
    for urn, ch in changes.items():
        if ch.before is None or ch.after is None:
            continue
        for ctl in controls():
            if ctl.measure is None or (ctl.id, urn) in seen:
                continue
            b, a = _measure(ctl, ch.before, base_ctx), _measure(ctl, ch.after, head_ctx)
            if regressed(ctl.measure, b, a):
                before_txt, after_txt = _describe(ctl.measure, b, a, ("", ""), ch.after, head_ctx)
                what = f"{ctl.measure.label} weaker than before, though the control still passes on head"
                weakenings.append(Weakening(ctl.id, ctl.severity.value, ctl.mandatory, urn, ch.type, ch.op, before_txt,
                                            after_txt, what, embassies.get(urn, "")))

    for src in {id(s): s for s in (base, head) if s is not None}.values():
        head_findings += src.engine_findings
        notes += src.engine_notes
        if not src.state_after() and not src.state_before():
            notes.append(f"{src.label} holds no resources: nothing was read there to judge")
    for role in break_glass_roles(head_ctx):
        emb = head_ctx.embassy_of(role)
        notes.append(f"break-glass role {role.name}{f' (embassy {emb})' if emb else ''} exists: the policies attached "
                     "to it are exempt from EMB-IAM-01 (they may delete versions and change locks)")
    if not complete:
        notes.append("the input leaves unchanged resources out (no --show-sames): stack-wide controls were not evaluated")
    rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    weakenings.sort(key=lambda w: (not w.mandatory, rank.get(w.severity, 9), w.control, w.urn))
    head_findings.sort(key=lambda f: (not f.mandatory, rank.get(f.severity, 9), f.control, f.urn))
    for f in head_findings:  # where each finding lives, for SARIF locations
        if f.urn not in embassies and f.urn in after_state:
            embassies[f.urn] = head_ctx.embassy_of(after_state[f.urn]) or ""
    real = [c for c in changes.values() if c.op != "same"]
    stack = head.stack or (base.stack if base else None)
    from embassy.compliance.iamdb import database

    perms = permission_diff(base_ctx, head_ctx)
    provenance = [p for src in {id(s): s for s in (base, head) if s is not None}.values() for p in src.provenance]
    return Review(base_label, head_label, real, head_findings, weakenings, embassies, stack, notes, sides,
                  perms, database().source, provenance)
