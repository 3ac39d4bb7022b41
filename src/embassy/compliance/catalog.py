"""The controls catalog (catalog.yaml) as typed records, joined with their check functions."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

import yaml


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Scope(StrEnum):
    RESOURCE = "resource"  # one resource (and its provider): a CrossGuard ResourceValidationPolicy
    STACK = "stack"  # needs the whole resource set: a CrossGuard StackValidationPolicy
    CHANGE = "change"  # needs the operation: only the review sees it


FRAMEWORKS = {
    "cis": "CIS AWS Foundations Benchmark v3.0.0",
    "nist": "NIST SP 800-53 rev. 5",
    "iso": "ISO/IEC 27001:2022 Annex A",
}


@dataclass(frozen=True)
class Measure:
    """What a control measures on a resource, to show a change as before → after."""

    label: str
    better: str  # higher | true | false | fewer | same
    unit: str = ""


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    rationale: str
    severity: Severity
    mandatory: bool
    scope: Scope
    resource_types: tuple[str, ...]
    frameworks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    remediation: str = ""
    measure: Measure | None = None
    fails_closed: bool = False  # judged on a partial resource set too (what it cannot see counts against)

    def applies_to(self, resource_type: str) -> bool:
        return _matches(self.resource_types, resource_type)

    @property
    def level(self) -> str:
        return "mandatory" if self.mandatory else "advisory"


@cache
def _matches(patterns: tuple[str, ...], resource_type: str) -> bool:
    """Whether a type matches a control's patterns; asked for every control and every resource, so kept."""
    return any(fnmatch.fnmatchcase(resource_type, pattern) for pattern in patterns)


def _control(raw: dict[str, Any]) -> Control:
    measure = raw.get("measure")
    return Control(
        id=raw["id"],
        title=raw["title"],
        rationale=" ".join(str(raw["rationale"]).split()),
        severity=Severity(raw["severity"]),
        mandatory=bool(raw["mandatory"]),
        scope=Scope(raw["scope"]),
        resource_types=tuple(raw["resource_types"]),
        frameworks={k: tuple(str(x) for x in raw.get("frameworks", {}).get(k, [])) for k in FRAMEWORKS},
        remediation=raw.get("remediation", ""),
        # YAML reads `better: true` as a boolean: keep the word
        measure=Measure(label=measure["label"], better=str(measure["better"]).lower(), unit=measure.get("unit", ""))
        if measure else None,
        fails_closed=bool(raw.get("fails_closed", False)),
    )


@cache
def _raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(resources.files("embassy.compliance").joinpath("catalog.yaml").read_text())
    return loaded


@dataclass(frozen=True)
class ManagedPolicy:
    """An AWS managed policy the catalog allows on roles of these tags, after review (EMB-IAM-04)."""

    name: str
    roles: tuple[str, ...]
    reviewed: str


@cache
def managed_allow_list() -> dict[str, ManagedPolicy]:
    entries = (ManagedPolicy(str(m["name"]), tuple(str(r) for r in m["roles"]), " ".join(str(m["reviewed"]).split()))
               for m in _raw().get("managed_policies") or [])
    return {m.name: m for m in entries}


@cache
def controls() -> tuple[Control, ...]:
    """Every control of the catalog, in catalog order."""
    raw = _raw()
    result = tuple(_control(c) for c in raw["controls"])
    ids = [c.id for c in result]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate control id in catalog.yaml")
    return result


def control(control_id: str) -> Control:
    for c in controls():
        if c.id == control_id:
            return c
    raise KeyError(control_id)
