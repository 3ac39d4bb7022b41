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
