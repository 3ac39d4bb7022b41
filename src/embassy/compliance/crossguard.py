"""The CrossGuard policies, generated from the catalog: what `pulumi preview --policy-pack policies` runs.

policies/__main__.py only wraps `policies()` in a PolicyPack (constructing one starts a gRPC server
and blocks, so tests call these policies' `validate` directly).

Unknown values at preview: pulumi-policy turns an UnknownValueError into an advisory "can't run policy
during preview", so a mandatory rule would silently pass for every new resource whose setting is
computed. Here a mandatory control whose *setting* is unknown (a boolean, mode, number, CIDR, region)
reports a violation: security settings must be literal. A *reference* that is unknown (a key ARN, a
policy document built from ARNs of resources not created yet) keeps Pulumi's advisory; those controls
are judged when the values exist (`pulumi up` runs the pack again on each resource) and over the plan.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyComplianceFramework,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

from embassy import model
from embassy.compliance.catalog import FRAMEWORKS, Control, Scope, controls
from embassy.compliance.checks import CHECKS
from embassy.compliance.context import Context, Resource
from embassy.compliance.evaluate import SHAPE_ERRORS, shape_message, unknown_message
from embassy.compliance.props import Unknown, plain

PACK_NAME = "data-embassy"
Policy = ResourceValidationPolicy | StackValidationPolicy


def model_from_engine() -> model.Deployment | None:
    """The stack's model when the engine passes the stack config to the pack (PULUMI_CONFIG); else None."""
    try:
        import pulumi

        config = pulumi.Config(model.NAMESPACE)
        if config.get("embassies") is None:
            return None
        return model.from_pulumi_config(os.environ.get("PULUMI_STACK") or pulumi.get_stack(),
                                        lambda key: _config_value(config, key))
    except Exception:  # no engine, or config the model rejects: checks fall back to tags
        return None


def _config_value(config: Any, key: str) -> Any:
    try:
        return config.get_object(key)
    except Exception:
        return config.get(key)


def _resource(rtype: str, props: Any, urn: str, name: str, provider: Any = None, **extra: Any) -> Resource:
    return Resource(urn=urn, type=rtype, inputs=plain(props) or {}, name=name,
                    provider=getattr(provider, "urn", None), **extra)


def _judge(control: Control, res: Resource, ctx: Context, report: Callable[[str], None], strict: bool) -> None:
    try:
        messages = list(CHECKS[control.id](res, ctx))
    except Unknown as exc:
        if control.mandatory and exc.kind == "decision":
            report(unknown_message(control, exc))
        elif strict:
            # keep Pulumi's own handling: an advisory "can't run policy ... during preview"
            raise UnknownValueError(UNKNOWN_STRING_VALUE, exc.path.split(".")) from None
        return
    except SHAPE_ERRORS as exc:
        report(shape_message(control, exc))
        return
    for message in messages:
        report(message)


def resource_validator(control: Control, deployment: Callable[[], model.Deployment | None]
                       ) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if not control.applies_to(args.resource_type):
            return
        opts = getattr(args, "opts", None)
        protect = bool(getattr(opts, "protect", False) or getattr(opts, "retain_on_delete", False)) if opts else None
        res = _resource(args.resource_type, args.props, args.urn, args.name, args.provider, protect=protect)
        known = [res]
        if args.provider is not None:
            p = args.provider
            known.append(_resource(p.resource_type, p.props, p.urn, p.name))
        ctx = Context.of(known, deployment(), complete=False)
        _judge(control, res, ctx, lambda m: report_violation(m, None), strict=True)
    return validate


def stack_validator(control: Control, deployment: Callable[[], model.Deployment | None]
                    ) -> Callable[[StackValidationArgs, ReportViolation], None]:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        records: dict[str, Resource] = {}
        for r in args.resources:
            records[r.urn] = _resource(r.resource_type, r.props, r.urn, r.name, r.provider,
                                       parent=r.parent.urn if r.parent else None,
                                       dependencies=tuple(d.urn for d in r.dependencies))
            if r.provider is not None and r.provider.urn not in records:
                p = r.provider
                records[p.urn] = _resource(p.resource_type, p.props, p.urn, p.name)
        ctx = Context.of(records.values(), deployment(), complete=True)
        for res in records.values():
            if control.applies_to(res.type):
                _judge(control, res, ctx, _reporter(report_violation, res.urn), strict=False)
    return validate


def _reporter(report_violation: ReportViolation, urn: str) -> Callable[[str], None]:
    return lambda message: report_violation(message, urn)


def _description(c: Control) -> str:
    refs = "; ".join(f"{FRAMEWORKS[k]} {', '.join(v)}" for k, v in c.frameworks.items() if v)
    return f"{c.title}. {c.rationale}" + (f" ({refs})" if refs else "")


def policies(deployment: model.Deployment | None = None, from_engine: bool = True) -> list[Policy]:
    """One policy per control of the catalog (change-scope controls need a diff: the review judges them)."""
    cached: list[model.Deployment | None] = []

    def current() -> model.Deployment | None:
        if not cached:
            cached.append(deployment if deployment is not None or not from_engine else model_from_engine())
        return cached[0]

    built: list[Policy] = []
    for c in controls():
        if c.scope is Scope.CHANGE:
            continue
        common: dict[str, Any] = {
            "name": c.id,
            "description": _description(c),
            "enforcement_level": EnforcementLevel.MANDATORY if c.mandatory else EnforcementLevel.ADVISORY,
            "display_name": c.title,
            "severity": Severity(c.severity.value),
            "framework": PolicyComplianceFramework(name="data-embassy controls", version="1",
                                                   reference=c.id, specification=c.rationale),
            "tags": [c.scope.value, *(f"{k}:{x}" for k, xs in c.frameworks.items() for x in xs)],
            "remediation_steps": c.remediation,
        }
        if c.scope is Scope.RESOURCE:
            built.append(ResourceValidationPolicy(validate=resource_validator(c, current), **common))
        else:
            built.append(StackValidationPolicy(validate=stack_validator(c, current), **common))
    return built
