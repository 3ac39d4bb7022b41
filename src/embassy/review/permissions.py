"""The permission diff of a review: per role (and per principal of a vault or key policy), what it may do on each
resource before and after the change, from the reviewer's own reading of both sides (compliance.grants)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embassy.compliance import grants, iamdb
from embassy.compliance.context import Context

# A role that gains these is shown as a SARIF result (and the Markdown marks it).
SHOUTED = (iamdb.PERMISSIONS, iamdb.WRITE, grants.MANAGED, iamdb.UNKNOWN_LEVEL)
GRANT_RULE = "EMB-IAM-GRANT"


@dataclass(frozen=True)
class PermissionChange:
    role: str
    role_tag: str
    resource: str
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"role": self.role, "role_tag": self.role_tag, "resource": self.resource,
                "added": list(self.added), "removed": list(self.removed),
                "added_by_level": dict(self.grouped("added")), "removed_by_level": dict(self.grouped("removed"))}

    def grouped(self, which: str) -> list[tuple[str, list[str]]]:
        """(access level, entries) in the order of grants.GROUP_ORDER, empty levels left out."""
        entries: tuple[str, ...] = getattr(self, which)
        by: dict[str, list[str]] = {}
        for e in entries:
            by.setdefault(grants.level_of(e), []).append(e)
        return [(lvl, sorted(by[lvl], key=iamdb.importance)) for lvl in grants.GROUP_ORDER if lvl in by]

    def levels(self) -> list[str]:
        """Every access level of the change, added or removed."""
        seen = {lvl for which in ("added", "removed") for lvl, _ in self.grouped(which)}
        return [lvl for lvl in grants.GROUP_ORDER if lvl in seen]


def _table(ctx: Context) -> dict[tuple[str, str], tuple[str, set[str]]]:
    return {(r.role, r.resource): (r.role_tag, r.entries) for r in grants.permissions(ctx)}


def permission_diff(base: Context, head: Context) -> list[PermissionChange]:
    before, after = _table(base), _table(head)
    out: list[PermissionChange] = []
    for key in sorted(set(before) | set(after)):
        tag_b, was = before.get(key, ("", set()))
        tag_a, now = after.get(key, ("", set()))
        added, removed = tuple(sorted(now - was)), tuple(sorted(was - now))
        if added or removed:
            out.append(PermissionChange(key[0], tag_a or tag_b, key[1], added, removed))
    return out


def by_role(changes: list[PermissionChange]) -> list[tuple[str, str, list[PermissionChange]]]:
    """(role, tag, its changes) in role order: one Markdown table each."""
    roles: dict[str, list[PermissionChange]] = {}
    for c in changes:
        roles.setdefault(c.role, []).append(c)
    return [(role, next((c.role_tag for c in cs if c.role_tag), ""), cs) for role, cs in roles.items()]


def shouted(change: PermissionChange) -> list[tuple[str, list[str]]]:
    """The added grants a SARIF log carries: write, permissions management, and what cannot be judged."""
    return [(lvl, acts) for lvl, acts in change.grouped("added") if lvl in SHOUTED]
