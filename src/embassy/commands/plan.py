"""`embassy` commands of this area (registered on embassy.cli.app)."""

from __future__ import annotations

from embassy.cli import app

__all__ = ["app"]
