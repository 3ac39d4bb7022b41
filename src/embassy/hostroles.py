"""What a host is to the stack: home (the state's own) or embassy. Neutral ground for every target and the data
plane (the lab re-exports it from embassy.lab.state, where it was first defined)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    HOME = "home"
    EMBASSY = "embassy"
