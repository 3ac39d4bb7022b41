"""What an engine event log says about the run itself: policy packs, errors, the result, the stack's region.

A run that a mandatory policy blocked, that failed, or that reported an error never passes a review.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from embassy.compliance.catalog import Control, Scope, Severity
from embassy.compliance.evaluate import Finding

# Findings of the run itself (engine events), beside the catalog's controls.
ENGINE_CONTROLS = {
    "PULUMI-POLICY": Control("PULUMI-POLICY", "A policy pack blocked the run",
                             "A mandatory policy violation stops `pulumi up`: the change is not deployable as it is.",
                             Severity.HIGH, True, Scope.CHANGE, ("*",), remediation="fix what the policy reports"),
    "PULUMI-RUN": Control("PULUMI-RUN", "The Pulumi run failed",
                          "A failed update leaves the stack between two states: what was reviewed is not what runs.",
                          Severity.HIGH, True, Scope.CHANGE, ("*",), remediation="fix the error and run the update again"),
    "PULUMI-ERROR": Control("PULUMI-ERROR", "The engine reported an error",
                            "An error diagnostic means some step did not happen as planned.",
                            Severity.HIGH, True, Scope.CHANGE, ("*",), remediation="read the error and fix its cause"),
}
_MARKUP = re.compile(r"<\{%[^%]*%\}>")


def strip_markup(text: Any) -> str:
    """Pulumi's colour markup (`<{%reset%}>`, `<{%fg 1%}>`) out of a message."""
    return " ".join(_MARKUP.sub("", str(text or "")).split())


def policy_events(events: list[Mapping[str, Any]]) -> list[str]:
    """What a policy pack said during the run (`policyEvent`), so the review shows it beside its own findings."""
    notes = []
    for event in events:
        pe = event.get("policyEvent")
        if isinstance(pe, Mapping):
            notes.append(f"policy pack {pe.get('policyPackName', '?')}: {pe.get('policyName', '?')} "
                         f"({pe.get('enforcementLevel', '?')}) on {pe.get('resourceUrn') or 'the stack'}: "
                         f"{strip_markup(pe.get('message'))}")
    return notes


def engine_findings(events: list[Mapping[str, Any]]) -> list[Finding]:
    """A run that a mandatory policy blocked, that failed, or that reported an error never passes."""
    found: list[Finding] = []

    def add(control_id: str, urn: str, message: str, severity: str = "high") -> None:
        sev = severity if severity in ("low", "medium", "high", "critical") else "high"
        found.append(Finding(control_id, sev, True, urn, message, ""))

    for event in events:
        pe = event.get("policyEvent")
        if isinstance(pe, Mapping) and str(pe.get("enforcementLevel", "")).lower() in ("mandatory", "remediate"):
            add("PULUMI-POLICY", str(pe.get("resourceUrn") or ""),
                f"policy pack {pe.get('policyPackName', '?')}: {pe.get('policyName', '?')} (mandatory): "
                f"{strip_markup(pe.get('message'))}", str(pe.get("severity") or "high"))
        diag = event.get("diagnosticEvent")
        if isinstance(diag, Mapping) and str(diag.get("severity", "")).lower() == "error":
            add("PULUMI-ERROR", str(diag.get("urn") or ""), f"engine error: {strip_markup(diag.get('message'))}")
        summary = event.get("summaryEvent")
        if isinstance(summary, Mapping) and str(summary.get("result", "")).lower() == "failed":
            add("PULUMI-RUN", "", "the Pulumi run failed (summaryEvent result: failed)")
    return found


def prelude_region(events: list[Mapping[str, Any]]) -> str | None:
    for event in events:
        prelude = event.get("preludeEvent")
        if isinstance(prelude, Mapping) and isinstance(prelude.get("config"), Mapping):
            region = prelude["config"].get("aws:region")
            if isinstance(region, str) and region:
                return region
    return None


def digest_findings(doc: Mapping[str, Any]) -> list[Finding]:
    """A preview digest that reports an error (its `diagnostics`) is no plan to pass."""
    found = []
    for diag in doc.get("diagnostics") or []:
        if isinstance(diag, Mapping) and str(diag.get("severity", "")).lower() == "error":
            found.append(Finding("PULUMI-ERROR", "high", True, str(diag.get("urn") or ""),
                                 f"preview error: {strip_markup(diag.get('message'))}", ""))
    return found
