"""Fixtures for the Pulumi tests only: the plans of the shipped stacks, computed once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rehearsal_plan() -> dict[str, Any]:
    from embassy.plan import compute_plan

    return compute_plan(ROOT, "rehearsal")


@pytest.fixture(scope="session")
def production_plan() -> dict[str, Any]:
    from embassy.plan import compute_plan

    return compute_plan(ROOT, "production")


@pytest.fixture
def pulumi_mocks() -> Any:
    """This process's Pulumi runtime on the plan's mocks, with a fresh recording monitor for each test."""
    import pulumi

    from embassy import model
    from embassy.plan import PLACEHOLDER_SECRET, install_mocks

    pulumi.runtime.set_all_config({f"{model.NAMESPACE}:break_glass_external_id": PLACEHOLDER_SECRET},
                                  [f"{model.NAMESPACE}:break_glass_external_id"])
    return install_mocks("data-embassy", "unit")
