"""Errors a user can meet, rendered the pgBackRest way: short, specific, then a HINT."""

from __future__ import annotations

import sys

import typer

# Exit codes shared by every command (see DESIGN.md, "Interfaces").
EXIT_OK = 0
EXIT_FINDING = 1  # a mandatory finding, an integrity failure, a failed drill
EXIT_USAGE = 2  # bad input: nothing was changed


class UserError(Exception):
    """Bad input or an unmet precondition: exit 2, nothing changed."""

    def __init__(self, message: str, hint: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def render(self) -> str:
        return f"error: {self.message}\nHINT: {self.hint}"


def fail(message: str, hint: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print an error with its hint to stderr and return the Exit to raise."""
    print(f"error: {message}\nHINT: {hint}", file=sys.stderr)
    return typer.Exit(code)
