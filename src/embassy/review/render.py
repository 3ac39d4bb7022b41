"""Render a review: Markdown (a pull-request comment), JSON (DESIGN.md's shape) and SARIF 2.1.0."""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2

from embassy import __name__ as _pkg
from embassy.compliance import iamdb
from embassy.compliance.catalog import FRAMEWORKS, Control, controls
from embassy.review.compare import Review
from embassy.review.engine import ENGINE_CONTROLS
from embassy.review.permissions import GRANT_RULE, PermissionChange, by_role, shouted

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
GRANT_RULE_DEF: dict[str, Any] = {
    "id": GRANT_RULE,
    "name": "RoleGainsWriteOrPermissionsManagement",
    "shortDescription": {"text": "A role gains write or permissions-management actions"},
    "fullDescription": {"text": "The change adds actions of the Write or Permissions management access level (or a grant "
                                "whose content cannot be known) to a role or to a principal of a vault or key policy."},
    "help": {"text": "Check that the role needs them; the permission diff of the review lists every added action."},
    "defaultConfiguration": {"level": "warning"},
    "properties": {"tags": ["security", "iam"], "security-severity": "7.0", "precision": "high"},
}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    return f"`{str(value).replace('`', '')}`" if value else "—"


def _short(urn: str) -> str:
    """type::name of a URN: the stack and project prefix say nothing in a comment about one stack."""
    parts = urn.split("::")
    return "::".join([parts[2].rsplit("$", 1)[-1], parts[3]]) if len(parts) >= 4 else urn


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("embassy.review", "templates"), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(cell=_cell, code=_code, short=_short)
    return env


MAX_SHOWN = 12  # actions per Markdown cell; the JSON has them all


def _actions(entries: list[str]) -> str:
    if not entries:
        return ""
    shown = ", ".join(f"`{e}`" if ":" in e and " " not in e else e for e in entries[:MAX_SHOWN])
    return _cell(shown + (f" (+{len(entries) - MAX_SHOWN} more)" if len(entries) > MAX_SHOWN else ""))


def _permission_rows(change: PermissionChange) -> list[dict[str, str]]:
    added, removed = dict(change.grouped("added")), dict(change.grouped("removed"))
    return [{"level": lvl, "added": _actions(added.get(lvl, [])), "removed": _actions(removed.get(lvl, []))}
            for lvl in change.levels()]


def markdown(r: Review) -> str:
    weak = {w.urn for w in r.weakenings}
    rest = [c for c in r.changes if c.urn not in weak]
    text = _env().get_template("review.md.j2").render(
        r=r, rest=rest, mandatory_count=sum(1 for f in r.findings if f.mandatory),
        mandatory_weak=sum(1 for w in r.weakenings if w.mandatory), roles=by_role(r.permissions),
        permission_rows=_permission_rows)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def as_json(r: Review) -> dict[str, Any]:
    return {
        "permissions": [p.as_json() for p in r.permissions],
        "provenance": r.provenance,
        "iam_database": r.iam_database,
        "base": r.base_label,
        "head": r.head_label,
        "stack": r.stack,
        "no_changes": not r.changes,
        "summary": r.summary,
        "changes": [{"urn": c.urn, "type": c.type, "op": c.op, "keys": c.keys, "embassy": r.embassies.get(c.urn, "")}
                    for c in r.changes],
        "weakening": [w.as_json() for w in r.weakenings],
        "findings": [{"control": f.control, "severity": f.severity, "mandatory": f.mandatory, "urn": f.urn,
                      "message": f.message, "type": f.type} for f in r.findings],
        "notes": r.notes,
        "read": r.sides,
        "exit_code": r.exit_code,
    }


def _level(mandatory: bool, severity: str) -> str:
    if mandatory:
        return "error"
    return "note" if severity == "low" else "warning"


def _rule(c: Control) -> dict[str, Any]:
    refs = [f"{FRAMEWORKS[k]} {x}" for k, xs in c.frameworks.items() for x in xs]
    return {
        "id": c.id,
        "name": "".join(w.capitalize() for w in c.title.split()[:8] if w.isalnum()) or c.id,
        "shortDescription": {"text": c.title},
        "fullDescription": {"text": c.rationale},
        "help": {"text": f"{c.remediation}. Maps to: {'; '.join(refs) or 'no framework control'}."},
        "defaultConfiguration": {"level": _level(c.mandatory, c.severity.value)},
        "properties": {"tags": ["security", "compliance", c.level, *refs], "security-severity":
                       SECURITY_SEVERITY[c.severity.value], "precision": "high"},
    }


def embassy_lines(stack_file_text: str) -> dict[str, int]:
    """Line of each embassy's `- name:` in a Pulumi.<stack>.yaml, for SARIF locations."""
    lines: dict[str, int] = {}
    in_embassies = False
    for number, line in enumerate(stack_file_text.splitlines(), start=1):
        if line.strip().startswith("data-embassy:"):
            in_embassies = line.strip().startswith("data-embassy:embassies:")
            continue
        match = re.match(r"\s*- name:\s*([a-z0-9-]+)", line) if in_embassies else None
        if match:
            lines.setdefault(match.group(1), number)
    return lines


def sarif(r: Review, lines: dict[str, int] | None = None) -> dict[str, Any]:
    catalog = list(controls())
    catalog += [ENGINE_CONTROLS[i] for i in sorted({f.control for f in r.findings} & set(ENGINE_CONTROLS))]
    index = {c.id: i for i, c in enumerate(catalog)}
    rules = [_rule(c) for c in catalog]
    artifact = f"Pulumi.{r.stack}.yaml" if r.stack else "Pulumi.yaml"
    weak = {(w.control, w.urn): w for w in r.weakenings}
    results = []
    items: list[tuple[str, str, bool, str, str]] = [(f.control, f.severity, f.mandatory, f.urn, f.message) for f in r.findings]
    items += [(w.control, w.severity, w.mandatory, w.urn, f"{w.before} → {w.after}: {w.message}")
              for w in r.weakenings if not any(f.control == w.control and f.urn == w.urn for f in r.findings)]
    for ctl, severity, mandatory, urn, message in items:
        w = weak.get((ctl, urn))
        text = f"{message} (weakened: {w.before} → {w.after})" if w and w.before not in ("", "kept") else message
        results.append({
            "ruleId": ctl,
            "ruleIndex": index[ctl],
            "level": _level(mandatory, severity),
            "message": {"text": text},
            "locations": [{
                "physicalLocation": {"artifactLocation": {"uri": artifact},
                                     "region": {"startLine": (lines or {}).get(r.embassies.get(urn, ""), 1)}},
                "logicalLocations": [{"fullyQualifiedName": urn, "name": urn.rsplit("::", 1)[-1], "kind": "resource"}],
            }],
            "partialFingerprints": {"embassyControlUrn/v1": f"{ctl}:{urn}"},
        })
    if any(shouted(p) for p in r.permissions):
        rules.append(GRANT_RULE_DEF)
        for p in r.permissions:
            for lvl, acts in shouted(p):
                results.append({
                    "ruleId": GRANT_RULE,
                    "ruleIndex": len(rules) - 1,
                    "level": "warning" if lvl != iamdb.WRITE else "note",
                    "message": {"text": f"{p.role} ({p.role_tag or 'no role tag'}) gains {lvl} on {p.resource}: "
                                        f"{', '.join(acts[:40])}{f' (+{len(acts) - 40} more)' if len(acts) > 40 else ''}"},
                    "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact},
                                                        "region": {"startLine": 1}},
                                   "logicalLocations": [{"name": p.role, "kind": "role"}]}],
                    "partialFingerprints": {"embassyGrant/v1": f"{p.role}:{p.resource}:{lvl}"},
                })
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "embassy-review",
                                "semanticVersion": _version(), "rules": rules}},
            "automationDetails": {"id": f"embassy-review/{r.stack or 'stack'}/"},
            "properties": {"provenance": r.provenance, "iamDatabase": r.iam_database},
            "results": results,
        }],
    }


def _version() -> str:
    try:
        from importlib.metadata import version
        return version(_pkg)
    except Exception:  # not installed as a distribution
        return "0.0.0"


def render(r: Review, fmt: str, stack_file_text: str = "") -> str:
    if fmt == "md":
        return markdown(r)
    if fmt == "json":
        return json.dumps(as_json(r), indent=2, sort_keys=False) + "\n"
    return json.dumps(sarif(r, embassy_lines(stack_file_text)), indent=2) + "\n"
