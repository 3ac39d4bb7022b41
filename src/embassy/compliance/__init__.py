"""Compliance: one controls catalog (catalog.yaml), its checks, and their evaluation over a resource set.

The same catalog feeds the CrossGuard pack (policies/, via `embassy.compliance.crossguard`), the offline
check (`embassy check`) and the stack-diff review (`embassy review`).
"""

from embassy.compliance.catalog import Control, Scope, Severity, control, controls
from embassy.compliance.context import Context, Resource
from embassy.compliance.evaluate import Finding, evaluate, run_check

__all__ = ["Context", "Control", "Finding", "Resource", "Scope", "Severity", "control", "controls", "evaluate",
           "run_check"]
