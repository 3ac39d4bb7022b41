"""Run the catalog's checks over a resource set; read plans."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from embassy import model
from embassy.compliance.catalog import Control, Scope, controls
from embassy.compliance.checks import CHECKS
from embassy.compliance.context import Context, Resource
from embassy.compliance.props import Unknown
from embassy.compliance.records import check_records
from embassy.errors import UserError


@dataclass(frozen=True)
class Finding:
    control: str
    severity: str
    mandatory: bool
    urn: str
    message: str
    type: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# What a check meets on properties of a shape no provider writes (a rule that is a list, a flag that is an
# object): the control cannot judge, so it fails closed instead of passing or crashing.
SHAPE_ERRORS = (AttributeError, TypeError, ValueError, KeyError, IndexError)


def shape_message(control: Control, exc: Exception) -> str:
    return (f"cannot judge {control.id}: the resource's properties have a shape the AWS provider never writes "
            f"({type(exc).__name__}: {str(exc)[:80]})")


def unknown_message(control: Control, exc: Unknown) -> str:
    return (f"{exc.path} is unknown at preview; mandatory control {control.id} needs it known "
            "(set it from configuration, not from another resource's output)")


def run_check(control: Control, res: Resource, ctx: Context) -> list[Finding]:
    """The findings of one control on one resource. A mandatory control fails on an unknown setting."""
    def finding(message: str) -> Finding:
        return Finding(control.id, control.severity.value, control.mandatory, res.urn, message, res.type)

    try:
        return [finding(m) for m in CHECKS[control.id](res, ctx)]
    except Unknown as exc:
        if control.mandatory and exc.kind == "decision":
            return [finding(unknown_message(control, exc))]
        return []  # a reference not known yet: judged once it exists (pulumi up, or the plan)
    except SHAPE_ERRORS as exc:
        return [finding(shape_message(control, exc))]


def evaluate(ctx: Context, only: Iterable[Control] | None = None) -> list[Finding]:
    """Every finding of every (resource or stack) control over the context's resources."""
    selected = [c for c in (only or controls()) if c.scope is not Scope.CHANGE]
    if not ctx.complete:
        selected = [c for c in selected if c.scope is Scope.RESOURCE or c.fails_closed]
    findings: list[Finding] = []
    for res in sorted(ctx.resources.values(), key=lambda r: r.urn):
        if not res.custom:
            continue  # a component (aws:serverless:Function, our Embassy) is no cloud resource: its children are
        for control in selected:
            if control.applies_to(res.type):
                findings.extend(run_check(control, res, ctx))
    return findings


def resources_of_plan(plan: Mapping[str, Any]) -> list[Resource]:
    return [Resource.from_record(r) for r in plan.get("resources", []) if isinstance(r, Mapping)]


PLAN_HINT = "write one with `embassy plan --stack S --out F`"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deep to be a plan", PLAN_HINT) from None
    except FileNotFoundError:
        raise UserError(f"no such file: {path}", "give the path of a plan written by `embassy plan --out F`") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start})", PLAN_HINT) from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON: {exc}", "give a plan written by `embassy plan --out F`") from None


def read_plan(path: Path) -> dict[str, Any]:
    plan = read_json(path)
    if not isinstance(plan, dict) or not isinstance(plan.get("resources"), list):
        raise UserError(f"{path} is not a plan (no 'resources' list)", PLAN_HINT)
    check_records(plan["resources"], "resources", str(path))
    if not plan["resources"]:
        raise UserError(f"{path}: the plan has no resources", PLAN_HINT)
    return plan


def plan_model(stack: Any, root: Path, label: str) -> model.Deployment:
    """The model of the stack a plan names: a plan of no stack, or of a stack this project lacks, is refused."""
    if not isinstance(stack, str) or not stack:
        raise UserError(f"{label}: the plan names no stack (key 'stack')", PLAN_HINT)
    path = model.stack_file(stack, root)
    if not path.is_file():
        raise UserError(f"{label}: the plan is of stack '{stack}', but this project has no {path.name}",
                        f"run from the project that made the plan, or plan an existing stack ({PLAN_HINT})")
    try:
        return model.load_stack(stack, root)
    except model.ConfigInvalid as exc:
        first = f"{exc.issues[0].path}: {exc.issues[0].message}" if exc.issues else str(exc)
        raise UserError(f"{label}: the config of stack '{stack}' is invalid: {first}",
                        f"run `embassy validate --stack {stack}` and fix it") from None


def model_for(stack: str | None, root: Path) -> model.Deployment | None:
    """The model of a stack when its config is at hand and valid; None otherwise (checks then use tags)."""
    if not stack:
        return None
    try:
        return model.load_stack(stack, root)
    except model.ConfigInvalid:
        return None


def mandatory_failed(findings: Iterable[Finding]) -> bool:
    return any(f.mandatory for f in findings)
