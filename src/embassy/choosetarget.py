"""Choosing the target a command names (`--target lab|site|aws`), with its options checked first.

Kept apart from targets.py: the AWS data-plane target (aws_target.py) builds on targets.py and on the data plane,
so targets.py cannot import it back without an import circle."""

from __future__ import annotations

from pathlib import Path

from embassy import model, sites
from embassy.aws_target import aws_target
from embassy.errors import OptionInvalid, TargetUnknown
from embassy.targets import KINDS, LabTarget, SiteTarget, Target


def target_for(kind: str, dep: model.Deployment, inventory: Path | None = None, outputs: Path | None = None) -> Target:
    """The target `kind` (lab | site | aws) of the stack; the lab must be up (else an error that says how);
    a site takes its inventory file (--inventory); aws its saved stack outputs (--outputs), else the pulumi CLI's."""
    if kind != "aws" and outputs is not None:
        raise OptionInvalid(f"--outputs is for --target aws, not --target {kind}",
                            "drop --outputs, or use --target aws --outputs FILE")
    if kind != "site" and inventory is not None:
        raise OptionInvalid(f"--inventory is for --target site, not --target {kind}",
                            "drop --inventory, or use --target site --inventory FILE")
    if kind == "lab":
        from embassy.lab.state import lab_state

        return LabTarget(dep, lab_state(dep.stack))  # a UserError with its HINT when that lab is not up
    if kind == "site":
        if inventory is None:
            raise OptionInvalid("--target site needs --inventory FILE (the site inventory)",
                                "see examples/sites/federation.yaml; for the lab, `embassy lab status --json` names "
                                "its own as site_inventory")
        return SiteTarget(dep, sites.load(inventory, dep), inventory)
    if kind == "aws":
        return aws_target(dep, outputs)
    raise TargetUnknown(f"unknown target '{kind}'", f"use --target {' or --target '.join(KINDS)}")
