"""Shared test settings: where the project and the shared fixtures are."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture
def project_root() -> Path:
    return ROOT
